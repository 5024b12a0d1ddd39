// A training run's settings: the defaults, then a --config JSON file, then the flags given on the command line,
// merged in that order (nested settings key by key) and checked against one schema, so that a typo, a wrong type
// or a value out of range is an error naming where it came from instead of a silent default or an endless loop.
import { availableParallelism } from 'node:os';
import { DEFAULT_AUGMENT } from '../data/augment.js';
import { IMAGENET_NORMALIZATION } from '../data/batches.js';
import { DEFAULT_GEOMETRY } from '../data/geometry.js';
import { MAX_SEED } from '../data/split.js';
import { describeModelNames, listModels, type PretrainedWeights, resolveModelName } from '../models/index.js';
import { resolveMpmConfig } from '../preprocess/mpm.js';
import type { TrainingDataOptions } from './data.js';
import type { DistillSettings } from './distill.js';
import type { Precision } from '../engine/index.js';
import type { TrainConfig } from './trainer.js';

/** Everything a run is configured by, as recorded in its config.json. */
export interface RunConfig extends TrainConfig {
  /** The architecture's registered name; a config file may call it `arch`, and earlier names are accepted. */
  model: string;
  inputSize: number;
  dropPathRate: number;
  device: 'auto' | 'cpu' | 'cuda';
  workers: number;
  /** The split's seed is the run's `seed`. */
  data: Omit<TrainingDataOptions, 'seed'>;
  init: string | null;
  /** timm checkpoints to start from: one file, or one per path of the dual-path network. */
  pretrained: PretrainedWeights | null;
  /** Distillation from trained models' soft labels, or null. */
  distill: DistillSettings | null;
}

/** The settings before the precision is fixed for the device ('auto' picks it then). */
export type RunSettings = Omit<RunConfig, 'precision'> & { precision: Precision | 'auto' };

type DeepPartial<T> = T extends readonly unknown[] ? T : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;

/** Any subset of the settings, nested ones included: what a config file or the command line gives (`arch` for `model`). */
export type RunConfigInput = DeepPartial<RunSettings> & { arch?: string };

/** One source of settings, named in error messages (a file's path, or 'the command line'). */
export interface ConfigLayer {
  source: string;
  settings: unknown;
}

export class RunConfigError extends Error {
  override name = 'RunConfigError';
}

/** Distillation's settings when --teacher gives only the teachers: an even share at temperature 2. */
export const DEFAULT_DISTILL = { weight: 0.5, temperature: 2 } as const;

export const DEFAULT_RUN: Omit<RunSettings, 'data'> & { data: Omit<RunSettings['data'], 'source'> } = {
  model: 'dualpath_atto',
  inputSize: 128,
  dropPathRate: 0.1,
  device: 'auto',
  workers: 1,
  init: null,
  pretrained: null,
  distill: null,
  epochs: 30,
  batchSize: 32,
  lr: 1e-3,
  minLr: 1e-6,
  weightDecay: 0.05,
  warmupFraction: 0.05,
  labelSmoothing: 0.1,
  emaDecay: null,
  precision: 'auto',
  clipGrad: 1,
  seed: 0,
  patience: 8,
  augment: DEFAULT_AUGMENT,
  normalization: IMAGENET_NORMALIZATION,
  evalBatchSize: 64,
  checkpointMinutes: 5,
  data: { split: null, mpm: false, valFraction: 0.15, field: DEFAULT_GEOMETRY.field },
};

