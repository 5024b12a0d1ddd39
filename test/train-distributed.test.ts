// Data-parallel training through the CLI, on 127.0.0.1: two processes with half the batch each end where one
// process with the whole batch ends; a run stopped by a signal and resumed ends where the uninterrupted one does; a
// rank that dies makes the other exit with a message that says how to resume, and the resumed run finishes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { writeNoisyImageFolder } from './train-fixtures.js';
import { createModel, listModels } from '../src/models/index.js';

const root = mkdtempSync(path.join(tmpdir(), 'hemato-ddp-'));
const folder = await writeNoisyImageFolder(path.join(root, 'cells'), ['lymphocyte', 'neutrophil', 'platelet'], 5);
// 24 images, 20 of them for training: 5 global batches of 4 per epoch.
const FLAGS = ['--arch', 'convnext_atto', '--size', '32', '--batch-size', '4', '--workers', '0', '--device', 'cpu', '--precision', 'fp32', '--no-scale'];
const ONE_CORE = { ...process.env, HEMATO_NUM_THREADS: '1' };

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts `hemato train …`; onStderr sees the output as it comes (progress lines, outside a terminal). */
function hemato(args: string[], options: { env?: NodeJS.ProcessEnv; onStderr?: (text: string, child: ChildProcess) => void } = {}) {
  const child = spawn(process.execPath, ['bin/hemato.js', 'train', folder, ...FLAGS, ...args], { env: options.env ?? ONE_CORE });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    options.onStderr?.(stderr, child);
  });
  const done = new Promise<Finished>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

async function weights(runDir: string): Promise<{ model: Map<string, E.Tensor>; globalStep: number }> {
  const { tensors, metadata } = await E.loadSafetensors(path.join(runDir, 'checkpoint.safetensors'));
  const model = new Map([...tensors].filter(([key]) => key.startsWith('model.')));
  return { model, globalStep: JSON.parse(metadata.loop).globalStep };
}

async function maxWeightDifference(a: string, b: string): Promise<number> {
  const [x, y] = await Promise.all([weights(a), weights(b)]);
  assert.deepEqual([...x.model.keys()].sort(), [...y.model.keys()].sort());
  let max = 0;
  for (const [key, t] of x.model)
    max = Math.max(
      max,
      E.tidy(() => t.sub(y.model.get(key)!).abs().max().item()),
    );
  return max;
}

const epochs = (runDir: string) =>
  readFileSync(path.join(runDir, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as Record<string, number>);

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

const single = path.join(root, 'single');
const pair = path.join(root, 'pair');

test('2 processes with 2 images each end with the weights and validation metrics of 1 process with 4', async () => {
  const [one, two] = await Promise.all([
    hemato(['--out', single, '--epochs', '2']).done,
    hemato(['--out', pair, '--epochs', '2', '--nproc-per-node', '2', '--dist-timeout', '60']).done,
  ]);
  assert.equal(one.code, 0, one.stderr);
  assert.equal(two.code, 0, two.stderr);
  assert.match(two.stderr, /in 2 processes \(2 images each per step\)/);
  assert.equal((await weights(pair)).globalStep, 10);
  const difference = await maxWeightDifference(single, pair);
  assert.ok(difference <= 1e-5, `max |Δw| = ${difference}`);
  const [a, b] = [epochs(single), epochs(pair)];
  assert.equal(b.length, 2, 'rank 0 alone logs each epoch');
  for (const [i, entry] of a.entries()) {
    assert.equal(b[i].val_accuracy, entry.val_accuracy);
    assert.equal(b[i].val_macro_f1, entry.val_macro_f1);
    assert.ok(Math.abs(b[i].val_nll - entry.val_nll) < 1e-4, `NLL ${entry.val_nll} vs ${b[i].val_nll}`);
    assert.ok(Math.abs(b[i].train_loss - entry.train_loss) < 1e-4, `train loss ${entry.train_loss} vs ${b[i].train_loss}`);
  }
  assert.equal(JSON.parse(readFileSync(path.join(pair, 'provenance.json'), 'utf8')).world_size, 2);
  assert.ok(existsSync(path.join(pair, 'model.safetensors')));
  assert.ok(!existsSync(path.join(pair, 'train.lock')), 'the lock is released');
});

test('a 2-process run stopped by SIGTERM mid-run and resumed ends with the weights of the uninterrupted run', async () => {
  const runDir = path.join(root, 'stopped');
  let signalled = false;
  const stopped = await hemato(['--out', runDir, '--epochs', '2', '--nproc-per-node', '2', '--dist-timeout', '60'], {
    onStderr: (text, child) => {
      if (!signalled && /epoch 1\/2, batch 3\/5/.test(text)) {
        signalled = true;
        child.kill('SIGTERM');
      }
    },
  }).done;
  assert.equal(stopped.code, 130, stopped.stderr);
  assert.match(stopped.stderr, /continue with: hemato train --out \S+ --resume --nproc-per-node 2/);
  const { globalStep } = await weights(runDir);
  assert.ok(globalStep >= 3 && globalStep < 10, `stopped after step ${globalStep}`);
  const resumed = await hemato(['--out', runDir, '--resume', '--nproc-per-node', '2', '--dist-timeout', '60']).done;
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.equal((await weights(runDir)).globalStep, 10);
  assert.ok((await maxWeightDifference(runDir, pair)) <= 1e-6);
});

test('a rank killed mid-epoch: the other exits within --dist-timeout saying how to resume; the checkpoint is intact and resuming finishes', async () => {
  const runDir = path.join(root, 'killed');
  const port = await freePort();
  const rankEnv = (rank: number) => ({ ...ONE_CORE, RANK: String(rank), WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) });
  const args = ['--out', runDir, '--epochs', '6', '--dist-timeout', '20'];
  const second = hemato(args, { env: rankEnv(1) });
  let killed = false;
  const first = hemato(args, {
    env: rankEnv(0),
    onStderr: (text) => {
      if (!killed && /epoch 2\/6, batch/.test(text)) {
        killed = true;
        second.child.kill('SIGKILL');
      }
    },
  });
  const [zero, one] = await Promise.all([first.done, second.done]);
  assert.ok(killed, zero.stderr);
  assert.equal(one.code, null, 'rank 1 was killed');
  assert.equal(zero.code, 1, zero.stderr);
  assert.match(zero.stderr, /rank 0 of 2 lost the other processes/);
  assert.match(zero.stderr, /checkpoint\.safetensors, is intact; continue with: hemato train --out \S+ --resume/);
  const { globalStep } = await weights(runDir);
  assert.ok(globalStep >= 5 && globalStep < 30, `checkpoint at step ${globalStep}`);
  const resumed = await hemato(['--out', runDir, '--epochs', '6', '--resume', '--nproc-per-node', '2', '--dist-timeout', '60']).done;
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.equal((await weights(runDir)).globalStep, 30);
  assert.equal(epochs(runDir).length, 6);
});

