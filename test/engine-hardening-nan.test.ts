// NaN and Inf inputs: nothing crashes, and results are what libtorch defines (NaN propagates, IEEE rules for Inf).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';

const { F } = E;
const nan = Number.NaN;
const inf = Number.POSITIVE_INFINITY;

function values(t: E.Tensor): number[] {
  return t.toArray();
}

/** Like deepEqual, but NaN equals NaN and numbers may differ by a relative tolerance. */
function same(actual: number[], expected: number[], tolerance = 1e-6, what = 'values'): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  actual.forEach((a, i) => {
    const e = expected[i];
    if (Number.isNaN(e)) assert.ok(Number.isNaN(a), `${what}[${i}]: ${a}, expected NaN`);
    else if (!Number.isFinite(e)) assert.equal(a, e, `${what}[${i}]`);
    else assert.ok(Math.abs(a - e) <= tolerance * Math.max(1, Math.abs(e)), `${what}[${i}]: ${a}, expected ${e}`);
  });
}

test('elementwise ops follow IEEE rules on NaN and Inf', () => {
  E.tidy(() => {
    const x = E.tensor([nan, inf, -inf, 0, 1, -1]);
    same(values(x.add(1)), [nan, inf, -inf, 1, 2, 0]);
    same(values(x.mul(0)), [nan, nan, nan, 0, 0, -0]);
    same(values(x.exp()), [nan, inf, 0, 1, Math.E, 1 / Math.E]);
    same(values(x.log()), [nan, inf, nan, -inf, 0, nan]);
    same(values(x.sqrt()), [nan, inf, nan, 0, 1, nan]);
    same(values(E.tensor([1, -1, 0]).div(E.tensor([0, 0, 0]))), [inf, -inf, nan]);
    same(values(x.relu()), [nan, inf, 0, 0, 1, 0]);
    same(values(x.sigmoid()), [nan, 1, 0, 0.5, 1 / (1 + Math.exp(-1)), 1 / (1 + Math.exp(1))]);
    same(values(x.tanh()), [nan, 1, -1, 0, Math.tanh(1), -Math.tanh(1)]);
    same(values(F.gelu(x)), [nan, inf, nan, 0, 0.8413447, -0.1586553], 1e-5);
    // clamp keeps NaN (it is not ordered), as torch.clamp does.
    same(values(x.clamp(-0.5, 0.5)), [nan, 0.5, -0.5, 0, 0.5, -0.5]);
    same(values(x.isnan()), [1, 0, 0, 0, 0, 0]);
    same(values(x.isfinite()), [0, 0, 0, 1, 1, 1]);
    same(values(x.maximum(E.zeros([6]))), [nan, inf, 0, 0, 1, 0]);
  });
});

test('reductions, sorting and selection propagate NaN as libtorch does', () => {
  E.tidy(() => {
    const x = E.tensor([3, nan, 1, 2]);
    assert.ok(Number.isNaN(x.sum().item()));
    assert.ok(Number.isNaN(x.mean().item()));
    assert.ok(Number.isNaN(x.max().item()), 'max propagates NaN');
    assert.ok(Number.isNaN(x.min().item()), 'min propagates NaN');
    assert.equal(x.argmax().item(), 1, 'NaN counts as the largest value');
    same(values(x.sort().values), [1, 2, 3, nan], 0, 'ascending sort puts NaN last');
    same(values(x.sort(0, true).values), [nan, 3, 2, 1], 0, 'descending sort puts NaN first');
    same(values(x.topk(2).values), [nan, 3]);
    assert.equal(E.tensor([1, inf, 2]).sum().item(), inf);
    assert.ok(Number.isNaN(E.tensor([inf, -inf]).sum().item()));
    assert.equal(E.tensor([-inf, -inf]).logsumexp(0).item(), -inf);
    assert.ok(Number.isNaN(E.tensor([nan]).item()));
  });
});

