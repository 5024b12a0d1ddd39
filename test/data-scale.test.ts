// Physical scale from red cells, the padding rule, background white balance, and inputs with nothing to measure.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { resizeRgb } from '../src/data/geometry.js';
import { type RgbImage, readImageFile } from '../src/data/image.js';
import { chooseScale, type InputRecipe, prepareImage, type Rgb, SCALE_RANGE, scaleChannels, whiteBalance } from '../src/data/prepare.js';
import { backgroundColour, boxShrink, type CellMeasures, measureCells, showsOneCell } from '../src/data/scale.js';
import { stainRangeOf, stainStrengths } from '../src/data/stain.js';
import { magnify, stain } from '../src/eval/shifts.js';

const PBC = path.resolve('../shared/data/pbc');
const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1];

/** 25 images per class, spread evenly over each class folder's sorted listing. */
function sample(perClass: number): string[] {
  return readdirSync(PBC)
    .filter((c) => !c.startsWith('.'))
    .flatMap((c) => {
      const files = readdirSync(path.join(PBC, c))
        .filter((f) => f.endsWith('.jpg'))
        .sort();
      return Array.from({ length: perClass }, (_, i) => path.join(PBC, c, files[Math.floor((i * files.length) / perClass)]));
    });
}

const reference = { rbcDiameter: 73, rbcDiameterUm: 7.5, nucleusExtent: 114 };
// PBC's two backgrounds: cream, and the lavender of a few per cent of its images.
const CREAM: Rgb = [255, 229, 202];
const LAVENDER: Rgb = [229, 222, 229];
const recipe: InputRecipe = { geometry: { field: 360, size: 128 }, mpm: null, scale: reference, background: [CREAM, LAVENDER], stain: null };

test('red-cell diameters over 200 PBC images: most images measured, estimates near their median, and they follow a resize', async () => {
  const found: Record<'1' | '0.5' | '2', number[]> = { 1: [], 0.5: [], 2: [] };
  const files = sample(25);
  for (const file of files) {
    // PBC holds one file named .jpg that is not an image.
    const image = await readImageFile(file).catch(() => null);
    if (!image) continue;
    for (const s of [1, 0.5, 2] as const) {
      const resized = s === 1 ? image : await resizeRgb(image, Math.round(image.width * s), Math.round(image.height * s));
      const { rbcDiameter } = measureCells(resized);
      if (rbcDiameter) found[s].push(rbcDiameter / s);
    }
  }
  const centre = median(found[1]);
  assert.ok(centre > 65 && centre < 85, `median red-cell diameter ${centre} px`);
  assert.ok(found[1].length >= 0.7 * files.length, `${found[1].length} of ${files.length} images measured`);
  const within = (tolerance: number) => found[1].filter((d) => Math.abs(d / centre - 1) <= tolerance).length / found[1].length;
  // Red cells themselves vary by about ±10 % (RDW), and an image shows a handful: per-image estimates spread.
  assert.ok(within(0.1) >= 0.85, `${within(0.1)} within ±10 %`);
  assert.ok(within(0.05) >= 0.55, `${within(0.05)} within ±5 %`);
  for (const s of ['0.5', '2'] as const)
    assert.ok(Math.abs(median(found[s]) / centre - 1) <= 0.05, `after resizing by ${s}: median ${median(found[s])} vs ${centre}`);
});

test('an image shown at twice the size is brought back to the model scale: the same input as the original, closely', async () => {
  const image = await readImageFile(path.join(PBC, 'eosinophil/EO_101772.jpg'));
  const doubled = await resizeRgb(image, image.width * 2, image.height * 2);
  const a = await prepareImage(image, recipe);
  const b = await prepareImage(doubled, recipe);
  assert.equal(a.scale.source, 'red-cells');
  assert.ok(Math.abs(b.scale.factor / a.scale.factor - 0.5) < 0.03, `factors ${a.scale.factor}, ${b.scale.factor}`);
  let diff = 0;
  for (let i = 0; i < a.image.data.length; i++) diff += Math.abs(a.image.data[i] - b.image.data[i]);
  assert.ok(diff / a.image.data.length < 12, `mean absolute difference ${diff / a.image.data.length}`);
  // A stated pixel size wins over the estimate.
  const given = await prepareImage(image, recipe, { pixelSize: 0.2 });
  assert.deepEqual(given.scale.source, 'given');
  assert.ok(Math.abs(given.scale.factor - 0.2 / (7.5 / 73)) < 1e-9);
});

