// `npm run bench:model [-- --quick]`: forward and training-step throughput on the CPU, in fp32 and under bf16
// autocast. First the bundled model, side by side with the same weights in plain PyTorch (bench/peers/torch_model.py,
// Debian's PyTorch 1.13 on the same libtorch), run two ways: op for op as hemato runs it, and as timm writes it (NCHW);
// the three interleave, in batches of 64 and, forward only, for a single image. Then the dual-path network, hemato
// alone. --quick measures dualpath-atto at 128 px only; the full run adds dualpath-tiny at 224 px. Progress goes to
// stderr; the last line on stdout is one JSON document.
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as E from '../src/engine/index.js';
import { createModel, type ImageClassifier } from '../src/models/index.js';
import { loadModel } from '../src/models/io.js';
import { weightDecayGroups } from '../src/nn/index.js';
import { cpuRecord, PRECISIONS } from './cpu.js';
import { debianPython, ensureTorch, peerEnv, peersDir } from './torch-peer.js';

const quick = process.argv.includes('--quick');
const log = (message: string) => process.stderr.write(`${message}\n`);
const bundledModel = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../models/hemato-convnext-atto.safetensors');

interface Case {
  model: string;
  inputSize: number;
  batch: number;
  warmup: number;
  reps: number;
}

const CASES: Case[] = [
  { model: 'dualpath-atto', inputSize: 128, batch: 16, warmup: 1, reps: quick ? 3 : 5 },
  ...(quick ? [] : [{ model: 'dualpath-tiny', inputSize: 224, batch: 16, warmup: 1, reps: 2 }]),
];

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Median and fastest of reps timed runs: this machine is shared, and the fastest run is the least disturbed. */
function timed(fn: () => void, warmup: number, reps: number): { medianMs: number; bestMs: number } {
  for (let i = 0; i < warmup; i++) fn();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const start = performance.now();
    fn();
    E.synchronize();
    times.push(performance.now() - start);
  }
  return { medianMs: median(times), bestMs: Math.min(...times) };
}

function withPrecision<T>(precision: E.Precision, fn: () => T): T {
  return precision === 'bf16' ? E.autocast(fn, { device: 'cpu', dtype: 'bfloat16' }) : fn();
}

interface Result {
  model: string;
  inputSize: number;
  batch: number;
  precision: E.Precision;
  /** Milliseconds per batch, median and fastest. */
  forwardMs: { median: number; best: number };
  trainStepMs: { median: number; best: number };
  /** Images per second at the fastest run. */
  forwardImgPerS: number;
  trainImgPerS: number;
}

/** An optimiser for the model, and a fixed batch of random images with labels cycling through the 8 classes. */
function trainingInputs(model: ImageClassifier, batch: number, size: number): { optimizer: E.AdamW; x: E.Tensor; target: E.Tensor } {
  const groups = weightDecayGroups(model, 0.05);
  const optimizer = new E.AdamW([groups.decay, groups.noDecay], { lr: 1e-4 });
  const x = E.randn([batch, 3, size, size], { seed: 1 });
  const target = E.tensor(
    Array.from({ length: batch }, (_, i) => i % 8),
    [batch],
    { dtype: 'int64' },
  );
  return { optimizer, x, target };
}

function measure(c: Case, precision: E.Precision): Result {
  E.manualSeed(0);
  const model = createModel(c.model, { numClasses: 8, inputSize: c.inputSize });
  const { optimizer, x, target } = trainingInputs(model, c.batch, c.inputSize);
  try {
    model.eval();
    const forward = timed(() => E.noGrad(() => withPrecision(precision, () => model.forward(x).dispose())), c.warmup, c.reps);
    model.train();
    const train = timed(
      () => {
        const loss = withPrecision(precision, () => E.tidy(() => E.F.crossEntropy(model.forward(x), target, { labelSmoothing: 0.1 })));
        loss.backward();
        loss.dispose();
        optimizer.step();
        optimizer.zeroGrad();
      },
      c.warmup,
      c.reps,
    );
    const perSecond = (ms: number) => Math.round((c.batch / ms) * 1000 * 10) / 10;
    const ms = (t: { medianMs: number; bestMs: number }) => ({ median: Math.round(t.medianMs), best: Math.round(t.bestMs) });
    const result: Result = {
      model: c.model,
      inputSize: c.inputSize,
      batch: c.batch,
      precision,
      forwardMs: ms(forward),
      trainStepMs: ms(train),
      forwardImgPerS: perSecond(forward.bestMs),
      trainImgPerS: perSecond(train.bestMs),
    };
    log(`${c.model} ${c.inputSize}px batch ${c.batch} ${precision}: forward ${result.forwardImgPerS} img/s, training step ${result.trainImgPerS} img/s`);
    return result;
  } finally {
    optimizer.dispose();
    model.dispose();
    E.dispose([x, target]);
  }
}

