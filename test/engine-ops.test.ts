// Operation results against values computed by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { assertClose } from './helpers.js';

const { F } = E;
const i64 = (values: number[], shape?: number[]) => E.tensor(values, shape, { dtype: 'int64' });

test('creation covers every dtype and round-trips host data', () => {
  E.tidy(() => {
    for (const dtype of E.DTYPES) {
      const t = E.ones([2, 3], { dtype });
      assert.equal(t.dtype, dtype);
      assert.deepEqual(t.shape, [2, 3]);
      assert.deepEqual(t.toArray(), [1, 1, 1, 1, 1, 1]);
    }
    assert.deepEqual(E.tensor(new Int32Array([1, -2]), [2]).toArray(), [1, -2]);
    assert.deepEqual(E.tensor(new BigInt64Array([5n, 6n])).data(), new BigInt64Array([5n, 6n]));
    assert.deepEqual(E.tensor([0.5, 1.5]).to('bfloat16').toArray(), [0.5, 1.5]);
    assert.deepEqual(E.zeros([2]).toArray(), [0, 0]);
    assert.deepEqual(E.full([3], 2.5).toArray(), [2.5, 2.5, 2.5]);
    assert.deepEqual(E.arange(4).toArray(), [0, 1, 2, 3]);
    assert.equal(E.arange(4).dtype, 'int64');
    assert.deepEqual(E.arange(1, 2, 0.25).toArray(), [1, 1.25, 1.5, 1.75]);
    assert.equal(E.scalar(3).item(), 3);
  });
});

test('seeded rand and randn repeat, and the global seed makes unseeded draws repeat', () => {
  E.tidy(() => {
    assert.deepEqual(E.rand([5], { seed: 7 }).toArray(), E.rand([5], { seed: 7 }).toArray());
    assert.notDeepEqual(E.rand([5], { seed: 7 }).toArray(), E.rand([5], { seed: 8 }).toArray());
    const normal = E.randn([20000], { seed: 1 });
    assert.ok(Math.abs(normal.mean().item()) < 0.03 && Math.abs(normal.std().item() - 1) < 0.03);
    E.manualSeed(3);
    const a = E.randn([4]).toArray();
    E.manualSeed(3);
    assert.deepEqual(E.randn([4]).toArray(), a);
  });
});

test('elementwise, comparison and reduction operations', () => {
  E.tidy(() => {
    const x = E.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
    assert.deepEqual(x.add(1).toArray(), [2, 3, 4, 5, 6, 7]);
    assert.deepEqual(x.sub(x.mul(2)).toArray(), [-1, -2, -3, -4, -5, -6]);
    assert.deepEqual(x.div(2).toArray(), [0.5, 1, 1.5, 2, 2.5, 3]);
    assert.deepEqual(x.pow(2).toArray(), [1, 4, 9, 16, 25, 36]);
    assert.deepEqual(x.add(E.tensor([10, 20, 30])).toArray(), [11, 22, 33, 14, 25, 36]);
    assertClose(x.sqrt().toArray(), [1, Math.SQRT2, Math.sqrt(3), 2, Math.sqrt(5), Math.sqrt(6)]);
    assertClose(x.exp().log().toArray(), [1, 2, 3, 4, 5, 6], 1e-6);
    assert.deepEqual(x.clamp(2, 4).toArray(), [2, 2, 3, 4, 4, 4]);
    assert.deepEqual(x.gt(3).toArray(), [0, 0, 0, 1, 1, 1]);
    assert.deepEqual(x.eq(E.tensor([1, 0, 3])).toArray(), [1, 0, 1, 0, 0, 0]);
    assert.equal(x.sum().item(), 21);
    assert.deepEqual(x.sum(1).toArray(), [6, 15]);
    assert.deepEqual(x.mean(0, true).shape, [1, 3]);
    assert.deepEqual(x.mean(0).toArray(), [2.5, 3.5, 4.5]);
    assert.deepEqual(x.amax(1).toArray(), [3, 6]);
    assert.deepEqual(x.min(0).toArray(), [1, 2, 3]);
    assert.deepEqual(x.argmax(1).toArray(), [2, 2]);
    assert.deepEqual(x.var(1).toArray(), [1, 1]);
    assert.deepEqual(
      x
        .var(1, { unbiased: false })
        .toArray()
        .map((v) => +v.toFixed(6)),
      [0.666667, 0.666667],
    );
    assertClose(x.logsumexp(1).toArray(), [3 + Math.log(1 + Math.exp(-1) + Math.exp(-2)), 6 + Math.log(1 + Math.exp(-1) + Math.exp(-2))], 1e-6);
    assert.deepEqual(x.cumsum(1).toArray(), [1, 3, 6, 4, 9, 15]);
    const { values, indices } = x.topk(2, 1);
    assert.deepEqual(values.toArray(), [3, 2, 6, 5]);
    assert.deepEqual(indices.toArray(), [2, 1, 2, 1]);
    assert.deepEqual(E.where(x.gt(3), x, 0).toArray(), [0, 0, 0, 4, 5, 6]);
    assert.deepEqual(x.maskedFill(x.lt(3), -1).toArray(), [-1, -1, 3, 4, 5, 6]);
  });
});

