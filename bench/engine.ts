// `npm run bench:engine [-- --quick] [-- --rounds N]`: hemato's engine side by side with @tensorflow/tfjs (CPU
// backend) and with PyTorch through Python on the same libtorch 1.13, at the same thread count; the block steps
// alternate between the two N times (default 5). bf16 is measured only where the CPU runs it natively (bench/cpu.ts).
// Progress goes to stderr; the last line on stdout is one JSON document.
import { execFileSync } from 'node:child_process';
import { loadavg } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { type BlockShape, convnextBlock, param, type Params } from './blocks.js';
import { cpu, cpuRecord, nativeBf16 } from './cpu.js';
import { debianPython, ensureTorch, peerEnv, peersDir } from './torch-peer.js';

const { F } = E;
const quick = process.argv.includes('--quick');
const threads = E.numThreads();
const log = (message: string) => process.stderr.write(`${message}\n`);

// Shapes. The ConvNeXt block is batch 8, 96 channels, 56×56; tfjs needs far smaller ones to finish.
const convnextShape: BlockShape = quick ? { batch: 4, channels: 96, size: 28 } : { batch: 8, channels: 96, size: 56 };
const swinShape: BlockShape = quick ? { batch: 4, channels: 96, size: 28, heads: 3, window: 7 } : { batch: 8, channels: 96, size: 56, heads: 3, window: 7 };
const tfjsBlockShape: BlockShape = quick ? { batch: 1, channels: 32, size: 14 } : { batch: 2, channels: 96, size: 28 };
const matmulSize = 1024;
const tfjsMatmulSize = quick ? 256 : 1024;
const conv = { input: [8, 64, 32, 32], weight: [64, 64, 3, 3] };
const tfjsConv = quick ? { input: [2, 64, 16, 16], weight: [64, 64, 3, 3] } : conv;
const warmup = 2;
const reps = quick ? 3 : 7;
/** Block steps alternate between hemato and PyTorch this many times; ratios are the medians of the rounds' ratios. */
const option = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const rounds = Number(option('--rounds') ?? (quick ? 3 : 5));
if (!(Number.isInteger(rounds) && rounds >= 1)) throw new RangeError(`--rounds must be a whole number of at least 1, got ${option('--rounds')}`);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function timed(fn: () => void, warm = warmup, count = reps): number {
  for (let i = 0; i < warm; i++) fn();
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    fn();
    times.push(performance.now() - start);
  }
  return median(times);
}

const gflops = (flop: number, ms: number) => flop / ms / 1e6;
const matmulFlop = (n: number) => 2 * n ** 3;
const convFlop = (c: { input: number[]; weight: number[] }) => 2 * c.input[0] * c.weight[0] * c.weight[1] * 9 * c.input[2] * c.input[3];

// ---- hemato blocks (the same ops, in the same order, as bench/peers/torch_engine.py)

function swinBlock(s: BlockShape): { params: Params; forward: () => E.Tensor; free: () => void } {
  const { channels: c, batch: b, size } = s;
  const heads = s.heads!;
  const ws = s.window!;
  const n = ws * ws;
  const g = size / ws;
  const p: Params = {
    n1w: param([c], 0, 1),
    n1b: param([c], 0),
    wqkv: param([3 * c, c], 0.05),
    bqkv: param([3 * c], 0),
    bias: param([1, heads, n, n], 0.02),
    wproj: param([c, c], 0.05),
    bproj: param([c], 0),
    n2w: param([c], 0, 1),
    n2b: param([c], 0),
    w1: param([4 * c, c], 0.05),
    b1: param([4 * c], 0),
    w2: param([c, 4 * c], 0.05),
    b2: param([c], 0),
  };
  const x = E.keep(E.randn([b, size * size, c]));
  const forward = () => {
    let y = F.layerNorm(x, [c], p.n1w, p.n1b);
    y = y.reshape([b, g, ws, g, ws, c]).permute([0, 1, 3, 2, 4, 5]).reshape([-1, n, c]);
    const qkv = F.linear(y, p.wqkv, p.bqkv)
      .reshape([-1, n, 3, heads, c / heads])
      .permute([2, 0, 3, 1, 4]);
    const [q, k, v] = [0, 1, 2].map((i) => qkv.select(0, i));
    y = F.scaledDotProductAttention(q, k, v, { attnMask: p.bias });
    y = F.linear(y.transpose(1, 2).reshape([-1, n, c]), p.wproj, p.bproj);
    y = y
      .reshape([b, g, g, ws, ws, c])
      .permute([0, 1, 3, 2, 4, 5])
      .reshape([b, size * size, c]);
    y = x.add(y);
    const z = F.linear(F.gelu(F.linear(F.layerNorm(y, [c], p.n2w, p.n2b), p.w1, p.b1)), p.w2, p.b2);
    return y.add(z).float().pow(2).mean();
  };
  return { params: p, forward, free: () => E.dispose([p, x]) };
}

