// An out-of-distribution score that is not the softmax: the Mahalanobis distance of an image's pooled features to
// the nearest class mean, with one covariance shared by the classes (Lee et al. 2018). A montage, an empty field or
// a cell from an unseen stain can fool the classifier's softmax, but its features sit far from every class seen in
// training.

export interface OodStatistics {
  /** Class means, row-major [classes × features]. */
  means: Float32Array;
  /** The inverse of the shared, shrunk covariance [features × features]. */
  precision: Float32Array;
  features: number;
}

/**
 * Shrinkage towards the mean variance keeps the covariance invertible and the distance robust: on PBC validation
 * against montages, backgrounds, red-cell corners, text and noise, AUROC was 0.73 at 0.05, 0.76 at 0.2 and 0.79 at 0.5.
 */
const SHRINKAGE = 0.5;

/** Fits class means and the shared precision matrix on training features [n × d] with their labels. */
export function fitOodStatistics(features: Float32Array, labels: ArrayLike<number>, classes: number): OodStatistics {
  const n = labels.length;
  const d = features.length / n;
  if (!Number.isInteger(d) || n < 2 * classes) throw new RangeError(`fitOodStatistics: need at least ${2 * classes} images with whole feature rows, got ${n}`);
  const means = new Float64Array(classes * d);
  const counts = new Float64Array(classes);
  for (let i = 0; i < n; i++) {
    counts[labels[i]]++;
    for (let j = 0; j < d; j++) means[labels[i] * d + j] += features[i * d + j];
  }
  for (let c = 0; c < classes; c++) {
    if (!counts[c]) throw new RangeError(`fitOodStatistics: class ${c} has no training images`);
    for (let j = 0; j < d; j++) means[c * d + j] /= counts[c];
  }
  const covariance = new Float64Array(d * d);
  const centred = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) centred[j] = features[i * d + j] - means[labels[i] * d + j];
    for (let a = 0; a < d; a++) {
      const ca = centred[a];
      for (let b = a; b < d; b++) covariance[a * d + b] += ca * centred[b];
    }
  }
  let trace = 0;
  for (let a = 0; a < d; a++) {
    for (let b = a; b < d; b++) covariance[b * d + a] = covariance[a * d + b] /= n;
    trace += covariance[a * d + a];
  }
  for (let a = 0; a < d * d; a++) covariance[a] *= 1 - SHRINKAGE;
  for (let a = 0; a < d; a++) covariance[a * d + a] += (SHRINKAGE * trace) / d;
  return { means: Float32Array.from(means), precision: Float32Array.from(invertSymmetric(covariance, d)), features: d };
}

/** Each row's squared Mahalanobis distance to the nearest class mean. */
export function oodDistances(features: Float32Array, stats: OodStatistics): Float64Array {
  const d = stats.features;
  const n = features.length / d;
  const classes = stats.means.length / d;
  const out = new Float64Array(n);
  const diff = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    let best = Infinity;
    for (let c = 0; c < classes; c++) {
      for (let j = 0; j < d; j++) diff[j] = features[i * d + j] - stats.means[c * d + j];
      let total = 0;
      for (let a = 0; a < d; a++) {
        let row = 0;
        for (let b = 0; b < d; b++) row += stats.precision[a * d + b] * diff[b];
        total += diff[a] * row;
      }
      best = Math.min(best, total);
    }
    out[i] = best;
  }
  return out;
}

/** The distance below which `1 − flagged` of the reference distances fall. */
export function oodThreshold(distances: ArrayLike<number>, flagged: number): number {
  const sorted = Float64Array.from(distances).sort();
  return sorted[Math.min(sorted.length - 1, Math.ceil((1 - flagged) * sorted.length) - 1)];
}

/** The inverse of a symmetric positive-definite matrix, by Cholesky factorisation. */
function invertSymmetric(matrix: Float64Array, d: number): Float64Array {
  const l = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      let sum = matrix[i * d + j];
      for (let k = 0; k < j; k++) sum -= l[i * d + k] * l[j * d + k];
      if (i === j) {
        if (!(sum > 0)) throw new RangeError('the feature covariance is not positive definite; the features are degenerate');
        l[i * d + i] = Math.sqrt(sum);
      } else {
        l[i * d + j] = sum / l[j * d + j];
      }
    }
  }
  // inv(L) by forward substitution, then inv(A) = inv(L)ᵀ inv(L).
  const inverseL = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    inverseL[i * d + i] = 1 / l[i * d + i];
    for (let j = 0; j < i; j++) {
      let sum = 0;
      for (let k = j; k < i; k++) sum -= l[i * d + k] * inverseL[k * d + j];
      inverseL[i * d + j] = sum / l[i * d + i];
    }
  }
  const inverse = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j <= i; j++) {
      let sum = 0;
      for (let k = i; k < d; k++) sum += inverseL[k * d + i] * inverseL[k * d + j];
      inverse[i * d + j] = inverse[j * d + i] = sum;
    }
  }
  return inverse;
}

/** The probability that a random outlier scores above a random inlier (ties count half): the detector's AUROC. */
export function auroc(inliers: ArrayLike<number>, outliers: ArrayLike<number>): number {
  const all = [...Array.from(inliers, (v) => ({ v, out: 0 })), ...Array.from(outliers, (v) => ({ v, out: 1 }))].sort((a, b) => a.v - b.v);
  let rankSum = 0;
  for (let i = 0; i < all.length;) {
    let j = i;
    while (j < all.length && all[j].v === all[i].v) j++;
    const rank = (i + j + 1) / 2;
    for (let k = i; k < j; k++) if (all[k].out) rankSum += rank;
    i = j;
  }
  const nOut = outliers.length;
  const nIn = inliers.length;
  return (rankSum - (nOut * (nOut + 1)) / 2) / (nOut * nIn);
}
