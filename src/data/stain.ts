// Stain strength normalisation. Another lab's Giemsa or Wright stain can be paler or darker than the training
// slides'. Each image's haematoxylin and eosin densities (Ruifrok–Johnston colour deconvolution, relative to its
// background) are measured by a high percentile over the stained pixels, as in Macenko's method. Where a strength
// lies outside the range seen in training it is scaled back to the range's nearest edge; inside it the image is
// left as it is, so that the training images themselves are not recoloured.
import { HED_FROM_RGB, RGB_FROM_HED } from './augment.js';
import type { RgbImage } from './image.js';

/** The range of each stain's strength over training images, as [low, high]. */
export interface StainRange {
  haematoxylin: [number, number];
  eosin: [number, number];
  /** The median haematoxylin and eosin strengths of the training images; absent in model files made before it. */
  typical?: [number, number];
}

/** Pixels whose optical density (summed over RGB) is below this are background, and do not count. */
const STAINED = 0.15;
/** The strength of a stain: this percentile of its density over the stained pixels (Macenko's robust maximum). */
const PERCENTILE = 0.99;
const BINS = 1024;
const MAX_DENSITY = 3;

/** Optical density relative to the background, -ln(I / I₀), for each 8-bit value of each channel. */
function densityTables(background: readonly number[]): Float64Array[] {
  return [0, 1, 2].map((c) => {
    const table = new Float64Array(256);
    for (let v = 0; v < 256; v++) table[v] = -Math.log(Math.max(1, v) / Math.max(1, background[c]));
    return table;
  });
}

/** Optical densities relative to the background, per pixel, never below 0. */
function densities(image: RgbImage, background: readonly number[]): Float32Array {
  const tables = densityTables(background).map((t) => t.map((d) => Math.max(0, d)));
  const od = new Float32Array(image.data.length);
  for (let p = 0; p < od.length; p += 3) {
    od[p] = tables[0][image.data[p]];
    od[p + 1] = tables[1][image.data[p + 1]];
    od[p + 2] = tables[2][image.data[p + 2]];
  }
  return od;
}

/** Haematoxylin and eosin strengths of one image; 0 for a stain it does not show. */
export function stainStrengths(image: RgbImage, background: readonly number[]): [number, number] {
  const od = densities(image, background);
  const histograms = [new Uint32Array(BINS), new Uint32Array(BINS)];
  let stained = 0;
  for (let p = 0; p < od.length; p += 3) {
    if (od[p] + od[p + 1] + od[p + 2] < STAINED) continue;
    stained++;
    for (let k = 0; k < 2; k++) {
      const density = od[p] * HED_FROM_RGB[k] + od[p + 1] * HED_FROM_RGB[3 + k] + od[p + 2] * HED_FROM_RGB[6 + k];
      histograms[k][Math.min(BINS - 1, Math.max(0, Math.floor((density / MAX_DENSITY) * BINS)))]++;
    }
  }
  return histograms.map((h) => {
    if (stained === 0) return 0;
    let count = 0;
    for (let b = 0; b < BINS; b++) if ((count += h[b]) >= PERCENTILE * stained) return ((b + 0.5) / BINS) * MAX_DENSITY;
    return MAX_DENSITY;
  }) as [number, number];
}

/**
 * The range of strengths over a sample of training images: the 2nd to the 98th percentile of each stain's, and its
 * median, the typical training slide's strength (a second look at a pale out-of-distribution image raises it there).
 */
export function stainRangeOf(strengths: readonly (readonly [number, number])[]): StainRange {
  const sorted = [0, 1].map((k) => strengths.map((s) => s[k]).sort((a, b) => a - b));
  const range = (k: number): [number, number] => [sorted[k][Math.floor(0.02 * (sorted[k].length - 1))], sorted[k][Math.ceil(0.98 * (sorted[k].length - 1))]];
  const median = (k: number) => sorted[k][Math.floor(0.5 * (sorted[k].length - 1))];
  return { haematoxylin: range(0), eosin: range(1), typical: [median(0), median(1)] };
}

/**
 * The range with its lower edges raised to the typical strengths: a paler stain is brought up to the typical
 * training slide's. A range without them (older model files) stays as it is.
 */
export function raisedToTypical(range: StainRange): StainRange {
  const { typical } = range;
  if (!typical) return range;
  const raise = ([low, high]: [number, number], to: number): [number, number] => [Math.min(Math.max(low, to), high), high];
  return { haematoxylin: raise(range.haematoxylin, typical[0]), eosin: raise(range.eosin, typical[1]), typical };
}

/** Scales each stain's density so that its strength falls inside the training range; the background stays. */
export function normaliseStain(image: RgbImage, background: readonly number[], range: StainRange): RgbImage {
  const strengths = stainStrengths(image, background);
  const gains = [range.haematoxylin, range.eosin].map(([low, high], k) => {
    const s = strengths[k];
    // A stain the image does not show (a strength near 0) has nothing to scale.
    return s < 0.05 ? 1 : Math.min(high, Math.max(low, s)) / s;
  });
  return gains[0] === 1 && gains[1] === 1 ? image : scaleStains(image, background, gains as [number, number]);
}

/** Each pixel's haematoxylin and eosin densities (relative to the background) times their gains; the rest stays. */
export function scaleStains(image: RgbImage, background: readonly number[], gains: readonly [number, number]): RgbImage {
  const [m, inv] = [RGB_FROM_HED, HED_FROM_RGB];
  const out = new Uint8Array(image.data.length);
  const [r, g, b] = densityTables(background);
  const { data } = image;
  // Row vectors: hed = od · inv; H and E scaled; od' = hed · m. Written out per pixel: every restained image pays it.
  for (let p = 0; p < out.length; p += 3) {
    const [odR, odG, odB] = [r[data[p]], g[data[p + 1]], b[data[p + 2]]];
    const h = (odR * inv[0] + odG * inv[3] + odB * inv[6]) * gains[0];
    const e = (odR * inv[1] + odG * inv[4] + odB * inv[7]) * gains[1];
    const d = odR * inv[2] + odG * inv[5] + odB * inv[8];
    for (let c = 0; c < 3; c++) out[p + c] = Math.max(0, Math.min(255, Math.round(background[c] * Math.exp(-(h * m[c] + e * m[3 + c] + d * m[6 + c])))));
  }
  return { width: image.width, height: image.height, data: out };
}
