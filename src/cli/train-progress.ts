// A training run's progress on stderr: its rates (img/s, time per epoch), its last loss and learning rate, and an
// ETA for the whole run, every remaining epoch's training and validation, not just the current epoch. Validation
// shows progress too. On a terminal these are live bars; elsewhere, plain lines (see trainingProgress).
import type { TrainEvent } from '../train/trainer.js';
import { formatDuration, PLAIN_LINE_SECONDS, type ProgressOptions, terminalBar } from './progress.js';

type Event<T extends TrainEvent['type']> = Extract<TrainEvent, { type: T }>;

/** Until a validation has been timed, a validation image counts as a third of a training image (a forward pass alone). */
const FORWARD_SHARE = 1 / 3;

/** Outside a terminal, a plain line also comes at each tenth of the run's steps, so short runs show progress too. */
const PLAIN_LINES_PER_RUN = 10;

/**
 * Remaining time of a run from its events and the times they came. Rates are measured in this process: training
 * from the time between steps (without the first step, which carries start-up costs), validation from the time its
 * batches and its end took. With early stopping (patience), the run may end sooner than the ETA says.
 */
export class RunEstimate {
  readonly epochs: number;
  readonly stepsPerEpoch: number;
  readonly validationImages: number;
  /** Training steps done in the whole run, including those before a resume. */
  stepsDone: number;
  /** Epochs trained and validated. */
  epochsDone: number;
  /** Images of the current validation done so far. */
  validationDone = 0;
  #last: number;
  #firstStep = true;
  #trainMs = 0;
  #trainSteps = 0;
  #trainImages = 0;
  #validationMs = 0;
  #validationImagesTimed = 0;

  constructor(start: Event<'start'>, now: number) {
    this.epochs = start.epochs;
    this.stepsPerEpoch = start.stepsPerEpoch;
    this.validationImages = start.validationImages;
    this.epochsDone = start.resumedAt?.epoch ?? 0;
    this.stepsDone = start.resumedAt ? start.resumedAt.epoch * start.stepsPerEpoch + start.resumedAt.batch : 0;
    this.#last = now;
  }

  get totalSteps(): number {
    return this.epochs * this.stepsPerEpoch;
  }

  #elapsed(now: number): number {
    const ms = now - this.#last;
    this.#last = now;
    return ms;
  }

  step(event: Event<'step'>, now: number): void {
    const ms = this.#elapsed(now);
    if (!this.#firstStep) {
      this.#trainMs += ms;
      this.#trainSteps++;
      this.#trainImages += event.images;
    }
    this.#firstStep = false;
    this.stepsDone = event.epoch * this.stepsPerEpoch + event.batch + 1;
    this.validationDone = 0;
  }

  validation(event: Event<'validation'>, now: number): void {
    this.#validationMs += this.#elapsed(now);
    this.#validationImagesTimed += event.done - this.validationDone;
    this.validationDone = event.done;
  }

  /** The end of an epoch: its metrics and the best model's file count towards validation's time. */
  epoch(event: Event<'epoch'>, now: number): void {
    this.#validationMs += this.#elapsed(now);
    this.epochsDone = event.epoch + 1;
    this.stepsDone = this.epochsDone * this.stepsPerEpoch;
    this.validationDone = 0;
  }

  /** Training images per second, once measured. */
  get trainRate(): number | undefined {
    return this.#trainMs > 0 ? (1000 * this.#trainImages) / this.#trainMs : undefined;
  }

  /** Validation images per second, once measured. */
  get validationRate(): number | undefined {
    return this.#validationMs > 0 && this.#validationImagesTimed > 0 ? (1000 * this.#validationImagesTimed) / this.#validationMs : undefined;
  }

  #secondsPerStep(): number | undefined {
    return this.#trainSteps > 0 ? this.#trainMs / 1000 / this.#trainSteps : undefined;
  }

  #secondsPerValidationImage(): number | undefined {
    const measured = this.validationRate;
    if (measured !== undefined) return 1 / measured;
    const train = this.trainRate;
    return train === undefined ? undefined : FORWARD_SHARE / train;
  }

  /** One epoch's training and validation. */
  get secondsPerEpoch(): number | undefined {
    const step = this.#secondsPerStep();
    const image = this.#secondsPerValidationImage();
    return step === undefined || image === undefined ? undefined : this.stepsPerEpoch * step + this.validationImages * image;
  }

  /** The rest of the run: the remaining steps and validations of every epoch. */
  get remainingSeconds(): number | undefined {
    const stepsLeft = this.totalSteps - this.stepsDone;
    const imagesLeft = (this.epochs - this.epochsDone) * this.validationImages - this.validationDone;
    const step = stepsLeft > 0 ? this.#secondsPerStep() : 0;
    const image = imagesLeft > 0 ? this.#secondsPerValidationImage() : 0;
    return step === undefined || image === undefined ? undefined : stepsLeft * step + imagesLeft * image;
  }

  /** The share of the run done: by estimated time where the rates are known, before that by steps and validations. */
  get fractionDone(): number {
    const perEpoch = this.secondsPerEpoch;
    const remaining = this.remainingSeconds;
    if (perEpoch === undefined || remaining === undefined || perEpoch <= 0)
      return (this.stepsDone + this.epochsDone) / Math.max(1, this.epochs * (this.stepsPerEpoch + 1));
    return Math.min(1, Math.max(0, 1 - remaining / (this.epochs * perEpoch)));
  }
}

/** Which tenth of the run's steps is done (0–10). */
function tenthOf(estimate: RunEstimate): number {
  return Math.floor((estimate.stepsDone * PLAIN_LINES_PER_RUN) / Math.max(1, estimate.totalSteps));
}

