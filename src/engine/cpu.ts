// What the CPU offers, read from /proc/cpuinfo before libtorch loads: the bf16 features that the precision table
// keys on, and the OpenBLAS kernels that suit the CPU.
import { readFileSync } from 'node:fs';

export interface CpuFeatures {
  model: string;
  amx: boolean;
  avx512bf16: boolean;
  /** AVX-512 F, BW, DQ and VL: what OpenBLAS's SkylakeX kernels need. */
  avx512: boolean;
  /** AVX2 with FMA: what OpenBLAS's Haswell and Zen kernels need. */
  avx2: boolean;
  vendor: 'intel' | 'amd' | 'other';
}

/** The CPU's features; on a system without /proc/cpuinfo, none. */
export function cpuFeatures(cpuinfo = readCpuinfo()): CpuFeatures {
  const flags = new Set((/^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? '').split(/\s+/));
  const vendor = /^vendor_id\s*:\s*(\S+)/m.exec(cpuinfo)?.[1];
  return {
    model: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim() ?? 'unknown',
    amx: flags.has('amx_bf16'),
    avx512bf16: flags.has('avx512_bf16'),
    avx512: ['avx512f', 'avx512bw', 'avx512dq', 'avx512vl'].every((f) => flags.has(f)),
    avx2: flags.has('avx2') && flags.has('fma'),
    vendor: vendor === 'GenuineIntel' ? 'intel' : vendor === 'AuthenticAMD' ? 'amd' : 'other',
  };
}

function readCpuinfo(): string {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '';
  }
}

/**
 * The OpenBLAS core (its OPENBLAS_CORETYPE name) for a CPU's instruction sets, or undefined to leave the choice to
 * OpenBLAS. Debian 12's OpenBLAS (0.3.21) picks its kernels by CPU model and falls back to generic SSE3 ones
 * ("Prescott") on models newer than itself, such as Intel's Emerald Rapids: fp32 GEMMs 4–8× slower.
 */
export function openblasCoreFor(cpu: CpuFeatures): string | undefined {
  if (cpu.avx512bf16 && cpu.avx512) return 'Cooperlake';
  if (cpu.avx512) return 'SkylakeX';
  if (cpu.avx2) return cpu.vendor === 'amd' ? 'Zen' : 'Haswell';
  return undefined;
}
