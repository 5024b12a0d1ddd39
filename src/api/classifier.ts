// The library entry for classification: load a model once, then classify paths or buffers, one or many.
//   const clf = await loadClassifier();
//   await clf.classify('cell.jpg', { topK: 3 });  // → { predictions: [{ label, score }], uncertain }
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { availableParallelism } from 'node:os';
import * as E from '../engine/index.js';
import { DEFAULT_MAX_PIXELS, type DecodedImage, DecodeError, type DecodeErrorCode, type RgbImage } from '../data/image.js';
import { DEFAULT_GEOMETRY, MAX_FIELD, MIN_FIELD } from '../data/geometry.js';
import {
  backgroundColours,
  chooseScale,
  decodeAndPrepare,
  type InputRecipe,
  type PreparedImage,
  type PrepareOptions,
  type ScaleCues,
  SCALE_RANGE,
  type ScaleReport,
  type StainTreatment,
  validateInputRecipe,
} from '../data/prepare.js';
import { DIHEDRAL, makeBatch } from '../data/batches.js';
import { mapLimit } from '../data/pool.js';
import { type PrepareFailure, PreparePool } from '../data/prepare-pool.js';
import { showsOneCell } from '../data/scale.js';
import { oodDistances } from '../eval/ood.js';
import { magnificationsOf } from '../eval/feature-scale.js';
import { loadModel, type ModelMetadata, type OodInfo, type OodPooling } from '../models/io.js';
import type { ImageClassifier } from '../models/classifier.js';
import { softmaxRows } from '../eval/calibration.js';
import { argmaxRows } from '../eval/metrics.js';
import { explainImage, type ExplainOptions, type Explanation } from './explain.js';

/** The model shipped in the package, trained on PBC (see docs/results.md). */
export const BUNDLED_MODEL = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../models/hemato-convnext-atto.safetensors');

export interface Prediction {
  label: string;
  score: number;
}

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
  /**
   * 'recipe': the stain was treated as the model's recipe says; 'raised': the image was out of distribution and paler
   * than the training images' typical stain, and this answer comes from a second look with the stain raised to it.
   */
  stain: StainTreatment;
}

/** Stable codes of a per-image failure: the DecodeError codes, and scores that are not finite numbers. */
export type ClassificationErrorCode = DecodeErrorCode | 'non-finite-output';

/** What classifyBatch gives in place of an image that could not be classified. */
export interface ClassificationError {
  error: string;
  code?: ClassificationErrorCode;
}

export interface ClassifierOptions {
  device?: E.Device | 'auto';
  precision?: E.Precision | 'auto';
  /** Override the model's uncertainty threshold (a probability in [0, 1]). */
  uncertaintyThreshold?: number;
  /**
   * Override the centred field cut before resizing (source pixels; null: the largest centred square), for images
   * from a scanner whose magnification differs from the training data's.
   */
  field?: number | null;
  /** The images' pixel size in µm, where it is known; otherwise it is estimated from the red cells. */
  pixelSize?: number;
  /** Test-time augmentation: average the logits over the 8 flips and 90° rotations (8× the compute). */
  tta?: boolean;
  /** Refuse images declaring more pixels than this, with the code 'too-large' (default: 64 megapixels). */
  maxPixels?: number;
}

/** The options a Classifier applies per image, as opposed to how its model is loaded. */
export type ClassifierOverrides = Pick<ClassifierOptions, 'uncertaintyThreshold' | 'field' | 'pixelSize' | 'tta' | 'maxPixels'>;

/** A file path, a file's bytes, or decoded pixels (with decodeImage's warnings, where it gave any). */
export type ImageInput = string | Uint8Array | DecodedImage;

/** A prepared image and what the decoder warned about its file. */
export interface PreparedInput extends PreparedImage {
  warnings: string[];
}

/** How a second look prepares an image again (PrepareOptions). */
type SecondLook = Pick<PrepareOptions, 'raisePaleStain'> & ScaleCues;

/**
 * A second look planned for one image: how it is prepared, the distance its reading must come under to be taken,
 * and whether a reading of a nucleus-free class may be.
 */
interface PlannedLook {
  how: SecondLook;
  bar: number;
  nucleusFree: boolean;
}

/** Scores of prepared images (Classifier.score) after the second looks, and the preparations they come from. */
export interface Reading extends Scores {
  prepared: PreparedInput[];
}

