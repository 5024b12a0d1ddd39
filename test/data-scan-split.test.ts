// scan and split on a small synthetic data set holding every defect real data has.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { listCsvDataset } from '../src/data/dataset.js';
import { scanDataset } from '../src/data/scan.js';
import { makeSplit, readSplit, writeSplit } from '../src/data/split.js';

const CLASSES = ['basophil', 'eosinophil', 'neutrophil'];

/** A distinct small JPEG for each seed, sized per class as PBC is. */
async function jpeg(seed: number, width = 36, height = 36): Promise<Buffer> {
  const data = Buffer.alloc(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * (seed + 3) * 7 + seed * 131) % 251;
  return sharp(data, { raw: { width, height, channels: 3 } })
    .jpeg({ quality: 90 })
    .toBuffer();
}

async function makeDataset(): Promise<string> {
  const root = mkdtempSync(path.join(tmpdir(), 'hemato-scan-'));
  for (const c of CLASSES) mkdirSync(path.join(root, c));
  let seed = 0;
  for (const c of CLASSES)
    for (let i = 0; i < 20; i++) writeFileSync(path.join(root, c, `${c}_${i}.jpg`), await jpeg(seed++, c === 'basophil' && i < 5 ? 42 : 36, 36));
  const twin = await jpeg(1000);
  writeFileSync(path.join(root, 'basophil/dup_a.jpg'), twin); // duplicate within a class
  writeFileSync(path.join(root, 'basophil/dup_b.jpg'), twin);
  const conflict = await jpeg(2000);
  writeFileSync(path.join(root, 'eosinophil/clash.jpg'), conflict); // the same bytes under two labels
  writeFileSync(path.join(root, 'neutrophil/clash.jpg'), conflict);
  writeFileSync(path.join(root, 'neutrophil/.DS_Store'), Buffer.from([0, 0, 0, 1, 0x42, 0x75, 0x64, 0x31]));
  writeFileSync(path.join(root, 'neutrophil/empty.jpg'), Buffer.alloc(0));
  writeFileSync(path.join(root, 'neutrophil/notes.jpg'), 'not an image\n');
  const whole = await jpeg(3000);
  writeFileSync(path.join(root, 'eosinophil/cut.jpg'), whole.subarray(0, whole.length - 60));
  writeFileSync(path.join(root, 'README.txt'), 'top-level file');
  mkdirSync(path.join(root, 'unknowncells'));
  return root;
}

const datasetReady = makeDataset();
after(async () => rmSync(await datasetReady, { recursive: true, force: true }));

test('scan reports images, classes, skips with reasons, duplicates, conflicts and sizes', async () => {
  const root = await datasetReady;
  const report = await scanDataset({ dir: root }, { classes: CLASSES });
  assert.equal(report.images, 64);
  assert.deepEqual(report.classes, { basophil: 22, eosinophil: 21, neutrophil: 21 });
  const reasons = Object.fromEntries(report.skipped.map((s) => [s.path, s.reason]));
  assert.deepEqual(reasons, {
    'README.txt': 'no-class-folder',
    'eosinophil/cut.jpg': 'truncated',
    'neutrophil/.DS_Store': 'hidden',
    'neutrophil/empty.jpg': 'empty',
    'neutrophil/notes.jpg': 'not-image',
    unknowncells: 'unknown-label',
  });
  assert.match(report.skipped.find((s) => s.reason === 'hidden')!.detail, /DS_Store/);
  assert.equal(report.files, report.images + report.skipped.length);
  assert.deepEqual(
    report.duplicates.map((g) => g.paths),
    [
      ['basophil/dup_a.jpg', 'basophil/dup_b.jpg'],
      ['eosinophil/clash.jpg', 'neutrophil/clash.jpg'],
    ],
  );
  assert.deepEqual(
    report.conflicts.map((g) => g.labels),
    [['eosinophil', 'neutrophil']],
  );
  assert.deepEqual(report.sizes.basophil, { '42x36': 5, '36x36': 17 });
});

test('hemato scan --json prints one document with the required keys', async () => {
  const root = await datasetReady;
  const { stdout } = await promisify(execFile)(process.execPath, ['bin/hemato.js', 'scan', root, '--json', '--classes', CLASSES.join(',')]);
  const report = JSON.parse(stdout);
  for (const key of ['images', 'classes', 'skipped', 'duplicates', 'conflicts', 'sizes']) assert.ok(key in report, key);
  assert.equal(report.images, 64);
  assert.equal(report.entries, undefined, 'per-file entries stay out of the CLI document');
});

