// bf16 autocast on the CPU: GEMMs and convolutions run in bf16 with results close to fp32, norms and softmax
// stay in fp32, the state is restored after the scope (also after an exception), and an enabled:false scope
// inside runs fp32. Nothing here assumes AMX: without it oneDNN runs the same bf16 maths more slowly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';

const { F } = E;

/** Relative error in the L2 sense, and the largest element error relative to the largest reference value. */
function errors(actual: E.Tensor, reference: E.Tensor): { l2: number; max: number } {
  const a = actual.toArray();
  const r = reference.toArray();
  assert.equal(a.length, r.length);
  let diff2 = 0;
  let ref2 = 0;
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - r[i];
    diff2 += d * d;
    ref2 += r[i] * r[i];
    maxDiff = Math.max(maxDiff, Math.abs(d));
    maxRef = Math.max(maxRef, Math.abs(r[i]));
  }
  return { l2: Math.sqrt(diff2 / ref2), max: maxDiff / maxRef };
}

// bf16 keeps 8 significant bits: inputs round by up to 2^-9 relative, products accumulate in fp32. Over K-term
// dot products of random data that gives an L2 error near 3e-3; 1e-2 leaves room, and an fp16-like or
// wrong-layout bug (errors of order 1) cannot pass. CPUs without native bf16 (neither AMX nor AVX-512-BF16) take
// libtorch's fallback GEMM, whose running sums are rounded to bf16: the error grows with the square root of K, to
// about 2e-2 at K = 256. hemato runs fp32 there by default.
const { amx, avx512bf16 } = E.cpuFeatures();
const L2_TOLERANCE = amx || avx512bf16 ? 1e-2 : 4e-2;
const MAX_TOLERANCE = amx || avx512bf16 ? 3e-2 : 8e-2;

function assertBf16Close(actual: E.Tensor, reference: E.Tensor, what: string): void {
  const { l2, max } = errors(actual, reference);
  assert.ok(l2 < L2_TOLERANCE && max < MAX_TOLERANCE, `${what}: bf16 result is off by ${l2.toExponential(2)} (L2), ${max.toExponential(2)} (max)`);
}

test('matmul, linear and conv2d run in bf16 under autocast, close to fp32', () => {
  E.tidy(() => {
    const a = E.randn([64, 256], { seed: 1 });
    const b = E.randn([256, 96], { seed: 2 });
    const weight = E.randn([80, 256], { seed: 3 }).mul(0.1);
    const bias = E.randn([80], { seed: 4 });
    const image = E.randn([4, 16, 20, 20], { seed: 5 });
    const kernel = E.randn([24, 16, 3, 3], { seed: 6 }).mul(0.1);
    const kernelBias = E.randn([24], { seed: 7 });
    const depthwise = E.randn([16, 1, 7, 7], { seed: 8 }).mul(0.1);

    const [product, projected, convolved, dw, batched] = E.autocast(() => {
      assert.equal(E.isAutocastEnabled(), true);
      return [
        a.matmul(b),
        F.linear(a, weight, bias),
        F.conv2d(image, kernel, kernelBias, { padding: 1 }),
        F.conv2d(image, depthwise, undefined, { padding: 3, groups: 16 }),
        a.reshape([4, 16, 256]).matmul(b),
      ];
    });
    for (const t of [product, projected, convolved, dw, batched]) assert.equal(t.dtype, 'bfloat16');
    assertBf16Close(product, a.matmul(b), 'matmul');
    assertBf16Close(projected, F.linear(a, weight, bias), 'linear');
    assertBf16Close(convolved, F.conv2d(image, kernel, kernelBias, { padding: 1 }), 'conv2d');
    assertBf16Close(dw, F.conv2d(image, depthwise, undefined, { padding: 3, groups: 16 }), 'depthwise conv2d');
    assertBf16Close(batched, a.reshape([4, 16, 256]).matmul(b), 'batched matmul');
  });
});

test('gradients through a bf16 autocast region reach fp32 weights, close to fp32 gradients', () => {
  const weight = E.keep(E.randn([32, 64], { seed: 11 }).mul(0.1).requiresGrad_());
  const kernel = E.keep(E.randn([8, 3, 3, 3], { seed: 12 }).mul(0.2).requiresGrad_());
  try {
    const input = E.keep(E.randn([16, 64], { seed: 13 }));
    const image = E.keep(E.randn([2, 3, 12, 12], { seed: 14 }));
    const loss = () => F.linear(input, weight).float().pow(2).mean().add(F.conv2d(image, kernel).float().pow(2).mean());
    const grads = (useAutocast: boolean): E.Tensor[] => {
      E.tidy(() => (useAutocast ? E.autocast(loss) : loss()).backward());
      const result = [weight.grad!, kernel.grad!].map((g) => E.keep(g));
      weight.grad = undefined;
      kernel.grad = undefined;
      return result;
    };
    const [w32, k32] = grads(false);
    const [w16, k16] = grads(true);
    assert.equal(w16.dtype, 'float32', 'the gradient of an fp32 leaf is fp32');
    assert.equal(k16.dtype, 'float32');
    assertBf16Close(w16, w32, 'linear weight gradient');
    assertBf16Close(k16, k32, 'conv weight gradient');
    E.dispose([w32, k32, w16, k16, input, image]);
  } finally {
    E.dispose([weight, kernel]);
  }
});

