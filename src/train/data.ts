// Training data in memory: from a pack (fast, made once by `hemato pack --split`), or straight from a data set
// folder with a split file, or with a split made now (seeded, stratified, duplicate-aware).
import path from 'node:path';
import { availableParallelism } from 'node:os';
import type { ImageSet } from '../data/batches.js';
import { type DatasetSource, listDataset, noLabelledImages, PBC_CLASSES, type SkippedFile, unusableFile } from '../data/dataset.js';
import { DEFAULT_GEOMETRY, type GeometryConfig } from '../data/geometry.js';
import { type PackHeader, readPack, readPackHeader } from '../data/pack.js';
import { backgroundColours, type InputRecipe, measureReference, type ReferenceScale, type Rgb } from '../data/prepare.js';
import { PreparePool } from '../data/prepare-pool.js';
import { scanDataset } from '../data/scan.js';
import type { StainRange } from '../data/stain.js';
import { makeSplit, readSplit, sha256Text, type Split, type SplitRow } from '../data/split.js';
import { type MpmConfigInput, resolveMpmConfig } from '../preprocess/mpm.js';

export interface TrainingDataOptions {
  source: DatasetSource | { pack: string };
  /** A split CSV from `hemato split`; null makes one now from `seed` and `valFraction`. */
  split: string | null;
  /** Apply the Multi-scale Preprocessing Module to every image: true with its defaults, or with these settings. */
  mpm: boolean | MpmConfigInput;
  seed: number;
  valFraction?: number;
  /** The centred field cut before resizing (source pixels); null takes the largest centred square. */
  field?: number | null;
  /** Bring every image to the training data's physical scale and background colour (default true). */
  normalizeScale?: boolean;
  /** With normalizeScale: also white-balance every image to the training background (default true). */
  whiteBalance?: boolean;
  /** With normalizeScale: also bring every image's stain strength into the training range (default true). */
  normalizeStain?: boolean;
  /** The scale, background and stain range to bring images to (a fine-tuned model's starting point's); absent: measured here. */
  reference?: { scale: ReferenceScale; background: Rgb[] | null; stain: StainRange | null };
}

export interface TrainingData {
  set: ImageSet;
  files: string[];
  train: Int32Array;
  val: Int32Array;
  splitHash: string;
  /** Made now (not read from a file): the caller saves it with the run. */
  madeSplit: Split | null;
  preprocessing: InputRecipe;
  skipped: SkippedFile[];
}

export interface LoadProgress {
  (stage: string, done: number, total: number): void;
}

