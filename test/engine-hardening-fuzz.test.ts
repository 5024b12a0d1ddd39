// Fuzzing: thousands of random invalid calls in one process. Each must throw a JS Error (never crash, never
// return a value), and the live-tensor count must stay bounded. A seeded PRNG makes every failure repeatable:
// the message names the seed, the iteration and the case.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { seededRandom } from '../src/data/augment.js';
import * as E from '../src/engine/index.js';
import { native } from '../src/engine/native.js';

const { F } = E;
type T = E.Tensor;

class Gen {
  constructor(readonly next: () => number) {}
  int(lo: number, hi: number): number { return lo + Math.floor(this.next() * (hi - lo + 1)); }
  pick<V>(items: readonly V[]): V { return items[Math.floor(this.next() * items.length)]; }
  shape(rank = this.int(1, 4), max = 5): number[] { return Array.from({ length: rank }, () => this.int(1, max)); }
  float(shape: number[] = this.shape()): T { return E.randn(shape, { seed: this.int(0, 1e6) }); }
  int64(values: number[]): T { return E.tensor(values, [values.length], { dtype: 'int64' }); }
  /** A dim that is out of range for rank (either side). */
  badDim(rank: number): number { return this.next() < 0.5 ? rank + this.int(0, 3) : -rank - 1 - this.int(0, 3); }
  /** A size that differs from n and cannot broadcast against it. */
  other(n: number): number { const m = this.int(2, 7); return m === n ? m + 1 : m; }
}

