// One sha256 over what prepareImage gives the bundled model's recipe (pixels, scale, stain, cell measures): each
// image's first look and raised stain, and three shifts of each PBC image at the arcs' scale, over the first N PBC
// images of each class (default 40) and all of BCCD. A change meant to make preparation faster must leave it as
// it was. From the repository's root, after npm run build: node scripts/prepare-digest.mjs [N]
import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { loadClassifier } from '../dist/src/api/classifier.js';
import { readImageFile } from '../dist/src/data/image.js';
import { prepareImage } from '../dist/src/data/prepare.js';
import { PBC_CLASSES } from '../dist/src/data/dataset.js';
import { SHIFTS } from '../dist/src/eval/shifts.js';
const n = +(process.argv[2] ?? 40);
const pbc = PBC_CLASSES.flatMap((c) =>
  readdirSync(`../shared/data/pbc/${c}`)
    .filter((f) => f.endsWith('.jpg') && !f.startsWith('.'))
    .slice(0, n)
    .map((f) => `../shared/data/pbc/${c}/${f}`),
);
const bccdRoot = '../shared/data/external/bccd-wbc';
const bccd = readdirSync(bccdRoot).flatMap((c) =>
  readdirSync(`${bccdRoot}/${c}`)
    .filter((f) => !f.startsWith('.'))
    .map((f) => `${bccdRoot}/${c}/${f}`),
);
const c = await loadClassifier();
const shifts = ['paler-stain', 'magnification-2', 'darker-stain'].map((name) => SHIFTS.find((s) => s.name === name));
const hash = createHash('sha256');
const add = (p) => hash.update(p.image.data).update(JSON.stringify([p.scale, p.stain, p.measures]));
const t = performance.now();
for (const f of [...pbc, ...bccd]) {
  const image = await readImageFile(f);
  add(await prepareImage(image, c.recipe, { measure: true }));
  add(await prepareImage(image, c.recipe, { measure: true, raisePaleStain: true }));
  if (f.includes('/pbc/')) for (const s of shifts) add(await prepareImage(await s.apply(image), c.recipe, { measure: true, arcScale: true }));
}
console.log(JSON.stringify({ images: pbc.length + bccd.length, sha256: hash.digest('hex'), seconds: +((performance.now() - t) / 1000).toFixed(1) }));