/** What Classifier.score gives for prepared images. */
export interface Scores {
  logits: Float32Array;
  features: Float32Array;
  /** Each image's out-of-distribution distance, where the model has a detector. */
  distances: Float64Array | null;
  /** Each image's magnification from the training scale as its features estimate it, where the model has that estimate. */
  magnifications: Float64Array | null;
}

/**
 * Classes whose fields show no nucleus: a white cell under a pale stain looks like one of them, so a reading of one
 * gets the second look too. Their own fields, raised, look less like the training images; the raised reading must
 * be this much closer (a fraction of the first distance) to replace it. Chosen on PBC's *select* half, where at
 * this fraction no unaltered image changed and 83 of 1,095 paler-stained ones were put right (docs/results.md).
 */
const NUCLEUS_FREE_CLASSES = ['platelet'];
const NUCLEUS_FREE_CLOSER = 0.5;
/**
 * The fraction of the first distance a reading at the scale of red-cell arcs must come under. Arcs of crowded
 * cells can say that a field at the training scale is enlarged, and a white cell shrunk to half its size reads as a
 * platelet field; the widest margin at which no unaltered image of PBC's training part or *select* half changed.
 */
const ARC_SCALE_CLOSER = 0.6;
/**
 * The same for a reading with a large nucleus setting the scale: a large white cell at the training scale, shrunk,
 * can look closer. Chosen with the bar for a large nucleus the same way (docs/results.md).
 */
const LARGE_NUCLEUS_CLOSER = 0.6;
/**
 * The same for a reading at the scale the network's features estimate, taken where nothing else gives one and the
 * estimate is more than 20 % from the training scale (the spread of red-cell estimates on one scanner). A reading
 * of a nucleus-free class is never taken: shrunk into padding, a white cell from another lab reads as a platelet
 * field, closer to the training images whatever its cell (BCCD's crops did). Chosen on PBC's *select* half: at 1
 * one unaltered image changed, at 0.7 none (docs/results.md).
 */
const APPEARANCE_CLOSER = 0.7;
/** An estimate within this factor of the training scale is within the spread of red-cell estimates: no second look. */
const APPEARANCE_NOISE = 1.2;

/** Images decoded and prepared at once: enough to keep the cores busy, few enough to bound memory. */
const PREPARE_CONCURRENCY = Math.min(4, availableParallelism());
/**
 * Images in one call from which they are prepared on worker threads, one per core: preparing an image takes a
 * CPU longer than the model's forward pass, and on the main thread uses one core. Below it, starting the threads
 * (once per classifier) would cost more than they save.
 */
const WORKERS_FROM = 16;

const OPTION_NAMES = ['device', 'precision', 'uncertaintyThreshold', 'field', 'pixelSize', 'tta', 'maxPixels'];
const PRECISIONS: readonly (E.Precision | 'auto')[] = ['auto', 'fp32', 'bf16'];
/** Images in one forward pass at most: the bound keeps one batch in memory. */
export const MAX_BATCH_SIZE = 4096;

/** Checks every option before a model is loaded, with one TypeError or RangeError naming the option and what it takes. */
export function validateClassifierOptions(options: ClassifierOptions): void {
  const { device, precision } = callOptions(options, OPTION_NAMES, 'classifier');
  if (device !== undefined && !(typeof device === 'string' && /^(auto|cpu|cuda(:\d+)?)$/.test(device))) {
    throw invalid(device, `device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got ${shown(device)}`);
  }
  if (precision !== undefined && !PRECISIONS.includes(precision))
    throw invalid(precision, `precision must be one of ${PRECISIONS.map((p) => `'${p}'`).join(', ')}, got ${shown(precision)}`);
  if (options.tta !== undefined && typeof options.tta !== 'boolean') throw new TypeError(`tta must be true or false, got ${shown(options.tta)}`);
  checkOverrides(options);
}

function checkOverrides({ uncertaintyThreshold: threshold, field, pixelSize, maxPixels }: ClassifierOverrides): void {
  if (threshold !== undefined && !(typeof threshold === 'number' && threshold >= 0 && threshold <= 1)) {
    throw invalid(threshold, `uncertaintyThreshold must be a probability in [0, 1], got ${shown(threshold)}`);
  }
  if (field !== undefined && field !== null && !(Number.isInteger(field) && field >= MIN_FIELD && field <= MAX_FIELD)) {
    throw invalid(field, `field must be null (the largest centred square) or a whole number of pixels in ${MIN_FIELD}..${MAX_FIELD}, got ${shown(field)}`);
  }
  if (pixelSize !== undefined && !(typeof pixelSize === 'number' && Number.isFinite(pixelSize) && pixelSize > 0)) {
    throw invalid(pixelSize, `pixelSize must be a positive, finite number of µm per pixel, got ${shown(pixelSize)}`);
  }
  if (maxPixels !== undefined && !(Number.isInteger(maxPixels) && maxPixels >= 1 && maxPixels <= DEFAULT_MAX_PIXELS * 16)) {
    throw invalid(maxPixels, `maxPixels must be a whole number of pixels in 1..${DEFAULT_MAX_PIXELS * 16}, got ${shown(maxPixels)}`);
  }
}

