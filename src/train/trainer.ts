// The training loop: AdamW with a warm-up + cosine schedule, label smoothing, optional EMA and autocast,
// gradient clipping, early stopping on validation macro-F1, and exact resumption from checkpoints. The parts live
// beside it: the step and its losses (step.ts), validation (validate.ts), the EMA (ema.ts) and checkpoints
// (checkpoint.ts); train() runs them in order. With a DataParallel group (data-parallel.ts), each process trains on
// its share of every global batch and rank 0 alone writes checkpoints and logs.
import { constants } from 'node:fs';
import { lstat, mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import * as E from '../engine/index.js';
import { weightDecayGroups, withBatchShard } from '../nn/index.js';
import type { ImageClassifier } from '../models/classifier.js';
import { type AugmentConfig } from '../data/augment.js';
import { type ImageSet, type Normalization, batchIndices, shuffled } from '../data/batches.js';
import { type BatchSource, inlineBatches, workerBatches } from '../data/prefetch.js';
import { assertFiniteWeights, countNonFinite } from '../eval/finite.js';
import type { Metrics } from '../eval/metrics.js';
import { type CosineSchedule, cosineLr } from './schedule.js';
import { type LoopState, RunCheckpoints } from './checkpoint.js';
import { WeightAverage } from './ema.js';
import { softLabels } from './distill.js';
import { mixBatch } from './mix.js';
import { applyGradients, forwardBackward, LOSS_READ_INTERVAL, LossWindow, type StepSettings } from './step.js';
import { divergedValidation, predictLogits, validateEpoch, validationMetrics } from './validate.js';
import type { DataParallel } from './data-parallel.js';

export { NonFiniteLossError } from './step.js';

export interface TrainConfig {
  epochs: number;
  batchSize: number;
  lr: number;
  minLr: number;
  weightDecay: number;
  /** The fraction of all steps spent warming the learning rate up linearly. */
  warmupFraction: number;
  labelSmoothing: number;
  /** Decay of an exponential moving average of the weights, or null for none. */
  emaDecay: number | null;
  precision: E.Precision;
  /** Maximum global gradient norm, or null for no clipping. */
  clipGrad: number | null;
  seed: number;
  /** Epochs without a better validation macro-F1 before stopping; null trains every epoch. */
  patience: number | null;
  augment: AugmentConfig;
  normalization: Normalization;
  evalBatchSize: number;
  /** A checkpoint is also written mid-epoch when this many minutes passed since the last one. */
  checkpointMinutes: number;
}

export type TrainEvent =
  | { type: 'start'; epochs: number; stepsPerEpoch: number; validationImages: number; resumedAt?: { epoch: number; batch: number } }
  | {
      type: 'step';
      epoch: number;
      batch: number;
      batches: number;
      /** Images in this step's batch. */
      images: number;
      /** The mean loss of the steps since the last read, on the steps that read it (every lossReadInterval steps). */
      loss?: number;
      lr: number;
      /** This step's images over its wall time; on a GPU, only steps that read the loss wait for the device. */
      imagesPerSecond: number;
    }
  | { type: 'validation'; epoch: number; done: number; total: number }
  | { type: 'epoch'; epoch: number; trainLoss: number; lr: number; seconds: number; val: Metrics; best: boolean }
  | { type: 'checkpoint'; file: string }
  | { type: 'stop'; reason: string };

export interface TrainRun {
  model: ImageClassifier;
  data: ImageSet;
  trainIndices: Int32Array;
  valIndices: Int32Array;
  runDir: string;
  config: TrainConfig;
  device: E.Device;
  resume: boolean;
  onEvent?: (event: TrainEvent) => void;
  /** Called with the best weights loaded into the model whenever validation improves. */
  onBest?: (model: ImageClassifier, epoch: number, val: Metrics) => Promise<void>;
  /** Returns true to stop after the current step, with a checkpoint (e.g. on SIGINT). */
  shouldStop?: () => boolean;
  /**
   * CPU worker threads that prepare batches ahead of the training step; 0 prepares them inline. On CUDA, batches
   * are always made inline, on the GPU.
   */
  workers?: number;
  /** Steps whose losses are read from the device together (LOSS_READ_INTERVAL by default). */
  lossReadInterval?: number;
  /**
   * Train as one rank of a data-parallel group: config.batchSize is the global batch, split evenly across the ranks.
   * Every rank must call train() with the same run; only rank 0 writes to runDir and calls onBest.
   */
  parallel?: DataParallel;
  /** Distillation: the teachers' labels for every image of data (teacherTargets), their share and temperature. */
  distillation?: { targets: Float32Array; weight: number; temperature: number };
}

export const LOG_FILE = 'log.jsonl';

/**
 * The log is the one run file appended to rather than written whole and renamed: it is opened without following a
 * link, so that a link placed at its name (between a stop and --resume) cannot have the run write outside its folder.
 */
const LOG_FLAGS = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW;

function unusableLog(file: string, what: string): Error {
  return new Error(
    `${file} is ${what}, where the run appends its log to a file of its own: remove it (or put the run's own log.jsonl in its place) and run again`,
  );
}

/** Refuses a run log that is a link, a folder or any other thing but a file, before the run trains a step. */
export async function checkRunLog(runDir: string): Promise<void> {
  const file = path.join(runDir, LOG_FILE);
  const info = await lstat(file).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return null;
    throw error;
  });
  if (info && !info.isFile()) throw unusableLog(file, info.isSymbolicLink() ? 'a symbolic link' : info.isDirectory() ? 'a folder' : 'not a regular file');
}

