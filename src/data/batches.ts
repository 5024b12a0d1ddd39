// Turning decoded images (N × S × S × 3 uint8, HWC) into normalised NCHW batches, with a seeded epoch order.
import * as E from '../engine/index.js';
import type { Normalization } from '../models/io.js';
import { type AugmentConfig, augmentBatch, seededRandom } from './augment.js';

export type { Normalization };

/** Images already decoded, cropped and resized to one square size, with their labels. */
export interface ImageSet {
  images: Uint8Array;
  size: number;
  labels: Int32Array;
  classes: string[];
}

/** ImageNet statistics, as timm's ConvNeXt and Swin use; recorded in every model's metadata. */
export const IMAGENET_NORMALIZATION: Normalization = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

export interface BatchOptions {
  normalization: Normalization;
  augment?: AugmentConfig;
  /**
   * The seed of the augmentation draws. Each image draws from its own generator, seeded by this seed and the image's
   * index in the set, so its draws do not depend on the other images in its batch (nor on how a batch is split).
   */
  seed?: number;
  device?: E.Device;
}

/**
 * Normalised float32 [N, 3, S, S] images and int64 labels for the given sample indices. Every label is checked here,
 * on the host, to be one of the set's classes, so the loss need not read the labels back from the device.
 */
export function makeBatch(set: ImageSet, indices: ArrayLike<number>, options: BatchOptions): { x: E.Tensor; y: E.Tensor } {
  const pixels = set.size * set.size * 3;
  const bytes = new Uint8Array(indices.length * pixels);
  const labels = new BigInt64Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const index = indices[i];
    const label = set.labels[index];
    if (!(label >= 0 && label < set.classes.length)) throw new RangeError(`sample ${index} has label ${label}, not one of the ${set.classes.length} classes`);
    bytes.set(set.images.subarray(index * pixels, (index + 1) * pixels), i * pixels);
    labels[i] = BigInt(label);
  }
  // The uint8 bytes go to the device first: a quarter of the float32 traffic, and augmentation runs there too.
  const device = options.device ?? 'cpu';
  return E.tidy(() => {
    let x = E.tensor(bytes, [indices.length, set.size, set.size, 3], { device }).permute([0, 3, 1, 2]).float().div(255);
    if (options.augment) {
      const seed = options.seed ?? 0;
      x = augmentBatch(
        x,
        options.augment,
        Array.from(indices, (index) => seededRandom(sampleSeed(seed, index))),
      );
    }
    const { mean, std } = options.normalization;
    x = x
      .sub(E.tensor(mean, [1, 3, 1, 1], { device }))
      .div(E.tensor(std, [1, 3, 1, 1], { device }))
      .contiguous();
    return { x, y: E.tensor(labels, [indices.length], { device }) };
  });
}

/** The seed of one image's draws: the batch's seed mixed with the image's index in the set. */
export function sampleSeed(seed: number, index: number): number {
  return (Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0;
}

/** A seeded shuffle (Fisher–Yates) of the indices: the same seed gives the same epoch order. */
export function shuffled(indices: ArrayLike<number>, seed: number): Int32Array {
  const out = Int32Array.from(indices);
  const random = seededRandom(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** The dihedral group of the square on NCHW batches: 4 rotations, each with and without a mirror. */
export const DIHEDRAL: ((x: E.Tensor) => E.Tensor)[] = [0, 1, 2, 3].flatMap((turns) =>
  [false, true].map((mirror) => (x: E.Tensor) => {
    let out = mirror ? x.flip([3]) : x;
    for (let k = 0; k < turns; k++) out = out.transpose(2, 3).flip([3]);
    return out;
  }),
);

/**
 * The [start, end) of block `index` (from 0) when a list of `length` items is cut into `count` contiguous blocks in
 * order, the first (length mod count) of them one item longer.
 */
export function blockRange(length: number, index: number, count: number): [number, number] {
  const base = Math.floor(length / count);
  const extra = length % count;
  const start = index * base + Math.min(index, extra);
  return [start, start + base + (index < extra ? 1 : 0)];
}

/** Splits an epoch's order into batches; the last, short batch is dropped when dropLast is set. */
export function batchIndices(order: Int32Array, batchSize: number, dropLast: boolean): Int32Array[] {
  const batches: Int32Array[] = [];
  for (let start = 0; start < order.length; start += batchSize) {
    const batch = order.subarray(start, Math.min(order.length, start + batchSize));
    if (batch.length < batchSize && dropLast && batches.length > 0) break;
    batches.push(batch);
  }
  return batches;
}
