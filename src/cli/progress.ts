// Progress on stderr: a live bar on a terminal, and otherwise (CI logs, nohup, a file) a plain line every
// PLAIN_LINE_SECONDS, since a redrawn bar there is either invisible or one endless line.
import cliProgress from 'cli-progress';

/** Where progress goes: process.stderr, or anything that takes text and says whether it is a terminal. */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
}

export interface ProgressOptions {
  stream?: ProgressStream;
  /** The clock, in milliseconds. */
  now?: () => number;
}

/** Seconds between plain progress lines. */
export const PLAIN_LINE_SECONDS = 30;

/** A duration for people: "45 s", "12 min 05 s", "3 h 07 min". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
}

/** A live cli-progress bar on the given terminal stream; `fields` fill the format's custom fields until the first update. */
export function terminalBar(stream: ProgressStream, format: string, total: number, fields: Record<string, string | number> = {}): cliProgress.SingleBar {
  const bar = new cliProgress.SingleBar(
    { format, stream: stream as NodeJS.WritableStream, hideCursor: true, etaBuffer: 50, clearOnComplete: false },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, fields);
  return bar;
}

export interface Progress {
  update(done: number, fields?: Record<string, string | number>): void;
  stop(): void;
}

/** A bar for `total` units; `format` may use {bar} {percentage} {value} {total} {eta_formatted} and custom fields. */
export function progressBar(
  label: string,
  total: number,
  format = '{bar} {percentage}% | {value}/{total} | ETA {eta_formatted}',
  options: ProgressOptions = {},
): Progress {
  const stream = options.stream ?? process.stderr;
  if (stream.isTTY) {
    const bar = terminalBar(stream, `${label} ${format}`, total);
    return {
      update: (done, fields) => bar.update(done, fields),
      stop: () => bar.stop(),
    };
  }
  const now = options.now ?? Date.now;
  const started = now();
  let lastPrint = -Infinity;
  const line = (done: number, fields: Record<string, string | number> = {}) => {
    const elapsed = (now() - started) / 1000;
    const rate = elapsed > 0 ? done / elapsed : NaN;
    const extra = Object.entries(fields).map(([k, v]) => ` | ${k} ${v}`);
    stream.write(
      `${label} ${done}/${total} (${Math.floor((100 * done) / Math.max(1, total))} %)` +
        `${Number.isFinite(rate) && done > 0 ? ` | ${rate.toFixed(1)}/s | ETA ${formatDuration((total - done) / rate)}` : ''}${extra.join('')}\n`,
    );
  };
  return {
    update(done, fields) {
      if (now() - lastPrint >= PLAIN_LINE_SECONDS * 1000 || done === total) {
        lastPrint = now();
        line(done, fields);
      }
    },
    stop() {},
  };
}

/** A (done, total) callback for library code that reports progress: it starts the bar on the first report. */
export function progressReporter(label: string): { update: (done: number, total: number) => void; stop: () => void } {
  let bar: Progress | undefined;
  return {
    update(done, total) {
      bar ??= progressBar(label, total);
      bar.update(done);
    },
    stop: () => bar?.stop(),
  };
}
