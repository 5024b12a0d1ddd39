// Near-duplicates: the perceptual hash under edits and across distinct PBC cells, the pair search, what scan reports
// (also across a split's parts), and split --near-duplicates keeping each group in one part.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import sharp, { type Sharp } from 'sharp';
import { decodeImage } from '../src/data/image.js';
import { DEFAULT_NEAR_THRESHOLD, hammingDistance, hashPairs, perceptualHash, PHASH_BITS } from '../src/data/phash.js';
import { seededRandom } from '../src/data/random.js';
import { findNearDuplicates, MAX_NEAR_PAIRS, type NearDuplicates, type ScannedImage, scanDataset } from '../src/data/scan.js';
import { makeSplit, writeSplit } from '../src/data/split.js';
import { SHARED } from './helpers.js';

const PBC = path.join(SHARED, 'data/pbc');
const BIN = path.resolve('bin/hemato.js');
const T = DEFAULT_NEAR_THRESHOLD;

/** Two distinct PBC cells of each class; no two of them lie within the threshold (the closest pair: 92 bits). */
const CELLS = [
  'basophil/BA_100102.jpg',
  'basophil/BA_102039.jpg',
  'eosinophil/EO_10150.jpg',
  'eosinophil/EO_101772.jpg',
  'erythroblast/ERB_101031.jpg',
  'erythroblast/ERB_101277.jpg',
  'ig/MMY_100949.jpg',
  'ig/MMY_103772.jpg',
  'lymphocyte/LY_100275.jpg',
  'lymphocyte/LY_102859.jpg',
  'monocyte/MO_100695.jpg',
  'monocyte/MO_101258.jpg',
  'neutrophil/BNE_100878.jpg',
  'neutrophil/BNE_101007.jpg',
  'platelet/PLATELET_100161.jpg',
  'platelet/PLATELET_100529.jpg',
];

const hashFile = async (bytes: Buffer) => perceptualHash(await decodeImage(bytes));
const pbc = (file: string) => readFileSync(path.join(PBC, file));

test('the perceptual hash survives re-encoding, resizing, tone changes and small crops, and tells distinct cells apart', async () => {
  const hashes = await Promise.all(CELLS.map((f) => hashFile(pbc(f))));
  for (const h of hashes) assert.match(h, /^[0-9a-f]{64}$/);
  assert.equal(await hashFile(pbc(CELLS[0])), hashes[0], 'deterministic');
  for (let i = 0; i < CELLS.length; i++)
    for (let j = i + 1; j < CELLS.length; j++) {
      const d = hammingDistance(hashes[i], hashes[j]);
      assert.ok(d > T, `${CELLS[i]} and ${CELLS[j]} are different cells, yet only ${d} bits apart`);
    }
  const edits: Record<string, [(s: Sharp, w: number, h: number) => Sharp, number]> = {
    'JPEG q50': [(s) => s.jpeg({ quality: 50 }), 8],
    'WebP q80': [(s) => s.webp({ quality: 80 }), 8],
    'half size, PNG': [(s, w, h) => s.resize(Math.round(w / 2), Math.round(h / 2)).png(), 24],
    '1.5× size': [(s, w, h) => s.resize(Math.round(w * 1.5), Math.round(h * 1.5)).jpeg({ quality: 90 }), 24],
    'brightness +10 %': [(s) => s.modulate({ brightness: 1.1 }).jpeg({ quality: 90 }), 24],
    'contrast ×1.2': [(s) => s.linear(1.2, -25).jpeg({ quality: 90 }), 24],
    '3 px white border': [(s) => s.extend({ top: 3, bottom: 3, left: 3, right: 3, background: '#ffffff' }).jpeg({ quality: 90 }), T],
    'cropped 4 px per side': [(s, w, h) => s.extract({ left: 4, top: 4, width: w - 8, height: h - 8 }).jpeg({ quality: 90 }), T],
  };
  for (const [k, file] of CELLS.slice(0, 8).entries()) {
    const bytes = pbc(file);
    for (const [name, [edit, bound]] of Object.entries(edits)) {
      const d = hammingDistance(await hashFile(await edit(sharp(bytes), 360, 363).toBuffer()), hashes[k]);
      assert.ok(d <= bound, `${file}, ${name}: ${d} bits from the original (at most ${bound} expected)`);
    }
  }
  // PBC itself holds the same monocyte in two shifted fields, 10 bits apart.
  assert.ok(hammingDistance(await hashFile(pbc('monocyte/MO_231316.jpg')), await hashFile(pbc('monocyte/MO_415531.jpg'))) <= T);
  // Tiny images repeat pixels rather than leave cells of the 64×64 grid empty.
  const tiny = { width: 5, height: 3, data: new Uint8Array(45).map((_, i) => (i * 37) % 256) };
  assert.match(perceptualHash(tiny), /^[0-9a-f]{64}$/);
});

