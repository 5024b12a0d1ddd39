// The evaluation report's plots and Markdown, from made-up scores: each plot decodes and carries what a reader needs
// (axes, counts, legends, the best epoch), and the report states the uncertainty threshold and rate.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { errorsBySubtype, evaluateScores, imagePredictions, type Judge, writeReport } from '../src/eval/evaluation.js';
import { reliabilityBins } from '../src/eval/metrics.js';
import { confusionSvg, curvesSvg, type EpochRecord, errorGridSvg, niceTicks, reliabilitySvg } from '../src/eval/report.js';

const dir = mkdtempSync(path.join(tmpdir(), 'hemato-report-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Renders an SVG as libvips does; a malformed one throws. */
async function decode(svg: string | Buffer): Promise<{ width: number; height: number }> {
  const { info } = await sharp(Buffer.from(svg)).png().toBuffer({ resolveWithObject: true });
  return info;
}
const texts = (svg: string) => [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]);

test('niceTicks gives round steps, inside the range or covering it', () => {
  assert.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0, 0.9, 5), [0, 0.2, 0.4, 0.6, 0.8]);
  assert.deepEqual(niceTicks(0, 0.9, 5, true), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0, 2083, 3), [0, 1000, 2000]);
});

test('the confusion matrix has both axes named, counts in the cells, errors outlined in red and a colour scale', async () => {
  const labels = ['basophil', 'eosinophil', 'platelet'];
  const svg = confusionSvg(
    [
      [5, 1, 0],
      [0, 0, 0],
      [0, 3, 7],
    ],
    labels,
  );
  const words = texts(svg);
  for (const label of labels) assert.ok(words.includes(label), `${label} names a column`);
  assert.equal(words.filter((w) => w === 'basophil').length, 2, 'basophil names a row and a column');
  assert.equal(words.filter((w) => w === 'eosinophil').length, 1, 'a class without images has no row');
  assert.ok(words.includes('true class') && words.includes('predicted class'));
  for (const count of ['5', '1', '3', '7']) assert.ok(words.includes(count), `count ${count} is shown`);
  assert.equal(svg.match(/stroke="#b2182b" stroke-width="2"/g)?.length, 2, 'each of the two error cells is outlined');
  assert.ok(words.includes('100 %') && words.includes('correct') && words.includes('error'), 'the colour scale is labelled');
  assert.ok((await decode(svg)).width > 300);
});

test('the reliability diagram draws both curves, the diagonal, axes and the count in each bin', async () => {
  // 40 answers: confident and right, or middling and often wrong.
  const n = 40;
  const probs = new Float64Array(n * 2);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const p = i < 30 ? 0.95 : 0.6;
    probs[2 * i] = p;
    probs[2 * i + 1] = 1 - p;
    labels[i] = i < 28 || i >= 37 ? 0 : 1;
  }
  const bins = reliabilityBins(probs, labels, n, 2);
  const svg = reliabilitySvg({ bins, label: 'after temperature scaling' }, { bins: reliabilityBins(probs, labels, n, 2), label: 'before temperature scaling' });
  assert.equal(svg.match(/<polyline/g)?.length, 2, 'a curve before and one after calibration');
  const words = texts(svg);
  for (const w of [
    'accuracy',
    'confidence (top-class probability)',
    '0.2',
    '0.8',
    'perfect calibration',
    'after temperature scaling',
    'before temperature scaling',
  ])
    assert.ok(words.includes(w), `${w} is written`);
  assert.ok(words.includes('30') && words.includes('10'), 'the images in each used bin are counted');
  const single = reliabilitySvg({ bins, label: 'no temperature scaling' });
  assert.equal(single.match(/<polyline/g)?.length, 1);
  await decode(svg);
  await decode(single);
});

test('training curves: one epoch is a point, validation loss is drawn, and the best epoch is marked', async () => {
  const one: EpochRecord[] = [{ epoch: 1, train_loss: 0.9, val_nll: 0.4, val_accuracy: 0.88, val_macro_f1: 0.87, best: true }];
  const svg = curvesSvg(one);
  assert.equal(svg.match(/<polyline/g), null, 'no line through a single point');
  assert.ok((svg.match(/<circle/g)?.length ?? 0) >= 4, 'training loss, validation loss, accuracy and macro-F1 are each a point');
  const words = texts(svg);
  for (const w of ['epoch', 'loss', 'training loss', 'validation loss (NLL)', 'macro-F1', '1']) assert.ok(words.includes(w), `${w} is written`);
  assert.ok(words.some((w) => w.startsWith('best epoch: 1 ')));
  await decode(svg);

  const many: EpochRecord[] = [0.6, 0.8, 0.75, 0.7].map((f1, i) => ({
    epoch: i + 1,
    train_loss: 1 / (i + 1),
    val_nll: 0.5 + i * 0.01,
    val_macro_f1: f1,
    best: i <= 1,
  }));
  // A resumed run logs an epoch again: the later entry counts.
  many.push({ ...many[3], val_macro_f1: 0.72 });
  const curves = curvesSvg(many);
  assert.equal(curves.match(/<polyline/g)?.length, 3, 'training loss, validation loss and macro-F1 (no accuracy logged)');
  assert.ok(texts(curves).some((w) => w.startsWith('best epoch: 2 (validation macro-F1 80.00 %)')));
  await decode(curves);
});

