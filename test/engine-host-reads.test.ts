// Host reads: every way tensor data reaches JS is counted by E.hostReads(), and the paths that run each step
// (a model's forward pass, a loss on checked targets) make none, since on a GPU each read waits for the device.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';

const { F } = E;

/** The host reads fn makes, and its result. */
function readsOf<T>(fn: () => T): [number, T] {
  const before = E.hostReads();
  const result = fn();
  return [E.hostReads() - before, result];
}

const int64 = (values: number[]) => E.tensor(values, [values.length], { dtype: 'int64' });

test('item, data, toArray and the ops that return tensor values each count one host read', () => {
  E.tidy(() => {
    const t = E.tensor([1, 2, 3]);
    const bf16 = t.to('bfloat16');
    const one = E.scalar(7);
    assert.equal(readsOf(() => t.shape && t.dtype && t.device && String(t))[0], 0, 'metadata is not a read');
    assert.equal(readsOf(() => t.mul(2).sum())[0], 0, 'ops whose results stay tensors are not reads');
    assert.deepEqual(
      readsOf(() => one.item()),
      [1, 7],
    );
    assert.deepEqual(
      readsOf(() => Array.from(t.data() as Float32Array)),
      [1, [1, 2, 3]],
    );
    assert.deepEqual(
      readsOf(() => t.toArray()),
      [1, [1, 2, 3]],
    );
    assert.deepEqual(
      readsOf(() => bf16.toArray()),
      [1, [1, 2, 3]],
      'half types convert on the device, then read once',
    );
    assert.deepEqual(
      readsOf(() => E.call<boolean>('equal', '', t, t)),
      [1, true],
    );
    assert.deepEqual(
      readsOf(() => E.call<boolean>('allclose', '', t, t.add(1e-9))),
      [1, true],
    );
    assert.deepEqual(
      readsOf(() => E.call<boolean>('is_nonzero', '', one)),
      [1, true],
    );
    assert.deepEqual(
      readsOf(() => E.call<number>('_local_scalar_dense', '', one)),
      [1, 7],
    );
    assert.equal(readsOf(() => [one.item(), one.item(), t.toArray()])[0], 3, 'each read counts');
  });
});

test('crossEntropy checks its targets with one host read by default, and with none when told they were checked', () => {
  E.tidy(() => {
    const logits = E.randn([4, 3], { seed: 1 });
    const target = int64([0, 2, 1, 2]);
    const [checkedReads, checked] = readsOf(() => F.crossEntropy(logits, target, { labelSmoothing: 0.1 }));
    assert.equal(checkedReads, 1);
    const [reads, unchecked] = readsOf(() => F.crossEntropy(logits, target, { labelSmoothing: 0.1, checkTargets: false }));
    assert.equal(reads, 0);
    assert.equal(unchecked.item(), checked.item());
    assert.throws(() => F.crossEntropy(logits, int64([0, 3, 1, 2])), /targets span \[0, 3\], outside the 3 classes/);
  });
});

test('crossEntropy without the check still refuses a bad target with a JS error on the CPU', () => {
  E.tidy(() => {
    const logits = E.randn([2, 3], { seed: 2 });
    const options = [{}, { labelSmoothing: 0.1 }, { labelSmoothing: 0.1, weight: E.ones([3]) }, { reduction: 'none' as const }];
    for (const o of options) {
      for (const bad of [3, 9, -1]) {
        assert.throws(() => F.crossEntropy(logits, int64([0, bad]), { ...o, checkTargets: false }), /Target -?\d+ is out of bounds/, JSON.stringify(o));
      }
    }
    assert.ok(Number.isFinite(F.crossEntropy(logits, int64([0, -100]), { checkTargets: false }).item()), 'ignoreIndex is not a bad target');
  });
});