export async function loadTrainingData(options: TrainingDataOptions, inputSize: number, onProgress?: LoadProgress): Promise<TrainingData> {
  if ('pack' in options.source) return fromPack(options.source.pack, inputSize, options);
  const source = options.source;
  const classes = (await listDataset(source, { classes: await trainingClasses(source) })).classes;
  let rows: SplitRow[];
  let splitHash: string;
  let madeSplit: Split | null = null;
  let skipped: SkippedFile[] = [];
  const root = 'dir' in source ? source.dir : source.images;
  if (options.split) {
    ({ rows, hash: splitHash } = await readSplit(options.split));
    // Checked now, as a labels CSV is listed: not after minutes of decoding.
    const usable: SplitRow[] = [];
    for (const row of rows.filter((r) => r.part === 'train' || r.part === 'val')) {
      const unusable = classes.includes(row.label)
        ? await unusableFile(row.file, path.join(root, row.file))
        : { path: row.file, reason: 'unknown-label' as const, detail: `unknown label "${row.label}" (known: ${classes.join(', ')})` };
      if (unusable) skipped.push(unusable);
      else usable.push(row);
    }
    rows = usable;
  } else {
    const scan = await scanDataset(source, { classes, onProgress: (done, total) => onProgress?.('scanning', done, total) });
    madeSplit = makeSplit(scan.entries, { seed: options.seed, val: options.valFraction ?? 0.15 });
    ({ rows, hash: splitHash } = madeSplit);
    skipped = scan.skipped;
  }
  rows = rows.filter((r) => r.part === 'train' || r.part === 'val');
  if (rows.length === 0) throw new Error(noLabelledImages(path.resolve(root), skipped.length, classes));
  const inPart = (part: string) => rows.filter((r) => r.part === part).length;
  needBothParts('the split gives', inPart('train'), inPart('val'), 'give more images, or a split with both parts (hemato split)');
  const geometry: GeometryConfig = { field: options.field === undefined ? DEFAULT_GEOMETRY.field : options.field, size: inputSize };
  const mpm = options.mpm ? resolveMpmConfig(options.mpm === true ? {} : options.mpm) : null;
  const paths = rows.map((r) => path.join(root, r.file));
  // Measured on the training part only: the validation images must not shape their own preparation.
  const reference =
    options.normalizeScale === false || geometry.field === null
      ? null
      : (options.reference ??
        (await measureReference(
          paths.filter((_, i) => rows[i].part === 'train'),
          { seed: options.seed, geometry },
        )));
  const preprocessing: InputRecipe = {
    geometry,
    mpm,
    scale: reference?.scale ?? null,
    background: options.whiteBalance === false ? null : (reference?.background ?? null),
    stain: options.normalizeStain === false ? null : (reference?.stain ?? null),
  };
  const pool = await PreparePool.start(preprocessing, availableParallelism());
  let results;
  try {
    results = await pool.map(paths, (done) => onProgress?.('decoding', done, rows.length));
  } finally {
    await pool.close();
  }
  const pixels = inputSize * inputSize * 3;
  const kept = rows.flatMap((row, i) => {
    const result = results[i];
    if (result.ok) return [{ row, data: result.data }];
    skipped.push({ path: row.file, reason: result.code, detail: result.message });
    return [];
  });
  const images = new Uint8Array(kept.length * pixels);
  kept.forEach(({ data }, i) => images.set(data, i * pixels));
  const labels = Int32Array.from(kept, ({ row }) => classes.indexOf(row.label));
  const indicesOf = (part: string) => Int32Array.from(kept.flatMap(({ row }, i) => (row.part === part ? [i] : [])));
  const [train, val] = [indicesOf('train'), indicesOf('val')];
  needBothParts('of the images that decode, the split gives', train.length, val.length, 'see the skipped files, or give a split with more images in each part');
  return {
    set: { images, size: inputSize, labels, classes },
    files: kept.map(({ row }) => row.file),
    train,
    val,
    splitHash,
    madeSplit,
    preprocessing,
    skipped,
  };
}

/**
 * The classes a run trains on, in index order, known before any image is read: a pack's, from its header; for a
 * folder or a labels CSV, hemato's classes, which they are listed against (all of them, whether present or not).
 */
export async function trainingClasses(source: TrainingDataOptions['source']): Promise<string[]> {
  return 'pack' in source ? (await readPackHeader(source.pack)).header.classes : [...PBC_CLASSES];
}

/** Training fits on one part and keeps the epoch that does best on the other: it cannot go on without either. */
function needBothParts(source: string, train: number, val: number, remedy: string): void {
  if (train === 0 || val === 0)
    throw new Error(`${source} ${train} training and ${val} validation images; training needs both (validation chooses the epoch kept): ${remedy}`);
}

/**
 * Checks a pack against the run's settings on its header alone, before anything is decoded (or a run folder made):
 * its size, preparation and parts must be what the run can train from.
 */
