// Options several commands share, parsed and validated once.
import { availableParallelism } from 'node:os';
import { type Command, InvalidArgumentError, type Option } from 'commander';
import { type ClassifierOptions, MAX_BATCH_SIZE } from '../../api/classifier.js';
import { MAX_FIELD, MIN_FIELD } from '../../data/geometry.js';
import type { DatasetSource } from '../../data/dataset.js';
import { DEFAULT_MAX_FILE_BYTES } from '../../data/files.js';
import { DEFAULT_MAX_PIXELS } from '../../data/image.js';
import * as E from '../../engine/index.js';
import { CliError } from '../output.js';

export function parsePositiveInt(value: string): number {
  const n = Number(value);
  // Digits only: Number() would also read '', '0x3' and '1e1'.
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

/** Images per forward pass: a bound keeps one batch in memory (the library's limit). */
export function parseBatchSize(value: string): number {
  const n = parsePositiveInt(value);
  if (n > MAX_BATCH_SIZE) throw new InvalidArgumentError(`expected an integer in 1..${MAX_BATCH_SIZE}`);
  return n;
}

/**
 * A parser for a thread-count flag: an integer from `min` (1; 0 where it means "none") to 4 × the cores. More
 * threads than that only cost memory and start-up time; a typo like 100000 would start them all.
 */
export function parseThreadCount(flag: string, min = 1): (value: string) => number {
  return (value: string) => {
    const cores = availableParallelism();
    const n = Number(value);
    if (value.trim() === '' || !Number.isInteger(n) || n < min || n > 4 * cores) {
      throw new InvalidArgumentError(`${flag} must be an integer in ${min}..${4 * cores} (up to 4 × the ${cores} cores)`);
    }
    return n;
  };
}

const SIZE_UNITS: Record<string, number> = { b: 1, k: 2 ** 10, kib: 2 ** 10, m: 2 ** 20, mib: 2 ** 20, g: 2 ** 30, gib: 2 ** 30 };

/** --max-file-size: a number of MiB, or a size with a unit (B, K, M, G, KiB, MiB, GiB); returns bytes. */
export function parseFileSize(value: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value);
  const unit = match ? SIZE_UNITS[match[2].toLowerCase() || 'm'] : undefined;
  const bytes = match && unit ? Math.floor(Number(match[1]) * unit) : NaN;
  if (!(bytes >= 1 && Number.isSafeInteger(bytes))) throw new InvalidArgumentError('expected a size in MiB, or with a unit: 100K, 64M, 1G, 5000000B');
  return bytes;
}

export const MAX_FILE_SIZE_HELP = `skip files larger than this, in MiB or with a unit (B, K, M, G); FIFOs, devices and other special files are always skipped (default: ${DEFAULT_MAX_FILE_BYTES / 2 ** 20})`;

export function parseNonNegativeInt(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a whole number ≥ 0');
  return n;
}

/** A TCP port from `min` (0 where a free port may be asked for) to 65535. */
export function parsePort(min: 0 | 1): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isInteger(n) || n < min || n > 65535) throw new InvalidArgumentError(`expected a port number in ${min}..65535`);
    return n;
  };
}

export function parseNumber(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidArgumentError('expected a number');
  return n;
}

export function parseFraction(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !(n >= 0 && n <= 1)) throw new InvalidArgumentError('expected a number in [0, 1]');
  return n;
}

export function parseChoice<T extends string>(choices: readonly T[]) {
  return (value: string): T => {
    if (!choices.includes(value as T)) throw new InvalidArgumentError(`expected one of ${choices.join(', ')}`);
    return value as T;
  };
}

/**
 * Options of modelOption() that a command has no use for: left out of its --help; the returned check, run first in
 * its action, refuses each one given, with its reason.
 */
export function notForCommand(command: Command, reasons: Record<string, string>): () => void {
  for (const option of command.options as Option[]) if (option.attributeName() in reasons) option.hideHelp();
  return () => {
    for (const [name, reason] of Object.entries(reasons)) if (command.getOptionValueSource(name) === 'cli') throw new CliError(reason, 2);
  };
}