test('padding rule: a small image is padded with its own background colour, never with its edges', async () => {
  const image = await readImageFile(path.join(PBC, 'platelet/PLATELET_100161.jpg'));
  const shrunk = await magnify(image, 0.5);
  const { background } = measureCells(image);
  // The outer quarter of the shrunk image is pure background, whatever the original's edge pixels were.
  for (const [x, y] of [
    [2, 2],
    [shrunk.width - 3, 5],
    [5, shrunk.height - 3],
  ]) {
    assert.deepEqual([...shrunk.data.subarray((y * shrunk.width + x) * 3, (y * shrunk.width + x) * 3 + 3)], background);
  }
  // A tiny crop of a cell, scaled to the training field, is surrounded by background in the model input.
  const tiny: RgbImage = { width: 40, height: 40, data: new Uint8Array(40 * 40 * 3).fill(90) };
  const prepared = await prepareImage(tiny, { ...recipe, background: null }, { pixelSize: 0.1 });
  const corner = [...prepared.image.data.subarray(0, 3)];
  assert.deepEqual(corner, [...measureCells(tiny).background], 'the corner is the background colour, not a repeated edge');
});

test('white balance: a yellow cast is taken out before the model sees the image', async () => {
  const image = await readImageFile(path.join(PBC, 'neutrophil/BNE_101007.jpg'));
  const cast = scaleChannels(image, [1, 0.95, 0.8]);
  const a = await prepareImage(image, recipe);
  const b = await prepareImage(cast, recipe);
  const mean = (img: RgbImage, c: number) => img.data.filter((_, i) => i % 3 === c).reduce((p, q) => p + q, 0) / (img.data.length / 3);
  for (const c of [0, 1, 2]) assert.ok(Math.abs(mean(a.image, c) - mean(b.image, c)) < 4, `channel ${c}: ${mean(a.image, c)} vs ${mean(b.image, c)}`);
  assert.ok(Math.abs(mean(image, 2) - mean(cast, 2)) > 25, 'the cast itself is strong');
});

test('white balance: a background close to a training one goes to it, any other to the median (the first)', () => {
  const field = (background: readonly number[]): RgbImage => ({ width: 4, height: 4, data: Uint8Array.from({ length: 48 }, (_, i) => background[i % 3]) });
  const balanced = (background: readonly number[], references: Rgb[]) => [...whiteBalance(field(background), background, references).data.subarray(0, 3)];
  assert.deepEqual(balanced([230, 221, 228], [CREAM, LAVENDER]), LAVENDER, 'a lavender background stays lavender');
  assert.deepEqual(balanced([255, 218, 162], [CREAM, LAVENDER]), CREAM, 'a yellow cast goes');
  // A blue cast of cream lies nearer lavender than cream, but is not close to either.
  assert.deepEqual(balanced([217, 211, 202], [CREAM, LAVENDER]), CREAM, 'a blue cast goes');
  assert.deepEqual(balanced([230, 221, 228], [CREAM]), CREAM, 'with one reference, every background goes to it');
});

test('images with no red cells or only background get a clear scale source, never a crash', async () => {
  const blank: RgbImage = { width: 300, height: 300, data: new Uint8Array(300 * 300 * 3).fill(235) };
  const noise: RgbImage = { width: 64, height: 64, data: Uint8Array.from({ length: 64 * 64 * 3 }, (_, i) => (i * 7919) % 256) };
  const black: RgbImage = { width: 16, height: 16, data: new Uint8Array(16 * 16 * 3) };
  for (const image of [blank, noise, black]) {
    const prepared = await prepareImage(image, recipe);
    assert.ok(['white-cell', 'none', 'red-cells'].includes(prepared.scale.source));
    assert.equal(prepared.image.width, 128);
    assert.ok(Number.isFinite(prepared.scale.factor) && prepared.scale.factor > 0);
  }
  assert.equal((await prepareImage(blank, recipe)).scale.source, 'none');
  // Without a recorded scale (older models) nothing is estimated or resized.
  assert.deepEqual(chooseScale(null, null), { source: 'none', um_per_px: null, factor: 1 });
  assert.ok(SCALE_RANGE[0] < 1 && SCALE_RANGE[1] > 1);
});

