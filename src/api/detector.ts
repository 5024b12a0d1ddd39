// Fitting a model's out-of-distribution detector: statistics from its training images, the threshold from its
// validation images, so that the threshold flags a chosen share of images like those it was trained on.
import type { DatasetItem } from '../data/dataset.js';
import { fitOodStatistics, oodDistances, oodThreshold } from '../eval/ood.js';
import type { OodInfo } from '../models/io.js';
import type { Classifier } from './classifier.js';

export interface DetectorOptions {
  /** The share of validation images the threshold may flag (default 0.04, under the 5 % ceiling with room for noise). */
  flagged?: number;
  batchSize?: number;
  onProgress?: (stage: 'training' | 'validation', done: number, total: number) => void;
}

export async function fitDetector(classifier: Classifier, train: DatasetItem[], val: DatasetItem[], options: DetectorOptions = {}): Promise<OodInfo> {
  const trainSet = await featuresOf(classifier, train, options, 'training');
  const stats = fitOodStatistics(trainSet.features, trainSet.labels, classifier.classes.length);
  const valSet = await featuresOf(classifier, val, options, 'validation');
  const distances = oodDistances(valSet.features, stats);
  const flagged = options.flagged ?? 0.04;
  const threshold = oodThreshold(distances, flagged);
  const share = distances.filter((d) => d > threshold).length / distances.length;
  return { kind: 'mahalanobis', threshold, validationFlagged: share, ...stats };
}

async function featuresOf(classifier: Classifier, items: DatasetItem[], options: DetectorOptions, stage: 'training' | 'validation'): Promise<{ features: Float32Array; labels: Int32Array }> {
  const batchSize = options.batchSize ?? 64;
  const rows: Float32Array[] = [];
  const labels: number[] = [];
  for (let start = 0; start < items.length; start += batchSize) {
    const chunk = items.slice(start, start + batchSize);
    const prepared = await Promise.all(chunk.map((item) => classifier.prepare(item.path).then((p) => ({ item, p }), () => null)));
    const good = prepared.filter((p) => p !== null);
    if (good.length) {
      rows.push(classifier.score(good.map((g) => g.p.image)).features);
      for (const { item } of good) labels.push(classifier.classes.indexOf(item.label));
    }
    options.onProgress?.(stage, Math.min(items.length, start + batchSize), items.length);
  }
  if (labels.some((l) => l < 0)) throw new Error(`some labels are not among the model's classes (${classifier.classes.join(', ')})`);
  const features = new Float32Array(rows.reduce((n, r) => n + r.length, 0));
  let offset = 0;
  for (const r of rows) {
    features.set(r, offset);
    offset += r.length;
  }
  return { features, labels: Int32Array.from(labels) };
}
