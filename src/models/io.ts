// A whole model in one file: the state dict as safetensors, and in its metadata one JSON document that says how to
// rebuild and use the model (architecture, options, classes, input size, normalisation, preprocessing, provenance).
import path from 'node:path';
import * as E from '../engine/index.js';
import type { ImageClassifier } from './classifier.js';
import { createModel, describeModelNames, listModels, type ModelOptions } from './registry.js';
// A model file may name any architecture: load them all, so that each has registered its variants.
import './convnext.js';
import './swin.js';
import './dualpath.js';

/** The metadata key that holds hemato's JSON document. */
const METADATA_KEY = 'hemato';
const FORMAT = 'hemato-model';
/** The format a training checkpoint's metadata names: weights, optimiser state and loop position, not a model. */
export const CHECKPOINT_FORMAT = 'hemato-checkpoint';
const VERSION = 1;

export interface Normalization {
  mean: [number, number, number];
  std: [number, number, number];
}

/** What the caller says about a model when saving it; the architecture and options come from the model itself. */
export interface ModelInfo {
  classes: string[];
  normalization: Normalization;
  /** How an input becomes what the model saw in training (geometry, scale, background, MPM), as the data layer records it. */
  preprocessing?: object | null;
  /** Softmax temperature from calibration, when there is one. */
  temperature?: number;
  /** Top probabilities below this are flagged uncertain (chosen on validation data). */
  uncertaintyThreshold?: number;
  /** Where the model came from: data set, training run, commit, dates, metrics. */
  provenance?: Record<string, unknown>;
  /** The out-of-distribution detector fitted on the training data, when there is one. */
  ood?: OodInfo | null;
  /** Calibration for test-time augmentation (its averaged logits are less spread than a single view's). */
  tta?: TtaCalibration;
  /** The scale estimate from the network's features, where one was fitted. */
  featureScale?: FeatureScale | null;
}

/**
 * A linear estimate of how far an image is magnified from the training scale, from its pooled features:
 * log magnification = bias + Σ weights · features (eval/feature-scale.ts).
 */
export interface FeatureScale {
  pooling: OodPooling;
  bias: number;
  weights: number[];
}

export interface TtaCalibration {
  temperature: number;
  uncertaintyThreshold: number;
}

/**
 * The detector's features: 'stage-std', the spatial standard deviation of each stage's map (how strongly each
 * filter responds across the image, at every depth); 'pre-logits', the pooled features the classifier reads.
 */
export type OodPooling = 'stage-std' | 'pre-logits';
export const OOD_POOLINGS: readonly OodPooling[] = ['stage-std', 'pre-logits'];

/** Mahalanobis distance on pooled features: class means and the shared precision matrix, with a threshold. */
export interface OodInfo {
  kind: 'mahalanobis';
  /** Files made before the choice record none, and mean 'pre-logits'. */
  pooling: OodPooling;
  /** Distances above this are flagged (chosen on validation data). */
  threshold: number;
  /** The fraction of validation images the threshold flags. */
  validationFlagged: number;
  means: Float32Array;
  precision: Float32Array;
  features: number;
}

/** safetensors keys of the detector's arrays; they sit beside the state dict and never reach the network. */
const OOD_MEANS = 'hemato.ood.means';
const OOD_PRECISION = 'hemato.ood.precision';

export interface ModelMetadata extends Required<Omit<ModelInfo, 'temperature' | 'uncertaintyThreshold' | 'ood' | 'tta' | 'featureScale'>> {
  format: typeof FORMAT;
  version: number;
  architecture: string;
  options: Omit<ModelOptions, 'device'>;
  inputSize: number;
  /** The dtype the weights are stored in; they load as float32 either way. */
  dtype: 'float32' | 'float16' | 'bfloat16';
  temperature?: number;
  uncertaintyThreshold?: number;
  /** The out-of-distribution detector's scalars; its arrays are tensors in the file. */
  outOfDistribution?: Omit<OodInfo, 'means' | 'precision' | 'pooling'> & { pooling?: OodPooling };
  tta?: TtaCalibration;
  featureScale?: FeatureScale;
}

export interface SaveModelOptions {
  /** float16 halves the file (for bundled models); the weights load back as float32. */
  dtype?: 'float32' | 'float16' | 'bfloat16';
}

