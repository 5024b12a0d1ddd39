// libtorch 1.13's CPU kernel for exact gelu_backward returns garbage (often NaN or 1e30) in float32 and bfloat16
// when its input is contiguous and the incoming gradient is not, as when a permute follows the GELU. F.gelu
// routes around it; this checks its gradient against float64, whose kernel is correct, in exactly that case.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { maxAbsDiff } from './helpers.js';

const { F } = E;

function gradThroughPermute(dtype: 'float32' | 'float64' | 'bfloat16', approximate: 'none' | 'tanh', seed: number): number[] {
  return E.tidy(() => {
    const x = E.randn([2, 16, 6, 6], { seed }).to(dtype).requiresGrad_();
    const weights = E.randn([2, 6, 6, 16], { seed: seed + 1 }).to(dtype);
    // The gradient reaching gelu is [2, 16, 6, 6] with channels-last strides.
    F.gelu(x, approximate).permute([0, 2, 3, 1]).mul(weights).sum().float().backward();
    return x.grad!.toArray();
  });
}

test('exact and tanh GELU gradients are right when a permute follows', () => {
  for (const approximate of ['none', 'tanh'] as const) {
    for (let seed = 1; seed <= 5; seed++) {
      const reference = gradThroughPermute('float64', approximate, seed);
      const single = maxAbsDiff(gradThroughPermute('float32', approximate, seed), reference);
      assert.ok(single < 1e-5, `${approximate}, seed ${seed}: float32 gradient is off by ${single}`);
      const half = maxAbsDiff(gradThroughPermute('bfloat16', approximate, seed), reference);
      assert.ok(half < 0.1, `${approximate}, seed ${seed}: bfloat16 gradient is off by ${half}`);
    }
  }
});

test('F.gelu adds nothing to the graph when no gradient is needed', () => {
  E.tidy(() => {
    const x = E.randn([4, 4], { seed: 3 });
    const y = F.gelu(x);
    assert.equal(y.requiresGrad, false);
    const expected = x.toArray().map((v) => 0.5 * v * (1 + erf(v / Math.SQRT2)));
    assert.ok(maxAbsDiff(y.toArray(), expected) < 1e-4);
  });
});

// Abramowitz–Stegun 7.1.26, accurate to 1.5e-7: enough to check GELU's forward values.
function erf(x: number): number {
  const t = 1 / (1 + 0.3275911 * Math.abs(x));
  const y = 1 - ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-x * x);
  return x >= 0 ? y : -y;
}