export async function checkPackSource(
  file: string,
  inputSize: number,
  options: Omit<TrainingDataOptions, 'source'>,
): Promise<PackHeader & { splitHash: string }> {
  // A pack fixed its split and preparation when it was made: settings for them here would be recorded, not applied.
  if (options.split)
    throw new Error(`${file} is a pack, and its split was fixed when it was made (hemato pack --split); train from it without --split ${options.split}`);
  // Everything that can refuse the pack is checked on its header, before its images are decoded.
  const { header } = await readPackHeader(file);
  if (header.size !== inputSize)
    throw new Error(
      `${file} holds ${header.size} px images, but the run asks for ${inputSize} px; pack again with --size ${inputSize} or train with --size ${header.size}`,
    );
  // A pack's images are preprocessed already; MPM asked of the run cannot be applied to them.
  if (options.mpm && !header.mpm) throw new Error(`${file} was packed without MPM, but the run asks for it; pack with --mpm, or train without it`);
  const ignored = [
    options.normalizeScale === false && header.scale && '--no-scale (data.normalizeScale: false)',
    options.whiteBalance === false && header.background && 'data.whiteBalance: false',
    options.normalizeStain === false && header.stain && 'data.normalizeStain: false',
  ].filter(Boolean);
  if (ignored.length > 0)
    throw new Error(
      `${file} is a pack whose images were brought to the training scale, background and stain when it was made, so ${ignored.join(' and ')} cannot apply to them; leave that out, or train from a pack made with hemato pack --no-scale, or from the images`,
    );
  const { splitHash } = header;
  if (!splitHash) throw new Error(`${file} was packed without a split; make one with 'hemato split' and pack with --split`);
  const count = (part: string) => header.entries.filter((e) => e.part === part).length;
  needBothParts(`${file} holds`, count('train'), count('val'), 'make a split with both parts (hemato split) and pack again with --split');
  return { ...header, splitHash };
}

async function fromPack(file: string, inputSize: number, options: TrainingDataOptions): Promise<TrainingData> {
  const header = await checkPackSource(file, inputSize, options);
  const pack = await readPack(file);
  const indicesOf = (part: string) => Int32Array.from(pack.parts.flatMap((p, i) => (p === part ? [i] : [])));
  return {
    set: { images: pack.images, size: pack.size, labels: pack.labels, classes: pack.classes },
    files: pack.files,
    train: indicesOf('train'),
    val: indicesOf('val'),
    splitHash: header.splitHash,
    madeSplit: null,
    preprocessing: {
      geometry: header.geometry,
      mpm: header.mpm,
      scale: header.scale ?? null,
      background: backgroundColours(header.background),
      stain: header.stain ?? null,
    },
    skipped: header.skipped,
  };
}

/** What a run trained on: every image kept, with its label and part, in training order. */
export interface DataManifest {
  hash: string;
  rows: [file: string, label: string, part: 'train' | 'val'][];
}

export function dataManifest(data: TrainingData): DataManifest {
  const part = new Map<number, 'train' | 'val'>([...Array.from(data.train, (i) => [i, 'train'] as const), ...Array.from(data.val, (i) => [i, 'val'] as const)]);
  const rows = data.files.flatMap((file, i): DataManifest['rows'] => {
    const p = part.get(i);
    return p ? [[file, data.set.classes[data.set.labels[i]], p]] : [];
  });
  return { hash: sha256Text(JSON.stringify(rows)), rows };
}

/** How two manifests differ, as lines for the user: files added, removed, relabelled or moved, a few of each. */
export function manifestChanges(before: DataManifest, after: DataManifest, shown = 5): string[] {
  const old = new Map(before.rows.map(([file, label, part]) => [file, `${label}/${part}`]));
  const now = new Map(after.rows.map(([file, label, part]) => [file, `${label}/${part}`]));
  const list = (what: string, files: string[]) =>
    files.length === 0 ? [] : [`${files.length} ${what}: ${files.slice(0, shown).join(', ')}${files.length > shown ? ', …' : ''}`];
  const changes = [
    ...list(
      'added',
      [...now.keys()].filter((f) => !old.has(f)),
    ),
    ...list(
      'removed',
      [...old.keys()].filter((f) => !now.has(f)),
    ),
    ...list(
      'with another label or part',
      [...now].filter(([f, v]) => old.has(f) && old.get(f) !== v).map(([f, v]) => `${f} (${old.get(f)} → ${v})`),
    ),
  ];
  return changes.length > 0 || before.hash === after.hash ? changes : ['the same files and labels, in another order'];
}