// ---- the bundled model against the same network in PyTorch

const PEER = { batch: 64, inputSize: 128, warmup: 1, reps: quick ? 5 : 7 };
/**
 * Batches of 64, forward and training step; and a single image's forward pass, what one classification waits for,
 * where fixed costs per layer rather than arithmetic set the time. A single image's pass settles only after tens of
 * repetitions (about 12 ms after 20 here, 8.5 after 200): it warms up longer and is repeated more.
 */
const SINGLE = { batch: 1, warmup: 30, reps: quick ? 15 : 31 };
const PEER_CASES = [
  ...['forward', 'train'].flatMap((kind) => PRECISIONS.map((precision) => ({ kind, precision, ...PEER }))),
  ...PRECISIONS.map((precision) => ({ kind: 'forward', precision, ...SINGLE })),
] as { kind: 'forward' | 'train'; precision: E.Precision; batch: number; warmup: number; reps: number }[];

interface PeerCase {
  precision: E.Precision;
  batch: number;
  hemato_ms: number;
  /** PyTorch running the same ops as hemato, channels-last. */
  pytorch_ms: number;
  /** PyTorch running the network as timm writes it: NCHW memory, the MLP as 1×1 convs. */
  pytorch_nchw_ms: number;
  hemato_img_s: number;
  pytorch_img_s: number;
  pytorch_nchw_img_s: number;
  /** Medians over repetitions of hemato's time over PyTorch's in the same repetition. */
  ratio_vs_pytorch: number;
  ratio_vs_pytorch_nchw: number;
}

