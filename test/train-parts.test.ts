// The trainer's parts on their own: the training step, the loss window, validation, the weight average and the
// run's checkpoints.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { IMAGENET_NORMALIZATION, makeBatch } from '../src/data/batches.js';
import { NonFiniteModelError } from '../src/eval/finite.js';
import { CHECKPOINT_FILE, RunCheckpoints } from '../src/train/checkpoint.js';
import { WeightAverage } from '../src/train/ema.js';
import { LossWindow, NonFiniteLossError, trainingStep } from '../src/train/step.js';
import { predictLogits, validateEpoch } from '../src/train/validate.js';
import { config, tinyModel, tinySet } from './train-fixtures.js';

const STEP = { precision: 'fp32', device: 'cpu', labelSmoothing: 0.1, clipGrad: 1 } as const;
const EVAL = { batchSize: 4, normalization: IMAGENET_NORMALIZATION, precision: 'fp32', device: 'cpu' } as const;

function weights(model: ReturnType<typeof tinyModel>): number[][] {
  return model.parameters().map((p) => p.toArray());
}

test('a training step updates the weights, clears the gradients and leaves its loss on the device', () => {
  const before = E.liveTensors();
  const model = tinyModel();
  const optimizer = new E.AdamW(model.parameters(), { lr: 1e-2 });
  const data = tinySet();
  const initial = weights(model);
  const losses: number[] = [];
  for (let i = 0; i < 8; i++) {
    const batch = makeBatch(data, [0, 1, 2, 3, 4, 5], { normalization: IMAGENET_NORMALIZATION });
    const loss = trainingStep(model, optimizer, batch, STEP);
    E.dispose([batch.x, batch.y]);
    assert.deepEqual([loss.shape, loss.requiresGrad], [[], false]);
    assert.ok(model.parameters().every((p) => p.grad === undefined));
    losses.push(loss.item());
    loss.dispose();
  }
  assert.notDeepEqual(weights(model), initial);
  assert.ok(losses[7] < losses[0], `the loss falls on a batch seen again and again: ${losses.join(', ')}`);
  optimizer.dispose();
  model.dispose();
  assert.equal(E.liveTensors(), before);
});

test('labels are checked on the host when the batch is made', () => {
  const data = tinySet();
  data.labels[3] = 2;
  assert.throws(() => makeBatch(data, [2, 3], { normalization: IMAGENET_NORMALIZATION }), /sample 3 has label 2, not one of the 2 classes/);
});

test('the loss window reads its losses in one copy, and names the step where the loss stopped being finite', () => {
  const before = E.liveTensors();
  const window = new LossWindow(3);
  assert.equal(window.add(E.scalar(0.5), 0, 0), false);
  assert.equal(window.add(E.scalar(0.25), 0, 1), false);
  assert.equal(window.add(E.scalar(0.125), 0, 2), true);
  const reads = E.hostReads();
  assert.deepEqual(window.read(), [0.5, 0.25, 0.125]);
  assert.equal(E.hostReads() - reads, 1);
  assert.deepEqual(window.read(), [], 'an empty window reads nothing');
  assert.equal(E.hostReads() - reads, 1);

  window.add(E.scalar(0.5), 2, 6);
  window.add(E.scalar(Infinity), 2, 7);
  window.add(E.scalar(NaN), 2, 8);
  assert.throws(
    () => window.read(),
    (error: Error) =>
      error instanceof NonFiniteLossError && /the loss became Infinity at epoch 3, batch 8\. Start again with a lower learning rate/.test(error.message),
  );
  assert.equal(window.size, 0);
  window.add(E.scalar(1), 3, 0);
  window.dispose();
  assert.equal(E.liveTensors(), before);
  assert.throws(() => new LossWindow(0), /positive integer/);
});

test('validation reports its progress, and NaN outputs are an error, not a score', () => {
  const model = tinyModel();
  const data = tinySet();
  const indices = Int32Array.from({ length: 10 }, (_, i) => i);
  const progress: [number, number][] = [];
  const metrics = validateEpoch(model, data, indices, 0, { ...EVAL, onProgress: (done, total) => progress.push([done, total]) });
  assert.deepEqual(progress, [
    [4, 10],
    [8, 10],
    [10, 10],
  ]);
  assert.ok(metrics.accuracy >= 0 && metrics.accuracy <= 1);
  assert.equal(predictLogits(model, data, indices, EVAL).length, 20);
  assert.equal(model.training, true, 'the model goes back to training mode');
  E.noGrad(() => model.parameters()[0].fill_(NaN));
  assert.throws(
    () => validateEpoch(model, data, indices, 4, EVAL),
    (error: Error) => error instanceof NonFiniteModelError && /20 of 20 validation outputs after epoch 5 are NaN/.test(error.message),
  );
  model.dispose();
});

test('the weight average follows the weights, and is swapped in only while a function runs', async () => {
  const model = tinyModel();
  const first = model.parameters()[0];
  const ema = new WeightAverage(model, 0.75);
  const start = first.toArray();
  E.noGrad(() => first.add_(4));
  ema.update(model);
  const averaged = start.map((v) => v + 0.25 * 4);
  const shadow = ema.shadows.get(model.namedParameters()[0][0])!;
  shadow.toArray().forEach((v, i) => assert.ok(Math.abs(v - averaged[i]) < 1e-5));
  const live = first.toArray();
  const seen = ema.applied(model, () => first.toArray());
  assert.deepEqual(seen, shadow.toArray());
  assert.deepEqual(first.toArray(), live);
  assert.throws(() =>
    ema.applied(model, () => {
      throw new Error('boom');
    }),
  );
  await assert.rejects(ema.applied(model, async () => Promise.reject(new Error('later'))));
  assert.deepEqual(first.toArray(), live, 'the live weights come back after an error too');
  ema.dispose();
  model.dispose();
});

test('checkpoints: a fresh start, a resume with the saved position, and no save of NaN weights', async () => {
  const runDir = mkdtempSync(path.join(tmpdir(), 'hemato-checkpoints-'));
  const model = tinyModel();
  const optimizer = new E.AdamW(model.parameters());
  const checkpoints = new RunCheckpoints(runDir, { model, optimizer }, config, 60);
  await assert.rejects(checkpoints.start(true), /--resume: no checkpoint/);
  const loop = await checkpoints.start(false);
  assert.deepEqual(loop, { epoch: 0, batch: 0, globalStep: 0, bestScore: -1, bestEpoch: -1, history: [] });
  assert.equal(checkpoints.due, false);
  await checkpoints.save({ ...loop, epoch: 1, batch: 2, globalStep: 5 });
  assert.equal(checkpoints.file, path.join(runDir, CHECKPOINT_FILE));
  await assert.rejects(new RunCheckpoints(runDir, { model, optimizer }, config, 60).start(false), /already holds a training run/);

  const saved = weights(model);
  E.noGrad(() => model.parameters()[0].fill_(NaN));
  await assert.rejects(
    checkpoints.save({ ...loop, globalStep: 6 }),
    (error: Error) => error instanceof NonFiniteModelError && /NaN or infinite after step 6; they are not checkpointed/.test(error.message),
  );
  const every = new RunCheckpoints(runDir, { model, optimizer }, config, 0);
  const resumed = await every.start(true);
  assert.deepEqual([resumed.epoch, resumed.batch, resumed.globalStep], [1, 2, 5]);
  assert.deepEqual(weights(model), saved, 'the refused save left the last good checkpoint in place');
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(every.due, true, 'with 0 minutes between them, a checkpoint is always due');
  optimizer.dispose();
  model.dispose();
});