async function appendLog(file: string, line: string): Promise<void> {
  const handle = await open(file, LOG_FLAGS).catch((error: NodeJS.ErrnoException) => {
    throw error.code === 'ELOOP' ? unusableLog(file, 'a symbolic link') : error;
  });
  try {
    await handle.appendFile(line);
  } finally {
    await handle.close();
  }
}

/** How many batches are prepared ahead of the one being trained on. */
const PREFETCH_DEPTH = 2;

/** Seeds derived from (run seed, epoch, batch): every step's randomness is fixed, which is what makes resuming exact. */
function stepSeed(seed: number, epoch: number, batch: number): number {
  return (Math.imul(seed + 1, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca6b) ^ Math.imul(batch + 1, 0xc2b2ae35)) >>> 0;
}

type Batch = { x: E.Tensor; y: E.Tensor };

/** One epoch's batches, each requested PREFETCH_DEPTH batches before it is trained on. */
class BatchQueue {
  readonly #inflight = new Map<number, Promise<Batch>>();

  constructor(
    private readonly source: BatchSource,
    private readonly batches: Int32Array[],
    private readonly seedOf: (batch: number) => number,
  ) {}

  async take(batch: number): Promise<Batch> {
    for (let b = batch; b <= Math.min(batch + PREFETCH_DEPTH, this.batches.length - 1); b++) {
      if (!this.#inflight.has(b)) this.#inflight.set(b, this.source.request(this.batches[b], this.seedOf(b)));
    }
    const next = this.#inflight.get(batch)!;
    this.#inflight.delete(batch);
    return next;
  }

  /** Frees the batches requested but not taken (after an interruption or an error). */
  async drain(): Promise<void> {
    for (const batch of this.#inflight.values()) E.dispose(await batch.catch(() => undefined));
    this.#inflight.clear();
  }
}

/** What the parts of one run share while it trains. */
interface TrainingContext {
  run: TrainRun;
  optimizer: E.AdamW;
  ema?: WeightAverage;
  checkpoints: RunCheckpoints;
  losses: LossWindow;
  source: BatchSource;
  schedule: CosineSchedule;
  emit: (event: TrainEvent) => void;
}

export async function train(run: TrainRun): Promise<{ loop: LoopState; stoppedEarly: boolean; interrupted: boolean }> {
  const { model, data, config, runDir, device, parallel } = run;
  if (parallel && config.batchSize % parallel.worldSize !== 0)
    throw new RangeError(`the batch size ${config.batchSize} cannot be split evenly across ${parallel.worldSize} processes`);
  if (parallel) refuseBatchStatistics(model);
  const root = !parallel || parallel.isRoot;
  if (root) {
    await mkdir(runDir, { recursive: true });
    await checkRunLog(runDir);
  }
  // Before the EMA copies the weights: every rank starts from rank 0's.
  if (parallel) await parallel.broadcastModule(model);
  const groups = weightDecayGroups(model, config.weightDecay);
  const optimizer = new E.AdamW([groups.decay, groups.noDecay], { lr: config.lr });
  const ema = config.emaDecay === null ? undefined : new WeightAverage(model, config.emaDecay);
  const losses = new LossWindow(run.lossReadInterval ?? LOSS_READ_INTERVAL);
  let source: BatchSource | undefined;
  try {
    const checkpoints = new RunCheckpoints(runDir, { model, optimizer, ema: ema?.shadows }, config, config.checkpointMinutes);
    // Every rank reads the run's checkpoint (on a file system they share); rank 0 alone writes it.
    const loop = await checkpoints.start(run.resume, root);
    const stepsPerEpoch = batchIndices(run.trainIndices, config.batchSize, true).length;
    const schedule = {
      peakLr: config.lr,
      minLr: config.minLr,
      totalSteps: config.epochs * stepsPerEpoch,
      warmupSteps: Math.round(config.warmupFraction * config.epochs * stepsPerEpoch),
    };
    const emit = run.onEvent ?? (() => {});
    emit({
      type: 'start',
      epochs: config.epochs,
      stepsPerEpoch,
      validationImages: run.valIndices.length,
      resumedAt: run.resume ? { epoch: loop.epoch, batch: loop.batch } : undefined,
    });
    const recipe = { normalization: config.normalization, augment: config.augment };
    source = run.workers && device === 'cpu' ? workerBatches(data, recipe, { workers: run.workers }) : inlineBatches(data, recipe, device);
    const context: TrainingContext = { run, optimizer, ema, checkpoints, losses, source, schedule, emit };
    model.train();
    while (loop.epoch < config.epochs) {
      const epochStart = Date.now();
      const epoch = await trainEpoch(context, loop);
      if (epoch.interrupted) return { loop, stoppedEarly: false, interrupted: true };
      await endEpoch(context, loop, epoch.losses, epochStart);
      const stoppedEarly = config.patience !== null && loop.epoch - 1 - loop.bestEpoch >= config.patience;
      if (stoppedEarly) emit({ type: 'stop', reason: `no better validation macro-F1 for ${config.patience} epochs` });
      await save(context, loop);
      if (stoppedEarly) return { loop, stoppedEarly, interrupted: false };
    }
    return { loop, stoppedEarly: false, interrupted: false };
  } finally {
    losses.dispose();
    await source?.close();
    optimizer.dispose();
    ema?.dispose();
  }
}

/**
 * Writes a checkpoint of the loop's position (rank 0 of a group alone). Only losses read as finite may precede it:
 * the pending ones are read first.
 */
async function save(context: TrainingContext, loop: LoopState): Promise<void> {
  context.losses.read();
  if (context.run.parallel && !context.run.parallel.isRoot) return;
  await context.checkpoints.save(loop);
  context.emit({ type: 'checkpoint', file: context.checkpoints.file });
}

/**
 * Trains the rest of loop.epoch from loop.batch, advancing loop past each step. Returns the epoch's losses read here,
 * and whether it stopped on request (then a checkpoint of the next step has been written).
 */
async function trainEpoch(context: TrainingContext, loop: LoopState): Promise<{ losses: number[]; interrupted: boolean }> {
  const { run, optimizer, emit } = context;
  const { config, model } = run;
  const { parallel } = run;
  // The global batches; a rank of a group trains on its block of each (the union is the epoch, in the same order).
  const batches = batchIndices(shuffled(run.trainIndices, stepSeed(config.seed, loop.epoch, -1)), config.batchSize, true);
  const epoch = loop.epoch;
  const mine = parallel ? batches.map((b) => parallel.shard(b)) : batches;
  const queue = new BatchQueue(context.source, mine, (b) => stepSeed(config.seed, epoch, b));
  const settings: StepSettings = { precision: config.precision, device: run.device, labelSmoothing: config.labelSmoothing, clipGrad: config.clipGrad };
  const read: number[] = [];
  const readLosses = () => {
    const values = context.losses.read();
    read.push(...values);
    return values;
  };
  try {
    while (loop.batch < batches.length) {
      const started = performance.now();
      const batch = await queue.take(loop.batch);
      const seed = stepSeed(config.seed, epoch, loop.batch);
      E.manualSeed(seed); // dropout and drop path draw from libtorch's generator
      const lr = cosineLr(loop.globalStep, context.schedule);
      optimizer.setLr(lr);
      const mix = mixBatch(batch, config.augment, seed);
      const soft = run.distillation && softLabels(run.distillation, mine[loop.batch], model.numClasses, run.device, mix);
      const shard = parallel ? { offset: parallel.rank * mine[loop.batch].length, total: batches[loop.batch].length } : null;
      let loss: E.Tensor;
      let stop = false;
      try {
        loss = withBatchShard(shard, () => forwardBackward(model, { ...batch, ...mix, soft }, settings));
        if (parallel) ({ loss, stop } = await averaged(parallel, model, loss, run.shouldStop?.() ?? false));
        applyGradients(model, optimizer, settings);
      } catch (error) {
        optimizer.zeroGrad();
        throw error;
      } finally {
        E.dispose([batch.x, batch.y, ...(mix ? [mix.x, mix.mixedWith.y] : []), ...(soft ? [soft.targets] : [])]);
      }
      context.ema?.update(model);
      const trained = loop.batch;
      const due = context.losses.add(loss, epoch, trained);
      loop.batch++;
      loop.globalStep++;
      const values = due ? readLosses() : [];
      emit({
        type: 'step',
        epoch,
        batch: trained,
        batches: batches.length,
        images: batches[trained].length,
        loss: values.length > 0 ? values.reduce((a, b) => a + b, 0) / values.length : undefined,
        lr,
        imagesPerSecond: batches[trained].length / ((performance.now() - started) / 1000),
      });
      // A step and a prefetched batch can follow one another without the event loop turning, and a signal is
      // delivered only when it does: yielding here lets a stop request (SIGINT, SIGTERM) land after this step.
      await new Promise(setImmediate);
      if (parallel ? stop : run.shouldStop?.()) {
        readLosses();
        await save(context, loop);
        return { losses: read, interrupted: true };
      }
      // Mid-epoch checkpoints follow rank 0's clock alone, so that every rank reads its losses at the same steps.
      if (loop.batch < batches.length && (!parallel || parallel.isRoot) && context.checkpoints.due) {
        readLosses();
        await save(context, loop);
      }
    }
    readLosses();
    return { losses: read, interrupted: false };
  } finally {
    await queue.drain();
  }
}

/**
 * A data-parallel step's exchange: the gradients become their mean over the ranks, and so does the loss (the global
 * batch's); the run stops if any rank was asked to. Takes ownership of `loss` and returns the mean in its place.
 */
async function averaged(parallel: DataParallel, model: ImageClassifier, loss: E.Tensor, stop: boolean): Promise<{ loss: E.Tensor; stop: boolean }> {
  let value: number;
  try {
    value = loss.item();
  } finally {
    loss.dispose();
  }
  const [mean, stopShare] = await parallel.averageGradients(model.parameters(), [value, stop ? 1 : 0]);
  return { loss: E.tensor([mean], []), stop: stopShare > 0 };
}

/**
 * Validates the epoch just trained (with the EMA weights when the run keeps them), hands an improved model to onBest,
 * logs the epoch and moves loop to the next one.
 */
async function endEpoch(context: TrainingContext, loop: LoopState, losses: number[], epochStart: number): Promise<void> {
  const { run, emit, ema } = context;
  const { model, config } = run;
  const evaluated = <T>(fn: () => T): T => (ema ? ema.applied(model, fn) : fn());
  const options = {
    batchSize: config.evalBatchSize,
    normalization: config.normalization,
    precision: config.precision,
    device: run.device,
    // In a group, rank 0 sees its own block: its share stands for the whole set's.
    onProgress: (done: number, total: number) =>
      emit({ type: 'validation', epoch: loop.epoch, done: Math.round((done / total) * run.valIndices.length), total: run.valIndices.length }),
  };
  const { val, scores } = run.parallel
    ? await validateParallel(run.parallel, run, loop.epoch, (indices) => evaluated(() => predictLogits(model, run.data, indices, options)))
    : (() => {
        const metrics = evaluated(() => validateEpoch(model, run.data, run.valIndices, loop.epoch, options));
        return { val: metrics, scores: metrics };
      })();
  const best = scores.macro_f1 > loop.bestScore;
  if (best) {
    loop.bestScore = scores.macro_f1;
    loop.bestEpoch = loop.epoch;
    if (run.onBest && val) {
      await evaluated(() => {
        assertFiniteWeights(model, `the best model (epoch ${loop.epoch + 1})`);
        return run.onBest!(model, loop.epoch, val!);
      });
    }
  }
  const entry = {
    epoch: loop.epoch + 1,
    train_loss: losses.reduce((a, b) => a + b, 0) / Math.max(1, losses.length),
    lr: cosineLr(loop.globalStep - 1, context.schedule),
    seconds: (Date.now() - epochStart) / 1000,
    val_accuracy: scores.accuracy,
    val_macro_f1: scores.macro_f1,
    val_nll: scores.nll,
    best,
  };
  loop.history.push(entry);
  if (val) {
    await appendLog(path.join(run.runDir, LOG_FILE), `${JSON.stringify({ time: new Date().toISOString(), ...entry })}\n`);
    emit({ type: 'epoch', epoch: loop.epoch, trainLoss: entry.train_loss, lr: entry.lr, seconds: entry.seconds, val, best });
  }
  loop.epoch++;
  loop.batch = 0;
}

type Scores = Pick<Metrics, 'accuracy' | 'macro_f1' | 'nll'>;

/**
 * Validation across a group: each rank computes the logits of its block of the validation set, rank 0 gathers them
 * and computes the metrics once (macro-F1 and NLL cannot be averaged), and every rank receives the scores that
 * decide the best epoch and early stopping. Only rank 0 gets the full metrics.
 */
async function validateParallel(
  parallel: DataParallel,
  run: TrainRun,
  epoch: number,
  logitsOf: (indices: Int32Array) => Float32Array,
): Promise<{ val?: Metrics; scores: Scores }> {
  const k = run.model.numClasses;
  const gathered = await parallel.gatherRows(logitsOf(parallel.split(run.valIndices)), k);
  const nonFinite = gathered ? countNonFinite(gathered) : 0;
  const val = gathered && nonFinite === 0 ? validationMetrics(gathered, run.data, run.valIndices) : undefined;
  const [accuracy, macroF1, nll, bad] = await parallel.broadcastNumbers(val ? [val.accuracy, val.macro_f1, val.nll, 0] : [0, 0, 0, nonFinite]);
  if (bad > 0) throw divergedValidation(bad, run.valIndices.length * k, epoch);
  return { val, scores: { accuracy, macro_f1: macroF1, nll } };
}

/**
 * Data-parallel steps keep only the parameters equal across ranks. State updated from each rank's own batch (a
 * BatchNorm's running statistics) would drift apart; hemato's models use LayerNorm and keep none.
 */
function refuseBatchStatistics(model: ImageClassifier): void {
  const parameters = new Set(model.namedParameters().map(([key]) => key));
  const state = [...model.stateDict().keys()].filter((key) => !parameters.has(key));
  if (state.length > 0)
    throw new Error(
      `data-parallel training cannot keep this model's non-parameter state equal across processes (${state.slice(0, 3).join(', ')}${state.length > 3 ? ', …' : ''}); train it in one process`,
    );
}