test('a much paler stain hides the nucleus from the measurement; with the training stain range it is measured as before', async () => {
  const files = ['neutrophil/BNE_101082.jpg', 'lymphocyte/LY_10361.jpg', 'eosinophil/EO_101772.jpg', 'basophil/BA_100102.jpg'];
  const images = await Promise.all(files.map((f) => readImageFile(path.join(PBC, f))));
  const range = stainRangeOf(images.map((image) => stainStrengths(image, backgroundColour(image))));
  for (const [i, image] of images.entries()) {
    const original = measureCells(image).nucleusExtent!;
    const pale = stain(image, 0.25);
    assert.equal(measureCells(pale).nucleusExtent, null, `${files[i]}: the pale nucleus passes for background`);
    const restored = measureCells(pale, range).nucleusExtent;
    assert.ok(restored !== null && Math.abs(restored / original - 1) < 0.1, `${files[i]}: nucleus ${original} px, ${restored} px after the stain step`);
    assert.equal(measureCells(image, range).nucleusExtent !== null, true);
  }
});

test('without red cells, arcs of cut ones set the scale where the nucleus is enlarged or when asked, the nucleus itself only in a tight crop or when larger than nearly any at the training scale', () => {
  const measures = (nucleusExtent: number | null, tightCrop = false): CellMeasures => ({
    rbcDiameter: null,
    redCells: 0,
    arcDiameter: null,
    nucleusExtent,
    nuclei: nucleusExtent === null ? 0 : 1,
    tightCrop,
    background: [255, 228, 202],
  });
  // A large cell at the training scale (a monocyte's nucleus reaches 1.6 times the median) keeps its pixels.
  assert.deepEqual(chooseScale(reference, measures(180)), { source: 'none', um_per_px: null, factor: 1 });
  assert.deepEqual(chooseScale(reference, measures(null)), { source: 'none', um_per_px: null, factor: 1 });
  // A field enlarged twice: the nucleus is past anything PBC shows, and is brought to the reference's extent.
  const enlarged = chooseScale(reference, measures(228));
  assert.equal(enlarged.source, 'white-cell');
  assert.equal(enlarged.factor, 0.5);
  assert.ok(Math.abs(enlarged.um_per_px! - (7.5 / 73) * 0.5) < 1e-12);
  assert.equal(chooseScale(reference, measures(180, true)).source, 'white-cell', 'a tight crop');
  // Red cells, where there are some, always win; short arcs of them over the nucleus, which needs the cell type.
  assert.equal(chooseScale(reference, { ...measures(228), rbcDiameter: 146, redCells: 3 }).source, 'red-cells');
  const arcs = chooseScale(reference, { ...measures(228), arcDiameter: 219 });
  assert.equal(arcs.source, 'red-cells');
  assert.ok(Math.abs(arcs.factor - 73 / 219) < 1e-12, `factor ${arcs.factor}`);
  assert.deepEqual(chooseScale(reference, { ...measures(120), arcDiameter: 219 }), { source: 'none', um_per_px: null, factor: 1 }, 'arcs alone');
  // A field enlarged 1.5 times: its nucleus (1.3 times the reference's) is not past what PBC shows, but enough to
  // trust the arcs; no nucleus, no arcs.
  const arcsAtOneAndAHalf = chooseScale(reference, { ...measures(150), arcDiameter: 110 });
  assert.equal(arcsAtOneAndAHalf.source, 'red-cells');
  assert.ok(Math.abs(arcsAtOneAndAHalf.factor - 73 / 110) < 1e-12, `factor ${arcsAtOneAndAHalf.factor}`);
  assert.deepEqual(chooseScale(reference, { ...measures(null), arcDiameter: 110 }), { source: 'none', um_per_px: null, factor: 1 }, 'no nucleus');
  // A field shown at half size: its nucleus (half the reference's) sets the scale only when asked (the classifier's
  // second look at a platelet reading), since an erythroblast's or a platelet field's can be as small.
  assert.deepEqual(chooseScale(reference, measures(57)), { source: 'none', um_per_px: null, factor: 1 });
  const halved = chooseScale(reference, measures(57), undefined, { undersizedNucleusScale: true });
  assert.equal(halved.source, 'white-cell');
  assert.equal(halved.factor, 2);
  assert.deepEqual(
    chooseScale(reference, measures(80), undefined, { undersizedNucleusScale: true }),
    { source: 'none', um_per_px: null, factor: 1 },
    'above the bar',
  );
  // Arcs beside an ordinary nucleus, or with none, set the scale only when asked (the classifier's second look at an
  // image read without a scale, which the detector judges).
  for (const extent of [120, null]) {
    const fromArcs = chooseScale(reference, { ...measures(extent), arcDiameter: 146 }, undefined, { arcScale: true });
    assert.equal(fromArcs.source, 'red-cells', `nucleus ${extent}`);
    assert.equal(fromArcs.factor, 0.5);
  }
  // A large nucleus (over 1.4 times the reference's) sets the scale only when asked (the classifier's second look at
  // an image without one).
  assert.deepEqual(chooseScale(reference, measures(171)), { source: 'none', um_per_px: null, factor: 1 });
  const large = chooseScale(reference, measures(171), undefined, { largeNucleusScale: true });
  assert.equal(large.source, 'white-cell');
  assert.ok(Math.abs(large.factor - 114 / 171) < 1e-12, `factor ${large.factor}`);
  assert.deepEqual(
    chooseScale(reference, measures(150), undefined, { largeNucleusScale: true }),
    { source: 'none', um_per_px: null, factor: 1 },
    'under the bar',
  );
  // The factor the network's features estimate stands in only where nothing measurable sets the scale (the
  // classifier's second look at an image read without one).
  for (const extent of [120, null]) {
    const fromFeatures = chooseScale(reference, measures(extent), undefined, { appearanceFactor: 0.5 });
    assert.equal(fromFeatures.source, 'appearance', `nucleus ${extent}`);
    assert.equal(fromFeatures.factor, 0.5);
    assert.ok(Math.abs(fromFeatures.um_per_px! - (7.5 / 73) * 0.5) < 1e-12);
  }
  assert.equal(chooseScale(reference, { ...measures(120), rbcDiameter: 146, redCells: 3 }, undefined, { appearanceFactor: 0.7 }).source, 'red-cells');
  assert.equal(chooseScale(reference, measures(228), undefined, { appearanceFactor: 0.7 }).source, 'white-cell', 'an oversized nucleus');
});

