// Temperature scaling (Guo et al. 2017): one scalar T divides the logits so that validation NLL is lowest.
// It changes confidence, never the ranking, so accuracy is untouched.
import { assertFiniteOutputs } from './finite.js';
import { argmaxRows, expectedCalibrationError } from './metrics.js';

/** The range fitTemperature searches. */
export const TEMPERATURE_RANGE = { min: 0.05, max: 20 } as const;

export function softmaxRows(logits: ArrayLike<number>, n: number, k: number, temperature = 1): Float64Array {
  const out = new Float64Array(n * k);
  for (let i = 0; i < n; i++) {
    let max = -Infinity;
    for (let c = 0; c < k; c++) max = Math.max(max, logits[i * k + c] / temperature);
    let total = 0;
    for (let c = 0; c < k; c++) total += out[i * k + c] = Math.exp(logits[i * k + c] / temperature - max);
    for (let c = 0; c < k; c++) out[i * k + c] /= total;
  }
  return out;
}

export function nllAt(logits: ArrayLike<number>, labels: ArrayLike<number>, k: number, temperature: number): number {
  const n = labels.length;
  let total = 0;
  for (let i = 0; i < n; i++) {
    let max = -Infinity;
    for (let c = 0; c < k; c++) max = Math.max(max, logits[i * k + c] / temperature);
    let z = 0;
    for (let c = 0; c < k; c++) z += Math.exp(logits[i * k + c] / temperature - max);
    total += Math.log(z) + max - logits[i * k + labels[i]] / temperature;
  }
  return total / n;
}

/** Finds T in TEMPERATURE_RANGE minimising NLL by golden-section search on log T (NLL is unimodal in T). */
export function fitTemperature(logits: ArrayLike<number>, labels: ArrayLike<number>, k: number): number {
  if (labels.length === 0) throw new RangeError('fitTemperature: no validation samples');
  const f = (logT: number) => nllAt(logits, labels, k, Math.exp(logT));
  let lo = Math.log(TEMPERATURE_RANGE.min);
  let hi = Math.log(TEMPERATURE_RANGE.max);
  const ratio = (Math.sqrt(5) - 1) / 2;
  let a = hi - ratio * (hi - lo);
  let b = lo + ratio * (hi - lo);
  let fa = f(a);
  let fb = f(b);
  for (let i = 0; i < 60; i++) {
    if (fa < fb) {
      hi = b;
      b = a;
      fb = fa;
      a = hi - ratio * (hi - lo);
      fa = f(a);
    } else {
      lo = a;
      a = b;
      fa = fb;
      b = lo + ratio * (hi - lo);
      fb = f(b);
    }
  }
  return Math.exp((lo + hi) / 2);
}

/**
 * The confidence below which a prediction is flagged uncertain: the lowest threshold at which the
 * validation predictions kept reach targetAccuracy, and never below `floor`. Cells outside the 8 classes
 * (blasts, smudge cells, artefacts) tend to fall under it.
 */
export function chooseUncertaintyThreshold(probs: ArrayLike<number>, labels: ArrayLike<number>, k: number, targetAccuracy = 0.995, floor = 0.5): number {
  const n = labels.length;
  const scored: { confidence: number; correct: boolean }[] = [];
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < k; c++) if (probs[i * k + c] > probs[i * k + best]) best = c;
    scored.push({ confidence: probs[i * k + best], correct: best === labels[i] });
  }
  scored.sort((x, y) => y.confidence - x.confidence);
  // Walk from the most confident down; keep the lowest confidence at which the kept set is still accurate enough.
  let correct = 0;
  let threshold = 1;
  scored.forEach((s, i) => {
    if (s.correct) correct++;
    if (correct / (i + 1) >= targetAccuracy) threshold = s.confidence;
  });
  return Math.max(floor, threshold);
}

export interface Calibration {
  temperature: number;
  uncertaintyThreshold: number;
  nllBefore: number;
  nllAfter: number;
  eceBefore: number;
  eceAfter: number;
  /** What the user should know before trusting the result. */
  warnings: string[];
}

/** Below this many images a calibration is said to rest on few examples. */
const FEW_IMAGES = 100;

function countErrors(logits: ArrayLike<number>, labels: ArrayLike<number>, k: number): number {
  return argmaxRows(logits, labels.length, k).filter((predicted, i) => predicted !== labels[i]).length;
}

/** The search stops at its limits; a fit there means the optimum lies beyond them. */
const AT_LIMIT = 1.001;

/** Fits the temperature and the uncertainty threshold on labelled logits, and says when the result is doubtful. */
export function calibrate(logits: ArrayLike<number>, labels: ArrayLike<number>, k: number, targetAccuracy: number): Calibration {
  const n = labels.length;
  assertFiniteOutputs(logits, 'model outputs on the calibration images');
  const temperature = fitTemperature(logits, labels, k);
  const calibrated = softmaxRows(logits, n, k, temperature);
  const result = {
    temperature,
    uncertaintyThreshold: chooseUncertaintyThreshold(calibrated, labels, k, targetAccuracy),
    nllBefore: nllAt(logits, labels, k, 1),
    nllAfter: nllAt(logits, labels, k, temperature),
    eceBefore: expectedCalibrationError(softmaxRows(logits, n, k, 1), labels, n, k),
    eceAfter: expectedCalibrationError(calibrated, labels, n, k),
  };
  const warnings: string[] = [];
  if (temperature >= TEMPERATURE_RANGE.max / AT_LIMIT || temperature <= TEMPERATURE_RANGE.min * AT_LIMIT) {
    const limit =
      temperature > 1
        ? `upper limit (${TEMPERATURE_RANGE.max}): the model is far more confident`
        : `lower limit (${TEMPERATURE_RANGE.min}): the model is far less confident`;
    warnings.push(
      `T = ${temperature.toFixed(3)} sits at the search's ${limit} than it is right on these images; are they like its training data (classes, stain, scanner)? The calibration is unreliable.`,
    );
  }
  const errors = countErrors(logits, labels, k);
  if (errors === 0) {
    warnings.push(
      `all ${n} images were classified right: with no mistakes to learn from, the fit only sharpens the scores (T = ${temperature.toFixed(3)}) and puts the uncertainty threshold at the least confident right answer (${result.uncertaintyThreshold.toFixed(3)}). Calibrate on a larger set that holds some of the model's mistakes (hundreds of images).`,
    );
  } else if (n < FEW_IMAGES) {
    warnings.push(
      `only ${n} images (${errors} misclassified): the temperature and threshold rest on few examples; calibrate on hundreds of images for figures to trust.`,
    );
  }
  if (result.eceAfter > result.eceBefore) {
    warnings.push(
      `ECE got worse: ${result.eceBefore.toFixed(4)} → ${result.eceAfter.toFixed(4)}. Temperature scaling minimises NLL, and on these images that raises the calibration error; use a larger or more representative validation set, or keep the uncalibrated model.`,
    );
  }
  return { ...result, warnings };
}
