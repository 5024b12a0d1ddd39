// The library entry for classification: load a model once, then classify paths or buffers, one or many.
//   const clf = await loadClassifier();
//   await clf.classify('cell.jpg', { topK: 3 });  // → { predictions: [{ label, score }], uncertain }
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as E from '../engine/index.js';
import { decodeImage, type RgbImage, readImageFile } from '../data/image.js';
import { DEFAULT_GEOMETRY } from '../data/geometry.js';
import { type InputRecipe, prepareImage, type PreparedImage, SCALE_RANGE, type ScaleReport, validateInputRecipe } from '../data/prepare.js';
import { makeBatch } from '../data/batches.js';
import { oodDistances } from '../eval/ood.js';
import { loadModel, type ModelMetadata, type OodInfo } from '../models/io.js';
import type { ImageClassifier } from '../models/classifier.js';
import { softmaxRows } from '../eval/calibration.js';
import { type Precision, withPrecision } from '../train/trainer.js';

/** The model shipped in the package, trained on PBC (see docs/results.md). */
export const BUNDLED_MODEL = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../models/hemato-convnext-atto.safetensors');

export interface Prediction {
  label: string;
  score: number;
}

/** Separate nucleus groups beyond which an image shows several cells; 4 or more occur in under 1 % of PBC images. */
const MAX_NUCLEI = 3;

/** Why an answer is flagged uncertain; one list, documented in docs/reliability.md. */
export type UncertainReason = 'low-confidence' | 'scale-out-of-range' | 'no-single-cell' | 'out-of-distribution' | 'decode-warning';

export interface Classification {
  /** The top-k labels with calibrated probabilities, most likely first. */
  predictions: Prediction[];
  /** True when any reason applies: the answer should not be trusted without a look at the image. */
  uncertain: boolean;
  reasons: UncertainReason[];
  /** The physical scale used to bring the image to the model's. */
  scale: ScaleReport;
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
  /** The images' pixel size in µm, where it is known; otherwise it is estimated from the red cells. */
  pixelSize?: number;
}

export type ImageInput = string | Uint8Array | RgbImage;

/** What a model file says about preparing its input, with defaults for fields older files lack. */
export function inputRecipe(metadata: ModelMetadata): InputRecipe {
  const preprocessing = (metadata.preprocessing ?? {}) as Partial<InputRecipe>;
  return validateInputRecipe({
    geometry: preprocessing.geometry ?? { ...DEFAULT_GEOMETRY, size: metadata.inputSize },
    mpm: preprocessing.mpm ?? null,
    scale: preprocessing.scale ?? null,
    background: preprocessing.background ?? null,
  });
}

/** The engine's default precision for classifying on this device with this architecture (engine/precision.ts). */
export function defaultPrecision(device: E.Device, architecture?: string): Precision {
  return E.precisionFor({ device, family: architecture === undefined ? undefined : E.modelFamily(architecture) }).precision;
}

export class Classifier {
  readonly classes: string[];
  readonly temperature: number;
  readonly uncertaintyThreshold: number;
  readonly recipe: InputRecipe;
  readonly pixelSize: number | undefined;

  constructor(readonly model: ImageClassifier, readonly metadata: ModelMetadata, readonly device: E.Device, readonly precision: Precision, overrides: Pick<ClassifierOptions, 'uncertaintyThreshold' | 'field' | 'pixelSize'> = {}, readonly ood: OodInfo | null = null) {
    this.classes = metadata.classes;
    this.temperature = metadata.temperature ?? 1;
    this.uncertaintyThreshold = overrides.uncertaintyThreshold ?? metadata.uncertaintyThreshold ?? 0.5;
    this.pixelSize = overrides.pixelSize;
    const recipe = inputRecipe(metadata);
    // A field given by hand is the expert's own geometry: the file's pixels are then taken as they are.
    this.recipe = overrides.field === undefined ? recipe : { ...recipe, scale: null, geometry: { ...recipe.geometry, field: overrides.field } };
  }