test('one white cell: a nucleus near the centre passes; none, one cut off at the edge, or many do not', () => {
  /** A pale background with purple nuclei (discs of radius r) at the given centres. */
  const field = (side: number, discs: [number, number, number][]): RgbImage => {
    const data = new Uint8Array(side * side * 3);
    for (let y = 0; y < side; y++)
      for (let x = 0; x < side; x++) {
        const inside = discs.some(([cx, cy, r]) => (x - cx) ** 2 + (y - cy) ** 2 <= r * r);
        data.set(inside ? [90, 40, 140] : [235, 228, 220], (y * side + x) * 3);
      }
    return { width: side, height: side, data };
  };
  assert.equal(showsOneCell(measureCells(field(200, [[100, 100, 30]]))), true, 'a central nucleus');
  assert.equal(showsOneCell(measureCells(field(200, []))), false, 'an empty field');
  assert.equal(showsOneCell(measureCells(field(200, [[185, 190, 30]]))), false, "a nucleus at a corner: a field's edge, not a cell");
  const montage = field(
    300,
    [50, 150, 250].flatMap((x) => [50, 150, 250].map((y): [number, number, number] => [x, y, 20])),
  );
  assert.equal(showsOneCell(measureCells(montage)), false, 'nine cells');
});

test('red cells cut by the edge: the circle through their outline, once nearly half of it shows, or short arcs of it apart; a clump gives nothing', () => {
  /** A cream background with pink red cells (discs of radius r, each with a pale centre) at the given centres. */
  const field = (side: number, discs: [number, number, number][]): RgbImage => {
    const data = new Uint8Array(side * side * 3);
    for (let y = 0; y < side; y++)
      for (let x = 0; x < side; x++) {
        const d = Math.min(...discs.map(([cx, cy, r]) => Math.hypot(x - cx, y - cy) / r));
        data.set(d > 1 ? [255, 229, 202] : d < 0.35 ? [225, 180, 185] : [200, 140, 150], (y * side + x) * 3);
      }
    return { width: side, height: side, data };
  };
  // Two cells of diameter 80 cut by opposite edges, a quarter of each out of view, and none whole.
  const cut = measureCells(
    field(240, [
      [20, 60, 40],
      [220, 180, 40],
    ]),
  );
  assert.ok(cut.rbcDiameter !== null && Math.abs(cut.rbcDiameter / 80 - 1) < 0.05, `cut cells: ${cut.rbcDiameter}`);
  // Centres 4 px inside the edges: about half of each outline in view, beyond the pixels along the edge. Enough arc.
  const nearlyHalf = measureCells(
    field(240, [
      [4, 60, 40],
      [235, 180, 40],
    ]),
  );
  assert.ok(nearlyHalf.rbcDiameter !== null && Math.abs(nearlyHalf.rbcDiameter / 80 - 1) < 0.08, `nearly half: ${nearlyHalf.rbcDiameter}`);
  // About a third in view: too little arc for a red-cell estimate, but a short-arc one where nothing lies inside.
  const slivers = measureCells(
    field(240, [
      [-15, 60, 40],
      [255, 180, 40],
    ]),
  );
  assert.equal(slivers.rbcDiameter, null, 'slivers');
  assert.ok(slivers.arcDiameter !== null && Math.abs(slivers.arcDiameter / 80 - 1) < 0.08, `short arcs: ${slivers.arcDiameter}`);
  const besideWhole = measureCells(
    field(240, [
      [-15, 60, 40],
      [255, 180, 40],
      [120, 120, 30],
    ]),
  );
  assert.equal(besideWhole.arcDiameter, null, `short arcs beside a cell inside the frame: ${besideWhole.arcDiameter}`);
  // Two cells overlapping at the edge make one blob that is no circle.
  assert.equal(
    measureCells(
      field(240, [
        [20, 60, 40],
        [20, 120, 40],
      ]),
    ).rbcDiameter,
    null,
    'a clump',
  );
  // Whole cells, where there are enough, decide alone.
  const mixed = measureCells(
    field(240, [
      [70, 70, 30],
      [170, 170, 30],
      [0, 200, 45],
    ]),
  );
  assert.ok(mixed.rbcDiameter !== null && Math.abs(mixed.rbcDiameter / 60 - 1) < 0.05, `whole cells: ${mixed.rbcDiameter}`);
});

