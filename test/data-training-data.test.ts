// Training data from a split or a pack: every row is checked before anything is decoded, and a pack refuses the
// settings it fixed when it was made.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { writePack } from '../src/data/pack.js';
import { loadTrainingData, type TrainingDataOptions } from '../src/train/data.js';

const PBC = path.resolve('../shared/data/pbc');
const CLASSES = ['basophil', 'neutrophil'];

const root = mkdtempSync(path.join(tmpdir(), 'hemato-training-data-'));
after(() => rmSync(root, { recursive: true, force: true }));
const images = path.join(root, 'images');
const files: Record<string, string[]> = {};
for (const label of CLASSES) {
  mkdirSync(path.join(images, label), { recursive: true });
  files[label] = readdirSync(path.join(PBC, label))
    .filter((f) => f.endsWith('.jpg') && !f.startsWith('.'))
    .sort()
    .slice(0, 4)
    .map((name) => {
      copyFileSync(path.join(PBC, label, name), path.join(images, label, name));
      return `${label}/${name}`;
    });
}
/** Per class: three training images and one for validation. */
const rows = CLASSES.flatMap((label) => files[label].map((file, i) => `${file},${label},${i < 3 ? 'train' : 'val'}`));

function writeSplit(name: string, lines: string[]): string {
  const file = path.join(root, name);
  writeFileSync(file, `file,label,part\n${lines.join('\n')}\n`);
  return file;
}

const fromSplit = (split: string): TrainingDataOptions => ({ source: { dir: images }, split, mpm: false, seed: 0, field: null, normalizeScale: false });

test('a split that puts a file in both parts, lists it twice, or leads out of the images folder is refused, naming the rows', async () => {
  const [first] = files.basophil;
  for (const [lines, message] of [
    [[...rows, `${first},basophil,val`], new RegExp(`"${first}" is listed twice \\(rows 2 and 10\\)`)],
    [[...rows, `./${first},basophil,train`], /is listed twice \(rows 2 and 10\)/],
    [[...rows, `../../../../${PBC.slice(1)}/neutrophil/${path.basename(files.neutrophil[0])},basophil,train`], /:10: ".*" is outside the images folder/],
    [[...rows, '../../../../etc/passwd,basophil,train'], /:10: "\.\.\/\.\.\/\.\.\/\.\.\/etc\/passwd" is outside the images folder/],
    [[...rows, '/etc/passwd,basophil,train'], /:10: "\/etc\/passwd" is outside the images folder \(an absolute path\)/],
  ] as [string[], RegExp][]) {
    await assert.rejects(loadTrainingData(fromSplit(writeSplit('bad.csv', lines)), 32), message);
  }
});

test('a split with blank lines, an unknown label and a missing file: the rows are read, the others skipped with their reasons', async () => {
  const extra = `basophil/${path.basename(files.neutrophil[3])}`;
  copyFileSync(path.join(images, files.neutrophil[3]), path.join(images, extra));
  const split = writeSplit('skips.csv', [...rows, `${extra},plasma cell,train`, 'basophil/gone.jpg,basophil,train', '', '']);
  const data = await loadTrainingData(fromSplit(split), 32);
  assert.deepEqual([data.train.length, data.val.length], [6, 2]);
  assert.deepEqual(
    data.skipped.map((s) => [s.path, s.reason]),
    [
      [extra, 'unknown-label'],
      ['basophil/gone.jpg', 'missing'],
    ],
  );
  assert.match(data.skipped[0].detail, /unknown label "plasma cell" \(known: basophil, eosinophil/);
});

test('training from a pack needs both parts, and refuses --split and --no-scale, which the pack fixed when it was made', async () => {
  const items = (part: (i: number) => 'train' | 'val') =>
    CLASSES.flatMap((label) => files[label].map((file, i) => ({ file, path: path.join(images, file), label, part: part(i) })));
  const options = { classes: CLASSES, geometry: { field: 360, size: 32 }, codec: 'png' as const, threads: 1, splitHash: 'abc' };
  const allVal = path.join(root, 'val-only.pack');
  await writePack(
    items(() => 'val'),
    allVal,
    options,
  );
  const fromPack = (pack: string, extra: Partial<TrainingDataOptions> = {}) =>
    loadTrainingData({ source: { pack }, split: null, mpm: false, seed: 0, ...extra }, 32);
  await assert.rejects(fromPack(allVal), /val-only\.pack holds 0 training and 8 validation images; training needs both/);

  const pack = path.join(root, 'cells.pack');
  const header = await writePack(
    items((i) => (i < 3 ? 'train' : 'val')),
    pack,
    options,
  );
  assert.ok(header.scale, 'the pack brought its images to a scale');
  await assert.rejects(fromPack(pack, { split: 'split.csv' }), /cells\.pack is a pack, and its split was fixed when it was made .*without --split split\.csv/);
  await assert.rejects(
    fromPack(pack, { normalizeScale: false }),
    /cells\.pack is a pack whose images were brought to the training scale.* so --no-scale .*cannot apply/,
  );
  const data = await fromPack(pack);
  assert.deepEqual([data.train.length, data.val.length], [6, 2]);
});
