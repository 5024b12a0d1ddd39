// Loads the libtorch addon and describes its surface. Everything above this file talks to libtorch through it.
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** An opaque handle to a native at::Tensor. */
export type NativeTensor = { readonly __nativeTensor: unique symbol };
/** An opaque handle to an ATen operator. */
export type NativeOp = { readonly __nativeOp: unique symbol };

export interface NativeInfo {
  torchVersion: string;
  cudaAvailable: boolean;
  cudaDeviceCount: number;
  mkldnn: boolean;
  openblasCore: string;
  cxx11Abi: boolean;
  /** Whether this build can read the CUDA caching allocator's figures (libtorch 2.9 and newer). */
  cudaMemoryStats: boolean;
  parallelInfo: string;
  interopThreads: number;
}

export interface NativeAddon {
  findOp(name: string, overload: string): NativeOp | undefined;
  callOp(op: NativeOp, args: unknown[]): unknown;
  fromBuffer(data: ArrayBufferView, shape: number[], dtype: number): NativeTensor;
  toBuffer(tensor: NativeTensor): ArrayBuffer;
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
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const addonPath = path.join(root, 'native/build/Release/hemato_native.node');

function load(): NativeAddon {
  const require = createRequire(import.meta.url);
  try {
    return require(addonPath) as NativeAddon;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(
      `hemato's native addon could not be loaded from ${addonPath}: ${reason}\n` +
        'Build it with: bash scripts/setup.sh   (or, when libtorch is already installed: npm run build:native)',
    );
  }
}

export const native: NativeAddon = load();

/** The CPU thread count in effect when hemato started: HEMATO_NUM_THREADS, else the number of cores. */
export const defaultThreads = Number(process.env.HEMATO_NUM_THREADS) || availableParallelism();
// Debian's libtorch starts with one thread, which leaves a core idle.
native.setNumThreads(defaultThreads);
