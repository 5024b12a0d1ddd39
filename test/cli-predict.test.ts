// predict and eval from the CLI with a small model: bad files get per-file errors and the rest are classified.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import * as E from '../src/engine/index.js';
import { createModel } from '../src/models/index.js';
import { saveModel } from '../src/models/io.js';
import { loadClassifier } from '../src/api/classifier.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { SHARED } from './helpers.js';

const run = promisify(execFile);
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-predict-'));
const modelFile = path.join(dir, 'model.safetensors');

async function fixtures(): Promise<{ good: string[]; bad: string[]; folder: string }> {
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  await saveModel(
    modelFile,
    model,
    {
      classes: [...PBC_CLASSES],
      normalization: IMAGENET_NORMALIZATION,
      temperature: 1.5,
      uncertaintyThreshold: 0.9,
      preprocessing: { geometry: { field: null, size: 64 }, mpm: null },
    },
    { dtype: 'float16' },
  );
  model.dispose();
  const folder = path.join(dir, 'data');
  const good: string[] = [];
  for (const label of ['neutrophil', 'platelet']) {
    mkdirSync(path.join(folder, label), { recursive: true });
    for (let i = 0; i < 2; i++) {
      const file = path.join(folder, label, `${label}_${i}.png`);
      await sharp({ create: { width: 90 + i, height: 80, channels: 3, background: { r: 200, g: 100 + 50 * i, b: 150 } } })
        .png()
        .toFile(file);
      good.push(file);
    }
  }
  const bad = [path.join(folder, 'neutrophil', 'empty.jpg'), path.join(folder, 'neutrophil', 'text.jpg')];
  writeFileSync(bad[0], '');
  writeFileSync(bad[1], 'this is not an image');
  return { good, bad, folder };
}

const ready = fixtures();

test('loadClassifier().classify returns top-k labels with probabilities and an uncertain flag', async () => {
  const { good } = await ready;
  const classifier = await loadClassifier(modelFile);
  const result = await classifier.classify(good[0], { topK: 3 });
  assert.equal(result.predictions.length, 3);
  assert.ok(result.predictions.every((p) => PBC_CLASSES.includes(p.label) && p.score >= 0 && p.score <= 1));
  assert.ok(result.predictions[0].score >= result.predictions[1].score);
  assert.equal(result.uncertain, result.predictions[0].score < 0.9);
  const batch = await classifier.classifyBatch([good[1], new Uint8Array([1, 2, 3])]);
  assert.ok('predictions' in batch[0]);
  assert.ok('error' in batch[1]);
  await assert.rejects(classifier.classify(path.join(dir, 'missing.png')), /missing.png/);
  classifier.dispose();
});

test("classifyBatch's onResults hears each batch's results in order, each before the next batch is read", async () => {
  const { good, bad } = await ready;
  const inputs = [...good, ...bad]; // 6: two batches of 4 and 2
  const classifier = await loadClassifier(modelFile);
  try {
    const heard: { start: number; count: number; doneBefore: number }[] = [];
    let done = 0;
    const results = await classifier.classifyBatch(inputs, {
      batchSize: 4,
      onProgress: (n) => (done = n),
      onResults: (batch, start) => heard.push({ start, count: batch.length, doneBefore: done }),
    });
    assert.deepEqual(heard, [
      { start: 0, count: 4, doneBefore: 0 },
      { start: 4, count: 2, doneBefore: 4 },
    ]);
    const again: unknown[] = [];
    await classifier.classifyBatch(inputs, { batchSize: 4, onResults: (batch) => again.push(...batch) });
    assert.deepEqual(again, results);
    assert.ok('error' in results[5]);
    await assert.rejects(classifier.classifyBatch(inputs, { onResults: 'print' as never }), /onResults must be a function, got 'print'/);
  } finally {
    classifier.dispose();
  }
});

test('hemato predict --json classifies good files and reports bad ones without stopping', async () => {
  const { good, bad } = await ready;
  const outcome = await run(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, '--json', ...good, ...bad]).catch((e) => e);
  assert.equal(outcome.code, 1); // some files failed
  const report = JSON.parse(outcome.stdout);
  assert.equal(report.results.length, 6);
  assert.equal(report.failed, 2);
  for (const r of report.results.slice(0, 4)) assert.ok(r.predictions && typeof r.uncertain === 'boolean', JSON.stringify(r));
  assert.match(report.results[4].error, /empty/i);
  assert.match(report.results[5].error, /not an image|text/i);
  const whole = JSON.parse((await run(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, '--json', '--field', 'none', good[0]])).stdout);
  assert.equal(whole.failed, 0);
  // The pixel limit the too-large error points to is a flag of predict.
  const limited = await run(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, '--json', '--max-pixels', '100', good[0]]).catch((e) => e);
  assert.equal(limited.code, 1);
  assert.match(JSON.parse(limited.stdout).results[0].error, /exceeds the pixel limit of .*; raise maxPixels \(--max-pixels\) only if the file is trusted/);
  const usage = await run(process.execPath, ['bin/hemato.js', 'predict', '--max-pixels', '0', good[0]]).catch((e) => e);
  assert.equal(usage.code, 2);
});