/** Saves the model's state dict and metadata to one .safetensors file (written atomically). */
export async function saveModel(file: string, model: ImageClassifier, info: ModelInfo, options: SaveModelOptions = {}): Promise<ModelMetadata> {
  if (!model.spec) throw new Error('saveModel needs a model made by createModel(), which records how to rebuild it');
  if (info.classes.length !== model.numClasses) {
    throw new RangeError(`saveModel: ${info.classes.length} class names given for a model with ${model.numClasses} outputs`);
  }
  if (new Set(info.classes).size !== info.classes.length) throw new RangeError('saveModel: class names must be distinct');
  for (const key of ['mean', 'std'] as const) {
    const values = info.normalization[key];
    if (values.length !== 3 || !values.every(Number.isFinite) || (key === 'std' && !values.every((v) => v > 0))) {
      throw new RangeError(`saveModel: normalization.${key} must be three finite numbers${key === 'std' ? ' above zero' : ''}, got [${values}]`);
    }
  }
  const dtype = options.dtype ?? 'float32';
  const metadata: ModelMetadata = {
    format: FORMAT,
    version: VERSION,
    architecture: model.spec.architecture,
    options: model.spec.options as ModelMetadata['options'],
    inputSize: model.inputSize,
    classes: [...info.classes],
    normalization: info.normalization,
    preprocessing: info.preprocessing ?? null,
    provenance: info.provenance ?? {},
    dtype,
    ...(info.temperature !== undefined ? { temperature: info.temperature } : {}),
    ...(info.uncertaintyThreshold !== undefined ? { uncertaintyThreshold: info.uncertaintyThreshold } : {}),
    ...(info.tta ? { tta: { temperature: info.tta.temperature, uncertaintyThreshold: info.tta.uncertaintyThreshold } } : {}),
    ...(info.featureScale ? { featureScale: { pooling: info.featureScale.pooling, bias: info.featureScale.bias, weights: [...info.featureScale.weights] } } : {}),
    ...(info.ood ? { outOfDistribution: { kind: info.ood.kind, pooling: info.ood.pooling, threshold: info.ood.threshold, validationFlagged: info.ood.validationFlagged, features: info.ood.features } } : {}),
  };
  const state = model.stateDict();
  const converted = new Map<string, E.Tensor>();
  try {
    for (const [key, t] of state) converted.set(key, E.noGrad(() => (t.dtype === dtype || !E.isFloating(t.dtype) ? t.detach() : t.to(dtype))));
    if (info.ood) {
      // Kept in float32 whatever the weights' dtype: distances are sums of hundreds of squared terms.
      const { means, precision, features } = info.ood;
      converted.set(OOD_MEANS, E.tensor(means, [means.length / features, features]));
      converted.set(OOD_PRECISION, E.tensor(precision, [features, features]));
    }
    await E.saveSafetensors(file, converted, { [METADATA_KEY]: JSON.stringify(metadata) });
  } finally {
    E.dispose([...converted.values()]);
  }
  return metadata;
}

export interface LoadedModel {
  model: ImageClassifier;
  metadata: ModelMetadata;
  ood: OodInfo | null;
}

/** Rebuilds a model saved by saveModel(), in eval mode with float32 weights. */
export async function loadModel(file: string, options: { device?: E.Device } = {}): Promise<LoadedModel> {
  const { tensors, metadata: raw } = await E.loadSafetensors(file);
  try {
    const metadata = parseMetadata(modelDocument(raw, file), file);
    const ood = readOod(tensors, metadata, file);
    const model = named(file, () => createModel(metadata.architecture, { ...metadata.options }));
    try {
      named(file, () => model.loadStateDict(tensors));
    } catch (error) {
      model.dispose();
      throw error;
    }
    model.eval();
    if (options.device && options.device !== 'cpu') model.to(options.device);
    return { model, metadata, ood };
  } finally {
    E.dispose([...tensors.values()]);
  }
}

/** Takes the detector's arrays out of the tensors (so that the state dict is the network's alone) and checks them. */
function readOod(tensors: Map<string, E.Tensor>, metadata: ModelMetadata, file: string): OodInfo | null {
  const means = tensors.get(OOD_MEANS);
  const precision = tensors.get(OOD_PRECISION);
  tensors.delete(OOD_MEANS);
  tensors.delete(OOD_PRECISION);
  try {
    if (!metadata.outOfDistribution) return null;
    const { features } = metadata.outOfDistribution;
    if (!means || !precision) throw new Error(`${file}: the metadata names an out-of-distribution detector, but its arrays are missing; the file is damaged`);
    if (means.ndim !== 2 || means.shape[0] !== metadata.classes.length || means.shape[1] !== features || precision.ndim !== 2 || precision.shape[0] !== features || precision.shape[1] !== features) {
      throw new Error(`${file}: the out-of-distribution arrays have shapes [${means.shape}] and [${precision.shape}], expected [${metadata.classes.length}, ${features}] and [${features}, ${features}]`);
    }
    return {
      ...metadata.outOfDistribution,
      pooling: metadata.outOfDistribution.pooling ?? 'pre-logits',
      means: means.float().data() as Float32Array,
      precision: precision.float().data() as Float32Array,
    };
  } finally {
    E.dispose([means, precision].filter((t): t is E.Tensor => t !== undefined));
  }
}

