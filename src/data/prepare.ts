// One image from file to model input, the same way for training, packs and classification (decode → physical
// scale → centred field → resize → background white balance → optional MPM → optional encode). PreparePool
// (prepare-pool.ts) runs it on worker threads.
import sharp from 'sharp';
import { type MpmConfig, Mpm } from '../preprocess/mpm.js';
import { DecodeError, type DecodeErrorCode } from './errors.js';
import { cropToField, type GeometryConfig, resizeRgb, validateGeometry } from './geometry.js';
import { type DecodedImage, decodeImage, type RgbImage, readImageFile, withPixelBudget } from './image.js';
import { seededRandom } from './random.js';
import { backgroundColour, type CellMeasures, measureCells, RBC_DIAMETER_UM, type ScaleSource } from './scale.js';
import { normaliseStain, raisedToTypical, type StainRange, stainRangeOf, stainStrengths } from './stain.js';

/** How a pack stores each image: lossless (webp-lossless, png) or lossy at a quality (webp, jpeg). */
export type BlobCodec = 'webp-lossless' | 'webp' | 'jpeg' | 'png';
export const BLOB_CODECS: readonly BlobCodec[] = ['webp-lossless', 'webp', 'jpeg', 'png'];
export const isLossy = (codec: BlobCodec): boolean => codec === 'webp' || codec === 'jpeg';

/** The training data's physical scale, measured on it: what every image is brought to before the field is cut. */
export interface ReferenceScale {
  /** Median red-cell diameter, in source pixels. */
  rbcDiameter: number;
  /** The physical diameter assumed for a red cell, in µm. */
  rbcDiameterUm: number;
  /** Median extent of the white cell's nucleus, in source pixels: the fallback where no red cells can be measured. */
  nucleusExtent: number;
}

export type Rgb = [number, number, number];

/** How an image becomes the model's input; stored in the model file, so that classification repeats training. */
export interface InputRecipe {
  /** The field is in source pixels at the reference scale (or of the file, without one). */
  geometry: GeometryConfig;
  mpm: MpmConfig | null;
  /** null: the file's pixels are taken as they are (models made before scale normalisation). */
  scale: ReferenceScale | null;
  /**
   * The training data's background colours: their median first, then each distinct one of a sample. An image whose
   * background is close to one of them is balanced to it; any other to the median. null: colours as they are.
   */
  background: Rgb[] | null;
  /** The range of stain strengths over training images; an image outside it is brought to its edge. null: as it is. */
  stain: StainRange | null;
}

export interface ScaleReport {
  source: ScaleSource;
  /** µm per source pixel, as given or estimated; null when unknown. */
  um_per_px: number | null;
  /** The resize factor applied to bring the image to the model's scale (1 without one). */
  factor: number;
}

/** Factors outside this range need more enlargement or reduction than training covered: the answer is flagged. */
export const SCALE_RANGE: readonly [number, number] = [0.4, 2.5];
/** The factor is clamped here, so that a wild estimate cannot allocate a huge field. */
const FACTOR_LIMITS: readonly [number, number] = [0.1, 10];

/** How an image's stain was treated: as the recipe says, or raised to the training images' typical strength. */
export type StainTreatment = 'recipe' | 'raised';

export interface PreparedImage {
  image: RgbImage;
  scale: ScaleReport;
  /** 'raised' where raisePaleStain applied the recipe's typical strengths; else 'recipe'. */
  stain: StainTreatment;
  /** What the cell measurements found (the red cells only where the recipe has a scale); null where none were taken. */
  measures: CellMeasures | null;
}

export interface PrepareOptions {
  /** The user's µm per pixel; it replaces the estimate. */
  pixelSize?: number;
  /** An MPM instance made from recipe.mpm (worker threads keep one); without it, one is made. */
  mpm?: Mpm | null;
  /** Measure the cells even where the recipe needs no scale or colour: the classifier counts the nuclei. */
  measure?: boolean;
  /**
   * Bring a stain paler than the training images' typical one up to it (recipes that record it), for the cell
   * measurements and the model alike: the classifier's second look at an out-of-distribution image.
   */
  raisePaleStain?: boolean;
  /**
   * Let an undersized nucleus set the scale where no red cell does: the classifier's second look at an image read
   * as a platelet field, which a white cell shown at half its size resembles.
   */
  undersizedNucleusScale?: boolean;
  /**
   * Let short arcs of red cells cut by the edge set the scale where nothing else does, whatever the nucleus's size:
   * the classifier's second look at an image read without a scale, which an enlarged field resembles.
   */
  arcScale?: boolean;
  /**
   * Let a large nucleus (LARGE_NUCLEUS) set the scale where nothing else does: the classifier's second look at an
   * image read without a scale, which a field enlarged too little for an oversized nucleus resembles.
   */
  largeNucleusScale?: boolean;
  /**
   * The factor to bring the image to the training scale where nothing measurable sets one, as the network's features
   * estimate it: the classifier's second look at an image read without a scale.
   */
  appearanceFactor?: number;
}