test('a PBC field magnified 1.5 times, where few red cells lie whole in the frame, is still measured at its scale', async () => {
  const ratios: number[] = [];
  for (const file of sample(5)) {
    const image = await readImageFile(file).catch(() => null);
    if (!image) continue;
    const { rbcDiameter: original } = measureCells(image);
    const { rbcDiameter: enlarged } = measureCells(await magnify(image, 1.5));
    if (original && enlarged) ratios.push(enlarged / original);
  }
  assert.ok(ratios.length >= 12, `${ratios.length} of 40 images measured at both sizes`);
  assert.ok(Math.abs(median(ratios) / 1.5 - 1) < 0.1, `median ratio ${median(ratios)}`);
});

const pick = ({ rbcDiameter, redCells }: CellMeasures) => ({ rbcDiameter, redCells });

test('a recipe without a scale leaves the red cells unmeasured; the white cell and the background are measured as before', async () => {
  const noScale: InputRecipe = { ...recipe, scale: null, background: null };
  for (const file of ['basophil/BA_111710.jpg', 'neutrophil/BNE_100878.jpg']) {
    const image = await readImageFile(path.join(PBC, file));
    const all = measureCells(image);
    assert.ok(all.rbcDiameter && all.redCells >= 2, `${file}: red cells measured by default`);
    assert.deepEqual(measureCells(image, null, { redCells: false }), { ...all, rbcDiameter: null, redCells: 0, arcDiameter: null });
    const prepared = await prepareImage(image, noScale, { measure: true });
    assert.equal(prepared.measures?.rbcDiameter, null);
    assert.equal(prepared.measures?.nucleusExtent, all.nucleusExtent);
    assert.deepEqual(prepared.scale, { source: 'none', um_per_px: null, factor: 1 });
  }
});

