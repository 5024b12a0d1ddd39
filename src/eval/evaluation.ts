// The metrics an evaluation reports, from scores already computed, each image's answer, and the report that shows them.
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { writeFileAtomic } from '../engine/atomic-write.js';
import type { ScaleReport, StainTreatment } from '../data/prepare.js';
import type { RgbImage } from '../preprocess/image.js';
import { softmaxRows } from './calibration.js';
import { computeMetrics, type Metrics, expectedCalibrationError, reliabilityBins } from './metrics.js';
import { confusionSvg, curvesSvg, bestEpoch, epochsOf, type EpochRecord, errorGridSvg, type ErrorTile, markdownReport, reliabilitySvg } from './report.js';

export interface ScoredItems {
  /** Logits of the images that could be read, row-major [n × classes], before temperature scaling. */
  logits: Float32Array;
  labels: Int32Array;
  files: string[];
  /** The scale each readable image was brought to, where known. */
  scales?: ScaleReport[];
  /** How each readable image's stain was treated, where known. */
  stains?: StainTreatment[];
  /** Each readable image's out-of-distribution distance, where the model has a detector. */
  distances?: Float64Array;
  /** Whether each readable image shows one white cell (showsOneCell), where measured. */
  oneCell?: (boolean | undefined)[];
  /** Each readable image's pooled features [n × features], where asked for. */
  features?: Float32Array;
  failed: { path: string; reason: string }[];
}

export interface SubtypeErrors {
  n: number;
  errors: number;
  accuracy: number;
  /** Where the errors went: predicted class → count. */
  predicted_as: Record<string, number>;
}

/** PBC's file-name prefixes (BA_…, SNE_…, MY_…): the cell's subtype where a class has several. */
const PBC_PREFIXES = new Set(['BA', 'BNE', 'EO', 'ERB', 'IG', 'LY', 'MMY', 'MO', 'MY', 'NEUTROPHIL', 'PLATELET', 'PMY', 'SNE']);

/** Errors per subtype of the files named as PBC names them, for analysis only; null when no file is. */
export function errorsBySubtype(files: string[], labels: Int32Array, probs: Float64Array, classes: readonly string[]): Record<string, SubtypeErrors> | null {
  const k = classes.length;
  const out: Record<string, SubtypeErrors> = {};
  files.forEach((file, i) => {
    const subtype = /^([A-Za-z]+)_/.exec(path.basename(file))?.[1].toUpperCase();
    if (!subtype || !PBC_PREFIXES.has(subtype)) return;
    let best = 0;
    for (let c = 1; c < k; c++) if (probs[i * k + c] > probs[i * k + best]) best = c;
    const entry = (out[subtype] ??= { n: 0, errors: 0, accuracy: 0, predicted_as: {} });
    entry.n++;
    if (best !== labels[i]) {
      entry.errors++;
      entry.predicted_as[classes[best]] = (entry.predicted_as[classes[best]] ?? 0) + 1;
    }
  });
  for (const entry of Object.values(out)) entry.accuracy = 1 - entry.errors / entry.n;
  return Object.keys(out).length ? out : null;
}

export interface Evaluation extends Metrics {
  ece_uncalibrated: number;
  temperature: number;
  uncertain_fraction: number;
  /** The calibrated top probability below which an answer is flagged low-confidence. */
  uncertainty_threshold: number;
  /** How many answers each reason flagged (an answer may have several). */
  uncertain_reasons: Record<string, number>;
  /** Accuracy of the answers not flagged uncertain; null when every answer is. */
  unflagged_accuracy: number | null;
  /** The share of images answered from a second look with the stain raised; null where not recorded. */
  stain_raised_fraction: number | null;
  reliability: ReturnType<typeof reliabilityBins>;
  /** The same bins before temperature scaling. */
  reliability_uncalibrated: ReturnType<typeof reliabilityBins>;
  by_subtype: Record<string, SubtypeErrors> | null;
}

/** What an evaluation needs of a model: its classes, its temperature and its reasons for flagging an answer. */
export interface Judge {
  classes: string[];
  temperature: number;
  uncertaintyThreshold: number;
  reasons(topScore: number, scale?: ScaleReport, oodDistance?: number, oneCell?: boolean): string[];
}

/** One image's answer, as predict gives it, beside its label. */
export interface ImagePrediction {
  /** Path relative to the data set's root. */
  file: string;
  label: string;
  predicted: string;
  /** The predicted class's calibrated probability. */
  probability: number;
  uncertain: boolean;
  reasons: string[];
  /** 'raised': the answer comes from the classifier's second look, with a pale stain raised (api/classifier.ts). */
  stain?: StainTreatment;
}

