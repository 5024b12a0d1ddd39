// A training run's progress: the whole run's ETA, plain lines outside a terminal (validation included), and the
// hemato train command end to end: --json keeps stdout to one JSON document, and Ctrl-C exits 130 after a checkpoint.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { formatDuration } from '../src/cli/progress.js';
import { RunEstimate, trainingProgress } from '../src/cli/train-progress.js';
import type { Metrics } from '../src/eval/metrics.js';
import type { TrainEvent } from '../src/train/trainer.js';
import { TINY_RUN, writeNoisyImageFolder } from './train-fixtures.js';

const root = mkdtempSync(path.join(tmpdir(), 'hemato-progress-'));
const step = (epoch: number, batch: number, batches = 4, loss?: number): TrainEvent => ({
  type: 'step',
  epoch,
  batch,
  batches,
  images: 10,
  loss,
  lr: 1e-3,
  imagesPerSecond: 10,
});
const val = { accuracy: 0.9, macro_f1: 0.85, nll: 0.3 } as Metrics;
const epochEnd = (epoch: number): TrainEvent => ({ type: 'epoch', epoch, trainLoss: 0.5, lr: 1e-3, seconds: 6.5, val, best: true });

test('durations read as seconds, minutes or hours', () => {
  assert.deepEqual(
    [formatDuration(4.4), formatDuration(65), formatDuration(3 * 3600 + 7 * 60 + 20), formatDuration(NaN)],
    ['4 s', '1 min 05 s', '3 h 07 min', '?'],
  );
});

test("the run's ETA counts every remaining step and validation, at rates measured as the run goes", () => {
  const estimate = new RunEstimate({ type: 'start', epochs: 2, stepsPerEpoch: 4, validationImages: 100 }, 0);
  assert.equal(estimate.remainingSeconds, undefined, 'nothing measured yet');
  for (const [batch, t] of [1000, 2000, 3000, 4000].entries()) estimate.step(step(0, batch) as never, t);
  // The first step carries start-up costs and is not timed: 3 steps of 10 images in 3 s.
  assert.equal(estimate.trainRate, 10);
  // Validation not timed yet: an image counts as a third of a training image, 1/30 s.
  assert.ok(Math.abs(estimate.remainingSeconds! - (4 * 1 + (200 * 1) / 30)) < 1e-9);
  estimate.validation({ type: 'validation', epoch: 0, done: 50, total: 100 }, 5000);
  assert.equal(estimate.validationRate, 50);
  assert.ok(Math.abs(estimate.remainingSeconds! - (4 + 150 / 50)) < 1e-9, 'the current validation counts what is left of it');
  estimate.validation({ type: 'validation', epoch: 0, done: 100, total: 100 }, 6000);
  estimate.epoch(epochEnd(0) as never, 6500);
  // 100 images in 2.5 s (the epoch's end counts as validation): 0.025 s each.
  assert.equal(estimate.validationRate, 40);
  assert.equal(estimate.secondsPerEpoch, 4 + 2.5);
  assert.equal(estimate.remainingSeconds, 6.5);
  assert.equal(estimate.fractionDone, 0.5);

  const resumed = new RunEstimate({ type: 'start', epochs: 3, stepsPerEpoch: 4, validationImages: 10, resumedAt: { epoch: 1, batch: 2 } }, 0);
  assert.deepEqual([resumed.stepsDone, resumed.epochsDone], [6, 1]);
  assert.equal(resumed.fractionDone, 7 / 15, 'by steps and validations until rates are known');
});

/** Feeds events at the given times (ms) to a plain-text progress, and returns its lines. */
function plainLines(events: [number, TrainEvent][]): string[] {
  const out: string[] = [];
  let now = 0;
  const progress = trainingProgress({ stream: { isTTY: false, write: (text: string) => out.push(text) }, now: () => now });
  for (const [t, event] of events) {
    now = t;
    progress.onEvent(event);
  }
  progress.stop();
  return out.join('').trimEnd().split('\n');
}

