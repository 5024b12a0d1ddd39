// Gradient checks: autograd against central finite differences in float64, one case per operation family.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';

const { F } = E;
type Fn = (...inputs: E.Tensor[]) => E.Tensor;

/** Compares d(sum(f · w))/dx from backward() with finite differences, w a fixed random weighting. */
function gradcheck(name: string, fn: Fn, shapes: number[][], options: { positive?: boolean; seed?: number } = {}): void {
  E.tidy(() => {
    const base = shapes.map((shape, i) => {
      const values = E.randn(shape, { seed: (options.seed ?? 1) * 100 + i, dtype: 'float64' });
      return (options.positive ? values.abs().add(0.5) : values).data() as Float64Array;
    });
    const make = (arrays: Float64Array[], grad: boolean) => arrays.map((a, i) => E.tensor(a, shapes[i], { dtype: 'float64', requiresGrad: grad }));
    const probe = fn(...make(base, false));
    const weight = E.randn(probe.shape, { seed: 999, dtype: 'float64' });
    const objective = (inputs: E.Tensor[]) =>
      fn(...inputs)
        .mul(weight)
        .sum();

    const inputs = make(base, true);
    objective(inputs).backward();
    const eps = 1e-6;
    inputs.forEach((input, which) => {
      const analytic = input.grad!.data() as Float64Array;
      for (let i = 0; i < base[which].length; i++) {
        const numeric = E.tidy(() => {
          const plus = base.map((a) => a.slice());
          const minus = base.map((a) => a.slice());
          plus[which][i] += eps;
          minus[which][i] -= eps;
          return (objective(make(plus, false)).item() - objective(make(minus, false)).item()) / (2 * eps);
        });
        const tolerance = 1e-5 * Math.max(1, Math.abs(numeric));
        assert.ok(Math.abs(analytic[i] - numeric) <= tolerance, `${name}: d/dinput${which}[${i}] autograd ${analytic[i]} vs finite difference ${numeric}`);
      }
    });
  });
}

test('elementwise arithmetic and unary functions', () => {
  gradcheck(
    'add/sub/mul/div',
    (a, b) =>
      a
        .add(b)
        .mul(a)
        .sub(b.div(a.abs().add(1))),
    [
      [2, 3],
      [2, 3],
    ],
  );
  gradcheck('broadcast', (a, b) => a.mul(b), [[2, 3], [3]]);
  gradcheck('pow', (a) => a.pow(3), [[4]]);
  gradcheck('exp/log/sqrt/rsqrt', (a) => a.exp().add(a.log()).add(a.sqrt()).add(a.rsqrt()), [[5]], { positive: true });
  gradcheck('tanh/sigmoid/sin/cos', (a) => a.tanh().add(a.sigmoid()).add(a.sin()).mul(a.cos()), [[5]]);
  gradcheck('gelu', (a) => F.gelu(a), [[6]]);
  gradcheck('gelu tanh', (a) => F.gelu(a, 'tanh'), [[6]]);
  gradcheck('relu', (a) => F.relu(a), [[6]], { seed: 3 });
  gradcheck('clamp', (a) => a.clamp(-0.5, 0.5), [[6]], { seed: 4 });
  gradcheck('where/maskedFill', (a, b) => E.where(a.gt(0), a, b).maskedFill(b.gt(1), 0), [[6], [6]]);
});

test('reductions', () => {
  gradcheck('sum/mean', (a) => a.sum(1).add(a.mean(1)), [[3, 4]]);
  gradcheck('amax', (a) => a.amax(1), [[3, 4]]);
  gradcheck('var/std', (a) => a.var(1).add(a.std(0).sum()), [[3, 4]]);
  gradcheck('logsumexp', (a) => a.logsumexp(1), [[3, 4]]);
  gradcheck('norm', (a) => a.norm(), [[5]]);
});

test('shape operations', () => {
  const index = () => E.tensor([2, 0, 1], [3], { dtype: 'int64' });
  gradcheck('reshape/permute/transpose', (a) => a.reshape([3, 2, 2]).permute([2, 0, 1]).transpose(0, 2).contiguous(), [[3, 4]]);
  gradcheck(
    'slice/select/narrow',
    (a) =>
      a
        .slice(1, 1, 3)
        .add(a.select(1, 0).unsqueeze(1))
        .add(a.narrow(1, 2, 2)),
    [[3, 4]],
  );
  gradcheck('indexSelect/gather', (a) => a.indexSelect(0, index()).gather(1, E.tensor([0, 3, 1, 1, 2, 0], [3, 2], { dtype: 'int64' })), [[3, 4]]);
  gradcheck('cat/stack/split/chunk', (a, b) => E.cat([E.stack([a, b]).sum(0), ...a.split(1, 1), ...b.chunk(2, 1)], 1), [
    [3, 2],
    [3, 2],
  ]);
  gradcheck('roll/flip/rot90', (a) => a.roll([1, -1], [0, 1]).flip([1]).rot90(), [[3, 4]]);
  gradcheck('expand/repeat', (a) => a.expand([3, 4]).add(a.repeat([3, 1])), [[1, 4]]);
});

