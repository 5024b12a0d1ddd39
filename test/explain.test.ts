// Explanations: sanity checks of the maps on the bundled model and PBC validation images (they sit on the white
// cell; they change when the last stage's weights are randomised), the API's options and errors, every
// architecture and path, memory, and `hemato explain`.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import * as E from '../src/engine/index.js';
import { loadClassifier } from '../src/api/classifier.js';
import { camValues, type Explanation, gradCam, overlayPng } from '../src/api/explain.js';
import type { RgbImage } from '../src/data/image.js';
import { backgroundColour } from '../src/data/scale.js';
import { readSplit } from '../src/data/split.js';
import { createModel } from '../src/models/index.js';
import { collectDroppedTensors, saveUntrainedModel, SHARED } from './helpers.js';

const BIN = path.resolve('bin/hemato.js');
const PBC = path.join(SHARED, 'data/pbc');
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-explain-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The project's PBC split: runs/pbc-split.csv where it was made, else made here the same way (seed 0). */
async function pbcSplit(): Promise<string> {
  const made = path.resolve('runs/pbc-split.csv');
  if (existsSync(made)) return made;
  const file = path.join(dir, 'split.csv');
  const run = spawnSync(process.execPath, [BIN, 'split', PBC, '--seed', '0', '--out', file], { encoding: 'utf8', timeout: 300_000 });
  assert.equal(run.status, 0, run.stderr);
  return file;
}

/** n validation images spread evenly over each class's sorted files, the classes taking turns at the remainder. */
async function validationImages(n: number, only: readonly string[]): Promise<{ file: string; label: string }[]> {
  const { rows } = await readSplit(await pbcSplit());
  const byClass = new Map<string, string[]>();
  for (const row of rows) if (row.part === 'val' && only.includes(row.label)) byClass.set(row.label, [...(byClass.get(row.label) ?? []), row.file]);
  const classes = [...byClass.keys()].sort();
  return classes.flatMap((label, c) => {
    const files = byClass.get(label)!.sort();
    const m = Math.floor(n / classes.length) + (c < n % classes.length ? 1 : 0);
    return Array.from({ length: m }, (_, k) => ({ file: path.join(PBC, files[Math.floor(((k + 0.5) * files.length) / m)]), label }));
  });
}

/**
 * The white cell's mask on the prepared image the model saw. The nucleus is found as src/data/scale.ts finds it
 * (green darker than 0.45 below the background's, blue at least 0.9 × red); its blobs of at least 0.15 % of the
 * image whose centres lie in the middle half are the central cell's. The cytoplasm is the rim around them: the
 * nucleus pixels dilated by a disc of 0.2 × the nucleus's extent, since a white cell is about 1.4 × its nucleus
 * across (lymphocytes less, monocytes and granulocytes more).
 */
function whiteCellMask(image: RgbImage): Uint8Array {
  const { width, height, data } = image;
  const background = backgroundColour(image);
  const nucleus = new Uint8Array(width * height);
  for (let i = 0; i < width * height; i++) {
    const [r, g, b] = [data[3 * i], data[3 * i + 1], data[3 * i + 2]];
    nucleus[i] = 1 - g / Math.max(1, background[1]) > 0.45 && b > r * 0.9 ? 1 : 0;
  }
  const central = blobs(nucleus, width, height).filter(
    (blob) =>
      blob.pixels.length >= 0.0015 * width * height &&
      Math.abs((blob.minX + blob.maxX) / 2 - width / 2) < width / 4 &&
      Math.abs((blob.minY + blob.maxY) / 2 - height / 2) < height / 4,
  );
  const mask = new Uint8Array(width * height);
  if (central.length === 0) return mask;
  const extent = Math.max(
    Math.max(...central.map((b) => b.maxX)) - Math.min(...central.map((b) => b.minX)) + 1,
    Math.max(...central.map((b) => b.maxY)) - Math.min(...central.map((b) => b.minY)) + 1,
  );
  const radius = 0.2 * extent;
  const reach = Math.ceil(radius);
  for (const blob of central) {
    for (const i of blob.pixels) {
      const [x, y] = [i % width, Math.floor(i / width)];
      for (let dy = -reach; dy <= reach; dy++) {
        for (let dx = -reach; dx <= reach; dx++) {
          const [xx, yy] = [x + dx, y + dy];
          if (dx * dx + dy * dy <= radius * radius && xx >= 0 && yy >= 0 && xx < width && yy < height) mask[yy * width + xx] = 1;
        }
      }
    }
  }
  return mask;
}

