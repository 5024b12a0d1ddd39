// Data-parallel training over a c10d process group: every rank holds the whole model, trains on its share of each
// global batch, and takes the same optimiser step from gradients averaged across the ranks. Rank 0's weights are
// copied to all at the start; gradients travel in flat float32 buckets (Gloo cannot carry bfloat16 on every
// libtorch), and each step's mean loss and stop request travel with them, so that all ranks log the same loss and
// stop at the same step.
import { createHash } from 'node:crypto';
import * as E from '../engine/index.js';
import { blockRange } from '../data/batches.js';
import type { Module } from '../nn/index.js';

/** About PyTorch DistributedDataParallel's default bucket size: few enough collectives, small enough copies. */
export const BUCKET_BYTES = 25 * 2 ** 20;

/** A rank lost the others (one died, or stayed silent past the time-out); the message says how to resume. */
export class DistributedRunError extends Error {
  override name = 'DistributedRunError';
}

export class DataParallel {
  readonly rank: number;
  readonly worldSize: number;

  constructor(
    readonly group: E.distributed.ProcessGroup,
    /** What to tell the user when the group breaks: where the last checkpoint is and how to resume. */
    private readonly resumeAdvice: () => string,
  ) {
    this.rank = group.rank;
    this.worldSize = group.worldSize;
  }

  get isRoot(): boolean {
    return this.rank === 0;
  }

  /** This rank's rows of a global batch: contiguous, equal blocks in rank order. */
  shard(batch: Int32Array): Int32Array {
    const local = batch.length / this.worldSize;
    if (!Number.isInteger(local)) throw new RangeError(`a batch of ${batch.length} cannot be split evenly across ${this.worldSize} processes`);
    return batch.subarray(this.rank * local, (this.rank + 1) * local);
  }

  /** Every rank's share of a list for work that is merely divided (validation): contiguous blocks, the first ones a row longer. */
  split(indices: Int32Array): Int32Array {
    return indices.subarray(...blockRange(indices.length, this.rank, this.worldSize));
  }

