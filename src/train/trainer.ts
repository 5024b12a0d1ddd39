// The training loop: AdamW with a warm-up + cosine schedule, label smoothing, optional EMA and autocast,
// gradient clipping, early stopping on validation macro-F1, and exact resumption from checkpoints.
import { appendFile, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import * as E from '../engine/index.js';
import { weightDecayGroups } from '../nn/index.js';
import type { ImageClassifier } from '../models/classifier.js';
import { type AugmentConfig } from '../data/augment.js';
import { type ImageSet, type Normalization, batchIndices, makeBatch, shuffled } from '../data/batches.js';
import { type BatchSource, inlineBatches, workerBatches } from '../data/prefetch.js';
import { cosineLr } from './schedule.js';
import { computeMetrics, type Metrics } from '../eval/metrics.js';
import { softmaxRows } from '../eval/calibration.js';
import { type LoopState, loadCheckpoint, saveCheckpoint } from './checkpoint.js';
import { NonFiniteModelError, assertFiniteWeights, countNonFinite } from '../eval/finite.js';

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
  | { type: 'start'; epochs: number; stepsPerEpoch: number; resumedAt?: { epoch: number; batch: number } }
  | { type: 'step'; epoch: number; batch: number; batches: number; loss: number; lr: number; imagesPerSecond: number }
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
}

/** How many batches are prepared ahead of the one being trained on. */
const PREFETCH_DEPTH = 2;

// Resuming would repeat the same steps exactly, so the way out of a divergence is a new start with other settings.
const RESTART_ADVICE =
  'Start again with a lower learning rate (--lr), gradient clipping on, or --precision fp32 ' +
  '(in another --out, or with --overwrite); the last checkpoint and the best model so far are intact.';

export class NonFiniteLossError extends Error {
  constructor(epoch: number, batch: number, loss: number) {
    super(`training diverged: the loss became ${loss} at epoch ${epoch + 1}, batch ${batch + 1}. ${RESTART_ADVICE}`);
  }
}

export const CHECKPOINT_FILE = 'checkpoint.safetensors';
export const LOG_FILE = 'log.jsonl';

/** A new run must not overwrite a checkpoint, and a resumed one needs one; the errors say what to do. */
export function checkRunDir(runDir: string, resume: boolean): void {
  const checkpointFile = path.join(runDir, CHECKPOINT_FILE);
  if (resume && !existsSync(checkpointFile)) throw new Error(`--resume: no checkpoint at ${checkpointFile}; start without --resume`);
  if (!resume && existsSync(checkpointFile)) throw new Error(`${runDir} already holds a training run; continue it with --resume, or choose another --out`);
}

/** Seeds derived from (run seed, epoch, batch): every step's randomness is fixed, which is what makes resuming exact. */
function stepSeed(seed: number, epoch: number, batch: number): number {
  return (Math.imul(seed + 1, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca6b) ^ Math.imul(batch + 1, 0xc2b2ae35)) >>> 0;
}

/** Logits [n × classes] of the model (in eval mode) over the given samples, as float32 on the host. */
export function predictLogits(
  model: ImageClassifier,
  data: ImageSet,
  indices: Int32Array,
  options: { batchSize: number; normalization: Normalization; precision: E.Precision; device: E.Device },
): Float32Array {
  const k = model.numClasses;
  const out = new Float32Array(indices.length * k);
  const wasTraining = model.training;
  model.eval();
  try {
    for (let start = 0; start < indices.length; start += options.batchSize) {
      const batch = indices.subarray(start, Math.min(indices.length, start + options.batchSize));
      E.tidy(() =>
        E.noGrad(() => {
          const { x } = makeBatch(data, batch, { normalization: options.normalization, device: options.device });
          const logits = E.withPrecision(options.precision, options.device, () => model.forward(x));
          out.set(logits.float().data() as Float32Array, start * k);
        }),
      );
    }
  } finally {
    model.train(wasTraining);
  }
  return out;
}

