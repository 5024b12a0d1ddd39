// Validation: the model's logits over held-out images, and the metrics that choose the best epoch.
import * as E from '../engine/index.js';
import type { ImageClassifier } from '../models/classifier.js';
import { type ImageSet, type Normalization, makeBatch } from '../data/batches.js';
import { softmaxRows } from '../eval/calibration.js';
import { NonFiniteModelError, countNonFinite } from '../eval/finite.js';
import { computeMetrics, type Metrics } from '../eval/metrics.js';
import { RESTART_ADVICE } from './step.js';

export interface PredictOptions {
  batchSize: number;
  normalization: Normalization;
  precision: E.Precision;
  device: E.Device;
  /** Called after each batch with the images done so far and their total. */
  onProgress?: (done: number, total: number) => void;
}

/** Logits [n × classes] of the model (in eval mode) over the given samples, as float32 on the host. */
export function predictLogits(model: ImageClassifier, data: ImageSet, indices: Int32Array, options: PredictOptions): Float32Array {
  const k = model.numClasses;
  const out = new Float32Array(indices.length * k);
  const wasTraining = model.training;
  model.eval();
  try {
    for (let start = 0; start < indices.length; start += options.batchSize) {
      const batch = indices.subarray(start, Math.min(indices.length, start + options.batchSize));
      E.tidy(() =>
        E.noGrad(() => {
          const { x } = makeBatch(data, batch, { normalization: options.normalization, device: options.device });
          const logits = E.withPrecision(options.precision, options.device, () => model.forward(x));
          out.set(logits.float().data() as Float32Array, start * k);
        }),
      );
      options.onProgress?.(start + batch.length, indices.length);
    }
  } finally {
    model.train(wasTraining);
  }
  return out;
}

/**
 * The model's validation metrics after an epoch. NaN or infinite outputs are an error: their scores would look like
 * a real macro-F1 (argmax picks some class), so such a model must never be compared, kept or checkpointed.
 */
export function validateEpoch(model: ImageClassifier, data: ImageSet, indices: Int32Array, epoch: number, options: PredictOptions): Metrics {
  const logits = predictLogits(model, data, indices, options);
  const nonFinite = countNonFinite(logits);
  if (nonFinite > 0) throw divergedValidation(nonFinite, logits.length, epoch);
  return validationMetrics(logits, data, indices);
}

/** The metrics of validation logits [indices.length × classes], all finite. */
export function validationMetrics(logits: Float32Array, data: ImageSet, indices: Int32Array): Metrics {
  return computeMetrics(
    softmaxRows(logits, indices.length, data.classes.length),
    Array.from(indices, (i) => data.labels[i]),
    data.classes,
  );
}

/** The error for a model whose validation outputs are not all finite. */
export function divergedValidation(nonFinite: number, total: number, epoch: number): NonFiniteModelError {
  return new NonFiniteModelError(
    `training diverged: ${nonFinite} of ${total} validation outputs after epoch ${epoch + 1} are NaN or infinite; that model is neither kept as the best nor checkpointed. ${RESTART_ADVICE}`,
  );
}
