// Progress on stderr: a live bar on a terminal, and a plain line every few seconds otherwise (CI logs, pipes).
import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, fields?: Record<string, string | number>): void;
  stop(): void;
}

/** A bar for `total` units; `format` may use {bar} {percentage} {value} {total} {eta_formatted} and custom fields. */
export function progressBar(label: string, total: number, format = '{bar} {percentage}% | {value}/{total} | ETA {eta_formatted}'): Progress {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { format: `${label} ${format}`, stream: process.stderr, hideCursor: true, etaBuffer: 50, clearOnComplete: false },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, 0);
    return {
      update: (done, fields) => bar.update(done, fields),
      stop: () => bar.stop(),
    };
  }
  const started = Date.now();
  let lastPrint = 0;
  const line = (done: number, fields: Record<string, string | number> = {}) => {
    const elapsed = (Date.now() - started) / 1000;
    const eta = done > 0 ? Math.round((elapsed / done) * (total - done)) : NaN;
    const extra = Object.entries(fields)
      .map(([k, v]) => `${k} ${v}`)
      .join(' | ');
    process.stderr.write(
      `${label} ${done}/${total} (${Math.floor((100 * done) / Math.max(1, total))}%) ETA ${Number.isNaN(eta) ? '?' : `${eta}s`}${extra ? ` | ${extra}` : ''}\n`,
    );
  };
  return {
    update(done, fields) {
      if (Date.now() - lastPrint > 10_000 || done === total) {
        lastPrint = Date.now();
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
