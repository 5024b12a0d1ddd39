// Evaluation reports: Markdown with SVG plots (confusion matrix, reliability diagram, training curves, the most
// confident errors). SVG text names only generic font families, so the viewer's own fonts draw it; every plot has a
// white background, so it stays readable on a dark page.
import type { Metrics } from './metrics.js';

export interface ReliabilityBin {
  lower: number;
  upper: number;
  count: number;
  confidence: number;
  accuracy: number;
}

/** One line of a training run's log: what the curves draw. */
export interface EpochRecord {
  epoch: number;
  train_loss: number;
  val_nll?: number;
  val_accuracy?: number;
  val_macro_f1: number;
  best?: boolean;
}

/** One image of the grid of errors, its picture already encoded (JPEG or PNG). */
export interface ErrorTile {
  picture: { mime: string; data: Buffer } | null;
  label: string;
  predicted: string;
  probability: number;
  uncertain: boolean;
}

const FONT = 'DejaVu Sans, Helvetica, Arial, sans-serif';
const BLUE = '#2166ac';
const RED = '#b2182b';
const ORANGE = '#e08214';
const GREY = '#777';

const escape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const pct = (x: number) => `${(100 * x).toFixed(2)} %`;
const round = (v: number) => Math.round(v * 10) / 10;

