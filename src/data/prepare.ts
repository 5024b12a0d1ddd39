// One image from file to model input (decode → centred field → resize → optional MPM → optional encode), and a
// pool of worker threads that does it in parallel: MPM is JavaScript, so more cores need more threads.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import sharp from 'sharp';
import { type MpmConfig, Mpm } from '../preprocess/mpm.js';
import { DecodeError, type DecodeErrorCode } from './errors.js';
import { type GeometryConfig, toModelGeometry } from './geometry.js';
import { type RgbImage, readImageFile } from './image.js';

/** How a pack stores each image: lossless (webp-lossless, png) or lossy at a quality (webp, jpeg). */
export type BlobCodec = 'webp-lossless' | 'webp' | 'jpeg' | 'png';
export const BLOB_CODECS: readonly BlobCodec[] = ['webp-lossless', 'webp', 'jpeg', 'png'];
export const isLossy = (codec: BlobCodec): boolean => codec === 'webp' || codec === 'jpeg';

export interface PrepareRecipe {
  geometry: GeometryConfig;
  mpm: MpmConfig | null;
  maxPixels?: number;
  /** Encode the result (for packs); without it the raw HWC pixels come back. */
  encode?: { codec: BlobCodec; quality: number };
}

export type PrepareResult = { ok: true; data: Uint8Array } | { ok: false; code: DecodeErrorCode; message: string };

/** Prepares images on the calling thread; `mpm` must have been created from recipe.mpm. */
export async function prepareFile(path: string, recipe: PrepareRecipe, mpm: Mpm | null): Promise<PrepareResult> {
  try {
    let image: RgbImage = await toModelGeometry(await readImageFile(path, { maxPixels: recipe.maxPixels }), recipe.geometry);
    if (mpm) image = mpm.apply(image);
    return { ok: true, data: recipe.encode ? await encodeRgb(image, recipe.encode.codec, recipe.encode.quality) : image.data };
  } catch (error) {
    if (error instanceof DecodeError) return { ok: false, code: error.code, message: error.message };
    throw error;
  }
}

export async function encodeRgb(image: RgbImage, codec: BlobCodec, quality: number): Promise<Uint8Array> {
  const input = sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } });
  const encoded =
    codec === 'webp-lossless' ? input.webp({ lossless: true })
      : codec === 'webp' ? input.webp({ quality })
        : codec === 'jpeg' ? input.jpeg({ quality, mozjpeg: true }) : input.png({ compressionLevel: 9 });
  const buffer = await encoded.toBuffer();
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length);
}

/** Worker threads, each preparing one image at a time; results come back in input order. */
export class PreparePool {
  private constructor(private readonly workers: Worker[]) {}

  static async start(recipe: PrepareRecipe, threads = availableParallelism()): Promise<PreparePool> {
    const workers = Array.from({ length: Math.max(1, threads) }, () => new Worker(new URL('./prepare-worker.js', import.meta.url), { workerData: recipe }));
    await Promise.all(workers.map((w) => new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve());
      w.once('error', reject);
    })));
    return new PreparePool(workers);
  }

  async map(paths: readonly string[], onResult?: (done: number) => void): Promise<PrepareResult[]> {
    const results = new Array<PrepareResult>(paths.length);
    let next = 0;
    let done = 0;
    const drain = (worker: Worker) => new Promise<void>((resolve, reject) => {
      const feed = () => {
        if (next >= paths.length) {
          worker.off('error', reject);
          resolve();
          return;
        }
        const index = next++;
        worker.once('message', (result: PrepareResult) => {
          results[index] = result;
          onResult?.(++done);
          feed();
        });
        worker.postMessage(paths[index]);
      };
      worker.on('error', reject);
      feed();
    });
    await Promise.all(this.workers.map(drain));
    return results;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
