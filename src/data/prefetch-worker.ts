// A batch worker: one libtorch thread that turns sample indices into normalised, augmented float32 batches.
import { parentPort, workerData } from 'node:worker_threads';
import * as E from '../engine/index.js';
import { makeBatch } from './batches.js';

E.setNumThreads(1);
const { images, size, labels, classes, recipe } = workerData;
const set = { images: new Uint8Array(images as SharedArrayBuffer), size, labels, classes };

parentPort!.on('message', ({ id, indices, seed }: { id: number; indices: Int32Array; seed: number }) => {
  try {
    const { x, y, shape } = E.tidy(() => {
      const batch = makeBatch(set, indices, { ...recipe, seed });
      return { x: (batch.x.data() as Float32Array).buffer, y: (batch.y.data() as BigInt64Array).buffer, shape: batch.x.shape };
    });
    parentPort!.postMessage({ id, x, y, shape }, [x as ArrayBuffer, y as ArrayBuffer]);
  } catch (error) {
    parentPort!.postMessage({ id, error: (error as Error).message });
  }
});
