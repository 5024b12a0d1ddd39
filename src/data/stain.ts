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

/** Haematoxylin and eosin strengths of one image; 0 for a stain it does not show. */
export function stainStrengths(image: RgbImage, background: readonly number[]): [number, number] {
  // Per channel and 8-bit value: the density (never below 0, held in single precision) and its share of each stain's
  // density, so that a pixel costs three lookups per sum and no array of densities is made.
  const od = densityTables(background).map((t) => t.map((d) => Math.fround(Math.max(0, d))));
  const share = (k: number) => od.map((t, c) => t.map((d) => d * HED_FROM_RGB[3 * c + k]));
  const [[hR, hG, hB], [eR, eG, eB]] = [share(0), share(1)];
  const [odR, odG, odB] = od;
  const histograms = [new Uint32Array(BINS), new Uint32Array(BINS)];
  // floor(density / MAX_DENSITY · BINS), clamped to the bins: truncating floors a positive finite number.
  const bin = (density: number) => {
    const b = (density / MAX_DENSITY) * BINS;
    return b >= BINS - 1 ? BINS - 1 : b > 0 ? b | 0 : 0;
  };
  const { data } = image;
  let stained = 0;
  for (let p = 0; p < data.length; p += 3) {
    const [r, g, b] = [data[p], data[p + 1], data[p + 2]];
    if (odR[r] + odG[g] + odB[b] < STAINED) continue;
    stained++;
    histograms[0][bin(hR[r] + hG[g] + hB[b])]++;
    histograms[1][bin(eR[r] + eG[g] + eB[b])]++;
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

/**
 * Each pixel's haematoxylin and eosin densities (relative to the background) times their gains; the rest stays.
 * With densities as row vectors, od' = od · HED_FROM_RGB · diag(gains, 1) · RGB_FROM_HED: linear in each channel's
 * density, so each output channel is the background times a product of three per-channel factors, exp(−od · a), each
 * read from a table of the 256 values: no exponential per pixel.
 */
export function scaleStains(image: RgbImage, background: readonly number[], gains: readonly [number, number]): RgbImage {
  const [m, inv] = [RGB_FROM_HED, HED_FROM_RGB];
  const scaled = [gains[0], gains[1], 1];
  const od = densityTables(background);
  // factors[c][j][v]: output channel c's factor from input channel j at value v (the background folded into j = 0).
  const factors = [0, 1, 2].map((c) =>
    od.map((table, j) => {
      let a = 0;
      for (let k = 0; k < 3; k++) a += inv[3 * j + k] * scaled[k] * m[3 * k + c];
      return table.map((d) => (j === 0 ? background[c] : 1) * Math.exp(-d * a));
    }),
  );
  const [[rR, rG, rB], [gR, gG, gB], [bR, bG, bB]] = factors;
  const { data } = image;
  const out = new Uint8Array(data.length);
  // Math.round(v), clamped to 0..255, without its slow call: v + 0.5 truncated, less one where that sum was rounded
  // up to the next integer (just below a half), which leaves the integer n with n − 0.5 ≤ v < n + 0.5.
  const level = (v: number) => {
    if (!(v > 0)) return 0;
    if (v >= 255) return 255;
    const n = (v + 0.5) | 0;
    return n - 0.5 > v ? n - 1 : n;
  };
  for (let p = 0; p < out.length; p += 3) {
    const [r, g, b] = [data[p], data[p + 1], data[p + 2]];
    out[p] = level(rR[r] * rG[g] * rB[b]);
    out[p + 1] = level(gR[r] * gG[g] * gB[b]);
    out[p + 2] = level(bR[r] * bG[g] * bB[b]);
  }
  return { width: image.width, height: image.height, data: out };
}