/** Throws for anything that is not a path, a file's bytes or an RgbImage whose data matches its size. */
export function checkInput(input: unknown, name = 'input'): asserts input is ImageInput {
  if (typeof input === 'string') {
    if (input === '') throw new TypeError(`${name} is an empty file path`);
    return;
  }
  if (input instanceof Uint8Array) return;
  if (typeof input !== 'object' || input === null || Array.isArray(input) || !('data' in input)) {
    throw new TypeError(`${name} must be a file path, an image file's bytes (Uint8Array) or an RgbImage { width, height, data }, got ${shown(input)}`);
  }
  const { width, height, data } = input as RgbImage;
  if (!(Number.isInteger(width) && width > 0 && Number.isInteger(height) && height > 0)) {
    throw invalid(
      typeof width === 'number' ? height : width,
      `${name}: an RgbImage's width and height must be positive integers, got ${shown(width)} × ${shown(height)}`,
    );
  }
  if (!(data instanceof Uint8Array)) throw new TypeError(`${name}: an RgbImage's data must be a Uint8Array, got ${shown(data)}`);
  if (data.length !== width * height * 3)
    throw new RangeError(`${name}: an RgbImage of ${width}×${height} needs ${width * height * 3} bytes (3 per pixel), got ${data.length}`);
}

/** A RangeError for a number outside its range, a TypeError for a value of the wrong kind. */
/** A call's options: undefined (none), or an object holding only the named options; a TypeError otherwise. */
function callOptions<T extends object>(options: T | undefined, names: readonly string[], call: string): T {
  if (options === undefined) return {} as T;
  if (typeof options !== 'object' || options === null || Array.isArray(options))
    throw new TypeError(`${call} options must be an object, got ${shown(options)}`);
  const unknown = Object.keys(options).find((key) => !names.includes(key));
  if (unknown !== undefined) throw new TypeError(`unknown ${call} option '${unknown}'; the options are ${names.join(', ')}`);
  return options;
}

const SECOND_LOOK_FLAGS = ['raisePaleStain', 'arcScale', 'largeNucleusScale', 'undersizedNucleusScale'] as const;

function checkSecondLook(options: SecondLook | undefined): SecondLook {
  const look = callOptions(options, [...SECOND_LOOK_FLAGS, 'appearanceFactor'], 'prepare');
  for (const flag of SECOND_LOOK_FLAGS)
    if (look[flag] !== undefined && typeof look[flag] !== 'boolean') throw new TypeError(`${flag} must be true or false, got ${shown(look[flag])}`);
  const factor = look.appearanceFactor;
  if (factor !== undefined && !(typeof factor === 'number' && Number.isFinite(factor) && factor > 0))
    throw invalid(factor, `appearanceFactor must be a positive, finite number, got ${shown(factor)}`);
  return look;
}

const invalid = (value: unknown, message: string) => (typeof value === 'number' ? new RangeError(message) : new TypeError(message));

function shown(value: unknown): string {
  if (typeof value === 'string') return `'${value}'`;
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  return value !== null && typeof value === 'object' ? 'an object' : String(value);
}

/** What a model file says about preparing its input, with defaults for fields older files lack. */
export function inputRecipe(metadata: ModelMetadata): InputRecipe {
  const preprocessing = (metadata.preprocessing ?? {}) as Partial<InputRecipe>;
  return validateInputRecipe({
    geometry: preprocessing.geometry ?? { ...DEFAULT_GEOMETRY, size: metadata.inputSize },
    mpm: preprocessing.mpm ?? null,
    scale: preprocessing.scale ?? null,
    background: backgroundColours(preprocessing.background),
    stain: preprocessing.stain ?? null,
  });
}

/** The engine's default precision for classifying on this device with this architecture (engine/precision.ts). */
export function defaultPrecision(device: E.Device, architecture?: string): E.Precision {
  return E.precisionFor({ device, family: architecture === undefined ? undefined : E.modelFamily(architecture) }).precision;
}