function hematoStep(block: 'convnext' | 'swin', shape: BlockShape, bf16: boolean, count = reps): number {
  const { params, forward, free } = (block === 'convnext' ? convnextBlock : swinBlock)(shape);
  const optimizer = new E.AdamW(Object.values(params), { lr: 1e-4 });
  const ms = timed(
    () => {
      E.tidy(() => (bf16 ? E.autocast(forward) : forward()).backward());
      optimizer.step();
      optimizer.zeroGrad();
    },
    warmup,
    count,
  );
  optimizer.dispose();
  free();
  return ms;
}

// ---- tfjs (CPU backend, pure JS, one thread by construction): the ConvNeXt block in its native NHWC layout

async function loadTfjs(): Promise<typeof import('@tensorflow/tfjs') | undefined> {
  const quiet = console.log;
  console.log = () => {}; // tfjs greets Node users on stdout; the JSON line must stay last and alone
  try {
    const tf = await import('@tensorflow/tfjs');
    await tf.setBackend('cpu');
    await tf.ready();
    return tf;
  } catch (error) {
    log(`tfjs unavailable: ${(error as Error).message}`);
    return undefined;
  } finally {
    console.log = quiet;
  }
}

type Tf = typeof import('@tensorflow/tfjs');

function tfjsBlockStep(tf: Tf, s: BlockShape, count: number): number {
  const c = s.channels;
  const v = (shape: number[], scale: number, offset = 0) => tf.variable(tf.tidy(() => tf.randomNormal(shape).mul(scale).add(offset)));
  const p = {
    dw: v([7, 7, c, 1], 0.1),
    dwb: v([c], 0),
    nw: v([c], 0, 1),
    nb: v([c], 0),
    w1: v([c, 4 * c], 0.05),
    b1: v([4 * c], 0),
    w2: v([4 * c, c], 0.05),
    b2: v([c], 0),
    gamma: v([c], 0, 0.1),
  };
  const x = tf.randomNormal([s.batch, s.size, s.size, c]);
  const optimizer = tf.train.adam(1e-4); // tfjs has no AdamW; the update costs the same
  const loss = () =>
    tf.tidy(() => {
      let y = tf.depthwiseConv2d(x as import('@tensorflow/tfjs').Tensor4D, p.dw as import('@tensorflow/tfjs').Tensor4D, 1, 'same').add(p.dwb);
      const { mean, variance } = tf.moments(y, -1, true);
      y = y.sub(mean).div(variance.add(1e-6).sqrt()).mul(p.nw).add(p.nb);
      let h = y.reshape([-1, c]).matMul(p.w1).add(p.b1);
      h = h.mul(tf.erf(h.div(Math.SQRT2)).add(1)).mul(0.5); // exact GELU
      y = h.matMul(p.w2).add(p.b2).reshape(x.shape).mul(p.gamma);
      return x.add(y).square().mean() as import('@tensorflow/tfjs').Scalar;
    });
  const ms = timed(
    () => {
      const value = optimizer.minimize(loss, true, Object.values(p));
      value?.dataSync();
      value?.dispose();
    },
    1,
    count,
  );
  optimizer.dispose();
  tf.dispose([...Object.values(p), x]);
  return ms;
}

