// Mixup and CutMix: the blend and the box are what they say, the loss weighs both labels by the same factor, the
// draws follow the step's seed (so a resumed run mixes as the uninterrupted one), and nothing leaks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { seededRandom } from '../src/data/random.js';
import { ConvNeXt } from '../src/models/convnext.js';
import { cutmixBox, mixBatch, sampleBeta } from '../src/train/mix.js';
import { trainingStep } from '../src/train/step.js';
import { config, TINY_CONVNEXT, trainTiny } from './train-fixtures.js';
import { maxAbsDiff } from './helpers.js';

function batch(n = 4, size = 8): { x: E.Tensor; y: E.Tensor } {
  return {
    x: E.randn([n, 3, size, size], { seed: 5 }),
    y: E.tensor(
      BigInt64Array.from({ length: n }, (_, i) => BigInt(i % 3)),
      [n],
    ),
  };
}

test('Beta draws have the mean and spread they should', () => {
  const random = seededRandom(9);
  const moments = (alpha: number) => {
    const draws = Array.from({ length: 4000 }, () => sampleBeta(alpha, random));
    const mean = draws.reduce((a, b) => a + b, 0) / draws.length;
    const variance = draws.reduce((a, b) => a + (b - mean) ** 2, 0) / draws.length;
    assert.ok(draws.every((d) => d >= 0 && d <= 1));
    return { mean, variance };
  };
  // Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1)).
  for (const alpha of [0.2, 1, 4]) {
    const { mean, variance } = moments(alpha);
    assert.ok(Math.abs(mean - 0.5) < 0.03, `α ${alpha}: mean ${mean}`);
    const expected = 1 / (4 * (2 * alpha + 1));
    assert.ok(Math.abs(variance - expected) < 0.15 * expected, `α ${alpha}: variance ${variance}, expected ${expected}`);
  }
});

test('mixup blends each image with the reversed batch by λ, and CutMix pastes a box whose area sets the weight', () => {
  const before = E.liveTensors();
  const b = batch();
  assert.equal(mixBatch(b, { mixup: 0, cutmix: 0 }, 1), undefined, 'off');
  const one = { x: E.randn([1, 3, 8, 8]), y: E.tensor(BigInt64Array.from([1n]), [1]) };
  assert.equal(mixBatch(one, { mixup: 1 }, 1), undefined, 'a batch of one has nothing to mix with');
  E.dispose([one.x, one.y]);

  const mixed = mixBatch(b, { mixup: 1 }, 3)!;
  const lambda = 1 - mixed.mixedWith.weight;
  assert.ok(lambda > 0 && lambda < 1);
  const expected = E.tidy(() => b.x.mul(lambda).add(b.x.flip([0]).mul(1 - lambda)));
  assert.ok(maxAbsDiff(mixed.x.toArray() as number[], expected.toArray() as number[]) < 1e-6);
  assert.deepEqual(mixed.mixedWith.y.toArray(), [...(b.y.toArray() as number[])].reverse());
  const again = mixBatch(b, { mixup: 1 }, 3)!;
  assert.equal(again.mixedWith.weight, mixed.mixedWith.weight, 'the same seed draws the same λ');

  const cut = mixBatch(b, { cutmix: 1 }, 4)!;
  const flipped = b.x.flip([0]);
  const [x, original, reversed] = [cut.x, b.x, flipped].map((t) => t.toArray() as number[]);
  let fromOther = 0;
  for (let i = 0; i < x.length; i++) {
    if (x[i] === reversed[i] && x[i] !== original[i]) fromOther++;
    else assert.equal(x[i], original[i], `element ${i} is from one image or the other`);
  }
  // Each of the 4 images × 3 channels has the same box.
  assert.ok(Math.abs(fromOther / (4 * 3 * 64) - cut.mixedWith.weight) < 1e-9, `${fromOther} pasted, weight ${cut.mixedWith.weight}`);
  E.dispose([b.x, b.y, expected, flipped]);
  E.dispose([mixed.x, mixed.mixedWith.y, again.x, again.mixedWith.y, cut.x, cut.mixedWith.y]);
  assert.equal(E.liveTensors(), before);
});

test('a CutMix box is clipped at the edges and covers about 1 − λ of the image', () => {
  const random = seededRandom(2);
  for (let i = 0; i < 200; i++) {
    const lambda = random();
    const box = cutmixBox(lambda, 32, 48, random);
    assert.ok(box.top >= 0 && box.bottom <= 32 && box.left >= 0 && box.right <= 48 && box.top <= box.bottom && box.left <= box.right);
    assert.ok(((box.bottom - box.top) * (box.right - box.left)) / (32 * 48) <= 1 - lambda + 1e-9);
  }
});

test("a mixed batch's loss is the two labels' losses weighed by λ and 1 − λ", () => {
  const before = E.liveTensors();
  E.manualSeed(1);
  const model = new ConvNeXt({ ...TINY_CONVNEXT, numClasses: 3, dropPathRate: 0 });
  const optimizer = new E.AdamW(model.parameters(), { lr: 0 });
  const b = batch(4, 32);
  const mix = mixBatch(b, { mixup: 1 }, 7)!;
  const w = mix.mixedWith.weight;
  const expected = E.tidy(() => {
    const logits = E.noGrad(() => model.forward(mix.x));
    const ce = (y: E.Tensor) => E.F.crossEntropy(logits, y, { labelSmoothing: 0.1 }).item();
    return (1 - w) * ce(b.y) + w * ce(mix.mixedWith.y);
  });
  const loss = trainingStep(model, optimizer, { ...b, ...mix }, { precision: 'fp32', device: 'cpu', labelSmoothing: 0.1, clipGrad: null });
  assert.ok(Math.abs(loss.item() - expected) < 1e-5, `${loss.item()} against ${expected}`);
  E.dispose([loss, b.x, b.y, mix.x, mix.mixedWith.y]);
  optimizer.dispose();
  model.dispose();
  assert.equal(E.liveTensors(), before);
});

test('a run with mixup and CutMix, interrupted and resumed, ends with the weights of the uninterrupted run', async () => {
  const mixing = { ...config, augment: { ...config.augment, mixup: 0.8, cutmix: 1 } };
  const before = E.liveTensors();
  const straight = await trainTiny(mixing);
  const resumed = await trainTiny(mixing, 4);
  assert.deepEqual(resumed, straight);
  const plain = await trainTiny(config);
  assert.notDeepEqual(plain, straight, 'mixing changes what is learnt');
  assert.equal(E.liveTensors(), before);
});
