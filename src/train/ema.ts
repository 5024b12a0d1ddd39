// An exponential moving average of the weights: validated and saved in place of the live weights when a run keeps one.
import * as E from '../engine/index.js';
import type { Module } from '../nn/index.js';

export class WeightAverage {
  /** The averaged parameters by name, on the model's device; checkpoints save and restore them. */
  readonly shadows: Map<string, E.Tensor>;

  constructor(
    model: Module,
    readonly decay: number,
  ) {
    // In a scope, so that the detached view is freed now rather than left to the garbage collector.
    this.shadows = new Map(model.namedParameters().map(([key, p]) => [key, E.keep(E.tidy(() => E.noGrad(() => p.detach().clone())))]));
  }

  /** Moves the average towards the model's current weights: shadow += (1 − decay) · (weight − shadow). */
  update(model: Module): void {
    E.noGrad(() => {
      for (const [key, p] of model.namedParameters()) this.shadows.get(key)!.lerp_(p, 1 - this.decay);
    });
  }

  /** Runs fn (sync or async) with the averaged weights in the model, then puts the live weights back, also on an error. */
  applied<T>(model: Module, fn: () => T): T {
    const swap = () =>
      E.noGrad(() =>
        E.tidy(() => {
          for (const [key, p] of model.namedParameters()) {
            const shadow = this.shadows.get(key)!;
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

  dispose(): void {
    E.dispose([...this.shadows.values()]);
  }
}
