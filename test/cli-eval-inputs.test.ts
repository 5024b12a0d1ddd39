// eval, calibrate, info and doctor on odd inputs: split rows written the Windows way, sets nothing of which can be
// read, empty path options, shifts on images the baseline refused, a report over an earlier one, calibrate's --out
// onto its own inputs and the files it leaves out, control characters in a model's words, doctor's --json.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import * as E from '../src/engine/index.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { saveModel } from '../src/models/io.js';
import { createModel } from '../src/models/index.js';
import { evaluateScores, imagePredictions, writeReport } from '../src/eval/evaluation.js';
import { saveUntrainedModel } from './helpers.js';
import { loadClassifier } from '../src/api/classifier.js';
import { scoreItems } from '../src/api/evaluate.js';
import type { RgbImage } from '../src/data/image.js';

const BIN = path.resolve('bin/hemato.js');
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-eval-inputs-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const modelFile = path.join(dir, 'tiny.safetensors');
const data = path.join(dir, 'data');
const LABELS = ['eosinophil', 'monocyte'];
const PER_CLASS = 12;

async function fixtures(): Promise<void> {
  await saveUntrainedModel(modelFile);
  for (const label of LABELS) {
    mkdirSync(path.join(data, label), { recursive: true });
    for (let i = 0; i < PER_CLASS; i++) {
      await sharp({ create: { width: 70, height: 70, channels: 3, background: { r: 10 * i, g: label === 'monocyte' ? 200 : 40, b: 90 } } })
        .png()
        .toFile(path.join(data, label, `${i}.png`));
    }
  }
}
const ready = fixtures();

function hemato(args: string[], cwd?: string) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 120_000, cwd });
}

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

test('eval --split scores rows written with Windows separators or padded cells, as the listing names them', async () => {
  await ready;
  const split = path.join(dir, 'windows.csv');
  const rows = ['file,label,part', ...LABELS.flatMap((label) => [0, 1].map((i) => `${label}\\${i}.png,${label},val`)), ` eosinophil/2.png ,Eosinophil,val`];
  writeFileSync(split, `${rows.join('\r\n')}\r\n`);
  const run = hemato(['eval', data, '--split', split, '--model', modelFile, '--json']);
  assert.equal(run.status, 0, run.stderr);
  const result = JSON.parse(run.stdout);
  assert.equal(result.n, 5, 'every val row is scored');
  assert.deepEqual(result.skipped, []);
});

test('eval on a set none of whose images can be read says why in its message', async () => {
  await ready;
  const bad = path.join(dir, 'unreadable');
  mkdirSync(path.join(bad, 'eosinophil'), { recursive: true });
  writeFileSync(path.join(bad, 'eosinophil', 'text.png'), 'not an image');
  writeFileSync(path.join(bad, 'eosinophil', 'empty.png'), '');
  const run = hemato(['eval', bad, '--model', modelFile, '--json']);
  assert.equal(run.status, 1);
  assert.match(run.stderr, /none of the images could be read: .*empty\.png: empty file.*; .*text\.png: not an image/);
  assert.doesNotMatch(run.stderr, /with --json/, 'no pointer to a document that is not printed');
});

test('empty path options are usage errors before any work, and leave nothing behind', async () => {
  await ready;
  const cwd = mkdtempSync(path.join(dir, 'cwd-'));
  for (const [args, flag] of [
    [['eval', data, '--model', modelFile, '--report='], '--report'],
    [['eval', data, '--model='], '--model'],
    [['calibrate', data, '--model', modelFile, '--out='], '--out'],
    [['calibrate', '--images=', '--split', path.join(dir, 'none.csv')], '--images'],
  ] as const) {
    const run = hemato([...args], cwd);
    assert.equal(run.status, 2, `${args.join(' ')}: ${run.stderr}`);
    assert.ok(run.stderr.includes(`${flag} needs a path, got an empty one`), run.stderr);
  }
  assert.deepEqual(readdirSync(cwd), [], 'no temporary model file');
});

test('eval --shifts scores the images the baseline scored, each shift once', async () => {
  await ready;
  const mixed = path.join(dir, 'mixed');
  mkdirSync(path.join(mixed, 'eosinophil'), { recursive: true });
  for (const [name, side] of [
    ['small-1.png', 40],
    ['small-2.png', 40],
    ['large.png', 120],
  ] as const) {
    await sharp({ create: { width: side, height: side, channels: 3, background: { r: 200, g: 80, b: 120 } } })
      .png()
      .toFile(path.join(mixed, 'eosinophil', name));
  }
  // 120 × 120 is over the pixel limit: the baseline leaves that image out, and so must the shifts.
  const run = hemato(['eval', mixed, '--model', modelFile, '--max-pixels', '5000', '--shifts', 'blur-1,blur-1', '--json']);
  assert.equal(run.status, 1, 'a file was left out');
  const result = JSON.parse(run.stdout);
  assert.equal(result.n, 2);
  assert.deepEqual(Object.keys(result.shifts), ['blur-1']);
  assert.equal(result.shifts['blur-1'].n, 2);
});