/** 4-connected components of a binary mask. */
function blobs(mask: Uint8Array, width: number, height: number): { pixels: number[]; minX: number; maxX: number; minY: number; maxY: number }[] {
  const seen = new Uint8Array(mask.length);
  const found = [];
  for (let seed = 0; seed < mask.length; seed++) {
    if (!mask[seed] || seen[seed]) continue;
    const blob = { pixels: [] as number[], minX: width, maxX: 0, minY: height, maxY: 0 };
    const stack = [seed];
    seen[seed] = 1;
    while (stack.length > 0) {
      const i = stack.pop()!;
      const [x, y] = [i % width, Math.floor(i / width)];
      blob.pixels.push(i);
      [blob.minX, blob.maxX, blob.minY, blob.maxY] = [Math.min(blob.minX, x), Math.max(blob.maxX, x), Math.min(blob.minY, y), Math.max(blob.maxY, y)];
      for (const [nx, ny] of [
        [x - 1, y],
        [x + 1, y],
        [x, y - 1],
        [x, y + 1],
      ]) {
        const j = ny * width + nx;
        if (nx >= 0 && ny >= 0 && nx < width && ny < height && mask[j] && !seen[j]) {
          seen[j] = 1;
          stack.push(j);
        }
      }
    }
    found.push(blob);
  }
  return found;
}

/** The share of the map's mass (upsampled to the image) inside the mask. */
function massInside(explanation: Explanation, mask: Uint8Array): number {
  const values = camValues(explanation);
  let [inside, total] = [0, 0];
  values.forEach((v, i) => {
    total += v;
    if (mask[i]) inside += v;
  });
  return total > 0 ? inside / total : 0;
}

/** Spearman's rank correlation: Pearson's on the ranks, tied values sharing their mean rank; 0 for a constant map. */
function spearman(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const ranks = (v: ArrayLike<number>) => {
    const order = Array.from({ length: v.length }, (_, i) => i).sort((i, j) => v[i] - v[j]);
    const r = new Float64Array(v.length);
    for (let i = 0; i < order.length;) {
      let j = i;
      while (j + 1 < order.length && v[order[j + 1]] === v[order[i]]) j++;
      for (let k = i; k <= j; k++) r[order[k]] = (i + j) / 2;
      i = j + 1;
    }
    return r;
  };
  const [ra, rb] = [ranks(a), ranks(b)];
  const mean = (r: Float64Array) => r.reduce((s, x) => s + x, 0) / r.length;
  const [ma, mb] = [mean(ra), mean(rb)];
  let [ab, aa, bb] = [0, 0, 0];
  for (let i = 0; i < ra.length; i++) {
    ab += (ra[i] - ma) * (rb[i] - mb);
    aa += (ra[i] - ma) ** 2;
    bb += (rb[i] - mb) ** 2;
  }
  return aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
}

/**
 * The classes whose images show a white cell. An erythroblast is a nucleated red cell, with red cells pressed
 * around it; a platelet image shows no white cell at all: for them the mask below marks no meaningful object.
 */
const WHITE_CELLS = ['basophil', 'eosinophil', 'ig', 'lymphocyte', 'monocyte', 'neutrophil'];

// The bundled model and its maps of 100 validation images of white cells, shared by the sanity checks.
const bundled = (async () => {
  const classifier = await loadClassifier(undefined, { device: 'cpu', precision: 'fp32' });
  const images = await validationImages(100, WHITE_CELLS);
  const explanations: Explanation[] = [];
  for (const { file } of images) explanations.push(await classifier.explain(file));
  return { classifier, images, explanations };
})();
after(async () => (await bundled).classifier.dispose());

