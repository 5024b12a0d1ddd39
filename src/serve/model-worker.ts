// The main thread's side of the model's worker thread: start it, send it requests, and turn its death into errors.
import { Worker } from 'node:worker_threads';
import type { ClassifierOptions } from '../api/classifier.js';
import type { WorkerReply, WorkerRequest, WorkerSetup, WorkerStatus } from './protocol.js';

/** An error with the HTTP status and the stable code the server answers it with. */
export class ServeError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly status: number,
  ) {
    super(message);
    this.name = 'ServeError';
  }
}

/**
 * The HTTP status of an image's failure, the same on every route: an empty image is the client's mistake (400), one
 * over the limits 413, the model's own failure 500, and an image that cannot be decoded 422.
 */
export function statusOf(code: string | undefined): number {
  if (code === 'empty') return 400;
  if (code === 'too-large') return 413;
  if (code === 'non-finite-output' || code === undefined) return 500;
  return 422;
}

type Pending = { resolve: (value: unknown) => void; reject: (error: Error) => void };

/** Distributes a request's kind without its id, which ModelWorker assigns. */
type Request = WorkerRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

export class ModelWorker {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private exited: string | null = null;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (reply: WorkerReply) => {
      const waiting = this.pending.get(reply.id);
      if (!waiting) return;
      this.pending.delete(reply.id);
      if (reply.ok) waiting.resolve(reply.value);
      else waiting.reject(new ServeError(reply.error, reply.code ?? 'failed', reply.status ?? statusOf(reply.code)));
    });
    worker.on('exit', (code) => this.fail(`the model's worker thread stopped (exit code ${code})`));
    worker.on('error', (error) => this.fail(`the model's worker thread failed: ${error.message}`));
  }

  /** Starts the worker and waits until it has loaded the model; a model that cannot be loaded rejects with why. */
  static start(model: string, options: ClassifierOptions): Promise<ModelWorker> {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: { model, options } satisfies WorkerSetup });
    return new Promise((resolve, reject) => {
      worker.once('message', (status: WorkerStatus) => {
        if (status.ready) resolve(new ModelWorker(worker));
        else reject(new Error(status.error));
      });
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`the model's worker thread stopped while loading the model (exit code ${code})`)));
    });
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  get alive(): boolean {
    return this.exited === null;
  }

  call<T>(request: Request, transfer: ArrayBuffer[] = []): Promise<T> {
    if (this.exited !== null) return Promise.reject(new ServeError(this.exited, 'unavailable', 503));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject });
      this.worker.postMessage({ ...request, id }, transfer);
    });
  }

  async close(): Promise<void> {
    this.exited ??= 'the server is shutting down';
    await this.worker.terminate();
  }

  private fail(reason: string): void {
    this.exited ??= reason;
    for (const waiting of this.pending.values()) waiting.reject(new ServeError(reason, 'unavailable', 503));
    this.pending.clear();
  }
}
