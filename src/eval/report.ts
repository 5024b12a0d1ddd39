// Evaluation reports: Markdown with SVG plots (confusion matrix, reliability diagram, training curves).
import type { Metrics } from './metrics.js';

export interface ReliabilityBin {
  lower: number;
  upper: number;
  count: number;
  confidence: number;
  accuracy: number;
}

const escape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const pct = (x: number) => `${(100 * x).toFixed(2)} %`;

/** A confusion matrix as a heat map, rows normalised by the true class. */
export function confusionSvg(matrix: number[][], labels: readonly string[]): string {
  const rows = matrix.map((row, i) => ({ row, i })).filter(({ row }) => row.some((v) => v > 0));
  const cell = 44;
  const left = 120;
  const top = 110;
  const width = left + labels.length * cell + 20;
  const height = top + rows.length * cell + 40;
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`];
  labels.forEach((label, j) => parts.push(`<text transform="translate(${left + j * cell + cell / 2},${top - 6}) rotate(-45)">${escape(label)}</text>`));
  rows.forEach(({ row, i }, r) => {
    const total = row.reduce((a, b) => a + b, 0);
    parts.push(`<text x="${left - 6}" y="${top + r * cell + cell / 2 + 4}" text-anchor="end">${escape(labels[i])}</text>`);
    row.forEach((value, j) => {
      const share = total ? value / total : 0;
      const shade = Math.round(255 - 200 * share);
      parts.push(`<rect x="${left + j * cell}" y="${top + r * cell}" width="${cell}" height="${cell}" fill="rgb(${shade},${shade},255)" stroke="#ccc"/>`);
      if (value)
        parts.push(
          `<text x="${left + j * cell + cell / 2}" y="${top + r * cell + cell / 2 + 4}" text-anchor="middle" fill="${share > 0.5 ? '#fff' : '#000'}">${value}</text>`,
        );
    });
  });
  parts.push(`<text x="${left}" y="${height - 12}">predicted →   (rows: true class)</text></svg>`);
  return parts.join('\n');
}

/** Accuracy against confidence per bin; a calibrated model follows the diagonal. */
export function reliabilitySvg(bins: ReliabilityBin[], title: string): string {
  const size = 300;
  const pad = 40;
  const x = (v: number) => pad + v * size;
  const y = (v: number) => pad + (1 - v) * size;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${size + 2 * pad}" height="${size + 2 * pad}" font-family="sans-serif" font-size="11">`,
    `<text x="${pad}" y="20">${escape(title)}</text>`,
    `<rect x="${pad}" y="${pad}" width="${size}" height="${size}" fill="none" stroke="#888"/>`,
    `<line x1="${x(0)}" y1="${y(0)}" x2="${x(1)}" y2="${y(1)}" stroke="#bbb" stroke-dasharray="4"/>`,
  ];
  for (const bin of bins) {
    if (!bin.count) continue;
    const w = (bin.upper - bin.lower) * size;
    parts.push(`<rect x="${x(bin.lower)}" y="${y(bin.accuracy)}" width="${w}" height="${bin.accuracy * size}" fill="#4a7bd0" fill-opacity="0.7"/>`);
    parts.push(`<circle cx="${x(bin.confidence)}" cy="${y(bin.confidence)}" r="2" fill="#d04a4a"/>`);
  }
  parts.push(`<text x="${pad}" y="${size + pad + 28}">confidence → (bars: accuracy; dots: mean confidence)</text></svg>`);
  return parts.join('\n');
}

/** Training loss and validation macro-F1 per epoch. */
export function curvesSvg(history: { epoch: number; train_loss: number; val_macro_f1: number }[]): string {
  const width = 420;
  const height = 240;
  const pad = 40;
  const maxEpoch = Math.max(1, ...history.map((h) => h.epoch));
  const maxLoss = Math.max(1e-6, ...history.map((h) => h.train_loss));
  const x = (e: number) => pad + ((e - 1) / Math.max(1, maxEpoch - 1)) * (width - 2 * pad);
  const line = (values: number[], scale: (v: number) => number) => history.map((h, i) => `${x(h.epoch)},${scale(values[i])}`).join(' ');
  const yLoss = (v: number) => height - pad - (v / maxLoss) * (height - 2 * pad);
  const yF1 = (v: number) => height - pad - v * (height - 2 * pad);
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect x="${pad}" y="${pad}" width="${width - 2 * pad}" height="${height - 2 * pad}" fill="none" stroke="#888"/>`,
    `<polyline fill="none" stroke="#d04a4a" stroke-width="2" points="${line(
      history.map((h) => h.train_loss),
      yLoss,
    )}"/>`,
    `<polyline fill="none" stroke="#4a7bd0" stroke-width="2" points="${line(
      history.map((h) => h.val_macro_f1),
      yF1,
    )}"/>`,
    `<text x="${pad}" y="20"><tspan fill="#d04a4a">train loss (0–${maxLoss.toFixed(2)})</tspan>   <tspan fill="#4a7bd0">validation macro-F1 (0–1)</tspan></text>`,
    `<text x="${pad}" y="${height - 10}">epoch 1–${maxEpoch}</text></svg>`,
  ].join('\n');
}

/** The Markdown report; plots are referenced as files written next to it. */
export function markdownReport(
  title: string,
  metrics: Metrics & { ece_uncalibrated?: number; temperature?: number },
  plots: { confusion: string; reliability: string; curves?: string },
  extra: string[] = [],
): string {
  const lines = [
    `# ${title}`,
    '',
    `| metric | value |`,
    `|---|---|`,
    `| images | ${metrics.n} |`,
    `| accuracy | ${pct(metrics.accuracy)} |`,
    `| balanced accuracy | ${pct(metrics.balanced_accuracy)} |`,
    `| macro-F1 | ${pct(metrics.macro_f1)} |`,
    `| macro ROC-AUC | ${metrics.macro_roc_auc === null ? 'n/a' : metrics.macro_roc_auc.toFixed(4)} |`,
    `| Cohen's κ | ${metrics.cohen_kappa.toFixed(4)} |`,
    `| NLL | ${metrics.nll.toFixed(4)} |`,
    `| ECE (15 bins) | ${metrics.ece.toFixed(4)} |`,
  ];
  if (metrics.ece_uncalibrated !== undefined) lines.push(`| ECE before temperature scaling | ${metrics.ece_uncalibrated.toFixed(4)} |`);
  if (metrics.temperature !== undefined) lines.push(`| temperature | ${metrics.temperature.toFixed(3)} |`);
  lines.push('', '| class | precision | recall | F1 | support | ROC-AUC |', '|---|---|---|---|---|---|');
  for (const [name, m] of Object.entries(metrics.per_class)) {
    lines.push(`| ${name} | ${pct(m.precision)} | ${pct(m.recall)} | ${pct(m.f1)} | ${m.support} | ${m.roc_auc === null ? 'n/a' : m.roc_auc.toFixed(4)} |`);
  }
  lines.push('', `![confusion matrix](${plots.confusion})`, '', `![reliability diagram](${plots.reliability})`);
  if (plots.curves) lines.push('', `![training curves](${plots.curves})`);
  lines.push('', ...extra);
  return `${lines.join('\n')}\n`;
}
