// Loading timm checkpoints (safetensors with timm's key names) into a plain model or into one path of the
// dual-path network, with the adjustments timm's own checkpoint filters make.
import * as E from '../engine/index.js';
import { StateDictError } from '../nn/index.js';
import type { ImageClassifier } from './classifier.js';
import { ConvNeXt } from './convnext.js';
import { DualPathNet } from './dualpath.js';
import { SwinTransformer } from './swin.js';

type Tensor = E.Tensor;

/** Buffers timm recomputes and no longer saves, though older hub files carry them. */
const NON_PERSISTENT = ['relative_position_index', 'attn_mask'];
const BIAS_TABLE = 'relative_position_bias_table';

export interface TimmImportOptions {
  /** Load into this path of a dual-path model; leave out to load a plain ConvNeXt or Swin model. */
  path?: 'convnext' | 'swin';
}

export interface TimmImportReport {
  /** Keys copied into the model. */
  loaded: string[];
  /** Keys deliberately not used, each with the reason. */
  skipped: { key: string; reason: string }[];
  /** Relative-position tables interpolated to this model's window. */
  resized: string[];
  /** True when the checkpoint's classifier had another class count, so the model's head was re-drawn. */
  headReinitialized: boolean;
}

function targetOf(model: ImageClassifier, path: TimmImportOptions['path']): ConvNeXt | SwinTransformer {
  if (!path) {
    if (model instanceof ConvNeXt || model instanceof SwinTransformer) return model;
    throw new Error(`${model.constructor.name} is not a timm architecture; pass { path: 'convnext' } or { path: 'swin' } to load a timm checkpoint into one of its paths`);
  }
  const target = model instanceof DualPathNet ? model[path] : undefined;
  if (!target) throw new Error(`this model has no '${path}' path to load a timm checkpoint into`);
  return target;
}

/**
 * Copies a timm state dict into the model. Non-persistent buffers are ignored, relative-position tables of another
 * window size are interpolated, and a classifier with another class count is re-initialised (into a path, the
 * checkpoint's head is not used at all). Any other missing, unexpected or misshapen key throws one StateDictError
 * that lists them all, before anything is copied.
 */
export function importTimmStateDict(model: ImageClassifier, checkpoint: ReadonlyMap<string, Tensor>, options: TimmImportOptions = {}): TimmImportReport {
  const target = targetOf(model, options.path);
  const own = target.stateDict();
  const report: TimmImportReport = { loaded: [], skipped: [], resized: [], headReinitialized: false };
  const classifierMismatch = target.head !== undefined && checkpoint.has('head.fc.weight')
    && checkpoint.get('head.fc.weight')!.shape.join() !== own.get('head.fc.weight')?.shape.join()
    && checkpoint.get('head.fc.weight')!.shape[1] === own.get('head.fc.weight')?.shape[1];
  const usable = new Map<string, Tensor>();
  const created: Tensor[] = [];
  try {
    for (const [key, value] of checkpoint) {
      const leaf = key.slice(key.lastIndexOf('.') + 1);
      if (NON_PERSISTENT.includes(leaf)) {
        report.skipped.push({ key, reason: 'non-persistent buffer, recomputed by the model' });
      } else if (!target.head && key.startsWith('head.')) {
        report.skipped.push({ key, reason: "the checkpoint's classifier; the dual-path network has its own head" });
      } else if (classifierMismatch && key.startsWith('head.fc.')) {
        report.skipped.push({ key, reason: `classifier for ${checkpoint.get('head.fc.weight')!.shape[0]} classes; re-initialised for ${target.numClasses}` });
      } else if (leaf === BIAS_TABLE && own.has(key) && own.get(key)!.shape.join() !== value.shape.join() && own.get(key)!.shape[1] === value.shape[1]) {
        const window = windowOfTable(own.get(key)!.shape[0], key);
        const resized = resizeRelativePositionBiasTable(value, [window, window]);
        created.push(resized);
        usable.set(key, resized);
        report.resized.push(key);
      } else {
        usable.set(key, value);
      }
    }
    // The re-initialised classifier keeps its own tensors (copying a tensor onto itself is a no-op).
    if (classifierMismatch) for (const key of ['head.fc.weight', 'head.fc.bias']) if (own.has(key)) usable.set(key, own.get(key)!);
    try {
      target.loadStateDict(usable);
    } catch (error) {
      if (error instanceof StateDictError) {
        throw new StateDictError(error.missing, error.unexpected, error.mismatched, `this timm checkpoint does not fit the model's ${options.path ? `${options.path} path` : 'architecture'}; check that it is the same variant (depths, widths, heads)`);
      }
      throw error;
    }
  } finally {
    E.dispose(created);
  }
  if (classifierMismatch) {
    target.head!.fc.resetParameters();
    report.headReinitialized = true;
  }
  report.loaded = [...usable.keys()].filter((key) => !(classifierMismatch && key.startsWith('head.fc.')));
  return report;
}

