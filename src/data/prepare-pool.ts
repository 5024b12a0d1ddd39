// Worker threads that decode and prepare images in parallel: the cell measurements, the stain and MPM are
// JavaScript, so more cores need more threads. Packs and training send file paths under one recipe; a classifier
// sends each image with its recipe and the looks to take at it.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { type DecodeErrorCode } from './errors.js';
import type { DecodedImage } from './image.js';
import type { InputRecipe, PreparedImage, PrepareOptions, PrepareRecipe, PrepareResult } from './prepare.js';

/** One image (a path, a file's bytes or decoded pixels) decoded once, then prepared once per look. */
export interface LooksJob {
  input: string | Uint8Array | DecodedImage;
  recipe: InputRecipe;
  maxPixels?: number;
  looks: Omit<PrepareOptions, 'mpm'>[];
}

/** A failure, as it crosses the thread boundary: the DecodeError code where there is one, and the message. */
export interface PrepareFailure {
  code?: DecodeErrorCode;
  message: string;
}

/** The decoded image's warnings and each look's result, or why the image could not be decoded. */
export type LooksResult = { ok: true; warnings: string[]; looks: (PreparedImage | PrepareFailure)[] } | ({ ok: false } & PrepareFailure);

/** What a worker is asked: a file under the pool's recipe, or a classifier's looks. */
export type PoolTask = { kind: 'file'; path: string } | ({ kind: 'looks' } & LooksJob);

export class PreparePool {
  private nextId = 0;
  private readonly pending = new Map<number, { worker: Worker; resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  private readonly busy = new Map<Worker, number>();
  private readonly stopped = new Set<Worker>();

  private constructor(private readonly workers: Worker[]) {
    for (const worker of workers) {
      this.busy.set(worker, 0);
      worker.on('message', ({ id, result }: { id: number; result: unknown }) => this.settle(id, (p) => p.resolve(result)));
      // A thread that dies takes its requests with it: they fail rather than wait forever.
      worker.on('error', (error) => this.stop(worker, error));
      worker.on('exit', (code) => this.stop(worker, new Error(`a preparing thread stopped (exit code ${code})`)));
      worker.unref();
    }
  }

  /**
   * Starts the threads. `recipe` is the one file tasks are prepared with (packs, training); a classifier's pool has
   * none, since each of its jobs carries its own. Idle threads do not keep the process alive.
   */
  static async start(recipe: PrepareRecipe | null, threads = availableParallelism()): Promise<PreparePool> {
    const workers = Array.from({ length: Math.max(1, threads) }, () => new Worker(new URL('./prepare-worker.js', import.meta.url), { workerData: recipe }));
    const ready = (w: Worker) =>
      new Promise<void>((resolve, reject) => {
        w.once('message', () => resolve());
        w.once('error', reject);
      });
    try {
      await Promise.all(workers.map(ready));
    } catch (error) {
      // The threads that did start would otherwise keep the process alive.
      await Promise.all(workers.map((w) => w.terminate()));
      throw error;
    }
    return new PreparePool(workers);
  }

  get threads(): number {
    return this.workers.length;
  }

  /** Prepares files under the pool's recipe, one per thread at a time; results come back in input order. */
  async map(paths: readonly string[], onResult?: (done: number) => void): Promise<PrepareResult[]> {
    const results = new Array<PrepareResult>(paths.length);
    let next = 0;
    let done = 0;
    const drain = async () => {
      while (next < paths.length) {
        const index = next++;
        results[index] = await this.request<PrepareResult>({ kind: 'file', path: paths[index] });
        onResult?.(++done);
      }
    };
    await Promise.all(this.workers.map(drain));
    return results;
  }

  /** Decodes one image on the least busy thread and prepares it for each look. */
  looks(job: LooksJob): Promise<LooksResult> {
    return this.request<LooksResult>({ kind: 'looks', ...job });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private request<T>(task: PoolTask): Promise<T> {
    const running = this.workers.filter((w) => !this.stopped.has(w));
    if (running.length === 0) return Promise.reject(new Error('the preparing threads have stopped'));
    const worker = running.reduce((a, b) => (this.busy.get(b)! < this.busy.get(a)! ? b : a));
    const id = this.nextId++;
    if (this.busy.get(worker) === 0) worker.ref();
    this.busy.set(worker, this.busy.get(worker)! + 1);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { worker, resolve: resolve as (value: unknown) => void, reject });
      worker.postMessage({ id, task });
    });
  }

  private settle(id: number, how: (p: { resolve: (value: unknown) => void; reject: (error: Error) => void }) => void): void {
    const request = this.pending.get(id);
    if (!request) return;
    this.pending.delete(id);
    const left = this.busy.get(request.worker)! - 1;
    this.busy.set(request.worker, left);
    if (left === 0) request.worker.unref();
    how(request);
  }

  private stop(worker: Worker, error: Error): void {
    this.stopped.add(worker);
    for (const [id, request] of this.pending) if (request.worker === worker) this.settle(id, (p) => p.reject(error));
  }
}
