// Writes a copy of a model whose input recipe white-balances to a data set's background colours and brings stain
// strength into its range, both measured as `hemato train` and `hemato pack` measure them (a seeded sample of 400 of
// the split's training images, prepared at the model's scale and field). The weights and the rest of the file stay
// as they are; calibrate the copy afterwards (its detector and thresholds were fitted to the old recipe's inputs).
// Usage: node scripts/refit-colour.mjs DATA SPLIT MODEL OUT   (after npm run build:ts)
import path from 'node:path';
import * as E from '../dist/src/engine/index.js';
import { inputRecipe } from '../dist/src/api/classifier.js';
import { measureReference } from '../dist/src/data/prepare.js';
import { readSplit } from '../dist/src/data/split.js';

const [data, split, model, out] = process.argv.slice(2);
if (!out) throw new Error('usage: node scripts/refit-colour.mjs DATA SPLIT MODEL OUT');
if (path.resolve(out) === path.resolve(model)) throw new Error('OUT must be another file than MODEL');
const { rows } = await readSplit(split);
const file = await E.loadSafetensors(model);
const info = JSON.parse(file.metadata.hemato);
const { geometry } = inputRecipe(info);
const { background, stain } = await measureReference(
  rows.filter((r) => r.part === 'train').map((r) => path.join(data, r.file)),
  { geometry },
);
info.preprocessing = { ...info.preprocessing, background, stain };
await E.saveSafetensors(out, file.tensors, { ...file.metadata, hemato: JSON.stringify(info) });
const range = ([low, high]) => `${low.toFixed(2)}–${high.toFixed(2)}`;
console.log(
  `${out}: ${background.length} background colours, median rgb(${background[0].join(', ')}); stain H ${range(stain.haematoxylin)}, E ${range(stain.eosin)}`,
);
