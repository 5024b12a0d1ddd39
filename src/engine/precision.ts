// The default precision, in one table: by device, CPU kind, model family and purpose, each entry with its evidence.
// docs/benchmarks.md ("Default precision") holds the measurements the AVX-512-BF16 entries and the AMX inference
// entries for ConvNeXt and the dual path rest on.
import { autocast } from './autocast.js';
import { cpuFeatures, type CpuFeatures } from './cpu.js';
import type { Device } from './tensor.js';

export type Precision = 'fp32' | 'bf16';
export type ModelFamily = 'convnext' | 'swin' | 'dualpath';
export type Purpose = 'inference' | 'training';
/** What a CPU offers bf16: AMX tiles, AVX-512-BF16 instructions, or neither. */
export type CpuKind = 'amx' | 'avx512bf16' | 'plain';

export interface PrecisionChoice {
  precision: Precision;
  /** The evidence for the choice, in a sentence. */
  why: string;
}

export const MODEL_FAMILIES: readonly ModelFamily[] = ['convnext', 'swin', 'dualpath'];

type Entries = Record<Purpose, Record<ModelFamily, PrecisionChoice>>;

const bf16 = (why: string): PrecisionChoice => ({ precision: 'bf16', why });
const fp32 = (why: string): PrecisionChoice => ({ precision: 'fp32', why });
const everyFamily = (choice: PrecisionChoice): Record<ModelFamily, PrecisionChoice> => ({ convnext: choice, swin: choice, dualpath: choice });

const AMX_INFERENCE = bf16('AMX: bf16 autocast sends GEMMs and convolutions to oneDNN, 530–560 GFLOP/s against about 40 in fp32 (design notes)');
const AVX512_UNCHECKED = fp32(
  'bf16 runs 1.7–1.8× faster here, but no trained model of this family has been checked against fp32 on this CPU kind (docs/benchmarks.md); --precision bf16 opts in',
);

const TABLE: Record<'cuda' | CpuKind, Entries> = {
  cuda: {
    inference: everyFamily(bf16('CUDA runs bf16 GEMMs on tensor cores: 785 TFLOP/s for a matmul on an H100 (design notes)')),
    training: everyFamily(bf16('CUDA runs bf16 GEMMs on tensor cores: a ConvNeXt block trains at about 50 TFLOP/s on an H100 (design notes)')),
  },
  amx: {
    inference: {
      convnext: bf16(
        'measured on PBC validation with the bundled model: 100 % top-1 agreement with fp32, uncertain rate −0.09 points, 1.4× the forward speed in batches (docs/benchmarks.md)',
      ),
      swin: AMX_INFERENCE,
      dualpath: bf16(
        'measured on PBC validation with a trained dualpath-atto: 100 % top-1 agreement with fp32, uncertain rate +0.04 points, 2.5× the forward speed (docs/benchmarks.md)',
      ),
    },
    training: {
      convnext: fp32('convnext_atto alone trains slower under bf16 on AMX, 46–65 → 34–44 img/s: its convolutions already run in oneDNN (design notes)'),
      swin: bf16('Swin (embed 32) trains at 100–125 img/s under bf16 on AMX, 13 in fp32 (design notes)'),
      dualpath: bf16('convnext_atto + Swin trains at 27–36 img/s under bf16 on AMX, 10–11 in fp32 (design notes)'),
    },
  },
  avx512bf16: {
    inference: {
      convnext: bf16(
        'measured on PBC validation with the bundled model: 99.95 % top-1 agreement with fp32, uncertain rate −0.18 points, 1.9–2.0× the forward speed in batches, about even for one image (docs/benchmarks.md)',
      ),
      swin: AVX512_UNCHECKED,
      dualpath: bf16(
        'measured on PBC validation with a trained dualpath-atto: 100 % top-1 agreement with fp32, uncertain rate +0.05 points, 1.6–1.9× the forward speed (docs/benchmarks.md)',
      ),
    },
    training: {
      convnext: bf16('training steps run 1.4–1.5× faster under bf16 here (docs/benchmarks.md)'),
      swin: bf16('training steps run 2.0–2.9× faster under bf16 here (docs/benchmarks.md)'),
      dualpath: bf16('training steps run 1.4–1.6× faster under bf16 here (docs/benchmarks.md)'),
    },
  },
  plain: {
    inference: everyFamily(fp32('no AMX-BF16 or AVX-512-BF16: bf16 would be emulated, slower than fp32')),
    training: everyFamily(fp32('no AMX-BF16 or AVX-512-BF16: bf16 would be emulated, slower than fp32')),
  },
};

export function cpuKind(cpu: Pick<CpuFeatures, 'amx' | 'avx512bf16'>): CpuKind {
  return cpu.amx ? 'amx' : cpu.avx512bf16 ? 'avx512bf16' : 'plain';
}

/** The family of a registered architecture name (dualpath-atto, convnext-only, swin_tiny_…); undefined if unknown. */
export function modelFamily(architecture: string): ModelFamily | undefined {
  return MODEL_FAMILIES.find((family) => architecture.startsWith(family));
}

export interface PrecisionQuery {
  device: string;
  /** Without a family: the choice every family shares, else fp32. */
  family?: ModelFamily;
  purpose?: Purpose;
  /** This machine's CPU unless given (tests inject it). */
  cpu?: Pick<CpuFeatures, 'amx' | 'avx512bf16'>;
}

/** The table's entries for a device (and CPU): by purpose, then family. */
export function precisionEntries(device: string, cpu: Pick<CpuFeatures, 'amx' | 'avx512bf16'> = cpuFeatures()): Entries {
  return TABLE[device.startsWith('cuda') ? 'cuda' : cpuKind(cpu)];
}

/** The default precision for a device, model family and purpose, and why. */
export function precisionFor(query: PrecisionQuery): PrecisionChoice {
  const byFamily = precisionEntries(query.device, query.cpu)[query.purpose ?? 'inference'];
  if (query.family) return byFamily[query.family];
  const choices = MODEL_FAMILIES.map((family) => byFamily[family]);
  if (choices.every((c) => c.precision === choices[0].precision)) return choices[0];
  const split = MODEL_FAMILIES.map((family) => `${family} ${byFamily[family].precision}`).join(', ');
  return fp32(`the families differ here (${split}); without the model's family, fp32`);
}

/**
 * Whether bf16 on this device is emulated: a CPU without AMX-BF16 or AVX-512-BF16 runs it in software, many times
 * slower than fp32 (docs/benchmarks.md) and with running sums rounded to bf16.
 */
export function bf16Emulated(device: string, cpu: Pick<CpuFeatures, 'amx' | 'avx512bf16'> = cpuFeatures()): boolean {
  return !device.startsWith('cuda') && cpuKind(cpu) === 'plain';
}

export const EMULATED_BF16_WARNING =
  'bf16 is emulated on this CPU (it has neither AMX-BF16 nor AVX-512-BF16): many times slower than fp32, and less accurate; --precision auto chooses fp32 here';

/** Runs fn under bf16 autocast on the device's kind (CPU or CUDA) when precision is bf16, as it is otherwise. */
export function withPrecision<T>(precision: Precision, device: Device, fn: () => T): T {
  return precision === 'bf16' ? autocast(fn, { device: device.startsWith('cuda') ? 'cuda' : 'cpu', dtype: 'bfloat16' }) : fn();
}
