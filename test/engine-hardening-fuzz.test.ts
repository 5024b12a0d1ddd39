// Fuzzing: thousands of random invalid calls in one process. Each must throw a JS Error (never crash, never
// return a value), whose message matches the case's pattern where it has one, and the live-tensor count must
// stay bounded. A seeded PRNG makes every failure repeatable: the message names the seed, the iteration and the case.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { seededRandom } from '../src/data/augment.js';
import * as E from '../src/engine/index.js';
import { native } from '../src/engine/native.js';

const { F } = E;
type T = E.Tensor;

class Gen {
  constructor(readonly next: () => number) {}
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<V>(items: readonly V[]): V {
    return items[Math.floor(this.next() * items.length)];
  }
  shape(rank = this.int(1, 4), max = 5): number[] {
    return Array.from({ length: rank }, () => this.int(1, max));
  }
  float(shape: number[] = this.shape()): T {
    return E.randn(shape, { seed: this.int(0, 1e6) });
  }
  int64(values: number[]): T {
    return E.tensor(values, [values.length], { dtype: 'int64' });
  }
  /** A dim that is out of range for rank (either side). */
  badDim(rank: number): number {
    return this.next() < 0.5 ? rank + this.int(0, 3) : -rank - 1 - this.int(0, 3);
  }
  /** A size that differs from n and cannot broadcast against it. */
  other(n: number): number {
    const m = this.int(2, 7);
    return m === n ? m + 1 : m;
  }
}

type Run = (g: Gen) => unknown;
/** An invalid call, and the pattern its error message must match where hemato (not libtorch) words it. */
type Case = Run | { run: Run; message: RegExp };

const expect = (message: RegExp, run: Run): Case => ({ run, message });

const SIGNED_MINIMUM = { int32: -(2 ** 31), int64: -(2 ** 63) } as const;
type SignedType = keyof typeof SIGNED_MINIMUM;

/** A call that libtorch 1.13 refuses and 2.x accepts: an invalid call only before 2.0. */
function onlyBefore2(since2: string, run: () => unknown): unknown {
  if (!E.libtorchInfo().torchVersion.startsWith('1.')) throw new Error(`skipped: from libtorch 2.0, ${since2}`);
  return run();
}

/** A tensor holding the minimum of a signed integer type among small values. */
function atMinimum(g: Gen, dtype: SignedType): T {
  const values = [SIGNED_MINIMUM[dtype], g.int(-9, 9), g.int(-9, 9)];
  return dtype === 'int64' ? E.tensor(BigInt64Array.from(values, BigInt), [3]) : E.tensor(values, [3], { dtype });
}