test('hashPairs finds every pair within the threshold that passes its coarse comparison of the first 64 bits', () => {
  const random = seededRandom(3);
  const randomHash = () => Array.from({ length: PHASH_BITS / 4 }, () => Math.floor(random() * 16).toString(16)).join('');
  const flip = (hash: string, bits: number) => {
    const digits = [...hash].map((c) => parseInt(c, 16));
    const chosen = new Set<number>();
    while (chosen.size < bits) chosen.add(Math.floor(random() * PHASH_BITS));
    for (const b of chosen) digits[b >> 2] ^= 8 >> (b & 3);
    return digits.map((d) => d.toString(16)).join('');
  };
  const hashes = Array.from({ length: 200 }, randomHash);
  for (let k = 0; k < 150; k++) hashes.push(flip(hashes[Math.floor(random() * 200)], Math.floor(random() * 80)));
  for (const threshold of [0, 20, T]) {
    const expected = [];
    for (let i = 0; i < hashes.length; i++)
      for (let j = i + 1; j < hashes.length; j++) {
        const distance = hammingDistance(hashes[i], hashes[j]);
        const coarse = hammingDistance(hashes[i].slice(0, 16) + hashes[j].slice(16), hashes[j]);
        if (distance <= threshold && coarse <= Math.ceil(threshold / 4)) expected.push({ i, j, distance });
      }
    assert.deepEqual(hashPairs(hashes, threshold), expected);
    if (threshold === T) assert.ok(expected.length > 50, `${expected.length} planted pairs found`);
  }
  assert.throws(() => hashPairs(hashes, 300), /integer from 0 to 256/);
  assert.throws(() => hashPairs(['abc'], 4), /not a 256-bit hash/);
});

// A small data set of PBC cells with a resized and a cropped copy in their own class, a re-lit copy filed under another
// class, and a byte-identical twin (a duplicate, not a near-duplicate).
const CLASSES = ['basophil', 'eosinophil', 'lymphocyte', 'neutrophil'];
const root = mkdtempSync(path.join(tmpdir(), 'hemato-near-'));
after(() => rmSync(root, { recursive: true, force: true }));
const datasetReady = (async () => {
  for (const c of CLASSES) mkdirSync(path.join(root, c));
  for (const file of CELLS.filter((f) => CLASSES.includes(path.dirname(f)))) copyFileSync(path.join(PBC, file), path.join(root, file));
  await sharp(pbc('basophil/BA_100102.jpg')).resize(180, 182).png().toFile(path.join(root, 'basophil/BA_100102-small.png'));
  await sharp(pbc('eosinophil/EO_10150.jpg')).modulate({ brightness: 1.1 }).jpeg({ quality: 70 }).toFile(path.join(root, 'neutrophil/EO_10150-relit.jpg'));
  await sharp(pbc('eosinophil/EO_101772.jpg'))
    .extract({ left: 4, top: 4, width: 352, height: 355 })
    .jpeg({ quality: 90 })
    .toFile(path.join(root, 'eosinophil/EO_101772-cropped.jpg'));
  copyFileSync(path.join(PBC, 'lymphocyte/LY_100275.jpg'), path.join(root, 'lymphocyte/LY_100275-twin.jpg'));
})();

