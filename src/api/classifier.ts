// The library entry for classification: load a model once, then classify paths or buffers, one or many.
//   const clf = await loadClassifier();
//   await clf.classify('cell.jpg', { topK: 3 });  // → { predictions: [{ label, score }], uncertain }
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as E from '../engine/index.js';
import { decodeImage, type RgbImage } from '../data/image.js';
import { DEFAULT_GEOMETRY, type GeometryConfig, toModelGeometry } from '../data/geometry.js';
import { makeBatch } from '../data/batches.js';
import { loadModel, type ModelMetadata } from '../models/io.js';
import type { ImageClassifier } from '../models/classifier.js';
import { softmaxRows } from '../train/calibration.js';
import { type Precision, withPrecision } from '../train/trainer.js';

/** The model shipped in the package, trained on PBC (see docs/results.md). */
export const BUNDLED_MODEL = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../models/hemato-convnext-atto.safetensors');

export interface Prediction {
  label: string;
  score: number;
}

export interface Classification {
  /** The top-k labels with calibrated probabilities, most likely first. */
  predictions: Prediction[];
  /** True when the top probability is below the model's threshold: the cell may be outside the 8 classes. */
  uncertain: boolean;
}

export interface ClassifierOptions {
  device?: E.Device | 'auto';
  precision?: Precision | 'auto';
  /** Override the model's uncertainty threshold (a probability in [0, 1]). */
  uncertaintyThreshold?: number;
  /**
   * Override the centred field cut before resizing (source pixels; null: the largest centred square), for images
   * from a scanner whose magnification differs from the training data's.
   */
  field?: number | null;
}

export type ImageInput = string | Uint8Array | RgbImage;

/** What a model file says about preparing its input, with defaults for fields older files lack. */
export interface InputRecipe {
  geometry: GeometryConfig;
  mpm: Record<string, unknown> | null;
}

export function inputRecipe(metadata: ModelMetadata): InputRecipe {
  const preprocessing = (metadata.preprocessing ?? {}) as Partial<InputRecipe>;
  return {
    geometry: preprocessing.geometry ?? { ...DEFAULT_GEOMETRY, size: metadata.inputSize },
    mpm: preprocessing.mpm ?? null,
  };
}

/** Bf16 autocast where it is fast (CUDA, or a CPU with AMX), fp32 elsewhere. */
export function defaultPrecision(device: E.Device): Precision {
  return device.startsWith('cuda') || E.cpuFeatures().amx ? 'bf16' : 'fp32';
}

export class Classifier {
  readonly classes: string[];
  readonly temperature: number;
  readonly uncertaintyThreshold: number;
  readonly recipe: InputRecipe;

  constructor(readonly model: ImageClassifier, readonly metadata: ModelMetadata, readonly device: E.Device, readonly precision: Precision, overrides: Pick<ClassifierOptions, 'uncertaintyThreshold' | 'field'> = {}) {
    this.classes = metadata.classes;
    this.temperature = metadata.temperature ?? 1;
    this.uncertaintyThreshold = overrides.uncertaintyThreshold ?? metadata.uncertaintyThreshold ?? 0.5;
    const recipe = inputRecipe(metadata);
    this.recipe = overrides.field === undefined ? recipe : { ...recipe, geometry: { ...recipe.geometry, field: overrides.field } };
  }

  /** Decodes (when needed) and brings one image to the model's input: the centred field, resized, with MPM if trained so. */
  async prepare(input: ImageInput): Promise<RgbImage> {
    const image = typeof input === 'string' ? await decodeImage(await readFile(input)) : input instanceof Uint8Array ? await decodeImage(input) : input;
    const prepared = await toModelGeometry(image, this.recipe.geometry);
    if (this.recipe.mpm) {
      const { applyMpm } = await import('../preprocess/mpm.js');
      return applyMpm(prepared, this.recipe.mpm as never);
    }
    return prepared;
  }

