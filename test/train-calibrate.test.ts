// Calibration: warnings when the fit is doubtful, refusal of non-finite models, and the bundled model by default.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import * as E from '../src/engine/index.js';
import { BUNDLED_MODEL, loadClassifier } from '../src/api/classifier.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { saveModel } from '../src/models/io.js';
import { createModel } from '../src/models/index.js';
import { calibrate, TEMPERATURE_RANGE } from '../src/eval/calibration.js';
import { NonFiniteModelError } from '../src/eval/finite.js';

const run = promisify(execFile);
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-calibrate-'));
const hemato = path.resolve('bin/hemato.js');

/** Two-class logits: `count` rows of [margin, 0], the first `correct` of them labelled 0 (right), the rest 1. */
function rows(count: number, margin: number, correct: number): { logits: number[]; labels: number[] } {
  return { logits: Array.from({ length: count }, () => [margin, 0]).flat(), labels: Array.from({ length: count }, (_, i) => (i < correct ? 0 : 1)) };
}

function joined(...parts: { logits: number[]; labels: number[] }[]): { logits: number[]; labels: number[] } {
  return { logits: parts.flatMap((p) => p.logits), labels: parts.flatMap((p) => p.labels) };
}

test('calibrate warns when ECE gets worse', () => {
  // Modest, always-right logits next to very confident ones that are wrong a fifth of the time: the NLL-optimal T
  // cools the second group down and drags the first one far below its accuracy.
  const { logits, labels } = joined(rows(50, 2, 50), rows(50, 20, 40));
  const fit = calibrate(logits, labels, 2, 0.99);
  assert.ok(fit.eceAfter > fit.eceBefore);
  assert.ok(fit.nllAfter < fit.nllBefore);
  assert.equal(fit.warnings.length, 1);
  assert.match(fit.warnings[0], /^ECE got worse: 0\.\d{4} → 0\.\d{4}/);
});

test('calibrate warns when the temperature sits at either end of its search', () => {
  const overconfident = rows(40, 10, 20);
  const high = calibrate(overconfident.logits, overconfident.labels, 2, 0.99);
  assert.ok(Math.abs(high.temperature - TEMPERATURE_RANGE.max) < 0.01);
  assert.ok(
    high.warnings.some((w) => /upper limit \(20\): the model is far more confident than it is right/.test(w)),
    high.warnings.join('\n'),
  );
  const underconfident = rows(40, 0.1, 40);
  const low = calibrate(underconfident.logits, underconfident.labels, 2, 0.99);
  assert.ok(
    low.warnings.some((w) => /lower limit \(0\.05\): the model is far less confident/.test(w)),
    low.warnings.join('\n'),
  );
});

test('calibrate warns when every image was classified right, and when there are few images', () => {
  // Right answers only: nothing bounds the temperature from below or the threshold from above.
  const perfect = rows(150, 3, 150);
  const fit = calibrate(perfect.logits, perfect.labels, 2, 0.995);
  assert.ok(
    fit.warnings.some((w) => /^all 150 images were classified right: with no mistakes to learn from/.test(w)),
    fit.warnings.join('\n'),
  );
  const few = joined(rows(40, 2, 36), rows(20, 1, 20));
  assert.ok(
    calibrate(few.logits, few.labels, 2, 0.99).warnings.some((w) => /^only 60 images \(4 misclassified\)/.test(w)),
    'few images',
  );
});

test('calibrate is quiet on a reasonable fit, and refuses non-finite outputs', () => {
  // Labels drawn from the model's own probabilities: already calibrated, T near 1.
  let seed = 5;
  const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  const logits: number[] = [];
  const labels: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const margin = 4 * random() - 2;
    logits.push(margin, 0);
    labels.push(random() < 1 / (1 + Math.exp(-margin)) ? 0 : 1);
  }
  const fit = calibrate(logits, labels, 2, 0.99);
  assert.ok(Math.abs(fit.temperature - 1) < 0.2, String(fit.temperature));
  assert.deepEqual(fit.warnings, []);
  assert.throws(
    () => calibrate([1, 0, Number.NaN, 0], [0, 1], 2, 0.99),
    (e: Error) => e instanceof NonFiniteModelError && /1 of 4 model outputs .* are NaN or infinite/.test(e.message),
  );
});

async function calibrationImages(): Promise<string> {
  const folder = path.join(dir, 'calibration');
  for (const label of ['eosinophil', 'monocyte']) {
    mkdirSync(path.join(folder, label), { recursive: true });
    for (let i = 0; i < 12; i++) {
      await sharp({ create: { width: 70, height: 70, channels: 3, background: { r: 10 * i, g: label === 'monocyte' ? 200 : 40, b: 90 } } })
        .png()
        .toFile(path.join(folder, label, `${i}.png`));
    }
  }
  return folder;
}

test('hemato calibrate defaults to the bundled model and writes the result to the current folder', async (t) => {
  if (!existsSync(BUNDLED_MODEL)) return t.skip('the bundled model is not here');
  const folder = await calibrationImages();
  const cwd = mkdtempSync(path.join(tmpdir(), 'hemato-calibrate-cwd-'));
  const { stdout, stderr } = await run(process.execPath, [hemato, 'calibrate', folder, '--json'], { cwd, timeout: 120_000 });
  const summary = JSON.parse(stdout);
  const out = path.join(cwd, 'hemato-convnext-atto.calibrated.safetensors');
  assert.equal(path.resolve(cwd, summary.model), out);
  assert.ok(existsSync(out));
  assert.equal(summary.n, 24);
  assert.ok(Array.isArray(summary.warnings));
  for (const warning of summary.warnings) assert.ok(stderr.includes(`warning: ${warning}`));
  const calibrated = await loadClassifier(out);
  assert.equal(calibrated.temperature, summary.temperature);
  calibrated.dispose();
});

test('hemato calibrate refuses a model with NaN weights', async () => {
  const folder = path.join(dir, 'calibration');
  if (!existsSync(folder)) await calibrationImages();
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  E.noGrad(() => model.parameters()[3].fill_(Number.NaN));
  const file = path.join(dir, 'nan.safetensors');
  await saveModel(file, model, {
    classes: [...PBC_CLASSES],
    normalization: IMAGENET_NORMALIZATION,
    preprocessing: { geometry: { field: null, size: 64 }, mpm: null },
  });
  model.dispose();
  const outcome = await run(process.execPath, [hemato, 'calibrate', folder, '--model', file], { timeout: 120_000 }).catch((e) => e);
  assert.equal(outcome.code, 1);
  assert.match(outcome.stderr, /nan\.safetensors has NaN or infinite weights \(.+\); it is not saved/);
  assert.ok(!existsSync(path.join(dir, 'nan.calibrated.safetensors')));
});