test('the maps of 100 PBC validation images of white cells put ≥ 60 % of their mass on the cell in ≥ 80 % of them', async (t) => {
  const { images, explanations } = await bundled;
  const masses = explanations.map((e) => massInside(e, whiteCellMask(e.image)));
  const passing = masses.filter((m) => m >= 0.6).length / masses.length;
  const perClass = Object.fromEntries(
    [...new Set(images.map((i) => i.label))].map((label) => {
      const own = masses.filter((_, i) => images[i].label === label);
      return [label, `${own.filter((m) => m >= 0.6).length}/${own.length}`];
    }),
  );
  // Measured: 94 % of the images hold at least 60 % of the map's mass on the cell, with a mean share of 0.84;
  // neutrophils fall short most often (their lobes are thin, so the nucleus mask misses part of the cell).
  assert.ok(passing >= 0.8, `only ${(100 * passing).toFixed(0)} % of the images hold ≥ 60 % of the map's mass on the white cell (${JSON.stringify(perClass)})`);
  const mean = masses.reduce((a, b) => a + b, 0) / masses.length;
  t.diagnostic(
    `${(100 * passing).toFixed(0)} % of the images hold ≥ 60 % of the map's mass on the white cell; mean share ${mean.toFixed(3)}; by class ${JSON.stringify(perClass)}`,
  );
  assert.ok(mean >= 0.6, `mean share of the map's mass on the white cell ${mean.toFixed(3)}`);
  for (const e of explanations) {
    assert.deepEqual(e.grid, [16, 16]);
    assert.equal(Math.max(...e.cam), 1);
  }
});

test("randomising the last stage's weights changes the maps (mean Spearman rank correlation under 0.5 over 20 images)", async (t) => {
  const { classifier, explanations } = await bundled;
  const randomised = await loadClassifier(undefined, { device: 'cpu', precision: 'fp32' });
  try {
    // Each parameter of the last stage becomes normal noise with that parameter's own mean and standard deviation.
    const lastStage = randomised.model.namedParameters().filter(([name]) => name.startsWith('convnext.stages.3.'));
    assert.ok(lastStage.length > 0);
    E.noGrad(() =>
      lastStage.forEach(([, p], i) =>
        E.tidy(() => {
          const [mean, std] = [p.mean().item(), p.numel > 1 ? p.std().item() : 0];
          p.copy_(E.randn(p.shape, { seed: i }).mul(std).add(mean));
        }),
      ),
    );
    const correlations: number[] = [];
    for (let i = 0; i < 100; i += 5) {
      const original = explanations[i];
      const changed = await randomised.explain(original.image, { label: original.label });
      assert.deepEqual(changed.grid, original.grid);
      correlations.push(spearman(original.cam, changed.cam));
    }
    const mean = correlations.reduce((a, b) => a + b, 0) / correlations.length;
    t.diagnostic(`mean Spearman correlation with the original maps ${mean.toFixed(3)}`);
    // Measured: a mean of 0.08.
    assert.ok(mean < 0.5, `mean Spearman correlation with the original maps ${mean.toFixed(3)} (${correlations.map((c) => c.toFixed(2)).join(' ')})`);
    assert.ok(
      classifier.model.namedParameters().every(([, p]) => p.requiresGrad),
      'the original model is untouched',
    );
  } finally {
    randomised.dispose();
  }
});

