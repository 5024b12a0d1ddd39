// Every registered variant: output shapes, and a training step's gradient reaching every parameter, at the input
// sizes the project uses. Batches are small and the heaviest models run at one size to keep the suite fast.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { createModel, listModels, type ImageClassifier, type ModelOptions } from '../src/models/index.js';
import { maxAbsDiff } from './helpers.js';

const SIZES = [64, 96, 128, 224];
const NUM_CLASSES = 8;

/** The features each variant returns: [channels, layout]. */
const FEATURES: Record<string, [number, 'NCHW' | 'NHWC']> = {
  dualpath_atto: [256, 'NHWC'],
  dualpath_tiny: [768, 'NHWC'],
  dualpath_concat_atto: [320 + 256, 'NHWC'],
  dualpath_concat_tiny: [768 + 768, 'NHWC'],
  convnext_only_atto: [320, 'NHWC'],
  convnext_only_tiny: [768, 'NHWC'],
  swin_only_atto: [256, 'NHWC'],
  swin_only_tiny: [768, 'NHWC'],
  convnext_atto: [320, 'NCHW'],
  convnext_femto: [384, 'NCHW'],
  convnext_pico: [512, 'NCHW'],
  convnext_nano: [640, 'NCHW'],
  convnext_atto_ols: [320, 'NCHW'],
  convnext_femto_ols: [384, 'NCHW'],
  convnext_pico_ols: [512, 'NCHW'],
  convnext_nano_ols: [640, 'NCHW'],
  convnext_tiny: [768, 'NCHW'],
  convnext_small: [768, 'NCHW'],
  swin_atto: [256, 'NHWC'],
  swin_tiny_patch4_window7_224: [768, 'NHWC'],
  swin_small_patch4_window7_224: [768, 'NHWC'],
};

/** The small models train at every size; the large ones at the smallest only (each takes seconds on 2 cores). */
const SMALL = new Set(['dualpath_atto', 'dualpath_concat_atto', 'convnext_only_atto', 'swin_only_atto', 'convnext_atto']);

function expectedFeatureShape(name: string, batch: number, size: number): number[] {
  const [channels, layout] = FEATURES[name];
  const side = size / 32;
  return layout === 'NCHW' ? [batch, channels, side, side] : [batch, side, side, channels];
}

/**
 * One training step's forward and backward at batch size `batch`. Checks the feature and logit shapes on the way
 * and returns the names of parameters whose gradient is missing, zero or not finite.
 */
function parametersWithoutGradient(name: string, model: ImageClassifier, batch: number, size: number): string[] {
  model.train();
  const x = E.randn([batch, 3, size, size], { seed: size });
  const target = E.tensor(
    Array.from({ length: batch }, (_, i) => i % NUM_CLASSES),
    [batch],
    { dtype: 'int64' },
  );
  const loss = E.tidy(() => {
    const features = model.forwardFeatures(x);
    assert.deepEqual(features.shape, expectedFeatureShape(name, batch, size), `${name} features at ${size} px`);
    const logits = model.forwardHead(features);
    assert.deepEqual(logits.shape, [batch, NUM_CLASSES]);
    return E.F.crossEntropy(logits, target);
  });
  loss.backward();
  E.dispose([x, target, loss]);
  const named = model.namedParameters();
  const grads = named.map(([, p]) => p.grad);
  const magnitudes = E.tidy(() => E.stack(grads.map((g) => (g ? g.abs().sum() : E.scalar(0)))).toArray());
  E.dispose(grads);
  for (const [, p] of named) p.grad = undefined;
  return named.filter((_, i) => !(magnitudes[i] > 0 && Number.isFinite(magnitudes[i]))).map(([key]) => key);
}

function check(name: string, size: number, batch: number, options: Partial<ModelOptions> = {}): void {
  E.manualSeed(0);
  const model = createModel(name, { numClasses: NUM_CLASSES, inputSize: size, ...options });
  try {
    const live = E.liveTensors();
    assert.deepEqual(parametersWithoutGradient(name, model, batch, size), [], `${name} at ${size} px: parameters without gradient`);
    assert.equal(E.liveTensors(), live, `${name}: no tensor outlives the forward and backward passes`);
  } finally {
    model.dispose();
  }
}

test('the registry lists every variant this test covers', () => {
  assert.deepEqual(listModels().sort(), Object.keys(FEATURES).sort());
  assert.throws(() => createModel('convnext_huge', { numClasses: 2 }), /unknown model 'convnext_huge'; choose one of: convnext_atto, /);
  assert.throws(() => createModel('dualpath-atto', { numClasses: 2, inputSize: 100 }), /multiple of 32/);
});

for (const name of SMALL) {
  for (const size of SIZES) {
    test(`${name} at ${size} px: shapes and gradients`, () => check(name, size, size <= 96 ? 2 : 1));
  }
}

for (const name of Object.keys(FEATURES).filter((n) => !SMALL.has(n))) {
  test(`${name} at 64 px: shapes and gradients`, () => check(name, 64, 1));
}

test('dualpath_atto with iterative AFF at 128 px: shapes and gradients', () => check('dualpath_atto', 128, 1, { iterativeAff: true }));

test("forwardIntermediates: each stage's map, NCHW, with the channels intermediateChannels names, and forwardFeatures' output", () => {
  for (const name of SMALL) {
    const model = createModel(name, { numClasses: NUM_CLASSES, inputSize: 64 }).eval();
    const x = E.randn([2, 3, 64, 64], { seed: 1 });
    E.tidy(() =>
      E.noGrad(() => {
        const { features, intermediates } = model.forwardIntermediates(x);
        assert.deepEqual(
          intermediates.map((map) => map.shape[1]),
          [...model.intermediateChannels],
          name,
        );
        for (const map of intermediates)
          assert.ok(map.ndim === 4 && map.shape[0] === 2 && map.shape[2] === map.shape[3] && 64 % map.shape[2] === 0, `${name}: [${map.shape}]`);
        assert.equal(maxAbsDiff(features.toArray(), model.forwardFeatures(x).toArray()), 0, `${name}: the same features as forwardFeatures`);
      }),
    );
    x.dispose();
    model.dispose();
  }
});

test('Swin models refuse inputs of another size than they were built for, saying what to do', () => {
  const model = createModel('swin-only', { numClasses: 2, inputSize: 128 }).eval();
  const x = E.zeros([1, 3, 96, 96]);
  assert.throws(() => E.noGrad(() => model.forward(x)), /built for 128×128 inputs and got 96×96; create the model with inputSize 96/);
  x.dispose();
  model.dispose();
});
