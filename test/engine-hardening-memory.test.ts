// Memory: 500 training steps of a small conv + linear model with AdamW leave exactly as many live tensors as the
// first step did, and the resident set stops growing after warm-up. Every other step runs under bf16 autocast,
// whose cache of cast weights must be freed when the scope closes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';
import * as E from '../src/engine/index.js';

const { F } = E;

// A collectable heap makes RSS readings comparable; the flag can be set at run time for a new context.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

function rssMiB(): number {
  gc();
  return process.memoryUsage().rss / 2 ** 20;
}

test('500 training steps keep the live-tensor count at its baseline and RSS levels off', () => {
  const startCount = E.liveTensors();
  E.manualSeed(7);
  const param = (shape: number[], scale: number, offset = 0) => E.keep(E.randn(shape).mul_(scale).add_(offset).requiresGrad_());
  const params = {
    conv1: param([8, 3, 3, 3], 0.2),
    bias1: param([8], 0),
    conv2: param([16, 8, 3, 3], 0.1),
    bias2: param([16], 0),
    norm: param([16], 0, 1),
    shift: param([16], 0),
    fc: param([4, 16], 0.2),
    fcBias: param([4], 0),
  };
  const optimizer = new E.AdamW(Object.values(params), { lr: 1e-3 });
  const batch = 16;
  const images = E.keep(E.randn([batch, 3, 32, 32], { seed: 1 }));
  const labels = E.keep(
    E.tensor(
      Array.from({ length: batch }, (_, i) => i % 4),
      [batch],
      { dtype: 'int64' },
    ),
  );

  const forward = (): E.Tensor => {
    let x = F.conv2d(images, params.conv1, params.bias1, { padding: 1 }).relu();
    x = F.gelu(F.conv2d(x, params.conv2, params.bias2, { stride: 2, padding: 1 }));
    x = F.layerNorm(x.permute([0, 2, 3, 1]), [16], params.norm, params.shift).permute([0, 3, 1, 2]);
    x = F.adaptiveAvgPool2d(x, 1).flatten(1);
    return F.crossEntropy(F.linear(x, params.fc, params.fcBias).float(), labels, { labelSmoothing: 0.1 });
  };
  const step = (i: number): number => {
    const loss = E.tidy(() => {
      const value = i % 2 === 0 ? forward() : E.autocast(forward);
      value.backward();
      return value.item();
    });
    E.clipGradNorm(Object.values(params), 5).dispose();
    optimizer.step();
    optimizer.zeroGrad();
    return loss;
  };

  const losses = [step(0)];
  const baseline = E.liveTensors(); // the model, the batch and AdamW's moments
  const rss: Record<number, number> = {};
  for (let i = 1; i < 500; i++) {
    losses.push(step(i));
    assert.equal(E.liveTensors(), baseline, `step ${i}: ${E.liveTensors() - baseline} tensors more than after the first step`);
    if (i === 100 || i === 300 || i === 499) rss[i] = rssMiB();
  }
  assert.equal(E.isAutocastEnabled(), false);
  assert.ok(losses.every(Number.isFinite), `losses stay finite: ${losses.slice(0, 6).join(', ')}`);
  assert.ok(losses[499] < losses[0] - 0.2, `the model learns (loss ${losses[0].toFixed(3)} → ${losses[499].toFixed(3)})`);

  // Leaking one activation per step (the smallest is 16·16·16·16·4 bytes = 256 KiB; the first conv's is 512 KiB)
  // would add about 100 MiB over these 400 steps. Allocator noise after warm-up is a few MiB.
  const growth = rss[499] - rss[100];
  assert.ok(
    growth < 40,
    `RSS grew by ${growth.toFixed(1)} MiB from step 100 to 500 (${rss[100].toFixed(0)} → ${rss[300].toFixed(0)} → ${rss[499].toFixed(0)} MiB)`,
  );

  optimizer.dispose();
  E.dispose([Object.values(params), images, labels]);
  assert.equal(E.liveTensors(), startCount, 'everything the test made is freed');
});