test('views and shape operations', () => {
  E.tidy(() => {
    const x = E.arange(6).reshape([2, 3]);
    assert.deepEqual(x.transpose(0, 1).contiguous().toArray(), [0, 3, 1, 4, 2, 5]);
    assert.deepEqual(x.permute([1, 0]).shape, [3, 2]);
    assert.deepEqual(x.reshape([-1]).shape, [6]);
    assert.deepEqual(x.slice(1, 1).toArray(), [1, 2, 4, 5]);
    assert.deepEqual(x.slice(1, 0, undefined, 2).toArray(), [0, 2, 3, 5]);
    assert.deepEqual(x.select(0, -1).toArray(), [3, 4, 5]);
    assert.deepEqual(x.indexSelect(1, i64([2, 0])).toArray(), [2, 0, 5, 3]);
    assert.deepEqual(x.gather(1, i64([0, 0, 1, 2], [2, 2])).toArray(), [0, 0, 4, 5]);
    assert.deepEqual(E.cat([x, x], 1).shape, [2, 6]);
    assert.deepEqual(E.stack([x, x], 1).shape, [2, 2, 3]);
    assert.deepEqual(
      x.split(2, 1).map((t) => t.shape),
      [
        [2, 2],
        [2, 1],
      ],
    );
    assert.deepEqual(
      x.split([1, 2], 1).map((t) => t.toArray()),
      [
        [0, 3],
        [1, 2, 4, 5],
      ],
    );
    assert.deepEqual(
      x.chunk(2, 0).map((t) => t.toArray()),
      [
        [0, 1, 2],
        [3, 4, 5],
      ],
    );
    assert.deepEqual(x.roll([1], [1]).toArray(), [2, 0, 1, 5, 3, 4]);
    assert.deepEqual(x.flip([0]).toArray(), [3, 4, 5, 0, 1, 2]);
    assert.deepEqual(x.rot90().toArray(), [2, 5, 1, 4, 0, 3]);
    assert.deepEqual(x.unsqueeze(0).squeeze(0).shape, [2, 3]);
    assert.deepEqual(x.flatten().shape, [6]);
    const image = E.rand([2, 3, 4, 5], { seed: 1 });
    const nhwc = image.channelsLast();
    assert.ok(nhwc.isContiguous('channelsLast') && !nhwc.isContiguous());
    assert.deepEqual(nhwc.toArray(), image.toArray());
  });
});

test('matmul, mm and bmm', () => {
  E.tidy(() => {
    const a = E.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
    const b = E.tensor([1, 0, 0, 1, 1, 1], [3, 2]);
    assert.deepEqual(a.matmul(b).toArray(), [4, 5, 10, 11]);
    assert.deepEqual(a.mm(b).toArray(), [4, 5, 10, 11]);
    assert.deepEqual(a.unsqueeze(0).bmm(b.unsqueeze(0)).toArray(), [4, 5, 10, 11]);
    assert.deepEqual(a.matmul(E.tensor([1, 1, 1])).toArray(), [6, 15]);
  });
});