function tfjsMatmul(tf: Tf, n: number): number {
  const a = tf.randomNormal([n, n]);
  const b = tf.randomNormal([n, n]);
  const ms = timed(
    () =>
      tf.tidy(() => {
        tf.matMul(a, b).dataSync();
      }),
    1,
    quick ? 2 : 3,
  );
  tf.dispose([a, b]);
  return ms;
}

function tfjsConv2d(tf: Tf, spec: { input: number[]; weight: number[] }): number {
  const [n, ci, h, w] = spec.input;
  const [co] = spec.weight;
  const x = tf.randomNormal([n, h, w, ci]) as import('@tensorflow/tfjs').Tensor4D;
  const k = tf.randomNormal([3, 3, ci, co]) as import('@tensorflow/tfjs').Tensor4D;
  const ms = timed(
    () =>
      tf.tidy(() => {
        tf.conv2d(x, k, 1, 'same').dataSync();
      }),
    1,
    quick ? 2 : 3,
  );
  tf.dispose([x, k]);
  return ms;
}

// ---- PyTorch through Debian's python3 (the same libtorch 1.13)

interface TorchResult {
  version: string;
  threads: number;
  steps: Record<string, number>;
  matmul_ms: number;
  conv_ms: number;
  /** Measured only where calls were asked for. */
  call_us?: number;
}

/** The PyTorch peer: the block steps, unless stepsOnly also the GEMM and conv rates, and with calls > 0 the per-call overhead. */
function runTorch(steps: Record<string, { block: string; shape: BlockShape; bf16: boolean }>, calls: number, stepsOnly = false): TorchResult | string {
  const missing = ensureTorch(log);
  if (missing) return missing;
  const config = { threads, warmup, reps, steps, matmul: matmulSize, conv, calls, steps_only: stepsOnly };
  try {
    const out = execFileSync(debianPython, [path.join(peersDir, 'torch_engine.py'), JSON.stringify(config)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      env: peerEnv(E.libtorchInfo().openblasThreads),
      maxBuffer: 1 << 20,
    });
    return JSON.parse(out.trim().split('\n').pop()!) as TorchResult;
  } catch (error) {
    return `the PyTorch peer failed: ${(error as Error).message.split('\n')[0]}`;
  }
}

// ---- per-call overhead