  /** Copies rank 0's parameters and buffers into every rank's module. */
  async broadcastModule(module: Module): Promise<void> {
    await this.#inBuckets([...module.stateDict().values()], async (flat) => {
      await this.#collective('sharing the weights of rank 0', () => this.group.broadcast(flat, 0));
    });
  }

  /**
   * Replaces every parameter's gradient by its mean over the ranks, and returns the mean of `extras` (small values
   * that ride in the last bucket: the step's loss and stop request).
   */
  async averageGradients(parameters: E.Tensor[], extras: number[]): Promise<number[]> {
    const grads = parameters.map((p) => p.grad ?? E.zerosLike(p));
    const extra = E.tensor(Float32Array.from(extras), [extras.length]);
    try {
      await this.#inBuckets([...grads, extra], async (flat) => {
        await this.#collective('averaging gradients', () => this.group.allReduce(flat, 'avg'));
      });
      parameters.forEach((p, i) => {
        if (!p.grad) p.grad = grads[i];
      });
      return Array.from(extra.data() as Float32Array);
    } finally {
      E.dispose([...grads, extra]);
    }
  }

  /** Gathers each rank's rows of a float32 [n, k] matrix to rank 0, in rank order; other ranks get undefined. */
  async gatherRows(rows: Float32Array, k: number): Promise<Float32Array | undefined> {
    const mine = E.tensor(rows, [rows.length / k, k]);
    try {
      const parts = await this.#collective('gathering validation outputs', () => this.group.gather(mine, 0));
      if (!parts) return undefined;
      const out = new Float32Array(parts.reduce((n, p) => n + p.numel, 0));
      let at = 0;
      for (const part of parts) {
        const values = part.data() as Float32Array;
        out.set(values, at);
        at += values.length;
      }
      E.dispose(parts);
      return out;
    } finally {
      mine.dispose();
    }
  }

  /** Rank 0's numbers, on every rank (float64, so scores compare exactly). */
  async broadcastNumbers(values: number[]): Promise<number[]> {
    const t = E.tensor(Float64Array.from(values), [values.length], { dtype: 'float64' });
    try {
      await this.#collective('sharing the results of rank 0', () => this.group.broadcast(t, 0));
      return t.toArray();
    } finally {
      t.dispose();
    }
  }

  /**
   * Checks that every rank holds the same value (its settings, its data), so that a rank started with other flags or
   * on other files cannot train silently on something else. Every rank fails alike when one differs.
   */
  async checkSame(what: string, value: string): Promise<void> {
    const digest = createHash('sha256').update(value).digest();
    const mine = Array.from({ length: 8 }, (_, i) => digest.readUInt32BE(4 * i));
    const root = await this.broadcastNumbers(mine);
    const mineDiffers = root.some((v, i) => v !== mine[i]);
    const differs = E.tensor([mineDiffers ? 1 : 0], [1]);
    try {
      await this.#collective(`comparing ${what}`, () => this.group.allReduce(differs, 'sum'));
      const count = differs.item();
      if (count > 0)
        throw new RangeError(
          `${count} of the ${this.worldSize} processes have other ${what} than rank 0${mineDiffers ? ', this one among them' : ''}; start every process with the same flags, on the same files`,
        );
    } finally {
      differs.dispose();
    }
  }

  /** Waits for every rank (e.g. before rank 0 goes on to write the final model). */
  async barrier(): Promise<void> {
    await this.#collective('waiting for the other processes', () => this.group.barrier());
  }

  /** Leaves the group; after a failure, at once. */
  async destroy(): Promise<void> {
    await this.group.destroy();
  }

  /**
   * Runs fn on flat float32 copies of the tensors, in buckets of about BUCKET_BYTES, and copies the results back
   * into the tensors (which may be of any float dtype, on any device).
   */
  async #inBuckets(tensors: E.Tensor[], fn: (flat: E.Tensor) => Promise<void>): Promise<void> {
    let bucket: E.Tensor[] = [];
    let bytes = 0;
    const flush = async () => {
      if (bucket.length === 0) return;
      const members = bucket;
      bucket = [];
      bytes = 0;
      const flat = E.tidy(() => E.cat(members.map((t) => t.detach().reshape([-1]).float().cpu())));
      try {
        await fn(flat);
        E.noGrad(() => {
          let at = 0;
          for (const t of members) {
            E.tidy(() => t.copy_(flat.narrow(0, at, t.numel).reshape(t.shape)));
            at += t.numel;
          }
        });
      } finally {
        flat.dispose();
      }
    };
    for (const t of tensors) {
      if (bytes > 0 && bytes + 4 * t.numel > BUCKET_BYTES) await flush();
      bucket.push(t);
      bytes += 4 * t.numel;
    }
    await flush();
  }

  async #collective<T>(what: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw new DistributedRunError(
        `rank ${this.rank} of ${this.worldSize} lost the other processes while ${what}: ${(error as Error).message}\n${this.resumeAdvice()}`,
        { cause: error },
      );
    }
  }
}

export interface GroupPlace {
  rank: number;
  worldSize: number;
  /** Where rank 0 serves the rendezvous, as every rank reaches it. */
  masterAddr: string;
  masterPort: number;
  timeoutMs: number;
}

const LOOPBACK = /^(127\.|localhost$|::1$)/;

/**
 * Joins the run's process group: rank 0 serves a TCP store at masterAddr:masterPort, every rank meets there and
 * connects to every other over Gloo. For a run on this machine alone (a loopback address) Gloo binds to loopback too.
 */
export async function joinGroup(place: GroupPlace, resumeAdvice: () => string): Promise<DataParallel> {
  const { rank, worldSize, masterAddr, masterPort, timeoutMs } = place;
  let store: E.distributed.Store;
  try {
    store = await E.distributed.createStore({ kind: 'tcp', host: masterAddr, port: masterPort, isServer: rank === 0, worldSize, timeoutMs });
  } catch (error) {
    throw new DistributedRunError(`rank ${rank} of ${worldSize} could not meet the others at ${masterAddr}:${masterPort}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  try {
    const loopback = LOOPBACK.test(masterAddr) && !process.env.GLOO_SOCKET_IFNAME;
    const group = await E.distributed.initProcessGroup({ store, rank, worldSize, timeoutMs, ...(loopback ? { hostname: '127.0.0.1' } : {}) });
    return new DataParallel(group, resumeAdvice);
  } catch (error) {
    throw new DistributedRunError((error as Error).message, { cause: error });
  } finally {
    store.close();
  }
}
