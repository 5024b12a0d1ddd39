// Mixed precision: inside an autocast scope libtorch runs GEMMs and convolutions in a lower precision.
// On CPUs with AMX, bf16 autocast sends them to oneDNN's AMX kernels, many times faster than fp32 there.
import { native } from './native.js';
import { dtypeCode, type DType } from './dtype.js';

export type AutocastDevice = 'cpu' | 'cuda';

export interface AutocastOptions {
  device?: AutocastDevice;
  dtype?: Extract<DType, 'bfloat16' | 'float16'>;
  /** false runs fn with autocast off, which lets part of a model stay in fp32 inside an autocast region. */
  enabled?: boolean;
}

/** Runs fn under autocast and restores the previous state afterwards, also when fn throws. */
export function autocast<T>(fn: () => T, options: AutocastOptions = {}): T {
  const device = options.device ?? 'cpu';
  const enabled = options.enabled ?? true;
  const [wasEnabled, previousDtype] = native.setAutocast(device, enabled, dtypeCode(options.dtype ?? 'bfloat16'));
  try {
    const result = fn();
    if (result instanceof Promise) throw new TypeError('autocast cannot wrap async functions');
    return result;
  } finally {
    native.restoreAutocast(device, enabled, wasEnabled, previousDtype);
  }
}

export function isAutocastEnabled(device: AutocastDevice = 'cpu'): boolean {
  return native.autocastState(device)[0];
}