test('layerNorm, softmax and logSoftmax inside autocast compute in fp32', () => {
  E.tidy(() => {
    const x = E.randn([8, 32], { seed: 21 });
    const w = E.randn([48, 32], { seed: 22 }).mul(0.2);
    const gamma = E.randn([48], { seed: 23 }).add(1);
    const beta = E.randn([48], { seed: 24 });
    const [normed, probabilities, logProbabilities, hidden] = E.autocast(() => {
      const h = F.linear(x, w); // bf16
      return [F.layerNorm(h, [48], gamma, beta), F.softmax(h, -1), F.logSoftmax(h, -1), h];
    });
    assert.equal(hidden.dtype, 'bfloat16');
    assert.equal(normed.dtype, 'float32', 'layerNorm with fp32 weights computes in fp32');
    assert.equal(probabilities.dtype, 'float32', 'softmax of a bf16 input accumulates in fp32');
    assert.equal(logProbabilities.dtype, 'float32');
    // Compare against fp32 maths on the same bf16 hidden values, so only the norm's own precision is measured.
    const hidden32 = hidden.float();
    assert.ok(errors(normed, F.layerNorm(hidden32, [48], gamma, beta)).l2 < 1e-5);
    assert.ok(errors(probabilities, F.softmax(hidden32, -1)).l2 < 1e-5);
    assert.ok(errors(logProbabilities, F.logSoftmax(hidden32, -1)).l2 < 1e-5);
    for (const rowSum of probabilities.sum(-1).toArray()) assert.ok(Math.abs(rowSum - 1) < 1e-5);
    // And the whole chain stays close to fp32 end to end.
    assertBf16Close(normed, F.layerNorm(F.linear(x, w), [48], gamma, beta), 'linear → layerNorm');
    // A norm without weights keeps its input's dtype; a bf16 layerNorm is still computed correctly.
    const plain = E.autocast(() => F.layerNorm(F.linear(x, w), [48]));
    assert.equal(plain.dtype, 'bfloat16');
    assertBf16Close(plain, F.layerNorm(F.linear(x, w), [48]), 'unweighted layerNorm');
  });
});

test('autocast is off again after the scope, also when the scope throws', () => {
  assert.equal(E.isAutocastEnabled(), false);
  E.autocast(() => undefined);
  assert.equal(E.isAutocastEnabled(), false);
  assert.throws(
    () =>
      E.autocast(() => {
        assert.equal(E.isAutocastEnabled(), true);
        throw new Error('boom');
      }),
    /boom/,
  );
  assert.equal(E.isAutocastEnabled(), false);
  // A libtorch error inside the scope, and a rejected dtype at the scope's start.
  assert.throws(() => E.autocast(() => E.tidy(() => E.ones([2, 3]).matmul(E.ones([4, 5])))), /matmul/);
  assert.equal(E.isAutocastEnabled(), false);
  assert.throws(() => E.autocast(() => 1, { dtype: 'float16' }), /Bfloat16/);
  assert.equal(E.isAutocastEnabled(), false);
  assert.throws(() => E.autocast((async () => 1) as () => unknown), /async/);
  assert.equal(E.isAutocastEnabled(), false);
  E.tidy(() => assert.equal(E.ones([2, 2]).matmul(E.ones([2, 2])).dtype, 'float32'));
});

test('a nested enabled:false scope runs fp32 and restores autocast for the rest of the outer scope', () => {
  E.tidy(() => {
    const a = E.randn([32, 64], { seed: 31 });
    const b = E.randn([64, 16], { seed: 32 });
    const reference = a.matmul(b);
    const trace: string[] = [];
    E.autocast(() => {
      trace.push(a.matmul(b).dtype);
      const inner = E.autocast(
        () => {
          trace.push(String(E.isAutocastEnabled()));
          // Three levels: on inside off inside on.
          E.autocast(() => trace.push(a.matmul(b).dtype));
          trace.push(String(E.isAutocastEnabled()));
          return a.matmul(b);
        },
        { enabled: false },
      );
      assert.equal(inner.dtype, 'float32');
      assert.deepEqual(inner.toArray(), reference.toArray(), 'the fp32 part computes exactly what fp32 computes');
      trace.push(a.matmul(b).dtype);
      // An exception in a nested scope restores the outer state, not "off".
      assert.throws(
        () =>
          E.autocast(
            () => {
              throw new Error('inner');
            },
            { enabled: false },
          ),
        /inner/,
      );
      trace.push(String(E.isAutocastEnabled()));
    });
    trace.push(String(E.isAutocastEnabled()));
    assert.deepEqual(trace, ['bfloat16', 'false', 'bfloat16', 'false', 'bfloat16', 'true', 'false']);
  });
});