test("files read again for a shift are read under the classifier's pixel limit and the listing's size limit", async () => {
  await ready;
  const mixed = path.join(dir, 'mixed'); // written by the test above
  const items = ['small-1.png', 'large.png'].map((name) => ({ file: `eosinophil/${name}`, path: path.join(mixed, 'eosinophil', name), label: 'eosinophil' }));
  const classifier = await loadClassifier(modelFile, { maxPixels: 5000 });
  try {
    const same = async (image: RgbImage) => image;
    const byPixels = await scoreItems(classifier, items, { transform: same });
    assert.deepEqual(byPixels.files, ['eosinophil/small-1.png']);
    assert.equal(byPixels.failed.length, 1);
    assert.match(byPixels.failed[0].reason, /120×120 .* exceeds the pixel limit of 5000 pixels/);
    const bySize = await scoreItems(classifier, items, { transform: same, maxFileBytes: 10 });
    assert.deepEqual(bySize.files, []);
    assert.equal(bySize.failed.length, 2);
  } finally {
    classifier.dispose();
  }
});

test("a report with no errors removes an earlier report's grid of errors", async () => {
  const out = path.join(dir, 'report-again');
  mkdirSync(out);
  writeFileSync(path.join(out, 'errors.svg'), '<svg>an earlier evaluation</svg>');
  writeFileSync(path.join(out, 'curves.svg'), '<svg>an earlier run</svg>');
  const classes = ['a', 'b'];
  const scored = { logits: Float32Array.from([3, 0, 0, 3]), labels: Int32Array.from([0, 1]), files: ['a/1.png', 'b/1.png'], failed: [] };
  const judge = { classes, temperature: 1, uncertaintyThreshold: 0.5, reasons: () => [] };
  const predictions = imagePredictions(scored, judge);
  await writeReport(out, 'Every image right', evaluateScores(scored, judge, predictions), { predictions });
  assert.deepEqual(readdirSync(out).sort(), ['confusion.svg', 'reliability.svg', 'report.md']);
});

test('calibrate refuses an --out that is its own --model or --split, and leaves them as they were', async () => {
  await ready;
  const model = path.join(dir, 'own.safetensors');
  await saveUntrainedModel(model);
  const before = sha256(model);
  const split = path.join(dir, 'own-split.csv');
  writeFileSync(split, `file,label,part\n${LABELS.map((label) => `${label}/0.png,${label},val`).join('\n')}\n`);
  const splitBefore = readFileSync(split, 'utf8');
  for (const [args, flag] of [
    [[data, '--model', model, '--out', model], '--model'],
    [['--images', data, '--split', split, '--model', model, '--out', split], '--split'],
  ] as const) {
    const run = hemato(['calibrate', ...args]);
    assert.equal(run.status, 2, run.stderr);
    assert.match(run.stderr, new RegExp(`is the ${flag} file this command reads, and would replace it; give another --out`));
  }
  assert.equal(sha256(model), before, 'the model is unchanged');
  assert.equal(readFileSync(split, 'utf8'), splitBefore, 'the split is unchanged');
});

test('calibrate says which files it left out and exits 1; a split row of an unknown class is skipped as eval skips it', async () => {
  await ready;
  const set = path.join(dir, 'calibration-with-bad');
  for (const label of LABELS) {
    mkdirSync(path.join(set, label), { recursive: true });
    for (let i = 0; i < PER_CLASS; i++) writeFileSync(path.join(set, label, `${i}.png`), readFileSync(path.join(data, label, `${i}.png`)));
  }
  writeFileSync(path.join(set, 'monocyte', 'broken.png'), 'not an image');
  mkdirSync(path.join(set, 'blast'));
  writeFileSync(path.join(set, 'blast', '0.png'), readFileSync(path.join(data, 'monocyte', '0.png')));
  const out = path.join(dir, 'calibrated-bad.safetensors');
  const run = hemato(['calibrate', set, '--model', modelFile, '--out', out, '--json']);
  assert.equal(run.status, 1, run.stderr);
  const summary = JSON.parse(run.stdout);
  assert.equal(summary.n, 2 * PER_CLASS);
  assert.deepEqual(summary.failed.map((f: { path: string }) => path.basename(f.path)).sort(), ['blast', 'broken.png']);
  assert.match(run.stderr, /2 files could not be scored \(see failed in --json\); the calibration leaves them out/);
  assert.ok(existsSync(out), 'the calibrated model is written');

  const split = path.join(dir, 'unknown-label.csv');
  const rows = LABELS.flatMap((label) => Array.from({ length: PER_CLASS }, (_, i) => `${label}/${i}.png,${label},val`));
  writeFileSync(split, ['file,label,part', ...rows].join('\n').replace('eosinophil/0.png,eosinophil', 'eosinophil/0.png,blast'));
  const fromSplit = hemato(['calibrate', data, '--split', split, '--model', modelFile, '--out', path.join(dir, 'from-split.safetensors'), '--json']);
  assert.equal(fromSplit.status, 1, fromSplit.stderr);
  const splitSummary = JSON.parse(fromSplit.stdout);
  assert.equal(splitSummary.n, 2 * PER_CLASS - 1);
  assert.match(splitSummary.failed[0].reason, /^unknown-label: row 2: unknown label "blast"/);
});