export function imagePredictions(scored: ScoredItems, judge: Judge): ImagePrediction[] {
  const k = judge.classes.length;
  const probs = softmaxRows(scored.logits, scored.labels.length, k, judge.temperature);
  return Array.from(scored.labels, (label, i) => {
    let best = 0;
    for (let c = 1; c < k; c++) if (probs[i * k + c] > probs[i * k + best]) best = c;
    const probability = probs[i * k + best];
    const reasons = judge.reasons(probability, scored.scales?.[i], scored.distances?.[i], scored.oneCell?.[i]);
    const stain = scored.stains?.[i];
    return {
      file: scored.files[i],
      label: judge.classes[label],
      predicted: judge.classes[best],
      probability,
      uncertain: reasons.length > 0,
      reasons,
      ...(stain ? { stain } : {}),
    };
  });
}

export function evaluateScores(scored: ScoredItems, judge: Judge, predictions = imagePredictions(scored, judge)): Evaluation {
  const n = scored.labels.length;
  const k = judge.classes.length;
  const probs = softmaxRows(scored.logits, n, k, judge.temperature);
  const uncalibrated = softmaxRows(scored.logits, n, k, 1);
  const metrics = computeMetrics(probs, scored.labels, judge.classes);
  const reasons: Record<string, number> = {};
  for (const p of predictions) for (const reason of p.reasons) reasons[reason] = (reasons[reason] ?? 0) + 1;
  const unflagged = predictions.filter((p) => !p.uncertain);
  return {
    ...metrics,
    ece_uncalibrated: expectedCalibrationError(uncalibrated, scored.labels, n, k),
    temperature: judge.temperature,
    uncertain_fraction: (n - unflagged.length) / n,
    uncertainty_threshold: judge.uncertaintyThreshold,
    uncertain_reasons: reasons,
    unflagged_accuracy: unflagged.length ? unflagged.filter((p) => p.predicted === p.label).length / unflagged.length : null,
    stain_raised_fraction: scored.stains ? scored.stains.filter((s) => s === 'raised').length / n : null,
    reliability: reliabilityBins(probs, scored.labels, n, k),
    reliability_uncalibrated: reliabilityBins(uncalibrated, scored.labels, n, k),
    by_subtype: errorsBySubtype(scored.files, scored.labels, probs, judge.classes),
  };
}

export interface ShiftResult {
  params: Record<string, number | number[]>;
  n: number;
  accuracy: number;
  balanced_accuracy: number;
  uncertain_fraction: number;
}

/** The shift table for a report, with the unshifted figures first. */
export function shiftTable(baseline: Evaluation, shifts: Record<string, ShiftResult>): string[] {
  const values = Object.values(shifts);
  const mean = values.reduce((total, r) => total + r.accuracy, 0) / values.length;
  return [
    '## Shift suite',
    '',
    `Mean accuracy over the ${values.length} shifts: ${pct(mean)}.`,
    '',
    '| shift | parameters | n | accuracy | balanced accuracy | uncertain |',
    '|---|---|---|---|---|---|',
    `| none | | ${baseline.n} | ${pct(baseline.accuracy)} | ${pct(baseline.balanced_accuracy)} | ${pct(baseline.uncertain_fraction)} |`,
    ...Object.entries(shifts).map(
      ([name, r]) => `| ${name} | ${JSON.stringify(r.params)} | ${r.n} | ${pct(r.accuracy)} | ${pct(r.balanced_accuracy)} | ${pct(r.uncertain_fraction)} |`,
    ),
  ];
}

const pct = (x: number) => `${(100 * x).toFixed(2)} %`;

/** How many misclassified images a report shows: the most confident errors. */
export const REPORT_ERRORS = 32;
const THUMBNAIL = 160;

export interface ReportOptions {
  /** What was evaluated, in words (no machine paths). */
  data?: string;
  /** Each image's answer, in the order of the scored images. */
  predictions: ImagePrediction[];
  /** Image i of the scored images, for the grid of errors; without it the errors are listed only. */
  image?: (index: number) => Promise<RgbImage>;
  /** A training run's log: the report draws its curves. */
  history?: EpochRecord[];
  /** Sections after the report's own (the shift suite). */
  extra?: string[];
}

/** The report's page, beside its plots. */
export const REPORT_FILE = 'report.md';

/** The plots a report draws only where it has something to show. */
const OPTIONAL_PLOTS = ['curves.svg', 'errors.svg'];

/** Each of a report's files is written whole or not at all: an earlier report stays readable until it is replaced. */
const writeText = (file: string, text: string) => writeFileAtomic(file, [Buffer.from(text)]);