/** Validates a recipe read from a model file or a pack, with one message per problem. */
export function validateInputRecipe(recipe: InputRecipe): InputRecipe {
  validateGeometry(recipe.geometry);
  const positive = (v: unknown) => typeof v === 'number' && Number.isFinite(v) && v > 0;
  if (recipe.scale !== null && !(positive(recipe.scale.rbcDiameter) && positive(recipe.scale.rbcDiameterUm) && positive(recipe.scale.nucleusExtent))) {
    throw new RangeError(`input recipe: scale needs positive rbcDiameter, rbcDiameterUm and nucleusExtent, got ${JSON.stringify(recipe.scale)}`);
  }
  const isColour = (c: unknown) => Array.isArray(c) && c.length === 3 && c.every((v) => Number.isFinite(v) && v > 0 && v <= 255);
  if (recipe.background !== null && !(Array.isArray(recipe.background) && recipe.background.length > 0 && recipe.background.every(isColour))) {
    throw new RangeError(`input recipe: background must be a list of colours, each three numbers in (0, 255], got ${JSON.stringify(recipe.background)}`);
  }
  const isRange = (r: unknown) => Array.isArray(r) && r.length === 2 && positive(r[0]) && positive(r[1]) && r[0] <= r[1];
  const isTypical = (t: unknown) => t === undefined || (Array.isArray(t) && t.length === 2 && positive(t[0]) && positive(t[1]));
  if (recipe.stain !== null && !(isRange(recipe.stain?.haematoxylin) && isRange(recipe.stain?.eosin) && isTypical(recipe.stain?.typical))) {
    throw new RangeError(
      `input recipe: stain needs haematoxylin and eosin ranges [low, high] of positive numbers (and, where given, two positive typical strengths), got ${JSON.stringify(recipe.stain)}`,
    );
  }
  return recipe;
}

/** A recorded background as a list of colours: model files and packs made before the list record a single colour. */
export function backgroundColours(recorded: Rgb | Rgb[] | null | undefined): Rgb[] | null {
  if (!recorded) return null;
  return Array.isArray(recorded[0]) ? (recorded as Rgb[]) : [recorded as Rgb];
}

/**
 * Per-image red-cell estimates scatter on one scanner: 88 % of PBC images fall within ±10 % of the median, and the
 * tails are abnormal or few red cells. Resampling by a difference inside that spread adds more error than it takes
 * away (measured on PBC validation), so differences under 20 % are left alone.
 */
const SCALE_NOISE = 0.2;
const beyondNoise = (factor: number) => (Math.abs(Math.log(factor)) < Math.log(1 + SCALE_NOISE) ? 1 : factor);

/**
 * A nucleus wider than this many times the training images' median is larger than 99 % of PBC's at their scale (PBC
 * validation: median 122 px, 99th percentile 206, the largest 254, against a median of 128 in training): the image
 * is most likely magnified. Lower bars cost unaltered images on PBC validation.
 */
const OVERSIZED_NUCLEUS = 1.65;
/**
 * A nucleus wider than this many times the training images' median is larger than 86 % of PBC's at their scale
 * (157 of 1,094 on *select* are larger): enough, with no red cell inside the frame, to trust short arcs of cut red
 * cells. On *select* fields enlarged 1.5 and 2 times, it gave 109 and 53 more images of 1,095 their scale within
 * 10 %; with no bar, tight crops lost 79 (their corners' arcs misjudge the scale), with this one 3.
 */