  /** Calibrated probabilities [n × classes] for images already prepared. */
  probabilities(images: RgbImage[]): Float64Array {
    return softmaxRows(this.logits(images), images.length, this.classes.length, this.temperature);
  }

  /** Raw logits [n × classes] for images already prepared (before temperature scaling). */
  logits(images: RgbImage[]): Float32Array {
    const size = this.metadata.inputSize;
    const pixels = size * size * 3;
    const data = new Uint8Array(images.length * pixels);
    images.forEach((image, i) => {
      if (image.width !== size || image.height !== size) throw new RangeError(`prepared image ${i} is ${image.width}×${image.height}, the model needs ${size}×${size}`);
      data.set(image.data, i * pixels);
    });
    const set = { images: data, size, labels: new Int32Array(images.length), classes: this.classes };
    return E.tidy(() => E.noGrad(() => {
      const { x } = makeBatch(set, Int32Array.from(images.keys()), { normalization: this.metadata.normalization, device: this.device });
      return withPrecision(this.precision, this.device, () => this.model.forward(x)).float().data() as Float32Array;
    }));
  }

  async classify(input: ImageInput, options: { topK?: number } = {}): Promise<Classification> {
    const [result] = await this.classifyBatch([input], options);
    if ('error' in result) throw new Error(result.error);
    return result;
  }

  /** Classifies many images in batches; a bad image gets { error } in its place and the rest go on. */
  async classifyBatch(inputs: ImageInput[], options: { topK?: number; batchSize?: number } = {}): Promise<(Classification | { error: string })[]> {
    const requestedTopK = options.topK ?? 3;
    if (!Number.isInteger(requestedTopK) || requestedTopK < 1) throw new RangeError(`topK must be a positive integer, got ${options.topK}`);
    const topK = Math.min(requestedTopK, this.classes.length);
    // 0 or NaN would never advance the loop, a fraction would skip images; the bound keeps one batch in memory.
    const batchSize = options.batchSize ?? 32;
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 4096) throw new RangeError(`batchSize must be an integer in 1..4096, got ${options.batchSize}`);
    const results: (Classification | { error: string })[] = new Array(inputs.length);
    for (let start = 0; start < inputs.length; start += batchSize) {
      const chunk = inputs.slice(start, start + batchSize);
      const prepared = await Promise.all(chunk.map((input) => this.prepare(input).then((image) => ({ image }), (error: Error) => ({ error: describe(input, error) }))));
      const good = prepared.flatMap((p, i) => ('image' in p ? [{ image: p.image, i }] : []));
      const probs = good.length ? this.probabilities(good.map((g) => g.image)) : new Float64Array(0);
      prepared.forEach((p, i) => { if ('error' in p) results[start + i] = p; });
      good.forEach(({ i }, row) => {
        const scores = Array.from(probs.subarray(row * this.classes.length, (row + 1) * this.classes.length));
        const predictions = scores.map((score, c) => ({ label: this.classes[c], score })).sort((a, b) => b.score - a.score).slice(0, topK);
        results[start + i] = { predictions, uncertain: predictions[0].score < this.uncertaintyThreshold };
      });
    }
    return results;
  }

  dispose(): void {
    this.model.dispose();
  }
}

function describe(input: ImageInput, error: Error): string {
  return typeof input === 'string' ? `${input}: ${error.message}` : error.message;
}

/** Loads a hemato model file (the bundled model by default) for classification. */
export async function loadClassifier(file: string = BUNDLED_MODEL, options: ClassifierOptions = {}): Promise<Classifier> {
  const device = E.resolveDevice(options.device ?? 'auto');
  const { model, metadata } = await loadModel(file, { device }).catch((error: Error) => {
    if (file === BUNDLED_MODEL && /no such file/.test(error.message)) throw new Error(`the bundled model is missing at ${file}; reinstall hemato or pass a model file`);
    throw error;
  });
  const precision = options.precision && options.precision !== 'auto' ? options.precision : defaultPrecision(device);
  return new Classifier(model, metadata, device, precision, options);
}
