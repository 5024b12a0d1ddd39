// Fitting what a model knows of the images it was trained on: its out-of-distribution detector (statistics from its
// training images, the threshold from its validation images, so that the threshold flags a chosen share of images
// like those it was trained on), and the scale estimate from its features (training images magnified by known factors).
import type { DatasetItem } from '../data/dataset.js';
import { readImageFile, type RgbImage } from '../data/image.js';
import { fitFeatureScale } from '../eval/feature-scale.js';
import { fitBlockOodStatistics, oodDistances, oodThreshold } from '../eval/ood.js';
import { magnify } from '../eval/shifts.js';
import type { FeatureScale, OodInfo, OodPooling } from '../models/io.js';
import type { Classifier } from './classifier.js';
import { scoreItems } from './evaluate.js';

/**
 * The share of validation images the threshold flags. The detector flags other images than the low-confidence rule
 * does, so its share adds to the uncertain rate nearly in full: at 2 % the bundled model flags 10.9 % of its
 * *select* images uncertain, at 4 % 12.8 %, over the 12 % it must stay under.
 */
export const DEFAULT_OOD_FLAGGED = 0.02;

export interface DetectorOptions {
  /** The share of validation images the threshold may flag (default DEFAULT_OOD_FLAGGED). */
  flagged?: number;
  /** The features (default 'stage-std', which told PBC from what it is not far better than 'pre-logits': docs/results.md). */
  pooling?: OodPooling;
  batchSize?: number;
  onProgress?: (stage: 'training' | 'validation', done: number, total: number) => void;
}

export async function fitDetector(classifier: Classifier, train: DatasetItem[], val: DatasetItem[], options: DetectorOptions = {}): Promise<OodInfo> {
  const pooling = options.pooling ?? 'stage-std';
  const featuresOf = async (items: DatasetItem[], stage: 'training' | 'validation') => {
    const scored = await scoreItems(classifier, items, {
      batchSize: options.batchSize,
      features: pooling,
      onProgress: (done, total) => options.onProgress?.(stage, done, total),
    });
    return { features: scored.features!, labels: scored.labels };
  };
  const trainSet = await featuresOf(train, 'training');
  const blocks = pooling === 'stage-std' ? classifier.model.intermediateChannels : [trainSet.features.length / trainSet.labels.length];
  const stats = fitBlockOodStatistics(trainSet.features, trainSet.labels, classifier.classes.length, blocks);
  const distances = oodDistances((await featuresOf(val, 'validation')).features, stats);
  const threshold = oodThreshold(distances, options.flagged ?? DEFAULT_OOD_FLAGGED);
  const share = distances.filter((d) => d > threshold).length / distances.length;
  return { kind: 'mahalanobis', pooling, threshold, validationFlagged: share, ...stats };
}

/** Training images the scale estimate from features is fitted on, each at every FEATURE_SCALE_FACTORS magnification. */
export const FEATURE_SCALE_SAMPLE = 400;

/** n items spread evenly over the list (every k-th, from the first): a sample that repeats and covers every class folder. */
export function evenSample<T>(items: readonly T[], n: number): T[] {
  return items.filter((_, i) => i % Math.max(1, Math.floor(items.length / n)) === 0).slice(0, n);
}

/**
 * The magnifications each training image is shown at to fit the scale estimate: the training scale and enlargements
 * up to the shift suite's largest. Enlarged fields are what red cells leave unmeasured; a shrunk field keeps them.
 */
const FEATURE_SCALE_FACTORS = [1, 1.25, 1.5, 2, 2.5, 3];

/**
 * Fits the scale estimate from the network's features: each training image magnified by each factor and prepared
 * as the classifier prepares it (which may bring it back towards the training scale), its features pooled as
 * `pooling`, against the magnification left after preparation. Unreadable images are passed over.
 */
export async function fitScaleFromFeatures(
  classifier: Classifier,
  train: DatasetItem[],
  options: { pooling?: OodPooling; batchSize?: number; onProgress?: (done: number, total: number) => void } = {},
): Promise<FeatureScale> {
  const pooling = options.pooling ?? 'stage-std';
  const batchSize = options.batchSize ?? 64;
  const rows: Float32Array[] = [];
  const magnifications: number[] = [];
  let batch: { image: RgbImage; magnification: number }[] = [];
  const flush = () => {
    if (batch.length === 0) return;
    const { features } = classifier.score(
      batch.map((b) => b.image),
      { pooling },
    );
    const width = features.length / batch.length;
    batch.forEach((b, i) => {
      rows.push(features.slice(i * width, (i + 1) * width));
      magnifications.push(b.magnification);
    });
    batch = [];
  };
  for (const [done, item] of train.entries()) {
    const image = await readImageFile(item.path).catch(() => null);
    if (image) {
      for (const factor of FEATURE_SCALE_FACTORS) {
        const prepared = await classifier.prepare(factor === 1 ? image : await magnify(image, factor));
        batch.push({ image: prepared.image, magnification: factor * prepared.scale.factor });
        if (batch.length === batchSize) flush();
      }
    }
    options.onProgress?.(done + 1, train.length);
  }
  flush();
  if (rows.length === 0) throw new Error('none of the training images could be read to fit the scale estimate');
  const features = new Float32Array(rows.length * rows[0].length);
  rows.forEach((row, i) => features.set(row, i * row.length));
  const fit = fitFeatureScale(features, magnifications);
  return { pooling, bias: fit.bias, weights: Array.from(fit.weights) };
}