test('CSV layout: extra columns ignored, unknown labels and missing files reported per row', async () => {
  const root = await datasetReady;
  const csv = path.join(root, 'labels.csv');
  writeFileSync(
    csv,
    'id,file,label,comment\n1,basophil/basophil_0.jpg,Basophil,ok\n2,eosinophil/eosinophil_0.jpg,plasma cell,"odd, quoted"\n3,nowhere.jpg,neutrophil,\n',
  );
  const listing = await listCsvDataset(csv, root, { classes: CLASSES });
  assert.deepEqual(
    listing.items.map((i) => [i.file, i.label]),
    [['basophil/basophil_0.jpg', 'basophil']],
  );
  assert.deepEqual(
    listing.skipped.map((s) => s.reason),
    ['unknown-label', 'missing'],
  );
  assert.match(listing.skipped[0].detail, /row 3: unknown label "plasma cell" \(known: basophil, eosinophil, neutrophil\)/);
  writeFileSync(csv, 'path,class\nx.jpg,basophil\n');
  await assert.rejects(listCsvDataset(csv, root), /header row naming the columns "file" and "label"/);
});

test('split: deterministic for a seed, independent of input order, changes with the seed', async () => {
  const report = await scanDataset({ dir: await datasetReady }, { classes: CLASSES });
  const a = makeSplit(report.entries, { seed: 7, val: 0.2, test: 0.1 });
  const b = makeSplit([...report.entries].reverse(), { seed: 7, val: 0.2, test: 0.1 });
  assert.equal(a.csv, b.csv);
  assert.equal(a.hash, b.hash);
  assert.notEqual(makeSplit(report.entries, { seed: 8, val: 0.2, test: 0.1 }).hash, a.hash);
  assert.match(a.hash, /^[0-9a-f]{64}$/);
  // Stratified: each class's val and test counts are its own share, in units of duplicate groups.
  assert.deepEqual(a.counts.val, { basophil: 4, eosinophil: 4, neutrophil: 4 });
  assert.deepEqual(a.counts.test, { basophil: 2, eosinophil: 2, neutrophil: 2 });
});

test('split: duplicates share a part; conflicts are excluded by default, or kept together', async () => {
  const report = await scanDataset({ dir: await datasetReady }, { classes: CLASSES });
  for (let seed = 0; seed < 10; seed++) {
    const split = makeSplit(report.entries, { seed, val: 0.5 });
    const part = (file: string) => split.rows.find((r) => r.file === file)?.part;
    assert.equal(part('basophil/dup_a.jpg'), part('basophil/dup_b.jpg'));
    assert.equal(part('eosinophil/clash.jpg'), undefined);
    assert.deepEqual(
      split.excluded.map((g) => g.paths),
      [['eosinophil/clash.jpg', 'neutrophil/clash.jpg']],
    );
    const kept = makeSplit(report.entries, { seed, val: 0.5, conflicts: 'keep' });
    const keptPart = (file: string) => kept.rows.find((r) => r.file === file)?.part;
    assert.ok(keptPart('eosinophil/clash.jpg'));
    assert.equal(keptPart('eosinophil/clash.jpg'), keptPart('neutrophil/clash.jpg'));
  }
  assert.throws(() => makeSplit(report.entries, { val: 0.6, test: 0.5 }), /sum to less than 1/);
});

test('split: halving the validation part keeps the training part and every duplicate group in one half', async () => {
  const report = await scanDataset({ dir: await datasetReady }, { classes: CLASSES });
  for (let seed = 0; seed < 10; seed++) {
    const whole = makeSplit(report.entries, { seed, val: 0.5 });
    const halved = makeSplit(report.entries, { seed, val: 0.5, halveVal: true });
    assert.equal(halved.val_halved, true);
    const partOf = (split: typeof whole) => new Map(split.rows.map((r) => [r.file, r.part]));
    const [before, after] = [partOf(whole), partOf(halved)];
    for (const [file, part] of before) {
      if (part === 'train') assert.equal(after.get(file), 'train', file);
      else assert.ok(after.get(file) === 'val' || after.get(file) === 'test', file);
    }
    assert.equal(after.get('basophil/dup_a.jpg'), after.get('basophil/dup_b.jpg'));
    // Each class's validation units split as evenly as they can, the odd one to the select half.
    for (const c of CLASSES) {
      const [select, reported] = [halved.counts.val[c] ?? 0, halved.counts.test[c] ?? 0];
      assert.equal(select + reported, whole.counts.val[c]);
      assert.ok(select - reported >= 0 && select - reported <= 2, `${c}: ${select} / ${reported}`);
    }
  }
  const [a, b] = [makeSplit(report.entries, { seed: 3, halveVal: true }), makeSplit([...report.entries].reverse(), { seed: 3, halveVal: true })];
  assert.equal(a.hash, b.hash);
  assert.throws(() => makeSplit(report.entries, { val: 0.3, test: 0.1, halveVal: true }), /makes the test part: leave the test fraction at 0/);
});