const ENLARGED_NUCLEUS = 1.2;
/**
 * A nucleus narrower than this many times the training images' median is smaller than nearly any white cell's at
 * their scale, but not than every erythroblast's or a platelet field's (PBC *select*: 5th percentiles 0.73 for
 * neutrophils and 0.67 for lymphocytes, against 0.44 for erythroblasts; platelet fields' median 0.42). So it sets
 * the scale only when asked (PrepareOptions.undersizedNucleusScale).
 */
const UNDERSIZED_NUCLEUS = 0.6;
/**
 * A nucleus wider than this many times the training images' median is larger than most of PBC's at their scale,
 * but not than every large cell's, so it sets the scale only when asked (PrepareOptions.largeNucleusScale). Chosen
 * with the classifier's bar for that reading: the lowest at which no unaltered image of PBC's training part or
 * *select* half changed (docs/results.md).
 */
const LARGE_NUCLEUS = 1.4;

/** The options that let a weaker cue set the scale where the usual ones give none: a classifier's second look. */
export type ScaleCues = Pick<PrepareOptions, 'arcScale' | 'largeNucleusScale' | 'undersizedNucleusScale' | 'appearanceFactor'>;

/**
 * The scale to apply: the user's pixel size, else the red cells, else (in a tight crop, or where the nucleus is
 * enlarged, or always with `arcScale`) short arcs of red cells cut by the edge, else (in a tight crop, or where the
 * nucleus is oversized, or large with `largeNucleusScale`, or undersized with `undersizedNucleusScale`) the white
 * cell's nucleus, else the factor the network's features give (`appearanceFactor`), else none.
 */
export function chooseScale(
  reference: ReferenceScale | null,
  measures: CellMeasures | null,
  pixelSize?: number,
  { arcScale = false, largeNucleusScale = false, undersizedNucleusScale = false, appearanceFactor }: ScaleCues = {},
): ScaleReport {
  if (!reference) return { source: 'none', um_per_px: pixelSize ?? null, factor: 1 };
  const referenceUm = reference.rbcDiameterUm / reference.rbcDiameter;
  const clamp = (f: number) => Math.min(FACTOR_LIMITS[1], Math.max(FACTOR_LIMITS[0], f));
  if (pixelSize !== undefined) return { source: 'given', um_per_px: pixelSize, factor: clamp(pixelSize / referenceUm) };
  const fromRedCells = (diameter: number): ScaleReport => ({
    source: 'red-cells',
    um_per_px: reference.rbcDiameterUm / diameter,
    factor: clamp(beyondNoise(reference.rbcDiameter / diameter)),
  });
  if (measures?.rbcDiameter) return fromRedCells(measures.rbcDiameter);
  // Short arcs of red cells misjudge crowded fields and the corners of tight crops, so they are trusted only where
  // the nucleus, too, says the field is enlarged or cropped, or when asked (a second look, which the classifier's
  // detector judges). The nucleus's own size depends on the cell type, so it stands in for red cells only where
  // nothing else can: in a tight crop, or where it is larger than nearly any at the training scale, or (when asked)
  // large or small. Elsewhere a missing red-cell estimate leaves the file's scale as it is.
  const extent = measures?.nucleusExtent;
  const enlarged = !!extent && (measures.tightCrop || extent > ENLARGED_NUCLEUS * reference.nucleusExtent);
  if (measures?.arcDiameter && (arcScale || enlarged)) return fromRedCells(measures.arcDiameter);
  const unmeasured: ScaleReport =
    appearanceFactor === undefined
      ? { source: 'none', um_per_px: null, factor: 1 }
      : { source: 'appearance', um_per_px: referenceUm * clamp(appearanceFactor), factor: clamp(appearanceFactor) };
  if (!extent) return unmeasured;
  const undersized = undersizedNucleusScale && extent < UNDERSIZED_NUCLEUS * reference.nucleusExtent;
  const large = largeNucleusScale && extent > LARGE_NUCLEUS * reference.nucleusExtent;
  if (measures.tightCrop || extent > OVERSIZED_NUCLEUS * reference.nucleusExtent || undersized || large) {
    const factor = clamp(reference.nucleusExtent / extent);
    return { source: 'white-cell', um_per_px: referenceUm * factor, factor };
  }
  return unmeasured;
}

/**
 * Brings one decoded image to the model's input: measured (or given) scale → the centred field at that scale,
 * padded with the image's own background colour → resized → white-balanced to the training background → stain
 * strength brought into the training range → MPM.
 */
