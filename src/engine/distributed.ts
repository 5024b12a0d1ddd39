// Collectives across processes over PyTorch's distributed engine, c10d: a store where the ranks meet, a Gloo process
// group, and in-place collectives on CPU tensors. Data-parallel training is to build on this (docs/distributed.md).
// Arguments are checked here, before native code sees them, with errors that say what to change.
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { dtypeCode, dtypeFromCode, isFloating, type DType } from './dtype.js';
import { native, type NativeDistributedInfo, type NativeGroup, type NativeStore } from './native.js';
import { empty, Tensor, tensor } from './tensor.js';

/** How long a rendezvous or a collective may wait for the other ranks before it fails: PyTorch's default. */
export const DEFAULT_TIMEOUT_MS = 300_000;
const MAX_TIMEOUT_MS = 24 * 3600 * 1000;
const MAX_WORLD_SIZE = 1 << 20;

/** What this build of the addon offers, and when it offers nothing, why and what to do. */
export interface DistributedInfo {
  available: boolean;
  /** Why distributed training is unavailable. */
  reason?: string;
  /** What makes it available, most likely first; only when unavailable. */
  fixes?: string[];
  backends: Backend[];
  nccl: boolean;
  ncclReason: string;
}

export type Backend = 'gloo';

const REBUILD = 'npm run build:native';

function fixesFor(reason: string): string[] {
  if (/libgloo-dev/.test(reason)) return [`apt-get install -y libgloo-dev, then ${REBUILD}`];
  if (/HEMATO_DISTRIBUTED=0/.test(reason)) return [`${REBUILD}   (without HEMATO_DISTRIBUTED=0)`];
  if (/predates/.test(reason)) return [REBUILD];
  if (/did not compile/.test(reason)) {
    return ['build against a libtorch whose c10d API the binding knows (1.13 or 2.x), or adapt native/src/c10d.cc to this one (the log has the errors)'];
  }
  return [
    'LIBTORCH=/path/to/torch npm run build:native   (a libtorch or PyTorch install with c10d and Gloo headers, 1.13 or newer)',
    `on Debian 12: apt-get install -y libtorch-dev libgloo-dev, then ${REBUILD}`,
  ];
}

/** Whether this build of the addon has the distributed binding (c10d with Gloo). Loads the addon. */
export function distributedInfo(): DistributedInfo {
  const info: NativeDistributedInfo = native.distributedInfo?.() ?? {
    available: false,
    reason: 'this build of the addon predates distributed training',
    backends: [],
    nccl: false,
    ncclReason: 'no distributed binding',
  };
  const backends = info.backends.filter((b): b is Backend => b === 'gloo');
  if (info.available) return { available: true, backends, nccl: info.nccl, ncclReason: info.ncclReason };
  const reason = info.reason || 'unknown';
  return { available: false, reason, fixes: fixesFor(reason), backends, nccl: false, ncclReason: info.ncclReason };
}

/** Distributed training is not in this build of the addon: `reason` says why, `fixes` what to do. */
export class DistributedUnavailableError extends Error {
  constructor(
    readonly reason: string,
    readonly fixes: string[],
  ) {
    super(`distributed training is not available in this build of hemato's addon: ${reason}. To enable it: ${fixes.join('; or ')}`);
    this.name = 'DistributedUnavailableError';
  }
}

function requireDistributed(): void {
  const info = distributedInfo();
  if (!info.available) throw new DistributedUnavailableError(info.reason!, info.fixes!);
}

// ---- argument checks ----

function checkObject(value: unknown, what: string): asserts value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TypeError(`${what} needs an options object`);
}

function checkInteger(value: unknown, what: string, low: number, high: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < low || value > high) {
    throw new RangeError(`${what} must be an integer in ${low}..${high}, got ${typeof value === 'string' ? `'${value}'` : String(value)}`);
  }
  return value;
}

function checkString(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.trim() === '') throw new TypeError(`${what} must be a non-empty string`);
  return value;
}

const checkWorldSize = (value: unknown, what: string) => checkInteger(value, `${what}: worldSize`, 1, MAX_WORLD_SIZE);
const checkTimeout = (value: unknown, what: string) =>
  value === undefined ? DEFAULT_TIMEOUT_MS : checkInteger(value, `${what}: timeoutMs`, 1, MAX_TIMEOUT_MS);

// ---- stores ----