/** Reads a timm .safetensors file and imports it (see importTimmStateDict). */
export async function importTimmCheckpoint(model: ImageClassifier, file: string, options: TimmImportOptions = {}): Promise<TimmImportReport> {
  const { tensors } = await E.loadSafetensors(file);
  try {
    return importTimmStateDict(model, tensors, options);
  } finally {
    E.dispose([...tensors.values()]);
  }
}

function windowOfTable(rows: number, key: string): number {
  const side = Math.round(Math.sqrt(rows));
  if (side * side !== rows || side % 2 === 0) throw new Error(`${key}: a table of ${rows} rows is not a (2w−1)² grid of a square window`);
  return (side + 1) / 2;
}

/**
 * Where the source table's rows sit when stretched or squeezed to dst positions: spacing grows geometrically from
 * the centre so that near offsets keep their values (the BEiT/timm scheme; q is found by bisection as timm does).
 */
function sourcePositions(src: number, dst: number): number[] {
  const half = Math.floor(src / 2);
  let left = 1.01;
  let right = 1.5;
  let q = left;
  while (right - left > 1e-6) {
    q = (left + right) / 2;
    const sum = (1 - q ** half) / (1 - q);
    if (sum > Math.floor(dst / 2)) right = q;
    else left = q;
  }
  const distances: number[] = [];
  let current = 1;
  for (let i = 0; i < half; i++) {
    distances.push(current);
    current += q ** (i + 1);
  }
  return [...distances.map((d) => -d).reverse(), 0, ...distances];
}

/** Linear interpolation weights on an uneven grid, clamping outside it (timm's RegularGridInterpolator). */
function bracket(grid: number[], x: number): { lo: number; hi: number; wLo: number; wHi: number } {
  let hi = grid.findIndex((p) => p >= x);
  if (hi < 0) hi = grid.length - 1;
  const lo = Math.max(hi - 1, 0);
  let dLo = Math.max(x - grid[lo], 0);
  let dHi = Math.max(grid[hi] - x, 0);
  if (dLo === 0 && dHi === 0) dLo = dHi = 1;
  // The value at lo is weighted by the distance to hi, and vice versa.
  return { lo, hi, wLo: dHi / (dLo + dHi), wHi: dLo / (dLo + dHi) };
}

/**
 * Resizes a Swin relative-position bias table [(2w−1)², heads] to another window, as timm does when a checkpoint's
 * window differs from the model's: geometric source positions, bilinear interpolation per head.
 */
export function resizeRelativePositionBiasTable(table: Tensor, window: [number, number]): Tensor {
  const [rows, heads] = table.shape;
  const src = Math.round(Math.sqrt(rows));
  if (table.ndim !== 2 || src * src !== rows) throw new RangeError(`relative-position table must be [(2w−1)², heads], got [${table.shape}]`);
  const dst: [number, number] = [2 * window[0] - 1, 2 * window[1] - 1];
  if (dst[0] === src && dst[1] === src) return table.clone();
  const values = E.tidy(() => table.float().contiguous().data() as Float32Array);
  const ys = sourcePositions(src, dst[0]);
  const xs = sourcePositions(src, dst[1]);
  const out = new Float32Array(dst[0] * dst[1] * heads);
  for (let a = 0; a < dst[0]; a++) {
    const by = bracket(ys, a - Math.floor(dst[0] / 2));
    for (let b = 0; b < dst[1]; b++) {
      const bx = bracket(xs, b - Math.floor(dst[1] / 2));
      for (let h = 0; h < heads; h++) {
        const at = (i: number, j: number) => values[(i * src + j) * heads + h];
        out[(a * dst[1] + b) * heads + h] =
          by.wLo * (bx.wLo * at(by.lo, bx.lo) + bx.wHi * at(by.lo, bx.hi)) + by.wHi * (bx.wLo * at(by.hi, bx.lo) + bx.wHi * at(by.hi, bx.hi));
      }
    }
  }
  return E.tidy(() => E.tensor(out, [dst[0] * dst[1], heads]).to(table.dtype));
}