export async function prepareImage(image: RgbImage, recipe: InputRecipe, options: PrepareOptions = {}): Promise<PreparedImage> {
  // Under raisePaleStain the cell measurements see the raised stain too: they find the nucleus by its darkness.
  // Otherwise they see the image as it is: brought up to the range's lower edge, red cells alone show a nucleus.
  const raised = options.raisePaleStain && recipe.stain?.typical ? raisedToTypical(recipe.stain) : null;
  const stain = raised ?? recipe.stain;
  const measures =
    options.measure || recipe.scale !== null || recipe.background !== null ? measureCells(image, raised, { redCells: recipe.scale !== null }) : null;
  const scale = chooseScale(recipe.scale, measures, options.pixelSize, options);
  const fill = measures?.background ?? [255, 255, 255];
  const field = recipe.geometry.field === null ? null : Math.max(1, Math.round(recipe.geometry.field / scale.factor));
  let prepared = await resizeRgb(cropToField(image, field, fill), recipe.geometry.size);
  if (recipe.background && measures) prepared = whiteBalance(prepared, measures.background, recipe.background);
  if (stain) prepared = normaliseStain(prepared, backgroundColour(prepared), stain);
  if (recipe.mpm) prepared = (options.mpm ?? (await Mpm.create(recipe.mpm))).apply(prepared);
  return { image: prepared, scale, stain: raised ? 'raised' : 'recipe', measures };
}

/** How far (log colour, Euclidean) a background may lie from a training one and still count as that one. */
const KNOWN_BACKGROUND = 0.03;

/**
 * Per-channel gains (limited to ×0.5–×2) that move the image's background to the training background it is close
 * to, or else to their median. One scanner shows more than one background (PBC has a cream one and, in a few per
 * cent of images, a lavender one): balancing all to the median would recolour images the model was trained on as
 * they are, while a cast from another lamp or camera is far from all of them and goes.
 */
export function whiteBalance(image: RgbImage, background: readonly number[], references: readonly Rgb[]): RgbImage {
  const logGains = (reference: Rgb) => [0, 1, 2].map((c) => Math.log(reference[c] / Math.max(1, background[c])));
  const length = (v: number[]) => Math.hypot(...v);
  const nearest = references.map(logGains).reduce((a, b) => (length(b) < length(a) ? b : a));
  const gains = length(nearest) <= KNOWN_BACKGROUND ? nearest : logGains(references[0]);
  return scaleChannels(
    image,
    gains.map((g) => Math.min(2, Math.max(0.5, Math.exp(g)))),
  );
}

/** Each channel times its gain, rounded and capped at 255 (read from a table per channel). */
export function scaleChannels(image: RgbImage, gains: readonly number[]): RgbImage {
  const [red, green, blue] = gains.map((gain) => Uint8Array.from({ length: 256 }, (_, v) => Math.min(255, Math.round(v * gain))));
  const { data } = image;
  const out = new Uint8Array(data.length);
  for (let p = 0; p < out.length; p += 3) {
    out[p] = red[data[p]];
    out[p + 1] = green[data[p + 1]];
    out[p + 2] = blue[data[p + 2]];
  }
  return { width: image.width, height: image.height, data: out };
}

/** What a data set's images are brought to: its scale, its background colours and the range of its stain strengths. */
export interface Reference {
  scale: ReferenceScale;
  background: Rgb[];
  /** null where it was not measured (without a geometry to prepare the images at). */
  stain: StainRange | null;
}

/** A data set's red-cell and nucleus sizes (medians over the measurable images) and background colours (median first, then each distinct one). */
export function referenceFrom(measures: readonly CellMeasures[]): Omit<Reference, 'stain'> {
  const median = (values: number[]) => {
    if (!values.length)
      throw new Error(
        "no image in the sample shows measurable red cells and a white cell; the data set's scale cannot be measured (train or pack with --no-scale)",
      );
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[sorted.length >> 1];
  };
  return {
    scale: {
      rbcDiameter: median(measures.flatMap((m) => (m.rbcDiameter ? [m.rbcDiameter] : []))),
      rbcDiameterUm: RBC_DIAMETER_UM,
      nucleusExtent: median(measures.flatMap((m) => (m.nucleusExtent ? [m.nucleusExtent] : []))),
    },
    background: [[0, 1, 2].map((c) => median(measures.map((m) => m.background[c]))) as Rgb, ...distinctColours(measures.map((m) => m.background))],
  };
}

