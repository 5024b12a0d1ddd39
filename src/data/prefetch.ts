// Batch prefetching in worker threads: workers decode nothing (the images are already in memory), but they
// gather, augment and normalise the next batches on their own libtorch thread while the main thread trains.
// Tensors never cross isolates: a batch crosses as a transferred ArrayBuffer and becomes a tensor here.
import { Worker } from 'node:worker_threads';
import * as E from '../engine/index.js';
import type { AugmentConfig } from './augment.js';
import { type ImageSet, makeBatch, type Normalization } from './batches.js';

export interface BatchRecipe {
  normalization: Normalization;
  augment?: AugmentConfig;
}

export interface BatchSource {
  /** Starts preparing a batch; the returned promise resolves to tensors owned by the caller. */
  request(indices: Int32Array, seed: number): Promise<{ x: E.Tensor; y: E.Tensor }>;
  close(): Promise<void>;
}

/** Prepares batches synchronously on the calling thread. */
export function inlineBatches(set: ImageSet, recipe: BatchRecipe, device: E.Device = 'cpu'): BatchSource {
  return {
    request: async (indices, seed) => makeBatch(set, indices, { ...recipe, seed, device }),
    close: async () => {},
  };
}

interface Reply {
  id: number;
  x?: ArrayBuffer;
  y?: ArrayBuffer;
  shape?: number[];
  error?: string;
}

/** Prepares CPU batches in `workers` worker threads. The images are shared with them, not copied. */
export function workerBatches(set: ImageSet, recipe: BatchRecipe, options: { workers?: number } = {}): BatchSource {
  const shared = new SharedArrayBuffer(set.images.byteLength);
  new Uint8Array(shared).set(set.images);
  const workerUrl = new URL('./prefetch-worker.js', import.meta.url);
  const pool = Array.from(
    { length: options.workers ?? 1 },
    () =>
      new Worker(workerUrl, {
        workerData: { images: shared, size: set.size, labels: set.labels, classes: set.classes, recipe },
      }),
  );
  const pending = new Map<number, { resolve: (batch: { x: E.Tensor; y: E.Tensor }) => void; reject: (error: Error) => void }>();
  let nextId = 0;
  for (const worker of pool) {
    worker.on('message', (reply: Reply) => {
      const waiter = pending.get(reply.id);
      if (!waiter) return;
      pending.delete(reply.id);
      if (reply.error) return waiter.reject(new Error(`batch worker: ${reply.error}`));
      waiter.resolve({ x: E.tensor(new Float32Array(reply.x!), reply.shape!), y: E.tensor(new BigInt64Array(reply.y!), [reply.shape![0]]) });
    });
    worker.on('error', (error) => {
      for (const waiter of pending.values()) waiter.reject(error);
      pending.clear();
    });
  }
  return {
    request(indices, seed) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        pool[id % pool.length].postMessage({ id, indices, seed });
      });
    },
    async close() {
      await Promise.all(pool.map((w) => w.terminate()));
    },
  };
}