export class Classifier {
  readonly classes: string[];
  readonly temperature: number;
  readonly uncertaintyThreshold: number;
  readonly recipe: InputRecipe;
  readonly pixelSize: number | undefined;
  readonly tta: boolean;
  readonly maxPixels: number | undefined;

  constructor(
    readonly model: ImageClassifier,
    readonly metadata: ModelMetadata,
    readonly device: E.Device,
    readonly precision: E.Precision,
    readonly overrides: ClassifierOverrides = {},
    readonly ood: OodInfo | null = null,
    /**
     * Shared with the classifiers made by withOverrides: the preparing threads, started when first needed, and
     * whether the weights were disposed.
     */
    private readonly shared: { pool: Promise<PreparePool | null> | null; disposed: boolean } = { pool: null, disposed: false },
  ) {
    checkOverrides(overrides);
    this.maxPixels = overrides.maxPixels;
    this.classes = metadata.classes;
    // Averaged views are less spread than one: TTA has its own calibration where calibrate --tta fitted one.
    const calibration = overrides.tta && metadata.tta ? metadata.tta : metadata;
    this.temperature = calibration.temperature ?? 1;
    this.uncertaintyThreshold = overrides.uncertaintyThreshold ?? calibration.uncertaintyThreshold ?? 0.5;
    this.pixelSize = overrides.pixelSize;
    this.tta = overrides.tta ?? false;
    const recipe = inputRecipe(metadata);
    // A field given by hand is the expert's own geometry: the file's pixels are then taken as they are.
    this.recipe = overrides.field === undefined ? recipe : { ...recipe, scale: null, geometry: { ...recipe.geometry, field: overrides.field } };
  }

  /**
   * Decodes (when needed) and brings one image to the model's input, exactly as training did; or, with a second
   * look's options, as that look does.
   */
  async prepare(input: ImageInput, options?: SecondLook): Promise<PreparedInput> {
    this.checkLive();
    const prepared = firstLook(await this.prepareLooks(input, [checkSecondLook(options)], null));
    if (prepared instanceof Error) throw prepared;
    return prepared;
  }

  /**
   * Prepares many images as prepare() does each, on worker threads where more than one core has them to share: from
   * a call with WORKERS_FROM images or more on, for this classifier's life. An image that cannot be prepared gets the
   * Error in its place.
   */
  async prepareMany(inputs: ImageInput[]): Promise<(PreparedInput | Error)[]> {
    this.checkLive();
    const pool = await this.pool(inputs.length >= WORKERS_FROM);
    // Paths and bytes are all sent at once, so that the threads go on while the main thread runs the model; decoded
    // inputs two per thread, which bounds their copies.
    const decoded = inputs.some((input) => typeof input !== 'string' && !(input instanceof Uint8Array));
    const limit = pool ? (decoded ? 2 * pool.threads : inputs.length) : PREPARE_CONCURRENCY;
    return mapLimit(inputs, limit, async (input) => firstLook(await this.prepareLooks(input, [{}], pool)));
  }

  /** The preparing threads: started on first use where `start` and there is more than one core; null where they cannot run. */
  private async pool(start = false): Promise<PreparePool | null> {
    if (start && this.shared.pool === null && availableParallelism() > 1) this.shared.pool = PreparePool.start(null).catch(() => null);
    return this.shared.pool;
  }

  /**
   * Decodes an input once and prepares it for each look, on the pool's threads or here; the Error where it cannot be
   * decoded, and in a look's place where that look fails.
   */
  private async prepareLooks(
    input: ImageInput,
    looks: SecondLook[],
    pool: PreparePool | null,
  ): Promise<{ warnings: string[]; looks: (PreparedImage | Error)[] } | Error> {
    const options = (look: SecondLook): PrepareOptions => ({ pixelSize: this.pixelSize, measure: true, ...look });
    if (pool) {
      checkInput(input);
      // A thread that stopped (out of memory on a huge image, say) leaves its images to this one.
      const result = await pool.looks({ input, recipe: this.recipe, maxPixels: this.maxPixels, looks: looks.map(options) }).catch(() => null);
      if (result === null) return this.prepareLooks(input, looks, null);
      if (!result.ok) return asError(result);
      return { warnings: result.warnings, looks: result.looks.map((look) => ('image' in look ? look : asError(look))) };
    }
    try {
      checkInput(input);
      return await decodeAndPrepare(input, this.recipe, looks.map(options), this.maxPixels);
    } catch (error) {
      return error as Error;
    }
  }