interface Field {
  /** What a valid value is, for messages. */
  expect: string;
  accepts(value: unknown): boolean;
  /** Nested settings: an object value is checked key by key, and merged into the one below it key by key. */
  fields?: Record<string, Field>;
  /** Nested settings whose missing keys are filled elsewhere (MPM's), so a complete run need not list them. */
  partial?: boolean;
  /** A setting that may be absent from a complete run (the code has a default for it). */
  optional?: boolean;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

const integer = (min: number, max: number): Field => ({
  expect: `an integer from ${min} to ${max}`,
  accepts: (v) => Number.isInteger(v) && (v as number) >= min && (v as number) <= max,
});
const number = (expect: string, ok: (n: number) => boolean): Field => ({ expect, accepts: (v) => isNumber(v) && ok(v) });
const numbers = (expect: string, ok: (values: number[]) => boolean): Field => ({ expect, accepts: (v) => Array.isArray(v) && v.every(isNumber) && ok(v) });
/** A [min, max] pair of positive numbers with min ≤ max, and max ≤ `limit` where there is one. */
const range = (what: string, limit = Infinity): Field =>
  numbers(
    `[min, max] ${what} with 0 < min ≤ max${limit < Infinity ? ` ≤ ${limit}` : ''}`,
    ([lo, hi, ...rest]) => rest.length === 0 && lo > 0 && lo <= hi && hi <= limit,
  );
const choice = (...values: string[]): Field => ({ expect: `one of ${values.map((v) => `"${v}"`).join(', ')}`, accepts: (v) => values.includes(v as string) });
const orNull = (field: Field): Field => ({ ...field, expect: `${field.expect}, or null`, accepts: (v) => v === null || field.accepts(v) });
const optional = (field: Field): Field => ({ ...field, optional: true });
const either = (a: Field, b: Field): Field => ({ expect: `${a.expect}, or ${b.expect}`, accepts: (v) => a.accepts(v) || b.accepts(v) });
const group = (fields: Record<string, Field>, partial = false): Field => ({ expect: 'an object', accepts: isObject, fields, partial });
const text: Field = { expect: 'a non-empty string', accepts: (v) => typeof v === 'string' && v.length > 0 };
const bool: Field = { expect: 'true or false', accepts: (v) => typeof v === 'boolean' };
const anyNumber = number('a number', () => true);
const anyNumbers = numbers('a list of numbers', () => true);
const positive = number('a finite number above 0', (n) => n > 0);
const nonNegative = number('a finite number ≥ 0', (n) => n >= 0);
const fraction = number('a number from 0 to 1', (n) => n >= 0 && n <= 1);
const belowOne = number('a number from 0 up to, not including, 1', (n) => n >= 0 && n < 1);
const openFraction = number('a number between 0 and 1, both excluded', (n) => n > 0 && n < 1);

/** Large enough for any GPU here, small enough to catch a misplaced digit before it allocates. */
const MAX_BATCH = 4096;

const SOURCES = [['dir'], ['csv', 'images'], ['pack']];
const SOURCE: Field = {
  expect: '{"dir": FOLDER}, {"csv": FILE, "images": FOLDER} or {"pack": FILE}',
  accepts: (v) => isObject(v) && SOURCES.some((keys) => Object.keys(v).sort().join() === keys.join() && keys.every((k) => text.accepts(v[k]))),
};

// Value ranges are resolveMpmConfig's to check; the schema knows the keys and the types.
const MPM: Field = {
  expect: 'true, false or an object of MPM settings',
  accepts: (v) => typeof v === 'boolean' || isObject(v),
  partial: true,
  fields: {
    illumination: group({ enabled: bool, sigmas: anyNumbers }, true),
    colour: group({ enabled: bool, quantile: anyNumber, white: orNull(anyNumber) }, true),
    contrast: group({ enabled: bool, clipLimit: anyNumber, tiles: anyNumber }, true),
    morphology: group({ enabled: bool, scales: anyNumbers, weights: anyNumbers }, true),
  },
};

const PRETRAINED: Field = {
  expect: 'a checkpoint file, or {"convnext": FILE, "swin": FILE} with one or both paths',
  accepts: (v) =>
    text.accepts(v) ||
    (isObject(v) && Object.keys(v).length > 0 && Object.entries(v).every(([path, file]) => (path === 'convnext' || path === 'swin') && text.accepts(file))),
};

/** A registered architecture or an earlier name of one; either way the run records the registered name. */
const ARCHITECTURE: Field = {
  expect: `one of ${describeModelNames()}`,
  accepts: (v) => typeof v === 'string' && listModels({ aliases: true }).includes(v),
};

const SCHEMA = group({
  model: ARCHITECTURE,
  // `arch`, as `hemato train --arch` calls it, is another name for `model`.
  arch: optional(ARCHITECTURE),
  inputSize: {
    expect: 'a multiple of 32 from 32 to 1024',
    accepts: (v) => Number.isInteger(v) && (v as number) % 32 === 0 && (v as number) >= 32 && (v as number) <= 1024,
  },
  dropPathRate: belowOne,
  device: choice('auto', 'cpu', 'cuda'),
  // As --workers: more threads than 4 × the cores only thrash.
  workers: integer(0, 4 * availableParallelism()),
  init: orNull(text),
  pretrained: optional(orNull(PRETRAINED)),
  distill: optional(
    orNull(
      group({
        teachers: { expect: 'a list of hemato model files', accepts: (v) => Array.isArray(v) && v.length > 0 && v.every((f) => text.accepts(f)) },
        weight: fraction,
        temperature: positive,
      }),
    ),
  ),
  epochs: integer(1, 100_000),
  batchSize: integer(1, MAX_BATCH),
  evalBatchSize: integer(1, MAX_BATCH),
  lr: positive,
  minLr: nonNegative,
  weightDecay: nonNegative,
  warmupFraction: fraction,
  labelSmoothing: belowOne,
  emaDecay: orNull(openFraction),
  precision: choice('auto', 'fp32', 'bf16'),
  clipGrad: orNull(positive),
  seed: integer(0, MAX_SEED),
  patience: orNull(integer(1, 100_000)),
  checkpointMinutes: positive,
  augment: group({
    hflip: bool,
    vflip: bool,
    rot90: bool,
    crop: orNull(
      group({
        scale: range('area fractions', 1),
        ratio: range('aspect ratios'),
      }),
    ),
    brightness: fraction,
    contrast: fraction,
    saturation: fraction,
    hue: number('a number from 0 to 0.5 (a fraction of a full turn)', (n) => n >= 0 && n <= 0.5),
    scale: optional(orNull(range('zoom factors', 4))),
    frame: optional(orNull(range('frame sides (fractions of the field)', 2))),
    stain: optional(either(fraction, range('stain factors', 3))),
    temperature: optional(fraction),
    blur: optional(number('a blur sigma from 0 to 4 model pixels', (n) => n >= 0 && n <= 4)),
    resolution: optional(number('a resampling factor above 0 and at most 1', (n) => n > 0 && n <= 1)),
    noise: optional(fraction),
    shiftShare: optional(fraction),
    mixup: optional(number('a Beta α from 0 (off) to 10', (n) => n >= 0 && n <= 10)),
    cutmix: optional(number('a Beta α from 0 (off) to 10', (n) => n >= 0 && n <= 10)),
  }),
  normalization: group({
    mean: numbers('3 numbers (R, G, B)', (v) => v.length === 3),
    std: numbers('3 numbers above 0 (R, G, B)', (v) => v.length === 3 && v.every((x) => x > 0)),
  }),
  data: group({
    source: SOURCE,
    split: orNull(text),
    mpm: MPM,
    valFraction: openFraction,
    field: orNull(integer(8, 100_000)),
    normalizeScale: optional(bool),
    whiteBalance: optional(bool),
    normalizeStain: optional(bool),
  }),
});

const show = (value: unknown) => (value === undefined ? 'nothing' : JSON.stringify(value));
const join = (at: string, key: string) => (at ? `${at}.${key}` : key);

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length];
}

