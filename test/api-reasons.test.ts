// Why an answer is uncertain: each reason from its own cause, the detector's arrays through a model file, and fitting the detector.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import * as E from '../src/engine/index.js';
import { type Classification, loadClassifier } from '../src/api/classifier.js';
import { fitDetector } from '../src/api/detector.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { readImageFile, type RgbImage } from '../src/data/image.js';
import { loadModel, type OodInfo, saveModel } from '../src/models/io.js';
import { createModel } from '../src/models/index.js';

const dir = mkdtempSync(path.join(tmpdir(), 'hemato-reasons-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const PBC = path.resolve('../shared/data/pbc');

async function modelFile(ood: { threshold: number } | OodInfo | null): Promise<string> {
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  const features = 320;
  const file = path.join(dir, `model-${ood ? ood.threshold : 'plain'}.safetensors`);
  await saveModel(file, model, {
    classes: [...PBC_CLASSES],
    normalization: IMAGENET_NORMALIZATION,
    uncertaintyThreshold: 0,
    preprocessing: {
      geometry: { field: 360, size: 64 },
      mpm: null,
      scale: { rbcDiameter: 73, rbcDiameterUm: 7.5, nucleusExtent: 114 },
      background: [255, 229, 202],
    },
    ood: ood && {
      kind: 'mahalanobis',
      pooling: 'pre-logits',
      validationFlagged: 0.04,
      features,
      means: new Float32Array(8 * features),
      precision: Float32Array.from({ length: features * features }, (_, i) => (i % (features + 1) === 0 ? 1 : 0)),
      ...ood,
    },
  });
  model.dispose();
  return file;
}

const classified = (r: Classification | { error: string }): Classification => {
  assert.ok(!('error' in r), JSON.stringify(r));
  return r as Classification;
};

test('the detector travels through the model file, apart from the state dict, and flags what lies beyond its threshold', async () => {
  const file = await modelFile({ threshold: 1e-9 });
  const { ood, model } = await loadModel(file);
  assert.ok(ood);
  assert.equal(ood.features, 320);
  assert.equal(ood.precision[0], 1);
  assert.ok(![...model.stateDict().keys()].some((k) => k.startsWith('hemato.')), 'the arrays are not weights');
  model.dispose();
  const classifier = await loadClassifier(file, { device: 'cpu', precision: 'fp32' });
  const cell = await readImageFile(path.join(PBC, 'neutrophil/BNE_101007.jpg'));
  const result = classified((await classifier.classifyBatch([cell]))[0]);
  assert.deepEqual(result.reasons, ['out-of-distribution']);
  assert.equal(result.uncertain, true);
  assert.equal(result.scale.source, 'red-cells');
  classifier.dispose();
});

test('each reason from its cause: an empty field has no single cell, a stated pixel size far from the model scale is out of range', async () => {
  const classifier = await loadClassifier(await modelFile(null), { device: 'cpu', precision: 'fp32' });
  const blank: RgbImage = { width: 200, height: 200, data: new Uint8Array(200 * 200 * 3).fill(230) };
  const cell = await readImageFile(path.join(PBC, 'neutrophil/BNE_101007.jpg'));
  const [empty, normal] = (await classifier.classifyBatch([blank, cell])).map(classified);
  assert.deepEqual(empty.reasons, ['no-single-cell']);
  assert.deepEqual(normal.reasons, []);
  assert.equal(normal.uncertain, false);
  classifier.dispose();
  const far = await loadClassifier(await modelFile(null), { device: 'cpu', precision: 'fp32', pixelSize: 1 });
  const out = classified((await far.classifyBatch([cell]))[0]);
  assert.ok(out.reasons.includes('scale-out-of-range'), JSON.stringify(out));
  assert.deepEqual(out.scale.source, 'given');
  far.dispose();
  const strict = await loadClassifier(await modelFile(null), { device: 'cpu', precision: 'fp32', uncertaintyThreshold: 1 });
  assert.ok(classified((await strict.classifyBatch([cell]))[0]).reasons.includes('low-confidence'));
  strict.dispose();
});

test('fitDetector: statistics from training images, a threshold that flags the chosen share of validation images', async () => {
  const classifier = await loadClassifier(await modelFile(null), { device: 'cpu', precision: 'fp32' });
  const items = (per: number, offset: number) =>
    PBC_CLASSES.flatMap((label) => {
      const folder = path.join(PBC, label);
      return readdirSync(folder)
        .filter((f) => f.endsWith('.jpg'))
        .sort()
        .slice(offset, offset + per)
        .map((file) => ({ file: `${label}/${file}`, path: path.join(folder, file), label }));
    });
  const preLogits = await fitDetector(classifier, items(3, 0), items(3, 3), { flagged: 0.25, pooling: 'pre-logits' });
  assert.equal(preLogits.features, 320);
  assert.equal(preLogits.means.length, 8 * 320);
  assert.equal(preLogits.precision.length, 320 * 320);
  // By default, the standard deviations of ConvNeXt-atto's four stages: 40 + 80 + 160 + 320 channels.
  const ood = await fitDetector(classifier, items(3, 0), items(3, 3), { flagged: 0.25 });
  assert.equal(ood.pooling, 'stage-std');
  assert.equal(ood.features, 600);
  assert.equal(ood.precision[40 * 600 + 39], 0, 'stages are fitted apart: no precision between them');
  for (const detector of [preLogits, ood]) {
    assert.ok(detector.threshold > 0 && Number.isFinite(detector.threshold));
    assert.ok(detector.validationFlagged > 0 && detector.validationFlagged <= 0.25, `${detector.validationFlagged}`);
  }
  classifier.dispose();
  // Classification computes the features as fitting did: the same validation images are flagged at the same rate.
  const fitted = await loadClassifier(await modelFile(ood), { device: 'cpu', precision: 'fp32' });
  const results = (await fitted.classifyBatch(items(3, 3).map((i) => i.path))).map(classified);
  const flagged = results.filter((r) => r.reasons.includes('out-of-distribution')).length / results.length;
  // The image at the threshold may fall either side by rounding.
  assert.ok(Math.abs(flagged - ood.validationFlagged) <= 1 / results.length, `${flagged} vs ${ood.validationFlagged}`);
  fitted.dispose();
});
