// bench:data — decode + centred field + resize + MPM throughput on PBC's 360×363 images (1 and 2 worker threads),
// MPM time per image at 128 px and at 360 px, pack size and read speed, and the maximum differences from the
// OpenCV 4.6 fixtures. Progress goes to stderr; the last line on stdout is one JSON document.
// Usage: npm run bench:data [-- --quick]
import { readdirSync, readFileSync, rmSync, mkdtempSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { DEFAULT_GEOMETRY, toModelGeometry } from '../src/data/geometry.js';
import { readImageFile, type RgbImage } from '../src/data/image.js';
import * as E from '../src/engine/index.js';
import { createModel } from '../src/models/index.js';
import { DEFAULT_AUGMENT } from '../src/data/augment.js';
import { IMAGENET_NORMALIZATION, type ImageSet, makeBatch } from '../src/data/batches.js';
import { workerBatches } from '../src/data/prefetch.js';
import { parseNpy } from '../src/data/npy.js';
import { readPack, writePack } from '../src/data/pack.js';
import { PreparePool } from '../src/data/prepare-pool.js';
import { Mpm, resolveMpmConfig } from '../src/preprocess/mpm.js';
import { type GrayImage, loadImageOps } from '../src/preprocess/ops.js';

const quick = process.argv.includes('--quick');
const PBC = path.resolve('../shared/data/pbc');
const FIXTURES = path.resolve('../shared/fixtures/opencv');
const log = (message: string) => process.stderr.write(`[bench:data] ${message}\n`);

/** Every k-th image of each class, so all classes are represented; kept only if it is 360×363. */
async function sampleFiles(count: number): Promise<{ file: string; label: string }[]> {
  const classes = readdirSync(PBC).sort();
  const perClass = Math.ceil(count / classes.length);
  const picked: { file: string; label: string }[] = [];
  for (const label of classes) {
    const names = readdirSync(path.join(PBC, label))
      .filter((n) => !n.startsWith('.'))
      .sort();
    const step = Math.max(1, Math.floor(names.length / (perClass * 1.2)));
    let taken = 0;
    for (let i = 0; i < names.length && taken < perClass; i += step) {
      const file = path.join(PBC, label, names[i]);
      const meta = await sharp(file).metadata();
      if (meta.width === 360 && meta.height === 363) {
        picked.push({ file, label });
        taken++;
      }
    }
  }
  return picked.slice(0, count);
}

async function throughput(files: string[], threads: number, mpm: boolean): Promise<number> {
  const pool = await PreparePool.start(
    { geometry: DEFAULT_GEOMETRY, mpm: mpm ? resolveMpmConfig() : null, scale: null, background: null, stain: null },
    threads,
  );
  try {
    await pool.map(files.slice(0, threads * 4)); // warm-up: JIT, OpenCV tables
    const started = performance.now();
    const results = await pool.map(files);
    const seconds = (performance.now() - started) / 1000;
    if (results.some((r) => !r.ok)) throw new Error('a benchmark image failed to prepare');
    return round(files.length / seconds, 1);
  } finally {
    await pool.close();
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function mpmMsPerImage(mpm: Mpm, images: RgbImage[], rounds: number): number {
  for (const image of images.slice(0, 10)) mpm.apply(image);
  const times: number[] = [];
  for (let r = 0; r < rounds; r++) {
    for (const image of images) {
      const started = performance.now();
      mpm.apply(image);
      times.push(performance.now() - started);
    }
  }
  return round(median(times), 3);
}

async function readGray(file: string): Promise<GrayImage> {
  const { data, info } = await sharp(path.join(FIXTURES, file)).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data: new Uint8Array(data) };
}

async function fixtureDiffs(): Promise<Record<string, number>> {
  const ops = await loadImageOps();
  const cases: { stem: string; source: string }[] = JSON.parse(readFileSync(path.join(FIXTURES, 'opencv_fixtures.json'), 'utf8')).cases;
  const max: Record<string, number> = {};
  const record = (key: string, a: ArrayLike<number>, b: ArrayLike<number>) => {
    let m = 0;
    for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
    max[key] = Math.max(max[key] ?? 0, m);
  };
  for (const { stem, source } of cases) {
    const L = await readGray(`${stem}.L.png`);
    record('clahe_c2_t8', ops.clahe(L, 2, 8).data, (await readGray(`${stem}.clahe_c2_t8.png`)).data);
    record('clahe_c4_t4', ops.clahe(L, 4, 4).data, (await readGray(`${stem}.clahe_c4_t4.png`)).data);
    const gauss = parseNpy(readFileSync(path.join(FIXTURES, `${stem}.gauss_s15.npy`)));
    record('gauss_s15', ops.gaussianBlur({ width: L.width, height: L.height, data: Float32Array.from(L.data) }, 15).data, gauss.data);
    for (const k of [7, 15]) {
      record(`tophat_e${k}`, ops.topHat(L, k).data, (await readGray(`${stem}.tophat_e${k}.png`)).data);
      record(`blackhat_e${k}`, ops.blackHat(L, k).data, (await readGray(`${stem}.blackhat_e${k}.png`)).data);
    }
    // Informational: our decoder (sharp/mozjpeg) + OpenCV's Lab against OpenCV's own imread + cvtColor.
    record('L_from_own_decode', ops.rgbToLab(await readImageFile(path.join(path.dirname(PBC), source))).L, L.data);
  }
  return Object.fromEntries(Object.entries(max).map(([k, v]) => [k, Number(v.toPrecision(4))]));
}

async function packStats(files: { file: string; label: string }[]) {
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-bench-'));
  try {
    const items = files.map(({ file, label }) => ({ file: path.relative(PBC, file), path: file, label }));
    const classes = [...new Set(files.map((f) => f.label))].sort();
    // The portable pack (lossy WebP q85, the size target: PBC at 128 px in ≤ 40 MiB), then the lossless default.
    const out = path.join(dir, 'sample.pack');
    const started = performance.now();
    await writePack(items, out, { classes, codec: 'webp', quality: 85 });
    const packSeconds = (performance.now() - started) / 1000;
    const bytes = readFileSync(out).length;
    const lossless = path.join(dir, 'lossless.pack');
    await writePack(items, lossless, { classes });
    const losslessBytes = readFileSync(lossless).length;
    const readStarted = performance.now();
    const pack = await readPack(out);
    const readSeconds = (performance.now() - readStarted) / 1000;
    log('training throughput: the real loader (pack → augment → worker prefetch) against batches already in memory');
    const loader = await loaderThroughput({ images: pack.images, size: pack.size, labels: pack.labels, classes: pack.classes });
    return {
      ...loader,
      images: pack.n,
      bytes_per_image: Math.round(bytes / pack.n),
      mib_for_pbc_14527: round(((bytes / pack.n) * 14527) / 2 ** 20, 1),
      mib_for_pbc_14527_lossless: round(((losslessBytes / pack.n) * 14527) / 2 ** 20, 1),
      pack_img_per_s: round(pack.n / packSeconds, 1),
      read_img_per_s: round(pack.n / readSeconds, 1),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Trains a small model for a few steps on pre-made batches, then on batches from the prefetching loader. */
async function loaderThroughput(set: ImageSet) {
  const steps = quick ? 4 : 12;
  const batchSize = 32;
  const model = createModel('convnext-only', { numClasses: set.classes.length, inputSize: set.size });
  const optimizer = new E.AdamW(model.parameters(), { lr: 1e-3 });
  const order = Int32Array.from({ length: steps * batchSize }, (_, i) => i % set.labels.length);
  const recipe = { normalization: IMAGENET_NORMALIZATION, augment: DEFAULT_AUGMENT };
  const step = (x: E.Tensor, y: E.Tensor) => {
    E.tidy(() => E.F.crossEntropy(model.forward(x), y).backward());
    optimizer.step();
    optimizer.zeroGrad();
  };
  const inMemory = Array.from({ length: steps }, (_, s) => makeBatch(set, order.subarray(s * batchSize, (s + 1) * batchSize), { ...recipe, seed: s }));
  step(inMemory[0].x, inMemory[0].y); // warm-up
  let started = performance.now();
  for (const { x, y } of inMemory) step(x, y);
  const memoryImgS = (steps * batchSize) / ((performance.now() - started) / 1000);
  E.dispose(inMemory);
  const source = workerBatches(set, recipe, { workers: 1 });
  try {
    const pending = new Map<number, Promise<{ x: E.Tensor; y: E.Tensor }>>();
    const request = (s: number) => {
      if (s < steps && !pending.has(s)) pending.set(s, source.request(order.subarray(s * batchSize, (s + 1) * batchSize), s));
    };
    E.dispose(await source.request(order.subarray(0, batchSize), 0)); // warm-up: the worker loads the addon
    started = performance.now();
    for (let s = 0; s < steps; s++) {
      request(s);
      request(s + 1);
      request(s + 2);
      const { x, y } = await pending.get(s)!;
      step(x, y);
      E.dispose([x, y]);
    }
  } finally {
    await source.close();
  }
  const loaderImgS = (steps * batchSize) / ((performance.now() - started) / 1000);
  optimizer.dispose();
  model.dispose();
  return {
    train_img_per_s_in_memory: round(memoryImgS, 1),
    train_img_per_s_loader: round(loaderImgS, 1),
    loader_ratio: round(loaderImgS / memoryImgS, 2),
    loader_goal_ratio: 0.9,
  };
}

function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

async function main(): Promise<void> {
  const count = quick ? 120 : 800;
  log(`sampling ${count} PBC images of 360×363 (${quick ? 'quick' : 'full'} run)`);
  const files = await sampleFiles(count);
  const paths = files.map((f) => f.file);

  log('fixture parity');
  const fixtures = await fixtureDiffs();

  log('MPM time per image');
  const mpm = await Mpm.create();
  const originals = await Promise.all(paths.slice(0, quick ? 40 : 150).map((p) => readImageFile(p)));
  const working = await Promise.all(originals.map((o) => toModelGeometry(o)));
  const mpmMs128 = mpmMsPerImage(mpm, working, quick ? 3 : 5);
  const mpmMs360 = mpmMsPerImage(mpm, originals.slice(0, quick ? 10 : 30), 1);

  log('throughput, 1 and 2 worker threads');
  const noMpm1 = await throughput(paths, 1, false);
  const mpm1 = await throughput(paths, 1, true);
  const mpm2 = await throughput(paths, 2, true);

  log('pack size and read speed');
  const pack = await packStats(files.slice(0, quick ? 120 : 800));

  const result = {
    bench: 'data',
    quick,
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    images: paths.length,
    geometry: DEFAULT_GEOMETRY,
    decode_crop_resize_img_per_s_1_thread: noMpm1,
    decode_crop_resize_mpm_img_per_s_1_thread: mpm1,
    decode_crop_resize_mpm_img_per_s_2_threads: mpm2,
    scaling_2_over_1: round(mpm2 / mpm1, 2),
    mpm_ms_per_image_128px: mpmMs128,
    mpm_ms_per_image_360px: mpmMs360,
    mpm_goal_ms: 10,
    fixture_max_abs_diff: fixtures,
    pack,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

await main();
