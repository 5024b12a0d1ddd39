// The out-of-distribution score, the shift suite's transforms, and the robustness augmentations.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import * as E from '../src/engine/index.js';
import { augmentBatch, backgroundOf, NO_AUGMENT, seededRandom } from '../src/data/augment.js';
import { readImageFile } from '../src/data/image.js';
import { fitBlockOodStatistics, fitOodStatistics, oodDistances, oodThreshold } from '../src/eval/ood.js';
import { fitFeatureScale, magnificationsOf } from '../src/eval/feature-scale.js';
import { magnify, selectShifts, SHIFTS, stain } from '../src/eval/shifts.js';

const PBC = path.resolve('../shared/data/pbc');

/** Gaussian clusters around class centres, from a seeded generator. */
function clusters(n: number, d: number, classes: number, seed: number, offset = 0): { features: Float32Array; labels: Int32Array } {
  const random = seededRandom(seed);
  const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  const features = new Float32Array(n * d);
  const labels = Int32Array.from({ length: n }, (_, i) => i % classes);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) features[i * d + j] = (j === labels[i] ? 5 : 0) + offset + normal() * (j % 2 ? 1 : 0.3);
  return { features, labels };
}

test('Mahalanobis OOD: in-distribution points sit near their class, shifted points far; the threshold flags the chosen share', () => {
  const train = clusters(600, 12, 3, 1);
  const stats = fitOodStatistics(train.features, train.labels, 3);
  assert.equal(stats.features, 12);
  const inside = oodDistances(clusters(300, 12, 3, 2).features, stats);
  const outside = oodDistances(clusters(300, 12, 3, 3, 4).features, stats);
  // With a shared covariance, squared distances of in-distribution points average about the feature count.
  const mean = (v: Float64Array) => v.reduce((p, q) => p + q, 0) / v.length;
  assert.ok(mean(inside) > 6 && mean(inside) < 18, `mean in-distribution distance ${mean(inside)}`);
  const threshold = oodThreshold(inside, 0.05);
  const flaggedInside = inside.filter((v) => v > threshold).length / inside.length;
  assert.ok(flaggedInside <= 0.05 && flaggedInside >= 0.03, `${flaggedInside}`);
  assert.ok(
    outside.every((v) => v > threshold),
    'every shifted point is flagged',
  );
  assert.throws(() => fitOodStatistics(new Float32Array(4), [0, 1], 3), /at least 6 images/);
});

test('block OOD statistics: each block weighted to a median training distance of 1, the distance their sum to one class', () => {
  const a = clusters(600, 4, 3, 1);
  const b = clusters(600, 6, 3, 2);
  // Rows of [a | 10 × b]: the second block's raw scale would swamp the first without its weight.
  const joined = (x: Float32Array, y: Float32Array, n: number) =>
    Float32Array.from({ length: n * 10 }, (_, k) => {
      const [i, j] = [Math.floor(k / 10), k % 10];
      return j < 4 ? x[i * 4 + j] : 10 * y[i * 6 + j - 4];
    });
  const stats = fitBlockOodStatistics(joined(a.features, b.features, 600), a.labels, 3, [4, 6]);
  assert.equal(stats.features, 10);
  for (let i = 0; i < 4; i++) for (let j = 4; j < 10; j++) assert.equal(stats.precision[i * 10 + j], 0);
  const train = oodDistances(joined(a.features, b.features, 600), stats);
  const median = Float64Array.from(train).sort()[300];
  // The sum of two medians of 1 (a point's nearest class may differ between blocks, so about 2, not exactly).
  assert.ok(median > 1.6 && median < 2.6, `median training distance ${median}`);
  // The fast distance agrees with (x − μ)ᵀP(x − μ) written out.
  const x = joined(clusters(5, 4, 3, 7, 2).features, clusters(5, 6, 3, 8).features, 5);
  const fast = oodDistances(x, stats);
  for (let i = 0; i < 5; i++) {
    let best = Infinity;
    for (let c = 0; c < 3; c++) {
      const diff = Array.from({ length: 10 }, (_, j) => x[i * 10 + j] - stats.means[c * 10 + j]);
      best = Math.min(
        best,
        diff.reduce((sum, da, p) => sum + da * diff.reduce((row, db, q) => row + stats.precision[p * 10 + q] * db, 0), 0),
      );
    }
    assert.ok(Math.abs(fast[i] - best) < 1e-6 * Math.max(1, best), `${fast[i]} vs ${best}`);
    // Rows are taken four at a time: a row's distance is the same, to the bit, alone as in a batch.
    assert.equal(oodDistances(x.subarray(i * 10, (i + 1) * 10), stats)[0], fast[i]);
  }
  assert.throws(() => fitBlockOodStatistics(new Float32Array(50), a.labels.subarray(0, 6), 3, [4, 6]), /50 values for 6 rows of 10/);
});