test('hemato predict - classifies the image on standard input, refused when given twice, oversized or empty', async () => {
  const { good } = await ready;
  const predict = (args: string[], input: Buffer) =>
    spawnSync(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, ...args], { input, encoding: 'utf8' });
  const bytes = readFileSync(good[1]);
  const piped = predict(['--json', '-', good[0]], bytes);
  assert.equal(piped.status, 0, piped.stderr);
  const report = JSON.parse(piped.stdout);
  assert.deepEqual(
    report.results.map((r: { file: string }) => r.file),
    ['-', good[0]],
  );
  const direct = JSON.parse(predict(['--json', good[1], good[0]], Buffer.alloc(0)).stdout); // batched alike
  assert.deepEqual(report.results[0].predictions, direct.results[0].predictions, 'the same image by path and on standard input');
  const twice = predict(['-', '-'], bytes);
  assert.equal(twice.status, 2);
  assert.match(twice.stderr, /- \(standard input\) can be given once/);
  const oversized = predict(['--max-file-size', '100B', '-'], bytes);
  assert.equal(oversized.status, 1);
  assert.match(oversized.stderr, /standard input is over the 100 B limit; raise --max-file-size only if the image is trusted/);
  const empty = predict(['--csv', '-'], Buffer.alloc(0));
  assert.equal(empty.status, 1);
  assert.match(empty.stdout, /^-,,,,,empty file \(0 bytes\),/m);
});

test('hemato predict prints its document on stdout when every input is skipped, and still fails', async () => {
  const { good } = await ready;
  const missing = path.join(dir, 'no-such-image.png');
  // Both inputs are skipped before classification: one is not there, the other is over --max-file-size.
  const predict = (format: string) =>
    run(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, format, '--max-file-size', '10B', missing, good[0]]).catch((e) => e);
  const stderrSays = /no files to classify in the given inputs: 2 skipped \(reasons above\); give image files, or folders that contain them/;

  const json = await predict('--json');
  assert.equal(json.code, 1);
  assert.match(json.stderr, stderrSays);
  const report = JSON.parse(json.stdout);
  assert.deepEqual(report.results, []);
  assert.equal(report.failed, 0);
  assert.equal(report.model, 'convnext_only_atto');
  assert.equal(report.model_info.name, 'model.safetensors');
  assert.equal(report.uncertainty_threshold, 0.9);
  assert.deepEqual(
    report.skipped.map((s: { file: string }) => s.file),
    [missing, good[0]],
  );
  assert.match(report.skipped[0].error, /no such file/);
  assert.match(report.skipped[1].error, /over the 10 B limit/);

  // The CSV keeps its header, with one row per skipped input; JSON lines give one line each.
  const csv = await predict('--csv');
  assert.equal(csv.code, 1);
  assert.match(csv.stderr, stderrSays);
  const lines = csv.stdout.trimEnd().split('\n');
  assert.equal(lines.length, 3);
  assert.match(lines[0], /^file,label,score,/);
  assert.ok(lines[1].startsWith(`${missing},,,,,skipped: `), lines[1]);
  const jsonl = await predict('--jsonl');
  assert.equal(jsonl.code, 1);
  assert.deepEqual(
    jsonl.stdout
      .trimEnd()
      .split('\n')
      .map((line: string) => JSON.parse(line).file),
    [missing, good[0]],
  );

  // An empty folder: nothing skipped, an empty list all the same.
  const empty = path.join(dir, 'empty-folder');
  mkdirSync(empty, { recursive: true });
  const none = await run(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, '--json', empty]).catch((e) => e);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /no files to classify in the given inputs; give image files/);
  assert.deepEqual([JSON.parse(none.stdout).results, JSON.parse(none.stdout).skipped], [[], []]);
});

test('hemato predict --precision bf16 warns where bf16 would be emulated, and only there', async () => {
  const { good } = await ready;
  const asked = await run(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, '--precision', 'bf16', '--device', 'cpu', '--json', good[0]]);
  assert.equal(JSON.parse(asked.stdout).results.length, 1);
  const warning = /warning: bf16 is emulated on this CPU .*--precision auto chooses fp32 here/;
  if (E.bf16Emulated('cpu')) assert.match(asked.stderr, warning);
  else assert.doesNotMatch(asked.stderr, warning);
  const chosen = await run(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, '--json', good[0]]);
  assert.equal(JSON.parse(chosen.stdout).results.length, 1);
  assert.doesNotMatch(chosen.stderr, warning);
});