const EXPECTED_PAIRS = [
  { paths: ['basophil/BA_100102-small.png', 'basophil/BA_100102.jpg'], labels: ['basophil', 'basophil'] },
  { paths: ['eosinophil/EO_10150.jpg', 'neutrophil/EO_10150-relit.jpg'], labels: ['eosinophil', 'neutrophil'] },
  { paths: ['eosinophil/EO_101772-cropped.jpg', 'eosinophil/EO_101772.jpg'], labels: ['eosinophil', 'eosinophil'] },
];

test('scan reports near-duplicate pairs and those across labels, apart from byte-identical duplicates', async () => {
  await datasetReady;
  const report = await scanDataset({ dir: root }, { classes: CLASSES });
  assert.equal(report.images, 12);
  assert.deepEqual(
    report.duplicates.map((g) => g.paths),
    [['lymphocyte/LY_100275-twin.jpg', 'lymphocyte/LY_100275.jpg']],
  );
  const near = report.near_duplicates;
  assert.deepEqual(
    near.pairs.map(({ paths, labels }) => ({ paths, labels })),
    EXPECTED_PAIRS,
  );
  for (const p of near.pairs) assert.ok(p.distance <= T);
  assert.equal(near.conflicts, 1);
  assert.deepEqual([near.method, near.bits, near.threshold], ['dct-256', 256, T]);
  const strict = (await scanDataset({ dir: root }, { classes: CLASSES, nearThreshold: 0 })).near_duplicates;
  assert.equal(strict.threshold, 0);
  assert.deepEqual(
    strict.pairs,
    near.pairs.filter((p) => p.distance === 0),
  );
  assert.ok(strict.pairs.length < near.pairs.length, 'the cropped copy lies a few bits away');
});

test('hemato scan prints the near-duplicates and, with --split, what lies across its parts', async () => {
  await datasetReady;
  // A split that separates the resized copy from its original and the twins, and keeps the other pairs together.
  const val = new Set(['basophil/BA_100102-small.png', 'lymphocyte/LY_100275-twin.jpg']);
  const files = [
    ...CELLS.filter((f) => CLASSES.includes(path.dirname(f))),
    'basophil/BA_100102-small.png',
    'neutrophil/EO_10150-relit.jpg',
    'eosinophil/EO_101772-cropped.jpg',
    'lymphocyte/LY_100275-twin.jpg',
  ];
  const split = path.join(root, 'split.csv');
  writeFileSync(split, `file,label,part\n${files.map((f) => `${f},${path.dirname(f)},${val.has(f) ? 'val' : 'train'}`).join('\n')}\n`);
  const run = (...args: string[]) => spawnSync(process.execPath, [BIN, 'scan', root, '--classes', CLASSES.join(','), ...args], { encoding: 'utf8' });

  const json = run('--json', '--split', split);
  assert.equal(json.status, 0, json.stderr);
  const report = JSON.parse(json.stdout);
  for (const key of ['images', 'classes', 'skipped', 'duplicates', 'conflicts', 'sizes', 'near_duplicates']) assert.ok(key in report, key);
  assert.deepEqual(
    report.near_duplicates.pairs.map(({ paths }: { paths: string[] }) => paths),
    EXPECTED_PAIRS.map((p) => p.paths),
  );
  assert.equal(report.near_duplicates.conflicts, 1);
  assert.equal(report.split.csv, split);
  assert.equal(report.split.hash, createHash('sha256').update(readFileSync(split)).digest('hex'));
  assert.deepEqual(
    report.split.near_duplicates.map((p: { paths: string[]; parts: string[] }) => [p.paths, p.parts]),
    [[EXPECTED_PAIRS[0].paths, ['val', 'train']]],
  );
  assert.deepEqual(
    report.split.duplicates.map((g: { parts: string[] }) => g.parts),
    [['val', 'train']],
  );
  assert.equal(report.split.unlisted, 0);

  const text = run('--split', split);
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /near-duplicates: 3 pairs .*distance ≤ 60 of 256 bits/);
  assert.match(text.stdout, /near-duplicate conflicts: 1 pairs whose labels differ/);
  assert.match(text.stdout, /near-duplicate pairs across parts: 1\n.*BA_100102-small\.png \(basophil, val\)/);
  assert.match(text.stdout, /duplicate groups across parts: 1/);
  assert.equal(run('--near-threshold', '300').status, 2);
});

