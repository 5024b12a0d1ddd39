// Parity with OpenCV 4.6's own outputs on four PBC images (../shared/fixtures/opencv).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import sharp from 'sharp';
import { parseNpy } from '../src/data/npy.js';
import { type GrayImage, loadImageOps } from '../src/preprocess/ops.js';

const FIXTURES = path.resolve('../shared/fixtures/opencv');
const cases: { stem: string }[] = JSON.parse(readFileSync(path.join(FIXTURES, 'opencv_fixtures.json'), 'utf8')).cases;

async function readGray(file: string): Promise<GrayImage> {
  const { data, info } = await sharp(path.join(FIXTURES, file)).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
  assert.equal(info.channels, 1, `${file} should be single-channel`);
  return { width: info.width, height: info.height, data: new Uint8Array(data) };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

test('four fixture cases are present', () => {
  assert.equal(cases.length, 4);
});

test('ellipse structuring element equals getStructuringElement(MORPH_ELLIPSE, (7,7))', async () => {
  const ops = await loadImageOps();
  const expected = parseNpy(readFileSync(path.join(FIXTURES, 'ellipse_7.npy')));
  assert.deepEqual(expected.shape, [7, 7]);
  assert.deepEqual([...ops.ellipseKernel(7).data], [...expected.data]);
});

for (const { stem } of cases) {
  test(`${stem}: CLAHE (clip 2, 8×8 tiles; clip 4, 4×4 tiles) within ±1 grey level`, async () => {
    const ops = await loadImageOps();
    const L = await readGray(`${stem}.L.png`);
    for (const [clip, tiles] of [
      [2, 8],
      [4, 4],
    ]) {
      const expected = await readGray(`${stem}.clahe_c${clip}_t${tiles}.png`);
      const diff = maxAbsDiff(ops.clahe(L, clip, tiles).data, expected.data);
      assert.ok(diff <= 1, `clahe c${clip} t${tiles}: max diff ${diff}`);
    }
  });

  test(`${stem}: GaussianBlur σ=15, BORDER_REFLECT_101 within 1e-3`, async () => {
    const ops = await loadImageOps();
    const L = await readGray(`${stem}.L.png`);
    const expected = parseNpy(readFileSync(path.join(FIXTURES, `${stem}.gauss_s15.npy`)));
    assert.deepEqual(expected.shape, [L.height, L.width]);
    const blurred = ops.gaussianBlur({ width: L.width, height: L.height, data: Float32Array.from(L.data) }, 15);
    const diff = maxAbsDiff(blurred.data, expected.data);
    assert.ok(diff <= 1e-3, `gauss max diff ${diff}`);
  });

  test(`${stem}: top-hat and black-hat with 7 and 15 px ellipses match exactly`, async () => {
    const ops = await loadImageOps();
    const L = await readGray(`${stem}.L.png`);
    for (const size of [7, 15]) {
      assert.deepEqual(ops.topHat(L, size).data, (await readGray(`${stem}.tophat_e${size}.png`)).data, `tophat e${size}`);
      assert.deepEqual(ops.blackHat(L, size).data, (await readGray(`${stem}.blackhat_e${size}.png`)).data, `blackhat e${size}`);
    }
  });
}
