// The metrics an evaluation reports, from scores already computed, and the report that shows them.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ScaleReport } from '../data/prepare.js';
import { softmaxRows } from './calibration.js';
import { computeMetrics, type Metrics, expectedCalibrationError, reliabilityBins } from './metrics.js';
import { confusionSvg, markdownReport, reliabilitySvg } from './report.js';

export interface ScoredItems {
  /** Logits of the images that could be read, row-major [n × classes], before temperature scaling. */
  logits: Float32Array;
  labels: Int32Array;
  files: string[];
  /** The scale each readable image was brought to, where known. */
  scales?: ScaleReport[];
  /** Each readable image's out-of-distribution distance, where the model has a detector. */
  distances?: Float64Array;
  /** Each readable image's count of separate nucleus groups, where measured. */
  nuclei?: (number | undefined)[];
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

/** PBC names files by subtype (SNE_…, BNE_…, MY_…, MMY_…, PMY_…): errors per subtype, for analysis only. */
export function errorsBySubtype(files: string[], labels: Int32Array, probs: Float64Array, classes: readonly string[]): Record<string, SubtypeErrors> | null {
  const k = classes.length;
  const out: Record<string, SubtypeErrors> = {};
  files.forEach((file, i) => {
    const match = /^([A-Za-z]+)_/.exec(path.basename(file));
    if (!match) return;
    const subtype = match[1].toUpperCase();
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
  reliability: ReturnType<typeof reliabilityBins>;
  by_subtype: Record<string, SubtypeErrors> | null;
}

/** What an evaluation needs of a model: its classes, its temperature and its reasons for flagging an answer. */
export interface Judge {
  classes: string[];
  temperature: number;
  reasons(topScore: number, scale?: ScaleReport, oodDistance?: number, nuclei?: number): string[];
}

export function evaluateScores(scored: ScoredItems, classifier: Judge): Evaluation {
  const n = scored.labels.length;
  const k = classifier.classes.length;
  const probs = softmaxRows(scored.logits, n, k, classifier.temperature);
  const metrics = computeMetrics(probs, scored.labels, classifier.classes);
  let uncertain = 0;
  for (let i = 0; i < n; i++)
    if (classifier.reasons(Math.max(...probs.subarray(i * k, (i + 1) * k)), scored.scales?.[i], scored.distances?.[i], scored.nuclei?.[i]).length) uncertain++;
  return {
    ...metrics,
    ece_uncalibrated: expectedCalibrationError(softmaxRows(scored.logits, n, k, 1), scored.labels, n, k),
    temperature: classifier.temperature,
    uncertain_fraction: uncertain / n,
    reliability: reliabilityBins(probs, scored.labels, n, k),
    by_subtype: errorsBySubtype(scored.files, scored.labels, probs, classifier.classes),
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

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

/** Writes report.md with its SVG plots into dir. */
export async function writeReport(dir: string, title: string, evaluation: Evaluation, extra: string[] = []): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'confusion.svg'), confusionSvg(evaluation.confusion_matrix, evaluation.labels));
  await writeFile(
    path.join(dir, 'reliability.svg'),
    reliabilitySvg(evaluation.reliability, `reliability after temperature scaling (T = ${evaluation.temperature.toFixed(3)})`),
  );
  const subtypes = evaluation.by_subtype
    ? [
        '## Errors by file-name subtype (analysis only; names never reach the model)',
        '',
        '| subtype | n | errors | accuracy | predicted as |',
        '|---|---|---|---|---|',
        ...Object.entries(evaluation.by_subtype).map(
          ([s, e]) =>
            `| ${s} | ${e.n} | ${e.errors} | ${pct(e.accuracy)} | ${Object.entries(e.predicted_as)
              .map(([c, n]) => `${c} ${n}`)
              .join(', ')} |`,
        ),
      ]
    : [];
  const file = path.join(dir, 'report.md');
  await writeFile(file, markdownReport(title, evaluation, { confusion: 'confusion.svg', reliability: 'reliability.svg' }, [...subtypes, '', ...extra]));
  return file;
}

/** The figures a model file records about its validation: enough to say what it scored, and on how many images. */
export function validationRecord(evaluation: Evaluation, split: string | null): Record<string, number | string | null> {
  const { n, accuracy, balanced_accuracy, macro_f1, ece } = evaluation;
  return { split, n, accuracy, balanced_accuracy, macro_f1, ece, date: new Date().toISOString() };
}
