// `npm run bench:predict [-- --quick]`: classification latency and throughput of dualpath-atto at 128 px, end to end
// (decode, crop/resize, MPM when the model uses it, forward) and the model alone, the same end to end for the
// bundled model (its scale and colour recipe and its detector included), training throughput with the data
// pipeline, the cost of scale estimation and normalisation per image, and both models end to end in both precisions
// where the CPU runs bf16 natively. Progress goes to stderr; the
// last line on stdout is one JSON document.
import { mkdtempSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { createModel } from '../src/models/index.js';
import { saveModel } from '../src/models/io.js';
import { BUNDLED_MODEL, defaultPrecision, loadClassifier } from '../src/api/classifier.js';
import { cpuRecord, nativeBf16 } from './cpu.js';
import { endToEnd, median } from './end-to-end.js';
import { DEFAULT_AUGMENT } from '../src/data/augment.js';
import { decodeImage } from '../src/data/image.js';
import { type InputRecipe, prepareImage } from '../src/data/prepare.js';
import { IMAGENET_NORMALIZATION, type ImageSet } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { train } from '../src/train/trainer.js';

const quick = process.argv.includes('--quick');
const size = 128;
const log = (message: string) => process.stderr.write(`${message}\n`);
const pbc = path.resolve('../shared/data/pbc');
const precision = defaultPrecision('cpu', 'dualpath-atto');

async function main(): Promise<void> {
  const loadAtStart = loadavg().map((l) => +l.toFixed(2));
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-bench-'));
  const modelFile = path.join(dir, 'dualpath-atto.safetensors');
  E.manualSeed(0);
  const fresh = createModel('dualpath-atto', { numClasses: 8, inputSize: size });
  await saveModel(modelFile, fresh, {
    classes: [...PBC_CLASSES],
    normalization: IMAGENET_NORMALIZATION,
    preprocessing: { geometry: { field: 360, size }, mpm: null },
  });
  fresh.dispose();
  const files = PBC_CLASSES.flatMap((c) =>
    readdirSync(path.join(pbc, c))
      .filter((f) => !f.startsWith('.'))
      .slice(0, quick ? 8 : 16)
      .map((f) => path.join(pbc, c, f)),
  );
  const buffers = await Promise.all(files.map((f) => readFile(f)));
  const classifier = await loadClassifier(modelFile, { device: 'cpu', precision });

  log(`dualpath-atto, single-image latency and end to end in batches of 64 (${precision})`);
  const { singleMs, batchImgS } = await endToEnd(classifier, buffers, quick);

  log('model forward, batch 64');
  const prepared = await Promise.all(buffers.slice(0, 64).map(async (b) => (await classifier.prepare(b)).image));
  while (prepared.length < 64) prepared.push(prepared[prepared.length % buffers.length]);
  classifier.logits(prepared);
  const forwardTimes: number[] = [];
  for (let i = 0; i < (quick ? 2 : 5); i++) {
    const start = performance.now();
    classifier.logits(prepared);
    forwardTimes.push(performance.now() - start);
  }
  const forwardImgS = 64 / (median(forwardTimes) / 1000);

  const bundledPrecision = defaultPrecision('cpu', 'convnext_only_atto');
  log(`the bundled model with its input recipe and detector, the same (${bundledPrecision})`);
  const bundledClassifier = await loadClassifier(BUNDLED_MODEL, { device: 'cpu', precision: bundledPrecision });
  const bundled = { ...(await endToEnd(bundledClassifier, buffers, quick)), detector: bundledClassifier.ood?.pooling ?? null };
  bundledClassifier.dispose();

  // Each model in both precisions, end to end, where the CPU runs bf16 natively.
  const figures = (f: { singleMs: number; batchImgS: number }) => ({ single_image_ms: +f.singleMs.toFixed(1), batch_img_s: +f.batchImgS.toFixed(1) });
  const bothPrecisions = async (file: string, usual: E.Precision, atUsual: { singleMs: number; batchImgS: number }) => {
    const other: E.Precision = usual === 'bf16' ? 'fp32' : 'bf16';
    const out: Partial<Record<E.Precision, ReturnType<typeof figures>>> = { [usual]: figures(atUsual) };
    if (!nativeBf16) return out;
    log(`${path.basename(file)} in ${other}`);
    const c = await loadClassifier(file, { device: 'cpu', precision: other });
    out[other] = figures(await endToEnd(c, buffers, quick));
    c.dispose();
    return out;
  };
  const byPrecision = {
    'dualpath-atto': await bothPrecisions(modelFile, precision, { singleMs, batchImgS }),
    bundled: await bothPrecisions(BUNDLED_MODEL, bundledPrecision, bundled),
  };

  log('training steps, batch 32, with the data pipeline (augmentation, prefetch worker)');
  const pixels = size * size * 3;
  const set: ImageSet = { images: new Uint8Array(prepared.length * pixels), size, labels: new Int32Array(prepared.length), classes: [...PBC_CLASSES] };
  prepared.forEach((image, i) => {
    set.images.set(image.data, i * pixels);
    set.labels[i] = i % 8;
  });
  const model = createModel('dualpath-atto', { numClasses: 8, inputSize: size });
  const steps: number[] = [];
  await train({
    model,
    data: set,
    trainIndices: Int32Array.from(set.labels.keys()),
    valIndices: Int32Array.from([0, 1]),
    runDir: path.join(dir, 'run'),
    device: 'cpu',
    resume: false,
    workers: 1,
    config: {
      epochs: quick ? 2 : 4,
      batchSize: 32,
      lr: 1e-3,
      minLr: 0,
      weightDecay: 0.05,
      warmupFraction: 0,
      labelSmoothing: 0.1,
      emaDecay: null,
      precision,
      clipGrad: 1,
      seed: 0,
      patience: null,
      augment: DEFAULT_AUGMENT,
      normalization: IMAGENET_NORMALIZATION,
      evalBatchSize: 64,
      checkpointMinutes: 60,
    },
    onEvent: (event) => {
      if (event.type === 'step') steps.push(32 / event.imagesPerSecond);
    },
  });
  model.dispose();
  const trainImgS = 32 / median(steps.slice(1));

  log('scale estimation and normalisation, white balance and stain normalisation, per PBC image');
  const decoded = await Promise.all(buffers.slice(0, 32).map((b) => decodeImage(b)));
  const plain: InputRecipe = { geometry: { field: 360, size }, mpm: null, scale: null, background: null, stain: null };
  const normalised: InputRecipe = {
    ...plain,
    scale: { rbcDiameter: 73, rbcDiameterUm: 7.5, nucleusExtent: 114 },
    background: [[255, 229, 202]],
    stain: { haematoxylin: [0.9, 2.4], eosin: [0.4, 1.7] },
  };
  const perImage = async (recipe: InputRecipe) => {
    const start = performance.now();
    for (const image of decoded) await prepareImage(image, recipe);
    return (performance.now() - start) / decoded.length;
  };
  await perImage(normalised);
  const [plainMs, normalisedMs] = [
    median([await perImage(plain), await perImage(plain), await perImage(plain)]),
    median([await perImage(normalised), await perImage(normalised), await perImage(normalised)]),
  ];
  classifier.dispose();
  console.log(
    JSON.stringify({
      bench: 'predict',
      quick,
      model: 'dualpath-atto',
      input_size: size,
      threads: E.numThreads(),
      precision,
      cpu: cpuRecord,
      load_average: { start: loadAtStart, end: loadavg().map((l) => +l.toFixed(2)) },
      prepare_ms: +plainMs.toFixed(2),
      prepare_scale_normalised_ms: +normalisedMs.toFixed(2),
      scale_ms: +(normalisedMs - plainMs).toFixed(2),
      single_image_ms: +singleMs.toFixed(1),
      forward_img_s: +forwardImgS.toFixed(1),
      batch_img_s: +batchImgS.toFixed(1),
      train_img_s: +trainImgS.toFixed(1),
      bundled: {
        model: path.basename(BUNDLED_MODEL),
        precision: bundledPrecision,
        detector: bundled.detector,
        ...figures(bundled),
      },
      by_precision: byPrecision,
      goals: { scale_ms: 10, single_image_ms: 35, forward_img_s: 95, batch_img_s: 60, train_img_s: 30 },
    }),
  );
}

await main();
