// Training: an interrupted and resumed run ends with weights bitwise identical to an uninterrupted one, and the log
// it appends to is never written through a link.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { LOG_FILE, NonFiniteLossError, train } from '../src/train/trainer.js';
import { NonFiniteModelError } from '../src/eval/finite.js';
import { config, tinyModel, tinyRun, tinySet, trainTiny } from './train-fixtures.js';

test('a run interrupted mid-epoch and resumed ends with bitwise-identical weights', async () => {
  const before = E.liveTensors();
  const straight = await trainTiny(config);
  const resumed = await trainTiny(config, 4); // 3 steps per epoch: stops inside the second epoch
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

test('a stop requested from the event loop (a signal handler, a timer) lands after the step under way, inline or with workers', async () => {
  for (const workers of [0, 1]) {
    const model = tinyModel();
    let stop = false;
    let steps = 0;
    const outcome = await train(
      tinyRun(model, {
        config: { ...config, batchSize: 2 }, // 9 steps per epoch
        workers,
        shouldStop: () => stop,
        onEvent: (event) => {
          if (event.type === 'step' && ++steps === 1) setTimeout(() => (stop = true), 0);
        },
      }),
    );
    assert.equal(outcome.interrupted, true);
    assert.ok(steps <= 2, `with ${workers} workers, the stop landed after ${steps} steps of the epoch's 9`);
    assert.deepEqual([outcome.loop.epoch, outcome.loop.batch], [0, steps]);
    model.dispose();
  }
});

test('the log is never appended through a link at its name: one there at the start, or one placed while the run trains', async () => {
  const outside = path.join(mkdtempSync(path.join(tmpdir(), 'hemato-outside-')), 'elsewhere.jsonl');
  writeFileSync(outside, 'not the run log\n');
  const linked = /log\.jsonl is a symbolic link, where the run appends its log to a file of its own: remove it/;
  // Placed after the run began: the first epoch's entry is refused, not written through the link.
  const model = tinyModel();
  const run = tinyRun(model);
  await assert.rejects(
    train({
      ...run,
      onEvent: (event) => {
        if (event.type === 'step' && event.epoch === 0 && event.batch === 0) symlinkSync(outside, path.join(run.runDir, LOG_FILE));
      },
    }),
    linked,
  );
  // There before a resumed run starts: refused before its first step.
  const stopped = tinyRun(model, { shouldStop: () => true });
  assert.equal((await train(stopped)).interrupted, true);
  symlinkSync(outside, path.join(stopped.runDir, LOG_FILE));
  const events: string[] = [];
  await assert.rejects(train({ ...stopped, resume: true, shouldStop: undefined, onEvent: (event) => events.push(event.type) }), linked);
  assert.deepEqual(events, []);
  assert.equal(readFileSync(outside, 'utf8'), 'not the run log\n');
  model.dispose();
});