test('shift suite: the named shifts, magnification about the centre, and a stain factor of 1 that changes nothing', async () => {
  assert.equal(SHIFTS.length, 12);
  assert.deepEqual(
    selectShifts(['blur-1', 'jpeg-30']).map((s) => s.name),
    ['blur-1', 'jpeg-30'],
  );
  assert.throws(() => selectShifts(['blurry']), /unknown shift 'blurry'; the shifts are magnification-0.5/);
  const image = await readImageFile(path.join(PBC, 'lymphocyte/LY_102859.jpg'));
  const doubled = await magnify(image, 2);
  assert.deepEqual([doubled.width, doubled.height], [image.width, image.height]);
  const same = stain(image, 1);
  let diff = 0;
  for (let i = 0; i < image.data.length; i++) diff = Math.max(diff, Math.abs(image.data[i] - same.data[i]));
  assert.ok(diff <= 1, `stain ×1 changed a value by ${diff}`);
  const paler = stain(image, 0.6);
  const darkness = (img: typeof image) => img.data.reduce((p, q) => p + (255 - q), 0);
  assert.ok(darkness(paler) < 0.95 * darkness(image), `paler stain lightens the image: ${darkness(paler) / darkness(image)}`);
  assert.ok(darkness(stain(image, 1.4)) > 1.05 * darkness(image), 'darker stain darkens it');
});

test('robust augmentation: zooming out fills with the background colour (no reflected cells), stain 0 and blur 0 change nothing', () => {
  const size = 32;
  // A dark disc on a cream background.
  const pixels = new Float32Array(3 * size * size);
  for (let c = 0; c < 3; c++)
    for (let y = 0; y < size; y++)
      for (let x = 0; x < size; x++) {
        const inside = (x - 16) ** 2 + (y - 16) ** 2 < 100;
        pixels[(c * size + y) * size + x] = inside ? 0.3 : [0.98, 0.9, 0.8][c];
      }
  const x = E.tensor(pixels, [1, 3, size, size]);
  const background = backgroundOf(x).data() as Float32Array;
  assert.deepEqual(
    [...background].map((v) => Math.round(v * 100)),
    [98, 90, 80],
  );
  const zoomedOut = augmentBatch(x, { ...NO_AUGMENT, scale: [0.5, 0.5] }, seededRandom(1));
  const out = zoomedOut.data() as Float32Array;
  for (let c = 0; c < 3; c++) assert.ok(Math.abs(out[c * size * size] - background[c]) < 1e-5, 'the corner is background');
  const unchanged = augmentBatch(x, { ...NO_AUGMENT, stain: 0, blur: 0, noise: 0, temperature: 0 }, seededRandom(2));
  assert.deepEqual(unchanged.data(), x.data());
  const stained = augmentBatch(x, { ...NO_AUGMENT, stain: 0.5 }, seededRandom(3)).data() as Float32Array;
  assert.ok(Math.abs(stained[0] - pixels[0]) < 0.02, 'the background keeps its colour under a stain change');
  assert.ok(Math.abs(stained[16 * size + 16] - pixels[16 * size + 16]) > 0.01, 'the stained disc changes');
  // A range [lo, hi] draws from it: all below 1 pales the disc, all above darkens it.
  const centre = 16 * size + 16;
  const paler = augmentBatch(x, { ...NO_AUGMENT, stain: [0.5, 0.6] }, seededRandom(4)).data() as Float32Array;
  const darker = augmentBatch(x, { ...NO_AUGMENT, stain: [1.4, 1.5] }, seededRandom(4)).data() as Float32Array;
  for (let c = 0; c < 3; c++) {
    const at = c * size * size + centre;
    assert.ok(paler[at] > pixels[at] && darker[at] < pixels[at], `channel ${c}: ${paler[at]} > ${pixels[at]} > ${darker[at]}`);
  }
  // shiftShare: the images left out of the zoom, frame, stain, temperature, hue, saturation, resolution, blur and noise
  // changes stay as they were.
  const shifts = {
    ...NO_AUGMENT,
    scale: [0.5, 0.6] as [number, number],
    frame: [0.4, 0.6] as [number, number],
    stain: 0.5,
    temperature: 0.1,
    hue: 0.1,
    saturation: 0.3,
    resolution: 0.5,
    blur: 2,
    noise: 0.05,
  };
  const batch = E.cat(Array.from({ length: 16 }, () => x));
  const none = augmentBatch(batch, { ...shifts, shiftShare: 0 }, seededRandom(5));
  assert.deepEqual(none.data(), batch.data());
  const some = augmentBatch(batch, { ...shifts, shiftShare: 0.5 }, seededRandom(5)).data() as Float32Array;
  const image = 3 * size * size;
  const kept = Array.from({ length: 16 }, (_, i) => some.subarray(i * image, (i + 1) * image).every((v, k) => v === pixels[k])).filter(Boolean).length;
  assert.ok(kept >= 3 && kept <= 13, `about half of 16 images kept as they were: ${kept}`);
  E.dispose([x, zoomedOut, unchanged, batch, none]);
});