/** Runs a step of loading; its error (of whatever class) then names the file. */
function named<T>(file: string, step: () => T): T {
  try {
    return step();
  } catch (error) {
    if (error instanceof Error && !error.message.startsWith(file)) error.message = `${file}: ${error.message}`;
    throw error;
  }
}

const DTYPES = ['float32', 'float16', 'bfloat16'];
/** Beyond any model hemato trains; the bounds keep a damaged file from building a network of gigabytes. */
export const MAX_INPUT_SIZE = 1024;
const MAX_CLASSES = 10_000;
const MAX_WIDTH = 4096;

type Json = Record<string, unknown>;
const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);
const isNumber = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value);
const inRange = (value: unknown, low: number, high: number): boolean => isNumber(value) && value >= low && value <= high;
const isCount = (value: unknown, high: number): boolean => Number.isInteger(value) && inRange(value, 1, high);
/** A value as JSON, cut short: a damaged file can hold anything. */
const shown = (value: unknown): string => {
  const text = value === undefined ? 'nothing' : JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
};

/** A model file's metadata, read from its header alone (no weights are loaded) and checked as loadModel checks it. */
export async function readModelMetadata(file: string): Promise<ModelMetadata> {
  return parseMetadata(modelDocument(await E.readSafetensorsMetadata(file), file), file);
}

/**
 * Whether a safetensors file is a model saved by hemato (it carries hemato's metadata), as against a timm checkpoint;
 * a training checkpoint, which is neither, is an Error that says what to do with it.
 */
export async function isHematoModelFile(file: string): Promise<boolean> {
  return modelDocument(await E.readSafetensorsMetadata(file), file) !== undefined;
}

/** A file's hemato metadata document; a training checkpoint is refused here, with where its run's models are. */
function modelDocument(metadata: Record<string, string> | undefined, file: string): string | undefined {
  if (metadata?.format === CHECKPOINT_FORMAT)
    throw new Error(
      `${file} is a training checkpoint, not a model: continue its run with hemato train --resume --out ${path.dirname(file)}, or use the run's best.safetensors or model.safetensors`,
    );
  return metadata?.[METADATA_KEY];
}

/**
 * Parses hemato's metadata document and checks every field a model is built and used from, so that a damaged or
 * hand-edited file fails at load with one message naming the file and the field, never later with a wrong answer.
 */
export function parseMetadata(json: string | undefined, file: string): ModelMetadata {
  if (json === undefined)
    throw new Error(
      `${file} has no hemato metadata; it is not a model saved by hemato (a timm checkpoint? train from it with hemato train --pretrained, or load it with importTimmCheckpoint)`,
    );
  let metadata: unknown;
  try {
    metadata = JSON.parse(json);
  } catch {
    throw new Error(`${file}: the hemato metadata is not valid JSON; the file is damaged`);
  }
  const problem = metadataProblem(metadata);
  if (problem !== null) throw new Error(`${file}: ${problem}`);
  return metadata as ModelMetadata;
}

/** The first thing wrong with a metadata document, or null. */
function metadataProblem(m: unknown): string | null {
  if (!isObject(m)) return `the hemato metadata is ${shown(m)}, not an object; the file is damaged`;
  if (m.format !== FORMAT) return `metadata format ${shown(m.format)} is not '${FORMAT}'`;
  if (!isCount(m.version, Number.MAX_SAFE_INTEGER)) return `metadata version ${shown(m.version)} is not a positive integer`;
  if ((m.version as number) > VERSION) return `it was saved by a newer hemato (model format ${m.version}); upgrade hemato to load it`;
  if (typeof m.architecture !== 'string' || !listModels({ aliases: true }).includes(m.architecture)) return `architecture ${shown(m.architecture)} is not one of the registered models: ${describeModelNames()}`;
  return classesProblem(m.classes) ?? optionsProblem(m) ?? normalizationProblem(m.normalization) ?? usageProblem(m);
}

function classesProblem(classes: unknown): string | null {
  if (!Array.isArray(classes) || !isCount(classes.length, MAX_CLASSES)) return `classes must be a list of 1 to ${MAX_CLASSES} names, got ${Array.isArray(classes) ? `${classes.length} names` : shown(classes)}`;
  const bad = classes.find((name) => typeof name !== 'string' || name.trim() === '');
  if (bad !== undefined) return `class name ${shown(bad)} is not a non-empty string`;
  const repeated = classes.find((name, i) => classes.indexOf(name) !== i);
  if (repeated !== undefined) return `class name ${shown(repeated)} appears twice; every output needs its own name`;
  return null;
}

