// Shared test helpers: approximate comparison and the repository-relative path of ../shared.
import assert from 'node:assert/strict';
import path from 'node:path';

export const SHARED = path.resolve('../shared');

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