  /** Decodes (when needed) and brings one image to the model's input, exactly as training did. */
  async prepare(input: ImageInput): Promise<PreparedImage> {
    const image = typeof input === 'string' ? await readImageFile(input) : input instanceof Uint8Array ? await decodeImage(input) : input;
    return prepareImage(image, this.recipe, { pixelSize: this.pixelSize });
  }

  /** Raw logits [n × classes] for images already prepared (before temperature scaling). */
  logits(images: RgbImage[]): Float32Array {
    return this.score(images).logits;
  }

  /**
   * Logits and, where the model has a detector, each image's out-of-distribution distance: the squared Mahalanobis
   * distance of its pooled features to the nearest class.
   */
  score(images: RgbImage[]): { logits: Float32Array; features: Float32Array; distances: Float64Array | null } {
    const size = this.metadata.inputSize;
    const pixels = size * size * 3;
    const data = new Uint8Array(images.length * pixels);
    images.forEach((image, i) => {
      if (image.width !== size || image.height !== size) throw new RangeError(`prepared image ${i} is ${image.width}×${image.height}, the model needs ${size}×${size}`);
      data.set(image.data, i * pixels);
    });
    const set = { images: data, size, labels: new Int32Array(images.length), classes: this.classes };
    const { logits, features } = E.tidy(() => E.noGrad(() => {
      const { x } = makeBatch(set, Int32Array.from(images.keys()), { normalization: this.metadata.normalization, device: this.device });
      return withPrecision(this.precision, this.device, () => {
        const pooled = this.model.forwardHead(this.model.forwardFeatures(x), true);
        return {
          logits: this.model.head!.fc.forward(pooled).float().data() as Float32Array,
          features: pooled.float().data() as Float32Array,
        };
      });
    }));
    return { logits, features, distances: this.ood ? oodDistances(features, this.ood) : null };
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
      const prepared = await Promise.all(chunk.map((input) => this.prepare(input).then((p) => ({ p }), (error: Error) => ({ error: describe(input, error) }))));
      const good = prepared.flatMap((p, i) => ('p' in p ? [{ p: p.p, i }] : []));
      const { logits, distances } = good.length ? this.score(good.map((g) => g.p.image)) : { logits: new Float32Array(0), distances: null };
      const probs = softmaxRows(logits, good.length, this.classes.length, this.temperature);
      prepared.forEach((p, i) => { if ('error' in p) results[start + i] = p; });
      good.forEach(({ p, i }, row) => {
        const scores = Array.from(probs.subarray(row * this.classes.length, (row + 1) * this.classes.length));
        const predictions = scores.map((score, c) => ({ label: this.classes[c], score })).sort((a, b) => b.score - a.score).slice(0, topK);
        const reasons = this.reasons(predictions[0].score, p.scale, distances?.[row], p.measures?.nuclei);
        results[start + i] = { predictions, uncertain: reasons.length > 0, reasons, scale: p.scale };
      });
    }
    return results;
  }

  /** Why an answer with this top probability, from an image prepared at this scale, cannot be trusted as it is. */
  reasons(topScore: number, scale?: ScaleReport, oodDistance?: number, nuclei?: number): UncertainReason[] {
    const reasons: UncertainReason[] = [];
    if (topScore < this.uncertaintyThreshold) reasons.push('low-confidence');
    // No stained nucleus at all (an empty field, red cells only), or several cells' worth (a montage, a clump).
    if (nuclei !== undefined && (nuclei === 0 || nuclei > MAX_NUCLEI)) reasons.push('no-single-cell');
    if (scale && scale.source !== 'none' && (scale.factor < SCALE_RANGE[0] || scale.factor > SCALE_RANGE[1])) reasons.push('scale-out-of-range');
    if (this.ood && oodDistance !== undefined && oodDistance > this.ood.threshold) reasons.push('out-of-distribution');
    return reasons;
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
  const { model, metadata, ood } = await loadModel(file, { device }).catch((error: Error) => {
    if (file === BUNDLED_MODEL && /no such file/.test(error.message)) throw new Error(`the bundled model is missing at ${file}; reinstall hemato or pass a model file`);
    throw error;
  });
  const precision = options.precision && options.precision !== 'auto' ? options.precision : defaultPrecision(device, metadata.architecture);
  return new Classifier(model, metadata, device, precision, options, ood);
}