test('convolution, linear, norms and activations', () => {
  E.tidy(() => {
    // A 3×3 box filter over a 4×4 ramp with zero padding: corner = 0+1+4+5 = 10.
    const image = E.arange(16, undefined, 1, { dtype: 'float32' }).reshape([1, 1, 4, 4]);
    const box = F.conv2d(image, E.ones([1, 1, 3, 3]), E.tensor([1]), { padding: 1 });
    assert.deepEqual(box.toArray().slice(0, 4), [11, 19, 25, 19]);
    assert.deepEqual(F.conv2d(image, E.ones([1, 1, 2, 2]), undefined, { stride: 2 }).toArray(), [10, 18, 42, 50]);
    assert.deepEqual(F.conv2d(image, E.ones([1, 1, 2, 2]), undefined, { dilation: 2 }).toArray(), [20, 24, 36, 40]);
    const grouped = F.conv2d(E.ones([1, 4, 3, 3]), E.full([4, 1, 1, 1], 2), undefined, { groups: 4 });
    assert.deepEqual(grouped.shape, [1, 4, 3, 3]);
    assert.deepEqual(F.conv1d(E.tensor([1, 2, 3], [1, 1, 3]), E.ones([1, 1, 3]), undefined, { padding: 1 }).toArray(), [3, 6, 5]);
    assert.deepEqual(F.linear(E.tensor([1, 2], [1, 2]), E.tensor([1, 1, 2, -1], [2, 2]), E.tensor([0.5, 0])).toArray(), [3.5, 0]);
    assertClose(F.layerNorm(E.tensor([1, 2, 3], [1, 3]), [3]).toArray(), [-1.2247357, 0, 1.2247357], 1e-5);
    assertClose(F.layerNorm(E.tensor([1, 2, 3], [1, 3]), [3], E.full([3], 2), E.ones([3])).toArray(), [-1.4494714, 1, 3.4494714], 1e-5);
    const batch = E.tensor([1, 3, 5, 7], [4, 1]);
    assertClose(
      F.batchNorm(batch, undefined, undefined, undefined, undefined, { training: true }).toArray(),
      [-1.3416404, -0.4472135, 0.4472135, 1.3416404],
      1e-5,
    );
    const runningMean = E.zeros([1]);
    const runningVar = E.ones([1]);
    F.batchNorm(batch, runningMean, runningVar, undefined, undefined, { training: true, momentum: 0.5 });
    assertClose(runningMean.toArray(), [2], 1e-6); // 0.5·0 + 0.5·4
    assertClose(runningVar.toArray(), [0.5 + 0.5 * (20 / 3)], 1e-5); // unbiased variance 20/3
    assertClose(F.groupNorm(E.tensor([1, 3, 5, 7], [1, 2, 2]), 1).toArray(), [-1.3416404, -0.4472135, 0.4472135, 1.3416404], 1e-5);
    assertClose(F.gelu(E.tensor([-1, 0, 1])).toArray(), [-0.15865525, 0, 0.84134475], 1e-6);
    assertClose(F.gelu(E.tensor([1]), 'tanh').toArray(), [0.841192], 1e-6);
    assert.deepEqual(F.relu(E.tensor([-1, 2])).toArray(), [0, 2]);
    assertClose(F.sigmoid(E.tensor([0, Math.log(3)])).toArray(), [0.5, 0.75], 1e-6);
    assertClose(F.softmax(E.tensor([0, Math.log(3)]), 0).toArray(), [0.25, 0.75], 1e-6);
    assertClose(F.logSoftmax(E.tensor([0, Math.log(3)]), 0).toArray(), [Math.log(0.25), Math.log(0.75)], 1e-6);
    assert.deepEqual(F.dropout(E.ones([4]), 0.5, false).toArray(), [1, 1, 1, 1]);
    const dropped = F.dropout(E.ones([1000]), 0.5, true).toArray();
    assert.ok(dropped.every((v) => v === 0 || v === 2) && dropped.some((v) => v === 0) && dropped.some((v) => v === 2));
  });
});