test('explain: the top label by default, any label on request with its calibrated probability, unknown labels refused', async () => {
  const { classifier, images } = await bundled;
  const file = images.find((i) => i.label === 'neutrophil')!.file;
  const classified = await classifier.classify(file, { topK: 8 });
  const top = await classifier.explain(file);
  assert.equal(top.label, classified.predictions[0].label);
  assert.ok(Math.abs(top.score - classified.predictions[0].score) < 1e-4, `${top.score} vs ${classified.predictions[0].score}`);
  const platelet = await classifier.explain(file, { label: 'platelet' });
  assert.equal(platelet.label, 'platelet');
  assert.ok(Math.abs(platelet.score - classified.predictions.find((p) => p.label === 'platelet')!.score) < 1e-4);
  assert.ok(platelet.cam.every((v) => v >= 0 && v <= 1));
  assert.equal(platelet.image.width, 128);
  await assert.rejects(
    classifier.explain(file, { label: 'blast' }),
    (error: Error) => error instanceof RangeError && /unknown label "blast"; the classes are basophil, eosinophil, .*platelet/.test(error.message),
  );
  await assert.rejects(classifier.explain(file, { path: 'swin' }), /has no swin path; choose convnext or fused/);
  await assert.rejects(classifier.explain(file, { stage: 4 }), /stage must be an integer in -4\.\.3/);
  const last = await classifier.explain(file, { stage: -1 });
  assert.deepEqual([last.grid, last.stage, last.path], [[4, 4], 3, 'fused']);
  assert.equal(camValues(last).length, 128 * 128);
});

test('explain flags what classify flags: the same reasons for a cell, and an empty field is no single cell', async () => {
  const { classifier, images } = await bundled;
  const file = images.find((i) => i.label === 'lymphocyte')!.file;
  const [explained, classified] = [await classifier.explain(file), await classifier.classify(file)];
  assert.deepEqual([explained.uncertain, explained.reasons], [classified.uncertain, classified.reasons]);
  const empty = { width: 200, height: 200, data: new Uint8Array(200 * 200 * 3).fill(235) };
  const field = await classifier.explain(empty);
  assert.equal(field.uncertain, true);
  assert.ok(field.reasons.includes('no-single-cell'), field.reasons.join(', '));
  assert.deepEqual(field.reasons, (await classifier.classify(empty)).reasons);
});

test("overlayPng: a PNG of the prepared image's size", async () => {
  const { explanations } = await bundled;
  const png = await overlayPng(explanations[0]);
  const info = await sharp(png).metadata();
  assert.deepEqual([info.format, info.width, info.height], ['png', 128, 128]);
  const { data } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  assert.notDeepEqual(new Uint8Array(data), explanations[0].image.data, 'the map shows');
  const plain = await sharp(await overlayPng(explanations[0], { alpha: 0 }))
    .raw()
    .toBuffer();
  assert.deepEqual(new Uint8Array(plain), explanations[0].image.data, 'alpha 0 leaves the image as it is');
  await assert.rejects(overlayPng(explanations[0], { alpha: 2 }), RangeError);
});

test("every architecture and path: the map has its stage's grid, and the split forward gives the model's own logits", () => {
  const cases: [string, ('fused' | 'convnext' | 'swin')[]][] = [
    ['convnext_atto', ['fused', 'convnext']],
    ['swin_tiny_patch4_window7_224', ['fused', 'swin']],
    ['swin-only', ['fused', 'swin']],
    ['dualpath-atto', ['fused', 'convnext', 'swin']],
    ['dualpath-concat', ['fused', 'convnext', 'swin']],
  ];
  E.manualSeed(0);
  const x = E.keep(E.randn([1, 3, 64, 64], { seed: 3 }));
  for (const [name, paths] of cases) {
    const model = createModel(name, { numClasses: 8, inputSize: 64 }).eval();
    const expected = E.tidy(() => E.noGrad(() => model.forward(x).data() as Float32Array));
    for (const path of paths) {
      for (const [stage, side] of [
        [0, 16],
        [1, 8],
        [3, 2],
      ]) {
        const map = gradCam(model, x, { path, stage, classIndex: 2 });
        assert.deepEqual(map.grid, [side, side], `${name} ${path} stage ${stage}`);
        assert.equal(map.cam.length, side * side);
        // All zero is a possible answer (no position with evidence for the class), as at an untrained model's last stage.
        const peak = Math.max(...map.cam);
        assert.ok(map.cam.every((v) => v >= 0 && v <= 1) && (peak === 1 || peak === 0), `${name} ${path} stage ${stage}: values in [0, 1], peak ${peak}`);
        map.logits.forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-4, `${name} ${path} stage ${stage}: logit ${i} ${v} vs ${expected[i]}`));
      }
    }
    assert.throws(() => gradCam(model, x, { path: 'nowhere' as 'fused' }), /path must be one of convnext, swin, fused/);
    assert.ok(
      model.parameters().every((p) => p.requiresGrad && p.grad === undefined),
      `${name}: parameters as they were, without gradients`,
    );
    model.dispose();
  }
  x.dispose();
});

