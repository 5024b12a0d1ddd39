// Classification metrics over predicted probabilities. Pure functions over plain arrays, so eval, training
// and tests share them. All rates are fractions in [0, 1].
import { seededRandom } from '../data/random.js';

export interface ClassMetrics {
  precision: number;
  recall: number;
  f1: number;
  support: number;
  /** One-vs-rest ROC-AUC; null when the class has no negatives or no positives. */
  roc_auc: number | null;
}

export interface Metrics {
  n: number;
  accuracy: number;
  /** The 95 % Wilson score interval of the accuracy (wilsonInterval). */
  accuracy_interval: [number, number];
  balanced_accuracy: number;
  /** Its 95 % percentile bootstrap interval (the images resampled, seeded): wide where a class has few images. */
  balanced_accuracy_interval: [number, number];
  macro_f1: number;
  macro_roc_auc: number | null;
  cohen_kappa: number;
  nll: number;
  /** Expected calibration error over 15 equal-width confidence bins. */
  ece: number;
  /** The classes the labels hold: per-class figures and macro averages cover these. */
  classes_evaluated: string[];
  per_class: Record<string, ClassMetrics>;
  /** Rows: true class (every model class); columns: predicted class (every model class). */
  confusion_matrix: number[][];
  labels: string[];
}

/** probs is row-major [n × classes.length]; labels are indices into classes. */
export function computeMetrics(probs: ArrayLike<number>, labels: ArrayLike<number>, classes: readonly string[]): Metrics {
  const n = labels.length;
  const k = classes.length;
  if (probs.length !== n * k) throw new RangeError(`computeMetrics: ${probs.length} probabilities for ${n} samples × ${k} classes`);
  if (n === 0) throw new RangeError('computeMetrics: no samples to evaluate');
  const predicted = argmaxRows(probs, n, k);
  const confusion = Array.from({ length: k }, () => new Array<number>(k).fill(0));
  let correct = 0;
  let nll = 0;
  for (let i = 0; i < n; i++) {
    const label = labels[i];
    if (!(Number.isInteger(label) && label >= 0 && label < k)) throw new RangeError(`computeMetrics: label ${label} at ${i} is not a class index`);
    confusion[label][predicted[i]]++;
    if (predicted[i] === label) correct++;
    nll -= Math.log(Math.max(probs[i * k + label], 1e-12));
  }
  const present = classes.map((_, c) => c).filter((c) => confusion[c].some((v) => v > 0));
  const perClass: Record<string, ClassMetrics> = {};
  for (const c of present) {
    const tp = confusion[c][c];
    const support = sum(confusion[c]);
    const predictedCount = confusion.reduce((s, row) => s + row[c], 0);
    const precision = predictedCount === 0 ? 0 : tp / predictedCount;
    const recall = tp / support;
    perClass[classes[c]] = {
      precision,
      recall,
      support,
      f1: precision + recall === 0 ? 0 : (2 * precision * recall) / (precision + recall),
      roc_auc: rocAuc(probs, labels, n, k, c),
    };
  }
  const evaluated = present.map((c) => perClass[classes[c]]);
  const aucs = evaluated.map((m) => m.roc_auc).filter((a): a is number => a !== null);
  return {
    n,
    accuracy: correct / n,
    accuracy_interval: wilsonInterval(correct / n, n),
    balanced_accuracy: mean(evaluated.map((m) => m.recall)),
    balanced_accuracy_interval: balancedAccuracyInterval(labels, predicted, k, evaluated),
    macro_f1: mean(evaluated.map((m) => m.f1)),
    macro_roc_auc: aucs.length ? mean(aucs) : null,
    cohen_kappa: cohenKappa(confusion, n),
    nll: nll / n,
    ece: expectedCalibrationError(probs, labels, n, k),
    classes_evaluated: present.map((c) => classes[c]),
    per_class: perClass,
    confusion_matrix: confusion,
    labels: [...classes],
  };
}

/** The two-sided 95 % quantile of the standard normal distribution. */
const Z95 = 1.959963984540054;

/**
 * The 95 % Wilson score interval of a proportion p observed over n trials.
 * Unlike a percentile bootstrap, which is zero-width when every image is right (or every one wrong) and covers far
 * less than 95 % near those ends, it keeps an honest width there: 10 of 10 right gives 72.2–100 %, 100 of 100 gives
 * 96.3–100 %.
 */
export function wilsonInterval(p: number, n: number): [number, number] {
  const z2 = Z95 * Z95;
  const centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const half = (Z95 / (1 + z2 / n)) * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n));
  return [p === 0 ? 0 : Math.max(0, centre - half), p === 1 ? 1 : Math.min(1, centre + half)];
}

const BOOTSTRAP_RESAMPLES = 1000;

/**
 * The balanced accuracy's 95 % percentile bootstrap interval: the images are drawn with replacement, seeded so that
 * the same predictions give the same interval; a class a resample lacks is left out of its balanced accuracy, as a
 * class the labels lack is left out of the figure itself. Where every class is all right or all wrong, no resample
 * differs and the bootstrap has no width: there the interval is the mean of the classes' Wilson bounds.
 */
