// Shared test helpers: approximate comparison, the repository-relative path of ../shared, and a small untrained
// model file for tests that need one to classify with.
import assert from 'node:assert/strict';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import * as E from '../src/engine/index.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { saveModel } from '../src/models/io.js';
import { createModel } from '../src/models/index.js';

export const SHARED = path.resolve('../shared');

// The flag can be set at run time for a new context.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/**
 * Collects garbage until the live-tensor count stops falling, and returns it: tensors that JS dropped without
 * dispose() are freed by the engine in a task after the collection, not during it.
 */
export async function collectDroppedTensors(): Promise<number> {
  // Tensors made in the current task reach the collector when the task ends.
  await new Promise((resolve) => setTimeout(resolve, 0));
  let count = E.liveTensors();
  for (let i = 0; i < 20; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
    if (E.liveTensors() === count) return count;
    count = E.liveTensors();
  }
  return count;
}

export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tolerance = 1e-6, what = 'values'): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} ≠ ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    const diff = Math.abs(actual[i] - expected[i]);
    const scale = Math.max(1, Math.abs(expected[i]));
    if (!(diff <= tolerance * scale) && !(Number.isNaN(actual[i]) && Number.isNaN(expected[i]))) {
      assert.fail(`${what}[${i}]: ${actual[i]} differs from ${expected[i]} by ${diff} (tolerance ${tolerance})`);
    }
  }
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

/** Saves a seeded, untrained convnext-only model for the 8 PBC classes at 64 px, float16, calibrated as given. */
export async function saveUntrainedModel(file: string): Promise<void> {
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  await saveModel(
    file,
    model,
    {
      classes: [...PBC_CLASSES],
      normalization: IMAGENET_NORMALIZATION,
      temperature: 1,
      uncertaintyThreshold: 0.5,
      preprocessing: { geometry: { field: null, size: 64 }, mpm: null },
    },
    { dtype: 'float16' },
  );
  model.dispose();
}
