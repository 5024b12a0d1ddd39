// Invalid calls throw JS errors that say what was wrong, and scopes free what they made.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { native } from '../src/engine/native.js';
import { collectDroppedTensors } from './helpers.js';

const { F } = E;

test('invalid calls throw clear JS errors and the process survives', () => {
  E.tidy(() => {
    const a = E.ones([2, 3]);
    assert.throws(() => a.matmul(E.ones([2, 3])), /matmul: shapes \[2, 3\] and \[2, 3\] do not fit/);
    assert.throws(() => a.add(E.ones([4])), /size of tensor a \(3\) must match/);
    assert.throws(() => a.sum(2), /dim 2 is out of range for a tensor of rank 2/);
    assert.throws(() => a.transpose(0, -3), /out of range/);
    assert.throws(() => a.reshape([4, 2]), /cannot reshape \[2, 3\]/);
    assert.throws(() => a.select(0, 5), /index 5 is out of range/);
    assert.throws(() => a.indexSelect(1, E.tensor([0, 3], [2], { dtype: 'int64' })), /index values span \[0, 3\]/);
    assert.throws(() => a.indexSelect(1, E.tensor([0, 1])), /index must be int64 or int32/);
    assert.throws(() => a.maskedFill(E.ones([2, 3]), 0), /mask must be bool/);
    assert.throws(() => E.cat([a, E.ones([2, 2])], 0), /cat: shapes/);
    assert.throws(() => F.conv2d(E.ones([1, 3, 4, 4]), E.ones([2, 2, 3, 3])), /expects 2 input channels/);
    assert.throws(() => F.linear(a, E.ones([4, 4])), /linear: weight \[4, 4\] does not fit/);
    assert.throws(() => F.crossEntropy(a, E.tensor([0, 3], [2], { dtype: 'int64' })), /targets span \[0, 3\], outside the 3 classes/);
    assert.throws(() => F.crossEntropy(a, E.tensor([0, 1])), /target must be int64/);
    assert.throws(() => E.tensor([1, 2, 3], [2, 2]), /3 values do not fill shape \[2, 2\]/);
    assert.throws(() => E.zeros([2, -1]), /non-negative integers/);
    assert.throws(() => E.ones([2], { dtype: 'complex64' as E.DType }), /unknown dtype/);
    assert.throws(() => E.ones([2]).to('cuda'), /CUDA|cuda/);
    // An error libtorch itself raises arrives as a JS Error with its message, not a crash.
    assert.throws(() => E.call('mm', '', E.ones([2, 3]), E.ones([2, 3])), /mat1 and mat2 shapes cannot be multiplied/);
  });
});

test('a disposed tensor cannot be used, and disposing twice is harmless', () => {
  const t = E.ones([2]);
  t.dispose();
  t.dispose();
  assert.equal(t.isDisposed, true);
  assert.throws(() => t.add(1), /tensor was disposed/);
  assert.throws(() => t.shape, /tensor was disposed/);
  assert.throws(() => E.ones([2]).add(t), /tensor was disposed/);
});

test('a handle of a disposed tensor never names the tensor that reuses its slot', () => {
  const t = E.ones([2]);
  const stale = t.handle;
  t.dispose();
  const reused = E.zeros([3]);
  try {
    assert.notEqual(reused.handle, stale);
    assert.throws(() => native.meta(stale), /tensor was disposed/);
    assert.throws(() => native.callOp(E.findOp('relu')!, 1, stale), /tensor was disposed/);
    native.dispose(stale); // a late free, as the garbage collector's, leaves the new tensor alone
    assert.deepEqual(reused.toArray(), [0, 0, 0]);
    // A plain number is never taken for a tensor, nor a tensor for a number.
    assert.throws(() => native.callOp(E.findOp('relu')!, 0, reused.handle), /argument 'self' must be a tensor/);
    assert.throws(() => native.callOp(E.findOp('add', 'Scalar')!, 3, reused.handle, reused.handle), /argument 'other' must be a number, not a tensor/);
    assert.throws(() => native.meta(12345 as never), /must be a tensor/);
  } finally {
    reused.dispose();
  }
});

test('tensors dropped without dispose() are freed after garbage collection', async () => {
  const before = await collectDroppedTensors();
  const make = () => {
    for (let i = 0; i < 100; i++) E.ones([4]);
  };
  make();
  assert.equal(E.liveTensors(), before + 100);
  assert.equal(await collectDroppedTensors(), before);
});

test('after a scope closes, the live-tensor count returns to its previous value', () => {
  const before = E.liveTensors();
  const kept = E.tidy(() => {
    const x = E.randn([8, 8], { seed: 1 });
    const y = x.matmul(x).relu().sum(1);
    E.tidy(() => y.mul(2).add(1));
    return { y, parts: [y.split(4)] };
  });
  assert.equal(E.liveTensors(), before + 3);
  E.dispose(kept);
  assert.equal(E.liveTensors(), before);
  assert.throws(
    () =>
      E.tidy(() => {
        E.ones([3]);
        throw new Error('boom');
      }),
    /boom/,
  );
  assert.equal(E.liveTensors(), before);
  const outer = E.tidy(() => E.tidy(() => E.ones([1])));
  assert.equal(E.liveTensors(), before + 1);
  outer.dispose();
  assert.equal(E.liveTensors(), before);
});

test('keep() lets a tensor outlive its scope', () => {
  const before = E.liveTensors();
  let kept: E.Tensor | undefined;
  E.tidy(() => {
    kept = E.keep(E.ones([2]));
    E.ones([2]);
  });
  assert.equal(E.liveTensors(), before + 1);
  assert.deepEqual(kept!.toArray(), [1, 1]);
  kept!.dispose();
  assert.equal(E.liveTensors(), before);
});