export interface TcpStoreOptions {
  kind: 'tcp';
  /** The server's address, as every rank reaches it. */
  host: string;
  /** The server's port; the server may pass 0 to take a free one, which `Store.port` then reports. */
  port: number;
  /** Exactly one rank (usually rank 0) runs the server; it is also a client. */
  isServer: boolean;
  worldSize: number;
  /** How long to wait for the server (clients) and for keys; default 300 000. */
  timeoutMs?: number;
}

export interface FileStoreOptions {
  kind: 'file';
  /** A file every rank can reach (a shared file system, or one machine's temp dir); it must not be left from an earlier run. */
  path: string;
  worldSize: number;
  timeoutMs?: number;
}

export type StoreOptions = TcpStoreOptions | FileStoreOptions;

/** A c10d store: the key-value table where the ranks of a process group find each other. */
export class Store {
  #handle: NativeStore | undefined;

  /** @internal use createStore() */
  constructor(
    handle: NativeStore,
    readonly kind: 'tcp' | 'file',
    readonly worldSize: number,
    /** The TCP server's port (the one taken when 0 was asked for); undefined for a file store. */
    readonly port: number | undefined,
  ) {
    this.#handle = handle;
  }

  /** @internal */
  get handle(): NativeStore {
    if (!this.#handle) throw new Error('the store was closed');
    return this.#handle;
  }

  get closed(): boolean {
    return this.#handle === undefined;
  }

  /** Lets go of the store; process groups made on it keep it until they are destroyed. */
  close(): void {
    if (this.#handle) native.closeStore(this.#handle);
    this.#handle = undefined;
  }
}

/** Opens a TCP store (one rank serves it, every rank connects) or a file store. */
export async function createStore(options: StoreOptions): Promise<Store> {
  checkObject(options, 'createStore');
  const worldSize = checkWorldSize(options.worldSize, 'createStore');
  const timeoutMs = checkTimeout(options.timeoutMs, 'createStore');
  if (options.kind === 'tcp') {
    const host = checkString(options.host, 'createStore: host');
    if (typeof options.isServer !== 'boolean') throw new TypeError('createStore: isServer must be true on the one rank that serves the store, else false');
    const port = checkInteger(options.port, 'createStore: port', options.isServer ? 0 : 1, 65535);
    requireDistributed();
    try {
      const [actualPort, handle] = await native.createTcpStore(host, port, options.isServer, worldSize, timeoutMs);
      return new Store(handle, 'tcp', worldSize, actualPort);
    } catch (error) {
      const role = options.isServer ? `serve on ${host}:${port}` : `reach the server at ${host}:${port} within ${timeoutMs} ms`;
      throw new Error(`createStore: could not ${role}: ${(error as Error).message}`, { cause: error });
    }
  }
  if (options.kind === 'file') {
    const path = checkString(options.path, 'createStore: path');
    // libtorch opens the file only at the first use, where a missing folder would look like a failed rendezvous.
    if (!existsSync(dirname(resolve(path)))) throw new Error(`createStore: the folder of the file store ${path} does not exist`);
    requireDistributed();
    try {
      return new Store(native.createFileStore(path, worldSize, timeoutMs), 'file', worldSize, undefined);
    } catch (error) {
      throw new Error(`createStore: could not open the file store ${path}: ${(error as Error).message}`, { cause: error });
    }
  }
  throw new TypeError(`createStore: kind must be 'tcp' or 'file', got ${JSON.stringify((options as { kind?: unknown }).kind)}`);
}

// ---- process groups ----

export interface ProcessGroupOptions {
  store: Store;
  /** This process's place in the group, 0..worldSize-1; every rank must take a different one. */
  rank: number;
  /** The number of processes in the group: the store's. */
  worldSize: number;
  backend?: Backend;
  /** How long the rendezvous and each collective may wait for the other ranks; default 300 000. */
  timeoutMs?: number;
  /** The network interfaces Gloo binds to (e.g. 'eth0', or 'eth0,eth1'); defaults to GLOO_SOCKET_IFNAME, as in PyTorch. */
  interface?: string;
  /** Or the address Gloo binds to. Without either, the address this machine's hostname resolves to. */
  hostname?: string;
}

/**
 * Joins a process group: waits (up to the time-out) until every rank has joined through the store, then connects to
 * each of them. Every rank must call it, with the same worldSize and its own rank.
 */
export async function initProcessGroup(options: ProcessGroupOptions): Promise<ProcessGroup> {
  checkObject(options, 'initProcessGroup');
  const { store } = options;
  if (!(store instanceof Store)) throw new TypeError('initProcessGroup: store must come from createStore()');
  if (store.closed) throw new Error('initProcessGroup: the store was closed');
  const worldSize = checkWorldSize(options.worldSize, 'initProcessGroup');
  if (worldSize !== store.worldSize) throw new RangeError(`initProcessGroup: worldSize ${worldSize} differs from the store's ${store.worldSize}`);
  const rank = checkInteger(options.rank, 'initProcessGroup: rank', 0, worldSize - 1);
  const timeoutMs = checkTimeout(options.timeoutMs, 'initProcessGroup');
  const backend = options.backend ?? 'gloo';
  if (backend !== 'gloo') {
    if ((backend as string) === 'nccl') {
      throw new Error(`initProcessGroup: the NCCL backend is not available (${distributedInfo().ncclReason}); use backend 'gloo'`);
    }
    throw new TypeError(`initProcessGroup: backend must be 'gloo', got ${JSON.stringify(backend)}`);
  }
  if (options.interface !== undefined && options.hostname !== undefined) throw new TypeError('initProcessGroup: give interface or hostname, not both');
  const iface = options.interface !== undefined ? checkString(options.interface, 'initProcessGroup: interface') : undefined;
  const hostname = options.hostname !== undefined ? checkString(options.hostname, 'initProcessGroup: hostname') : undefined;
  requireDistributed();
  try {
    const handle = await native.initGloo(
      store.handle,
      rank,
      worldSize,
      timeoutMs,
      iface ?? (hostname ? undefined : process.env.GLOO_SOCKET_IFNAME || undefined),
      hostname,
    );
    return new ProcessGroup(handle, rank, worldSize, timeoutMs);
  } catch (error) {
    const message = (error as Error).message;
    const hint = /time ?out|timed out/i.test(message) ? ` within ${timeoutMs} ms (did every rank start, with the same store?)` : '';
    throw new Error(`initProcessGroup: rank ${rank} of ${worldSize} could not join the group${hint}: ${message}`, { cause: error });
  }
}

/** The reductions allReduce offers; 'avg' is a sum divided by the world size, for floating-point tensors. */
export type ReduceOp = 'sum' | 'avg' | 'max' | 'min' | 'product';
const REDUCE_OPS: readonly ReduceOp[] = ['sum', 'avg', 'max', 'min', 'product'];

/** The dtypes collectives carry. bfloat16 needs a Gloo that knows it (Debian's does not: the collective says so). */
export const COLLECTIVE_DTYPES: readonly DType[] = ['float32', 'float64', 'float16', 'bfloat16', 'int32', 'int64', 'uint8'];

// allGather and gather send each rank's dtype and shape first: [dtype code, ndim, ...dims, 0-padded].
const MAX_DIMS = 8;

/**
 * A process group over Gloo. Collectives work in place on contiguous CPU tensors, start in the order they are called
 * (one at a time, so every rank issues them in the same order), and settle once the whole group has taken part. A
 * peer that died or stays silent past the time-out rejects the promise; the group is then unusable, so destroy it.
 */
export class ProcessGroup {
  readonly backend: Backend = 'gloo';
  #handle: NativeGroup | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #failed: Error | undefined;

  /** @internal use initProcessGroup() */
  constructor(
    handle: NativeGroup,
    readonly rank: number,
    readonly worldSize: number,
    readonly timeoutMs: number,
  ) {
    this.#handle = handle;
  }

  get destroyed(): boolean {
    return this.#handle === undefined;
  }

  /** Reduces `tensor` in place across the group (default: sum); resolves to the same tensor. */
  allReduce(tensor: Tensor, op: ReduceOp = 'sum'): Promise<Tensor> {
    return this.#start('allReduce', (handle) => {
      this.#checkTensor(tensor, 'allReduce');
      if (!REDUCE_OPS.includes(op)) throw new TypeError(`allReduce: op must be one of ${REDUCE_OPS.join(', ')}, got ${JSON.stringify(op)}`);
      if (op === 'avg' && !isFloating(tensor.dtype)) {
        throw new TypeError(`allReduce: 'avg' needs a floating-point tensor, got ${tensor.dtype}; use 'sum' and divide`);
      }
      return async () => {
        await this.#collective('allReduce', tensor, () => native.allReduce(handle, tensor.handle, op === 'avg' ? 'sum' : op));
        if (op === 'avg' && this.worldSize > 1) tensor.div_(this.worldSize);
        return tensor;
      };
    });
  }