/** The architecture's options, which must agree with the class names and input size the file states. */
function optionsProblem(m: Json): string | null {
  const options = m.options;
  if (!isObject(options)) return `options must be an object, got ${shown(options)}`;
  const classes = (m.classes as string[]).length;
  if (options.numClasses !== classes) return `${classes} class names for a model with ${shown(options.numClasses)} outputs (options.numClasses)`;
  if (!(isCount(m.inputSize, MAX_INPUT_SIZE) && (m.inputSize as number) % 32 === 0)) return `inputSize must be a multiple of 32 in 32..${MAX_INPUT_SIZE}, got ${shown(m.inputSize)}`;
  if (options.inputSize !== m.inputSize) return `options.inputSize ${shown(options.inputSize)} differs from inputSize ${m.inputSize}`;
  for (const key of ['dropRate', 'dropPathRate']) if (options[key] !== undefined && !inRange(options[key], 0, 1)) return `options.${key} must be a number in [0, 1], got ${shown(options[key])}`;
  for (const key of ['fusionDim', 'windowSize']) if (options[key] !== undefined && !isCount(options[key], MAX_WIDTH)) return `options.${key} must be an integer in 1..${MAX_WIDTH}, got ${shown(options[key])}`;
  if (options.scale !== undefined && options.scale !== 'atto' && options.scale !== 'tiny') return `options.scale must be 'atto' or 'tiny', got ${shown(options.scale)}`;
  if (options.iterativeAff !== undefined && typeof options.iterativeAff !== 'boolean') return `options.iterativeAff must be true or false, got ${shown(options.iterativeAff)}`;
  return null;
}

function normalizationProblem(normalization: unknown): string | null {
  if (!isObject(normalization)) return `normalization must be an object with mean and std, got ${shown(normalization)}`;
  for (const key of ['mean', 'std']) {
    const values = normalization[key];
    const ok = Array.isArray(values) && values.length === 3 && values.every((v) => isNumber(v) && (key === 'mean' || v > 0));
    if (!ok) return `normalization.${key} must be three finite numbers${key === 'std' ? ' above zero' : ''}, got ${shown(values)}`;
  }
  return null;
}

/** The fields that shape what the classifier does with the outputs. */
function usageProblem(m: Json): string | null {
  if (m.dtype !== undefined && !DTYPES.includes(m.dtype as string)) return `dtype ${shown(m.dtype)} is not one of ${DTYPES.join(', ')}`;
  if (m.preprocessing !== undefined && m.preprocessing !== null && !isObject(m.preprocessing)) return `preprocessing must be an object or null, got ${shown(m.preprocessing)}`;
  if (m.provenance !== undefined && !isObject(m.provenance)) return `provenance must be an object, got ${shown(m.provenance)}`;
  if (m.temperature !== undefined && !(isNumber(m.temperature) && m.temperature > 0)) return `temperature must be a number above zero, got ${shown(m.temperature)}`;
  if (m.uncertaintyThreshold !== undefined && !inRange(m.uncertaintyThreshold, 0, 1)) return `uncertaintyThreshold must be a probability in [0, 1], got ${shown(m.uncertaintyThreshold)}`;
  const tta = m.tta;
  if (tta !== undefined && !(isObject(tta) && isNumber(tta.temperature) && tta.temperature > 0 && inRange(tta.uncertaintyThreshold, 0, 1))) {
    return `tta must hold a temperature above zero and an uncertaintyThreshold in [0, 1], got ${shown(tta)}`;
  }
  const scale = m.featureScale;
  if (scale !== undefined) {
    const ok = isObject(scale) && OOD_POOLINGS.includes(scale.pooling as OodPooling) && isNumber(scale.bias) && Array.isArray(scale.weights);
    if (!ok || !isCount((scale.weights as unknown[]).length, MAX_WIDTH) || !(scale.weights as unknown[]).every(isNumber)) {
      return `featureScale must hold a pooling (${OOD_POOLINGS.join(' or ')}), a finite bias and 1 to ${MAX_WIDTH} finite weights, got ${shown(scale)}`;
    }
  }
  const ood = m.outOfDistribution;
  if (ood === undefined) return null;
  if (!isObject(ood) || ood.kind !== 'mahalanobis') return `outOfDistribution must be a 'mahalanobis' detector, got ${shown(ood)}`;
  if (ood.pooling !== undefined && !OOD_POOLINGS.includes(ood.pooling as OodPooling)) return `outOfDistribution.pooling must be one of ${OOD_POOLINGS.join(', ')}, got ${shown(ood.pooling)}`;
  if (!(isNumber(ood.threshold) && ood.threshold > 0)) return `the out-of-distribution threshold must be a number above zero, got ${shown(ood.threshold)}`;
  if (!inRange(ood.validationFlagged, 0, 1)) return `outOfDistribution.validationFlagged must be a fraction in [0, 1], got ${shown(ood.validationFlagged)}`;
  if (!isCount(ood.features, MAX_WIDTH)) return `outOfDistribution.features must be an integer in 1..${MAX_WIDTH}, got ${shown(ood.features)}`;
  return null;
}