  /**
   * Scores prepared images, then takes second looks where the first reading may come from a preparation that failed
   * the image, and keeps the one the detector finds closest to the training images, where it comes under its bar:
   * - an image the detector flags as out of distribution, or reads as a class without a nucleus (a platelet field),
   *   is prepared again from `input(i)` with a stain paler than the training images' typical one raised to it; its
   *   bar is the first distance (for a nucleus-free reading, NUCLEUS_FREE_CLOSER times it). Another lab's paler
   *   stain hides nuclei from the scale estimate and makes white cells look like the training set's palest classes;
   *   raising every pale image instead would darken PBC's own platelets, which the detector passes
   *   (docs/other-scanners.md);
   * - an image read without a scale is read at the scale that short arcs of red cells cut by its edge give, where it
   *   has them (an enlarged field keeps few whole red cells), with a bar of ARC_SCALE_CLOSER times the first
   *   distance; at the scale its nucleus gives where that is large (a field enlarged too little for the
   *   oversized-nucleus rule), with a bar of LARGE_NUCLEUS_CLOSER times it; and, read as a
   *   nucleus-free class, at the scale its nucleus gives where that is undersized (a white cell shown at half its
   *   size), with the first distance as the bar; and at the scale its features estimate (the model's
   *   featureScale) where that is beyond APPEARANCE_NOISE, with APPEARANCE_CLOSER times the first distance as the
   *   bar, unless that reading is of a nucleus-free class.
   * Models without a detector take one look.
   */
  async read(prepared: PreparedInput[], input: (i: number) => ImageInput | Promise<ImageInput>, options: { pooling?: OodPooling } = {}): Promise<Reading> {
    const first = this.score(
      prepared.map((p) => p.image),
      options,
    );
    const { ood } = this;
    if (!ood || !first.distances) return { ...first, prepared };
    const k = this.classes.length;
    const readAs = argmaxRows(first.logits, prepared.length, k);
    const nucleusFree = NUCLEUS_FREE_CLASSES.map((c) => this.classes.indexOf(c));
    const secondLooks = (i: number): PlannedLook[] => {
      const distance = first.distances![i];
      const nucleusFreeReading = nucleusFree.includes(readAs[i]);
      const looks: PlannedLook[] = [];
      if (this.recipe.stain?.typical && (distance > ood.threshold || nucleusFreeReading))
        looks.push({ how: { raisePaleStain: true }, bar: distance > ood.threshold ? distance : NUCLEUS_FREE_CLOSER * distance, nucleusFree: true });
      if (prepared[i].scale.source === 'none') {
        // Only where the cue gives the image a scale: elsewhere it would prepare the same image again.
        const rescale = (how: ScaleCues, bar: number, nucleusFree = true) => {
          if (chooseScale(this.recipe.scale, prepared[i].measures, undefined, how).source !== 'none') looks.push({ how, bar, nucleusFree });
        };
        rescale({ arcScale: true }, ARC_SCALE_CLOSER * distance);
        rescale({ largeNucleusScale: true }, LARGE_NUCLEUS_CLOSER * distance);
        if (nucleusFreeReading) rescale({ undersizedNucleusScale: true }, distance);
        const magnification = first.magnifications?.[i];
        // Shrunk into padding, a white cell reads as a nucleus-free field (APPEARANCE_CLOSER): that reading is never taken.
        if (magnification !== undefined && Math.abs(Math.log(magnification)) > Math.log(APPEARANCE_NOISE))
          rescale({ appearanceFactor: 1 / magnification }, APPEARANCE_CLOSER * distance, false);
      }
      return looks;
    };
    const planned = prepared.map((_, i) => secondLooks(i));
    const candidates = planned.flatMap((looks, i) => (looks.length > 0 ? [i] : []));
    const pool = await this.pool();
    const looks = (
      await mapLimit(candidates, pool ? 2 * pool.threads : PREPARE_CONCURRENCY, async (i) => {
        // An image that cannot be read again (a file removed meanwhile) keeps its first reading. It is decoded once
        // for all of its second looks.
        const source = await Promise.resolve(input(i)).catch(() => null);
        const again =
          source === null
            ? null
            : await this.prepareLooks(
                source,
                planned[i].map((look) => look.how),
                pool,
              );
        if (again === null || again instanceof Error) return [];
        return again.looks.flatMap((look, j) =>
          look instanceof Error || sameImage(look.image, prepared[i].image)
            ? []
            : [{ i, again: { ...look, warnings: again.warnings }, planned: planned[i][j] }],
        );
      })
    ).flat();
    if (looks.length === 0) return { ...first, prepared };
    const second = this.score(
      looks.map((l) => l.again.image),
      options,
    );
    // The second image is read only where it looks more like the training images than the image as given. The
    // second look changes the label and the scale it was read at, never what flags the image as given: its
    // distance, features and cell count stay (raised, a field of red cells alone can pass for a white cell).
    // Of an image's second readings under their bars, the closest is taken.
    const taken = new Map<number, number>();
    const secondAs = argmaxRows(second.logits, looks.length, k);
    looks.forEach(({ i, planned }, row) => {
      if (!planned.nucleusFree && nucleusFree.includes(secondAs[row])) return;
      const distance = second.distances![row];
      const best = taken.get(i);
      if (distance < planned.bar && (best === undefined || distance < second.distances![best])) taken.set(i, row);
    });
    const reading = { ...first, logits: first.logits.slice(), prepared: [...prepared] };
    for (const [i, row] of taken) {
      reading.logits.set(second.logits.subarray(row * k, (row + 1) * k), i * k);
      reading.prepared[i] = { ...looks[row].again, measures: prepared[i].measures };
    }
    return reading;
  }