/** --model, --device, --precision and --threshold, for commands that run a trained model. */
export function modelOption(command: Command): Command {
  return command
    .option('-m, --model <file>', 'a hemato model file (default: the bundled model)')
    .option('--device <device>', 'auto, cpu or cuda', parseChoice(['auto', 'cpu', 'cuda'] as const), 'auto')
    .option(
      '--precision <precision>',
      "auto (the engine's table by device, CPU and model; hemato doctor shows it), fp32 or bf16",
      parseChoice(['auto', 'fp32', 'bf16'] as const),
      'auto',
    )
    .option('--threshold <p>', "override the model's uncertainty threshold", parseFraction)
    .option('--tta', 'test-time augmentation: average over the 8 flips and 90° rotations (8× slower)')
    .option('--pixel-size <um>', "the images' pixel size in µm, where known (default: estimated from the red cells in each image)", parsePixelSize)
    .option(
      '--field <px|none>',
      "expert override of the model's centred field in source pixels, with no scale normalisation (none: the largest centred square)",
      parseField,
    )
    .option('--max-pixels <n>', 'refuse images declaring more pixels than this (decompression bombs)', parsePositiveInt, DEFAULT_MAX_PIXELS);
}

// 'none' stays a string here: commander stores a parser's null as ''.
function parseField(value: string): number | 'none' {
  if (value === 'none') return value;
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < MIN_FIELD || n > MAX_FIELD)
    throw new InvalidArgumentError(`expected a whole number of pixels in ${MIN_FIELD}..${MAX_FIELD}, or 'none'`);
  return n;
}

function parsePixelSize(value: string): number {
  const n = Number(value);
  if (!(n >= 0.01 && n <= 10)) throw new InvalidArgumentError('expected a pixel size in µm from 0.01 to 10 (a blood smear at 100× is about 0.1)');
  return n;
}

export function classifierOptions(options: {
  device: ClassifierOptions['device'];
  precision: ClassifierOptions['precision'];
  threshold?: number;
  field?: number | 'none';
  pixelSize?: number;
  tta?: boolean;
  maxPixels?: number;
}): ClassifierOptions {
  if (options.field !== undefined && options.pixelSize !== undefined)
    throw new CliError('give --pixel-size or --field, not both: --field turns scale normalisation off', 2);
  // The CPU's features come from /proc/cpuinfo; libtorch is asked about CUDA only where that decides.
  if (options.precision === 'bf16' && E.bf16Emulated('cpu') && options.device !== 'cuda' && !(options.device === 'auto' && E.cudaAvailable()))
    process.stderr.write(`hemato: warning: ${E.EMULATED_BF16_WARNING}\n`);
  return {
    device: options.device,
    precision: options.precision,
    uncertaintyThreshold: options.threshold,
    field: options.field === 'none' ? null : options.field,
    pixelSize: options.pixelSize,
    maxPixels: options.maxPixels,
    ...(options.tta ? { tta: true } : {}),
  };
}

/** A labelled data set from an ImageFolder argument or --images DIR --labels CSV. */
export function datasetSource(dir: string | undefined, options: { images?: string; labels?: string }): DatasetSource {
  if (dir && (options.images || options.labels)) throw new CliError('give either a folder of class folders, or --images DIR --labels CSV, not both', 2);
  if (dir) return { dir };
  if (options.images && options.labels) return { csv: options.labels, images: options.images };
  throw new CliError('no data: give a folder of class folders (ImageFolder), or --images DIR --labels CSV (file,label)', 2);
}

/**
 * Refuses a path option given as an empty string (`--report=`): it would be read as not given (no report written)
 * or as the current folder.
 */
export function refuseEmptyPaths(options: Record<string, unknown>, names: readonly string[]): void {
  for (const name of names) {
    if (options[name] === '') throw new CliError(`--${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} needs a path, got an empty one`, 2);
  }
}