function describeEpoch(event: Event<'epoch'>, eta: string | undefined): string {
  const { val } = event;
  return (
    `epoch ${event.epoch + 1}: train loss ${event.trainLoss.toFixed(4)} | val accuracy ${(100 * val.accuracy).toFixed(2)}% macro-F1 ` +
    `${(100 * val.macro_f1).toFixed(2)}% NLL ${val.nll.toFixed(4)} | ${formatDuration(event.seconds)}${event.best ? ' | best so far' : ''}` +
    `${eta ? ` | run ETA ${eta}` : ''}`
  );
}

/**
 * Shows a run's events on stderr (or options.stream). On a terminal: a live bar for each epoch's steps and one for
 * its validation. Elsewhere: a plain line at most every PLAIN_LINE_SECONDS and at each tenth of the run's steps,
 * during validation too, e.g.
 *   epoch 3/40, batch 120/453 | 212.4 img/s, 1 min 05 s per epoch | loss 0.4123, lr 1.00e-3 | run 6.1 % done, ETA 41 min 10 s
 *   epoch 3/40, validation 512/2182 images | 840.2 img/s | run 6.9 % done, ETA 40 min 51 s
 * Every epoch ends with a line of its validation metrics.
 */
export function trainingProgress(options: ProgressOptions = {}): { onEvent: (event: TrainEvent) => void; stop: () => void } {
  const stream = options.stream ?? process.stderr;
  const now = options.now ?? Date.now;
  let estimate: RunEstimate | undefined;
  let loss: number | undefined;
  let lr = NaN;
  let bar: { kind: string; instance: ReturnType<typeof terminalBar> } | undefined;
  let lastLine = -Infinity;
  let lastTenth = 0;

  const stopBar = () => {
    bar?.instance.stop();
    bar = undefined;
  };
  const eta = () => {
    const seconds = estimate?.remainingSeconds;
    return seconds === undefined ? '?' : formatDuration(seconds);
  };
  const rate = (value: number | undefined) => (value === undefined ? '?' : value.toFixed(1));
  const runDone = () => `${(100 * (estimate?.fractionDone ?? 0)).toFixed(1)} %`;
  const fields = () => ({
    speed: rate(estimate?.trainRate),
    epoch_time: estimate?.secondsPerEpoch === undefined ? '?' : formatDuration(estimate.secondsPerEpoch),
    loss: loss === undefined ? '-' : loss.toFixed(4),
    lr: lr.toExponential(2),
    done: runDone(),
    run_eta: eta(),
  });
  const plain = (text: string) => {
    lastLine = now();
    stream.write(`${text}\n`);
  };

  const onStep = (event: Event<'step'>) => {
    estimate?.step(event, now());
    if (event.loss !== undefined) loss = event.loss;
    lr = event.lr;
    const epochs = estimate?.epochs ?? '?';
    const f = fields();
    if (stream.isTTY) {
      if (bar?.kind !== `train ${event.epoch}`) {
        stopBar();
        const format = `epoch ${event.epoch + 1}/${epochs} {bar} {value}/{total} | {speed} img/s, {epoch_time} per epoch | loss {loss}, lr {lr} | run {done} done, ETA {run_eta}`;
        bar = { kind: `train ${event.epoch}`, instance: terminalBar(stream, format, event.batches, f) };
      }
      bar.instance.update(event.batch + 1, f);
      return;
    }
    const tenth = estimate ? tenthOf(estimate) : 0;
    if (now() - lastLine < PLAIN_LINE_SECONDS * 1000 && tenth <= lastTenth) return;
    lastTenth = Math.max(lastTenth, tenth);
    plain(
      `epoch ${event.epoch + 1}/${epochs}, batch ${event.batch + 1}/${event.batches} | ${f.speed} img/s, ${f.epoch_time} per epoch | ` +
        `loss ${f.loss}, lr ${f.lr} | run ${f.done} done, ETA ${f.run_eta}`,
    );
  };

  const onValidation = (event: Event<'validation'>) => {
    estimate?.validation(event, now());
    const epochs = estimate?.epochs ?? '?';
    const f = { speed: rate(estimate?.validationRate), done: runDone(), run_eta: eta() };
    if (stream.isTTY) {
      if (bar?.kind !== `validation ${event.epoch}`) {
        stopBar();
        const format = `epoch ${event.epoch + 1}/${epochs} validation {bar} {value}/{total} images | {speed} img/s | run {done} done, ETA {run_eta}`;
        bar = { kind: `validation ${event.epoch}`, instance: terminalBar(stream, format, event.total, f) };
      }
      bar.instance.update(event.done, f);
      return;
    }
    if (now() - lastLine < PLAIN_LINE_SECONDS * 1000) return;
    plain(`epoch ${event.epoch + 1}/${epochs}, validation ${event.done}/${event.total} images | ${f.speed} img/s | run ${f.done} done, ETA ${f.run_eta}`);
  };

  return {
    onEvent(event) {
      switch (event.type) {
        case 'start':
          estimate = new RunEstimate(event, now());
          lastTenth = tenthOf(estimate);
          if (event.resumedAt) plain(`resuming at epoch ${event.resumedAt.epoch + 1}, batch ${event.resumedAt.batch + 1}`);
          break;
        case 'step':
          onStep(event);
          break;
        case 'validation':
          onValidation(event);
          break;
        case 'epoch': {
          estimate?.epoch(event, now());
          stopBar();
          const left = estimate && estimate.epochsDone < estimate.epochs ? eta() : undefined;
          plain(describeEpoch(event, left));
          break;
        }
        case 'stop':
          stopBar();
          plain(`early stop: ${event.reason}`);
          break;
        case 'checkpoint':
          break;
      }
    },
    stop: stopBar,
  };
}