  /** Raw logits [n × classes] for images already prepared (before temperature scaling). */
  logits(images: RgbImage[]): Float32Array {
    return this.score(images).logits;
  }

  /**
   * Logits, each image's features pooled as `pooling` says (by default as the detector pools them), and, where the
   * model has a detector, each image's out-of-distribution distance; where it has a scale estimate from features,
   * each image's magnification.
   */
  score(images: RgbImage[], options: { pooling?: OodPooling } = {}): Scores {
    this.checkLive();
    const pooling = options.pooling ?? this.ood?.pooling ?? 'pre-logits';
    const { featureScale } = this.metadata;
    const stageStd = [pooling, this.ood?.pooling, featureScale?.pooling].includes('stage-std');
    const size = this.metadata.inputSize;
    const pixels = size * size * 3;
    const data = new Uint8Array(images.length * pixels);
    images.forEach((image, i) => {
      if (image.width !== size || image.height !== size)
        throw new RangeError(`prepared image ${i} is ${image.width}×${image.height}, the model needs ${size}×${size}`);
      data.set(image.data, i * pixels);
    });
    const set = { images: data, size, labels: new Int32Array(images.length), classes: this.classes };
    const { logits, pooled } = E.tidy(() =>
      E.noGrad(() => {
        const { x } = makeBatch(set, Int32Array.from(images.keys()), { normalization: this.metadata.normalization, device: this.device });
        return E.withPrecision(this.precision, this.device, () => {
          // Under test-time augmentation the pooled features are averaged over the views; the head is linear, so
          // the logits are the views' mean logits.
          const views = (this.tta ? DIHEDRAL : [(t: E.Tensor) => t]).map((view) => {
            const { features, intermediates } = this.model.forwardIntermediates(view(x));
            return {
              preLogits: this.model.forwardHead(features, true),
              stageStd: stageStd
                ? E.cat(
                    intermediates.map((map) => map.float().std([2, 3], { unbiased: false })),
                    1,
                  )
                : null,
            };
          });
          const mean = (pooled: E.Tensor[]) => (pooled.length === 1 ? pooled[0] : E.stack(pooled).mean(0));
          const preLogits = mean(views.map((v) => v.preLogits));
          const read = (t: E.Tensor) => t.float().data() as Float32Array;
          return {
            logits: read(this.model.head!.fc.forward(preLogits)),
            pooled: { 'pre-logits': read(preLogits), 'stage-std': stageStd ? read(mean(views.map((v) => v.stageStd!))) : null },
          };
        });
      }),
    );
    return {
      logits,
      features: pooled[pooling]!,
      distances: this.ood ? oodDistances(pooled[this.ood.pooling]!, this.ood) : null,
      magnifications: featureScale ? magnificationsOf(pooled[featureScale.pooling]!, featureScale) : null,
    };
  }

  /** Classifies one image; a failure throws an Error carrying the ClassificationErrorCode as `code`, where there is one. */
  async classify(input: ImageInput, options?: { topK?: number }): Promise<Classification> {
    checkInput(input);
    const [result] = await this.classifyBatch([input], callOptions(options, ['topK'], 'classify'));
    if ('error' in result) throw Object.assign(new Error(result.error), result.code ? { code: result.code } : {});
    return result;
  }

