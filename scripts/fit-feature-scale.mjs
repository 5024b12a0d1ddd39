// Writes a copy of a model with the scale estimate from its features fitted as `hemato calibrate --ood` fits it (400
// of the split's training images, evenly spread, each magnified 1–3 times). The weights, calibration and detector stay
// as they are, to the bit: for a model already calibrated whose answers should not move otherwise.
// Usage: node scripts/fit-feature-scale.mjs DATA SPLIT MODEL OUT   (after npm run build:ts)
import path from 'node:path';
import * as E from '../dist/src/engine/index.js';
import { loadClassifier } from '../dist/src/api/classifier.js';
import { evenSample, FEATURE_SCALE_SAMPLE, fitScaleFromFeatures } from '../dist/src/api/detector.js';
import { readSplit } from '../dist/src/data/split.js';

const [data, split, model, out] = process.argv.slice(2);
if (!out) throw new Error('usage: node scripts/fit-feature-scale.mjs DATA SPLIT MODEL OUT');
if (path.resolve(out) === path.resolve(model)) throw new Error('OUT must be another file than MODEL');
const { rows } = await readSplit(split);
const train = rows.filter((r) => r.part === 'train').map((r) => ({ file: r.file, path: path.join(data, r.file), label: r.label }));
const classifier = await loadClassifier(model);
if (!classifier.recipe.scale) throw new Error(`${model} has no physical scale in its input recipe: there is nothing to estimate`);
const sample = evenSample(train, FEATURE_SCALE_SAMPLE);
const featureScale = await fitScaleFromFeatures(classifier, sample, {
  onProgress: (done, total) => process.stderr.write(`\rfitting the scale estimate from features ${done}/${total}`),
});
process.stderr.write('\n');
classifier.dispose();
const file = await E.loadSafetensors(model);
const info = JSON.parse(file.metadata.hemato);
await E.saveSafetensors(out, file.tensors, { ...file.metadata, hemato: JSON.stringify({ ...info, featureScale }) });
console.log(`${out}: the scale estimate from ${featureScale.weights.length} ${featureScale.pooling} features, fitted on ${sample.length} training images`);
