// Why an answer is uncertain: each reason from its own cause, the detector's arrays through a model file, and fitting the detector.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import * as E from '../src/engine/index.js';
import { type Classification, type Classifier, loadClassifier } from '../src/api/classifier.js';
import { fitDetector, fitScaleFromFeatures } from '../src/api/detector.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { readImageFile, type RgbImage } from '../src/data/image.js';
import type { StainRange } from '../src/data/stain.js';
import { scoreItems } from '../src/api/evaluate.js';
import { magnify, stain } from '../src/eval/shifts.js';
import { type FeatureScale, loadModel, type OodInfo, saveModel } from '../src/models/io.js';
import { createModel } from '../src/models/index.js';

const dir = mkdtempSync(path.join(tmpdir(), 'hemato-reasons-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const PBC = path.resolve('../shared/data/pbc');

/** PBC's stain range as the bundled model records it, with the typical (median) strengths the second look raises to. */
const STAIN: StainRange = { haematoxylin: [0.94, 2.4], eosin: [0.46, 1.74], typical: [2.24, 1.35] };

let files = 0;

/** A seeded model file; `readsAs` biases its head so that it reads every image as that class. */
async function modelFile(
  ood: { threshold: number; means?: Float32Array } | OodInfo | null,
  stain: StainRange | null = null,
  readsAs?: string,
  featureScale?: FeatureScale,
): Promise<string> {
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  if (readsAs) {
    const bias = new Float32Array(8);
    bias[PBC_CLASSES.indexOf(readsAs as (typeof PBC_CLASSES)[number])] = 100;
    E.noGrad(() => new Map(model.namedParameters()).get('head.fc.bias')!.copy_(E.tensor(bias, [8])));
  }
  const features = 320;
  const file = path.join(dir, `model-${files++}.safetensors`);
  await saveModel(file, model, {
    classes: [...PBC_CLASSES],
    normalization: IMAGENET_NORMALIZATION,
    uncertaintyThreshold: 0,
    preprocessing: {
      geometry: { field: 360, size: 64 },
      mpm: null,
      scale: { rbcDiameter: 73, rbcDiameterUm: 7.5, nucleusExtent: 114 },
      background: [255, 229, 202],
      stain,
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
    featureScale,
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

/** `per` PBC images of each class, from the `offset`-th of each class folder's sorted listing. */
const items = (per: number, offset: number) =>
  PBC_CLASSES.flatMap((label) => {
    const folder = path.join(PBC, label);
    return readdirSync(folder)
      .filter((f) => f.endsWith('.jpg'))
      .sort()
      .slice(offset, offset + per)
      .map((file) => ({ file: `${label}/${file}`, path: path.join(folder, file), label }));
  });

test('fitDetector: statistics from training images, a threshold that flags the chosen share of validation images', async () => {
  const classifier = await loadClassifier(await modelFile(null), { device: 'cpu', precision: 'fp32' });
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

test("fitScaleFromFeatures: a regression on the stages' statistics of magnified training images, which classification applies", async () => {
  const classifier = await loadClassifier(await modelFile(null), { device: 'cpu', precision: 'fp32' });
  const fit = await fitScaleFromFeatures(classifier, items(2, 0));
  classifier.dispose();
  assert.equal(fit.pooling, 'stage-std');
  assert.equal(fit.weights.length, 600);
  assert.ok([fit.bias, ...fit.weights].every(Number.isFinite));
  // Saved in the model file, it gives each image an estimate: the magnification its features say.
  const fitted = await loadClassifier(await modelFile({ threshold: 1e9 }, null, undefined, fit), { device: 'cpu', precision: 'fp32' });
  assert.deepEqual(fitted.metadata.featureScale, fit);
  const image = await fitted.prepare(path.join(PBC, 'neutrophil/BNE_112944.jpg'));
  const scores = fitted.score([image.image, image.image]);
  assert.equal(scores.magnifications?.length, 2);
  assert.ok(scores.magnifications!.every((m) => m > 0 && Number.isFinite(m)));
  fitted.dispose();
});

const FP32 = { device: 'cpu', precision: 'fp32' } as const;

/**
 * Features part of the way (t) from one reading's to another's: a detector centred there passes both, and finds the
 * second closer than the first by ((1 − t) / t)².
 */
const between = (from: Float32Array, to: Float32Array, t: number) => from.map((v, i) => v + t * (to[i] - v));

/** A classifier that reads every image as `readsAs`, with a detector centred on `centre` that passes everything. */
async function centredClassifier(centre: Float32Array, readsAs: string, featureScale?: FeatureScale) {
  const means = new Float32Array(8 * centre.length);
  for (let c = 0; c < 8; c++) means.set(centre, c * centre.length);
  return loadClassifier(await modelFile({ threshold: 1e9, means }, STAIN, readsAs, featureScale), FP32);
}

/**
 * An image prepared as given and as one second look prepares it, by a model that reads every image as `readsAs`.
 * `answer(t)` classifies the image with a detector centred part of the way (t) from the first reading's features to
 * the second's, and says whether `read` returned the second reading (its logits exactly) or the first.
 */
async function twoReadings(image: RgbImage, how: Parameters<Classifier['prepare']>[1], readsAs: string, featureScale?: FeatureScale) {
  const probe = await loadClassifier(await modelFile({ threshold: 1e9 }, STAIN, readsAs, featureScale), FP32);
  const [asGiven, again] = [await probe.prepare(image), await probe.prepare(image, how)];
  const [first, second] = [probe.score([asGiven.image]), probe.score([again.image])];
  probe.dispose();
  const answer = async (t: number, reader = readsAs) => {
    const classifier = await centredClassifier(between(first.features, second.features, t), reader, featureScale);
    try {
      const result = classified((await classifier.classifyBatch([image]))[0]);
      const read = Array.from((await classifier.read([asGiven], () => image)).logits);
      const [asFirst, asSecond] = [asGiven, again].map((p) => Array.from(classifier.score([p.image]).logits));
      assert.ok(isDeepStrictEqual(read, asFirst) || isDeepStrictEqual(read, asSecond), 'read answers with one of the two readings');
      return { result, second: isDeepStrictEqual(read, asSecond) };
    } finally {
      classifier.dispose();
    }
  };
  return { asGiven, again, answer };
}

/**
 * A second reading with a margin of 0.6 (ARC_SCALE_CLOSER, LARGE_NUCLEUS_CLOSER): closer by a factor 0 (t = 1) or
 * 0.44 (t = 0.6) it is taken, at the scale `source` its look gives; by 0.67 (t = 0.55) it is not.
 */
async function assertTakenUnderSixTenths(answer: Awaited<ReturnType<typeof twoReadings>>['answer'], source: string, what: string) {
  for (const { t, taken } of [
    { t: 1, taken: true },
    { t: 0.6, taken: true },
    { t: 0.55, taken: false },
  ]) {
    const { result, second } = await answer(t);
    assert.equal(result.scale.source, taken ? source : 'none', `t = ${t}: ${what} ${taken ? 'taken' : 'not taken'}`);
    assert.equal(second, taken);
  }
}

test('second look: a pale image read as a platelet field is read again where the detector passes it, if the raised image is twice as close', async () => {
  const pale = stain(await readImageFile(path.join(PBC, 'neutrophil/BNE_101082.jpg')), 0.4);
  const { answer } = await twoReadings(pale, { raisePaleStain: true }, 'platelet');
  // The raised reading closer by a factor 0 (t = 1) or 0.67 (t = 0.55).
  const cases = [
    { readsAs: 'platelet', t: 1, taken: true },
    { readsAs: 'platelet', t: 0.55, taken: false },
    { readsAs: 'lymphocyte', t: 1, taken: false },
  ];
  for (const { readsAs, t, taken } of cases) {
    const { result, second } = await answer(t, readsAs);
    assert.equal(result.stain, taken ? 'raised' : 'recipe', `read as ${readsAs}, the raised reading ${taken ? 'taken' : 'not taken'}`);
    assert.equal(second, taken);
    assert.ok(!result.reasons.includes('out-of-distribution'));
  }
});

test('second look: a platelet reading of an image without a scale, not pale, is read with its undersized nucleus setting the scale, if closer', async () => {
  // A darker-stained basophil shown at half its size, without a red cell to measure: nothing to raise, and a
  // nucleus about half the reference's.
  const halved = await magnify(stain(await readImageFile(path.join(PBC, 'basophil/BA_661119.jpg')), 1.3), 0.5);
  const { asGiven, again: rescaled, answer } = await twoReadings(halved, { undersizedNucleusScale: true }, 'platelet');
  assert.equal(asGiven.scale.source, 'none');
  assert.equal(rescaled.scale.source, 'white-cell');
  assert.ok(rescaled.scale.factor > 1.6, `factor ${rescaled.scale.factor}`);
  // The rescaled reading closer by a factor 0 (t = 1) or 0.67 (t = 0.55), or farther by 1.49 (t = 0.45). The stain
  // is not paler than the typical one, so there is nothing to raise.
  const cases = [
    { readsAs: 'platelet', t: 1, taken: true },
    { readsAs: 'platelet', t: 0.55, taken: true },
    { readsAs: 'platelet', t: 0.45, taken: false },
    { readsAs: 'basophil', t: 1, taken: false },
  ];
  for (const { readsAs, t, taken } of cases) {
    const { result, second } = await answer(t, readsAs);
    assert.equal(result.scale.source, taken ? 'white-cell' : 'none', `read as ${readsAs}, the rescaled reading ${taken ? 'taken' : 'not taken'}`);
    assert.equal(second, taken);
    assert.equal(result.stain, 'recipe');
  }
});

test('second look: an image read without a scale is read at the scale of the red-cell arcs cut by its edge, if clearly closer', async () => {
  // A platelet field enlarged twice: no whole red cell is left to measure, and its platelets stained like a nucleus
  // are smaller than the reference's nucleus, but the red cells cut by the edge show the scale.
  const enlarged = await magnify(await readImageFile(path.join(PBC, 'platelet/PLATELET_143278.jpg')), 2);
  const { asGiven, again: atArcs, answer } = await twoReadings(enlarged, { arcScale: true }, 'basophil');
  assert.equal(asGiven.scale.source, 'none');
  assert.ok(asGiven.measures?.arcDiameter, 'arcs measured');
  assert.equal(atArcs.scale.source, 'red-cells');
  assert.ok(atArcs.scale.factor > 0.4 && atArcs.scale.factor < 0.65, `factor ${atArcs.scale.factor}`);
  await assertTakenUnderSixTenths(answer, 'red-cells', "the arcs' reading");
});

test('second look: an image read without a scale, its nucleus large, is read at the nucleus scale, if clearly closer', async () => {
  // A lymphocyte's field enlarged 1.5 times: no arc of a red cell to measure, and a nucleus over 1.4 times the
  // reference's but not past what PBC shows at its own scale.
  const enlarged = await magnify(await readImageFile(path.join(PBC, 'lymphocyte/LY_158006.jpg')), 1.5);
  const { asGiven, again: atNucleus, answer } = await twoReadings(enlarged, { largeNucleusScale: true }, 'basophil');
  assert.equal(asGiven.scale.source, 'none');
  assert.equal(asGiven.measures?.arcDiameter, null);
  assert.equal(atNucleus.scale.source, 'white-cell');
  assert.ok(atNucleus.scale.factor > 0.6 && atNucleus.scale.factor < 0.85, `factor ${atNucleus.scale.factor}`);
  await assertTakenUnderSixTenths(answer, 'white-cell', "the nucleus scale's reading");
});

test('second look: an image read without a scale is read at the scale its features estimate, where that is beyond the noise, if closer', async () => {
  // A neutrophil's field without a red cell to measure, no arcs and an ordinary nucleus: nothing else gives it a
  // scale. A scale estimate that calls every image 1.6 times enlarged reads it again shrunk by that much.
  const image = await readImageFile(path.join(PBC, 'neutrophil/BNE_112944.jpg'));
  const enlarged = (m: number): FeatureScale => ({ pooling: 'pre-logits', bias: Math.log(m), weights: new Array(320).fill(0) });
  const { asGiven, again, answer } = await twoReadings(image, { appearanceFactor: 1 / 1.6 }, 'basophil', enlarged(1.6));
  assert.equal(asGiven.scale.source, 'none');
  assert.deepEqual(again.scale, { source: 'appearance', um_per_px: (7.5 / 73) * 0.625, factor: 0.625 });
  // Closer by a factor 0 (t = 1) or 0.67 (t = 0.55) it is taken; by 0.82 (t = 0.525), short of the 0.7 margin, or
  // farther by 1.49 (t = 0.45) it is not.
  for (const { t, taken } of [
    { t: 1, taken: true },
    { t: 0.55, taken: true },
    { t: 0.525, taken: false },
    { t: 0.45, taken: false },
  ]) {
    const { result, second } = await answer(t);
    assert.equal(result.scale.source, taken ? 'appearance' : 'none', `t = ${t}: the features' scale ${taken ? 'taken' : 'not taken'}`);
    assert.equal(second, taken);
  }
  // An estimate within 20 % of the training scale takes no second look.
  const near = await centredClassifier(new Float32Array(320), 'basophil', enlarged(1.15));
  assert.equal(classified((await near.classifyBatch([image]))[0]).scale.source, 'none');
  near.dispose();
  // Nor is the reading taken where it sees a platelet field: shrunk into padding, a white cell from another lab
  // looks like one, and closer to the training images whatever its cell. A detector centred on the reading itself.
  const probe = await loadClassifier(await modelFile({ threshold: 1e9 }, null, 'platelet'), FP32);
  const features = probe.score([again.image]).features;
  probe.dispose();
  for (const [readsAs, source] of [
    ['platelet', 'none'],
    ['basophil', 'appearance'],
  ]) {
    const means = new Float32Array(8 * 320);
    for (let c = 0; c < 8; c++) means.set(features, c * 320);
    const classifier = await loadClassifier(await modelFile({ threshold: 1e9, means }, null, readsAs, enlarged(1.6)), FP32);
    assert.equal(classified((await classifier.classifyBatch([image]))[0]).scale.source, source, `read as ${readsAs}`);
    classifier.dispose();
  }
});

test('second look: an out-of-distribution image paler than the typical training stain is read again with the stain raised', async () => {
  const file = path.join(PBC, 'neutrophil/BNE_101082.jpg');
  const image = await readImageFile(file);
  const [pale, darker] = [stain(image, 0.4), stain(image, 1.3)];
  const flagsAll = await loadClassifier(await modelFile({ threshold: 1e-9 }, STAIN), { device: 'cpu', precision: 'fp32' });
  const answers = (await flagsAll.classifyBatch([pale, darker])).map(classified);
  for (const [i, input] of [pale, darker].entries()) {
    const [asGiven, raised] = [await flagsAll.prepare(input), await flagsAll.prepare(input, { raisePaleStain: true })];
    const changed = Buffer.compare(asGiven.image.data, raised.image.data) !== 0;
    // A stain paler than the typical one is raised; a stronger one leaves nothing to raise.
    assert.equal(changed, input === pale);
    const [first, second] = [flagsAll.score([asGiven.image]), flagsAll.score([raised.image])];
    // The raised reading is taken where the detector finds the raised image closer to the training images.
    const taken = changed && second.distances![0] < first.distances![0];
    assert.equal(answers[i].stain, taken ? 'raised' : 'recipe');
    const { logits } = await flagsAll.read([asGiven], () => input);
    assert.deepEqual(Array.from(logits), Array.from((taken ? second : first).logits));
    // An image that cannot be read again keeps its first reading.
    const unreadable = await flagsAll.read([asGiven], () => new Uint8Array([1, 2, 3]));
    assert.deepEqual(Array.from(unreadable.logits), Array.from(first.logits));
    assert.equal(unreadable.prepared[0].stain, 'recipe');
    // The second look changes the label, never the flag: the image as given was unlike the training images.
    assert.ok(answers[i].reasons.includes('out-of-distribution'));
  }
  assert.equal(answers[0].stain, 'raised', 'this seeded model finds the raised pale image closer');
  // Evaluation reads images as classification does.
  const item = { path: file, file: 'neutrophil/BNE_101082.jpg', label: 'neutrophil' };
  const scored = await scoreItems(flagsAll, [item], { transform: async (x) => stain(x, 0.4) });
  assert.deepEqual(scored.stains, ['raised']);
  // No second look where the detector passes an image read as a cell with a nucleus, or the model records no
  // typical stain (older files).
  const passesAll = await loadClassifier(await modelFile({ threshold: 1e9 }, STAIN, 'neutrophil'), { device: 'cpu', precision: 'fp32' });
  const older = await loadClassifier(await modelFile({ threshold: 1e-9 }, { ...STAIN, typical: undefined }), { device: 'cpu', precision: 'fp32' });
  for (const classifier of [passesAll, older]) assert.equal(classified((await classifier.classifyBatch([pale]))[0]).stain, 'recipe');
  for (const classifier of [flagsAll, passesAll, older]) classifier.dispose();
});
