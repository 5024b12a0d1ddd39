// Guards against keeping a diverged model: NaN or infinite weights or outputs stop a save with a clear error.
import * as E from '../engine/index.js';
import type { Module } from '../nn/index.js';
import { listFirst } from '../data/files.js';

export class NonFiniteModelError extends Error {
  override name = 'NonFiniteModelError';
}

export function countNonFinite(values: ArrayLike<number>): number {
  let count = 0;
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) count++;
  return count;
}

/** The keys of the weights and buffers that hold NaN or ±Inf. */
export function nonFiniteWeights(model: Module): string[] {
  return [...model.stateDict()].filter(([, t]) => E.tidy(() => t.isfinite().logicalNot().sum().item()) > 0).map(([key]) => key);
}

export function assertFiniteWeights(model: Module, what: string): void {
  const bad = nonFiniteWeights(model);
  if (bad.length === 0) return;
  throw new NonFiniteModelError(`${what} has NaN or infinite weights (${listFirst(bad)}); it is not saved`);
}

export function assertFiniteOutputs(outputs: ArrayLike<number>, what: string): void {
  const bad = countNonFinite(outputs);
  if (bad > 0) throw new NonFiniteModelError(`${bad} of ${outputs.length} ${what} are NaN or infinite; the model is not saved`);
}