// Every case makes an invalid call. They are grouped by the kind of mistake the issue lists.
const cases: Record<string, Case> = {
  // ---- shape mismatches
  'add: shapes that do not broadcast': (g) => {
    const s = g.shape(g.int(1, 3), 6).map((d) => Math.max(d, 2));
    const t = [...s];
    const i = g.int(0, s.length - 1);
    t[i] = g.other(s[i]);
    return g.pick(['add', 'sub', 'mul', 'div'] as const) === 'add' ? g.float(s).add(g.float(t)) : g.float(s).mul(g.float(t));
  },
  'matmul: inner dims differ': expect(/matmul: shapes .* do not fit/, (g) => {
    const k = g.int(1, 6);
    return g.float([g.int(1, 4), k]).matmul(g.float([g.other(k), g.int(1, 4)]));
  }),
  'mm through call(): inner dims differ (libtorch checks)': (g) => {
    const k = g.int(1, 6);
    return E.call('mm', '', g.float([3, k]), g.float([g.other(k), 2]));
  },
  'bmm: batch differs': expect(/bmm: shapes .* do not fit/, (g) => {
    const b = g.int(1, 4);
    return g.float([b, 2, 3]).bmm(g.float([g.other(b), 3, 2]));
  }),
  'conv2d: channels differ': expect(/conv2d: weight .* expects \d+ input channels/, (g) => {
    const c = g.int(1, 4);
    return F.conv2d(g.float([1, c, 6, 6]), g.float([2, g.other(c), 3, 3]));
  }),
  'conv2d through call(): channels differ': (g) => {
    const c = g.int(1, 4);
    return E.call('conv2d', '', g.float([1, c, 6, 6]), g.float([2, g.other(c), 3, 3]));
  },
  'conv2d: kernel larger than the padded input': (g) => F.conv2d(g.float([1, 2, 3, 3]), g.float([2, 2, g.int(4, 7), g.int(4, 7)])),
  'conv2d: groups do not divide channels': expect(/conv2d: groups=-?\d+ must divide/, (g) =>
    F.conv2d(g.float([1, 6, 5, 5]), g.float([6, 2, 3, 3]), undefined, { groups: g.pick([4, 5, 0, -1]) }),
  ),
  'linear: weight does not fit': expect(/linear: weight .* does not fit input/, (g) => {
    const k = g.int(1, 6);
    return F.linear(g.float([2, k]), g.float([3, g.other(k)]));
  }),
  'layerNorm: shape is not the tail': expect(/layerNorm: input .* does not end in/, (g) => {
    const k = g.int(2, 6);
    return F.layerNorm(g.float([2, k]), [g.other(k)]);
  }),
  'reshape/view: element count differs': (g) => {
    const s = g.shape(2, 5);
    const n = s[0] * s[1];
    return g.next() < 0.5 ? g.float(s).reshape([n + g.int(1, 3)]) : g.float(s).view([n + g.int(1, 3)]);
  },
  'expand: incompatible size': (g) => g.float([3]).expand([2, g.pick([2, 4, 5])]),
  'cat: shapes differ outside dim': expect(/cat: shapes .* differ outside dim 0/, (g) => E.cat([g.float([2, 3]), g.float([2, g.other(3)])], 0)),
  'cat through call(): shapes differ': (g) => E.call('cat', '', [g.float([2, 3]), g.float([2, g.other(3)])], 0),
  'stack: shapes differ': expect(/stack: shapes differ/, (g) => E.stack([g.float([2, 3]), g.float([g.other(2), 3])])),
  'split: sizes do not sum to the dim': expect(/split: sizes .* sum to \d+, dim 0 has 6/, (g) => g.float([6]).split([2, g.int(0, 3)])),
  'maskedFill: mask shape does not broadcast': (g) => g.float([3]).maskedFill(E.ones([g.other(3)], { dtype: 'bool' }), 0),
  'where: operands do not broadcast': (g) => E.where(E.ones([3], { dtype: 'bool' }), g.float([3]), g.float([g.other(3)])),
  'crossEntropy: target length differs': expect(/crossEntropy: target must be \[4\]/, (g) =>
    F.crossEntropy(g.float([4, 3]), g.int64([0, 1, 2].slice(0, g.int(1, 3)))),
  ),
  'attention: key and value lengths differ': (g) => F.scaledDotProductAttention(g.float([2, 3, 4]), g.float([2, 5, 4]), g.float([2, g.other(5), 4])),
  'backward: gradient shape differs': (g) => {
    const x = g.float([3]).requiresGrad_();
    return x.mul(2).backward(g.float([g.other(3)]));
  },
  'setGrad: gradient shape differs': (g) => {
    const p = g.float([3]).requiresGrad_();
    p.grad = g.float([g.other(3)]);
  },
  'batchNorm: running stats of the wrong size': (g) => F.batchNorm(g.float([4, 3]), E.zeros([g.other(3)]), E.ones([g.other(3)])),
  'copy_: source does not fit': expect(/copy_: source .* does not fit/, (g) => g.float([3]).copy_(g.float([g.other(3)]))),

  // ---- wrong dtypes
  'mm: int64 with float32': (g) => E.call('mm', '', E.ones([2, 2], { dtype: 'int64' }), g.float([2, 2])),
  'matmul: int with float': (g) => E.ones([2, 2], { dtype: g.pick(['int64', 'int32'] as const) }).matmul(g.float([2, 2])),
  'conv2d: input and weight dtypes differ': (g) => F.conv2d(g.float([1, 2, 5, 5]).to(g.pick(['float64', 'bfloat16'] as const)), g.float([2, 2, 3, 3])),
  'mean of an integer tensor': expect(/mean needs a floating-point tensor/, (g) =>
    E.ones([3], { dtype: g.pick(['int64', 'int32', 'uint8', 'bool'] as const) }).mean(),
  ),
  'softmax of an integer tensor': (g) => F.softmax(E.ones([3], { dtype: g.pick(['int64', 'int32'] as const) }), 0),
  'layerNorm of an integer tensor': () => F.layerNorm(E.ones([2, 3], { dtype: 'int64' }), [3]),
  'crossEntropy: float targets': expect(/target must be int64 class indices, got float32/, (g) => F.crossEntropy(g.float([2, 3]), E.zeros([2]))),
  'indexSelect: float index': expect(/indexSelect: index must be int64 or int32/, (g) => g.float([4]).indexSelect(0, E.zeros([2]))),
  'gather through call(): int32 index': (g) =>
    onlyBefore2('gather takes int32 indices', () => E.call('gather', '', g.float([4]), 0, E.zeros([2], { dtype: 'int32' }))),
  'maskedFill: non-bool mask': expect(/maskedFill: mask must be bool/, (g) =>
    g.float([3]).maskedFill(E.ones([3], { dtype: g.pick(['uint8', 'float32', 'int64'] as const) }), 0),
  ),
  'where through call(): float condition': (g) => E.call('where', 'self', g.float([3]), g.float([3]), g.float([3])),
  'tensor(): typed array of the wrong kind': expect(/a Float32Array cannot hold/, (g) =>
    E.tensor(new Float32Array(4), [4], { dtype: g.pick(['int32', 'int64', 'float64', 'uint8'] as const) }),
  ),
  'tensor(): value out of the integer range': expect(/cannot be converted to uint8/, (g) =>
    E.tensor([g.pick([NaN, Infinity, 256, -1])], [1], { dtype: 'uint8' }),
  ),
  'setGrad: gradient dtype differs': (g) => {
    const p = g.float([3]).requiresGrad_();
    p.grad = E.zeros([3], { dtype: g.pick(['float64', 'int64', 'bfloat16'] as const) });
  },
  'unknown dtype': expect(/unknown dtype/, (g) => E.zeros([2], { dtype: g.pick(['complex64', 'float8', 'int16', ''] as const) as E.DType })),
  'autocast: a dtype the CPU autocast does not take': (g) =>
    onlyBefore2('CPU autocast takes float16', () => E.autocast(() => g.float([2, 2]).matmul(g.float([2, 2])), { dtype: 'float16' })),
  'call(): string where an integer list belongs': (g) => E.call('sum', 'dim_IntList', g.float([2, 2]), ['0'], false),
  'call(): number where a tensor belongs': () => E.call('add', 'Tensor', 1, 2),

  // ---- out-of-range dims and indices
  'sum over an out-of-range dim': expect(/dim -?\d+ is out of range for a tensor of rank \d/, (g) => {
    const t = g.float();
    return t.sum(g.badDim(t.ndim));
  }),
  'transpose with an out-of-range dim': expect(/dim -?\d+ is out of range/, (g) => {
    const t = g.float();
    return t.transpose(0, g.badDim(t.ndim));
  }),
  'softmax over an out-of-range dim': expect(/dim -?\d+ is out of range/, (g) => {
    const t = g.float();
    return F.softmax(t, g.badDim(t.ndim));
  }),
  'unsqueeze at an out-of-range dim': expect(/dim \d+ is out of range/, (g) => {
    const t = g.float();
    return t.unsqueeze(t.ndim + 1 + g.int(0, 2));
  }),
  'flatten with an out-of-range dim': expect(/dim -?\d+ is out of range/, (g) => {
    const t = g.float();
    return t.flatten(0, g.badDim(t.ndim));
  }),
  'size() of an out-of-range dim': expect(/dim -?\d+ is out of range/, (g) => {
    const t = g.float();
    return t.size(g.badDim(t.ndim));
  }),
  'permute with a repeated dim': expect(/permute: repeated dim/, (g) => g.float([2, 3, 4]).permute([0, 1, g.pick([0, 1])])),
  'sum through call(): out-of-range dim': (g) => E.call('sum', 'dim_IntList', g.float([2, 2]), [g.badDim(2)], false),
  'select: index out of range': expect(/select: index -?\d+ is out of range/, (g) => {
    const n = g.int(1, 5);
    return g.float([n, 2]).select(0, g.next() < 0.5 ? n + g.int(0, 3) : -n - 1);
  }),
  'narrow: window outside the dim': expect(/narrow: .* is outside dim 0/, (g) => {
    const n = g.int(1, 5);
    return g.float([n]).narrow(0, g.int(0, n), n + 1);
  }),
  'indexSelect: index out of range': expect(/indexSelect: index values span/, (g) => {
    const n = g.int(1, 5);
    return g.float([n]).indexSelect(0, g.int64([0, n + g.int(0, 3)]));
  }),
  'gather: index out of range': expect(/gather: index values span/, (g) => {
    const n = g.int(1, 5);
    return g.float([n]).gather(0, g.int64([-n - 1 - g.int(0, 3)]));
  }),
  'index_select through call(): index out of range (libtorch checks)': (g) => {
    const n = g.int(1, 5);
    return E.call('index_select', '', g.float([n]), 0, g.int64([n + g.int(0, 3)]));
  },
  'gather through call(): index out of range (libtorch checks)': (g) => {
    const n = g.int(1, 5);
    return E.call('gather', '', g.float([n]), 0, g.int64([n + g.int(0, 3)]));
  },
  'embedding through call(): index out of range': (g) => {
    const n = g.int(1, 5);
    return E.call('embedding', '', g.float([n, 2]), g.int64([n + g.int(0, 3)]));
  },
  'index through call(): index out of range': (g) => {
    const n = g.int(1, 5);
    return E.call('index', 'Tensor', g.float([n]), [g.int64([n + g.int(0, 3)])]);
  },
  'scatter through call(): index out of range': (g) => {
    const n = g.int(1, 5);
    return E.call('scatter', 'value', g.float([n]), 0, g.int64([n + g.int(0, 3)]), 1);
  },
  'crossEntropy: class out of range': expect(/outside the \d+ classes/, (g) => {
    const c = g.int(2, 5);
    return F.crossEntropy(g.float([2, c]), g.int64([0, c + g.int(0, 3)]));
  }),
  'nllLoss: class out of range': (g) => {
    const c = g.int(2, 5);
    return F.nllLoss(g.float([2, c]), g.int64([0, g.pick([c, -1, -7])]));
  },
  'topk: k larger than the dim': expect(/topk: k=\d+ is out of range/, (g) => {
    const n = g.int(1, 5);
    return g.float([n]).topk(n + g.int(1, 3));
  }),
  'item() of a tensor with several elements': expect(/item\(\) needs a tensor with one element/, (g) => g.float([g.int(2, 5)]).item()),

  // ---- disposed tensors
  'a method on a disposed tensor': expect(/this tensor was disposed/, (g) => {
    const t = g.float();
    t.dispose();
    const use = g.pick([() => t.add(1), () => t.shape, () => t.data(), () => t.sum(), () => t.matmul(t), () => t.clone(), () => t.requiresGrad_()]);
    return use();
  }),
  'a disposed tensor as an argument': expect(/this tensor was disposed/, (g) => {
    const t = g.float([3]);
    const u = g.float([3]);
    u.dispose();
    return g.pick([() => t.add(u), () => E.cat([t, u]), () => F.linear(t, u), () => E.call('mul', 'Tensor', t, u)])();
  }),
  'a disposed native handle passed straight to the addon': (g) => {
    const t = g.float([3]);
    const handle = t.handle;
    t.dispose();
    return g.pick([
      () => native.meta(handle),
      () => native.toBuffer(handle),
      () => native.callOp(E.findOp('relu')!, 1, handle),
      () => native.backward(handle, undefined, false),
    ])();
  },
  'backward through a freed graph': (g) => {
    const x = g.float([3]).requiresGrad_();
    const y = x.exp().sum();
    y.backward();
    return y.backward();
  },

  // ---- devices: CUDA cannot be made on a CPU-only build; 'meta' tensors can, and do not mix with CPU ones
  'a CUDA tensor on a machine without CUDA': (g) => {
    if (E.cudaAvailable()) throw new Error('skipped: CUDA is present');
    const device = g.pick(['cuda', 'cuda:0', 'cuda:1'] as const);
    return g.pick([
      () => E.zeros([2], { device }),
      () => g.float([2]).to(device),
      () => E.randn([2], { device, seed: 1 }),
      () => E.resolveDevice(device),
      () => E.tensor([1, 2], [2], { device }),
    ])();
  },
  'an invalid device string': (g) => E.zeros([2], { device: g.pick(['tpu', 'cuda:x', 'gpu', 'cpu:-5x']) as E.Device }),
  'CPU and meta tensors in one op': (g) => {
    const meta = E.zeros([3], { device: 'meta' as E.Device });
    return g.pick([
      () => g.float([3]).add(meta),
      () => g.float([3]).mul(meta),
      () => E.where(E.ones([3], { dtype: 'bool' }), g.float([3]), meta),
      () => meta.data(),
    ])();
  },
  'setGrad: gradient on another device': (g) => {
    const p = g.float([3]).requiresGrad_();
    p.grad = E.zeros([3], { device: 'meta' as E.Device });
  },

  // ---- empty tensors
  'max/min of an empty tensor': (g) => {
    const t = E.zeros([0, g.int(1, 3)]);
    return g.pick([() => t.max(), () => t.min(), () => t.amax(), () => t.argmax()])();
  },
  'reduce an empty dim': (g) => E.zeros([0, 3]).min(0),
  'item() of an empty tensor': () => E.zeros([0]).item(),
  'select from an empty dim': () => E.zeros([0, 3]).select(0, 0),
  'reshape an empty tensor with an inferred dim': () => E.zeros([0, 3]).reshape([-1, 0]),
  'backward of an empty tensor': () =>
    E.zeros([0])
      .requiresGrad_()
      .sum()
      .mul(E.zeros([0]))
      .backward(),
  'pool or resize an empty image': (g) => g.pick([() => F.maxPool2d(E.zeros([1, 1, 0, 4]), 2), () => F.interpolate(E.zeros([1, 1, 0, 4]), { size: [2, 2] })])(),
  'cat or stack of nothing': expect(/needs at least one tensor/, (g) => (g.next() < 0.5 ? E.cat([]) : E.stack([]))),
  'batchNorm training on an empty batch': () => F.batchNorm(E.zeros([0, 3]), E.zeros([3]), E.ones([3]), undefined, undefined, { training: true }),

  // ---- invalid arguments and creation
  'negative or fractional shape': expect(/must hold non-negative integers/, (g) => E.zeros([2, g.pick([-1, 1.5, NaN])])),
  'a shape too large to allocate': (g) => E.zeros(g.pick([[2 ** 40, 2 ** 40], [2 ** 62], [1e300]])),
  'values that do not fill the shape': expect(/do not fill shape/, (g) => E.tensor([1, 2, 3], [g.int(4, 6)])),
  'arange with a zero step or an infinite bound': (g) => g.pick([() => E.arange(0, 5, 0), () => E.arange(0, Infinity), () => E.arange(0, NaN)])(),
  'randint with an empty range': (g) => E.randint(5, g.int(0, 5), [3]),
  'a bad seed': expect(/seed must be a non-negative integer/, (g) => E.rand([2], { seed: g.pick([-1, 0.5, NaN, 2 ** 60]) })),
  'conv2d: non-positive stride or dilation, negative padding': (g) =>
    F.conv2d(g.float([1, 1, 6, 6]), g.float([1, 1, 3, 3]), undefined, g.pick([{ stride: 0 }, { stride: -1 }, { dilation: 0 }, { padding: -1 }])),
  'pooling: non-positive kernel or stride': (g) => g.pick([() => F.maxPool2d(g.float([1, 1, 6, 6]), 0), () => F.avgPool2d(g.float([1, 1, 6, 6]), 2, -1)])(),
  'reflect padding as large as the input': expect(/reflect padding 4 must be smaller/, (g) => F.pad(g.float([1, 1, 4, 4]), [4, 4, 0, 0], 'reflect')),
  'dropout with p outside [0, 1]': expect(/dropout: p must be in \[0, 1\]/, (g) => F.dropout(g.float([3]), g.pick([-0.1, 1.5, NaN]), true)),
  'labelSmoothing outside [0, 1]': expect(/labelSmoothing must be in \[0, 1\]/, (g) =>
    F.crossEntropy(g.float([2, 3]), g.int64([0, 1]), { labelSmoothing: g.pick([-0.1, 2]) }),
  ),
  'an in-place op on a leaf that requires grad': (g) => g.float([3]).requiresGrad_().add_(1),
  'backward of a tensor that does not require grad': (g) => g.float([3]).sum().backward(),
  'backward of a non-scalar without a gradient': expect(/needs a scalar/, (g) => g.float([3]).requiresGrad_().mul(2).backward()),
  'an operator this libtorch lacks': expect(/this libtorch has no operator/, (g) => E.call(g.pick(['no_such_op', 'conv7d', '']), '')),
  'too many arguments': (g) => E.call('relu', '', g.float([2]), 1, 2),
  'a missing required argument': () => E.call('add', 'Tensor'),
  'setNumThreads with a non-positive count': expect(/setNumThreads must be a positive integer in 1\.\.\d+/, (g) => E.setNumThreads(g.pick([0, -1, 1.5]))),
  'setNumThreads above 4 threads per core': expect(/setNumThreads must be a positive integer in 1\.\.\d+ .*got \d+/, (g) =>
    E.setNumThreads(E.maxThreads() + g.pick([1, 99999, 1e9])),
  ),

  // ---- integer overflow: the minimum of a signed type divided by -1 would trap (SIGFPE) in the CPU kernel
  'integer quotient of the minimum by -1': expect(/dividing the int(32|64) minimum by -1 overflows int(32|64)/, (g) => {
    const dtype = g.pick(['int32', 'int64'] as const);
    const dividend = atMinimum(g, dtype);
    const divisor = g.pick([-1, E.tensor([-1], [1], { dtype }), E.tensor([-1], [], { dtype: 'int64' }), E.tensor([-1, 2, 3], [3], { dtype })]);
    return g.pick([
      () => E.call('floor_divide', divisor instanceof E.Tensor ? '' : 'Scalar', dividend, divisor),
      () => E.call('div', divisor instanceof E.Tensor ? 'Tensor_mode' : 'Scalar_mode', dividend, divisor, g.pick(['trunc', 'floor'])),
      () => E.call('div_', divisor instanceof E.Tensor ? 'Tensor_mode' : 'Scalar_mode', dividend, divisor, g.pick(['trunc', 'floor'])),
      () => E.call('floor_divide_', divisor instanceof E.Tensor ? 'Tensor' : 'Scalar', dividend, divisor),
    ])();
  }),
};