export async function train(run: TrainRun): Promise<{ loop: LoopState; stoppedEarly: boolean; interrupted: boolean }> {
  const { model, data, config, runDir, device } = run;
  const emit = run.onEvent ?? (() => {});
  await mkdir(runDir, { recursive: true });
  const checkpointFile = path.join(runDir, CHECKPOINT_FILE);
  const groups = weightDecayGroups(model, config.weightDecay);
  const optimizer = new E.AdamW([groups.decay, groups.noDecay], { lr: config.lr });
  const ema = config.emaDecay === null ? undefined : new Map(model.namedParameters().map(([k, p]) => [k, E.keep(E.noGrad(() => p.detach().clone()))]));
  const stepsPerEpoch = batchIndices(run.trainIndices, config.batchSize, true).length;
  const schedule = {
    peakLr: config.lr,
    minLr: config.minLr,
    totalSteps: config.epochs * stepsPerEpoch,
    warmupSteps: Math.round(config.warmupFraction * config.epochs * stepsPerEpoch),
  };

  let loop: LoopState = { epoch: 0, batch: 0, globalStep: 0, bestScore: -1, bestEpoch: -1, history: [] };
  checkRunDir(runDir, run.resume);
  if (run.resume) loop = (await loadCheckpoint(checkpointFile, { model, optimizer, ema })).loop;
  emit({ type: 'start', epochs: config.epochs, stepsPerEpoch, resumedAt: run.resume ? { epoch: loop.epoch, batch: loop.batch } : undefined });

  const save = async () => {
    await saveCheckpoint(checkpointFile, { model, optimizer, ema }, loop, config);
    emit({ type: 'checkpoint', file: checkpointFile });
  };
  let lastSave = Date.now();
  let stoppedEarly = false;
  let interrupted = false;
  const recipe = { normalization: config.normalization, augment: config.augment };
  const source: BatchSource = run.workers && device === 'cpu' ? workerBatches(data, recipe, { workers: run.workers }) : inlineBatches(data, recipe, device);
  const inflight = new Map<number, Promise<{ x: E.Tensor; y: E.Tensor }>>();
  model.train();
  try {
    while (loop.epoch < config.epochs && !stoppedEarly) {
      const epochStart = Date.now();
      const batches = batchIndices(shuffled(run.trainIndices, stepSeed(config.seed, loop.epoch, -1)), config.batchSize, true);
      let lossSum = 0;
      let lossCount = 0;
      for (; loop.batch < batches.length; loop.batch++) {
        const started = performance.now();
        for (let ahead = 0; ahead <= PREFETCH_DEPTH; ahead++) {
          const b = loop.batch + ahead;
          if (b < batches.length && !inflight.has(b)) inflight.set(b, source.request(batches[b], stepSeed(config.seed, loop.epoch, b)));
        }
        const { x, y } = await inflight.get(loop.batch)!;
        inflight.delete(loop.batch);
        E.manualSeed(stepSeed(config.seed, loop.epoch, loop.batch)); // dropout and drop path draw from libtorch's generator
        const lr = cosineLr(loop.globalStep, schedule);
        optimizer.setLr(lr);
        const loss = E.tidy(() => {
          const logits = E.withPrecision(config.precision, device, () => model.forward(x));
          const value = E.F.crossEntropy(logits.float(), y, { labelSmoothing: config.labelSmoothing });
          value.backward();
          return value.item();
        });
        E.dispose([x, y]);
        if (!Number.isFinite(loss)) throw new NonFiniteLossError(loop.epoch, loop.batch, loss);
        if (config.clipGrad !== null) E.clipGradNorm(model.parameters(), config.clipGrad).dispose();
        optimizer.step();
        optimizer.zeroGrad();
        if (ema) updateEma(ema, model, config.emaDecay!);
        loop.globalStep++;
        lossSum += loss;
        lossCount++;
        emit({
          type: 'step',
          epoch: loop.epoch,
          batch: loop.batch,
          batches: batches.length,
          loss,
          lr,
          imagesPerSecond: batches[loop.batch].length / ((performance.now() - started) / 1000),
        });
        if (run.shouldStop?.()) {
          loop.batch++;
          interrupted = true;
          await save();
          return { loop, stoppedEarly, interrupted };
        }
        if (Date.now() - lastSave > config.checkpointMinutes * 60_000 && loop.batch + 1 < batches.length) {
          loop.batch++;
          await save();
          loop.batch--;
          lastSave = Date.now();
        }
      }
      const logits = evaluateWith(ema, model, () =>
        predictLogits(model, data, run.valIndices, {
          batchSize: config.evalBatchSize,
          normalization: config.normalization,
          precision: config.precision,
          device,
        }),
      );
      // Scores of NaN outputs look like a real macro-F1 (argmax picks some class), so they must never be compared.
      const nonFinite = countNonFinite(logits);
      if (nonFinite > 0)
        throw new NonFiniteModelError(
          `training diverged: ${nonFinite} of ${logits.length} validation outputs after epoch ${loop.epoch + 1} are NaN or infinite; that model is neither kept as the best nor checkpointed. ${RESTART_ADVICE}`,
        );
      const val = computeMetrics(
        softmaxRows(logits, run.valIndices.length, model.numClasses),
        Array.from(run.valIndices, (i) => data.labels[i]),
        data.classes,
      );
      const best = val.macro_f1 > loop.bestScore;
      if (best) {
        loop.bestScore = val.macro_f1;
        loop.bestEpoch = loop.epoch;
        if (run.onBest) {
          await evaluateWith(ema, model, () => {
            assertFiniteWeights(model, `the best model (epoch ${loop.epoch + 1})`);
            return run.onBest!(model, loop.epoch, val);
          });
        }
      }
      const entry = {
        epoch: loop.epoch + 1,
        train_loss: lossSum / Math.max(1, lossCount),
        lr: cosineLr(loop.globalStep - 1, schedule),
        seconds: (Date.now() - epochStart) / 1000,
        val_accuracy: val.accuracy,
        val_macro_f1: val.macro_f1,
        val_nll: val.nll,
        best,
      };
      loop.history.push(entry);
      await appendFile(path.join(runDir, LOG_FILE), `${JSON.stringify({ time: new Date().toISOString(), ...entry })}\n`);
      emit({ type: 'epoch', epoch: loop.epoch, trainLoss: entry.train_loss, lr: entry.lr, seconds: entry.seconds, val, best });
      loop.epoch++;
      loop.batch = 0;
      if (config.patience !== null && loop.epoch - 1 - loop.bestEpoch >= config.patience) {
        stoppedEarly = true;
        emit({ type: 'stop', reason: `no better validation macro-F1 for ${config.patience} epochs` });
      }
      await save();
      lastSave = Date.now();
    }
    return { loop, stoppedEarly, interrupted };
  } finally {
    for (const batch of inflight.values()) E.dispose(await batch.catch(() => undefined));
    await source.close();
    optimizer.dispose();
    if (ema) E.dispose([...ema.values()]);
  }
}

function updateEma(ema: Map<string, E.Tensor>, model: ImageClassifier, decay: number): void {
  E.noGrad(() => {
    for (const [key, p] of model.namedParameters()) ema.get(key)!.lerp_(p, 1 - decay);
  });
}

/** Runs fn with the EMA weights swapped into the model, then swaps the live weights back. */
function evaluateWith<T>(ema: Map<string, E.Tensor> | undefined, model: ImageClassifier, fn: () => T): T {
  if (!ema) return fn();
  const swap = () =>
    E.noGrad(() =>
      E.tidy(() => {
        for (const [key, p] of model.namedParameters()) {
          const shadow = ema.get(key)!;
          const live = p.clone();
          p.copy_(shadow);
          shadow.copy_(live);
        }
      }),
    );
  swap();
  try {
    const result = fn();
    if (result instanceof Promise) return result.finally(swap) as T;
    swap();
    return result;
  } catch (error) {
    swap();
    throw error;
  }
}