test('pooling, padding, roll and interpolation', () => {
  E.tidy(() => {
    const image = E.arange(16, undefined, 1, { dtype: 'float32' }).reshape([1, 1, 4, 4]);
    assert.deepEqual(F.avgPool2d(image, 2).toArray(), [2.5, 4.5, 10.5, 12.5]);
    assert.deepEqual(F.maxPool2d(image, 2).toArray(), [5, 7, 13, 15]);
    assert.deepEqual(F.adaptiveAvgPool2d(image, 1).toArray(), [7.5]);
    assert.deepEqual(F.adaptiveMaxPool2d(image, [2, 1]).toArray(), [7, 15]);
    const row = E.tensor([1, 2, 3], [1, 1, 3]);
    assert.deepEqual(F.pad(row, [2, 1], 'reflect').toArray(), [3, 2, 1, 2, 3, 2]);
    assert.deepEqual(F.pad(row, [2, 1], 'replicate').toArray(), [1, 1, 1, 2, 3, 3]);
    assert.deepEqual(F.pad(row, [1, 0], 'constant', 9).toArray(), [9, 1, 2, 3]);
    assert.deepEqual(F.pad(image, [1, 1, 1, 1], 'reflect').shape, [1, 1, 6, 6]);
    // Bilinear 2× upsampling of [0, 1] with half-pixel centres: 0, 0.25, 0.75, 1.
    assertClose(F.interpolate(E.tensor([0, 1], [1, 1, 1, 2]), { size: [1, 4] }).toArray(), [0, 0.25, 0.75, 1]);
    assertClose(F.interpolate(E.tensor([0, 1], [1, 1, 1, 2]), { size: [1, 3], alignCorners: true }).toArray(), [0, 0.5, 1]);
    // Antialiased 2× downsampling of a constant stays constant; of a ramp, averages neighbours.
    assertClose(F.interpolate(E.full([1, 1, 8, 8], 3), { size: [4, 4], antialias: true }).toArray(), new Array(16).fill(3), 1e-6);
    assertClose(F.interpolate(E.full([1, 1, 8, 8], 3), { size: [4, 4], mode: 'bicubic', antialias: true }).toArray(), new Array(16).fill(3), 1e-5);
    assert.deepEqual(F.interpolate(image, { size: [8, 8], mode: 'bicubic' }).shape, [1, 1, 8, 8]);
  });
});

test('cross-entropy with label smoothing and class weights', () => {
  E.tidy(() => {
    const logits = E.tensor([2, 0, 0, 0, 1, 0], [2, 3]);
    const target = i64([0, 1]);
    const logZ0 = Math.log(Math.exp(2) + 2);
    const logZ1 = Math.log(Math.exp(1) + 2);
    const nll = [logZ0 - 2, logZ1 - 1];
    assertClose([F.crossEntropy(logits, target).item()], [(nll[0] + nll[1]) / 2], 1e-6);
    // Smoothing ε: (1-ε)·nll + ε·mean over classes of -log p.
    const eps = 0.1;
    const uniform0 = (3 * logZ0 - 2) / 3;
    const uniform1 = (3 * logZ1 - 1) / 3;
    const smoothed = ((1 - eps) * nll[0] + eps * uniform0 + (1 - eps) * nll[1] + eps * uniform1) / 2;
    assertClose([F.crossEntropy(logits, target, { labelSmoothing: eps }).item()], [smoothed], 1e-6);
    // Class weights: a weighted mean of the per-sample losses.
    const weighted = (1 * nll[0] + 3 * nll[1]) / 4;
    assertClose([F.crossEntropy(logits, target, { weight: E.tensor([1, 3, 1]) }).item()], [weighted], 1e-6);
    assertClose(F.crossEntropy(logits, target, { reduction: 'none' }).toArray(), nll, 1e-6);
  });
});

test('scaled dot-product attention equals softmax(q kᵀ/√d) v, with additive and boolean masks', () => {
  E.tidy(() => {
    const q = E.randn([1, 2, 3, 4], { seed: 1 });
    const k = E.randn([1, 2, 3, 4], { seed: 2 });
    const v = E.randn([1, 2, 3, 4], { seed: 3 });
    const reference = F.softmax(q.matmul(k.transpose(-2, -1)).div(2), -1).matmul(v);
    assertClose(F.scaledDotProductAttention(q, k, v).toArray(), reference.toArray(), 1e-5);
    const mask = E.tensor([0, -Infinity, 0, 0, 0, -Infinity, 0, 0, 0], [3, 3]);
    const masked = F.softmax(q.matmul(k.transpose(-2, -1)).div(2).add(mask), -1).matmul(v);
    assertClose(F.scaledDotProductAttention(q, k, v, { attnMask: mask }).toArray(), masked.toArray(), 1e-5);
    assertClose(F.scaledDotProductAttention(q, k, v, { attnMask: mask.eq(0) }).toArray(), masked.toArray(), 1e-5);
  });
});

test('threads default to the core count and can be set', async () => {
  const { availableParallelism } = await import('node:os');
  assert.equal(E.numThreads(), Number(process.env.HEMATO_NUM_THREADS) || availableParallelism());
  E.setNumThreads(1);
  assert.equal(E.numThreads(), 1);
  E.setNumThreads(E.defaultThreads);
  assert.throws(() => E.setNumThreads(0), /positive integer/);
});