function parts(c: Case): { run: Run; message?: RegExp } {
  return typeof c === 'function' ? { run: c } : c;
}

const ITERATIONS = 1500;
const SEED = Number(process.env.HEMATO_FUZZ_SEED ?? 20261126);

test(`${ITERATIONS} random invalid calls each throw a JS Error, and the live-tensor count stays bounded (seed ${SEED})`, () => {
  const names = Object.keys(cases);
  const g = new Gen(seededRandom(SEED));
  const threadsBefore = E.numThreads();
  const baseline = E.liveTensors();
  let peak = baseline;
  const failures: string[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < ITERATIONS; i++) {
    const name = names[i < names.length ? i : g.int(0, names.length - 1)]; // every case at least once
    seen.add(name);
    const { run, message } = parts(cases[name]);
    let outcome: unknown;
    let threw = false;
    try {
      outcome = E.tidy(() => {
        const value = run(g);
        // Report what came back without keeping it: a returned tensor would outlive the scope otherwise.
        return value instanceof E.Tensor ? `a tensor ${value.toString()}` : value;
      });
    } catch (error) {
      threw = true;
      if (!(error instanceof Error)) failures.push(`#${i} ${name}: threw a non-Error ${String(error)}`);
      else if (error.message.startsWith('skipped:')) continue;
      else if (message && !message.test(error.message)) failures.push(`#${i} ${name}: message '${error.message}' does not match ${message}`);
    }
    if (!threw) failures.push(`#${i} ${name}: returned ${String(outcome)} instead of throwing`);
    E.dispose(outcome);
    peak = Math.max(peak, E.liveTensors());
    assert.equal(E.isAutocastEnabled(), false, `#${i} ${name}: autocast left on`);
    assert.equal(E.isGradEnabled(), true, `#${i} ${name}: grad mode left off`);
  }
  assert.deepEqual(failures, [], `seed ${SEED}: ${failures.length} calls did not throw a JS Error`);
  assert.equal(seen.size, names.length);
  assert.equal(E.numThreads(), threadsBefore);
  // Every call ran in a scope, so nothing may survive it; the peak is allowed a handful for in-flight scopes.
  assert.equal(E.liveTensors(), baseline, 'tensors leaked across the fuzz run');
  assert.ok(peak - baseline < 64, `live tensors peaked at ${peak - baseline} above the baseline`);
});

