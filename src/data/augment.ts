// Batch augmentations on tensors, drawn from a seeded generator so that a run repeats exactly.
// Geometry (flips, 90° rotations, random resized crops) is one affine map per image and one grid-sample call;
// colour (brightness, saturation, hue) is one 3×3 matrix per image, then contrast about each image's mean grey.
import * as E from '../engine/index.js';

export interface AugmentConfig {
  hflip: boolean;
  vflip: boolean;
  rot90: boolean;
  /** Random resized crop: the area fraction and aspect-ratio ranges; null keeps the whole field. */
  crop: { scale: [number, number]; ratio: [number, number] } | null;
  /** Maximum relative change: a factor is drawn from [1 − x, 1 + x]. */
  brightness: number;
  contrast: number;
  saturation: number;
  /** Maximum hue rotation, as a fraction of a full turn (0.5 = ±180°). */
  hue: number;
}

export const DEFAULT_AUGMENT: AugmentConfig = {
  hflip: true, vflip: true, rot90: true, crop: null, brightness: 0.1, contrast: 0.1, saturation: 0, hue: 0,
};

export const NO_AUGMENT: AugmentConfig = {
  hflip: false, vflip: false, rot90: false, crop: null, brightness: 0, contrast: 0, saturation: 0, hue: 0,
};

/** mulberry32: a small, well-distributed 32-bit generator; enough for augmentation draws. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const deviceOf = (x: E.Tensor) => x.device as E.Device;
const uniform = (random: () => number, lo: number, hi: number) => lo + (hi - lo) * random();

/** Augments x [N, 3, H, W] with values in [0, 1], on x's device; returns a new tensor in [0, 1]. */
export function augmentBatch(x: E.Tensor, config: AugmentConfig, random: () => number): E.Tensor {
  return E.tidy(() => {
    let out = x;
    if (config.hflip || config.vflip || config.rot90 || config.crop) out = augmentGeometry(out, config, random);
    if (config.brightness || config.saturation || config.hue) out = augmentColour(out, config, random);
    if (config.contrast) {
      const n = out.shape[0];
      const factors = E.tensor(Float32Array.from({ length: n }, () => uniform(random, 1 - config.contrast, 1 + config.contrast)), [n, 1, 1, 1], { device: deviceOf(x) });
      const meanGrey = greyscale(out).mean([1, 2, 3], true);
      out = out.sub(meanGrey).mul(factors).add(meanGrey);
    }
    return out === x ? x.clone() : out.clamp(0, 1);
  });
}

function augmentGeometry(x: E.Tensor, config: AugmentConfig, random: () => number): E.Tensor {
  const [n, c, h, w] = x.shape;
  const theta = new Float32Array(n * 6);
  for (let i = 0; i < n; i++) {
    // The 90° rotation and flips act on output coordinates; the crop then scales and shifts into the input.
    let [a, b, d, e] = [1, 0, 0, 1];
    for (let k = config.rot90 ? Math.floor(random() * 4) : 0; k > 0; k--) [a, b, d, e] = [b, -a, e, -d];
    if (config.hflip && random() < 0.5) [a, d] = [-a, -d];
    if (config.vflip && random() < 0.5) [b, e] = [-b, -e];
    let [sx, sy, tx, ty] = [1, 1, 0, 0];
    if (config.crop) {
      const area = uniform(random, ...config.crop.scale);
      const logRatio = uniform(random, Math.log(config.crop.ratio[0]), Math.log(config.crop.ratio[1]));
      sx = Math.min(1, Math.sqrt(area * Math.exp(logRatio)));
      sy = Math.min(1, Math.sqrt(area / Math.exp(logRatio)));
      tx = uniform(random, -(1 - sx), 1 - sx);
      ty = uniform(random, -(1 - sy), 1 - sy);
    }
    theta.set([sx * a, sx * b, tx, sy * d, sy * e, ty], i * 6);
  }
  const grid = E.F.affineGrid(E.tensor(theta, [n, 2, 3], { device: deviceOf(x) }), [n, c, h, w]);
  return E.F.gridSample(x, grid, { padding: 'reflection' });
}

// Luma weights (ITU-R BT.601) and the RGB → YIQ transform, whose I/Q plane a hue change rotates.
const LUMA = [0.299, 0.587, 0.114];
const TO_YIQ = [0.299, 0.587, 0.114, 0.596, -0.274, -0.322, 0.211, -0.523, 0.312];
const FROM_YIQ = [1, 0.956171, 0.621433, 1, -0.272689, -0.646813, 1, -1.103744, 1.700623];  // the inverse of TO_YIQ

function greyscale(x: E.Tensor): E.Tensor {
  return E.tidy(() => x.mul(E.tensor(LUMA, [1, 3, 1, 1], { device: deviceOf(x) })).sum(1, true));
}

function multiply3(p: number[], q: number[]): number[] {
  const out = new Array<number>(9).fill(0);
  for (let r = 0; r < 3; r++) for (let c = 0; c < 3; c++) for (let k = 0; k < 3; k++) out[r * 3 + c] += p[r * 3 + k] * q[k * 3 + c];
  return out;
}

function augmentColour(x: E.Tensor, config: AugmentConfig, random: () => number): E.Tensor {
  const [n, c, h, w] = x.shape;
  const matrices = new Float32Array(n * 9);
  for (let i = 0; i < n; i++) {
    const brightness = uniform(random, 1 - config.brightness, 1 + config.brightness);
    const saturation = uniform(random, 1 - config.saturation, 1 + config.saturation);
    const angle = uniform(random, -config.hue, config.hue) * 2 * Math.PI;
    const [cos, sin] = [Math.cos(angle), Math.sin(angle)];
    const inYiq = [brightness, 0, 0, 0, brightness * saturation * cos, -brightness * saturation * sin, 0, brightness * saturation * sin, brightness * saturation * cos];
    matrices.set(multiply3(FROM_YIQ, multiply3(inYiq, TO_YIQ)), i * 9);
  }
  return E.tensor(matrices, [n, 3, 3], { device: deviceOf(x) }).bmm(x.reshape([n, c, h * w])).reshape([n, c, h, w]);
}