type Case = (g: Gen) => unknown;

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
  'matmul: inner dims differ': (g) => { const k = g.int(1, 6); return g.float([g.int(1, 4), k]).matmul(g.float([g.other(k), g.int(1, 4)])); },
  'mm through call(): inner dims differ (libtorch checks)': (g) => { const k = g.int(1, 6); return E.call('mm', '', g.float([3, k]), g.float([g.other(k), 2])); },
  'bmm: batch differs': (g) => { const b = g.int(1, 4); return g.float([b, 2, 3]).bmm(g.float([g.other(b), 3, 2])); },
  'conv2d: channels differ': (g) => { const c = g.int(1, 4); return F.conv2d(g.float([1, c, 6, 6]), g.float([2, g.other(c), 3, 3])); },
  'conv2d through call(): channels differ': (g) => { const c = g.int(1, 4); return E.call('conv2d', '', g.float([1, c, 6, 6]), g.float([2, g.other(c), 3, 3])); },
  'conv2d: kernel larger than the padded input': (g) => F.conv2d(g.float([1, 2, 3, 3]), g.float([2, 2, g.int(4, 7), g.int(4, 7)])),
  'conv2d: groups do not divide channels': (g) => F.conv2d(g.float([1, 6, 5, 5]), g.float([6, 2, 3, 3]), undefined, { groups: g.pick([4, 5, 0, -1]) }),
  'linear: weight does not fit': (g) => { const k = g.int(1, 6); return F.linear(g.float([2, k]), g.float([3, g.other(k)])); },
  'layerNorm: shape is not the tail': (g) => { const k = g.int(2, 6); return F.layerNorm(g.float([2, k]), [g.other(k)]); },
  'reshape/view: element count differs': (g) => {
    const s = g.shape(2, 5);
    const n = s[0] * s[1];
    return g.next() < 0.5 ? g.float(s).reshape([n + g.int(1, 3)]) : g.float(s).view([n + g.int(1, 3)]);
  },
  'expand: incompatible size': (g) => g.float([3]).expand([2, g.pick([2, 4, 5])]),
  'cat: shapes differ outside dim': (g) => E.cat([g.float([2, 3]), g.float([2, g.other(3)])], 0),
  'cat through call(): shapes differ': (g) => E.call('cat', '', [g.float([2, 3]), g.float([2, g.other(3)])], 0),
  'stack: shapes differ': (g) => E.stack([g.float([2, 3]), g.float([g.other(2), 3])]),
  'split: sizes do not sum to the dim': (g) => g.float([6]).split([2, g.int(0, 3)]),
  'maskedFill: mask shape does not broadcast': (g) => g.float([3]).maskedFill(E.ones([g.other(3)], { dtype: 'bool' }), 0),
  'where: operands do not broadcast': (g) => E.where(E.ones([3], { dtype: 'bool' }), g.float([3]), g.float([g.other(3)])),
  'crossEntropy: target length differs': (g) => F.crossEntropy(g.float([4, 3]), g.int64([0, 1, 2].slice(0, g.int(1, 3)))),
  'attention: key and value lengths differ': (g) => F.scaledDotProductAttention(g.float([2, 3, 4]), g.float([2, 5, 4]), g.float([2, g.other(5), 4])),
  'backward: gradient shape differs': (g) => {
    const x = g.float([3]).requiresGrad_();
    return x.mul(2).backward(g.float([g.other(3)]));
  },
  'setGrad: gradient shape differs': (g) => { const p = g.float([3]).requiresGrad_(); p.grad = g.float([g.other(3)]); },
  'batchNorm: running stats of the wrong size': (g) => F.batchNorm(g.float([4, 3]), E.zeros([g.other(3)]), E.ones([g.other(3)])),
  'copy_: source does not fit': (g) => g.float([3]).copy_(g.float([g.other(3)])),

  // ---- wrong dtypes
  'mm: int64 with float32': (g) => E.call('mm', '', E.ones([2, 2], { dtype: 'int64' }), g.float([2, 2])),
  'matmul: int with float': (g) => E.ones([2, 2], { dtype: g.pick(['int64', 'int32'] as const) }).matmul(g.float([2, 2])),
  'conv2d: input and weight dtypes differ': (g) => F.conv2d(g.float([1, 2, 5, 5]).to(g.pick(['float64', 'bfloat16'] as const)), g.float([2, 2, 3, 3])),
  'mean of an integer tensor': (g) => E.ones([3], { dtype: g.pick(['int64', 'int32', 'uint8', 'bool'] as const) }).mean(),
  'softmax of an integer tensor': (g) => F.softmax(E.ones([3], { dtype: g.pick(['int64', 'int32'] as const) }), 0),
  'layerNorm of an integer tensor': () => F.layerNorm(E.ones([2, 3], { dtype: 'int64' }), [3]),
  'crossEntropy: float targets': (g) => F.crossEntropy(g.float([2, 3]), E.zeros([2])),
  'indexSelect: float index': (g) => g.float([4]).indexSelect(0, E.zeros([2])),
  'gather through call(): int32 index': (g) => E.call('gather', '', g.float([4]), 0, E.zeros([2], { dtype: 'int32' })),
  'maskedFill: non-bool mask': (g) => g.float([3]).maskedFill(E.ones([3], { dtype: g.pick(['uint8', 'float32', 'int64'] as const) }), 0),
  'where through call(): float condition': (g) => E.call('where', 'self', g.float([3]), g.float([3]), g.float([3])),
  'tensor(): typed array of the wrong kind': (g) => E.tensor(new Float32Array(4), [4], { dtype: g.pick(['int32', 'int64', 'float64', 'uint8'] as const) }),
  'tensor(): value out of the integer range': (g) => E.tensor([g.pick([NaN, Infinity, 256, -1])], [1], { dtype: 'uint8' }),
  'setGrad: gradient dtype differs': (g) => { const p = g.float([3]).requiresGrad_(); p.grad = E.zeros([3], { dtype: g.pick(['float64', 'int64', 'bfloat16'] as const) }); },
  'unknown dtype': (g) => E.zeros([2], { dtype: g.pick(['complex64', 'float8', 'int16', ''] as const) as E.DType }),
  'autocast: a dtype the CPU autocast does not take': (g) => E.autocast(() => g.float([2, 2]).matmul(g.float([2, 2])), { dtype: 'float16' }),
  'call(): string where an integer list belongs': (g) => E.call('sum', 'dim_IntList', g.float([2, 2]), ['0'], false),
  'call(): number where a tensor belongs': () => E.call('add', 'Tensor', 1, 2),

  // ---- out-of-range dims and indices
  'sum over an out-of-range dim': (g) => { const t = g.float(); return t.sum(g.badDim(t.ndim)); },
  'transpose with an out-of-range dim': (g) => { const t = g.float(); return t.transpose(0, g.badDim(t.ndim)); },
  'softmax over an out-of-range dim': (g) => { const t = g.float(); return F.softmax(t, g.badDim(t.ndim)); },
  'unsqueeze at an out-of-range dim': (g) => { const t = g.float(); return t.unsqueeze(t.ndim + 1 + g.int(0, 2)); },
  'flatten with an out-of-range dim': (g) => { const t = g.float(); return t.flatten(0, g.badDim(t.ndim)); },
  'size() of an out-of-range dim': (g) => { const t = g.float(); return t.size(g.badDim(t.ndim)); },
  'permute with a repeated dim': (g) => g.float([2, 3, 4]).permute([0, 1, g.pick([0, 1])]),
  'sum through call(): out-of-range dim': (g) => E.call('sum', 'dim_IntList', g.float([2, 2]), [g.badDim(2)], false),
  'select: index out of range': (g) => { const n = g.int(1, 5); return g.float([n, 2]).select(0, g.next() < 0.5 ? n + g.int(0, 3) : -n - 1); },
  'narrow: window outside the dim': (g) => { const n = g.int(1, 5); return g.float([n]).narrow(0, g.int(0, n), n + 1); },
  'indexSelect: index out of range': (g) => { const n = g.int(1, 5); return g.float([n]).indexSelect(0, g.int64([0, n + g.int(0, 3)])); },
  'gather: index out of range': (g) => { const n = g.int(1, 5); return g.float([n]).gather(0, g.int64([-n - 1 - g.int(0, 3)])); },
  'index_select through call(): index out of range (libtorch checks)': (g) => { const n = g.int(1, 5); return E.call('index_select', '', g.float([n]), 0, g.int64([n + g.int(0, 3)])); },
  'gather through call(): index out of range (libtorch checks)': (g) => { const n = g.int(1, 5); return E.call('gather', '', g.float([n]), 0, g.int64([n + g.int(0, 3)])); },
  'embedding through call(): index out of range': (g) => { const n = g.int(1, 5); return E.call('embedding', '', g.float([n, 2]), g.int64([n + g.int(0, 3)])); },
  'index through call(): index out of range': (g) => { const n = g.int(1, 5); return E.call('index', 'Tensor', g.float([n]), [g.int64([n + g.int(0, 3)])]); },
  'scatter through call(): index out of range': (g) => { const n = g.int(1, 5); return E.call('scatter', 'value', g.float([n]), 0, g.int64([n + g.int(0, 3)]), 1); },
  'crossEntropy: class out of range': (g) => { const c = g.int(2, 5); return F.crossEntropy(g.float([2, c]), g.int64([0, c + g.int(0, 3)])); },
  'nllLoss: class out of range': (g) => { const c = g.int(2, 5); return F.nllLoss(g.float([2, c]), g.int64([0, g.pick([c, -1, -7])])); },
  'topk: k larger than the dim': (g) => { const n = g.int(1, 5); return g.float([n]).topk(n + g.int(1, 3)); },
  'item() of a tensor with several elements': (g) => g.float([g.int(2, 5)]).item(),

  // ---- disposed tensors
  'a method on a disposed tensor': (g) => {
    const t = g.float();
    t.dispose();
    const use = g.pick([() => t.add(1), () => t.shape, () => t.data(), () => t.sum(), () => t.matmul(t), () => t.clone(), () => t.requiresGrad_()]);
    return use();
  },
  'a disposed tensor as an argument': (g) => {
    const t = g.float([3]);
    const u = g.float([3]);
    u.dispose();
    return g.pick([() => t.add(u), () => E.cat([t, u]), () => F.linear(t, u), () => E.call('mul', 'Tensor', t, u)])();
  },
  'a disposed native handle passed straight to the addon': (g) => {
    const t = g.float([3]);
    const handle = t.handle;
    t.dispose();
    return g.pick([() => native.meta(handle), () => native.toBuffer(handle), () => native.callOp(E.findOp('relu')!, [handle]), () => native.backward(handle, undefined, false)])();
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
    return g.pick([() => E.zeros([2], { device }), () => g.float([2]).to(device), () => E.randn([2], { device, seed: 1 }), () => E.resolveDevice(device), () => E.tensor([1, 2], [2], { device })])();
  },
  'an invalid device string': (g) => E.zeros([2], { device: g.pick(['tpu', 'cuda:x', 'gpu', 'cpu:-5x']) as E.Device }),
  'CPU and meta tensors in one op': (g) => {
    const meta = E.zeros([3], { device: 'meta' as E.Device });
    return g.pick([() => g.float([3]).add(meta), () => g.float([3]).mul(meta), () => E.where(E.ones([3], { dtype: 'bool' }), g.float([3]), meta), () => meta.data()])();
  },
  'setGrad: gradient on another device': (g) => { const p = g.float([3]).requiresGrad_(); p.grad = E.zeros([3], { device: 'meta' as E.Device }); },

  // ---- empty tensors
  'max/min of an empty tensor': (g) => { const t = E.zeros([0, g.int(1, 3)]); return g.pick([() => t.max(), () => t.min(), () => t.amax(), () => t.argmax()])(); },
  'reduce an empty dim': (g) => E.zeros([0, 3]).min(0),
  'item() of an empty tensor': () => E.zeros([0]).item(),
  'select from an empty dim': () => E.zeros([0, 3]).select(0, 0),
  'reshape an empty tensor with an inferred dim': () => E.zeros([0, 3]).reshape([-1, 0]),
  'backward of an empty tensor': () => E.zeros([0]).requiresGrad_().sum().mul(E.zeros([0])).backward(),
  'pool or resize an empty image': (g) => g.pick([() => F.maxPool2d(E.zeros([1, 1, 0, 4]), 2), () => F.interpolate(E.zeros([1, 1, 0, 4]), { size: [2, 2] })])(),
  'cat or stack of nothing': (g) => (g.next() < 0.5 ? E.cat([]) : E.stack([])),
  'batchNorm training on an empty batch': () => F.batchNorm(E.zeros([0, 3]), E.zeros([3]), E.ones([3]), undefined, undefined, { training: true }),

  // ---- invalid arguments and creation
  'negative or fractional shape': (g) => E.zeros([2, g.pick([-1, 1.5, NaN])]),
  'a shape too large to allocate': (g) => E.zeros(g.pick([[2 ** 40, 2 ** 40], [2 ** 62], [1e300]])),
  'values that do not fill the shape': (g) => E.tensor([1, 2, 3], [g.int(4, 6)]),
  'arange with a zero step or an infinite bound': (g) => g.pick([() => E.arange(0, 5, 0), () => E.arange(0, Infinity), () => E.arange(0, NaN)])(),
  'randint with an empty range': (g) => E.randint(5, g.int(0, 5), [3]),
  'a bad seed': (g) => E.rand([2], { seed: g.pick([-1, 0.5, NaN, 2 ** 60]) }),
  'conv2d: non-positive stride or dilation, negative padding': (g) => F.conv2d(g.float([1, 1, 6, 6]), g.float([1, 1, 3, 3]), undefined, g.pick([{ stride: 0 }, { stride: -1 }, { dilation: 0 }, { padding: -1 }])),
  'pooling: non-positive kernel or stride': (g) => g.pick([() => F.maxPool2d(g.float([1, 1, 6, 6]), 0), () => F.avgPool2d(g.float([1, 1, 6, 6]), 2, -1)])(),
  'reflect padding as large as the input': (g) => F.pad(g.float([1, 1, 4, 4]), [4, 4, 0, 0], 'reflect'),
  'dropout with p outside [0, 1]': (g) => F.dropout(g.float([3]), g.pick([-0.1, 1.5, NaN]), true),
  'labelSmoothing outside [0, 1]': (g) => F.crossEntropy(g.float([2, 3]), g.int64([0, 1]), { labelSmoothing: g.pick([-0.1, 2]) }),
  'an in-place op on a leaf that requires grad': (g) => g.float([3]).requiresGrad_().add_(1),
  'backward of a tensor that does not require grad': (g) => g.float([3]).sum().backward(),
  'backward of a non-scalar without a gradient': (g) => g.float([3]).requiresGrad_().mul(2).backward(),
  'an operator this libtorch lacks': (g) => E.call(g.pick(['no_such_op', 'conv7d', '']), ''),
  'too many arguments': (g) => E.call('relu', '', g.float([2]), 1, 2),
  'a missing required argument': () => E.call('add', 'Tensor'),
  'setNumThreads with a non-positive count': (g) => E.setNumThreads(g.pick([0, -1, 1.5])),
};

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
    let outcome: unknown;
    let threw = false;
    try {
      outcome = E.tidy(() => {
        const value = cases[name](g);
        // Report what came back without keeping it: a returned tensor would outlive the scope otherwise.
        return value instanceof E.Tensor ? `a tensor ${value.toString()}` : value;
      });
    } catch (error) {
      threw = true;
      if (!(error instanceof Error)) failures.push(`#${i} ${name}: threw a non-Error ${String(error)}`);
      else if (error.message.startsWith('skipped:')) continue;
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
