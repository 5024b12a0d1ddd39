// One optimisation step, and the losses of many steps read back together: reading a tensor's value waits for the
// device to finish all queued work, so a read every step would stall a GPU's pipeline once per step.
import * as E from '../engine/index.js';
import type { ImageClassifier } from '../models/classifier.js';
import { distillationLoss } from './distill.js';
import type { Mix } from './mix.js';

/**
 * Steps whose losses are read from the device in one copy. A loss that turned NaN or infinite is therefore caught
 * within this many steps; the trainer also reads before every checkpoint, validation and model file, so none of
 * them is written after such a loss.
 */
export const LOSS_READ_INTERVAL = 20;

// Resuming would repeat the same steps exactly, so the way out of a divergence is a new start with other settings.
export const RESTART_ADVICE =
  'Start again with a lower learning rate (--lr), gradient clipping on, or --precision fp32 ' +
  '(in another --out, or with --overwrite); the last checkpoint and the best model so far are intact.';

export class NonFiniteLossError extends Error {
  constructor(epoch: number, batch: number, loss: number) {
    super(`training diverged: the loss became ${loss} at epoch ${epoch + 1}, batch ${batch + 1}. ${RESTART_ADVICE}`);
  }
}

export interface StepSettings {
  precision: E.Precision;
  device: E.Device;
  labelSmoothing: number;
  /** Maximum global gradient norm, or null for no clipping. */
  clipGrad: number | null;
}

/** A batch of images and labels; a mixed batch also names the labels blended in (see mix.ts). */
export type TrainingBatch = { x: E.Tensor; y: E.Tensor; mixedWith?: Mix['mixedWith']; soft?: SoftLabels };

/** Teachers' labels for a batch [n × classes], their share of the loss and the temperature (see distill.ts). */
export interface SoftLabels {
  targets: E.Tensor;
  weight: number;
  temperature: number;
}

/**
 * Forward (at the run's precision), cross-entropy in fp32 (of both labels for a mixed batch), backward, gradient clipping and the optimiser's update.
 * Returns the loss as a scalar on the device, which the caller owns; nothing is read to the host here. The labels y
 * must have been checked on the host, as makeBatch does: the loss does not read them back to check them.
 */
export function trainingStep(model: ImageClassifier, optimizer: E.AdamW, batch: TrainingBatch, settings: StepSettings): E.Tensor {
  let loss: E.Tensor | undefined;
  try {
    loss = forwardBackward(model, batch, settings);
    applyGradients(model, optimizer, settings);
    return loss;
  } catch (error) {
    loss?.dispose();
    optimizer.zeroGrad();
    throw error;
  }
}

/**
 * The first half of a step: forward, loss and backward, leaving the gradients in the parameters (a data-parallel
 * step averages them across processes before applyGradients). Returns the loss, which the caller owns.
 */
export function forwardBackward(model: ImageClassifier, batch: TrainingBatch, settings: StepSettings): E.Tensor {
  return E.tidy(() => {
    const logits = E.withPrecision(settings.precision, settings.device, () => model.forward(batch.x)).float();
    const options = { labelSmoothing: settings.labelSmoothing, checkTargets: false };
    let value = E.F.crossEntropy(logits, batch.y, options);
    // A mixed batch: each image's loss weighs the two labels it was blended from.
    const mixed = batch.mixedWith;
    if (mixed) value = value.mul(1 - mixed.weight).add(E.F.crossEntropy(logits, mixed.y, options).mul(mixed.weight));
    const soft = batch.soft;
    if (soft) value = value.mul(1 - soft.weight).add(distillationLoss(logits, soft.targets, soft.temperature).mul(soft.weight));
    value.backward();
    return E.keep(value.detach());
  });
}

/** The second half of a step: gradient clipping and the optimiser's update; the gradients are zeroed after. */
export function applyGradients(model: ImageClassifier, optimizer: E.AdamW, settings: StepSettings): void {
  try {
    if (settings.clipGrad !== null) E.clipGradNorm(model.parameters(), settings.clipGrad).dispose();
    optimizer.step();
  } finally {
    optimizer.zeroGrad();
  }
}

/** Losses of steps not read yet, kept on the device with the step each came from. */
export class LossWindow {
  #pending: { loss: E.Tensor; epoch: number; batch: number }[] = [];

  constructor(readonly interval = LOSS_READ_INTERVAL) {
    if (!(Number.isInteger(interval) && interval >= 1)) throw new RangeError(`the loss read interval must be a positive integer, got ${interval}`);
  }

  get size(): number {
    return this.#pending.length;
  }

  /** Takes ownership of a step's loss; true when the window is full and due to be read. */
  add(loss: E.Tensor, epoch: number, batch: number): boolean {
    this.#pending.push({ loss, epoch, batch });
    return this.#pending.length >= this.interval;
  }

  /**
   * The pending losses, in one device-to-host copy, and an empty window. The first that is NaN or infinite throws a
   * NonFiniteLossError naming its step.
   */
  read(): number[] {
    const pending = this.#pending;
    if (pending.length === 0) return [];
    this.#pending = [];
    let values: Float32Array;
    try {
      values = E.tidy(() => E.stack(pending.map((p) => p.loss)).data() as Float32Array);
    } finally {
      E.dispose(pending.map((p) => p.loss));
    }
    const bad = values.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new NonFiniteLossError(pending[bad].epoch, pending[bad].batch, values[bad]);
    return Array.from(values);
  }

  dispose(): void {
    E.dispose(this.#pending.map((p) => p.loss));
    this.#pending = [];
  }
}