  /** Copies the root rank's `tensor` into every rank's, in place; resolves to the same tensor. */
  broadcast(tensor: Tensor, root = 0): Promise<Tensor> {
    return this.#start('broadcast', (handle) => {
      this.#checkTensor(tensor, 'broadcast');
      this.#checkRoot(root, 'broadcast');
      return async () => {
        await this.#collective('broadcast', tensor, () => native.broadcast(handle, tensor.handle, root));
        return tensor;
      };
    });
  }

  /** Resolves once every rank has reached the barrier. */
  barrier(): Promise<void> {
    return this.#start('barrier', (handle) => () => this.#collective('barrier', undefined, () => native.barrier(handle)));
  }

  /**
   * Every rank's `tensor`, on every rank, in rank order: new tensors the caller disposes. Their dtypes and all
   * dimensions but the first must agree; the first may differ (a last, shorter batch of validation logits).
   */
  allGather(tensor: Tensor): Promise<Tensor[]> {
    return this.#start('allGather', (handle) => {
      this.#checkTensor(tensor, 'allGather');
      return async () => {
        const shapes = await this.#shapes(handle, tensor, 'allGather');
        return this.#gatherPadded(tensor, shapes, (input, outputs) => native.allGather(handle, input.handle, outputs), 'allGather', true);
      };
    });
  }

  /** Like allGather, but only the root receives the tensors; other ranks get undefined. */
  gather(tensor: Tensor, root = 0): Promise<Tensor[] | undefined> {
    return this.#start('gather', (handle) => {
      this.#checkTensor(tensor, 'gather');
      this.#checkRoot(root, 'gather');
      return async () => {
        const shapes = await this.#shapes(handle, tensor, 'gather');
        const isRoot = this.rank === root;
        const gathered = await this.#gatherPadded(tensor, shapes, (input, outputs) => native.gather(handle, input.handle, outputs, root), 'gather', isRoot);
        return isRoot ? gathered : undefined;
      };
    });
  }

  /**
   * Leaves the group: waits for the collectives already called, then for every rank to leave too (up to the
   * time-out; at once if a collective failed), then closes its connections and threads. Every rank should destroy
   * its group before it exits: a rank that just leaves may take with it bytes a peer still waits for. Destroying
   * twice is harmless.
   */
  async destroy(): Promise<void> {
    const handle = this.#handle;
    if (!handle) return;
    this.#handle = undefined;
    await this.#queue;
    await native.destroyGroup(handle, this.#failed === undefined);
  }

  // Checks the call now, then queues the collective behind those called before it.
  #start<T>(what: string, prepare: (handle: NativeGroup) => () => Promise<T>): Promise<T> {
    const handle = this.#handle;
    if (!handle) return Promise.reject(new Error(`${what}: the process group was destroyed`));
    let body: () => Promise<T>;
    try {
      body = prepare(handle);
    } catch (error) {
      return Promise.reject(error);
    }
    const run = this.#queue.then(() => {
      if (this.#failed) throw new Error(`${what}: an earlier collective of this group failed, so it is unusable; destroy it (${this.#failed.message})`);
      return body();
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #collective(what: string, tensor: Tensor | undefined, start: () => Promise<void>): Promise<void> {
    try {
      await start();
    } catch (error) {
      const failure = this.#failure(what, tensor, error);
      // Refused arguments and a dtype Gloo lacks fail before any data moves; anything else leaves the connections in
      // an unknown state.
      if (!(failure instanceof TypeError || failure instanceof RangeError)) this.#failed = failure;
      throw failure;
    }
  }

  #failure(what: string, tensor: Tensor | undefined, error: unknown): Error {
    const message = (error as Error).message ?? String(error);
    const where = `${what} failed on rank ${this.rank} of ${this.worldSize}`;
    if (/Invalid scalar type/.test(message) && tensor && !tensor.isDisposed) {
      return new TypeError(`${where}: this libtorch's Gloo cannot carry ${tensor.dtype} tensors; convert to float32 first`, { cause: error });
    }
    // The addon's own checks throw these before anything is sent.
    if (error instanceof TypeError) return new TypeError(`${what}: ${message}`, { cause: error });
    if (error instanceof RangeError) return new RangeError(`${what}: ${message}`, { cause: error });
    let hint = '';
    if (/timed out|timeout/i.test(message)) hint = ` (no answer from a peer within the group's time-out of ${this.timeoutMs} ms)`;
    else if (/closed by peer|reset by peer|broken pipe|connection/i.test(message)) hint = ' (a peer closed its connection: it may have exited)';
    return new Error(`${where}${hint}: ${message}`, { cause: error });
  }

  #checkTensor(t: Tensor, what: string): void {
    if (!(t instanceof Tensor)) throw new TypeError(`${what}: expected a Tensor`);
    if (t.isDisposed) throw new Error(`${what}: the tensor was disposed`);
    if (t.device !== 'cpu') throw new TypeError(`${what}: Gloo carries CPU tensors; this one is on ${t.device} (move it with .cpu())`);
    if (!COLLECTIVE_DTYPES.includes(t.dtype)) throw new TypeError(`${what}: collectives carry ${COLLECTIVE_DTYPES.join(', ')} tensors, not ${t.dtype}`);
    if (!t.isContiguous()) throw new TypeError(`${what}: the tensor must be contiguous (call .contiguous() first)`);
    if (t.ndim > MAX_DIMS && (what === 'allGather' || what === 'gather')) throw new RangeError(`${what}: at most ${MAX_DIMS} dimensions, got ${t.ndim}`);
  }

  #checkRoot(root: number, what: string): void {
    checkInteger(root, `${what}: root`, 0, this.worldSize - 1);
  }

  /** Every rank's dtype and shape, checked to agree in all but the first dimension. */
  async #shapes(handle: NativeGroup, t: Tensor, what: string): Promise<number[][]> {
    const header = new BigInt64Array(2 + MAX_DIMS);
    header[0] = BigInt(dtypeCode(t.dtype));
    header[1] = BigInt(t.ndim);
    t.shape.forEach((d, i) => (header[2 + i] = BigInt(d)));
    const mine = tensor(header, [header.length], { dtype: 'int64' });
    const all = Array.from({ length: this.worldSize }, () => empty([header.length], { dtype: 'int64' }));
    try {
      await this.#collective(what, mine, () =>
        native.allGather(
          handle,
          mine.handle,
          all.map((h) => h.handle),
        ),
      );
      const headers = all.map((h) => h.toArray());
      const describe = (h: number[]) => `${dtypeFromCode(h[0])} [${h.slice(2, 2 + h[1]).join(', ')}]`;
      const [first] = headers;
      for (const [r, h] of headers.entries()) {
        const sameTail = h[1] === first[1] && h.slice(3, 2 + h[1]).every((d, i) => d === first[3 + i]);
        if (h[0] !== first[0] || !sameTail) {
          throw new TypeError(
            `${what}: the ranks' tensors must share a dtype and all dimensions but the first; rank 0 has ${describe(first)}, rank ${r} has ${describe(h)}`,
          );
        }
      }
      return headers.map((h) => h.slice(2, 2 + h[1]));
    } finally {
      mine.dispose();
      for (const h of all) h.dispose();
    }
  }

  /** Gathers tensors whose first dimensions may differ: each rank pads to the longest, and the padding is cut off after. */
  async #gatherPadded(
    t: Tensor,
    shapes: number[][],
    run: (input: Tensor, outputs: NativeTensorList) => Promise<void>,
    what: string,
    receives: boolean,
  ): Promise<Tensor[]> {
    const lengths = shapes.map((s) => (s.length === 0 ? 1 : s[0]));
    const longest = Math.max(...lengths);
    const padded = t.ndim > 0 && t.shape[0] < longest;
    const input = padded ? padTo(t, longest) : t;
    const fullShape = t.ndim === 0 ? [] : [longest, ...t.shape.slice(1)];
    const outputs = receives ? shapes.map(() => empty(fullShape, { dtype: t.dtype })) : [];
    try {
      await this.#collective(what, t, () =>
        run(
          input,
          outputs.map((o) => o.handle),
        ),
      );
    } catch (error) {
      for (const o of outputs) o.dispose();
      throw error;
    } finally {
      if (padded) input.dispose();
    }
    return outputs.map((o, r) => {
      if (t.ndim === 0 || lengths[r] === longest) return o;
      const cut = o.narrow(0, 0, lengths[r]).contiguous();
      o.dispose();
      return cut;
    });
  }
}

type NativeTensorList = Parameters<typeof native.allGather>[2];

/** A copy of `t` lengthened to `length` along its first dimension with zeros. */
function padTo(t: Tensor, length: number): Tensor {
  const out = empty([length, ...t.shape.slice(1)], { dtype: t.dtype });
  const head = out.narrow(0, 0, t.shape[0]);
  const tail = out.narrow(0, t.shape[0], length - t.shape[0]);
  head.copy_(t);
  tail.zero_();
  head.dispose();
  tail.dispose();
  return out;
}