export function balancedAccuracyInterval(
  labels: ArrayLike<number>,
  predicted: ArrayLike<number>,
  k: number,
  perClass: readonly Pick<ClassMetrics, 'recall' | 'support'>[],
): [number, number] {
  if (perClass.every((m) => m.recall === 0 || m.recall === 1)) {
    const bounds = perClass.map((m) => wilsonInterval(m.recall, m.support));
    return [mean(bounds.map((b) => b[0])), mean(bounds.map((b) => b[1]))];
  }
  const n = labels.length;
  const random = seededRandom(0);
  const balanced = new Float64Array(BOOTSTRAP_RESAMPLES);
  const support = new Float64Array(k);
  const hits = new Float64Array(k);
  for (let r = 0; r < BOOTSTRAP_RESAMPLES; r++) {
    support.fill(0);
    hits.fill(0);
    for (let j = 0; j < n; j++) {
      const i = Math.floor(random() * n);
      support[labels[i]]++;
      if (predicted[i] === labels[i]) hits[labels[i]]++;
    }
    balanced[r] = mean([...support.keys()].filter((c) => support[c] > 0).map((c) => hits[c] / support[c]));
  }
  balanced.sort();
  return [balanced[Math.floor(0.025 * (BOOTSTRAP_RESAMPLES - 1))], balanced[Math.ceil(0.975 * (BOOTSTRAP_RESAMPLES - 1))]];
}

export function argmaxRows(probs: ArrayLike<number>, n: number, k: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < k; c++) if (probs[i * k + c] > probs[i * k + best]) best = c;
    out[i] = best;
  }
  return out;
}

/** ECE: the support-weighted mean |accuracy − confidence| over equal-width bins of the top probability. */
export function expectedCalibrationError(probs: ArrayLike<number>, labels: ArrayLike<number>, n: number, k: number, bins = 15): number {
  const count = new Array<number>(bins).fill(0);
  const hits = new Array<number>(bins).fill(0);
  const confidence = new Array<number>(bins).fill(0);
  const predicted = argmaxRows(probs, n, k);
  for (let i = 0; i < n; i++) {
    const p = probs[i * k + predicted[i]];
    const bin = Math.min(bins - 1, Math.floor(p * bins));
    count[bin]++;
    confidence[bin] += p;
    if (predicted[i] === labels[i]) hits[bin]++;
  }
  let ece = 0;
  for (let b = 0; b < bins; b++) if (count[b] > 0) ece += Math.abs(hits[b] - confidence[b]) / n;
  return ece;
}

/** Reliability-diagram data: per bin, the mean confidence, the accuracy and the count. */
export function reliabilityBins(probs: ArrayLike<number>, labels: ArrayLike<number>, n: number, k: number, bins = 15) {
  const predicted = argmaxRows(probs, n, k);
  const out = Array.from({ length: bins }, (_, b) => ({ lower: b / bins, upper: (b + 1) / bins, count: 0, confidence: 0, accuracy: 0 }));
  for (let i = 0; i < n; i++) {
    const p = probs[i * k + predicted[i]];
    const bin = out[Math.min(bins - 1, Math.floor(p * bins))];
    bin.count++;
    bin.confidence += p;
    if (predicted[i] === labels[i]) bin.accuracy++;
  }
  for (const bin of out)
    if (bin.count) {
      bin.confidence /= bin.count;
      bin.accuracy /= bin.count;
    }
  return out;
}

/** One-vs-rest ROC-AUC by the rank-sum (Mann–Whitney) statistic, with ties counted half. */
function rocAuc(probs: ArrayLike<number>, labels: ArrayLike<number>, n: number, k: number, c: number): number | null {
  const scored = Array.from({ length: n }, (_, i) => ({ score: probs[i * k + c], positive: labels[i] === c }));
  const positives = scored.filter((s) => s.positive).length;
  const negatives = n - positives;
  if (positives === 0 || negatives === 0) return null;
  scored.sort((a, b) => a.score - b.score);
  let rankSum = 0;
  for (let i = 0; i < n;) {
    let j = i;
    while (j + 1 < n && scored[j + 1].score === scored[i].score) j++;
    const averageRank = (i + j) / 2 + 1;
    for (let t = i; t <= j; t++) if (scored[t].positive) rankSum += averageRank;
    i = j + 1;
  }
  return (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}

function cohenKappa(confusion: number[][], n: number): number {
  const k = confusion.length;
  let observed = 0;
  let expected = 0;
  for (let c = 0; c < k; c++) {
    observed += confusion[c][c];
    expected += sum(confusion[c]) * confusion.reduce((s, row) => s + row[c], 0);
  }
  observed /= n;
  expected /= n * n;
  return expected === 1 ? 1 : (observed - expected) / (1 - expected);
}

function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

function mean(values: readonly number[]): number {
  return values.length ? sum(values) / values.length : 0;
}
