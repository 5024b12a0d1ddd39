// Stain strength normalisation: a paler or darker stain is brought back into the training range, images inside
// it are left as they are, and images with nothing stained pass through.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { resizeRgb } from '../src/data/geometry.js';
import { type RgbImage, readImageFile } from '../src/data/image.js';
import { type InputRecipe, validateInputRecipe } from '../src/data/prepare.js';
import { backgroundColour } from '../src/data/scale.js';
import { normaliseStain, raisedToTypical, type StainRange, stainRangeOf, stainStrengths } from '../src/data/stain.js';
import { stain } from '../src/eval/shifts.js';

const PBC = path.resolve('../shared/data/pbc');
const FILES = ['neutrophil/BNE_101082.jpg', 'lymphocyte/LY_10361.jpg', 'eosinophil/EO_101772.jpg', 'monocyte/MO_102400.jpg'];

async function cells(): Promise<RgbImage[]> {
  return Promise.all(FILES.map(async (f) => resizeRgb(await readImageFile(path.join(PBC, f)), 128)));
}

const strengths = (image: RgbImage) => stainStrengths(image, backgroundColour(image));
const meanAbsDifference = (a: RgbImage, b: RgbImage) => a.data.reduce((sum, v, i) => sum + Math.abs(v - b.data[i]), 0) / a.data.length;

test('a paler and a darker stain are brought back towards the training range, and closer to the original', async () => {
  const images = await cells();
  const range: StainRange = stainRangeOf(images.map(strengths));
  for (const [i, image] of images.entries()) {
    for (const factor of [0.5, 1.4]) {
      const shifted = stain(image, factor);
      const restored = normaliseStain(shifted, backgroundColour(shifted), range);
      const [h, e] = strengths(restored);
      if (factor < 1) {
        assert.ok(h >= range.haematoxylin[0] * 0.97 && h <= range.haematoxylin[1] * 1.03, `${FILES[i]} × ${factor}: haematoxylin ${h}`);
        assert.ok(e >= range.eosin[0] * 0.97 && e <= range.eosin[1] * 1.03, `${FILES[i]} × ${factor}: eosin ${e}`);
      } else {
        // A darker stain saturates the darkest pixels, which no gain restores: the strengths only come down.
        const [hs, es] = strengths(shifted);
        assert.ok(h < hs && e < es, `${FILES[i]} × ${factor}: ${[hs, es]} → ${[h, e]}`);
      }
      assert.ok(meanAbsDifference(restored, image) < 0.6 * meanAbsDifference(shifted, image), `${FILES[i]} × ${factor}: closer to the original`);
    }
  }
});

test('an image inside the range, or with nothing stained, is left exactly as it is', async () => {
  const [image] = await cells();
  const [h, e] = strengths(image);
  const wide: StainRange = { haematoxylin: [h / 2, h * 2], eosin: [e / 2, e * 2] };
  assert.equal(normaliseStain(image, backgroundColour(image), wide), image);
  const blank: RgbImage = { width: 32, height: 32, data: new Uint8Array(32 * 32 * 3).fill(230) };
  assert.deepEqual(strengths(blank), [0, 0]);
  assert.equal(normaliseStain(blank, backgroundColour(blank), wide), blank);
});

test('the range runs from the 2nd to the 98th percentile of the training strengths; the median is the typical strength', () => {
  const strengths = Array.from({ length: 101 }, (_, i): [number, number] => [i / 50, i / 100]);
  const range = stainRangeOf(strengths);
  assert.deepEqual(range, { haematoxylin: [0.04, 1.96], eosin: [0.02, 0.98], typical: [1, 0.5] });
  // Raised to the typical strength: a paler stain is brought up to it, the darkest edge stays.
  assert.deepEqual(raisedToTypical(range), { haematoxylin: [1, 1.96], eosin: [0.5, 0.98], typical: [1, 0.5] });
  const older: StainRange = { haematoxylin: [0.04, 1.96], eosin: [0.02, 0.98] };
  assert.equal(raisedToTypical(older), older);
});

test('a model recipe with a malformed stain range is refused with what was found', () => {
  const recipe: InputRecipe = { geometry: { field: 360, size: 128 }, mpm: null, scale: null, background: null, stain: null };
  assert.doesNotThrow(() => validateInputRecipe({ ...recipe, stain: { haematoxylin: [0.9, 2.4], eosin: [0.4, 1.7] } }));
  for (const stainRange of [{ haematoxylin: [2.4, 0.9], eosin: [0.4, 1.7] }, { haematoxylin: [0.9, 2.4] }, { haematoxylin: [0, 1], eosin: [0.4, 1.7] }])
    assert.throws(() => validateInputRecipe({ ...recipe, stain: stainRange as StainRange }), /stain needs haematoxylin and eosin ranges/);
});
