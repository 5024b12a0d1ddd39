// Loads the libtorch addon on first use and describes its surface. Everything above this file talks to libtorch
// through it. Loading late lets commands that never touch a tensor (help, scan, split) run without libtorch.
import { existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { addonPath, builtAddonPath, located } from './located.js';
import { cpuFeatures, openblasCoreFor } from './cpu.js';

/**
 * A native at::Tensor, named by a number: a slot of the addon's tensor table and that slot's generation, so a
 * handle of a freed tensor never names another one.
 */
export type NativeTensor = number & { readonly __nativeTensor: unique symbol };
/** An ATen operator, named by a number. */
export type NativeOp = number & { readonly __nativeOp: unique symbol };
/** How JS reads each value an operator returns: as is, as a tensor handle (or undefined), or as a list of them. */
export const enum ReturnKind {
  Value = 0,
  Tensor = 1,
  TensorList = 2,
}
/** An opaque handle to a c10d store. */
export type NativeStore = { readonly __nativeStore: unique symbol };
/** An opaque handle to a c10d process group. */
export type NativeGroup = { readonly __nativeGroup: unique symbol };

/** Whether the addon was built with the distributed binding (c10d with Gloo), and why not. */
export interface NativeDistributedInfo {
  available: boolean;
  /** Why the binding was left out of this build; only when unavailable. */
  reason?: string;
  backends: string[];
  nccl: boolean;
  ncclReason: string;
}

export interface NativeInfo {
  torchVersion: string;
  cudaAvailable: boolean;
  cudaDeviceCount: number;
  mkldnn: boolean;
  openblasCore: string;
  /** OpenBLAS's thread count; -1 where another BLAS is loaded. */
  openblasThreads: number;
  cxx11Abi: boolean;
  /** Whether this build can read the CUDA caching allocator's figures (libtorch 2.9 and newer). */
  cudaMemoryStats: boolean;
  parallelInfo: string;
  interopThreads: number;
}

export interface NativeAddon {
  /** [op, ...return kinds], or undefined when this libtorch lacks the operator. */
  findOp(name: string, overload: string): [NativeOp, ...ReturnKind[]] | undefined;
  /** Bit i of tensorMask marks args[i] as a tensor handle; lists of tensors are Float64Arrays of handles (NaN: none). */
  callOp(op: NativeOp, tensorMask: number, ...args: unknown[]): unknown;
  fromBuffer(data: ArrayBufferView, shape: number[], dtype: number): NativeTensor;
  toBuffer(tensor: NativeTensor): ArrayBuffer;
  /** Frees the tensor; a handle already freed is left alone. */
  dispose(tensor: NativeTensor): void;
  meta(tensor: NativeTensor): [number, string, boolean, ...number[]];
  isContiguous(tensor: NativeTensor, memoryFormat: number): boolean;
  setRequiresGrad(tensor: NativeTensor, value: boolean): void;
  grad(tensor: NativeTensor): NativeTensor | undefined;
  setGrad(tensor: NativeTensor, grad: NativeTensor | undefined): void;
  backward(tensor: NativeTensor, grad: NativeTensor | undefined, retainGraph: boolean): void;
  randomSeeded(kind: 'rand' | 'randn', shape: number[], dtype: number, seed: number): NativeTensor;
  liveTensors(): number;
  setNumThreads(n: number): void;
  getNumThreads(): number;
  releaseFreeMemory(): boolean;
  manualSeed(seed: number): void;
  setGradEnabled(enabled: boolean): boolean;
  isGradEnabled(): boolean;
  setAutocast(device: 'cpu' | 'cuda', enabled: boolean, dtype: number): [boolean, number];
  restoreAutocast(device: 'cpu' | 'cuda', scopeEnabled: boolean, previousEnabled: boolean, previousDtype: number): void;
  autocastState(device: 'cpu' | 'cuda'): [boolean, number];
  cudaSynchronize(): void;
  /** [allocated, reserved, peakAllocated] bytes of the CUDA caching allocator; undefined where unreadable. */
  cudaMemory(index: number): [number, number, number] | undefined;
  info(): NativeInfo;
  /** Absent from builds of the addon that predate distributed training. */
  distributedInfo?(): NativeDistributedInfo;
  // The distributed binding: present where distributedInfo().available.
  createTcpStore(host: string, port: number, isServer: boolean, worldSize: number, timeoutMs: number): Promise<[number, NativeStore]>;
  createFileStore(path: string, worldSize: number, timeoutMs: number): NativeStore;
  closeStore(store: NativeStore): void;
  initGloo(store: NativeStore, rank: number, worldSize: number, timeoutMs: number, iface?: string, hostname?: string): Promise<NativeGroup>;
  allReduce(group: NativeGroup, tensor: NativeTensor, op: 'sum' | 'product' | 'min' | 'max'): Promise<void>;
  broadcast(group: NativeGroup, tensor: NativeTensor, root: number): Promise<void>;
  barrier(group: NativeGroup): Promise<void>;
  allGather(group: NativeGroup, input: NativeTensor, outputs: NativeTensor[]): Promise<void>;
  gather(group: NativeGroup, input: NativeTensor, outputs: NativeTensor[], root: number): Promise<void>;
  destroyGroup(group: NativeGroup, graceful: boolean): Promise<void>;
}

/** The most CPU threads hemato accepts: 4 per core. More only oversubscribes, and huge counts make libgomp abort. */
export function maxThreads(): number {
  return 4 * availableParallelism();
}

/**
 * A thread count from a setting (an environment variable, a CLI flag or an argument, named by `setting`), as a
 * number; anything but an integer in 1..maxThreads() throws before libtorch sees it.
 */
export function checkThreadCount(value: number | string, setting: string): number {
  const n = typeof value === 'string' ? (/^\s*\d+\s*$/.test(value) ? Number(value) : NaN) : value;
  if (!Number.isInteger(n) || n < 1 || n > maxThreads()) {
    const shown = typeof value === 'string' ? `'${value}'` : String(value);
    throw new RangeError(
      `${setting} must be a positive integer in 1..${maxThreads()} (up to 4 threads per core; ${availableParallelism()} cores here), got ${shown}`,
    );
  }
  return n;
}

const threadSetting = process.env.HEMATO_NUM_THREADS || undefined;

/**
 * The CPU thread count libtorch starts with: HEMATO_NUM_THREADS, else the number of cores (Debian's libtorch
 * would start with one, which leaves cores idle). An invalid HEMATO_NUM_THREADS fails the addon's load.
 */
export const defaultThreads = threadSetting ? Number(threadSetting) : availableParallelism();

/** The addon could not be loaded: `reason` says why, `fixes` what to do, most likely first. */
export class AddonLoadError extends Error {
  constructor(
    readonly reason: string,
    readonly fixes: string[],
    loaderMessage?: string,
    options?: ErrorOptions,
  ) {
    const loader = loaderMessage ? `\n  loader: ${loaderMessage.split('\n')[0]}` : '';
    super(`the native addon ${addonPath} could not be loaded: ${reason}${loader}\nPossible fixes:\n${fixes.map((f) => `  - ${f}`).join('\n')}`, options);
    this.name = 'AddonLoadError';
  }
}

const SETUP = 'bash scripts/setup.sh   (installs libtorch-dev and libopenblas0-pthread with apt, then builds the addon)';
const BUILD_COMMAND = 'npm run build:native';
const BUILD = `${BUILD_COMMAND}   (builds the addon against the libtorch installed; LIBTORCH=/path/to/libtorch picks another)`;
const LIBDIR = located?.libdir ?? '/path/to/libtorch/lib';

/** Why the loader refused the addon, from its message, and the fixes for that cause. */
export function explainLoadFailure(message: string): { reason: string; fixes: string[] } {
  const library = /([\w.+-]+\.so[.\d]*): cannot open shared object file/.exec(message)?.[1];
  if (library && /^lib(torch|c10)/.test(library)) {
    return {
      reason: `libtorch's ${library} was not found`,
      fixes: [
        "apt-get install libtorch-dev libopenblas0-pthread   (Debian's libtorch, as bash scripts/setup.sh installs it)",
        `LD_LIBRARY_PATH=${LIBDIR}   (the lib folder of the libtorch the addon was built against)`,
        `LIBTORCH=/path/to/libtorch ${BUILD_COMMAND}   (to build against the libtorch you have)`,
      ],
    };
  }
  if (library) {
    return {
      reason: `${library}, which the addon or libtorch needs, was not found`,
      fixes: [
        `install the package that provides ${library} (for libopenblas: apt-get install libopenblas0-pthread)`,
        `LD_LIBRARY_PATH=/folder/holding/${library}`,
      ],
    };
  }
  const symbol = /undefined symbol: (\S+)/.exec(message)?.[1];
  if (symbol) {
    return {
      reason: `it was built against another libtorch than the one that loaded (undefined symbol ${symbol})`,
      fixes: [
        `${BUILD_COMMAND}   (rebuilds it against the libtorch in use)`,
        `point LD_LIBRARY_PATH at the libtorch it was built against (${LIBDIR}), not another one`,
      ],
    };
  }
  if (/NODE_MODULE_VERSION|different Node\.js version/.test(message)) {
    return {
      reason: `it was built for another version of Node.js than this one (${process.version})`,
      fixes: [`${BUILD_COMMAND}   (rebuilds it for this Node.js)`],
    };
  }
  if (/invalid ELF header|wrong ELF class|file too short|not a dynamic/.test(message)) {
    return { reason: `the file is not an addon built for this platform (${process.platform}-${process.arch})`, fixes: [BUILD, SETUP] };
  }
  return { reason: message.split('\n')[0], fixes: [SETUP, BUILD] };
}

function requireAddon(): NativeAddon {
  if (!existsSync(addonPath)) {
    const override = process.env.HEMATO_ADDON ? [`point HEMATO_ADDON at a built hemato_native.node, or unset it to use ${builtAddonPath}`] : [];
    throw new AddonLoadError(process.env.HEMATO_ADDON ? 'HEMATO_ADDON names a file that does not exist' : 'the addon is not built', [
      ...override,
      SETUP,
      BUILD,
    ]);
  }
  // require() would run any other file as JavaScript, or look for a package in a folder.
  if (process.env.HEMATO_ADDON && !(addonPath.endsWith('.node') && statSync(addonPath).isFile()))
    throw new AddonLoadError('HEMATO_ADDON names something that is not a built addon (a .node file)', [
      `point HEMATO_ADDON at a built hemato_native.node, or unset it to use ${builtAddonPath}`,
      BUILD,
    ]);
  try {
    return createRequire(import.meta.url)(addonPath) as NativeAddon;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const { reason, fixes } = explainLoadFailure(message);
    throw new AddonLoadError(reason, fixes, message, { cause: error });
  }
}

let loaded: NativeAddon | undefined;

/** Loads the addon once, and starts libtorch with the configured thread count. Throws AddonLoadError or RangeError. */
export function loadAddon(): NativeAddon {
  if (loaded) return loaded;
  // Checked before libtorch sees it: a huge count makes libgomp abort, a large one hangs.
  if (threadSetting) checkThreadCount(threadSetting, 'HEMATO_NUM_THREADS');
  // OpenBLAS reads its core when libtorch loads it, so it is named before; a user's OPENBLAS_CORETYPE wins.
  const core = process.env.OPENBLAS_CORETYPE ? undefined : openblasCoreFor(cpuFeatures());
  if (core) process.env.OPENBLAS_CORETYPE = core;
  // Node-API fills the exports object one property at a time, which leaves V8 a slow dictionary object; a copy has
  // fast properties, and every op looks one up.
  const addon = { ...requireAddon() };
  addon.setNumThreads(defaultThreads);
  loaded = native = addon;
  return addon;
}

/**
 * The addon. Until first use this is a stand-in that loads it; from then on the binding is the addon itself,
 * so a call costs no more than a property lookup.
 */
export let native: NativeAddon = new Proxy({} as NativeAddon, {
  get: (_, key) => loadAddon()[key as keyof NativeAddon],
});