test('the grid of errors embeds each picture with its true and predicted class', async () => {
  const picture = {
    mime: 'image/png',
    data: await sharp({ create: { width: 8, height: 8, channels: 3, background: '#c08080' } })
      .png()
      .toBuffer(),
  };
  const svg = errorGridSvg([
    { picture, label: 'ig', predicted: 'neutrophil', probability: 0.9, uncertain: false },
    { picture: null, label: 'monocyte', predicted: 'ig', probability: 0.6, uncertain: true },
  ]);
  assert.equal(svg.match(/<image /g)?.length, 1);
  const words = texts(svg);
  for (const w of ['ig', '→ neutrophil', '90.00 %', 'monocyte', '→ ig', '60.00 %, flagged', 'unreadable']) assert.ok(words.includes(w), `${w} is written`);
  await decode(svg);
});

test('subtypes come only from PBC file names', () => {
  const probs = Float64Array.from([0.9, 0.1, 0.2, 0.8]);
  const labels = Int32Array.from([0, 0]);
  assert.equal(errorsBySubtype(['neutrophil/BloodImage_00001_1.jpg', 'x/cell_2.png'], labels, probs, ['a', 'b']), null);
  assert.deepEqual(errorsBySubtype(['neutrophil/SNE_1.jpg', 'neutrophil/BNE_2.jpg'], labels, probs, ['a', 'b']), {
    SNE: { n: 1, errors: 0, accuracy: 1, predicted_as: {} },
    BNE: { n: 1, errors: 1, accuracy: 0, predicted_as: { b: 1 } },
  });
});

test('writeReport states the threshold, the uncertain rate and the reasons, and lists the errors by their relative names', async () => {
  const judge: Judge = {
    classes: ['lymphocyte', 'monocyte'],
    temperature: 2,
    uncertaintyThreshold: 0.7,
    reasons: (top) => (top < 0.7 ? ['low-confidence'] : []),
  };
  // Logits 4 and 0 at T = 2: p ≈ 0.88; logits 1 and 0: p ≈ 0.62.
  const scored = {
    logits: Float32Array.from([4, 0, 4, 0, 0, 4, 1, 0]),
    labels: Int32Array.from([0, 1, 1, 1]),
    files: ['lymphocyte/a.jpg', 'monocyte/b.jpg', 'monocyte/c.jpg', 'monocyte/d.jpg'],
    failed: [],
  };
  const predictions = imagePredictions(scored, judge);
  assert.deepEqual(
    predictions.map((p) => [p.file, p.predicted, p.uncertain]),
    [
      ['lymphocyte/a.jpg', 'lymphocyte', false],
      ['monocyte/b.jpg', 'lymphocyte', false],
      ['monocyte/c.jpg', 'monocyte', false],
      ['monocyte/d.jpg', 'lymphocyte', true],
    ],
  );
  const evaluation = evaluateScores(scored, judge, predictions);
  assert.equal(evaluation.uncertain_fraction, 0.25);
  assert.equal(evaluation.uncertainty_threshold, 0.7);
  assert.deepEqual(evaluation.uncertain_reasons, { 'low-confidence': 1 });
  assert.equal(evaluation.unflagged_accuracy, 2 / 3);
  const out = path.join(dir, 'report');
  const loaded: number[] = [];
  const file = await writeReport(out, 'Evaluation', evaluation, {
    predictions,
    image: async (i) => (loaded.push(i), { width: 4, height: 4, data: new Uint8Array(48).fill(200) }),
    history: [{ epoch: 1, train_loss: 1, val_nll: 0.5, val_macro_f1: 0.5, best: true }],
  });
  assert.deepEqual(loaded.sort(), [1, 3], 'only the misclassified images are loaded');
  const report = readFileSync(file, 'utf8');
  assert.match(report, /\| uncertain \| 25\.00 % \(1 of 4\) \|/);
  assert.match(report, /\| uncertainty threshold \| 0\.700 /);
  assert.match(report, /\| low-confidence \| 1 \| 25\.00 % \|/);
  assert.match(report, /\| 1 \| monocyte\/b\.jpg \| monocyte \| lymphocyte \| 88\.08 % \| no \|/);
  assert.match(report, /\| 2 \| monocyte\/d\.jpg \| monocyte \| lymphocyte \| 62\.25 % \| low-confidence \|/);
  assert.match(report, /the weights kept are those of epoch 1/);
  for (const plot of ['confusion.svg', 'reliability.svg', 'curves.svg', 'errors.svg']) {
    assert.ok(report.includes(`](${plot})`), `report.md shows ${plot}`);
    await decode(readFileSync(path.join(out, plot)));
  }
  assert.ok(!report.includes('Errors by file-name subtype'));
});