/** Writes report.md with its SVG plots into dir. */
export async function writeReport(dir: string, title: string, evaluation: Evaluation, options: ReportOptions): Promise<string> {
  await mkdir(dir, { recursive: true });
  const plots: { confusion: string; reliability: string; curves?: string; errors?: string } = { confusion: 'confusion.svg', reliability: 'reliability.svg' };
  await writeText(path.join(dir, plots.confusion), confusionSvg(evaluation.confusion_matrix, evaluation.labels));
  const scaled = evaluation.temperature !== 1;
  await writeText(
    path.join(dir, plots.reliability),
    reliabilitySvg(
      {
        bins: evaluation.reliability,
        label: `${scaled ? `after temperature scaling (T = ${evaluation.temperature.toFixed(3)})` : 'no temperature scaling'}: ECE ${evaluation.ece.toFixed(4)}`,
      },
      scaled ? { bins: evaluation.reliability_uncalibrated, label: `before temperature scaling: ECE ${evaluation.ece_uncalibrated.toFixed(4)}` } : undefined,
    ),
  );
  let curvesNote: string[] | undefined;
  if (options.history?.length) {
    plots.curves = 'curves.svg';
    await writeText(path.join(dir, plots.curves), curvesSvg(options.history));
    const epochs = epochsOf(options.history);
    const best = bestEpoch(epochs)!;
    curvesNote = [
      `${epochs.length} epoch${epochs.length === 1 ? '' : 's'}; the weights kept are those of epoch ${best.epoch}, the best validation macro-F1 (${pct(best.val_macro_f1)}).`,
    ];
  }
  const errors = options.predictions.map((p, index) => ({ ...p, index })).filter((p) => p.predicted !== p.label);
  const shown = errors.sort((a, b) => b.probability - a.probability).slice(0, REPORT_ERRORS);
  if (shown.length && options.image) {
    plots.errors = 'errors.svg';
    const tiles: ErrorTile[] = [];
    for (const e of shown) tiles.push({ ...e, picture: await options.image(e.index).then(thumbnail, () => null) });
    await writeText(path.join(dir, plots.errors), errorGridSvg(tiles));
  }
  const errorLines = shown.length
    ? [
        `${errors.length} of ${evaluation.n} images are misclassified; ${shown.length === errors.length ? 'all are' : `the ${shown.length} with the highest probability are`} listed${plots.errors ? ', numbered as in the grid' : ''}.`,
        '',
        '| # | file | true class | predicted | probability | flagged |',
        '|---|---|---|---|---|---|',
        ...shown.map((e, i) => `| ${i + 1} | ${e.file} | ${e.label} | ${e.predicted} | ${pct(e.probability)} | ${e.reasons.join(', ') || 'no'} |`),
      ]
    : undefined;
  const subtypes = evaluation.by_subtype
    ? [
        '## Errors by file-name subtype',
        '',
        "From PBC's file-name prefixes, for analysis only: names never reach the model.",
        '',
        '| subtype | n | errors | accuracy | predicted as |',
        '|---|---|---|---|---|',
        ...Object.entries(evaluation.by_subtype).map(
          ([s, e]) =>
            `| ${s} | ${e.n} | ${e.errors} | ${pct(e.accuracy)} | ${Object.entries(e.predicted_as)
              .sort((a, b) => b[1] - a[1])
              .map(([c, n]) => `${c} ${n}`)
              .join(', ')} |`,
        ),
        '',
      ]
    : [];
  const uncertainty = {
    threshold: evaluation.uncertainty_threshold,
    flagged: options.predictions.filter((p) => p.uncertain).length,
    reasons: evaluation.uncertain_reasons,
    unflagged_accuracy: evaluation.unflagged_accuracy,
    stain_raised_fraction: evaluation.stain_raised_fraction,
  };
  const file = path.join(dir, REPORT_FILE);
  const extra = [...subtypes, ...(options.extra ?? [])];
  await writeText(file, markdownReport(title, evaluation, { data: options.data, plots, uncertainty, curvesNote, errors: errorLines, extra }));
  // An earlier report's plot that this one has not (its errors, where this evaluation has none) would be taken for
  // this evaluation's.
  const written = new Set(Object.values(plots));
  for (const plot of OPTIONAL_PLOTS) if (!written.has(plot)) await rm(path.join(dir, plot), { force: true });
  return file;
}

/** A small JPEG of an image, whole, on a light grey square. */
async function thumbnail(image: RgbImage): Promise<{ mime: string; data: Buffer }> {
  const data = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize(THUMBNAIL, THUMBNAIL, { fit: 'contain', background: '#eeeeee' })
    .jpeg({ quality: 80 })
    .toBuffer();
  return { mime: 'image/jpeg', data };
}

/** The figures a model file records about its validation: enough to say what it scored, and on how many images. */
export function validationRecord(evaluation: Evaluation, split: string | null): Record<string, number | string | null> {
  const { n, accuracy, balanced_accuracy, macro_f1, ece } = evaluation;
  return { split, n, accuracy, balanced_accuracy, macro_f1, ece, date: new Date().toISOString() };
}
