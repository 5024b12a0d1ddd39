// Host reads: every way tensor data reaches JS is counted by E.hostReads(), and the paths that run each step
// (a model's forward pass, a loss on checked targets) make none, since on a GPU each read waits for the device.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { ConvNeXt } from '../src/models/convnext.js';
import { DualPathNet } from '../src/models/dualpath.js';
import type { ImageClassifier } from '../src/models/classifier.js';
import { WindowAttention, checkRelativePositionIndex, relativePositionIndex, SwinTransformer } from '../src/models/swin.js';
import { assertClose } from './helpers.js';

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

test('a forward pass of each architecture in noGrad makes no host read', () => {
  const convnext = { depths: [1, 1, 1, 1], dims: [8, 16, 24, 32], convMlp: true };
  // 64 px with window 4: the first two stages shift their windows and use the mask, the last shrinks its window.
  const swin = { inputSize: 64, embedDim: 16, depths: [2, 2, 2, 2], numHeads: [1, 2, 4, 8], windowSize: 4 };
  const models: [string, () => ImageClassifier][] = [
    ['convnext (conv MLP)', () => new ConvNeXt({ ...convnext, numClasses: 8, inputSize: 64 })],
    ['convnext (linear MLP)', () => new ConvNeXt({ ...convnext, convMlp: false, numClasses: 8, inputSize: 64 })],
    ['swin', () => new SwinTransformer({ ...swin, numClasses: 8 })],
    ...(['aff', 'iaff', 'concat'] as const).map((fusion): [string, () => ImageClassifier] => [
      `dual-path (${fusion})`,
      () => new DualPathNet({ convnext, swin, fusion, numClasses: 8, inputSize: 64 }),
    ]),
    ['dual-path (swin only)', () => new DualPathNet({ swin, fusion: 'single', numClasses: 8, inputSize: 64 })],
  ];
  const x = E.randn([2, 3, 64, 64], { seed: 3 });
  for (const [name, build] of models) {
    const model = build().eval();
    try {
      const [reads, logits] = readsOf(() => E.noGrad(() => model.forward(x)));
      assert.equal(reads, 0, `${name}: ${reads} host reads in a forward pass`);
      assert.deepEqual(logits.shape, [2, 8], name);
      assert.ok(logits.toArray().every(Number.isFinite), name);
      logits.dispose();
    } finally {
      model.dispose();
    }
  }
  x.dispose();
});

test('Swin checks its relative-position index once, when built, and refuses one that does not fit its window', () => {
  const [reads, attention] = readsOf(() => new WindowAttention(8, 2, [3, 3]));
  assert.equal(reads, 1, 'the constant index is read once, at construction');
  attention.dispose();
  E.tidy(() => {
    const good = relativePositionIndex([3, 3]);
    checkRelativePositionIndex(good, [3, 3]);
    const corrupt = good.clone();
    corrupt.view([-1]).narrow(0, 40, 1).fill_(25); // the table has (2·3 − 1)² = 25 rows
    assert.throws(() => checkRelativePositionIndex(corrupt, [3, 3]), /relative_position_index: index values span \[0, 25\], outside a dimension of size 25/);
    assert.throws(() => checkRelativePositionIndex(good.neg(), [3, 3]), /index values span \[-24, 0\]/);
    assert.throws(() => checkRelativePositionIndex(good.float(), [3, 3]), /relative_position_index: index must be int64 or int32, got float32/);
    assert.throws(() => checkRelativePositionIndex(relativePositionIndex([2, 2]), [3, 3]), /must be \[9, 9\] for a 3×3 window, got \[4, 4\]/);
  });
});

