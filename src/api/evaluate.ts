// Scoring labelled images with a classifier, and the metrics an evaluation reports.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { DatasetItem } from '../data/dataset.js';
import { computeMetrics, type Metrics, expectedCalibrationError, reliabilityBins } from '../eval/metrics.js';
import { softmaxRows } from '../eval/calibration.js';
import { confusionSvg, markdownReport, reliabilitySvg } from '../eval/report.js';
import { type RgbImage, readImageFile } from '../data/image.js';
import type { ScaleReport } from '../data/prepare.js';
import type { Shift } from '../eval/shifts.js';
import type { Classifier } from './classifier.js';

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
  failed: { path: string; reason: string }[];
}

export interface ScoreOptions {
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
  /** Applied to each decoded image before the classifier prepares it (the shift suite). */
  transform?: (image: RgbImage) => Promise<RgbImage>;
}

/** Runs the classifier over labelled items in batches; unreadable files are reported, not fatal. */
export async function scoreItems(classifier: Classifier, items: DatasetItem[], options: ScoreOptions = {}): Promise<ScoredItems> {
  const k = classifier.classes.length;
  const batchSize = options.batchSize ?? 64;
  const logits: number[] = [];
  const labels: number[] = [];
  const files: string[] = [];
  const scales: ScaleReport[] = [];
  const distances: number[] = [];
  const nuclei: (number | undefined)[] = [];
  const failed: ScoredItems['failed'] = [];
  for (let start = 0; start < items.length; start += batchSize) {
    const chunk = items.slice(start, start + batchSize);
    const { transform } = options;
    const input = (item: DatasetItem) => (transform ? readImageFile(item.path).then(transform) : Promise.resolve(item.path));
    const prepared = await Promise.all(chunk.map((item) => input(item).then((i) => classifier.prepare(i)).then((image) => ({ item, image }), (error: Error) => ({ item, error }))));
    const good = prepared.filter((p): p is { item: DatasetItem; image: Awaited<ReturnType<Classifier['prepare']>> } => 'image' in p);
    for (const p of prepared) if ('error' in p) failed.push({ path: p.item.path, reason: (p.error as Error).message });
    if (good.length) {
      const { logits: batch, distances: batchDistances } = classifier.score(good.map((g) => g.image.image));
      if (batchDistances) distances.push(...batchDistances);
      for (let i = 0; i < batch.length; i++) logits.push(batch[i]);
      for (const { item } of good) {
        const label = classifier.classes.indexOf(item.label);
        if (label < 0) throw new Error(`label '${item.label}' of ${item.path} is not one of the model's classes (${classifier.classes.join(', ')})`);
        labels.push(label);
        files.push(item.file);
      }
      scales.push(...good.map((g) => g.image.scale));
      nuclei.push(...good.map((g) => g.image.measures?.nuclei));
    }
    options.onProgress?.(Math.min(items.length, start + batchSize), items.length);
  }
  if (logits.length !== labels.length * k) throw new Error('internal: logits and labels disagree');
  return { logits: Float32Array.from(logits), labels: Int32Array.from(labels), files, scales, nuclei, distances: classifier.ood ? Float64Array.from(distances) : undefined, failed };
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

export function evaluateScores(scored: ScoredItems, classifier: Classifier): Evaluation {
  const n = scored.labels.length;
  const k = classifier.classes.length;
  const probs = softmaxRows(scored.logits, n, k, classifier.temperature);
  const metrics = computeMetrics(probs, scored.labels, classifier.classes);
  let uncertain = 0;
  for (let i = 0; i < n; i++) if (classifier.reasons(Math.max(...probs.subarray(i * k, (i + 1) * k)), scored.scales?.[i], scored.distances?.[i], scored.nuclei?.[i]).length) uncertain++;
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

/** Scores the items once per shift; the figures say how the model holds up on images unlike its training data's. */
export async function evaluateShifts(classifier: Classifier, items: DatasetItem[], shifts: readonly Shift[], options: { batchSize?: number; onProgress?: (shift: string, done: number, total: number) => void } = {}): Promise<Record<string, ShiftResult>> {
  const results: Record<string, ShiftResult> = {};
  for (const shift of shifts) {
    const scored = await scoreItems(classifier, items, { batchSize: options.batchSize, transform: shift.apply, onProgress: (done, total) => options.onProgress?.(shift.name, done, total) });
    const evaluation = evaluateScores(scored, classifier);
    results[shift.name] = { params: shift.params, n: evaluation.n, accuracy: evaluation.accuracy, balanced_accuracy: evaluation.balanced_accuracy, uncertain_fraction: evaluation.uncertain_fraction };
  }
  return results;
}

/** The shift table for a report, with the unshifted figures first. */
export function shiftTable(baseline: Evaluation, shifts: Record<string, ShiftResult>): string[] {
  const values = Object.values(shifts);
  const mean = values.reduce((total, r) => total + r.accuracy, 0) / values.length;
  return [
    '## Shift suite', '', `Mean accuracy over the ${values.length} shifts: ${pct(mean)}.`, '',
    '| shift | parameters | n | accuracy | balanced accuracy | uncertain |', '|---|---|---|---|---|---|',
    `| none | | ${baseline.n} | ${pct(baseline.accuracy)} | ${pct(baseline.balanced_accuracy)} | ${pct(baseline.uncertain_fraction)} |`,
    ...Object.entries(shifts).map(([name, r]) => `| ${name} | ${JSON.stringify(r.params)} | ${r.n} | ${pct(r.accuracy)} | ${pct(r.balanced_accuracy)} | ${pct(r.uncertain_fraction)} |`),
  ];
}

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

/** Writes report.md with its SVG plots into dir. */
export async function writeReport(dir: string, title: string, evaluation: Evaluation, extra: string[] = []): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'confusion.svg'), confusionSvg(evaluation.confusion_matrix, evaluation.labels));
  await writeFile(path.join(dir, 'reliability.svg'), reliabilitySvg(evaluation.reliability, `reliability after temperature scaling (T = ${evaluation.temperature.toFixed(3)})`));
  const subtypes = evaluation.by_subtype
    ? ['## Errors by file-name subtype (analysis only; names never reach the model)', '', '| subtype | n | errors | accuracy | predicted as |', '|---|---|---|---|---|',
      ...Object.entries(evaluation.by_subtype).map(([s, e]) => `| ${s} | ${e.n} | ${e.errors} | ${pct(e.accuracy)} | ${Object.entries(e.predicted_as).map(([c, n]) => `${c} ${n}`).join(', ')} |`)]
    : [];
  const file = path.join(dir, 'report.md');
  await writeFile(file, markdownReport(title, evaluation, { confusion: 'confusion.svg', reliability: 'reliability.svg' }, [...subtypes, '', ...extra]));
  return file;
}

