// MPM: configuration, what each stage does to images built to show it, batches, and the reduced illumination blur.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { toModelGeometry } from '../src/data/geometry.js';
import { type RgbImage, readImageFile } from '../src/data/image.js';
import { DEFAULT_MPM_CONFIG, elementSize, Mpm, type MpmConfigInput, resolveMpmConfig } from '../src/preprocess/mpm.js';
import { loadImageOps } from '../src/preprocess/ops.js';

const PBC = path.resolve('../shared/data/pbc');
const only = (stage: keyof typeof DEFAULT_MPM_CONFIG): MpmConfigInput => ({
  illumination: { enabled: stage === 'illumination' },
  colour: { enabled: stage === 'colour' },
  contrast: { enabled: stage === 'contrast' },
  morphology: { enabled: stage === 'morphology' },
});

function image(size: number, pixel: (x: number, y: number) => [number, number, number]): RgbImage {
  const data = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) data.set(pixel(x, y), (y * size + x) * 3);
  return { width: size, height: size, data };
}

test('config: defaults fill every field, survive JSON, and bad values are refused with the field named', () => {
  const config = resolveMpmConfig({ contrast: { clipLimit: 3 } });
  assert.equal(config.contrast.clipLimit, 3);
  assert.equal(config.contrast.tiles, DEFAULT_MPM_CONFIG.contrast.tiles);
  assert.deepEqual(JSON.parse(JSON.stringify(config)), config);
  assert.throws(() => resolveMpmConfig({ morphology: { scales: [0.02], weights: [1, 1] } }), /morphology.weights/);
  assert.throws(() => resolveMpmConfig({ contrast: { tiles: 0 } }), /contrast.tiles/);
  assert.throws(() => resolveMpmConfig({ illumination: { sigmas: [] } }), /illumination.sigmas/);
  assert.throws(() => resolveMpmConfig({ colour: { quantile: 1 } }), /colour.quantile/);
});

test("morphology scales are relative: the fixtures' 7 and 15 px ellipses at 360 px, 3 and 5 px at 128 px", () => {
  const [small, large] = DEFAULT_MPM_CONFIG.morphology.scales;
  assert.deepEqual([elementSize(small, 360), elementSize(large, 360)], [7, 15]);
  assert.deepEqual([elementSize(small, 128), elementSize(large, 128)], [3, 5]);
});

test('every stage off is the identity', async () => {
  const mpm = await Mpm.create({ illumination: { enabled: false }, colour: { enabled: false }, contrast: { enabled: false }, morphology: { enabled: false } });
  const input = image(32, (x, y) => [x * 8, y * 8, 100]);
  assert.deepEqual(mpm.apply(input).data, input.data);
});

test('illumination flattens a lamp gradient across an empty field', async () => {
  const mpm = await Mpm.create(only('illumination'));
  const input = image(128, (x) => {
    const v = 120 + x;
    return [v, v, v];
  });
  // Over the central half; at the borders the mirrored Gaussian flattens any estimate of a ramp.
  const spread = (img: RgbImage) => img.data[(64 * 128 + 96) * 3] - img.data[(64 * 128 + 32) * 3];
  const after = mpm.apply(input);
  assert.ok(spread(input) >= 60);
  assert.ok(Math.abs(spread(after)) < spread(input) / 2, `gradient ${spread(input)} → ${spread(after)}`);
});

test('white patch makes a yellow-cast background neutral and white, and keeps a purple cell purple', async () => {
  const mpm = await Mpm.create(only('colour'));
  const input = image(64, (x, y) => ((x - 32) ** 2 + (y - 32) ** 2 < 200 ? [110, 60, 150] : [235, 215, 170]));
  const out = mpm.apply(input);
  const [r, g, b] = out.data.subarray(0, 3);
  assert.ok(Math.max(r, g, b) - Math.min(r, g, b) <= 3, `background ${r},${g},${b} should be grey`);
  assert.ok(r > 225, `background ${r} should be near white`);
  const centre = out.data.subarray((32 * 64 + 32) * 3, (32 * 64 + 32) * 3 + 3);
  assert.ok(centre[2] > centre[1] + 40 && centre[0] > centre[1], `cell ${[...centre]} should stay purple`);
});

test('morphology brightens a bright speck, darkens a dark speck, leaves a flat field alone', async () => {
  const mpm = await Mpm.create(only('morphology'));
  const input = image(128, (x, y) => (x === 40 && y === 40 ? [200, 200, 200] : x === 90 && y === 90 ? [60, 60, 60] : [128, 128, 128]));
  const out = mpm.apply(input);
  const at = (x: number, y: number) => out.data[(y * 128 + x) * 3];
  assert.ok(at(40, 40) > 215, `bright speck ${at(40, 40)}`);
  assert.ok(at(90, 90) < 45, `dark speck ${at(90, 90)}`);
  assert.ok(Math.abs(at(10, 10) - 128) <= 1, `flat field ${at(10, 10)}`);
});

test('contact-sheet stages: original first, final equal to apply(), every stage the input size', async () => {
  const mpm = await Mpm.create();
  const input = await toModelGeometry(await readImageFile(path.join(PBC, 'basophil/BA_100102.jpg')));
  const stages = mpm.stages(input);
  assert.deepEqual(
    stages.map((s) => s.name),
    ['original', 'illumination-field', 'illumination', 'colour', 'contrast', 'morphology-detail', 'morphology'],
  );
  assert.deepEqual(stages.at(-1)!.image.data, mpm.apply(input).data);
  for (const stage of stages) assert.deepEqual([stage.image.width, stage.image.height, stage.image.data.length], [128, 128, 128 * 128 * 3]);
});

test('applyBatch equals apply on each image', async () => {
  const mpm = await Mpm.create();
  const a = await toModelGeometry(await readImageFile(path.join(PBC, 'platelet/PLATELET_100161.jpg')));
  const b = await toModelGeometry(await readImageFile(path.join(PBC, 'lymphocyte/LY_100275.jpg')));
  const batch = new Uint8Array(2 * a.data.length);
  batch.set(a.data, 0);
  batch.set(b.data, a.data.length);
  const out = mpm.applyBatch(batch, 2, 128);
  assert.deepEqual(out.subarray(0, a.data.length), mpm.apply(a).data);
  assert.deepEqual(out.subarray(a.data.length), mpm.apply(b).data);
  assert.throws(() => mpm.applyBatch(batch, 3, 128), /needs/);
});

test('the reduced-size illumination blur stays within one grey level of the full GaussianBlur', async () => {
  const mpm = await Mpm.create();
  const ops = await loadImageOps();
  const input = await toModelGeometry(await readImageFile(path.join(PBC, 'eosinophil/EO_10150.jpg')));
  const L = { width: 128, height: 128, data: Float32Array.from(ops.rgbToLab(input).L) };
  for (const sigma of DEFAULT_MPM_CONFIG.illumination.sigmas.map((s) => s * 128)) {
    const exact = ops.gaussianBlur(L, sigma).data;
    const fast = mpm.smoothBlur(L, sigma);
    let max = 0;
    for (let i = 0; i < exact.length; i++) max = Math.max(max, Math.abs(exact[i] - fast[i]));
    assert.ok(max < 1, `σ=${sigma}: max diff ${max}`);
  }
});