test('a bad index is still a JS error, and a good one is not read back on the CPU', () => {
  E.tidy(() => {
    const x = E.arange(0, 6, 1, { dtype: 'float32' }).view([2, 3]);
    assert.deepEqual(
      readsOf(() => x.indexSelect(1, int64([2, 0])).shape),
      [0, [2, 2]],
    );
    assert.deepEqual(
      readsOf(() => x.gather(1, E.tensor([0, 2, 1, 1], [2, 2], { dtype: 'int64' })).shape),
      [0, [2, 2]],
    );
    for (const bad of [[0, 3], [-1], [-4, 1]]) {
      assert.throws(() => x.indexSelect(1, int64(bad)), /indexSelect: index values span .*outside a dimension of size 3/);
      assert.throws(() => x.indexSelect(1, int64(bad), { boundsChecked: true }), /indexSelect: index values span/);
      assert.throws(() => x.gather(1, E.tensor([0, ...bad], [1, bad.length + 1], { dtype: 'int64' })), /gather: index values span/);
    }
    assert.throws(() => x.indexSelect(0, E.tensor([5], [1], { dtype: 'int32' })), /indexSelect: index values span \[5, 5\]/);
    assert.throws(() => x.indexSelect(0, E.tensor([0])), /index must be int64 or int32, got float32/);
    assert.throws(() => E.call('embedding', '', x, int64([2])), /index out of range/);
    assert.throws(() => F.nllLoss(F.logSoftmax(x, 1), int64([0, 3])), /nllLoss target: index values span \[0, 3\]/);
  });
});

test('clipGradNorm clips on the device: no host read unless the norm is read', () => {
  const a = E.keep(E.zeros([2], { requiresGrad: true }));
  const b = E.keep(E.zeros([1], { requiresGrad: true }));
  try {
    E.tidy(() => {
      a.grad = E.tensor([3, 0]);
      b.grad = E.tensor([4]);
      const [reads, norm] = readsOf(() => E.clipGradNorm([a, b], 1));
      assert.equal(reads, 0);
      assert.deepEqual([norm.shape, norm.dtype], [[], 'float32']);
      assert.deepEqual(
        readsOf(() => norm.item()),
        [1, 5],
      );
      assertClose([...a.grad!.toArray(), ...b.grad!.toArray()], [0.6, 0, 0.8]);
      assert.equal(readsOf(() => E.clipGradNorm([a, b], 10))[0], 0);
      assertClose(a.grad!.toArray(), [0.6, 0], 1e-6, 'a norm under the limit leaves the gradients as they are');
      b.grad = E.tensor([Infinity]);
      assert.equal(E.clipGradNorm([a, b], 1).item(), Infinity);
      assertClose(a.grad!.toArray(), [0.6, 0], 1e-6, 'a non-finite norm leaves the gradients alone');
      assert.equal(E.clipGradNorm([E.zeros([1])], 1).item(), 0, 'no gradients, norm 0');
      assert.throws(() => E.clipGradNorm([a], 0), /maxNorm must be positive, got 0/);
    });
  } finally {
    E.dispose([a, b]);
  }
});

test(
  'on CUDA a Swin forward pass makes no host read, and a bad index is refused before a kernel sees it',
  { skip: E.cudaAvailable() ? false : 'no CUDA device' },
  () => {
    const model = new SwinTransformer({ inputSize: 64, embedDim: 16, depths: [2, 2, 2, 2], numHeads: [1, 2, 4, 8], windowSize: 4, numClasses: 8 })
      .eval()
      .to('cuda');
    try {
      E.tidy(() => {
        const x = E.randn([2, 3, 64, 64], { seed: 4 }).to('cuda');
        assert.equal(readsOf(() => E.noGrad(() => model.forward(x)))[0], 0);
        const table = E.zeros([3, 2], { device: 'cuda' });
        const bad = E.tensor([0, 3], [2], { dtype: 'int64', device: 'cuda' });
        const [reads] = readsOf(() => assert.throws(() => table.indexSelect(0, bad), /indexSelect: index values span \[0, 3\]/));
        assert.equal(reads, 1, 'a data-dependent index on CUDA is read once, before the kernel');
        assert.throws(() => F.crossEntropy(table, bad), /targets span \[0, 3\]/);
        assert.equal(table.add(1).sum().item(), 6, 'the device still works');
      });
    } finally {
      model.dispose();
    }
  },
);
