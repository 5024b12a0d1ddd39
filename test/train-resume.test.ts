// Training: an interrupted and resumed run ends with weights bitwise identical to an uninterrupted one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { ConvNeXt } from '../src/models/convnext.js';
import { DEFAULT_AUGMENT } from '../src/data/augment.js';
import { IMAGENET_NORMALIZATION, type ImageSet } from '../src/data/batches.js';
import { NonFiniteLossError, type TrainConfig, train } from '../src/train/trainer.js';
import { NonFiniteModelError } from '../src/eval/finite.js';

function tinySet(): ImageSet {
  // Two classes a tiny network can tell apart: bright and dark images, with noise.
  const n = 24;
  const size = 32;
  const images = new Uint8Array(n * size * size * 3);
  let seed = 7;
  const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % 2;
    for (let p = 0; p < size * size * 3; p++) images[i * size * size * 3 + p] = Math.min(255, (labels[i] ? 140 : 60) + random() * 100);
  }
  return { images, size, labels, classes: ['dark', 'bright'] };
}

const config: TrainConfig = {
  epochs: 3,
  batchSize: 6,
  lr: 2e-3,
  minLr: 0,
  weightDecay: 0.05,
  warmupFraction: 0.2,
  labelSmoothing: 0.1,
  emaDecay: 0.9,
  precision: 'fp32',
  clipGrad: 1,
  seed: 11,
  patience: null,
  augment: { ...DEFAULT_AUGMENT, crop: { scale: [0.6, 1], ratio: [0.75, 1.33] }, saturation: 0.1, hue: 0.02 },
  normalization: IMAGENET_NORMALIZATION,
  evalBatchSize: 8,
  checkpointMinutes: 60,
};

function tinyModel(): ConvNeXt {
  E.manualSeed(1);
  return new ConvNeXt({ depths: [1, 1, 1, 1], dims: [8, 16, 24, 32], convMlp: true, numClasses: 2, dropPathRate: 0.1, inputSize: 32 });
}

async function run(interruptAfterSteps?: number): Promise<Map<string, number[]>> {
  const data = tinySet();
  const runDir = mkdtempSync(path.join(tmpdir(), 'hemato-resume-'));
  const trainIndices = Int32Array.from({ length: 18 }, (_, i) => i);
  const valIndices = Int32Array.from({ length: 6 }, (_, i) => 18 + i);
  let model = tinyModel();
  if (interruptAfterSteps !== undefined) {
    let steps = 0;
    const first = await train({
      model,
      data,
      trainIndices,
      valIndices,
      runDir,
      config,
      device: 'cpu',
      resume: false,
      shouldStop: () => ++steps >= interruptAfterSteps,
    });
    assert.equal(first.interrupted, true);
    model.dispose();
    model = tinyModel(); // a fresh process would start from new weights too
    await train({ model, data, trainIndices, valIndices, runDir, config, device: 'cpu', resume: true });
  } else {
    await train({ model, data, trainIndices, valIndices, runDir, config, device: 'cpu', resume: false });
  }
  const weights = new Map(model.namedParameters().map(([k, p]) => [k, p.toArray()]));
  model.dispose();
  return weights;
}

test('a run interrupted mid-epoch and resumed ends with bitwise-identical weights', async () => {
  const before = E.liveTensors();
  const straight = await run();
  const resumed = await run(4); // 3 steps per epoch: stops inside the second epoch
  assert.deepEqual([...resumed.keys()], [...straight.keys()]);
  for (const [key, values] of straight) assert.deepEqual(resumed.get(key), values, key);
  assert.equal(E.liveTensors(), before);
});

test('a run refuses to overwrite an existing run directory, and --resume needs a checkpoint', async () => {
  const data = tinySet();
  const runDir = mkdtempSync(path.join(tmpdir(), 'hemato-resume-'));
  const model = tinyModel();
  const indices = Int32Array.from({ length: 12 }, (_, i) => i);
  await assert.rejects(train({ model, data, trainIndices: indices, valIndices: indices, runDir, config, device: 'cpu', resume: true }), /no checkpoint/);
  await train({ model, data, trainIndices: indices, valIndices: indices, runDir, config: { ...config, epochs: 1 }, device: 'cpu', resume: false });
  await assert.rejects(
    train({ model, data, trainIndices: indices, valIndices: indices, runDir, config, device: 'cpu', resume: false }),
    /already holds a training run/,
  );
  model.dispose();
});

test('a diverging run stops with a clear message', async () => {
  const data = tinySet();
  const model = tinyModel();
  const indices = Int32Array.from({ length: 12 }, (_, i) => i);
  const runDir = mkdtempSync(path.join(tmpdir(), 'hemato-nan-'));
  E.noGrad(() => model.parameters()[0].fill_(NaN));
  await assert.rejects(
    train({ model, data, trainIndices: indices, valIndices: indices, runDir, config, device: 'cpu', resume: false }),
    (error: Error) => error instanceof NonFiniteLossError && /loss became NaN/.test(error.message) && /lower learning rate \(--lr\)/.test(error.message),
  );
  model.dispose();
});

test('weights that turn NaN at the last step of an epoch are never kept as the best, nor checkpointed', async () => {
  const data = tinySet();
  const model = tinyModel();
  const runDir = mkdtempSync(path.join(tmpdir(), 'hemato-nan-'));
  const trainIndices = Int32Array.from({ length: 18 }, (_, i) => i);
  const valIndices = Int32Array.from({ length: 6 }, (_, i) => 18 + i);
  const bestEpochs: number[] = [];
  const checkpoints: number[] = [];
  let epoch = 0;
  const outcome = train({
    model,
    data,
    trainIndices,
    valIndices,
    runDir,
    config: { ...config, emaDecay: null },
    device: 'cpu',
    resume: false,
    onBest: async (_, e) => {
      bestEpochs.push(e);
    },
    onEvent: (event) => {
      if (event.type === 'epoch') epoch = event.epoch + 1;
      if (event.type === 'checkpoint') checkpoints.push(epoch);
      // The second epoch's last step leaves NaN weights behind; its loss was still finite.
      if (event.type === 'step' && event.epoch === 1 && event.batch === event.batches - 1) E.noGrad(() => model.parameters()[0].fill_(NaN));
    },
  });
  await assert.rejects(
    outcome,
    (error: Error) => error instanceof NonFiniteModelError && /validation outputs after epoch 2 are NaN or infinite/.test(error.message),
  );
  assert.deepEqual(bestEpochs, [0], 'only the first epoch was the best');
  assert.deepEqual(checkpoints, [1], 'the checkpoint stays at the end of the first epoch');
  model.dispose();
});