  /**
   * Where in the image the evidence for a label lies (default: the top predicted label): a class activation map
   * (Grad-CAM with per-position gradients, at stride 8 by default), with the label's calibrated probability and the
   * prepared image it belongs to (api/explain.ts).
   */
  async explain(input: ImageInput, options: ExplainOptions = {}): Promise<Explanation> {
    this.checkLive();
    checkInput(input);
    return explainImage(this, input, options);
  }

  /**
   * Classifies many images in batches; a bad image, or one the model gives non-finite scores, gets { error, code }
   * in its place and the rest go on. Inputs of the wrong kind are the caller's mistake and throw at once.
   * `onProgress` hears after each batch how many images are done; `onResults` hears each batch's results as soon as
   * they are known, with the index of the first, so that a caller can write them out before the rest are done.
   */
  async classifyBatch(
    inputs: ImageInput[],
    options?: {
      topK?: number;
      batchSize?: number;
      onProgress?: (done: number, total: number) => void;
      onResults?: (results: (Classification | ClassificationError)[], start: number) => void;
    },
  ): Promise<(Classification | ClassificationError)[]> {
    this.checkLive();
    if (!Array.isArray(inputs)) throw new TypeError(`classifyBatch takes an array of inputs, got ${shown(inputs)}`);
    // Every index, holes of a sparse array included.
    for (let i = 0; i < inputs.length; i++) checkInput(inputs[i], `inputs[${i}]`);
    const {
      onProgress,
      onResults,
      topK: requestedTopK = 3,
      batchSize = 32,
    } = callOptions(options, ['topK', 'batchSize', 'onProgress', 'onResults'], 'classifyBatch');
    for (const [name, hook] of Object.entries({ onProgress, onResults }))
      if (hook !== undefined && typeof hook !== 'function') throw new TypeError(`${name} must be a function, got ${shown(hook)}`);
    if (!Number.isInteger(requestedTopK) || requestedTopK < 1) throw invalid(requestedTopK, `topK must be a positive integer, got ${shown(requestedTopK)}`);
    const topK = Math.min(requestedTopK, this.classes.length);
    // 0 or NaN would never advance the loop, a fraction would skip images; the bound keeps one batch in memory.
    if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > MAX_BATCH_SIZE)
      throw invalid(batchSize, `batchSize must be an integer in 1..${MAX_BATCH_SIZE}, got ${shown(batchSize)}`);
    const results: (Classification | ClassificationError)[] = new Array(inputs.length);
    await this.pool(inputs.length >= WORKERS_FROM);
    let preparing = this.prepareMany(inputs.slice(0, batchSize));
    for (let start = 0; start < inputs.length; start += batchSize) {
      const chunk = inputs.slice(start, start + batchSize);
      const ready = await preparing;
      // The next batch is prepared (on the threads, where they run) while this one is read.
      if (start + batchSize < inputs.length) preparing = this.prepareMany(inputs.slice(start + batchSize, start + 2 * batchSize));
      const prepared = ready.map((p, i) => (p instanceof Error ? failure(chunk[i], p) : { p }));
      const firstLook = prepared.flatMap((p, i) => ('p' in p ? [{ p: p.p, i }] : []));
      const reading = firstLook.length
        ? await this.read(
            firstLook.map((g) => g.p),
            (row) => chunk[firstLook[row].i],
          )
        : null;
      const good = firstLook.map(({ i }, row) => ({ i, p: reading!.prepared[row] }));
      const { logits, distances } = reading ?? { logits: new Float32Array(0), distances: null };
      const probs = softmaxRows(logits, good.length, this.classes.length, this.temperature);
      prepared.forEach((p, i) => {
        if ('error' in p) results[start + i] = p;
      });
      good.forEach(({ p, i }, row) => {
        // NaN or infinite logits (damaged weights, an overflow) have no meaningful ranking: no label is better than one.
        if (!logits.subarray(row * this.classes.length, (row + 1) * this.classes.length).every(Number.isFinite)) {
          results[start + i] = { error: describe(chunk[i], NON_FINITE), code: 'non-finite-output' };
          return;
        }
        const scores = Array.from(probs.subarray(row * this.classes.length, (row + 1) * this.classes.length));
        const predictions = scores
          .map((score, c) => ({ label: this.classes[c], score }))
          .sort((a, b) => b.score - a.score)
          .slice(0, topK);
        const reasons = this.reasonsFor(p, predictions[0].score, distances?.[row]);
        results[start + i] = { predictions, uncertain: reasons.length > 0, reasons, scale: p.scale, stain: p.stain };
      });
      onResults?.(results.slice(start, start + chunk.length), start);
      onProgress?.(start + chunk.length, inputs.length);
    }
    return results;
  }

  private checkLive(): void {
    if (this.shared.disposed) throw new Error('this classifier was disposed, and its weights freed; load the model again with loadClassifier()');
  }

  /** Why an answer with this top probability, for this prepared image at this detector distance, cannot be trusted as it is. */
  reasonsFor(prepared: PreparedInput, topScore: number, oodDistance?: number): UncertainReason[] {
    const reasons = this.reasons(topScore, prepared.scale, oodDistance, prepared.measures ? showsOneCell(prepared.measures) : undefined);
    if (prepared.warnings.length > 0) reasons.push('decode-warning');
    return reasons;
  }

  /** Why an answer with this top probability, from an image prepared at this scale, cannot be trusted as it is. */
  reasons(topScore: number, scale?: ScaleReport, oodDistance?: number, oneCell?: boolean): UncertainReason[] {
    const reasons: UncertainReason[] = [];
    if (topScore < this.uncertaintyThreshold) reasons.push('low-confidence');
    if (oneCell === false) reasons.push('no-single-cell');
    if (scale && scale.source !== 'none' && (scale.factor < SCALE_RANGE[0] || scale.factor > SCALE_RANGE[1])) reasons.push('scale-out-of-range');
    if (this.ood && oodDistance !== undefined && oodDistance > this.ood.threshold) reasons.push('out-of-distribution');
    return reasons;
  }

  /**
   * The same model with other per-image options (a pixel size, TTA): no copy of the weights is made, so only the
   * classifier it came from is disposed.
   */
  withOverrides(overrides: ClassifierOverrides): Classifier {
    return new Classifier(this.model, this.metadata, this.device, this.precision, { ...this.overrides, ...overrides }, this.ood, this.shared);
  }

  /** Frees the weights and the preparing threads; the classifier and those made from it by withOverrides are then unusable. */
  dispose(): void {
    this.shared.disposed = true;
    this.model.dispose();
    void this.shared.pool?.then((pool) => pool?.close());
    this.shared.pool = null;
  }
}