test('matmul, conv2d, pooling and norms propagate NaN and Inf without crashing', () => {
  E.tidy(() => {
    const a = E.tensor([1, nan, 3, 4], [2, 2]);
    const b = E.tensor([1, 0, 0, 1], [2, 2]);
    // A NaN poisons its whole row of the product (NaN · 0 = NaN).
    same(values(a.matmul(b)), [nan, nan, 3, 4]);
    same(values(E.tensor([inf, 1], [1, 2]).matmul(E.tensor([1, 0], [2, 1]))), [inf]);
    const image = E.ones([1, 1, 4, 4]);
    const poisoned = image.clone();
    poisoned.narrow(2, 0, 1).narrow(3, 0, 1).fill_(nan);
    const conv = F.conv2d(poisoned, E.ones([1, 1, 2, 2]));
    same(values(conv), [nan, 4, 4, 4, 4, 4, 4, 4, 4]);
    same(values(F.maxPool2d(poisoned, 2)), [nan, 1, 1, 1], 0, 'max pooling propagates NaN');
    same(values(F.avgPool2d(poisoned, 2)), [nan, 1, 1, 1]);
    // One NaN or Inf in a row makes that row's statistics, and so the whole row, NaN; other rows are untouched.
    const rows = E.tensor([1, 2, 3, nan, 1, 2, inf, 1, 1], [3, 3]);
    const normed = values(F.layerNorm(rows, [3]));
    same(normed.slice(0, 3), [-1.2247357, 0, 1.2247357], 1e-4);
    same(normed.slice(3), [nan, nan, nan, nan, nan, nan]);
    const batch = values(F.batchNorm(E.tensor([1, nan, 3, 4], [2, 2]), undefined, undefined, undefined, undefined, { training: true }));
    same(batch, [-1, nan, 1, nan], 1e-3);
  });
});

test('softmax and cross-entropy: NaN propagates, a fully masked row or an Inf logit gives NaN', () => {
  E.tidy(() => {
    same(values(F.softmax(E.tensor([0, nan, 1], [1, 3]), -1)), [nan, nan, nan]);
    same(values(F.softmax(E.tensor([-inf, -inf], [1, 2]), -1)), [nan, nan], 0, 'exp(-inf - -inf) is NaN');
    same(values(F.softmax(E.tensor([0, -inf, 0], [1, 3]), -1)), [0.5, 0, 0.5]);
    same(values(F.softmax(E.tensor([inf, 0], [1, 2]), -1)), [nan, nan], 0, 'inf - inf is NaN, and the NaN reaches the sum');
    const loss = F.crossEntropy(E.tensor([nan, 0, 0, 1, 0, 0], [2, 3]), E.tensor([0, 0], [2], { dtype: 'int64' }));
    assert.ok(Number.isNaN(loss.item()));
    // Attention with a masked-out key: that key gets zero weight; NaN in a query reaches only its own row.
    const q = E.tensor([1, 0, nan, 0], [1, 2, 2]);
    const k = E.tensor([1, 0, 0, 1], [1, 2, 2]);
    const mask = E.tensor([1, 0, 1, 0], [1, 2, 2], { dtype: 'bool' });
    const out = values(F.scaledDotProductAttention(q, k, k, { attnMask: mask }));
    same(out, [1, 0, nan, nan]);
  });
});

test('NaN and Inf survive dtype conversion, also to bfloat16 and under autocast', () => {
  E.tidy(() => {
    const x = E.tensor([nan, inf, -inf, 1.5]);
    same(values(x.to('bfloat16')), [nan, inf, -inf, 1.5]);
    same(values(x.to('float16')), [nan, inf, -inf, 1.5]);
    same(values(x.to('float64')), [nan, inf, -inf, 1.5]);
    // Float → int of NaN is undefined in C++; libtorch's result is some integer, and that must not crash.
    assert.equal(x.to('int64').shape[0], 4);
    const identity = E.tensor([1, 0, 0, 1], [2, 2]);
    const product = E.autocast(() => E.tensor([nan, 1, inf, 1], [2, 2]).matmul(identity));
    assert.equal(product.dtype, 'bfloat16');
    same(values(product), [nan, nan, inf, nan], 0, 'NaN spreads along its row; Inf · 0 is NaN');
  });
});

test('a NaN loss gives NaN gradients; AdamW then writes NaN into the weights as torch.optim.AdamW does, clipGradNorm reports it', () => {
  const w = E.keep(E.tensor([0.5, -0.5]).requiresGrad_());
  const other = E.keep(E.tensor([1, 2]).requiresGrad_());
  try {
    E.tidy(() => {
      const loss = w
        .mul(E.tensor([nan, 1]))
        .sum()
        .add(other.sum());
      assert.ok(Number.isNaN(loss.item()));
      loss.backward();
    });
    E.tidy(() => {
      same(values(w.grad!), [nan, 1]);
      same(values(other.grad!), [1, 1]);
      const norm = E.clipGradNorm([w, other], 1).item();
      assert.ok(Number.isNaN(norm), `clipGradNorm returned ${norm}`);
      same(values(other.grad!), [1, 1], 0, 'a non-finite norm leaves the gradients alone');
    });
    const optimizer = new E.AdamW([w, other], { lr: 0.1, weightDecay: 0 });
    optimizer.step();
    E.tidy(() => {
      const after = values(w);
      assert.ok(Number.isNaN(after[0]));
      assert.ok(Math.abs(after[1] - -0.6) < 1e-5, `the finite coordinate still steps: ${after[1]}`);
      same(values(other), [0.9, 1.9], 1e-5);
    });
    optimizer.dispose();
  } finally {
    w.dispose();
    other.dispose();
  }
});
