// Process-level controls: threads, seeds, devices and what libtorch this is.
import { checkThreadCount, native, type NativeInfo } from './native.js';
import type { Device } from './tensor.js';

export { AddonLoadError, checkThreadCount, defaultThreads, loadAddon, maxThreads } from './native.js';
export { cpuFeatures, type CpuFeatures, openblasCoreFor } from './cpu.js';

/** Sets libtorch's intra-op CPU thread count (defaults to the number of cores, or HEMATO_NUM_THREADS), 1..maxThreads(). */
export function setNumThreads(n: number): void {
  native.setNumThreads(checkThreadCount(n, 'setNumThreads'));
}

export function numThreads(): number {
  return native.getNumThreads();
}

/**
 * Returns the C heap's free pages to the system (glibc's malloc_trim); true if any were. Long-running processes
 * call it when idle: freed memory otherwise stays with the thread that freed it, and the resident size creeps up.
 */
export function releaseFreeMemory(): boolean {
  return native.releaseFreeMemory();
}

/** Seeds libtorch's global generators (CPU and CUDA): CPU runs repeat exactly at a fixed thread count. */
export function manualSeed(seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`manualSeed: need a non-negative integer, got ${seed}`);
  native.manualSeed(seed);
}

export function cudaAvailable(): boolean {
  return native.info().cudaAvailable;
}

/** Waits for queued CUDA work; timing GPU code needs it. A no-op without CUDA. */
export function synchronize(): void {
  native.cudaSynchronize();
}

export interface CudaMemory {
  device: string;
  /** Bytes held by live tensors. */
  allocatedBytes: number;
  /** Bytes the caching allocator holds from the driver (allocated plus cached). */
  reservedBytes: number;
  peakAllocatedBytes: number;
}

/**
 * The live-tensor report: the count of live tensor handles and, per CUDA device, the caching allocator's figures.
 * `cuda` is empty without CUDA; `cudaMemoryReadable` is false where this libtorch cannot report them (before 2.9).
 */
export function memoryReport(): { liveTensors: number; cuda: CudaMemory[]; cudaMemoryReadable: boolean } {
  const info = native.info();
  const cuda: CudaMemory[] = [];
  let readable = info.cudaAvailable && info.cudaMemoryStats;
  for (let i = 0; i < (info.cudaAvailable ? info.cudaDeviceCount : 0); i++) {
    const figures = native.cudaMemory(i);
    if (!figures) {
      readable = false;
      break;
    }
    cuda.push({ device: `cuda:${i}`, allocatedBytes: figures[0], reservedBytes: figures[1], peakAllocatedBytes: figures[2] });
  }
  return { liveTensors: native.liveTensors(), cuda: readable ? cuda : [], cudaMemoryReadable: readable };
}

/** 'auto' picks CUDA when it is there. */
export function resolveDevice(requested: Device | 'auto' = 'auto'): Device {
  if (requested === 'auto') return cudaAvailable() ? 'cuda' : 'cpu';
  if (requested.startsWith('cuda') && !cudaAvailable()) {
    throw new Error(`device '${requested}' was requested, but this libtorch sees no CUDA device (run 'hemato doctor' for details)`);
  }
  return requested;
}

export function libtorchInfo(): NativeInfo {
  return native.info();
}
