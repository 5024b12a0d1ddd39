// `npm run bench:model [-- --quick]`: forward and training-step throughput of the dual-path network on the CPU, in
// fp32 and under bf16 autocast. --quick measures dualpath-atto at 128 px only; the full run adds dualpath-tiny at
// 224 px. Progress goes to stderr; the last line on stdout is one JSON document.
import * as E from '../src/engine/index.js';
import { createModel } from '../src/models/index.js';
import { weightDecayGroups } from '../src/nn/index.js';

const quick = process.argv.includes('--quick');
const log = (message: string) => process.stderr.write(`${message}\n`);

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
const PRECISIONS = ['fp32', 'bf16'] as const;
type Precision = (typeof PRECISIONS)[number];

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

function withPrecision<T>(precision: Precision, fn: () => T): T {
  return precision === 'bf16' ? E.autocast(fn, { device: 'cpu', dtype: 'bfloat16' }) : fn();
}

interface Result {
  model: string;
  inputSize: number;
  batch: number;
  precision: Precision;
  /** Milliseconds per batch, median and fastest. */
  forwardMs: { median: number; best: number };
  trainStepMs: { median: number; best: number };
  /** Images per second at the fastest run. */
  forwardImgPerS: number;
  trainImgPerS: number;
}

function measure(c: Case, precision: Precision): Result {
  E.manualSeed(0);
  const model = createModel(c.model, { numClasses: 8, inputSize: c.inputSize });
  const groups = weightDecayGroups(model, 0.05);
  const optimizer = new E.AdamW([groups.decay, groups.noDecay], { lr: 1e-4 });
  const x = E.randn([c.batch, 3, c.inputSize, c.inputSize], { seed: 1 });
  const target = E.tensor(
    Array.from({ length: c.batch }, (_, i) => i % 8),
    [c.batch],
    { dtype: 'int64' },
  );
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

const started = performance.now();
const results: Result[] = [];
for (const c of CASES) for (const precision of PRECISIONS) results.push(measure(c, precision));
const info = E.libtorchInfo();
const cpu = E.cpuFeatures();
process.stdout.write(
  `${JSON.stringify({
    bench: 'model',
    quick,
    device: 'cpu',
    cpu: cpu.model,
    amx: cpu.amx,
    threads: E.numThreads(),
    torch: info.torchVersion,
    results,
    seconds: Math.round((performance.now() - started) / 100) / 10,
  })}\n`,
);
