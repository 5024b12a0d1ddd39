// The training loop and the device: it reads the loss back once every lossReadInterval steps and nothing else,
// and a loss that turns NaN is caught within that many steps, before anything is saved after it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { ConvNeXt } from '../src/models/convnext.js';
import { nonFiniteWeights } from '../src/eval/finite.js';
import { loadCheckpoint } from '../src/train/checkpoint.js';
import { NonFiniteLossError, train, type TrainEvent } from '../src/train/trainer.js';
import { config, TINY_CONVNEXT, tinyModel, tinyRun } from './train-fixtures.js';

const INTERVAL = 4;

/** The tiny ConvNeXt, whose training forward pass number `nanAt` (from 0) returns NaN logits. */
class NanAt extends ConvNeXt {
  #calls = 0;

  constructor(readonly nanAt: number) {
    E.manualSeed(1);
    super(TINY_CONVNEXT);
  }

  override forward(x: E.Tensor): E.Tensor {
    const logits = super.forward(x);
    return this.training && this.#calls++ === this.nanAt ? logits.mul(NaN) : logits;
  }
}

test('each training step reads nothing from the device, except one read of the losses every lossReadInterval steps', async () => {
  const model = tinyModel();
  const reads: { loss: boolean; reads: number }[] = [];
  let last = 0;
  // 18 images in batches of 2: 9 steps, with EMA and gradient clipping on.
  await train(
    tinyRun(model, {
      config: { ...config, epochs: 1, batchSize: 2 },
      lossReadInterval: INTERVAL,
      onEvent: (event) => {
        if (event.type === 'start') last = E.hostReads();
        if (event.type !== 'step') return;
        reads.push({ loss: event.loss !== undefined, reads: E.hostReads() - last });
        last = E.hostReads();
      },
    }),
  );
  assert.equal(reads.length, 9);
  assert.deepEqual(
    reads.map((r) => r.reads),
    reads.map((_, i) => ((i + 1) % INTERVAL === 0 ? 1 : 0)),
  );
  assert.ok(
    reads.every((r) => r.loss === (r.reads === 1)),
    'the steps that read report the loss',
  );
  model.dispose();
});

/** Trains until the NaN loss stops the run; returns its error, the step and checkpoint events, and the run folder. */
async function divergingRun(nanAt: number, checkpointMinutes: number) {
  const model = new NanAt(nanAt);
  const events: TrainEvent[] = [];
  const bestEpochs: number[] = [];
  const run = tinyRun(model, {
    config: { ...config, epochs: 2, batchSize: 2, checkpointMinutes },
    lossReadInterval: INTERVAL,
    onEvent: (event) => events.push(event),
    onBest: async (_, epoch) => {
      bestEpochs.push(epoch);
    },
  });
  const error = await train(run).then(
    () => assert.fail('the run should diverge'),
    (e: Error) => e,
  );
  model.dispose();
  return { error, events, bestEpochs, runDir: run.runDir };
}

/** The loop position and whether the weights are finite in the run's checkpoint. */
async function checkpointOf(runDir: string): Promise<{ epoch: number; batch: number; finite: boolean }> {
  const model = tinyModel();
  const optimizer = new E.AdamW(model.parameters());
  const { loop } = await loadCheckpoint(path.join(runDir, 'checkpoint.safetensors'), { model, optimizer });
  const finite = nonFiniteWeights(model).length === 0;
  optimizer.dispose();
  model.dispose();
  return { epoch: loop.epoch, batch: loop.batch, finite };
}

test('an injected NaN loss is caught within lossReadInterval steps, and nothing is saved after it', async () => {
  // 9 steps per epoch: the NaN comes at the second step of the second epoch, whose first read is after its fourth.
  const { error, events, bestEpochs, runDir } = await divergingRun(9 + 1, 60);
  assert.ok(error instanceof NonFiniteLossError, String(error));
  assert.match(error.message, /the loss became NaN at epoch 2, batch 2\. Start again/);
  const steps = events.filter((e) => e.type === 'step' && e.epoch === 1);
  assert.equal(steps.length, INTERVAL - 1, "the run stopped at the first read after the NaN, in the fourth step, before that step's event");
  assert.deepEqual(events.filter((e) => e.type === 'checkpoint').length, 1, 'only the first epoch was checkpointed');
  assert.deepEqual(bestEpochs, [0]);
  assert.deepEqual(await checkpointOf(runDir), { epoch: 1, batch: 0, finite: true });
});

test('with a checkpoint due after every step, the NaN loss is read before the save that would follow it', async () => {
  const { error, events, runDir } = await divergingRun(2, 1e-9);
  assert.ok(error instanceof NonFiniteLossError, String(error));
  assert.match(error.message, /the loss became NaN at epoch 1, batch 3\./);
  assert.equal(events.filter((e) => e.type === 'checkpoint').length, 2, 'after the first and the second step');
  assert.deepEqual(await checkpointOf(runDir), { epoch: 0, batch: 2, finite: true });
  assert.ok(!existsSync(path.join(runDir, 'best.safetensors')));
});