test('flat margins are left out of the measurement: red cells cut by padding are measured as cut by the edge', async () => {
  const image = await readImageFile(path.join(PBC, 'basophil/BA_111710.jpg'));
  // A margin of one flat colour (padding, letterboxing) does not change the red cells' measure.
  const margin = 40;
  const width = image.width + 2 * margin;
  const framed = new Uint8Array(width * (image.height + 2 * margin) * 3).fill(250);
  for (let y = 0; y < image.height; y++) framed.set(image.data.subarray(y * image.width * 3, (y + 1) * image.width * 3), ((y + margin) * width + margin) * 3);
  const { rbcDiameter, redCells } = measureCells(image);
  assert.ok(rbcDiameter);
  assert.deepEqual(pick(measureCells({ width, height: image.height + 2 * margin, data: framed })), { rbcDiameter, redCells });
  // Shrunk to half and padded with its background, this field shows its red cells only where the padding cuts them.
  for (const file of ['basophil/BA_111710.jpg', 'basophil/BA_152650.jpg']) {
    const original = await readImageFile(path.join(PBC, file));
    const { rbcDiameter: full } = measureCells(original);
    const { rbcDiameter: half } = measureCells(await magnify(original, 0.5));
    assert.ok(full && half && Math.abs(half / full / 0.5 - 1) < 0.03, `${file}: ${half} px at half size against ${full} px`);
  }
});

test('images are measured on a copy shrunk by box averages, rounded, with any odd last row and column dropped', () => {
  const image: RgbImage = { width: 13, height: 9, data: Uint8Array.from({ length: 13 * 9 * 3 }, (_, i) => (i * 7919) % 256) };
  for (const step of [2, 3, 4]) {
    const small = boxShrink(image, step);
    assert.deepEqual([small.width, small.height], [Math.floor(13 / step), Math.floor(9 / step)]);
    for (let y = 0; y < small.height; y++)
      for (let x = 0; x < small.width; x++)
        for (let c = 0; c < 3; c++) {
          let sum = 0;
          for (let dy = 0; dy < step; dy++) for (let dx = 0; dx < step; dx++) sum += image.data[((y * step + dy) * 13 + x * step + dx) * 3 + c];
          assert.equal(small.data[(y * small.width + x) * 3 + c], Math.round(sum / step ** 2), `step ${step} at (${x}, ${y}) channel ${c}`);
        }
  }
});

test('the background colour and channel gains read from tables give what the plain per-pixel arithmetic gives', () => {
  // Pixels over the whole 8-bit cube, with many at half-way lumas, where rounding could differ.
  const n = 20_000;
  const data = Uint8Array.from({ length: n * 3 }, (_, i) => (i * 2654435761) >>> 24);
  const image: RgbImage = { width: 200, height: 100, data };
  const lumas = Array.from({ length: n }, (_, i) => Math.round(0.299 * data[3 * i] + 0.587 * data[3 * i + 1] + 0.114 * data[3 * i + 2]));
  const cut = [...lumas].sort((a, b) => b - a)[Math.floor(n / 4) - 1];
  const kept = lumas.flatMap((l, i) => (l >= cut ? [i] : []));
  const medianOf = (c: number) => {
    const values = kept.map((i) => data[3 * i + c]).sort((a, b) => a - b);
    return values[Math.ceil(values.length / 2) - 1];
  };
  assert.deepEqual(backgroundColour(image), [0, 1, 2].map(medianOf));
  const gains = [1.37, 0.5, 2];
  const scaled = scaleChannels(image, gains);
  for (let i = 0; i < data.length; i++) assert.equal(scaled.data[i], Math.min(255, Math.round(data[i] * gains[i % 3])), `value ${i}`);
});

test('an image with a side of a few pixels is measured, after any other image, without hanging', () => {
  // In a child process with a time limit: a measurement that never ends must fail the test, not stall the suite.
  const script = `
    import { measureCells } from ${JSON.stringify(new URL('../src/data/scale.js', import.meta.url).href)};
    const flat = (width, height, value) => ({ width, height, data: new Uint8Array(width * height * 3).fill(value) });
    measureCells(flat(360, 363, 200));
    for (const [width, height] of [[1, 5000], [5000, 2], [1, 1], [3, 3000]]) {
      const measures = measureCells(flat(width, height, 180));
      if (measures.nuclei !== 0 || measures.rbcDiameter !== null) throw new Error(width + '×' + height + ': cells found in a flat image');
    }
    console.log('measured');`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 30_000, killSignal: 'SIGKILL', encoding: 'utf8' });
  assert.equal(run.signal, null, 'the measurement did not end');
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /measured/);
});
