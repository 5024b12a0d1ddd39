// Batches prepared in worker threads equal those prepared inline, and nothing leaks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { DEFAULT_AUGMENT } from '../src/data/augment.js';
import { IMAGENET_NORMALIZATION, type ImageSet } from '../src/data/batches.js';
import { inlineBatches, workerBatches } from '../src/data/prefetch.js';
import { maxAbsDiff } from './helpers.js';

test('worker-prepared batches match inline ones', async () => {
  const n = 10;
  const size = 16;
  const images = Uint8Array.from({ length: n * size * size * 3 }, (_, i) => (i * 37) % 256);
  const set: ImageSet = { images, size, labels: Int32Array.from({ length: n }, (_, i) => i % 3), classes: ['a', 'b', 'c'] };
  const recipe = {
    normalization: IMAGENET_NORMALIZATION,
    augment: { ...DEFAULT_AUGMENT, crop: { scale: [0.5, 1] as [number, number], ratio: [0.8, 1.25] as [number, number] } },
  };
  const before = E.liveTensors();
  const inline = inlineBatches(set, recipe);
  const workers = workerBatches(set, recipe, { workers: 2 });
  try {
    for (const seed of [1, 2, 3]) {
      const indices = Int32Array.from([seed, 9 - seed, 4]);
      const [a, b] = await Promise.all([inline.request(indices, seed), workers.request(indices, seed)]);
      assert.deepEqual(b.x.shape, [3, 3, size, size]);
      assert.ok(maxAbsDiff(a.x.toArray(), b.x.toArray()) < 1e-5, `seed ${seed}: worker batch differs`);
      assert.deepEqual(a.y.toArray(), b.y.toArray());
      E.dispose([a, b]);
    }
  } finally {
    await workers.close();
    await inline.close();
  }
  assert.equal(E.liveTensors(), before);
});