/** Lets the event loop turn, so that the finalizer registrations of the tensors just dropped are cleaned up. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setTimeout(resolve, 10));
}

function callOverheadMicros(calls: number): number {
  const x = E.ones([1]);
  const y = E.ones([1]);
  let best = Infinity;
  for (let round = 0; round < 5; round++) {
    const start = performance.now();
    for (let i = 0; i < calls; i++) x.add(y).dispose();
    best = Math.min(best, ((performance.now() - start) / calls) * 1000);
  }
  E.dispose([x, y]);
  return best;
}

// ---- run

const round = (value: number, digits = 3) => Number(value.toPrecision(digits));

async function main(): Promise<void> {
  const started = performance.now();
  const loadAtStart = loadavg().map((l) => round(l));
  const info = E.libtorchInfo();
  log(
    `hemato bench:engine${quick ? ' --quick' : ''}: ${threads} threads, ${cpu.model}, AMX ${cpu.amx}, AVX-512-BF16 ${cpu.avx512bf16}, OpenBLAS core ${info.openblasCore || 'n/a'}`,
  );
  const calls = quick ? 20000 : 100000;

  // Matmul and conv rates.
  const a = E.keep(E.randn([matmulSize, matmulSize]));
  const b = E.keep(E.randn([matmulSize, matmulSize]));
  const matmulMs = timed(() =>
    E.tidy(() => {
      a.matmul(b);
    }),
  );
  const image = E.keep(E.randn(conv.input));
  const kernel = E.keep(E.randn(conv.weight));
  const convMs = timed(() =>
    E.tidy(() => {
      F.conv2d(image, kernel, undefined, { padding: 1 });
    }),
  );
  const matmulBf16Ms = nativeBf16
    ? timed(() =>
        E.tidy(() => {
          E.autocast(() => a.matmul(b));
        }),
      )
    : undefined;
  E.dispose([a, b, image, kernel]);
  const bf16Note = matmulBf16Ms === undefined ? 'bf16 not measured (emulated on this CPU)' : `${matmulBf16Ms.toFixed(1)} ms bf16`;
  log(`hemato matmul ${matmulSize}²: ${matmulMs.toFixed(1)} ms fp32, ${bf16Note}; conv2d: ${convMs.toFixed(1)} ms`);

  // Block steps.
  type Case = { block: 'convnext' | 'swin'; shape: BlockShape; bf16: boolean };
  const allCases: Record<string, Case> = {
    convnext_fp32: { block: 'convnext', shape: convnextShape, bf16: false },
    convnext_bf16: { block: 'convnext', shape: convnextShape, bf16: true },
    swin_fp32: { block: 'swin', shape: swinShape, bf16: false },
    swin_bf16: { block: 'swin', shape: swinShape, bf16: true },
    convnext_tfjs_shape: { block: 'convnext', shape: tfjsBlockShape, bf16: false },
  };
  const cases = Object.fromEntries(Object.entries(allCases).filter(([, spec]) => nativeBf16 || !spec.bf16));
  // Rounds alternate hemato and PyTorch, so that a slow spell of the machine falls on both sides.
  const ourRounds: Record<string, number>[] = [];
  const torchRounds: (TorchResult | string)[] = [];
  for (let r = 0; r < rounds; r++) {
    const ours: Record<string, number> = {};
    for (const [name, spec] of Object.entries(cases)) {
      ours[name] = hematoStep(spec.block, spec.shape, spec.bf16);
      log(`round ${r + 1}/${rounds}: hemato ${name} ${ours[name].toFixed(1)} ms`);
    }
    ourRounds.push(ours);
    torchRounds.push(runTorch(cases, 0, r > 0));
  }
  // The per-call rounds come after the steps: their hundreds of thousands of dropped tensors would otherwise slow the
  // next round's steps through the garbage collector.
  const ourCallRounds: number[] = [];
  const torchCallRounds: (number | null)[] = [];
  for (let r = 0; r < rounds; r++) {
    ourCallRounds.push(callOverheadMicros(calls));
    await settle();
    const peer = runTorch({}, calls, true);
    torchCallRounds.push(typeof peer === 'string' ? null : (peer.call_us ?? null));
    log(`round ${r + 1}/${rounds}: per call, hemato ${ourCallRounds[r].toFixed(2)} µs, PyTorch ${torchCallRounds[r]?.toFixed(2) ?? 'n/a'} µs`);
  }

  // tfjs.
  const tf = await loadTfjs();
  let tfjs: Record<string, number> | undefined;
  if (tf) {
    tfjs = {
      matmul_ms: tfjsMatmul(tf, tfjsMatmulSize),
      conv_ms: tfjsConv2d(tf, tfjsConv),
      block_ms: tfjsBlockStep(tf, tfjsBlockShape, quick ? 2 : 3),
    };
    log(`tfjs: matmul ${tfjsMatmulSize}² ${tfjs.matmul_ms.toFixed(0)} ms, conv ${tfjs.conv_ms.toFixed(0)} ms, block step ${tfjs.block_ms.toFixed(0)} ms`);
  }

  // PyTorch: every round measured its steps; the first also the matmul and conv rates.
  const failure = torchRounds.find((t): t is string => typeof t === 'string');
  if (failure) log(failure);
  const pt = failure ? undefined : (torchRounds[0] as TorchResult);
  const torchSteps = failure ? [] : (torchRounds as TorchResult[]).map((t) => t.steps);
  const ours = Object.fromEntries(Object.keys(cases).map((name) => [name, median(ourRounds.map((o) => o[name]))]));
  const ratiosByRound = (name: string) => ourRounds.map((o, r) => o[name] / torchSteps[r][name]);
  const ratio = (name: string) => (pt ? round(median(ratiosByRound(name))) : null);
  const torchCalls = torchCallRounds.filter((us): us is number => us !== null);
  const callRatiosByRound = torchCalls.length === rounds ? ourCallRounds.map((us, r) => us / torchCalls[r]) : [];
  const steps = Object.fromEntries(
    Object.keys(cases).map((name) => [
      name,
      {
        hemato_ms: round(ours[name], 4),
        pytorch_ms: pt ? round(median(torchSteps.map((t) => t[name])), 4) : null,
        ratio_vs_pytorch: ratio(name),
        ratios_by_round: pt ? ratiosByRound(name).map((r) => round(r)) : null,
      },
    ]),
  );
  const bf16Ratios = [ratio('convnext_bf16'), ratio('swin_bf16')].filter((r): r is number => r !== null);
  const result = {
    bench: 'engine',
    quick,
    threads,
    rounds,
    load_average: { start: loadAtStart, end: loadavg().map((l) => round(l)) },
    cpu: cpuRecord,
    openblas_core: info.openblasCore || null,
    openblas_threads: info.openblasThreads >= 0 ? info.openblasThreads : null,
    libtorch: info.torchVersion,
    pytorch: pt ? { version: pt.version, threads: pt.threads } : { error: failure },
    tfjs: tf ? { version: tf.version.tfjs, backend: tf.getBackend(), threads: 1 } : null,
    shapes: {
      convnext: convnextShape,
      swin: swinShape,
      tfjs_block: tfjsBlockShape,
      matmul: matmulSize,
      tfjs_matmul: tfjsMatmulSize,
      conv,
      tfjs_conv: tfjsConv,
    },
    gflops: {
      hemato_matmul: round(gflops(matmulFlop(matmulSize), matmulMs)),
      hemato_matmul_bf16: matmulBf16Ms === undefined ? null : round(gflops(matmulFlop(matmulSize), matmulBf16Ms)),
      hemato_conv2d: round(gflops(convFlop(conv), convMs)),
      pytorch_matmul: pt ? round(gflops(matmulFlop(matmulSize), pt.matmul_ms)) : null,
      pytorch_conv2d: pt ? round(gflops(convFlop(conv), pt.conv_ms)) : null,
      tfjs_matmul: tfjs ? round(gflops(matmulFlop(tfjsMatmulSize), tfjs.matmul_ms)) : null,
      tfjs_conv2d: tfjs ? round(gflops(convFlop(tfjsConv), tfjs.conv_ms)) : null,
    },
    steps,
    tfjs_block_ms: tfjs ? round(tfjs.block_ms, 4) : null,
    per_call_us: {
      hemato: round(median(ourCallRounds)),
      pytorch: callRatiosByRound.length ? round(median(torchCalls)) : null,
      ratios_by_round: callRatiosByRound.length ? callRatiosByRound.map((r) => round(r)) : null,
    },
    speedup_vs_tfjs: tfjs ? round(tfjs.block_ms / ours.convnext_tfjs_shape) : null,
    ratio_vs_pytorch: ratio('convnext_fp32'),
    ratio_vs_pytorch_bf16: bf16Ratios.length ? Math.max(...bf16Ratios) : null,
    bf16_speedup: nativeBf16 ? round(ours.swin_fp32 / ours.swin_bf16) : null,
    bf16_speedup_convnext: nativeBf16 ? round(ours.convnext_fp32 / ours.convnext_bf16) : null,
    per_call_ratio_vs_pytorch: callRatiosByRound.length ? round(median(callRatiosByRound)) : null,
    seconds: round((performance.now() - started) / 1000),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

await main();
