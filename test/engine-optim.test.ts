// Optimizers against their closed-form updates, parameter groups and gradient clipping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { assertClose } from './helpers.js';

/** Sets p.grad to the given values. */
function setGrad(p: E.Tensor, values: number[]): void {
  const g = E.tensor(new Float64Array(values), p.shape, { dtype: 'float64' });
  p.grad = g;
  g.dispose();
}

test('AdamW matches its closed-form update over two steps', () => {
  E.tidy(() => {
    const lr = 0.01,
      wd = 0.1,
      beta1 = 0.9,
      beta2 = 0.999,
      eps = 1e-8;
    const start = [0.5, -1.5, 2];
    const grads = [
      [0.1, -0.2, 0.3],
      [-0.4, 0.5, 0.05],
    ];
    const p = E.tensor(new Float64Array(start), [3], { dtype: 'float64', requiresGrad: true });
    const optimizer = new E.AdamW([p], { lr, weightDecay: wd, betas: [beta1, beta2], eps });
    const expected = [...start];
    const m = [0, 0, 0];
    const v = [0, 0, 0];
    grads.forEach((g, step) => {
      setGrad(p, g);
      optimizer.step();
      const t = step + 1;
      for (let i = 0; i < 3; i++) {
        expected[i] *= 1 - lr * wd;
        m[i] = beta1 * m[i] + (1 - beta1) * g[i];
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
        const mHat = m[i] / (1 - beta1 ** t);
        const vHat = v[i] / (1 - beta2 ** t);
        expected[i] -= (lr * mHat) / (Math.sqrt(vHat) + eps);
      }
      assertClose(p.toArray(), expected, 1e-12, `AdamW step ${t}`);
    });
    optimizer.dispose();
  });
});

test('parameter groups: weight decay applies only where asked, and the learning rate can change per step', () => {
  E.tidy(() => {
    const decayed = E.ones([2], { dtype: 'float64', requiresGrad: true });
    const plain = E.ones([2], { dtype: 'float64', requiresGrad: true });
    const optimizer = new E.AdamW([{ params: [decayed] }, { params: [plain], weightDecay: 0 }], { lr: 0.1, weightDecay: 0.5 });
    // Zero gradients isolate the decay term: only the decayed group moves.
    setGrad(decayed, [0, 0]);
    setGrad(plain, [0, 0]);
    optimizer.step();
    assertClose(decayed.toArray(), [0.95, 0.95], 1e-12);
    assertClose(plain.toArray(), [1, 1], 1e-12);
    optimizer.setLr(0.2);
    setGrad(decayed, [0, 0]);
    optimizer.step();
    assertClose(decayed.toArray(), [0.95 * 0.9, 0.95 * 0.9], 1e-12);
    optimizer.zeroGrad();
    assert.equal(decayed.grad, undefined);
    optimizer.dispose();
  });
});

test('SGD with momentum and Nesterov matches torch.optim.SGD', () => {
  E.tidy(() => {
    const lr = 0.1,
      mu = 0.9,
      wd = 0.01;
    for (const nesterov of [false, true]) {
      const p = E.tensor(new Float64Array([1, -1]), [2], { dtype: 'float64', requiresGrad: true });
      const optimizer = new E.SGD([p], { lr, momentum: mu, nesterov, weightDecay: wd });
      const expected = [1, -1];
      const buffer = [0, 0];
      [
        [0.5, 0.25],
        [-0.5, 1],
      ].forEach((g, step) => {
        setGrad(p, g);
        optimizer.step();
        for (let i = 0; i < 2; i++) {
          const d = g[i] + wd * expected[i];
          buffer[i] = step === 0 ? d : mu * buffer[i] + d;
          expected[i] -= lr * (nesterov ? d + mu * buffer[i] : buffer[i]);
        }
        assertClose(p.toArray(), expected, 1e-12, `SGD nesterov=${nesterov} step ${step + 1}`);
      });
      optimizer.dispose();
    }
  });
});

test('optimizer state round-trips through stateDict', () => {
  E.tidy(() => {
    const run = (resumeAfter?: number) => {
      const p = E.tensor(new Float64Array([1, 2]), [2], { dtype: 'float64', requiresGrad: true });
      let optimizer = new E.AdamW([p], { lr: 0.1 });
      for (let step = 0; step < 4; step++) {
        if (step === resumeAfter) {
          const state = optimizer.stateDict();
          const fresh = new E.AdamW([p], { lr: 0.1 });
          fresh.loadStateDict(state);
          optimizer.dispose();
          optimizer = fresh;
        }
        setGrad(p, [step + 1, -step]);
        optimizer.step();
      }
      optimizer.dispose();
      return p.toArray();
    };
    assert.deepEqual(run(2), run());
  });
});

test('clipGradNorm scales gradients to the maximum global norm and reports the norm before clipping', () => {
  E.tidy(() => {
    const a = E.zeros([2], { dtype: 'float64', requiresGrad: true });
    const b = E.zeros([1], { dtype: 'float64', requiresGrad: true });
    setGrad(a, [3, 0]);
    setGrad(b, [4]);
    assertClose([E.clipGradNorm([a, b], 1).item()], [5], 1e-12);
    assertClose([...a.grad!.toArray(), ...b.grad!.toArray()], [0.6, 0, 0.8], 1e-6);
    assertClose([E.clipGradNorm([a, b], 10).item()], [1], 1e-6);
    assertClose(a.grad!.toArray(), [0.6, 0], 1e-6);
  });
});
