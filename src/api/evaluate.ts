// Scoring labelled images with a classifier, as they are or under the shift suite's shifts.
import type { DatasetItem } from '../data/dataset.js';
import { type RgbImage, readImageFile } from '../data/image.js';
import type { ScaleReport, StainTreatment } from '../data/prepare.js';
import { showsOneCell } from '../data/scale.js';
import { evaluateScores, type ScoredItems, type ShiftResult } from '../eval/evaluation.js';
import type { Shift } from '../eval/shifts.js';
import type { OodPooling } from '../models/io.js';
import type { Classifier, PreparedInput } from './classifier.js';

export {
  evaluateScores,
  type Evaluation,
  type ImagePrediction,
  imagePredictions,
  type ScoredItems,
  REPORT_FILE,
  shiftTable,
  writeReport,
} from '../eval/evaluation.js';

export interface ScoreOptions {
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
  /** The listing's file-size limit, for files read again to be transformed (default: 256 MiB). */
  maxFileBytes?: number;
  /** Applied to each decoded image before the classifier prepares it (the shift suite). */
  transform?: (image: RgbImage) => Promise<RgbImage>;
  /** Keep each image's features too, pooled this way (fitting the out-of-distribution detector). */
  features?: OodPooling;
}

/** Runs the classifier over labelled items in batches; unreadable files are reported, not fatal. */
export async function scoreItems(classifier: Classifier, items: DatasetItem[], options: ScoreOptions = {}): Promise<ScoredItems> {
  const k = classifier.classes.length;
  const batchSize = options.batchSize ?? 64;
  const logits: number[] = [];
  const labels: number[] = [];
  const files: string[] = [];
  const scales: ScaleReport[] = [];
  const stains: StainTreatment[] = [];
  const distances: number[] = [];
  const oneCell: (boolean | undefined)[] = [];
  const features: Float32Array[] = [];
  const failed: ScoredItems['failed'] = [];
  const { transform } = options;
  // Read again under the same limits as the untransformed images, so that a shift scores the same files.
  const limits = { maxPixels: classifier.maxPixels, maxFileBytes: options.maxFileBytes };
  const input = (item: DatasetItem) => (transform ? readImageFile(item.path, limits).then(transform) : Promise.resolve(item.path));
  const prepare = async (chunk: DatasetItem[]) => {
    const sources = await Promise.all(chunk.map((item) => input(item).catch((error: Error) => error)));
    const images = await classifier.prepareMany(sources.flatMap((source) => (source instanceof Error ? [] : [source])));
    let next = 0;
    return chunk.map((item, i) => {
      const image = sources[i] instanceof Error ? sources[i] : images[next++];
      return image instanceof Error ? { item, error: image } : { item, image };
    });
  };
  let preparing = prepare(items.slice(0, batchSize));
  for (let start = 0; start < items.length; start += batchSize) {
    const prepared = await preparing;
    // The next batch is prepared (on the classifier's threads, where they run) while this one is read.
    if (start + batchSize < items.length) preparing = prepare(items.slice(start + batchSize, start + 2 * batchSize));
    const firstLook = prepared.filter((p): p is { item: DatasetItem; image: PreparedInput } => 'image' in p);
    for (const p of prepared) if ('error' in p) failed.push({ path: p.item.path, reason: (p.error as Error).message });
    if (firstLook.length) {
      // Features for fitting the detector are of the images as they are; everything else reads as a user's answer does.
      const images = firstLook.map((g) => g.image);
      const reading = options.features
        ? {
            ...classifier.score(
              images.map((p) => p.image),
              { pooling: options.features },
            ),
            prepared: images,
          }
        : await classifier.read(images, (row) => input(firstLook[row].item));
      const good = firstLook.map(({ item }, row) => ({ item, image: reading.prepared[row] }));
      const { logits: batch, distances: batchDistances, features: batchFeatures } = reading;
      if (batchDistances) distances.push(...batchDistances);
      if (options.features) features.push(batchFeatures);
      for (let i = 0; i < batch.length; i++) logits.push(batch[i]);
      for (const { item } of good) {
        const label = classifier.classes.indexOf(item.label);
        if (label < 0) throw new Error(`label '${item.label}' of ${item.path} is not one of the model's classes (${classifier.classes.join(', ')})`);
        labels.push(label);
        files.push(item.file);
      }
      scales.push(...good.map((g) => g.image.scale));
      stains.push(...good.map((g) => g.image.stain));
      oneCell.push(...good.map((g) => (g.image.measures ? showsOneCell(g.image.measures) : undefined)));
    }
    options.onProgress?.(Math.min(items.length, start + batchSize), items.length);
  }
  if (logits.length !== labels.length * k) throw new Error('internal: logits and labels disagree');
  return {
    logits: Float32Array.from(logits),
    labels: Int32Array.from(labels),
    files,
    scales,
    stains,
    oneCell,
    distances: classifier.ood ? Float64Array.from(distances) : undefined,
    features: options.features ? concatenate(features) : undefined,
    failed,
  };
}

function concatenate(rows: Float32Array[]): Float32Array {
  const out = new Float32Array(rows.reduce((n, r) => n + r.length, 0));
  let offset = 0;
  for (const r of rows) {
    out.set(r, offset);
    offset += r.length;
  }
  return out;
}

/** Scores the items once per shift; the figures say how the model holds up on images unlike its training data's. */
export async function evaluateShifts(
  classifier: Classifier,
  items: DatasetItem[],
  shifts: readonly Shift[],
  options: { batchSize?: number; maxFileBytes?: number; onProgress?: (shift: string, done: number, total: number) => void } = {},
): Promise<Record<string, ShiftResult>> {
  const results: Record<string, ShiftResult> = {};
  for (const shift of shifts) {
    const scored = await scoreItems(classifier, items, {
      batchSize: options.batchSize,
      maxFileBytes: options.maxFileBytes,
      transform: shift.apply,
      onProgress: (done, total) => options.onProgress?.(shift.name, done, total),
    });
    const evaluation = evaluateScores(scored, classifier);
    results[shift.name] = {
      params: shift.params,
      n: evaluation.n,
      accuracy: evaluation.accuracy,
      balanced_accuracy: evaluation.balanced_accuracy,
      uncertain_fraction: evaluation.uncertain_fraction,
    };
  }
  return results;
}