test('robust augmentation: a frame fills all but a centred square with the background; a side of 1 changes nothing', () => {
  const size = 32;
  // A cream background, a dark cell in the middle and dark specks near the corners (red cells, say).
  const cream = [0.9, 0.8, 0.7];
  const pixels = new Float32Array(3 * size * size);
  for (let c = 0; c < 3; c++)
    for (let y = 0; y < size; y++)
      for (let x = 0; x < size; x++) {
        const cell = Math.hypot(x - 15.5, y - 15.5) < 6;
        const speck = (x < 4 || x >= 28) && (y < 4 || y >= 28);
        pixels[(c * size + y) * size + x] = cell || speck ? 0.3 : cream[c];
      }
  const x = E.tensor(pixels, [1, 3, size, size]);
  const whole = augmentBatch(x, { ...NO_AUGMENT, frame: [1, 1.5] }, seededRandom(1));
  assert.deepEqual(whole.data(), x.data());
  const framed = augmentBatch(x, { ...NO_AUGMENT, frame: [0.5, 0.5] }, seededRandom(1)).data() as Float32Array;
  for (let c = 0; c < 3; c++) {
    const at = (y: number, x: number) => (c * size + y) * size + x;
    // The square's side is half the field: rows and columns 8 to 23 stay as they were, the rest is background.
    for (const [y, x] of [
      [8, 8],
      [15, 15],
      [23, 23],
      [8, 23],
    ])
      assert.equal(framed[at(y, x)], pixels[at(y, x)], `inside (${y}, ${x})`);
    for (const [y, x] of [
      [0, 0],
      [2, 30],
      [31, 31],
      [15, 7],
      [24, 15],
    ])
      assert.ok(Math.abs(framed[at(y, x)] - cream[c]) < 1e-5, `outside (${y}, ${x}): ${framed[at(y, x)]}`);
  }
  E.dispose([x, whole]);
});

test('robust augmentation: lower resolution smooths fine detail and keeps flat areas; a factor of 1 changes nothing', () => {
  const size = 32;
  // Stripes one pixel wide on the left half, flat grey on the right.
  const pixels = new Float32Array(3 * size * size);
  for (let c = 0; c < 3; c++) for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) pixels[(c * size + y) * size + x] = x < 16 ? x % 2 : 0.6;
  const x = E.tensor(pixels, [1, 3, size, size]);
  const same = augmentBatch(x, { ...NO_AUGMENT, resolution: 1 }, seededRandom(1));
  assert.deepEqual(same.data(), x.data());
  const lowered = augmentBatch(x, { ...NO_AUGMENT, resolution: 0.5 }, seededRandom(1)).data() as Float32Array;
  const row = 10 * size;
  const swing = (from: number, to: number, data: Float32Array) => {
    let [lo, hi] = [Infinity, -Infinity];
    for (let k = from; k < to; k++) [lo, hi] = [Math.min(lo, data[row + k]), Math.max(hi, data[row + k])];
    return hi - lo;
  };
  assert.ok(swing(4, 12, lowered) < 0.5, `the stripes blur towards their mean: swing ${swing(4, 12, lowered)}`);
  assert.ok(swing(20, 28, lowered) < 1e-4 && Math.abs(lowered[row + 24] - 0.6) < 1e-4, 'the flat half stays as it was');
  E.dispose([x, same]);
});

test('the scale estimate from features: a ridge regression that recovers a log-linear magnification, and refuses what it cannot fit', () => {
  // Features whose first two carry log m (with noise), the rest noise; magnifications from 0.5 to 3.
  const n = 400;
  const d = 12;
  const random = seededRandom(5);
  const magnifications = Array.from({ length: n }, () => Math.exp(Math.log(0.5) + random() * Math.log(6)));
  const features = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    const log = Math.log(magnifications[i]);
    for (let j = 0; j < d; j++) features[i * d + j] = 5 + (j === 0 ? 3 * log : j === 1 ? -2 * log : 0) + 0.05 * (random() - 0.5);
  }
  const fit = fitFeatureScale(features, magnifications, 1e-4);
  const estimated = magnificationsOf(features, fit);
  for (let i = 0; i < n; i++) assert.ok(Math.abs(Math.log(estimated[i] / magnifications[i])) < 0.05, `image ${i}: ${estimated[i]} for ${magnifications[i]}`);
  // A constant feature is left out rather than dividing by a zero spread.
  const constant = Float32Array.from(features, (v, k) => (k % d === d - 1 ? 7 : v));
  assert.ok(magnificationsOf(constant, fitFeatureScale(constant, magnifications, 1e-4)).every(Number.isFinite));
  assert.throws(
    () =>
      fitFeatureScale(
        features,
        magnifications.map((m, i) => (i === 3 ? 0 : m)),
      ),
    /positive, got 0/,
  );
  assert.throws(() => fitFeatureScale(features.subarray(0, 13), [1]), /at least 2 images/);
});
