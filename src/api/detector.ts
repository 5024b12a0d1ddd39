// Fitting a model's out-of-distribution detector: statistics from its training images, the threshold from its
// validation images, so that the threshold flags a chosen share of images like those it was trained on.
import type { DatasetItem } from '../data/dataset.js';
import { fitOodStatistics, oodDistances, oodThreshold } from '../eval/ood.js';
import type { OodInfo } from '../models/io.js';
import type { Classifier } from './classifier.js';
import { scoreItems } from './evaluate.js';

export interface DetectorOptions {
  /** The share of validation images the threshold may flag (default 0.04, under the 5 % ceiling with room for noise). */
  flagged?: number;
  batchSize?: number;
  onProgress?: (stage: 'training' | 'validation', done: number, total: number) => void;
}

export async function fitDetector(classifier: Classifier, train: DatasetItem[], val: DatasetItem[], options: DetectorOptions = {}): Promise<OodInfo> {
  const featuresOf = async (items: DatasetItem[], stage: 'training' | 'validation') => {
    const scored = await scoreItems(classifier, items, {
      batchSize: options.batchSize,
      features: true,
      onProgress: (done, total) => options.onProgress?.(stage, done, total),
    });
    return { features: scored.features!, labels: scored.labels };
  };
  const trainSet = await featuresOf(train, 'training');
  const stats = fitOodStatistics(trainSet.features, trainSet.labels, classifier.classes.length);
  const distances = oodDistances((await featuresOf(val, 'validation')).features, stats);
  const threshold = oodThreshold(distances, options.flagged ?? 0.04);
  const share = distances.filter((d) => d > threshold).length / distances.length;
  return { kind: 'mahalanobis', threshold, validationFlagged: share, ...stats };
}