test('split: written CSV reads back with the same hash, and the sidecar records it', async () => {
  const root = await datasetReady;
  const report = await scanDataset({ dir: root }, { classes: CLASSES });
  const split = makeSplit(report.entries, { seed: 1 });
  const out = path.join(root, 'split.csv');
  const meta = JSON.parse(readFileSync(await writeSplit(split, out), 'utf8'));
  const back = await readSplit(out);
  assert.equal(back.hash, split.hash);
  assert.equal(meta.hash, split.hash);
  assert.deepEqual(back.rows, split.rows);
  // The split CSV is itself a CSV data set (its part column is an extra column).
  assert.equal((await listCsvDataset(out, root, { classes: CLASSES })).items.length, split.rows.length);
});

test('readSplit passes over blank lines, and refuses a file in two rows or a path outside the images folder, naming the rows', async () => {
  const root = await datasetReady;
  const csv = path.join(root, 'rows.csv');
  const read = (rows: string[]) => {
    writeFileSync(csv, `file,label,part\n${rows.join('\n')}`);
    return readSplit(csv);
  };
  const blank = await read(['basophil/basophil_0.jpg,basophil,train', 'basophil/basophil_1.jpg,basophil,val', '', '', '']);
  assert.deepEqual(
    blank.rows.map((r) => r.part),
    ['train', 'val'],
  );
  await assert.rejects(
    read(['basophil/basophil_0.jpg,basophil,train', 'eosinophil/eosinophil_0.jpg,eosinophil,train', 'basophil/basophil_0.jpg,basophil,val']),
    /rows\.csv: "basophil\/basophil_0\.jpg" is listed twice \(rows 2 and 4\); each file belongs to one row/,
  );
  await assert.rejects(read(['basophil/basophil_0.jpg,basophil,train', './basophil//basophil_0.jpg,basophil,train']), /listed twice \(rows 2 and 3\)/);
  for (const [file, why] of [
    ['../../../../etc/passwd', /climbs out through \.\./],
    ['basophil/../../neutrophil/neutrophil_0.jpg', /climbs out through \.\./],
    ['/etc/passwd', /an absolute path/],
    ['C:\\data\\x.jpg', /an absolute path/],
  ] as [string, RegExp][]) {
    await assert.rejects(read(['basophil/basophil_0.jpg,basophil,train', `${file},basophil,train`]), (error: Error) => {
      assert.match(error.message, /rows\.csv:3: ".*" is outside the images folder/);
      assert.match(error.message, why);
      return true;
    });
  }
  // Inside the folder once normalised: kept as written.
  assert.equal((await read(['basophil/../basophil/basophil_0.jpg,basophil,train'])).rows[0].file, 'basophil/../basophil/basophil_0.jpg');
  await assert.rejects(read(['basophil/basophil_0.jpg,basophil']), /rows\.csv:2: part must be train, val or test, got nothing/);
});

test('CSV layout: a path outside the images folder or a file in two rows is refused; a CSV without rows or an images "folder" that is a file says so', async () => {
  const root = await datasetReady;
  const csv = path.join(root, 'listed.csv');
  writeFileSync(csv, 'file,label\nbasophil/basophil_0.jpg,basophil\n../../../../etc/passwd,basophil\n');
  await assert.rejects(listCsvDataset(csv, root, { classes: CLASSES }), /listed\.csv:3: "\.\.\/\.\.\/\.\.\/\.\.\/etc\/passwd" is outside the images folder/);
  writeFileSync(csv, `file,label\n${path.join(root, 'basophil/basophil_0.jpg')},basophil\n`);
  await assert.rejects(listCsvDataset(csv, root, { classes: CLASSES }), /listed\.csv:2: .* is outside the images folder \(an absolute path\)/);
  writeFileSync(csv, 'file,label\nbasophil/basophil_0.jpg,basophil\n\nbasophil\\basophil_0.jpg,eosinophil\n');
  await assert.rejects(listCsvDataset(csv, root, { classes: CLASSES }), /"basophil\/basophil_0\.jpg" is listed twice \(rows 2 and 4\)/);
  writeFileSync(csv, 'file,label\n\n');
  await assert.rejects(listCsvDataset(csv, root, { classes: CLASSES }), /listed\.csv has a header but no rows; add one row per image/);
  writeFileSync(csv, 'file,label\nbasophil_0.jpg,basophil\n');
  await assert.rejects(
    listCsvDataset(csv, path.join(root, 'README.txt'), { classes: CLASSES }),
    /images folder .*README\.txt: a file, not a folder; give the folder the paths in .*listed\.csv are relative to/,
  );
});
