// Metrics and calibration against cases computed by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { computeMetrics, expectedCalibrationError } from '../src/eval/metrics.js';
import { chooseUncertaintyThreshold, fitTemperature, nllAt, softmaxRows } from '../src/eval/calibration.js';

const close = (a: number, b: number, tol = 1e-9) => assert.ok(Math.abs(a - b) <= tol, `${a} ≠ ${b}`);

test('intervals (Wilson for the accuracy, bootstrap for the balanced accuracy): around the estimate, the same every time, narrower with more images, wide for a rare class', () => {
  const classes = ['a', 'b'];
  // 90 % correct; class b has 3 images, one of them wrong.
  const case_ = (n: number) => {
    const labels = Array.from({ length: n }, (_, i) => (i < 3 ? 1 : 0));
    const predicted = labels.map((l, i) => (i === 0 || (i >= 3 && i % 10 === 0) ? 1 - l : l));
    return computeMetrics(
      predicted.flatMap((p) => (p === 0 ? [0.9, 0.1] : [0.1, 0.9])),
      labels,
      classes,
    );
  };
  const small = case_(100);
  const large = case_(1000);
  for (const m of [small, large]) {
    assert.ok(m.accuracy_interval[0] <= m.accuracy && m.accuracy <= m.accuracy_interval[1], JSON.stringify(m.accuracy_interval));
    assert.ok(m.balanced_accuracy_interval[0] <= m.balanced_accuracy && m.balanced_accuracy <= m.balanced_accuracy_interval[1]);
  }
  assert.deepEqual(case_(100).accuracy_interval, small.accuracy_interval, 'the same every time');
  const width = ([lo, hi]: [number, number]) => hi - lo;
  assert.ok(width(large.accuracy_interval) < width(small.accuracy_interval) / 2, 'about 1/√10 as wide with 10× the images');
  assert.ok(width(large.balanced_accuracy_interval) > 3 * width(large.accuracy_interval), 'three images of b make the balanced accuracy uncertain');
});

test('metrics on a three-class case computed by hand', () => {
  // True:      a a b b c c ; predicted: a b b b c a
  const classes = ['a', 'b', 'c'];
  const labels = [0, 0, 1, 1, 2, 2];
  const predicted = [0, 1, 1, 1, 2, 0];
  const probs = predicted.flatMap((p) => classes.map((_, c) => (c === p ? 0.8 : 0.1)));
  const m = computeMetrics(probs, labels, classes);
  assert.equal(m.n, 6);
  close(m.accuracy, 4 / 6);
  assert.deepEqual(m.confusion_matrix, [
    [1, 1, 0],
    [0, 2, 0],
    [1, 0, 1],
  ]);
  // a: P=1/2 R=1/2; b: P=2/3 R=1; c: P=1 R=1/2
  close(m.per_class.a.precision, 0.5);
  close(m.per_class.b.precision, 2 / 3);
  close(m.per_class.b.recall, 1);
  close(m.per_class.c.f1, 2 / 3);
  close(m.balanced_accuracy, (0.5 + 1 + 0.5) / 3);
  close(m.macro_f1, (0.5 + 0.8 + 2 / 3) / 3);
  // κ: po = 4/6; pe = (2·2 + 2·3 + 2·1)/36 = 12/36
  close(m.cohen_kappa, (4 / 6 - 1 / 3) / (1 - 1 / 3));
  close(m.nll, -(4 * Math.log(0.8) + 2 * Math.log(0.1)) / 6);
  // All confidences are 0.8 (bin 12 of 15); accuracy there is 4/6.
  close(m.ece, Math.abs(4 / 6 - 0.8));
  assert.equal(m.per_class.b.support, 2);
});

test('ROC-AUC by ranks, with ties counted half', () => {
  const classes = ['neg', 'pos'];
  // Scores for "pos": positives 0.9, 0.4; negatives 0.4, 0.1 → pairs: (0.9>0.4) (0.9>0.1) (0.4=0.4 → ½) (0.4>0.1) = 3.5/4
  const pos = [0.9, 0.4, 0.4, 0.1];
  const labels = [1, 1, 0, 0];
  const probs = pos.flatMap((p) => [1 - p, p]);
  const m = computeMetrics(probs, labels, classes);
  close(m.per_class.pos.roc_auc!, 3.5 / 4);
  close(m.per_class.neg.roc_auc!, 3.5 / 4);
});

test('a label subset: per-class figures and macro averages cover the present classes; predictions of absent classes count as errors', () => {
  const classes = ['a', 'b', 'c', 'd'];
  const labels = [0, 0, 1, 1];
  const predicted = [0, 3, 1, 1]; // one sample predicted as the absent class d
  const probs = predicted.flatMap((p) => classes.map((_, c) => (c === p ? 0.7 : 0.1)));
  const m = computeMetrics(probs, labels, classes);
  assert.deepEqual(m.classes_evaluated, ['a', 'b']);
  assert.deepEqual(Object.keys(m.per_class), ['a', 'b']);
  close(m.accuracy, 3 / 4);
  close(m.balanced_accuracy, (0.5 + 1) / 2);
  close(m.macro_f1, (2 / 3 + 1) / 2);
  assert.equal(m.confusion_matrix[0][3], 1);
});

test('temperature scaling lowers NLL on a deliberately over-confident model', () => {
  // Logits scaled ×6 make a 75 %-accurate model nearly certain of everything; T should come out near 6.
  const n = 400;
  const k = 3;
  const logits: number[] = [];
  const labels: number[] = [];
  let seed = 1;
  const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  for (let i = 0; i < n; i++) {
    const label = i % k;
    labels.push(label);
    const row = [0, 0, 0].map(() => random());
    row[random() < 0.75 ? label : (label + 1) % k] += 2;
    logits.push(...row.map((v) => v * 6));
  }
  const t = fitTemperature(logits, labels, k);
  assert.ok(t > 2, `temperature ${t} should be well above 1`);
  assert.ok(nllAt(logits, labels, k, t) < nllAt(logits, labels, k, 1) - 0.1);
  const before = expectedCalibrationError(softmaxRows(logits, n, k), labels, n, k);
  const after = expectedCalibrationError(softmaxRows(logits, n, k, t), labels, n, k);
  assert.ok(after < before, `ECE ${after} should drop below ${before}`);
});

test('the uncertainty threshold keeps the confident predictions accurate and never drops below its floor', () => {
  const k = 2;
  // Confidences 0.99 ×8 correct, 0.7 wrong, 0.6 correct.
  const rows: [number, number][] = [];
  const labels: number[] = [];
  for (let i = 0; i < 8; i++) {
    rows.push([0.99, 0.01]);
    labels.push(0);
  }
  rows.push([0.7, 0.3]);
  labels.push(1);
  rows.push([0.6, 0.4]);
  labels.push(0);
  const probs = rows.flat();
  assert.equal(chooseUncertaintyThreshold(probs, labels, k, 0.95), 0.99);
  assert.equal(chooseUncertaintyThreshold(probs, labels, k, 0.8), 0.6);
  assert.equal(chooseUncertaintyThreshold(probs, labels, k, 0.8, 0.65), 0.65);
});