/** Floor division and Python's remainder (the sign of the divisor), in exact integers. */
function floorDivide(a: bigint, b: bigint): bigint {
  return a / b - (a % b !== 0n && a < 0n !== b < 0n ? 1n : 0n);
}
function remainder(a: bigint, b: bigint): bigint {
  const r = a % b;
  return r !== 0n && r < 0n !== b < 0n ? r + b : r;
}

test('integer remainders by -1 are 0, and divisions near the integer minimum still compute', () => {
  E.tidy(() => {
    for (const dtype of ['int32', 'int64'] as const) {
      const minimum = BigInt(SIGNED_MINIMUM[dtype]);
      // The minimum's neighbour must be exact in a JS number: int64 values near -2^63 are 2048 apart there.
      const values = [minimum, minimum + (dtype === 'int64' ? 2048n : 1n), -7n, 0n, 7n];
      const t = dtype === 'int64' ? E.tensor(BigInt64Array.from(values), [5]) : E.tensor(values.map(Number), [5], { dtype });
      const minusOne = E.full([5], -1, { dtype });
      for (const [name, divisor] of [
        ['remainder', -1],
        ['remainder', minusOne],
        ['fmod', -1],
        ['fmod', minusOne],
      ] as const) {
        const result = E.call<E.Tensor>(name, divisor instanceof E.Tensor ? 'Tensor' : 'Scalar', t, divisor);
        assert.equal(result.dtype, dtype);
        assert.deepEqual(result.toArray(), [0, 0, 0, 0, 0], `${dtype} ${name} by -1`);
      }
      // A JS number reaches libtorch as an integer only up to 2^53, so only the int32 minimum can be a scalar dividend.
      if (dtype === 'int32') assert.deepEqual(E.call<E.Tensor>('remainder', 'Scalar_Tensor', Number(minimum), minusOne).toArray(), [0, 0, 0, 0, 0]);
      // Only the minimum with the divisor -1 overflows: its neighbour and other divisors divide as usual.
      const divisors = [2n, -1n, -1n, -1n, -4n];
      const divisorTensor = E.tensor(divisors.map(Number), [5], { dtype });
      const expected = (f: (a: bigint, b: bigint) => bigint) => values.map((v, i) => Number(f(v, divisors[i])));
      assert.deepEqual(E.call<E.Tensor>('floor_divide', '', t, divisorTensor).toArray(), expected(floorDivide));
      assert.deepEqual(E.call<E.Tensor>('div', 'Tensor_mode', t, divisorTensor, 'floor').toArray(), expected(floorDivide));
      assert.deepEqual(
        E.call<E.Tensor>('div', 'Tensor_mode', t, divisorTensor, 'trunc').toArray(),
        expected((a, b) => a / b),
      );
      assert.deepEqual(t.remainder(divisorTensor).toArray(), expected(remainder));
      // A wider divisor widens the division, and in int64 the int32 minimum has a quotient.
      if (dtype === 'int32')
        assert.deepEqual(
          E.call<E.Tensor>('floor_divide', '', t, E.full([5], -1, { dtype: 'int64' })).toArray(),
          values.map((v) => Number(-v)),
        );
      // True division computes in floating point, and floating-point tensors are never checked.
      assert.deepEqual(
        t.div(-1).toArray(),
        values.map((v) => Math.fround(-Number(v))),
      );
      assert.deepEqual(
        E.tensor([Number(minimum), 5], [2])
          .remainder(-1)
          .toArray(),
        [-0, 0],
      );
    }
  });
});

test('int8 and int16, which hemato does not name, are checked the same way', () => {
  E.tidy(() => {
    for (const [code, minimum] of [
      [1, -128],
      [2, -32768],
    ] as const) {
      const t = E.call<E.Tensor>('to', 'dtype', E.tensor([minimum, 5], [2], { dtype: 'int32' }), code);
      assert.throws(() => E.call('floor_divide', 'Scalar', t, -1), { name: 'RangeError', message: new RegExp(`int${code * 8} minimum by -1 overflows`) });
      assert.throws(() => E.call('div', 'Scalar_mode', t, -1, 'trunc'), RangeError);
      const asInt32 = (x: E.Tensor) => E.call<E.Tensor>('to', 'dtype', x, 3).toArray();
      assert.deepEqual(asInt32(E.call('remainder', 'Scalar', t, -1)), [0, 0]);
      assert.deepEqual(asInt32(E.call('floor_divide', 'Scalar', t, 2)), [minimum / 2, 2]);
    }
  });
});