test('calibrate --split --ood fits the detector on the train part and records the split it read', async () => {
  await ready;
  const out = path.join(dir, 'with-detector.safetensors');
  const calibrate = (set: string, split: string) => hemato(['calibrate', set, '--split', split, '--ood', '--model', modelFile, '--out', out, '--json']);
  const writeSplit = (file: string, labels: readonly string[], perClass: number, trainPerClass: number) =>
    writeFileSync(
      file,
      [
        'file,label,part',
        ...labels.flatMap((label) => Array.from({ length: perClass }, (_, i) => `${label}/${i}.png,${label},${i < trainPerClass ? 'train' : 'val'}`)),
      ].join('\n'),
    );
  // The detector needs every class among the training images, and two images per class; else nothing is written.
  const twoClasses = path.join(dir, 'two-classes.csv');
  writeSplit(twoClasses, LABELS, PER_CLASS, 9);
  const missing = calibrate(data, twoClasses);
  assert.equal(missing.status, 1, missing.stderr);
  assert.match(
    missing.stderr,
    /--ood fits the detector on training images of every class, and the train part of .* has none of basophil, erythroblast, ig, lymphocyte, neutrophil, platelet;/,
  );
  const all = path.join(dir, 'all-classes');
  for (const [c, label] of PBC_CLASSES.entries()) {
    mkdirSync(path.join(all, label), { recursive: true });
    for (let i = 0; i < 5; i++) {
      await sharp({ create: { width: 70, height: 70, channels: 3, background: { r: 30 * c, g: 40 * i, b: 90 } } })
        .png()
        .toFile(path.join(all, label, `${i}.png`));
    }
  }
  const split = path.join(dir, 'all-classes.csv');
  writeSplit(split, PBC_CLASSES, 5, 1);
  const few = calibrate(all, split);
  assert.equal(few.status, 1, few.stderr);
  assert.match(few.stderr, /--ood fits the detector on at least 16 training images \(two per class\), and the train part of .* has 8 it can use/);
  assert.ok(!existsSync(out));

  writeSplit(split, PBC_CLASSES, 5, 2); // 16 training images, 24 to calibrate on
  // A sample smaller than the statistics need is the flag's fault, not the split's.
  const small = hemato(['calibrate', all, '--split', split, '--ood', '--ood-sample', '10', '--model', modelFile, '--out', out]);
  assert.equal(small.status, 2, small.stderr);
  assert.match(small.stderr, /--ood-sample 10 is too few: the detector is fitted on at least 16 training images \(two per class\)/);
  assert.ok(!existsSync(out));
  const run = calibrate(all, split);
  assert.equal(run.status, 0, run.stderr);
  const summary = JSON.parse(run.stdout);
  assert.equal(summary.n, 3 * PBC_CLASSES.length, 'calibrated on the val part');
  assert.ok(summary.ood && Number.isFinite(summary.ood.threshold), JSON.stringify(summary.ood));
  const info = JSON.parse(hemato(['info', out, '--json']).stdout);
  assert.equal(info.provenance.validation.split, sha256(split), 'the validation record names the split by its hash');
});

test("info escapes control characters in the model's class names and provenance", async () => {
  const file = path.join(dir, 'control.safetensors');
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  await saveModel(file, model, {
    classes: ['red\u001b[31m', ...PBC_CLASSES.slice(1)],
    normalization: IMAGENET_NORMALIZATION,
    preprocessing: { geometry: { field: null, size: 64 }, mpm: null },
    provenance: { 'note\u001b[2J': 'clear\u001b[2Jscreen' },
  });
  model.dispose();
  const run = hemato(['info', file]);
  assert.equal(run.status, 0, run.stderr);
  assert.ok(!run.stdout.includes('\u001b'), 'no raw escape reaches the terminal');
  assert.match(run.stdout, /^classes +8: red\\x1b\[31m, eosinophil/m);
  assert.match(run.stdout, /^ {2}note\\x1b\[2J +clear\\x1b\[2Jscreen$/m);
  const json = JSON.parse(hemato(['info', file, '--json']).stdout);
  assert.equal(json.classes[0], 'red\u001b[31m', '--json keeps the exact names');
});

test("doctor --json gives each check's detail without the printout's indentation", () => {
  const run = hemato(['doctor', '--json', '--device', 'cpu']);
  const report = JSON.parse(run.stdout);
  const precision = report.checks.find((c: { name: string }) => c.name === 'precision');
  if (!precision) return;
  assert.doesNotMatch(precision.detail, /\n /, 'lines are not padded for a terminal');
  const plain = hemato(['doctor', '--device', 'cpu']);
  assert.match(plain.stdout, /\n {18}inference /, 'the printout still lines them up');
});