function unknownKey(source: string, at: string, key: string, known: string[]): RunConfigError {
  const distance = (k: string) => editDistance(key.toLowerCase(), k.toLowerCase());
  const nearest = [...known].sort((a, b) => distance(a) - distance(b))[0];
  const hint =
    nearest !== undefined && distance(nearest) <= Math.max(2, Math.floor(key.length / 3)) ? `did you mean '${nearest}'?` : `known ones: ${known.join(', ')}`;
  return new RunConfigError(`${source}: unknown setting '${join(at, key)}'; ${hint}`);
}

/** Checks a value against a field; with `complete`, every non-partial nested setting must be present. */
function check(value: unknown, field: Field, at: string, source: string, complete: boolean): void {
  if (!field.accepts(value)) throw new RunConfigError(`${source}: ${at || 'the settings'} must be ${field.expect}, not ${show(value)}`);
  if (!field.fields || !isObject(value)) return;
  for (const [key, v] of Object.entries(value)) {
    // Own keys only: 'constructor' or '__proto__' in a file must be unknown settings, not Object's properties.
    if (!Object.hasOwn(field.fields, key)) throw unknownKey(source, at, key, Object.keys(field.fields));
    const sub = field.fields[key];
    check(v, sub, join(at, key), source, complete);
  }
  if (!complete || field.partial) return;
  const missing = Object.entries(field.fields)
    .filter(([key, sub]) => !sub.optional && !Object.hasOwn(value, key))
    .map(([key]) => key);
  if (missing.length > 0) throw new RunConfigError(`${source}: ${at ? `${at} needs` : 'the settings need'} ${missing.map((k) => `'${k}'`).join(', ')}`);
}

