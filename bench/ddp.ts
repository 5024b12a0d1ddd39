// `npm run bench:ddp [-- --model NAME --size PX --batch N --steps N]`: training throughput on this machine of one
// process with all the cores against one process per core in a data-parallel group (Gloo over 127.0.0.1), with the
// same global batch, and the gradient all-reduce's share of a data-parallel step. Each configuration runs in child
// processes (the thread count is fixed when libtorch starts). Progress goes to stderr; the last line on stdout is
// one JSON document.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import * as E from '../src/engine/index.js';
import { createModel } from '../src/models/index.js';
import { IMAGENET_NORMALIZATION, makeBatch, type ImageSet } from '../src/data/batches.js';
import { DEFAULT_AUGMENT } from '../src/data/augment.js';
import { applyGradients, forwardBackward, type StepSettings } from '../src/train/step.js';
import { type DataParallel, joinGroup } from '../src/train/data-parallel.js';
import { withBatchShard, weightDecayGroups } from '../src/nn/index.js';

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const settings = {
  model: arg('model', 'dualpath_atto'),
  size: Number(arg('size', '128')),
  batch: Number(arg('batch', '16')),
  steps: Number(arg('steps', '12')),
};
/** Steps run before timing: the first ones carry allocation and start-up costs. */
const WARMUP = 2;
const log = (message: string) => process.stderr.write(`${message}\n`);

interface RankReport {
  imagesPerSecond: number;
  stepMs: number;
  /** Waiting for the other rank before the exchange (load imbalance). */
  waitMs: number;
  allReduceMs: number;
  precision: string;
}

/** One process: trains `steps` steps on random images; in a group, on its half of each global batch. */
async function worker(): Promise<void> {
  const rank = Number(process.env.RANK ?? 0);
  const worldSize = Number(process.env.WORLD_SIZE ?? 1);
  const parallel: DataParallel | undefined =
    worldSize > 1
      ? await joinGroup({ rank, worldSize, masterAddr: '127.0.0.1', masterPort: Number(process.env.MASTER_PORT), timeoutMs: 120_000 }, () => '')
      : undefined;
  const precision = E.precisionFor({ device: 'cpu', family: E.modelFamily(settings.model), purpose: 'training' }).precision;
  E.manualSeed(0);
  const model = createModel(settings.model, { numClasses: 8, inputSize: settings.size, dropPathRate: 0.1 });
  const groups = weightDecayGroups(model, 0.05);
  const optimizer = new E.AdamW([groups.decay, groups.noDecay], { lr: 1e-4 });
  const n = 4 * settings.batch;
  const set: ImageSet = {
    images: Uint8Array.from({ length: n * settings.size * settings.size * 3 }, (_, i) => (i * 2654435761) >>> 24),
    size: settings.size,
    labels: Int32Array.from({ length: n }, (_, i) => i % 8),
    classes: Array.from({ length: 8 }, (_, i) => `c${i}`),
  };
  const step: StepSettings = { precision, device: 'cpu', labelSmoothing: 0.1, clipGrad: 1 };
  const local = settings.batch / worldSize;
  let [stepMs, waitMs, allReduceMs] = [0, 0, 0];
  if (parallel) await parallel.broadcastModule(model);
  model.train();
  for (let s = 0; s < WARMUP + settings.steps; s++) {
    const started = performance.now();
    const global = Int32Array.from({ length: settings.batch }, (_, i) => (s * settings.batch + i) % n);
    const mine = parallel ? parallel.shard(global) : global;
    const batch = makeBatch(set, mine, { normalization: IMAGENET_NORMALIZATION, augment: DEFAULT_AUGMENT, seed: s });
    E.manualSeed(s);
    const loss = withBatchShard(parallel ? { offset: rank * local, total: settings.batch } : null, () => forwardBackward(model, batch, step));
    E.dispose([batch.x, batch.y, loss]);
    let [wait, exchange] = [0, 0];
    if (parallel) {
      const before = performance.now();
      await parallel.barrier();
      const ready = performance.now();
      await parallel.averageGradients(model.parameters(), [0]);
      [wait, exchange] = [ready - before, performance.now() - ready];
    }
    applyGradients(model, optimizer, step);
    if (s >= WARMUP) {
      stepMs += performance.now() - started;
      waitMs += wait;
      allReduceMs += exchange;
    }
  }
  await parallel?.destroy();
  const report: RankReport = {
    imagesPerSecond: (settings.batch * settings.steps) / (stepMs / 1000),
    stepMs: stepMs / settings.steps,
    waitMs: waitMs / settings.steps,
    allReduceMs: allReduceMs / settings.steps,
    precision,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Runs `processes` workers with `threads` libtorch threads each; resolves to rank 0's report. */
async function configuration(processes: number, threads: number): Promise<RankReport> {
  const port = await freePort();
  const reports = await Promise.all(
    Array.from({ length: processes }, (_, rank) => {
      const env = { ...process.env, HEMATO_NUM_THREADS: String(threads), RANK: String(rank), WORLD_SIZE: String(processes), MASTER_PORT: String(port) };
      const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'worker', ...process.argv.slice(2)], {
        env,
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (chunk) => (out += chunk));
      return new Promise<RankReport>((resolve, reject) =>
        child.on('close', (code) =>
          code === 0 ? resolve(JSON.parse(out.trim().split('\n').at(-1)!)) : reject(new Error(`bench worker ${rank} exited with ${code}`)),
        ),
      );
    }),
  );
  return reports[0];
}

async function main(): Promise<void> {
  const cores = availableParallelism();
  log(`${settings.model} at ${settings.size} px, global batch ${settings.batch}, ${settings.steps} timed steps, ${cores} cores`);
  log(`1 process × ${cores} threads…`);
  const one = await configuration(1, cores);
  log(`  ${one.imagesPerSecond.toFixed(1)} img/s`);
  log(`${cores} processes × 1 thread…`);
  const many = await configuration(cores, 1);
  log(`  ${many.imagesPerSecond.toFixed(1)} img/s; all-reduce ${many.allReduceMs.toFixed(1)} ms of a ${many.stepMs.toFixed(0)} ms step`);
  const result = {
    bench: 'ddp',
    model: settings.model,
    size: settings.size,
    global_batch: settings.batch,
    precision: one.precision,
    cores,
    single_process: { processes: 1, threads: cores, images_per_second: one.imagesPerSecond, step_ms: one.stepMs },
    data_parallel: {
      processes: cores,
      threads: 1,
      images_per_second: many.imagesPerSecond,
      step_ms: many.stepMs,
      all_reduce_ms: many.allReduceMs,
      wait_ms: many.waitMs,
      all_reduce_share: many.allReduceMs / many.stepMs,
    },
    ratio_data_parallel_to_single: many.imagesPerSecond / one.imagesPerSecond,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

await (process.argv[2] === 'worker' ? worker() : main());