test("the dual-path network: each path's map differs, and a path's gradient reaches it through the fusion", () => {
  E.manualSeed(1);
  const model = createModel('dualpath-atto', { numClasses: 8, inputSize: 64 }).eval();
  const x = E.randn([1, 3, 64, 64], { seed: 4 });
  const maps = (['convnext', 'swin', 'fused'] as const).map((path) => gradCam(model, x, { path, stage: -1, classIndex: 0 }).cam);
  assert.notDeepEqual(maps[0], maps[1]);
  assert.ok(maps.every((cam) => cam.some((v) => v > 0)));
  x.dispose();
  model.dispose();
});

test('explaining 20 images leaves the live-tensor count where it was', async () => {
  const { classifier, explanations } = await bundled;
  const run = async (i: number) => classifier.explain(explanations[i].image, { label: i % 2 ? 'monocyte' : undefined });
  await run(0);
  // Tensors that earlier tests left to the garbage collector must not be counted.
  const baseline = await collectDroppedTensors();
  for (let i = 0; i < 20; i++) await run(i);
  assert.equal(E.liveTensors(), baseline, `${E.liveTensors() - baseline} tensors more after 20 explanations`);
  assert.ok(
    classifier.model.parameters().every((p) => p.grad === undefined),
    'no gradients left on the parameters',
  );
});

test('hemato explain writes one overlay per image and refuses to overwrite them', async () => {
  const modelFile = path.join(dir, 'tiny.safetensors');
  await saveUntrainedModel(modelFile);
  const { images } = await bundled;
  const inputs = [images[0].file, images[50].file];
  const out = path.join(dir, 'overlays');
  const hemato = (...args: string[]) =>
    spawnSync(process.execPath, [BIN, 'explain', ...inputs, '--model', modelFile, '--out', out, ...args], { encoding: 'utf8', timeout: 120_000 });

  const first = hemato('--json', '--label', 'monocyte');
  assert.equal(first.status, 0, first.stderr);
  const report = JSON.parse(first.stdout) as {
    model: string;
    model_info: { name: string };
    results: { file: string; label: string; score: number; overlay: string }[];
  };
  assert.equal(report.model, 'convnext_only_atto');
  assert.equal(report.model_info.name, 'tiny.safetensors');
  const names = inputs.map((f) => `${path.basename(f, path.extname(f))}.cam.png`);
  assert.deepEqual(readdirSync(out).sort(), [...names].sort());
  assert.deepEqual(
    report.results.map((r) => [r.file, r.label, r.overlay]),
    inputs.map((f, i) => [f, 'monocyte', path.join(out, names[i])]),
  );
  assert.ok(report.results.every((r) => r.score > 0 && r.score < 1));
  const info = await sharp(path.join(out, names[0])).metadata();
  assert.deepEqual([info.format, info.width], ['png', 64]);

  const again = hemato();
  assert.equal(again.status, 1);
  assert.match(again.stderr, /already holds .*\.cam\.png.*pass --overwrite/);
  const replaced = hemato('--overwrite');
  assert.equal(replaced.status, 0, replaced.stderr);
  assert.match(replaced.stdout, /→ .*\.cam\.png/);

  const usage = spawnSync(process.execPath, [BIN, 'explain', inputs[0], '--model', modelFile, '--out', path.join(dir, 'other'), '--label', 'blast'], {
    encoding: 'utf8',
  });
  assert.equal(usage.status, 2);
  assert.match(usage.stderr, /unknown label "blast"/);
});
