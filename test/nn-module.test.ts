// Module bookkeeping (key names, state dicts, modes, errors), layers, initialisation and weight-decay groups.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import {
  Conv2d,
  DropPath,
  LayerNorm,
  LayerNorm2d,
  Linear,
  Module,
  Sequential,
  StateDictError,
  dropPathRates,
  truncNormal_,
  weightDecayGroups,
} from '../src/nn/index.js';
import { assertClose } from './helpers.js';

class Block extends Module {
  readonly fc: Linear;
  readonly norm: LayerNorm;

  constructor() {
    super();
    E.noGrad(() => this.registerParameter('gamma', E.ones([4])));
    this.registerBuffer('index', E.arange(4), false);
    this.registerBuffer('count', E.zeros([1]));
    this.fc = this.registerModule('fc', new Linear(4, 4));
    this.norm = this.registerModule('norm', new LayerNorm(4));
  }
}

class Net extends Module {
  readonly blocks = this.registerModule('blocks', new Sequential([new Linear(3, 4), new Linear(4, 4, { bias: false })]));
  readonly tail = this.registerModule('tail', new Block());
}

test('keys are dotted paths with numeric names for sequences, own parameters first', () => {
  const net = new Net();
  assert.deepEqual(
    net.namedParameters().map(([k]) => k),
    ['blocks.0.weight', 'blocks.0.bias', 'blocks.1.weight', 'tail.gamma', 'tail.fc.weight', 'tail.fc.bias', 'tail.norm.weight', 'tail.norm.bias'],
  );
  assert.deepEqual(
    net.namedBuffers().map(([k]) => k),
    ['tail.index', 'tail.count'],
  );
  assert.deepEqual(
    [...net.stateDict().keys()].sort(),
    [...net.namedParameters().map(([k]) => k), 'tail.count'].sort(),
    'non-persistent buffers stay out of the state dict',
  );
  assert.equal(net.numParameters(), 3 * 4 + 4 + 16 + 4 + 16 + 4 + 4 + 4);
  assert.ok(net.parameters().every((p) => p.requiresGrad));
  assert.equal(net.getSubmodule('tail.fc'), net.tail.fc);
  assert.throws(() => net.getSubmodule('tail.nope'), /no submodule 'tail.nope'/);
  net.dispose();
});

test('loadStateDict copies in place and lists every bad key in one error', () => {
  const a = new Net();
  const b = new Net();
  const weightBefore = b.tail.fc.weight;
  b.loadStateDict(a.stateDict());
  assert.equal(b.tail.fc.weight, weightBefore, 'the parameter object is kept, so optimizers stay valid');
  assert.deepEqual(b.tail.fc.weight.toArray(), a.tail.fc.weight.toArray());

  const state = new Map(a.stateDict());
  state.delete('tail.norm.bias');
  state.delete('blocks.0.bias');
  const wrong = E.zeros([5, 4]);
  state.set('tail.fc.weight', wrong);
  const extra = E.zeros([1]);
  state.set('tail.extra', extra);
  const before = b.blocks
    .at(0)
    .parameters()
    .map((p) => p.toArray());
  assert.throws(
    () => b.loadStateDict(state),
    (error: unknown) => {
      assert.ok(error instanceof StateDictError);
      assert.deepEqual(error.missing.sort(), ['blocks.0.bias', 'tail.norm.bias']);
      assert.deepEqual(error.unexpected, ['tail.extra']);
      assert.deepEqual(error.mismatched, [{ key: 'tail.fc.weight', expected: [4, 4], got: [5, 4] }]);
      assert.match(
        error.message,
        /missing from the checkpoint \(2\)[\s\S]*unexpected in the checkpoint \(1\)[\s\S]*tail\.fc\.weight: model \[4, 4\], checkpoint \[5, 4\]/,
      );
      return true;
    },
  );
  assert.deepEqual(
    b.blocks
      .at(0)
      .parameters()
      .map((p) => p.toArray()),
    before,
    'nothing is copied when anything is wrong',
  );
  E.dispose([wrong, extra]);
  a.dispose();
  b.dispose();
});

test('train() and eval() reach every descendant', () => {
  const net = new Net();
  net.eval();
  assert.ok(net.namedModules().every(([, m]) => !m.training));
  net.train();
  assert.ok(net.namedModules().every(([, m]) => m.training));
  net.dispose();
});

