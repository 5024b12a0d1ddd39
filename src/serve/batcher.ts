// Dynamic batching: images from concurrent requests share one forward pass. A batch leaves when it is full or its
// oldest image has waited `waitMs`. One batch runs at a time; the images that arrive meanwhile form the next, which
// leaves as soon as the model is free, since they have already waited as long as a batch takes.
import { ServeError } from './model-worker.js';

export interface BatcherOptions<T, R> {
  maxBatch: number;
  waitMs: number;
  /** Images waiting beyond this are refused (the server answers 503 with Retry-After). */
  maxQueue: number;
  run: (items: T[]) => Promise<R[]>;
  onBatch?: (size: number) => void;
}

interface Entry<T, R> {
  item: T;
  since: number;
  resolve: (result: R) => void;
  reject: (error: Error) => void;
}

export class Batcher<T, R> {
  private readonly queue: Entry<T, R>[] = [];
  private running: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly options: BatcherOptions<T, R>) {}

  /** Images waiting for a batch (not counting the one running). */
  get queued(): number {
    return this.queue.length;
  }

  /** Queues all the items or none: a request is never half accepted. */
  submit(items: T[]): Promise<R>[] {
    if (this.queue.length + items.length > this.options.maxQueue) {
      throw new ServeError(
        `the server is busy: ${this.queue.length} images are waiting (the queue holds ${this.options.maxQueue}); retry shortly`,
        'queue-full',
        503,
      );
    }
    const since = performance.now();
    const promises = items.map((item) => new Promise<R>((resolve, reject) => this.queue.push({ item, since, resolve, reject })));
    this.pump();
    return promises;
  }

  /** Takes back items still waiting (a request that timed out); those already running finish unseen. */
  withdraw(items: readonly T[]): void {
    const gone = new Set(items);
    for (let i = this.queue.length - 1; i >= 0; i--) {
      if (gone.has(this.queue[i].item)) this.queue.splice(i, 1)[0].reject(new ServeError('withdrawn', 'timeout', 503));
    }
  }

  /** Resolves once everything queued has been answered. */
  async drain(): Promise<void> {
    while (this.running || this.queue.length > 0) {
      this.pump(true);
      await this.running;
    }
  }

  private pump(now = false): void {
    if (this.running || this.queue.length === 0) return;
    const waited = performance.now() - this.queue[0].since;
    if (!now && this.queue.length < this.options.maxBatch && waited < this.options.waitMs) {
      this.timer ??= setTimeout(() => {
        this.timer = null;
        this.pump();
      }, this.options.waitMs - waited);
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const batch = this.queue.splice(0, this.options.maxBatch);
    this.options.onBatch?.(batch.length);
    this.running = this.options
      .run(batch.map((e) => e.item))
      .then(
        (results) => batch.forEach((e, i) => e.resolve(results[i])),
        (error: Error) => batch.forEach((e) => e.reject(error)),
      )
      .finally(() => {
        this.running = null;
        // Images that came while this batch ran have waited at least as long as it took: they go now.
        this.pump(true);
      });
  }
}
