// The model registry, after timm's: each architecture file registers its own variants under snake_case names
// (family_variant) when it loads, and names from before that scheme stay as aliases. This module is the mechanism
// only; it knows no architecture, so look names up through src/models/index.ts, which loads every one of them.
import type * as E from '../engine/index.js';
import type { ImageClassifier } from './classifier.js';

export interface ModelOptions {
  numClasses: number;
  /** Side of the square input in pixels (default 224). Swin's windows are fixed by it; it must be a multiple of 32. */
  inputSize?: number;
  /** Dropout before the classifier (default 0). */
  dropRate?: number;
  /** Stochastic depth, rising linearly to this rate over each path's blocks (default 0). */
  dropPathRate?: number;
  /** Dual-path models: iterative AFF instead of AFF. */
  iterativeAff?: boolean;
  /** Dual-path models: the common width both paths are projected to before AFF. */
  fusionDim?: number;
  /**
   * Only with the earlier ablation names (convnext-only, swin-only, dualpath-concat): their paths' scale, atto by
   * default. The current names carry it (convnext_only_tiny).
   */
  scale?: 'atto' | 'tiny';
  /** Swin paths and models: override the window (default: per variant). */
  windowSize?: number;
  device?: E.Device;
}

/** What a registered builder receives: the options with their defaults filled in. */
export type ResolvedModelOptions = Required<Pick<ModelOptions, 'numClasses' | 'inputSize' | 'dropRate' | 'dropPathRate'>> &
  Omit<ModelOptions, 'device' | 'scale'>;

export type ModelBuilder = (options: ResolvedModelOptions) => ImageClassifier;

/** An alias's canonical name, which may depend on the options a model file recorded with it (the ablations' scale). */
export type AliasTarget = string | ((options: Pick<ModelOptions, 'scale'>) => string);

const MODELS = new Map<string, ModelBuilder>();
const ALIASES = new Map<string, AliasTarget>();

const SNAKE_CASE = /^[a-z][a-z0-9]*(_[a-z0-9]+)*$/;

function checkFree(name: string): void {
  if (MODELS.has(name) || ALIASES.has(name)) throw new Error(`model name '${name}' is already registered`);
}

/** Registers a variant under a timm-style name (snake_case, family first: convnext_atto), as timm's @register_model. */
export function registerModel(name: string, build: ModelBuilder): void {
  if (!SNAKE_CASE.test(name)) throw new RangeError(`model name '${name}' must be snake_case, family first (convnext_atto)`);
  checkFree(name);
  MODELS.set(name, build);
}

/** Registers another name for a registered variant, so that files and settings that carry it keep working. */
export function registerModelAlias(alias: string, target: AliasTarget): void {
  checkFree(alias);
  if (typeof target === 'string' && !MODELS.has(target)) throw new Error(`alias '${alias}' names '${target}', which is not registered`);
  ALIASES.set(alias, target);
}

/** The registered names, sorted; with { aliases: true } the aliases follow them (every name createModel() accepts). */
export function listModels(options: { aliases?: boolean } = {}): string[] {
  const names = [...MODELS.keys()].sort();
  return options.aliases ? [...names, ...[...ALIASES.keys()].sort()] : names;
}

/** Each alias with the name it stands for (for an ablation's alias, with its default scale, atto). */
export function modelAliases(): Record<string, string> {
  return Object.fromEntries([...ALIASES.keys()].sort().map((alias) => [alias, resolveModelName(alias)]));
}

/** The canonical name for a registered name or an alias; an unknown name is an error that lists the valid ones. */
export function resolveModelName(name: string, options: Pick<ModelOptions, 'scale'> = {}): string {
  if (MODELS.has(name)) return name;
  const target = ALIASES.get(name);
  if (MODELS.size === 0) throw new Error(`no architecture is registered yet: import createModel from src/models/index.js, which loads them all`);
  if (target === undefined) throw new Error(`unknown model '${name}'; choose one of: ${describeModelNames()}`);
  const canonical = typeof target === 'string' ? target : target(options);
  if (!MODELS.has(canonical)) throw new Error(`model '${name}' with these options would be '${canonical}', which is not registered`);
  return canonical;
}

/** The canonical names and the aliases, for messages about a name. */
export function describeModelNames(): string {
  const aliases = Object.entries(modelAliases()).map(([alias, canonical]) => `${alias} → ${canonical}`);
  return `${listModels().join(', ')}${aliases.length > 0 ? ` (earlier names, still accepted: ${aliases.join(', ')})` : ''}`;
}

/**
 * Builds a named model (a registered name or an alias) with fresh timm-style initial weights. The canonical name
 * and the resolved options are recorded on model.spec, so that saveModel() stores them and loadModel() can rebuild
 * the same architecture.
 */
export function createModel(name: string, options: ModelOptions): ImageClassifier {
  const architecture = resolveModelName(name, options);
  const { device, scale, ...rest } = options;
  if (scale !== undefined && !ALIASES.has(name)) {
    throw new RangeError(`the scale option goes with the earlier ablation names only; '${name}' has its scale in the name (…_atto, …_tiny)`);
  }
  const resolved: ResolvedModelOptions = { inputSize: 224, dropRate: 0, dropPathRate: 0, ...rest };
  if (!Number.isInteger(resolved.inputSize) || resolved.inputSize < 32 || resolved.inputSize % 32 !== 0) {
    throw new RangeError(`inputSize must be a multiple of 32 (at least 32), got ${resolved.inputSize}`);
  }
  const model = MODELS.get(architecture)!(resolved);
  model.spec = { architecture, options: { ...resolved } };
  return device && device !== 'cpu' ? model.to(device) : model;
}