function sameImage(a: RgbImage, b: RgbImage): boolean {
  return a.width === b.width && a.height === b.height && Buffer.compare(a.data, b.data) === 0;
}

const NON_FINITE = 'the model gave scores that are not finite numbers (NaN or infinity), so there is no label; its weights may be damaged';

function describe(input: ImageInput, message: string): string {
  return typeof input === 'string' ? `${input}: ${message}` : message;
}

/** A preparation's first look with its decoder warnings, or the Error in its place. */
function firstLook(result: { warnings: string[]; looks: (PreparedImage | Error)[] } | Error): PreparedInput | Error {
  if (result instanceof Error) return result;
  const [look] = result.looks;
  return look instanceof Error ? look : { ...look, warnings: result.warnings };
}

/** A failure from a preparing thread as the Error it was there. */
function asError({ code, message }: PrepareFailure): Error {
  return code ? new DecodeError(code, message) : new Error(message);
}

function failure(input: ImageInput, error: Error): ClassificationError {
  return { error: describe(input, error.message), ...(error instanceof DecodeError ? { code: error.code } : {}) };
}

/** Loads a hemato model file (the bundled model by default) for classification. */
export async function loadClassifier(file: string = BUNDLED_MODEL, options: ClassifierOptions = {}): Promise<Classifier> {
  if (typeof file !== 'string' || file === '') throw new TypeError(`loadClassifier takes the path of a model file, got ${shown(file)}`);
  validateClassifierOptions(options);
  const device = E.resolveDevice(options.device ?? 'auto');
  const { model, metadata, ood } = await loadModel(file, { device }).catch((error: Error) => {
    if (file === BUNDLED_MODEL && /no such file/.test(error.message))
      throw new Error(`the bundled model is missing at ${file}; reinstall hemato or pass a model file`);
    throw error;
  });
  const precision = options.precision && options.precision !== 'auto' ? options.precision : defaultPrecision(device, metadata.architecture);
  try {
    const { uncertaintyThreshold, field, pixelSize, tta, maxPixels } = options;
    return new Classifier(model, metadata, device, precision, { uncertaintyThreshold, field, pixelSize, tta, maxPixels }, ood);
  } catch (error) {
    // The file's preprocessing recipe is checked here: name the file, and free the model it came with.
    model.dispose();
    throw new Error(`${file}: ${(error as Error).message}`);
  }
}
