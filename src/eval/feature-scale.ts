// A scale read off the network's own features, for images in which nothing measurable sets one: an enlarged field
// keeps too few red cells to measure, and its nucleus says little where the cell type sets its size. The early
// stages' responses change with the size of what they see, so a ridge regression on them, fitted on training images
// magnified by known factors, estimates how far an image is from the training scale.
import { invertSymmetric } from './ood.js';

/** A linear estimate of the log magnification from pooled features: log m = bias + Σ weights · features. */
export interface FeatureScaleFit {
  bias: number;
  weights: Float64Array;
}

/** The ridge penalty on standardised features, per image: of 0.01, 0.1 and 1, the best on PBC *select* (docs/results.md). */
const RIDGE = 0.1;

/** Fits the regression on n rows of features [n × d] and each row's magnification relative to the training scale. */
export function fitFeatureScale(features: Float32Array, magnifications: ArrayLike<number>, ridge = RIDGE): FeatureScaleFit {
  const n = magnifications.length;
  const d = features.length / n;
  if (!Number.isInteger(d) || n < 2) throw new RangeError(`fitFeatureScale: need at least 2 images with whole feature rows, got ${n}`);
  const target = Float64Array.from(magnifications, (m) => {
    if (!(m > 0)) throw new RangeError(`fitFeatureScale: magnifications must be positive, got ${m}`);
    return Math.log(m);
  });
  const targetMean = target.reduce((a, b) => a + b, 0) / n;
  // Standardised features, so that one penalty fits features of every spread; a constant feature is left at 0.
  const mean = new Float64Array(d);
  const spread = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j] += features[i * d + j] / n;
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) spread[j] += (features[i * d + j] - mean[j]) ** 2 / n;
  for (let j = 0; j < d; j++) spread[j] = Math.sqrt(spread[j]) || 1;
  const gram = new Float64Array(d * d);
  const moment = new Float64Array(d);
  const z = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) z[j] = (features[i * d + j] - mean[j]) / spread[j];
    for (let a = 0; a < d; a++) {
      moment[a] += z[a] * (target[i] - targetMean);
      for (let b = a; b < d; b++) gram[a * d + b] += z[a] * z[b];
    }
  }
  for (let a = 0; a < d; a++) {
    for (let b = 0; b < a; b++) gram[a * d + b] = gram[b * d + a];
    gram[a * d + a] += ridge * n;
  }
  const inverse = invertSymmetric(gram, d);
  // Back to raw features: log m = targetMean + Σ w_j (x_j − mean_j) / spread_j.
  const weights = new Float64Array(d);
  let bias = targetMean;
  for (let a = 0; a < d; a++) {
    let w = 0;
    for (let b = 0; b < d; b++) w += inverse[a * d + b] * moment[b];
    weights[a] = w / spread[a];
    bias -= weights[a] * mean[a];
  }
  return { bias, weights };
}

/** Each row's estimated magnification relative to the training scale. */
export function magnificationsOf(features: Float32Array, fit: { bias: number; weights: ArrayLike<number> }): Float64Array {
  const d = fit.weights.length;
  const out = new Float64Array(features.length / d);
  for (let i = 0; i < out.length; i++) {
    let log = fit.bias;
    for (let j = 0; j < d; j++) log += fit.weights[j] * features[i * d + j];
    out[i] = Math.exp(log);
  }
  return out;
}
