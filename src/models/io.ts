// A whole model in one file: the state dict as safetensors, and in its metadata one JSON document that says how to
// rebuild and use the model (architecture, options, classes, input size, normalisation, preprocessing, provenance).
import * as E from '../engine/index.js';
import type { ImageClassifier } from './classifier.js';
import { createModel, type ModelOptions } from './registry.js';

/** The metadata key that holds hemato's JSON document. */
const METADATA_KEY = 'hemato';
const FORMAT = 'hemato-model';
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
}

/** Mahalanobis distance on the pooled features: class means and the shared precision matrix, with a threshold. */
export interface OodInfo {
  kind: 'mahalanobis';
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

export interface ModelMetadata extends Required<Omit<ModelInfo, 'temperature' | 'uncertaintyThreshold' | 'ood'>> {
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
  outOfDistribution?: Omit<OodInfo, 'means' | 'precision'>;
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
    ...(info.ood ? { outOfDistribution: { kind: info.ood.kind, threshold: info.ood.threshold, validationFlagged: info.ood.validationFlagged, features: info.ood.features } } : {}),
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
    const metadata = parseMetadata(raw[METADATA_KEY], file);
    const ood = readOod(tensors, metadata, file);
    const model = createModel(metadata.architecture, { ...metadata.options });
    try {
      model.loadStateDict(tensors);
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
    const { features, threshold } = metadata.outOfDistribution;
    if (!means || !precision) throw new Error(`${file}: the metadata names an out-of-distribution detector, but its arrays are missing; the file is damaged`);
    if (means.ndim !== 2 || means.shape[0] !== metadata.classes.length || means.shape[1] !== features || precision.ndim !== 2 || precision.shape[0] !== features || precision.shape[1] !== features) {
      throw new Error(`${file}: the out-of-distribution arrays have shapes [${means.shape}] and [${precision.shape}], expected [${metadata.classes.length}, ${features}] and [${features}, ${features}]`);
    }
    if (!(Number.isFinite(threshold) && threshold > 0)) throw new Error(`${file}: the out-of-distribution threshold must be a positive number, got ${threshold}`);
    return { ...metadata.outOfDistribution, means: means.float().data() as Float32Array, precision: precision.float().data() as Float32Array };
  } finally {
    E.dispose([means, precision].filter((t): t is E.Tensor => t !== undefined));
  }
}

function parseMetadata(json: string | undefined, file: string): ModelMetadata {
  if (json === undefined) throw new Error(`${file} has no hemato metadata; it is not a model saved by hemato (a timm checkpoint? load it with importTimmCheckpoint)`);
  let metadata: ModelMetadata;
  try {
    metadata = JSON.parse(json) as ModelMetadata;
  } catch {
    throw new Error(`${file}: the hemato metadata is not valid JSON; the file is damaged`);
  }
  if (metadata.format !== FORMAT) throw new Error(`${file}: metadata format '${metadata.format}' is not '${FORMAT}'`);
  if (metadata.version > VERSION) throw new Error(`${file} was saved by a newer hemato (model format ${metadata.version}); upgrade hemato to load it`);
  return metadata;
}