/** Later wins; nested settings merge key by key; lists, null and plain values replace what is below them. */
function merge(base: unknown, over: unknown, field: Field | undefined): unknown {
  if (over === undefined) return base;
  // A bare `true` (--mpm) switches on a setting whose details a file already gave.
  if (over === true && isObject(base) && field?.fields) return base;
  if (!field?.fields || !isObject(base) || !isObject(over)) return structuredClone(over);
  const out: Record<string, unknown> = { ...base };
  for (const [key, v] of Object.entries(over)) out[key] = merge(base[key], v, Object.hasOwn(field.fields, key) ? field.fields[key] : undefined);
  return out;
}

/** A layer's settings with `arch` given as `model`, the key a run records. */
function archAsModel(settings: Record<string, unknown>, source: string): Record<string, unknown> {
  if (!Object.hasOwn(settings, 'arch')) return settings;
  const { arch, ...rest } = settings;
  if (Object.hasOwn(rest, 'model') && rest.model !== arch)
    throw new RunConfigError(`${source}: arch ${show(arch)} and model ${show(rest.model)} are one setting; give one of them`);
  return { ...rest, model: arch };
}

/**
 * Merges the layers over the defaults, checking each for unknown keys, types and ranges, then checks that the
 * result is complete and consistent.
 */
export function resolveRunSettings(layers: readonly ConfigLayer[]): RunSettings {
  let merged: unknown = DEFAULT_RUN;
  for (const { source, settings } of layers) {
    if (!isObject(settings)) throw new RunConfigError(`${source}: expected a JSON object of settings, not ${show(settings)}`);
    check(settings, SCHEMA, '', source, false);
    merged = merge(merged, archAsModel(settings, source), SCHEMA);
  }
  const result = merged as RunSettings;
  result.model = resolveModelName(result.model);
  if (!result.data.source)
    throw new RunConfigError('no data: give a folder of class folders, --images DIR --labels CSV, or --pack FILE (or data.source in --config)');
  const source = layers.map((l) => l.source).join(' + ') || 'the defaults';
  check(result, SCHEMA, '', source, true);
  if (result.minLr > result.lr) throw new RunConfigError(`${source}: minLr (${result.minLr}) is above lr (${result.lr})`);
  if (isObject(result.data.mpm)) {
    try {
      resolveMpmConfig(result.data.mpm);
    } catch (error) {
      throw new RunConfigError(`${source}: data.mpm: ${(error as Error).message}`);
    }
  }
  return structuredClone(result);
}

export interface SettingChange {
  /** The setting's dotted path, e.g. "augment.hue". */
  key: string;
  before: unknown;
  after: unknown;
}

/** Each setting that differs; a data source counts as one setting. */
export function settingsChanges(before: unknown, after: unknown, at = ''): SettingChange[] {
  if (isObject(before) && isObject(after) && !SOURCE.accepts(before)) {
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])];
    return keys.flatMap((key) => settingsChanges(before[key], after[key], join(at, key)));
  }
  return JSON.stringify(before) === JSON.stringify(after) ? [] : [{ key: at, before, after }];
}

export function describeChange(change: SettingChange): string {
  return `${change.key}: ${show(change.before)} → ${show(change.after)}`;
}