function svgOpen(width: number, height: number, defs = ''): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="${FONT}" font-size="12" fill="#222">`,
    defs ? `<defs>${defs}</defs>` : '',
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
  ].join('');
}

function text(x: number, y: number, content: string, attributes = ''): string {
  return `<text x="${round(x)}" y="${round(y)}"${attributes ? ` ${attributes}` : ''}>${escape(content)}</text>`;
}

/**
 * About `target` evenly spaced round values (1, 2 or 5 × a power of ten apart): inside [lo, hi], or with `cover`
 * from the last at or below lo to the first at or above hi, so that an axis ends on a tick.
 */
export function niceTicks(lo: number, hi: number, target = 5, cover = false): number[] {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / target;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw * 0.999)!;
  const first = (cover ? Math.floor(lo / step + 1e-9) : Math.ceil(lo / step - 1e-9)) * step;
  const last = cover ? Math.ceil(hi / step - 1e-9) * step : hi;
  const ticks: number[] = [];
  for (let v = first; v <= last + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

const tickLabel = (v: number) => String(Number(v.toPrecision(6)));

/** A rectangle of a plot with its data ranges. */
class Frame {
  constructor(
    readonly left: number,
    readonly top: number,
    readonly width: number,
    readonly height: number,
    readonly xRange: [number, number],
    readonly yRange: [number, number],
  ) {}
  x(v: number): number {
    return round(this.left + ((v - this.xRange[0]) / (this.xRange[1] - this.xRange[0])) * this.width);
  }
  y(v: number): number {
    return round(this.top + this.height - ((v - this.yRange[0]) / (this.yRange[1] - this.yRange[0])) * this.height);
  }
  get bottom(): number {
    return this.top + this.height;
  }
  /** Grid lines, ticks with their labels, the frame and the axis titles. */
  axes(xTicks: number[], yTicks: number[], xTitle: string, yTitle: string, xLabel = tickLabel, yLabel = tickLabel): string[] {
    const parts: string[] = [];
    for (const t of yTicks) {
      parts.push(`<line x1="${this.left}" y1="${this.y(t)}" x2="${this.left + this.width}" y2="${this.y(t)}" stroke="#e4e4e4"/>`);
      parts.push(`<line x1="${this.left - 4}" y1="${this.y(t)}" x2="${this.left}" y2="${this.y(t)}" stroke="#444"/>`);
      parts.push(text(this.left - 7, this.y(t) + 4, yLabel(t), 'text-anchor="end" font-size="11"'));
    }
    for (const t of xTicks) {
      parts.push(`<line x1="${this.x(t)}" y1="${this.top}" x2="${this.x(t)}" y2="${this.bottom}" stroke="#e4e4e4"/>`);
      parts.push(`<line x1="${this.x(t)}" y1="${this.bottom}" x2="${this.x(t)}" y2="${this.bottom + 4}" stroke="#444"/>`);
      parts.push(text(this.x(t), this.bottom + 17, xLabel(t), 'text-anchor="middle" font-size="11"'));
    }
    parts.push(`<rect x="${this.left}" y="${this.top}" width="${this.width}" height="${this.height}" fill="none" stroke="#444"/>`);
    if (xTitle) parts.push(text(this.left + this.width / 2, this.bottom + 35, xTitle, 'text-anchor="middle"'));
    if (yTitle) {
      const x = this.left - 42;
      const y = this.top + this.height / 2;
      parts.push(text(x, y, yTitle, `text-anchor="middle" transform="rotate(-90 ${x} ${y})"`));
    }
    return parts;
  }
}

/** White to `to` at t in [0, 1]. */
function tint(to: string, t: number): string {
  const channel = (i: number) => Math.round(255 + (parseInt(to.slice(1 + 2 * i, 3 + 2 * i), 16) - 255) * t);
  return `rgb(${channel(0)},${channel(1)},${channel(2)})`;
}

/**
 * A confusion matrix: rows are true classes (those with images), columns predicted classes, counts in the cells.
 * Correct answers are blue, errors red, each as deep as its share of the row (on a square-root scale, so that a few
 * errors still show); every cell holding errors is also outlined in red.
 */
export function confusionSvg(matrix: number[][], labels: readonly string[]): string {
  const rows = matrix.map((row, i) => ({ row, i })).filter(({ row }) => row.some((v) => v > 0));
  const cell = 46;
  const longest = Math.max(...labels.map((l) => l.length));
  const left = 64 + longest * 7;
  const top = 48 + longest * 5.2;
  const gridRight = left + labels.length * cell;
  const legendLeft = gridRight + 64;
  const width = legendLeft + 150;
  const height = Math.max(top + rows.length * cell, top + 200) + 16;
  const gradient = (id: string, colour: string) =>
    `<linearGradient id="${id}" x1="0" y1="1" x2="0" y2="0">${[0, 0.25, 0.5, 0.75, 1]
      .map((s) => `<stop offset="${s}" stop-color="${tint(colour, s)}"/>`)
      .join('')}</linearGradient>`;
  const parts = [svgOpen(width, height, gradient('correct', BLUE) + gradient('wrong', RED))];
  parts.push(text(left + (labels.length * cell) / 2, 20, 'predicted class', 'text-anchor="middle" font-weight="bold"'));
  labels.forEach((label, j) => {
    const x = left + j * cell + cell / 2;
    parts.push(text(x, top - 8, label, `transform="rotate(-50 ${round(x)} ${top - 8})"`));
  });
  const titleX = 18;
  const titleY = top + (rows.length * cell) / 2;
  parts.push(text(titleX, titleY, 'true class', `text-anchor="middle" font-weight="bold" transform="rotate(-90 ${titleX} ${round(titleY)})"`));
  parts.push(text(gridRight + 8, top - 8, 'images', 'font-size="11" fill="#555"'));
  rows.forEach(({ row, i }, r) => {
    const total = row.reduce((a, b) => a + b, 0);
    const y = top + r * cell;
    parts.push(text(left - 8, y + cell / 2 + 4, labels[i], 'text-anchor="end"'));
    row.forEach((value, j) => {
      const x = left + j * cell;
      const depth = total ? Math.sqrt(value / total) : 0;
      const colour = i === j ? BLUE : RED;
      parts.push(`<rect x="${x}" y="${y}" width="${cell}" height="${cell}" fill="${tint(colour, depth)}" stroke="#d0d0d0"/>`);
      if (value && i !== j)
        parts.push(`<rect x="${x + 1}" y="${y + 1}" width="${cell - 2}" height="${cell - 2}" fill="none" stroke="${RED}" stroke-width="2"/>`);
      if (value) parts.push(text(x + cell / 2, y + cell / 2 + 4, String(value), `text-anchor="middle" fill="${depth > 0.6 ? '#fff' : '#111'}"`));
    });
    parts.push(text(gridRight + 8, y + cell / 2 + 4, String(total), 'font-size="11" fill="#555"'));
  });
  // The legend: both colour scales, in share of the true class's images.
  const barTop = top;
  const barHeight = 180;
  const shares = [0, 0.01, 0.05, 0.25, 0.5, 1];
  const barY = (s: number) => round(barTop + barHeight - Math.sqrt(s) * barHeight);
  parts.push(text(legendLeft - 10, barTop - 26, 'share of the', 'font-size="11"'), text(legendLeft - 10, barTop - 12, 'true class', 'font-size="11"'));
  parts.push(`<rect x="${legendLeft}" y="${barTop}" width="16" height="${barHeight}" fill="url(#correct)" stroke="#888"/>`);
  parts.push(`<rect x="${legendLeft + 22}" y="${barTop}" width="16" height="${barHeight}" fill="url(#wrong)" stroke="#888"/>`);
  for (const s of shares) {
    parts.push(`<line x1="${legendLeft + 38}" y1="${barY(s)}" x2="${legendLeft + 42}" y2="${barY(s)}" stroke="#444"/>`);
    parts.push(text(legendLeft + 45, barY(s) + 4, `${100 * s} %`, 'font-size="11"'));
  }
  parts.push(text(legendLeft - 4, barTop + barHeight + 18, 'correct', `font-size="11" fill="${BLUE}"`));
  parts.push(text(legendLeft + 44, barTop + barHeight + 18, 'error', `font-size="11" fill="${RED}"`));
  parts.push('</svg>');
  return parts.join('\n');
}

/**
 * Accuracy against mean confidence per confidence bin, after temperature scaling and (where given) before it; a
 * calibrated model follows the diagonal. Below, how many images each bin holds.
 */
export function reliabilitySvg(after: { bins: ReliabilityBin[]; label: string }, before?: { bins: ReliabilityBin[]; label: string }): string {
  const plot = new Frame(70, 40, 320, 320, [0, 1], [0, 1]);
  const counts = after.bins.map((b) => b.count);
  const maxCount = Math.max(1, ...counts, ...(before?.bins.map((b) => b.count) ?? []));
  // Headroom above the tallest bar for its count.
  const countTicks = niceTicks(0, maxCount * 1.45, 3).filter((t) => t <= maxCount * 1.45);
  const hist = new Frame(70, plot.bottom + 95, 320, 90, [0, 1], [0, maxCount * 1.45]);
  const legendTop = hist.bottom + 52;
  const width = plot.left + plot.width + 30;
  const height = legendTop + (before ? 58 : 40);
  const n = counts.reduce((a, b) => a + b, 0);
  const parts = [svgOpen(width, height)];
  parts.push(text(plot.left, 22, `Reliability: ${n} images in ${after.bins.length} confidence bins`, 'font-weight="bold"'));
  const fifths = [0, 0.2, 0.4, 0.6, 0.8, 1];
  parts.push(...plot.axes(fifths, fifths, 'confidence (top-class probability)', 'accuracy'));
  parts.push(`<line x1="${plot.x(0)}" y1="${plot.y(0)}" x2="${plot.x(1)}" y2="${plot.y(1)}" stroke="#999" stroke-dasharray="5 4"/>`);
  const curve = (bins: ReliabilityBin[], colour: string, dashed: boolean, filled: boolean) => {
    const used = bins.filter((b) => b.count > 0);
    const points = used.map((b) => `${plot.x(b.confidence)},${plot.y(b.accuracy)}`).join(' ');
    const out = [`<polyline points="${points}" fill="none" stroke="${colour}" stroke-width="2"${dashed ? ' stroke-dasharray="6 3"' : ''}/>`];
    for (const b of used)
      out.push(
        `<circle cx="${plot.x(b.confidence)}" cy="${plot.y(b.accuracy)}" r="3.5" fill="${filled ? colour : '#fff'}" stroke="${colour}" stroke-width="1.5"/>`,
      );
    return out;
  };
  if (before) parts.push(...curve(before.bins, ORANGE, true, false));
  parts.push(...curve(after.bins, BLUE, false, true));
  // Bin counts: bars for the answers as given, an outline for those before scaling; each bar's count above it.
  parts.push(...hist.axes(fifths, countTicks, 'confidence', 'images'));
  after.bins.forEach((b, i) => {
    const x = hist.x(b.lower) + 1;
    const w = hist.x(b.upper) - hist.x(b.lower) - 2;
    if (b.count)
      parts.push(`<rect x="${x}" y="${hist.y(b.count)}" width="${w}" height="${round(hist.bottom - hist.y(b.count))}" fill="${BLUE}" fill-opacity="0.75"/>`);
    const prior = before?.bins[i];
    if (prior?.count)
      parts.push(
        `<rect x="${x}" y="${hist.y(prior.count)}" width="${w}" height="${round(hist.bottom - hist.y(prior.count))}" fill="none" stroke="${ORANGE}" stroke-width="1.5"/>`,
      );
    if (b.count) {
      const cx = round(x + w / 2);
      const cy = hist.y(b.count) - 4;
      parts.push(text(cx, cy, String(b.count), `font-size="9" transform="rotate(-90 ${cx} ${round(cy)})"`));
    }
  });
  parts.push(text(hist.left, hist.top - 8, 'images per bin (count above each bar)', 'font-size="11" fill="#555"'));
  const legend = (y: number, colour: string, dashed: boolean, filled: boolean, label: string) => [
    `<line x1="${plot.left}" y1="${y - 4}" x2="${plot.left + 28}" y2="${y - 4}" stroke="${colour}" stroke-width="2"${dashed ? ' stroke-dasharray="6 3"' : ''}/>`,
    `<circle cx="${plot.left + 14}" cy="${y - 4}" r="3.5" fill="${filled ? colour : '#fff'}" stroke="${colour}" stroke-width="1.5"/>`,
    text(plot.left + 36, y, label),
  ];
  parts.push(...legend(legendTop, BLUE, false, true, after.label));
  if (before) parts.push(...legend(legendTop + 18, ORANGE, true, false, before.label));
  const diagonalY = legendTop + (before ? 36 : 18);
  parts.push(
    `<line x1="${plot.left}" y1="${diagonalY - 4}" x2="${plot.left + 28}" y2="${diagonalY - 4}" stroke="#999" stroke-dasharray="5 4"/>`,
    text(plot.left + 36, diagonalY, 'perfect calibration'),
  );
  parts.push('</svg>');
  return parts.join('\n');
}

/** The epochs of a log, each once (the last entry wins, as after a resumed epoch), in order. */
export function epochsOf(history: readonly EpochRecord[]): EpochRecord[] {
  const byEpoch = new Map<number, EpochRecord>();
  for (const h of history) byEpoch.set(h.epoch, h);
  return [...byEpoch.values()].sort((a, b) => a.epoch - b.epoch);
}

/** The epoch whose weights a run kept: the last one logged as best, else the highest validation macro-F1. */
export function bestEpoch(history: readonly EpochRecord[]): EpochRecord | undefined {
  const marked = history.filter((h) => h.best);
  if (marked.length) return marked[marked.length - 1];
  return history.reduce<EpochRecord | undefined>((best, h) => (!best || h.val_macro_f1 > best.val_macro_f1 ? h : best), undefined);
}

/** Losses (training, validation) and validation scores per epoch, the best epoch marked; one epoch is one point. */
export function curvesSvg(log: readonly EpochRecord[]): string {
  const history = epochsOf(log);
  const best = bestEpoch(history);
  const first = history[0]?.epoch ?? 1;
  const last = history[history.length - 1]?.epoch ?? 1;
  const pad = last > first ? Math.max(0.2, (last - first) * 0.03) : 0.5;
  const xRange: [number, number] = [first - pad, last + pad];
  const xTicks = niceTicks(first, last, Math.min(6, last - first + 1)).filter((t) => Number.isInteger(t) && t >= first && t <= last);
  const losses = history.flatMap((h) => [h.train_loss, h.val_nll]).filter((v): v is number => v !== undefined && Number.isFinite(v));
  const lossTicks = niceTicks(0, Math.max(1e-3, ...losses), 5, true);
  const scores = history.flatMap((h) => [h.val_macro_f1, h.val_accuracy]).filter((v): v is number => v !== undefined && Number.isFinite(v));
  const scoreLow = Math.max(0, Math.floor(Math.min(1, ...scores) * 10) / 10 - 0.1);
  const scoreTicks = niceTicks(scoreLow, 1, 5, true);
  const lossPlot = new Frame(70, 44, 300, 220, xRange, [0, lossTicks[lossTicks.length - 1]]);
  const scorePlot = new Frame(lossPlot.left + lossPlot.width + 90, 44, 300, 220, xRange, [scoreTicks[0], 1]);
  const width = scorePlot.left + scorePlot.width + 20;
  const legendTop = lossPlot.bottom + 58;
  const height = legendTop + (best ? 32 : 14);
  const parts = [svgOpen(width, height)];
  parts.push(text(lossPlot.left, 26, 'Loss', 'font-weight="bold"'), text(scorePlot.left, 26, 'Validation score', 'font-weight="bold"'));
  parts.push(...lossPlot.axes(xTicks, lossTicks, 'epoch', 'loss'));
  parts.push(...scorePlot.axes(xTicks, scoreTicks, 'epoch', 'score', tickLabel, (v) => `${Math.round(100 * v)} %`));
  if (best) {
    for (const plot of [lossPlot, scorePlot])
      parts.push(
        `<line x1="${plot.x(best.epoch)}" y1="${plot.top}" x2="${plot.x(best.epoch)}" y2="${plot.bottom}" stroke="#2a9d4a" stroke-width="1.5" stroke-dasharray="4 3"/>`,
      );
  }
  const series = (plot: Frame, pick: (h: EpochRecord) => number | undefined, colour: string, dashed = false) => {
    const points = history.map((h) => ({ x: h.epoch, y: pick(h) })).filter((p): p is { x: number; y: number } => p.y !== undefined && Number.isFinite(p.y));
    const out = [];
    if (points.length > 1)
      out.push(
        `<polyline points="${points.map((p) => `${plot.x(p.x)},${plot.y(p.y)}`).join(' ')}" fill="none" stroke="${colour}" stroke-width="2"${dashed ? ' stroke-dasharray="6 3"' : ''}/>`,
      );
    if (points.length <= 25) for (const p of points) out.push(`<circle cx="${plot.x(p.x)}" cy="${plot.y(p.y)}" r="3" fill="${colour}"/>`);
    return out;
  };
  parts.push(...series(lossPlot, (h) => h.train_loss, RED), ...series(lossPlot, (h) => h.val_nll, BLUE));
  parts.push(...series(scorePlot, (h) => h.val_accuracy, GREY, true), ...series(scorePlot, (h) => h.val_macro_f1, BLUE));
  if (best) {
    parts.push(`<circle cx="${scorePlot.x(best.epoch)}" cy="${scorePlot.y(best.val_macro_f1)}" r="7" fill="none" stroke="#2a9d4a" stroke-width="2"/>`);
  }
  const key = (x: number, colour: string, label: string, dashed = false) => [
    `<line x1="${x}" y1="${legendTop - 4}" x2="${x + 26}" y2="${legendTop - 4}" stroke="${colour}" stroke-width="2"${dashed ? ' stroke-dasharray="6 3"' : ''}/>`,
    text(x + 32, legendTop, label),
  ];
  parts.push(...key(lossPlot.left, RED, 'training loss'), ...key(lossPlot.left + 140, BLUE, 'validation loss (NLL)'));
  parts.push(...key(scorePlot.left, BLUE, 'macro-F1'), ...key(scorePlot.left + 110, GREY, 'accuracy', true));
  if (best)
    parts.push(
      `<line x1="${lossPlot.left}" y1="${legendTop + 14}" x2="${lossPlot.left + 26}" y2="${legendTop + 14}" stroke="#2a9d4a" stroke-width="1.5" stroke-dasharray="4 3"/>`,
      text(lossPlot.left + 32, legendTop + 18, `best epoch: ${best.epoch} (validation macro-F1 ${pct(best.val_macro_f1)}), the weights kept`),
    );
  parts.push('</svg>');
  return parts.join('\n');
}

/**
 * A grid of misclassified images, numbered as the report's table lists them, each with its true and predicted class
 * and the predicted class's probability. Errors the model flagged as uncertain have an orange frame; those it
 * gave with confidence, the ones a reader should worry about, a red one.
 */
export function errorGridSvg(tiles: readonly ErrorTile[], columns = 8): string {
  const side = 112;
  const caption = 46;
  const gap = 10;
  const top = 34;
  const cols = Math.max(1, Math.min(columns, tiles.length));
  const rows = Math.ceil(tiles.length / cols);
  const width = gap + cols * (side + gap);
  const height = top + rows * (side + caption + gap) + gap;
  const parts = [svgOpen(Math.max(width, 560), height)];
  parts.push(`<rect x="${gap}" y="10" width="12" height="12" fill="none" stroke="${RED}" stroke-width="3"/>`);
  parts.push(text(gap + 18, 21, 'error not flagged', 'font-size="11"'));
  parts.push(`<rect x="${gap + 140}" y="10" width="12" height="12" fill="none" stroke="${ORANGE}" stroke-width="3"/>`);
  parts.push(text(gap + 158, 21, 'error flagged uncertain', 'font-size="11"'));
  parts.push(text(gap + 320, 21, 'true class → predicted class, probability', 'font-size="11" fill="#555"'));
  tiles.forEach((tile, i) => {
    const x = gap + (i % cols) * (side + gap);
    const y = top + Math.floor(i / cols) * (side + caption + gap);
    parts.push(`<rect x="${x}" y="${y}" width="${side}" height="${side}" fill="#eee"/>`);
    if (tile.picture)
      parts.push(
        `<image x="${x}" y="${y}" width="${side}" height="${side}" preserveAspectRatio="xMidYMid meet" href="data:${tile.picture.mime};base64,${tile.picture.data.toString('base64')}"/>`,
      );
    else parts.push(text(x + side / 2, y + side / 2, 'unreadable', 'text-anchor="middle" font-size="11" fill="#777"'));
    parts.push(`<rect x="${x}" y="${y}" width="${side}" height="${side}" fill="none" stroke="${tile.uncertain ? ORANGE : RED}" stroke-width="3"/>`);
    parts.push(`<rect x="${x}" y="${y}" width="22" height="16" fill="#fff" fill-opacity="0.85"/>`, text(x + 3, y + 12, String(i + 1), 'font-size="11"'));
    parts.push(text(x, y + side + 15, tile.label, 'font-size="11"'));
    parts.push(text(x, y + side + 29, `→ ${tile.predicted}`, `font-size="11" font-weight="bold" fill="${RED}"`));
    parts.push(text(x, y + side + 42, `${pct(tile.probability)}${tile.uncertain ? ', flagged' : ''}`, 'font-size="11" fill="#555"'));
  });
  parts.push('</svg>');
  return parts.join('\n');
}

export interface ReportSections {
  /** What was evaluated, in words a reader of the report understands (no machine paths). */
  data?: string;
  /** Plot files next to report.md; curves and errors only where drawn. */
  plots: { confusion: string; reliability: string; curves?: string; errors?: string };
  /** Uncertain answers: the threshold, the count by reason. */
  uncertainty: {
    threshold: number;
    flagged: number;
    reasons: Record<string, number>;
    unflagged_accuracy: number | null;
    /** The share answered from the classifier's second look at a pale stain, where recorded. */
    stain_raised_fraction?: number | null;
  };
  /** Below the training curves. */
  curvesNote?: string[];
  /** Below the grid of errors: its table. */
  errors?: string[];
  extra?: string[];
}

const REASONS: Record<string, string> = {
  'low-confidence': 'the calibrated top probability is below the threshold',
  'out-of-distribution': "the image's features lie far from the training images'",
  'no-single-cell': 'no nucleus was found, or several cells',
  'scale-out-of-range': "the image's scale is far from the training images'",
};

/** The Markdown report; plots are referenced as files written next to it. Sections come in a fixed order. */
export function markdownReport(title: string, metrics: Metrics & { ece_uncalibrated?: number; temperature?: number }, sections: ReportSections): string {
  const { uncertainty: u, plots } = sections;
  const lines = [`# ${title}`, ''];
  if (sections.data) lines.push(sections.data, '');
  lines.push(
    '## Summary',
    '',
    `| metric | value |`,
    `|---|---|`,
    `| images | ${metrics.n} |`,
    `| accuracy (95 % Wilson interval) | ${pct(metrics.accuracy)} (${pct(metrics.accuracy_interval[0])}–${pct(metrics.accuracy_interval[1])}) |`,
    `| balanced accuracy (95 % bootstrap interval) | ${pct(metrics.balanced_accuracy)} (${pct(metrics.balanced_accuracy_interval[0])}–${pct(metrics.balanced_accuracy_interval[1])}) |`,
    `| macro-F1 | ${pct(metrics.macro_f1)} |`,
    `| macro ROC-AUC | ${metrics.macro_roc_auc === null ? 'n/a' : metrics.macro_roc_auc.toFixed(4)} |`,
    `| Cohen's κ | ${metrics.cohen_kappa.toFixed(4)} |`,
    `| NLL | ${metrics.nll.toFixed(4)} |`,
    `| ECE (15 bins) | ${metrics.ece.toFixed(4)} |`,
  );
  if (metrics.ece_uncalibrated !== undefined) lines.push(`| ECE before temperature scaling | ${metrics.ece_uncalibrated.toFixed(4)} |`);
  if (metrics.temperature !== undefined) lines.push(`| temperature | ${metrics.temperature.toFixed(3)} |`);
  lines.push(
    `| uncertain | ${pct(u.flagged / metrics.n)} (${u.flagged} of ${metrics.n}) |`,
    `| uncertainty threshold | ${u.threshold.toFixed(3)} (calibrated top probability) |`,
    `| accuracy of the answers not flagged | ${u.unflagged_accuracy === null ? 'n/a (all flagged)' : `${pct(u.unflagged_accuracy)} (${metrics.n - u.flagged} images)`} |`,
    ...(typeof u.stain_raised_fraction === 'number' ? [`| answered from a second look, with a pale stain raised | ${pct(u.stain_raised_fraction)} |`] : []),
    '',
    '## Uncertain answers',
    '',
    `${u.flagged} of ${metrics.n} answers (${pct(u.flagged / metrics.n)}) are flagged uncertain. An answer is flagged when any reason applies; ` +
      `low-confidence means its calibrated top probability is below the uncertainty threshold, ${u.threshold.toFixed(3)}.`,
    '',
  );
  const reasons = Object.entries(u.reasons).sort((a, b) => b[1] - a[1]);
  if (reasons.length) {
    lines.push('| reason | images | share | meaning |', '|---|---|---|---|');
    for (const [reason, count] of reasons) lines.push(`| ${reason} | ${count} | ${pct(count / metrics.n)} | ${REASONS[reason] ?? ''} |`);
    lines.push('');
  }
  lines.push('## Per class', '', '| class | precision | recall | F1 | support | ROC-AUC |', '|---|---|---|---|---|---|');
  for (const [name, m] of Object.entries(metrics.per_class)) {
    lines.push(`| ${name} | ${pct(m.precision)} | ${pct(m.recall)} | ${pct(m.f1)} | ${m.support} | ${m.roc_auc === null ? 'n/a' : m.roc_auc.toFixed(4)} |`);
  }
  lines.push(
    '',
    '## Confusion matrix',
    '',
    `![confusion matrix](${plots.confusion})`,
    '',
    'Rows: true class; columns: predicted class; counts in the cells. Blue: correct, red: errors, each as deep as its share of the true class.',
    '',
    '## Reliability',
    '',
    `![reliability diagram](${plots.reliability})`,
    '',
    'Accuracy against confidence, per confidence bin; a calibrated model follows the diagonal. Below: the images in each bin.',
  );
  if (plots.curves)
    lines.push('', '## Training curves', '', `![training curves](${plots.curves})`, ...(sections.curvesNote ? ['', ...sections.curvesNote] : []));
  lines.push('', '## Most confident errors', '');
  if (plots.errors) lines.push(`![most confident errors](${plots.errors})`, '');
  lines.push(...(sections.errors ?? ['No errors.']));
  if (sections.extra?.length) lines.push('', ...sections.extra);
  return `${lines.join('\n')}\n`;
}
