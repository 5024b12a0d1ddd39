// ECA and AFF on small cases whose answers are worked out here, independently of the engine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { AttentionalFeatureFusion, EfficientChannelAttention, ecaKernelSize, type ChannelBottleneck } from '../src/models/index.js';
import { assertClose } from './helpers.js';

const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));

test('ECA kernel size k = |log2(C)/2 + 1/2| made odd', () => {
  const expected: [number, number][] = [
    [1, 1],
    [2, 1],
    [8, 3],
    [16, 3],
    [64, 3],
    [128, 5],
    [256, 5],
    [320, 5],
    [512, 5],
    [768, 5],
    [1024, 5],
    [2048, 7],
  ];
  for (const [channels, k] of expected) assert.equal(ecaKernelSize(channels), k, `C=${channels}`);
  assert.equal(ecaKernelSize(64, 1, 1), 7, 'γ=1: log2(64)+1 = 7');
  assert.throws(() => ecaKernelSize(0), /positive integer/);
  const eca = new EfficientChannelAttention(320);
  assert.equal(eca.kernelSize, 5);
  assert.deepEqual(eca.conv.weight.shape, [1, 1, 5]);
  eca.dispose();
});

test('ECA gates each channel by a sigmoid of a 1-D conv over the pooled channels', () => {
  const eca = new EfficientChannelAttention(8); // k = 3, zero padding 1
  const kernel = [0.5, -1, 2];
  E.noGrad(() => eca.conv.weight.copy_(E.tensor(kernel, [1, 1, 3])));
  // NHWC [1, 1, 2, 8]: two positions, channel c holds c and -c/2.
  const values = [...Array.from({ length: 8 }, (_, c) => c), ...Array.from({ length: 8 }, (_, c) => -c / 2)];
  const x = E.tensor(values, [1, 1, 2, 8]);
  const pooled = Array.from({ length: 8 }, (_, c) => (c - c / 2) / 2);
  const gate = pooled.map((_, c) => sigmoid(kernel[0] * (pooled[c - 1] ?? 0) + kernel[1] * pooled[c] + kernel[2] * (pooled[c + 1] ?? 0)));
  const y = eca.forward(x);
  assertClose(
    y.toArray(),
    values.map((v, i) => v * gate[i % 8]),
    1e-6,
  );
  E.dispose([x, y]);
  eca.dispose();
});

test('AFF with constant branches mixes by M = σ(L + G): Z = M·X + (1 − M)·Y', () => {
  const aff = new AttentionalFeatureFusion(4, { reduction: 2 });
  const local = [1, -1, 0, 2];
  const global = [0.5, 0.5, 0, -2];
  E.noGrad(() => {
    // Zero second layers make each branch's output its final LayerNorm bias, whatever the input.
    for (const branch of [aff.attention.local, aff.attention.global]) branch.fc2.weight.zero_();
    for (const branch of [aff.attention.local, aff.attention.global]) branch.fc2.bias!.zero_();
    aff.attention.local.norm2.bias.copy_(E.tensor(local));
    aff.attention.global.norm2.bias.copy_(E.tensor(global));
  });
  const xs = [1, 2, 3, 4, 5, 6, 7, 8];
  const ys = [-1, 0, 1, 0, 2, 2, 2, 2];
  const x = E.tensor(xs, [1, 1, 2, 4]);
  const y = E.tensor(ys, [1, 1, 2, 4]);
  const m = local.map((l, c) => sigmoid(l + global[c]));
  const z = aff.forward(x, y);
  assertClose(
    z.toArray(),
    xs.map((xv, i) => m[i % 4] * xv + (1 - m[i % 4]) * ys[i]),
    1e-6,
  );
  E.dispose([x, y, z]);
  aff.dispose();
});

// ---- a plain-number reference of AFF, for a case with random weights ----

type Vector = number[];

function weightsOf(t: E.Tensor): number[][] {
  const [rows, cols] = t.shape;
  const flat = t.toArray();
  return Array.from({ length: rows }, (_, r) => flat.slice(r * cols, (r + 1) * cols));
}

function bottleneckReference(branch: ChannelBottleneck): (v: Vector) => Vector {
  const linear = (w: number[][], b: Vector) => (v: Vector) => w.map((row, o) => row.reduce((s, wi, i) => s + wi * v[i], b[o]));
  const layerNorm = (g: Vector, b: Vector) => (v: Vector) => {
    const mean = v.reduce((a, c) => a + c, 0) / v.length;
    const variance = v.reduce((a, c) => a + (c - mean) ** 2, 0) / v.length;
    return v.map((c, i) => ((c - mean) / Math.sqrt(variance + 1e-5)) * g[i] + b[i]);
  };
  const fc1 = linear(weightsOf(branch.fc1.weight), branch.fc1.bias!.toArray());
  const fc2 = linear(weightsOf(branch.fc2.weight), branch.fc2.bias!.toArray());
  const norm1 = layerNorm(branch.norm1.weight.toArray(), branch.norm1.bias.toArray());
  const norm2 = layerNorm(branch.norm2.weight.toArray(), branch.norm2.bias.toArray());
  return (v) => norm2(fc2(norm1(fc1(v)).map((h) => Math.max(h, 0))));
}

/** AFF on maps given as arrays of channel vectors (one per position). */
function affReference(aff: AttentionalFeatureFusion, xs: Vector[], ys: Vector[]): Vector[] {
  const weights = (attention: AttentionalFeatureFusion['attention'], s: Vector[]) => {
    const local = bottleneckReference(attention.local);
    const pooled = s[0].map((_, c) => s.reduce((a, v) => a + v[c], 0) / s.length);
    const global = bottleneckReference(attention.global)(pooled);
    return s.map((v) => local(v).map((l, c) => sigmoid(l + global[c])));
  };
  const mix = (m: Vector[]) => m.map((row, p) => row.map((mc, c) => mc * xs[p][c] + (1 - mc) * ys[p][c]));
  const first = mix(
    weights(
      aff.attention,
      xs.map((v, p) => v.map((c, i) => c + ys[p][i])),
    ),
  );
  return aff.refinement ? mix(weights(aff.refinement, first)) : first;
}

for (const iterative of [false, true]) {
  test(`${iterative ? 'iAFF' : 'AFF'} with random weights matches a plain-number reference`, () => {
    E.manualSeed(11);
    const aff = new AttentionalFeatureFusion(6, { reduction: 2, iterative });
    E.noGrad(() => {
      // Spread the weights so every branch matters (the default init leaves them near zero).
      E.tidy(() => {
        for (const [, p] of aff.namedParameters()) p.copy_(E.randn(p.shape).mul(0.7));
      });
    });
    const x = E.randn([1, 2, 3, 6], { seed: 1 });
    const y = E.randn([1, 2, 3, 6], { seed: 2 });
    const positions = (t: E.Tensor) => weightsOf(t.reshape([6, 6]));
    const expected = affReference(aff, positions(x), positions(y)).flat();
    const z = aff.forward(x, y);
    assertClose(z.toArray(), expected, 1e-5);
    E.dispose([x, y, z]);
    aff.dispose();
  });
}