test('near-duplicates: copies of one file make no pairs, and a set of look-alikes lists the first pairs and counts them all', () => {
  const entry = (i: number, content: number): ScannedImage => ({
    file: `${i % 2 ? 'basophil' : 'neutrophil'}/${String(i).padStart(5, '0')}.png`,
    label: i % 2 ? 'basophil' : 'neutrophil',
    sha256: createHash('sha256').update(`content ${content}`).digest('hex'),
    phash: '0'.repeat(64),
    width: 16,
    height: 16,
    format: 'png',
    bytes: 100,
  });
  // 10,000 copies of one file: before, 50 million pairs were built and then dropped.
  const copies = findNearDuplicates(Array.from({ length: 10_000 }, (_, i) => entry(i, 0)));
  assert.deepEqual([copies.pairs.length, copies.total, copies.conflicts], [0, 0, 0]);
  // 2,000 different files that look alike (empty fields, say), and copies of three of them.
  const alike = findNearDuplicates([...Array.from({ length: 2000 }, (_, i) => entry(i, i)), ...[0, 1, 2].map((c) => entry(2000 + c, c))]);
  assert.equal(alike.total, (2000 * 1999) / 2);
  assert.equal(alike.pairs.length, MAX_NEAR_PAIRS);
  assert.equal(alike.conflicts, 1000 * 1000);
  assert.deepEqual(alike.pairs[0].paths, ['basophil/00001.png', 'basophil/00003.png']);
});

/** Entries whose content hashes are fixed strings, so that a split of them has one hash for ever. */
function fixedEntries(): ScannedImage[] {
  const sha = (s: string) => createHash('sha256').update(s).digest('hex');
  const labels = ['basophil', 'eosinophil', 'neutrophil'];
  // 60 files; the last 5 are byte-identical to the first 5, under other labels (conflicts).
  return Array.from({ length: 60 }, (_, i) => ({
    file: `${labels[i % 3]}/${i}.jpg`,
    label: labels[i % 3],
    sha256: sha(`cell ${i % 55}`),
    phash: '0'.repeat(64),
    width: 36,
    height: 36,
    format: 'jpeg',
    bytes: 1000,
  }));
}

const nearPairs = (pairs: [string, string][]): NearDuplicates => ({
  method: 'dct-256',
  bits: 256,
  threshold: T,
  pairs: pairs.map(([a, b]) => ({ paths: [a, b], labels: [path.dirname(a), path.dirname(b)], distance: 10 })),
  total: pairs.length,
  conflicts: 0,
});

test('split without --near-duplicates is what it always was; with no pairs to join, grouping changes nothing', () => {
  // These hashes were made by the split before near-duplicates existed.
  const before: [number, 'exclude' | 'keep', string][] = [
    [0, 'exclude', '851880d5b098f04ccbd891189443bb555e3f81bd59369fb02e0bbcbe75b847de'],
    [0, 'keep', 'bd85f6f5844048f6854b697006d60eda987053feb11d00df98acecedd94dc4eb'],
    [3, 'exclude', 'b9c7eb0d4246e038b16fa8ae8b9aaa6363d1f3a455a8f5eaf2cfcd4fc045e9c0'],
    [3, 'keep', 'cb95da3a50c72026c287d918460a987b29747ae4b33c4c578395bc8d0a7bafc0'],
  ];
  for (const [seed, conflicts, hash] of before) {
    const split = makeSplit(fixedEntries(), { seed, val: 0.2, test: 0.1, conflicts });
    assert.equal(split.hash, hash, `seed ${seed}, conflicts ${conflicts}`);
    assert.deepEqual(split.near_duplicates, { grouped: false });
    assert.equal(makeSplit(fixedEntries(), { seed, val: 0.2, test: 0.1, conflicts, nearDuplicates: nearPairs([]) }).hash, hash);
  }
});