test('matrix products', () => {
  gradcheck('matmul', (a, b) => a.matmul(b), [
    [2, 3],
    [3, 4],
  ]);
  gradcheck('bmm', (a, b) => a.bmm(b), [
    [2, 2, 3],
    [2, 3, 2],
  ]);
  gradcheck('linear', (x, w, b) => F.linear(x, w, b), [[2, 3], [4, 3], [4]]);
});

test('convolutions', () => {
  gradcheck('conv2d stride/padding', (x, w, b) => F.conv2d(x, w, b, { stride: 2, padding: 1 }), [[1, 2, 5, 5], [3, 2, 3, 3], [3]]);
  gradcheck('conv2d dilation/groups', (x, w) => F.conv2d(x, w, undefined, { dilation: 2, groups: 2, padding: 2 }), [
    [1, 4, 5, 5],
    [4, 2, 3, 3],
  ]);
  gradcheck('conv1d', (x, w) => F.conv1d(x, w, undefined, { padding: 1 }), [
    [1, 2, 6],
    [1, 2, 3],
  ]);
});

test('normalisations', () => {
  gradcheck('layerNorm', (x, w, b) => F.layerNorm(x, [4], w, b), [[3, 4], [4], [4]]);
  gradcheck('batchNorm training', (x, w, b) => F.batchNorm(x, undefined, undefined, w, b, { training: true }), [[4, 2, 2, 2], [2], [2]]);
  gradcheck('groupNorm', (x, w, b) => F.groupNorm(x, 2, w, b), [[2, 4, 2, 2], [4], [4]]);
});

test('softmax family, losses and attention', () => {
  gradcheck('softmax/logSoftmax', (a) => F.softmax(a, 1).add(F.logSoftmax(a, 0)), [[3, 4]]);
  const target = () => E.tensor([1, 0, 3], [3], { dtype: 'int64' });
  const classWeights = () => E.tensor([0.5, 1, 2, 1.5], [4], { dtype: 'float64' });
  gradcheck('crossEntropy smoothing+weights', (logits) => F.crossEntropy(logits, target(), { labelSmoothing: 0.1, weight: classWeights() }), [[3, 4]]);
  gradcheck(
    'attention',
    (q, k, v) => F.scaledDotProductAttention(q, k, v, { attnMask: E.tensor([0, -1, 0, 0, 2, 0, 0, 0, 0], [3, 3], { dtype: 'float64' }) }),
    [
      [1, 3, 2],
      [1, 3, 2],
      [1, 3, 2],
    ],
  );
});

test('pooling, padding and interpolation', () => {
  gradcheck('avg/max pool', (x) => F.avgPool2d(x, 2).add(F.maxPool2d(x, 2)), [[1, 1, 4, 4]]);
  gradcheck('adaptive pools', (x) => F.adaptiveAvgPool2d(x, [2, 1]).add(F.adaptiveMaxPool2d(x, [2, 1])), [[1, 2, 4, 3]]);
  gradcheck(
    'pad reflect/replicate/constant',
    (x) =>
      F.pad(x, [1, 2, 2, 1], 'reflect')
        .add(F.pad(x, [1, 2, 2, 1], 'replicate'))
        .add(F.pad(x, [1, 2, 2, 1], 'constant', 3)),
    [[1, 1, 3, 3]],
  );
  gradcheck('interpolate bilinear', (x) => F.interpolate(x, { size: [5, 3] }), [[1, 1, 3, 4]]);
  gradcheck('interpolate bicubic antialias', (x) => F.interpolate(x, { size: [2, 3], mode: 'bicubic', antialias: true }), [[1, 1, 5, 6]]);
  gradcheck('interpolate bilinear antialias', (x) => F.interpolate(x, { size: [2, 2], antialias: true }), [[1, 1, 5, 5]]);
});

test('gradients accumulate, detach stops them and noGrad records nothing', () => {
  E.tidy(() => {
    const x = E.tensor([1, 2], [2], { requiresGrad: true });
    x.mul(3).sum().backward();
    x.mul(3).sum().backward();
    assert.deepEqual(x.grad!.toArray(), [6, 6]);
    x.grad = undefined;
    assert.equal(x.grad, undefined);
    const y = x.detach().mul(2);
    assert.equal(y.requiresGrad, false);
    const z = E.noGrad(() => x.mul(2));
    assert.equal(z.requiresGrad, false);
    assert.equal(E.isGradEnabled(), true);
    assert.throws(() => x.mul(2).backward(), /needs a scalar/);
  });
});