test('outside a terminal: a plain line at each tenth of the run, with rates, loss, learning rate and the run ETA', () => {
  const events: [number, TrainEvent][] = [[0, { type: 'start', epochs: 2, stepsPerEpoch: 5, validationImages: 20 }]];
  for (let b = 0; b < 5; b++) events.push([1000 * (b + 1), step(0, b, 5, b === 3 ? 0.6931 : undefined)]);
  events.push([5500, { type: 'validation', epoch: 0, done: 20, total: 20 }], [6000, epochEnd(0)]);
  for (let b = 0; b < 5; b++) events.push([7000 + 1000 * b, step(1, b, 5)]);
  events.push(
    [11500, { type: 'validation', epoch: 1, done: 20, total: 20 }],
    [12000, epochEnd(1)],
    [12000, { type: 'stop', reason: 'no better validation macro-F1 for 1 epochs' }],
  );
  const lines = plainLines(events);
  assert.equal(lines.filter((l) => l.startsWith('epoch 1/2, batch')).length, 5, lines.join('\n'));
  assert.equal(lines[0], 'epoch 1/2, batch 1/5 | ? img/s, ? per epoch | loss -, lr 1.00e-3 | run 8.3 % done, ETA ?');
  assert.equal(lines[2], 'epoch 1/2, batch 3/5 | 10.0 img/s, 6 s per epoch | loss -, lr 1.00e-3 | run 26.5 % done, ETA 8 s');
  assert.match(lines[4], /^epoch 1\/2, batch 5\/5 \| 10\.0 img\/s, .* \| loss 0\.6931, lr 1\.00e-3 \| run .* done, ETA \d+ s$/);
  assert.match(lines[5], /^epoch 1: train loss 0\.5000 \| val accuracy 90\.00% macro-F1 85\.00% NLL 0\.3000 \| 7 s \| best so far \| run ETA \d+ s$/);
  assert.match(lines.at(-2)!, /^epoch 2: .* \| best so far$/, 'no ETA once the run is done');
  assert.equal(lines.at(-1), 'early stop: no better validation macro-F1 for 1 epochs');
});

test('outside a terminal: a long validation gets a line every 30 seconds', () => {
  const events: [number, TrainEvent][] = [
    [0, { type: 'start', epochs: 1, stepsPerEpoch: 2, validationImages: 3000, resumedAt: { epoch: 0, batch: 1 } }],
    [1000, step(0, 1, 2)],
  ];
  for (let done = 100, t = 2000; done <= 3000; done += 100, t += 5000) events.push([t, { type: 'validation', epoch: 0, done, total: 3000 }]);
  const lines = plainLines(events);
  assert.equal(lines[0], 'resuming at epoch 1, batch 2');
  const validation = lines.filter((l) => l.includes('validation'));
  assert.ok(validation.length >= 4 && validation.length <= 6, validation.join('\n'));
  assert.match(validation[0], /^epoch 1\/1, validation 700\/3000 images \| 22\.6 img\/s \| run 66\.7 % done, ETA 1 min 42 s$/);
});

/** Two classes of noisy 40 px images: 8 each. */
function imageFolder(): Promise<string> {
  return writeNoisyImageFolder(path.join(root, 'cells'), ['neutrophil', 'platelet'], 5);
}

function settings(epochs: number): string {
  const file = path.join(root, `settings-${epochs}.json`);
  writeFileSync(file, JSON.stringify({ ...TINY_RUN, epochs }));
  return file;
}

/** Runs hemato train with stdout and stderr piped (not a terminal); `onStderr` may act on what it has written so far. */
function hemato(args: string[], onStderr?: (text: string, child: ReturnType<typeof spawn>) => void) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/hemato.js', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
      onStderr?.(stderr, child);
    });
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

test('hemato train --json outside a terminal: progress as plain lines on stderr, one JSON document on stdout', async () => {
  const folder = await imageFolder();
  const out = path.join(root, 'run-json');
  const { code, stdout, stderr } = await hemato(['train', folder, '--config', settings(2), '--out', out, '--json']);
  assert.equal(code, 0, stderr);
  const summary = JSON.parse(stdout);
  assert.equal(summary.model, path.join(out, 'model.safetensors'));
  assert.ok(!stderr.includes('\x1b['), 'no terminal control codes');
  assert.match(stderr, /^epoch 1\/2, batch 1\/\d+ \| .* img\/s, .* per epoch \| loss .*, lr .* \| run .* done, ETA .*$/m);
  assert.match(stderr, /^epoch 1: train loss .* \| run ETA .*$/m);
  assert.match(stderr, /^epoch 2: train loss /m);
});

test('Ctrl-C stops the run at the next step, writes a checkpoint and exits 130', async () => {
  const folder = await imageFolder();
  const out = path.join(root, 'run-interrupted');
  let signalled = false;
  const { code, stdout, stderr } = await hemato(['train', folder, '--config', settings(500), '--out', out, '--json'], (text, child) => {
    if (!signalled && /^epoch 1: /m.test(text)) {
      signalled = true;
      child.kill('SIGINT');
    }
  });
  assert.equal(code, 130, stderr);
  assert.equal(stdout, '', 'an interrupted run prints no result');
  assert.match(stderr, /stopping after this step and writing a checkpoint/);
  assert.match(stderr, new RegExp(`interrupted; continue with: hemato train --out ${out} --resume`));
  assert.ok(!existsSync(path.join(out, 'model.safetensors')));
  assert.ok(!existsSync(path.join(out, 'train.lock')), 'the lock is released');
  // It stopped after a step of the second epoch or later (the signal came after the first epoch's end).
  const { tensors, metadata } = await E.loadSafetensors(path.join(out, 'checkpoint.safetensors'));
  E.dispose(tensors);
  const loop = JSON.parse(metadata.loop);
  assert.ok(loop.epoch >= 1 && loop.batch >= 1, metadata.loop);
});