/** PyTorch in a child process that times one forward pass or training step per command, so that the two interleave. */
async function startPeer(
  params: number,
  batch: number,
): Promise<{ run: (command: string) => Promise<number>; info: { version: string; threads: number }; close: () => void }> {
  const config = { threads: E.numThreads(), batch, input_size: PEER.inputSize, num_classes: 8, weights: bundledModel, params };
  const child = spawn(debianPython, [path.join(peersDir, 'torch_model.py'), JSON.stringify(config)], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: peerEnv(E.libtorchInfo().openblasThreads),
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async (): Promise<Record<string, unknown>> => {
    const line = await lines.next();
    if (line.done) throw new Error('the PyTorch peer exited early (its error is above)');
    return JSON.parse(line.value) as Record<string, unknown>;
  };
  const ready = await next();
  return {
    info: { version: String(ready.version), threads: Number(ready.threads) },
    run: async (command) => {
      child.stdin.write(`${command}\n`);
      return Number((await next()).ms);
    },
    close: () => child.stdin.end('quit\n'),
  };
}

async function comparePeer(): Promise<Record<string, unknown>> {
  const missing = ensureTorch(log);
  if (missing) return { error: missing };
  const { model } = await loadModel(bundledModel);
  const params = model.parameters().reduce((n, p) => n + p.numel, 0);
  const { optimizer, x, target } = trainingInputs(model, PEER.batch, PEER.inputSize);
  const single = x.slice(0, 0, 1);
  const ours = {
    forward: (precision: E.Precision, batch: number) => {
      model.eval();
      E.noGrad(() => withPrecision(precision, () => model.forward(batch === 1 ? single : x).dispose()));
    },
    // As the trainer does: the labels are checked where the batch is made, not on every step.
    train: (precision: E.Precision) => {
      model.train();
      const loss = withPrecision(precision, () => E.tidy(() => E.F.crossEntropy(model.forward(x), target, { labelSmoothing: 0.1, checkTargets: false })));
      loss.backward();
      loss.dispose();
      optimizer.step();
      optimizer.zeroGrad();
    },
  };
  // One PyTorch process per batch size: each holds its own fixed input.
  const peers = new Map<number, Awaited<ReturnType<typeof startPeer>>>();
  try {
    const cases: Record<string, PeerCase> = {};
    for (const { kind, precision, batch, warmup, reps } of PEER_CASES) {
      if (!peers.has(batch)) peers.set(batch, await startPeer(params, batch));
      const peer = peers.get(batch)!;
      const command = `${kind} ${precision}`;
      const sides = {
        hemato: async () => {
          const start = performance.now();
          ours[kind](precision, batch);
          return performance.now() - start;
        },
        pytorch: () => peer.run(`${command} hemato`),
        pytorch_nchw: () => peer.run(`${command} nchw`),
      };
      const order = Object.keys(sides) as (keyof typeof sides)[];
      const times: Record<keyof typeof sides, number[]> = { hemato: [], pytorch: [], pytorch_nchw: [] };
      for (let i = 0; i < warmup; i++) for (const side of order) await sides[side]();
      for (let rep = 0; rep < reps; rep++) {
        // Rotate which side goes first, so that none always inherits another's cache state.
        for (let k = 0; k < order.length; k++) {
          const side = order[(rep + k) % order.length];
          times[side].push(await sides[side]());
        }
      }
      const ms = (side: keyof typeof sides) => median(times[side]);
      const perSecond = (value: number) => round((batch / value) * 1000);
      const ratio = (side: 'pytorch' | 'pytorch_nchw') => round(median(times.hemato.map((value, i) => value / times[side][i])));
      const result: PeerCase = {
        precision,
        batch,
        hemato_ms: round(ms('hemato')),
        pytorch_ms: round(ms('pytorch')),
        pytorch_nchw_ms: round(ms('pytorch_nchw')),
        hemato_img_s: perSecond(ms('hemato')),
        pytorch_img_s: perSecond(ms('pytorch')),
        pytorch_nchw_img_s: perSecond(ms('pytorch_nchw')),
        ratio_vs_pytorch: ratio('pytorch'),
        ratio_vs_pytorch_nchw: ratio('pytorch_nchw'),
      };
      cases[`${kind}_${precision}${batch === PEER.batch ? '' : `_batch${batch}`}`] = result;
      log(
        `bundled model ${command}, batch ${batch}: hemato ${result.hemato_ms} ms, PyTorch ${result.pytorch_ms} ms (ratio ${result.ratio_vs_pytorch}), PyTorch NCHW ${result.pytorch_nchw_ms} ms (ratio ${result.ratio_vs_pytorch_nchw})`,
      );
    }
    return {
      model: 'bundled convnext-atto (convnext_only_atto)',
      weights: path.basename(bundledModel),
      params,
      batch: PEER.batch,
      input_size: PEER.inputSize,
      reps: PEER.reps,
      pytorch: peers.get(PEER.batch)!.info,
      cases,
    };
  } catch (error) {
    return { error: `the PyTorch peer failed: ${(error as Error).message.split('\n')[0]}` };
  } finally {
    for (const peer of peers.values()) peer.close();
    optimizer.dispose();
    model.dispose();
    E.dispose([x, single, target]);
  }
}

const round = (value: number, digits = 3) => Number(value.toPrecision(digits));
const loads = () => loadavg().map((l) => round(l));

const started = performance.now();
const loadAtStart = loads();
const peer = await comparePeer();
const results: Result[] = [];
for (const c of CASES) for (const precision of PRECISIONS) results.push(measure(c, precision));
const info = E.libtorchInfo();
process.stdout.write(
  `${JSON.stringify({
    bench: 'model',
    quick,
    device: 'cpu',
    cpu: cpuRecord,
    precisions: PRECISIONS,
    threads: E.numThreads(),
    // The PyTorch peer runs with the same count (peerEnv).
    openblas_threads: info.openblasThreads >= 0 ? info.openblasThreads : null,
    torch: info.torchVersion,
    load_average: { start: loadAtStart, end: loads() },
    peer,
    results,
    seconds: Math.round((performance.now() - started) / 100) / 10,
  })}\n`,
);