/**
 * The reference of a data set, from a seeded sample of its (training) files; unreadable files are passed over. The
 * stain range is measured on the sample as the model sees it, brought to the reference and cut to `geometry`: a
 * second pass over the files, so that the sample is never held in memory whole (a user's images can be large).
 */
export async function measureReference(
  paths: readonly string[],
  options: { sample?: number; seed?: number; maxPixels?: number; geometry?: GeometryConfig } = {},
): Promise<Reference> {
  const sample = seededSample(paths, options.sample ?? 400, options.seed ?? 0);
  const read = (file: string) => readImageFile(file, { maxPixels: options.maxPixels }).catch(() => null);
  const measures: CellMeasures[] = [];
  for (const file of sample) {
    const image = await read(file);
    if (image) measures.push(measureCells(image));
  }
  const { scale, background } = referenceFrom(measures);
  const geometry = options.geometry;
  if (!geometry) return { scale, background, stain: null };
  const strengths: [number, number][] = [];
  for (const file of sample) {
    const image = await read(file);
    if (!image) continue;
    const { image: prepared } = await prepareImage(image, { geometry, mpm: null, scale, background, stain: null });
    strengths.push(stainStrengths(prepared, backgroundColour(prepared)));
  }
  return { scale, background, stain: stainRangeOf(strengths) };
}

/** The colours rounded to whole values, each once, in order. */
function distinctColours(colours: readonly Rgb[]): Rgb[] {
  const keys = new Set(colours.map((c) => c.map(Math.round).join(',')));
  return [...keys].sort().map((key) => key.split(',').map(Number) as Rgb);
}

/** n items chosen by a seeded Fisher–Yates shuffle, kept in their original order. */
function seededSample<T>(items: readonly T[], n: number, seed: number): T[] {
  if (items.length <= n) return [...items];
  const random = seededRandom(seed);
  const order = items.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order
    .slice(0, n)
    .sort((a, b) => a - b)
    .map((i) => items[i]);
}

/**
 * Decodes one image once (a file's path, its bytes, or pixels, taken as they are) and prepares it for each look; a
 * look that fails has its Error in its place, and a decoding failure throws.
 */
export async function decodeAndPrepare(
  input: string | Uint8Array | DecodedImage,
  recipe: InputRecipe,
  looks: PrepareOptions[],
  maxPixels?: number,
): Promise<{ warnings: string[]; looks: (PreparedImage | Error)[] }> {
  const image =
    typeof input === 'string' ? await readImageFile(input, { maxPixels }) : input instanceof Uint8Array ? await decodeImage(input, { maxPixels }) : input;
  const prepared: (PreparedImage | Error)[] = [];
  for (const look of looks) {
    prepared.push(await withPixelBudget(image.width * image.height, () => prepareImage(image, recipe, look)).catch((error: Error) => error));
  }
  return { warnings: image.warnings ?? [], looks: prepared };
}

export interface PrepareRecipe extends InputRecipe {
  maxPixels?: number;
  /** Encode the result (for packs); without it the raw HWC pixels come back. */
  encode?: { codec: BlobCodec; quality: number };
}

export type PrepareResult = { ok: true; data: Uint8Array } | { ok: false; code: DecodeErrorCode; message: string };

/** Prepares images on the calling thread; `mpm` must have been created from recipe.mpm. */
export async function prepareFile(path: string, recipe: PrepareRecipe, mpm: Mpm | null): Promise<PrepareResult> {
  try {
    const { image } = await prepareImage(await readImageFile(path, { maxPixels: recipe.maxPixels }), recipe, { mpm });
    return { ok: true, data: recipe.encode ? await encodeRgb(image, recipe.encode.codec, recipe.encode.quality) : image.data };
  } catch (error) {
    if (error instanceof DecodeError) return { ok: false, code: error.code, message: error.message };
    throw error;
  }
}

export async function encodeRgb(image: RgbImage, codec: BlobCodec, quality: number): Promise<Uint8Array> {
  const input = sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } });
  const encoded =
    codec === 'webp-lossless'
      ? input.webp({ lossless: true })
      : codec === 'webp'
        ? input.webp({ quality })
        : codec === 'jpeg'
          ? input.jpeg({ quality, mozjpeg: true })
          : input.png({ compressionLevel: 9 });
  const buffer = await encoded.toBuffer();
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length);
}