test('split with near-duplicates keeps each group, joined through any chain of pairs, in one part', () => {
  const entries = fixedEntries();
  // A chain within basophil (6–9–12), and a pair across labels (7–8); a pair with an excluded conflict (55) joins nothing.
  const near = nearPairs([
    ['basophil/6.jpg', 'basophil/9.jpg'],
    ['basophil/9.jpg', 'basophil/12.jpg'],
    ['eosinophil/7.jpg', 'neutrophil/8.jpg'],
    ['basophil/15.jpg', 'eosinophil/55.jpg'],
  ]);
  let separatedWithout = 0;
  for (let seed = 0; seed < 30; seed++) {
    const split = makeSplit(entries, { seed, val: 0.3, test: 0.2, nearDuplicates: near });
    const part = (file: string) => split.rows.find((r) => r.file === file)?.part;
    assert.ok(part('basophil/6.jpg'));
    assert.equal(part('basophil/9.jpg'), part('basophil/6.jpg'), `seed ${seed}`);
    assert.equal(part('basophil/12.jpg'), part('basophil/6.jpg'), `seed ${seed}`);
    assert.equal(part('neutrophil/8.jpg'), part('eosinophil/7.jpg'), `seed ${seed}`);
    assert.equal(split.rows.find((r) => r.file === 'neutrophil/8.jpg')?.label, 'neutrophil', 'each file keeps its own label');
    assert.equal(part('eosinophil/55.jpg'), undefined);
    assert.deepEqual(split.near_duplicates, { grouped: true, method: 'dct-256', bits: 256, threshold: T, pairs: 3, groups: 2 });
    const plain = makeSplit(entries, { seed, val: 0.3, test: 0.2 });
    const plainPart = (file: string) => plain.rows.find((r) => r.file === file)?.part;
    if (new Set(['basophil/6.jpg', 'basophil/9.jpg', 'basophil/12.jpg'].map(plainPart)).size > 1) separatedWithout++;
  }
  assert.ok(separatedWithout > 0, 'without grouping, some seed separates the chain');
});

test('hemato split --near-duplicates records the grouping and its threshold; without it, the record says so', async () => {
  await datasetReady;
  const run = (...args: string[]) => spawnSync(process.execPath, [BIN, 'split', root, '--classes', CLASSES.join(','), '--json', ...args], { encoding: 'utf8' });
  const grouped = run('--near-duplicates', '--val', '0.5', '--seed', '4', '--out', path.join(root, 'grouped.csv'));
  assert.equal(grouped.status, 0, grouped.stderr);
  const summary = JSON.parse(grouped.stdout);
  assert.deepEqual(summary.near_duplicates, { grouped: true, method: 'dct-256', bits: 256, threshold: T, pairs: 3, groups: 3 });
  assert.deepEqual(JSON.parse(readFileSync(path.join(root, 'grouped.json'), 'utf8')).near_duplicates, summary.near_duplicates);
  const rows = readFileSync(path.join(root, 'grouped.csv'), 'utf8').trim().split('\n').slice(1);
  const part = (file: string) => rows.find((r) => r.startsWith(`${file},`))?.split(',')[2];
  for (const { paths } of EXPECTED_PAIRS) assert.equal(part(paths[0]), part(paths[1]));

  const plain = run('--out', path.join(root, 'plain.csv'));
  assert.equal(plain.status, 0, plain.stderr);
  assert.deepEqual(JSON.parse(plain.stdout).near_duplicates, { grouped: false });
  // The library's split of the same scan, written the same way, gives the same file.
  const report = await scanDataset({ dir: root }, { classes: CLASSES });
  await writeSplit(makeSplit(report.entries), path.join(root, 'library.csv'));
  assert.equal(readFileSync(path.join(root, 'plain.csv'), 'utf8'), readFileSync(path.join(root, 'library.csv'), 'utf8'));

  const refused = run('--near-threshold', '10', '--out', path.join(root, 'refused.csv'));
  assert.equal(refused.status, 2);
  assert.match(refused.stderr, /--near-threshold applies only with --near-duplicates/);
});
