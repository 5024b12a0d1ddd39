// The 95 % intervals of the accuracy (Wilson) and the balanced accuracy (bootstrap), against published values and at the extremes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { computeMetrics, wilsonInterval } from '../src/eval/metrics.js';

const close = (actual: [number, number], expected: [number, number], tol = 1e-4) =>
  assert.ok(Math.abs(actual[0] - expected[0]) <= tol && Math.abs(actual[1] - expected[1]) <= tol, `${actual} ≠ ${expected}`);

/** A set with classes a, b, c, …: per class, how many images it has and how many of them are classified right. */
function evaluate(perClass: { support: number; right: number }[]) {
  const classes = perClass.map((_, c) => String.fromCharCode(97 + c));
  const labels: number[] = [];
  const probs: number[] = [];
  for (const [c, { support, right }] of perClass.entries())
    for (let i = 0; i < support; i++) {
      labels.push(c);
      // Wrong images go to the next class.
      const predicted = i < right ? c : (c + 1) % classes.length;
      probs.push(...classes.map((_, j) => (j === predicted ? 0.8 : 0.2 / (classes.length - 1))));
    }
  return computeMetrics(probs, labels, classes);
}

test('the accuracy interval is the Wilson score interval (Newcombe 1998, table II)', () => {
  close(
    evaluate([
      { support: 263, right: 81 },
      { support: 0, right: 0 },
    ]).accuracy_interval,
    [0.2553, 0.3662],
  );
  close(wilsonInterval(15 / 148, 148), [0.0624, 0.1605]);
  close(wilsonInterval(1 / 29, 29), [0.0061, 0.1718]);
  close(wilsonInterval(0, 20), [0, 0.1611]);
  // A typical set: 90 of 100 right.
  const m = evaluate([
    { support: 50, right: 45 },
    { support: 50, right: 45 },
  ]);
  assert.equal(m.accuracy, 0.9);
  close(m.accuracy_interval, [0.8256, 0.9448]);
});

test('every image right, or every one wrong: the intervals keep a width, which narrows as the set grows', () => {
  let lastLower = 0;
  for (const [n, expectedLower] of [
    [10, 0.7225],
    [100, 0.963],
    [1000, 0.9962],
  ]) {
    const m = evaluate([
      { support: n / 2, right: n / 2 },
      { support: n / 2, right: n / 2 },
    ]);
    assert.equal(m.accuracy, 1);
    close(m.accuracy_interval, [expectedLower, 1]);
    assert.ok(m.accuracy_interval[0] > lastLower, `${n} images: ${m.accuracy_interval}`);
    lastLower = m.accuracy_interval[0];
    // Every class all right: the mean of the classes' Wilson bounds, each over half the images.
    assert.equal(m.balanced_accuracy, 1);
    close(m.balanced_accuracy_interval, wilsonInterval(1, n / 2), 1e-12);
  }
  const wrong = evaluate([
    { support: 10, right: 0 },
    { support: 10, right: 0 },
  ]);
  assert.equal(wrong.accuracy, 0);
  close(wrong.accuracy_interval, [0, 0.1611]);
  close(wrong.balanced_accuracy_interval, wilsonInterval(0, 10), 1e-12);
  // All right, but one class has 3 images: the balanced accuracy knows that class's recall only to a few images.
  const rare = evaluate([
    { support: 997, right: 997 },
    { support: 3, right: 3 },
  ]);
  assert.ok(rare.accuracy_interval[0] > 0.99, `${rare.accuracy_interval}`);
  assert.ok(rare.balanced_accuracy_interval[0] < 0.8 && rare.balanced_accuracy_interval[1] === 1, `${rare.balanced_accuracy_interval}`);
});

test('otherwise the balanced accuracy interval is a seeded bootstrap: the same each time, around the figure, wide for a small class', () => {
  const set = [
    { support: 5, right: 3 },
    { support: 200, right: 190 },
  ];
  const m = evaluate(set);
  assert.deepEqual(evaluate(set).balanced_accuracy_interval, m.balanced_accuracy_interval);
  const [lower, upper] = m.balanced_accuracy_interval;
  assert.ok(lower < m.balanced_accuracy && m.balanced_accuracy < upper, `${m.balanced_accuracy_interval}`);
  // The 5-image class's recall alone moves by 0.2 per image: the interval spans more than that.
  assert.ok(upper - lower > 0.2, `${m.balanced_accuracy_interval}`);
  // With 40 times the images in the small class, it narrows.
  const larger = evaluate([
    { support: 200, right: 120 },
    { support: 200, right: 190 },
  ]).balanced_accuracy_interval;
  assert.ok(larger[1] - larger[0] < (upper - lower) / 3, `${larger}`);
});