test('distributed usage errors are refused before anything starts', async () => {
  const cases: [string[], NodeJS.ProcessEnv | undefined, RegExp][] = [
    [
      ['--batch-size', '5', '--nproc-per-node', '2'],
      undefined,
      /batch size 5 is the global batch, split evenly across the 2 processes; choose a multiple of 2/,
    ],
    [['--nnodes', '2'], undefined, /--nnodes 2 needs --node-rank/],
    [['--nnodes', '2', '--node-rank', '1'], undefined, /needs --master-addr/],
    [['--node-rank', '1'], undefined, /--node-rank 1 needs --nnodes above it/],
    [['--dist-timeout', '0'], undefined, /--dist-timeout/],
    [[], { ...ONE_CORE, RANK: '0' }, /RANK and WORLD_SIZE go together/],
    [[], { ...ONE_CORE, RANK: '0', WORLD_SIZE: '2' }, /WORLD_SIZE=2 needs MASTER_ADDR and MASTER_PORT/],
    [['--nproc-per-node', '2'], { ...ONE_CORE, RANK: '0', WORLD_SIZE: '2' }, /RANK is set.*leave out --nproc-per-node/],
  ];
  for (const [args, env, message] of cases) {
    const outcome = await hemato(['--out', path.join(root, 'refused'), ...args], { env }).done;
    assert.equal(outcome.code, 2, `${args.join(' ')}: ${outcome.stderr}`);
    assert.match(outcome.stderr, message);
  }
  assert.ok(!existsSync(path.join(root, 'refused', 'config.json')));
  const over = await hemato(['--out', pair, '--epochs', '2', '--nproc-per-node', '2']).done;
  assert.equal(over.code, 1);
  assert.match(over.stderr, /holds a finished run's model/);
  assert.doesNotMatch(over.stderr, /rank 1/, 'refused before any worker starts');
});

test('ranks started with other settings refuse to train, every one of them saying why', async () => {
  const port = await freePort();
  const rankEnv = (rank: number) => ({ ...ONE_CORE, RANK: String(rank), WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port) });
  const runDir = path.join(root, 'mismatch');
  const [zero, one] = await Promise.all([
    hemato(['--out', runDir, '--epochs', '1', '--dist-timeout', '30'], { env: rankEnv(0) }).done,
    hemato(['--out', runDir, '--epochs', '1', '--dist-timeout', '30', '--lr', '0.01'], { env: rankEnv(1) }).done,
  ]);
  assert.equal(zero.code, 1, zero.stderr);
  assert.equal(one.code, 1, one.stderr);
  assert.match(zero.stderr, /1 of the 2 processes have other settings than rank 0; start every process with the same flags/);
  assert.match(one.stderr, /\[rank 1\] hemato: 1 of the 2 processes have other settings than rank 0, this one among them/);
  assert.ok(!existsSync(path.join(runDir, 'checkpoint.safetensors')));
});

test('the registered models keep no batch statistics (no BatchNorm): the weights are all the ranks must share', () => {
  for (const name of listModels()) {
    const model = createModel(name, { numClasses: 3, inputSize: 64 });
    const parameters = new Set(model.namedParameters().map(([key]) => key));
    const state = [...model.stateDict().keys()].filter((key) => !parameters.has(key));
    model.dispose();
    assert.deepEqual(state, [], `${name} keeps state besides its parameters`);
  }
});