test('hemato calibrate fits a temperature and a threshold and stores them in a new model file', async () => {
  const { folder } = await ready;
  const calibration = path.join(dir, 'calibration');
  for (const label of ['eosinophil', 'monocyte']) {
    mkdirSync(path.join(calibration, label), { recursive: true });
    for (let i = 0; i < 12; i++) {
      await sharp({ create: { width: 70, height: 70, channels: 3, background: { r: 10 * i, g: label === 'monocyte' ? 200 : 40, b: 90 } } })
        .png()
        .toFile(path.join(calibration, label, `${i}.png`));
    }
  }
  const out = path.join(dir, 'calibrated.safetensors');
  const { stdout } = await run(process.execPath, ['bin/hemato.js', 'calibrate', calibration, '--model', modelFile, '--out', out, '--json']);
  const summary = JSON.parse(stdout);
  assert.equal(summary.n, 24);
  assert.ok(summary.temperature > 0 && summary.nll_after <= summary.nll_before + 1e-9);
  const calibrated = await loadClassifier(out);
  assert.equal(calibrated.temperature, summary.temperature);
  assert.equal(calibrated.uncertaintyThreshold, summary.uncertainty_threshold);
  // The file records what the model scored on the images it was calibrated on.
  const validation = calibrated.metadata.provenance.validation as { n: number; accuracy: number; macro_f1: number };
  assert.equal(validation.n, 24);
  assert.ok(validation.accuracy >= 0 && validation.accuracy <= 1 && validation.macro_f1 >= 0);
  // --tta fits the averaged views' calibration beside the single view's, which stays as it was.
  const withTta = path.join(dir, 'calibrated-tta.safetensors');
  const ttaSummary = JSON.parse(
    (await run(process.execPath, ['bin/hemato.js', 'calibrate', calibration, '--model', out, '--out', withTta, '--tta', '--json'])).stdout,
  );
  const [single, averaged] = [await loadClassifier(withTta), await loadClassifier(withTta, { tta: true })];
  assert.equal(single.temperature, summary.temperature);
  assert.deepEqual(single.metadata.tta, { temperature: ttaSummary.temperature, uncertaintyThreshold: ttaSummary.uncertainty_threshold });
  assert.equal(averaged.temperature, ttaSummary.temperature);
  assert.equal(averaged.uncertaintyThreshold, ttaSummary.uncertainty_threshold);
  single.dispose();
  averaged.dispose();
  calibrated.dispose();
  await assert.rejects(run(process.execPath, ['bin/hemato.js', 'calibrate', folder, '--model', modelFile]), /calibration needs a real validation set/);
});

test('hemato eval --json reports the required keys on a folder with bad files', async () => {
  const { folder } = await ready;
  // Two files cannot be read: the figures are printed, and the exit code says that some were left out.
  const failed = await run(process.execPath, ['bin/hemato.js', 'eval', folder, '--model', modelFile, '--json', '--report', path.join(dir, 'report')]).then(
    () => null,
    (error: { code: number; stdout: string }) => error,
  );
  assert.equal(failed?.code, 1);
  const report = JSON.parse(failed!.stdout);
  for (const key of ['n', 'accuracy', 'balanced_accuracy', 'macro_f1', 'per_class', 'confusion_matrix', 'ece', 'ece_uncalibrated', 'nll'])
    assert.ok(key in report, key);
  assert.equal(report.n, 4);
  assert.deepEqual(report.classes_evaluated, ['neutrophil', 'platelet']);
  assert.equal(report.skipped.length, 2);
  for (const rate of [report.accuracy, report.balanced_accuracy, report.macro_f1, report.ece]) assert.ok(rate >= 0 && rate <= 1);
});

test('the bundled model loads and classifies PBC cells, one of each class', async (t) => {
  const pbc = path.join(SHARED, 'data/pbc');
  if (!existsSync(pbc)) return t.skip('../shared/data/pbc is not here');
  const classifier = await loadClassifier();
  assert.deepEqual(classifier.metadata.classes, [...PBC_CLASSES]);
  assert.ok((classifier.metadata.temperature ?? 0) > 0 && (classifier.metadata.uncertaintyThreshold ?? 0) > 0, 'calibrated');
  // The first images of each class folder; most of them were training images, so this checks the file and the
  // pipeline end to end, not accuracy (docs/results.md has that).
  const files = PBC_CLASSES.map((label) => {
    const name = readdirSync(path.join(pbc, label))
      .filter((f) => !f.startsWith('.'))
      .sort()[0];
    return path.join(pbc, label, name);
  });
  const results = await classifier.classifyBatch(files);
  const right = results.filter((r, i) => 'predictions' in r && r.predictions[0].label === PBC_CLASSES[i]).length;
  assert.ok(right >= 7, `${right} of 8 right: ${JSON.stringify(results.map((r) => ('predictions' in r ? r.predictions[0].label : r.error)))}`);
});
