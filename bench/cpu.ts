// What the benchmarks record of the CPU, and which precisions they measure on it.
import * as E from '../src/engine/index.js';

export const cpu = E.cpuFeatures();

/**
 * Without AMX or AVX-512-BF16, libtorch emulates bf16 far slower than fp32 (a whole forward pass of the bundled model
 * over 40 times slower, a ConvNeXt block step about 10 times), and the precision table runs fp32 there: the
 * benchmarks measure bf16 only where the CPU has it.
 */
export const nativeBf16 = E.cpuKind(cpu) !== 'plain';
export const PRECISIONS: readonly E.Precision[] = nativeBf16 ? ['fp32', 'bf16'] : ['fp32'];

/** The CPU as every benchmark's JSON records it. */
export const cpuRecord = { model: cpu.model, kind: E.cpuKind(cpu), amx: cpu.amx, avx512_bf16: cpu.avx512bf16 };
