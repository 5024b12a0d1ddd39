// Loading timm checkpoints (safetensors with timm's key names) into a plain model or into one path of the
// dual-path network. Each architecture's checkpoint filter adjusts the keys and shapes, as timm's do; this module
// picks the target and handles the classifier.
import * as E from '../engine/index.js';
import { StateDictError } from '../nn/index.js';
import type { ImageClassifier } from './classifier.js';
import { ConvNeXt } from './convnext.js';
import { DualPathNet } from './dualpath.js';
import { SwinTransformer } from './swin.js';

type Tensor = E.Tensor;

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
 * Copies a timm state dict into the model, through the architecture's checkpoint filter (Swin: buffers timm
 * recomputes are ignored, relative-position tables of another window size are interpolated). A classifier with
 * another class count is re-initialised (into a path, the checkpoint's head is not used at all). Any other missing,
 * unexpected or misshapen key throws one StateDictError that lists them all, before anything is copied.
 */
export function importTimmStateDict(model: ImageClassifier, checkpoint: ReadonlyMap<string, Tensor>, options: TimmImportOptions = {}): TimmImportReport {
  const target = targetOf(model, options.path);
  const { state, skipped, resized } = target.filterCheckpoint(checkpoint);
  const report: TimmImportReport = { loaded: [], skipped, resized, headReinitialized: false };
  try {
    if (!target.head) {
      for (const key of [...state.keys()].filter((k) => k.startsWith('head.'))) {
        state.delete(key);
        skipped.push({ key, reason: "the checkpoint's classifier; the dual-path network has its own head" });
      }
    }
    const own = target.stateDict();
    const classifier = target.classifierKeys();
    const [weight] = classifier;
    const theirs = weight === undefined ? undefined : state.get(weight)?.shape;
    const ours = weight === undefined ? undefined : own.get(weight)?.shape;
    const otherClasses = theirs !== undefined && ours !== undefined && theirs.join() !== ours.join() && theirs[1] === ours[1];
    if (otherClasses) {
      for (const key of classifier) {
        if (state.has(key)) skipped.push({ key, reason: `classifier for ${theirs[0]} classes; re-initialised for ${target.numClasses}` });
        // The model's own tensors stand in for the checkpoint's (copying a tensor onto itself is a no-op).
        state.set(key, own.get(key)!);
      }
    }
    try {
      target.loadStateDict(state);
    } catch (error) {
      if (error instanceof StateDictError) {
        throw new StateDictError(
          error.missing,
          error.unexpected,
          error.mismatched,
          `this timm checkpoint does not fit the model's ${options.path ? `${options.path} path` : 'architecture'}; check that it is the same variant (depths, widths, heads)`,
        );
      }
      throw error;
    }
    if (otherClasses) {
      target.resetClassifier(target.numClasses);
      report.headReinitialized = true;
    }
    report.loaded = [...state.keys()].filter((key) => !(otherClasses && classifier.includes(key)));
    return report;
  } finally {
    E.dispose(resized.map((key) => state.get(key)!));
  }
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

/** timm checkpoints for a model about to be trained: one file for a plain model or a one-path network, or one per path. */
export type PretrainedWeights = string | { convnext?: string; swin?: string };

export interface PretrainedImport {
  file: string;
  /** The dual-path network's path it went into; absent for a plain model. */
  path?: 'convnext' | 'swin';
  report: TimmImportReport;
}

/**
 * Imports timm checkpoints as a training run's starting point. A single file goes into a plain ConvNeXt or Swin
 * model, or into the one path of a one-path network; a network with both paths takes one file per path.
 */
export async function importPretrained(model: ImageClassifier, weights: PretrainedWeights): Promise<PretrainedImport[]> {
  const paths = model instanceof DualPathNet ? (['convnext', 'swin'] as const).filter((p) => model[p] !== undefined) : [];
  if (typeof weights === 'string') {
    if (paths.length > 1) throw new Error('this network has a ConvNeXt and a Swin path: give a checkpoint for each path (convnext=FILE, swin=FILE)');
    const path = paths[0];
    return [{ file: weights, ...(path ? { path } : {}), report: await importTimmCheckpoint(model, weights, { path }) }];
  }
  if (!(model instanceof DualPathNet)) throw new Error(`${model.constructor.name} has no paths: give its checkpoint alone, without a path name`);
  const imports: PretrainedImport[] = [];
  for (const path of ['convnext', 'swin'] as const) {
    const file = weights[path];
    if (file !== undefined) imports.push({ file, path, report: await importTimmCheckpoint(model, file, { path }) });
  }
  return imports;
}