test('LayerNorm2d normalises each position over channels', () => {
  const norm = new LayerNorm2d(3);
  E.noGrad(() => {
    norm.weight.copy_(E.tensor([1, 2, 3]));
    norm.bias.copy_(E.tensor([0, 1, -1]));
  });
  const x = E.tensor([1, 5, 2, 6, 3, 7], [1, 3, 1, 2]); // position 0: (1, 2, 3), position 1: (5, 6, 7)
  const y = norm.forward(x);
  const s = 1 / Math.sqrt(2 / 3 + 1e-6);
  assertClose(y.toArray(), [-s, -s, 1, 1, 3 * s - 1, 3 * s - 1], 1e-5);
  E.dispose([x, y]);
  norm.dispose();
});

test('Conv2d keeps PyTorch weight shapes and Linear works on NHWC maps', () => {
  const conv = new Conv2d(8, 8, 7, { padding: 3, groups: 8 });
  assert.deepEqual(conv.weight.shape, [8, 1, 7, 7]);
  const x = E.randn([2, 8, 5, 5], { seed: 1 });
  const y = conv.forward(x);
  assert.deepEqual(y.shape, [2, 8, 5, 5]);
  const fc = new Linear(8, 3);
  const z = fc.forward(y.permute([0, 2, 3, 1]));
  assert.deepEqual(z.shape, [2, 5, 5, 3]);
  E.dispose([x, y, z]);
  conv.dispose();
  fc.dispose();
});

test('DropPath is the identity in eval and drops or rescales whole samples in training', () => {
  const drop = new DropPath(0.5);
  const x = E.ones([64, 3, 2, 2]);
  drop.eval();
  assert.equal(drop.forward(x), x);
  drop.train();
  E.manualSeed(7);
  const y = drop.forward(x);
  const perSample = y.reshape([64, 12]).toArray();
  const kept = new Set<number>();
  for (let i = 0; i < 64; i++) {
    const row = perSample.slice(i * 12, i * 12 + 12);
    assert.ok(row.every((v) => v === row[0]) && (row[0] === 0 || row[0] === 2), `sample ${i} is dropped (0) or scaled by 1/keep (2)`);
    kept.add(row[0]);
  }
  assert.deepEqual([...kept].sort(), [0, 2], 'with 64 samples both outcomes occur');
  E.dispose([x, y]);
});

test('dropPathRates rise linearly over all blocks, split by stage', () => {
  assertClose(dropPathRates([2, 2, 1], 0.4).flat(), [0, 0.1, 0.2, 0.3, 0.4]);
  assert.deepEqual(
    dropPathRates([2, 2, 1], 0.4).map((r) => r.length),
    [2, 2, 1],
  );
});

test('truncNormal_ draws std 0.02 and respects tight bounds', () => {
  E.manualSeed(3);
  const t = truncNormal_(E.empty([100_000]));
  const values = t.toArray();
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const std = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
  assert.ok(Math.abs(mean) < 5e-4 && Math.abs(std - 0.02) < 5e-4, `mean ${mean}, std ${std}`);
  truncNormal_(t, 1, 0, -0.5, 0.5);
  const tight = t.toArray();
  assert.ok(tight.every((v) => v >= -0.5 && v <= 0.5));
  // A normal truncated to ±0.5σ is close to uniform there: its std is 0.2838 (uniform: 0.2887).
  const tightStd = Math.sqrt(tight.reduce((a, b) => a + b * b, 0) / tight.length);
  assert.ok(Math.abs(tightStd - 0.2838) < 0.005, `std of the truncated normal ${tightStd}`);
  t.dispose();
});

test('weight decay skips norms, biases, layer scales and relative-position tables', () => {
  class WithTable extends Module {
    readonly net = this.registerModule('net', new Net());
    constructor() {
      super();
      this.registerParameter('relative_position_bias_table', E.zeros([9, 2]));
    }
  }
  const model = new WithTable();
  const groups = weightDecayGroups(model, 0.05);
  assert.deepEqual(groups.decay.names, ['net.blocks.0.weight', 'net.blocks.1.weight', 'net.tail.fc.weight']);
  assert.deepEqual(groups.noDecay.names.sort(), [
    'net.blocks.0.bias',
    'net.tail.fc.bias',
    'net.tail.gamma',
    'net.tail.norm.bias',
    'net.tail.norm.weight',
    'relative_position_bias_table',
  ]);
  assert.equal(groups.decay.weightDecay, 0.05);
  assert.equal(groups.noDecay.weightDecay, 0);
  model.dispose();
});
