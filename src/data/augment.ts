// Batch augmentations on tensors, drawn from seeded generators so that a run repeats exactly. Given one generator
// per image, each image's draws depend on its own generator only, not on the other images in its batch: a global
// batch split across processes sees the draws one process would make.
// Geometry (flips, 90° rotations, random resized crops, zoom) is one affine map per image and one grid-sample
// call, filling what lies outside with the image's background colour as scale normalisation does; colour
// (brightness, saturation, hue) is one 3×3 matrix per image, then contrast about each image's mean grey. What other
// labs' images differ in follows: a tight frame about the cell, stain strength in haematoxylin–eosin space, colour
// temperature, resolution, blur and noise.
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
  /** Zoom about the centre, drawn log-uniformly from [lo, hi] (below 1 the cell shrinks in its background); null: none. */
  scale?: [number, number] | null;
  /**
   * A tight frame: all but a centred square, its side drawn uniformly from [lo, hi] as a fraction of the field, is
   * filled with the background colour, as a tight crop or an enlarged field brought back to scale shows the cell (a
   * side of 1 or more leaves the field whole); null or absent: none.
   */
  frame?: [number, number] | null;
  /**
   * HED jitter of each stain's optical density (haematoxylin, eosin): x draws each factor from [1 − x, 1 + x],
   * [lo, hi] from that range (a stain step that caps the darkest stains at inference makes the paler side the one to cover).
   */
  stain?: number | [number, number];
  /** Maximum red/blue gain shift: gains (1 + t, 1, 1 − t), t drawn from [−x, x]. */
  temperature?: number;
  /** Maximum Gaussian blur sigma, in model pixels, applied to half of the images. */
  blur?: number;
  /**
   * The lowest resolution: an image is resampled down to a factor of its side drawn from [x, 1], then back up, as a
   * camera with fewer pixels per cell or a weaker objective shows it (absent or 1: never).
   */
  resolution?: number;
  /** Maximum standard deviation of additive Gaussian noise (intensity in [0, 1]). */
  noise?: number;
  /**
   * The share of images that get the zoom, frame, stain, temperature, hue, saturation, resolution, blur and noise changes
   * (absent: 1, all of them); the rest keep the training images' own scale and look, which a fine-tune towards
   * robustness needs to keep its accuracy on them.
   */
  shiftShare?: number;
  /** Mixup's Beta α (0 or absent: off). Whole batches are mixed, by the trainer, not image by image here. */
  mixup?: number;
  /** CutMix's Beta α (0 or absent: off); with mixup on too, each batch uses one of them. */
  cutmix?: number;
}

export const DEFAULT_AUGMENT: AugmentConfig = {
  hflip: true,
  vflip: true,
  rot90: true,
  crop: null,
  brightness: 0.1,
  contrast: 0.1,
  saturation: 0,
  hue: 0,
};

export const NO_AUGMENT: AugmentConfig = {
  hflip: false,
  vflip: false,
  rot90: false,
  crop: null,
  brightness: 0,
  contrast: 0,
  saturation: 0,
  hue: 0,
  scale: null,
  frame: null,
  stain: 0,
  temperature: 0,
  blur: 0,
  noise: 0,
};

export { seededRandom } from './random.js';

const deviceOf = (x: E.Tensor) => x.device as E.Device;
const uniform = (random: () => number, lo: number, hi: number) => lo + (hi - lo) * random();

/** Draws for the batch's images: one generator each, or one shared by the whole batch. */
export type AugmentRandom = (() => number) | readonly (() => number)[];

/** Image i's generator. */
type Draws = (i: number) => () => number;

function drawsOf(random: AugmentRandom, n: number): Draws {
  if (typeof random === 'function') return () => random;
  if (random.length !== n) throw new RangeError(`augmentBatch: ${random.length} generators for ${n} images`);
  return (i) => random[i];
}

/** Augments x [N, 3, H, W] with values in [0, 1], on x's device; returns a new tensor in [0, 1]. */
export function augmentBatch(x: E.Tensor, config: AugmentConfig, randomness: AugmentRandom): E.Tensor {
  const random = drawsOf(randomness, x.shape[0]);
  return E.tidy(() => {
    let out = x;
    const background = config.scale || config.frame || config.stain ? backgroundOf(x) : null;
    // The zoom, frame, stain, temperature, hue, saturation, resolution, blur and noise changes reach only the share of
    // images chosen for them.
    const shifted = chooseShifted(config.shiftShare ?? 1, random);
    if (config.hflip || config.vflip || config.rot90 || config.crop || config.scale) out = augmentGeometry(out, config, random, shifted, background);
    if (config.frame) out = augmentFrame(out, config.frame, random, shifted, background!);
    const shiftedOnly = keepUnshifted(x.shape[0], shifted, deviceOf(x));
    if (config.stain || config.temperature) {
      let changed = out;
      if (config.stain) changed = augmentStain(changed, config.stain, random, background!);
      if (config.temperature) changed = augmentTemperature(changed, config.temperature, random);
      out = shiftedOnly(out, changed);
    }
    if (config.brightness || config.saturation || config.hue) out = augmentColour(out, config, random, shifted);
    if (config.contrast) {
      const n = out.shape[0];
      const factors = E.tensor(
        Float32Array.from({ length: n }, (_, i) => uniform(random(i), 1 - config.contrast, 1 + config.contrast)),
        [n, 1, 1, 1],
        { device: deviceOf(x) },
      );
      const meanGrey = greyscale(out).mean([1, 2, 3], true);
      out = out.sub(meanGrey).mul(factors).add(meanGrey);
    }
    const lowered = config.resolution !== undefined && config.resolution < 1;
    if (lowered || config.blur || config.noise) {
      let changed = out;
      if (lowered) changed = augmentResolution(changed, config.resolution!, random);
      if (config.blur) changed = augmentBlur(changed, config.blur, random);
      if (config.noise) changed = augmentNoise(changed, config.noise, random);
      out = shiftedOnly(out, changed);
    }
    return out === x ? x.clone() : out.clamp(0, 1);
  });
}

/** Whether image i gets the shifts. */
type Shifted = ((i: number) => boolean) & { all: boolean };

/**
 * Chooses each image with probability `share`, drawn from its generator when first asked (before the zoom where there
 * is one), and not at all when the share is 1, so that runs without a share repeat their draws.
 */
function chooseShifted(share: number, random: Draws): Shifted {
  if (share >= 1) return Object.assign(() => true, { all: true });
  const chosen = new Map<number, boolean>();
  const shifted = (i: number) => {
    if (!chosen.has(i)) chosen.set(i, random(i)() < share);
    return chosen.get(i)!;
  };
  return Object.assign(shifted, { all: false });
}

/** Blends a change back out of the images not chosen for it, which stay exactly as they were. */
function keepUnshifted(n: number, shifted: Shifted, device: E.Device): (before: E.Tensor, after: E.Tensor) => E.Tensor {
  if (shifted.all) return (_, after) => after;
  const mask = E.tensor(
    Float32Array.from({ length: n }, (_, i) => (shifted(i) ? 1 : 0)),
    [n, 1, 1, 1],
    { device },
  );
  return (before, after) => before.add(after.sub(before).mul(mask));
}

/** Each image's background colour [N, 3, 1, 1]: the mean of the pixels brighter than halfway from its mean to its maximum. */
export function backgroundOf(x: E.Tensor): E.Tensor {
  return E.tidy(() => {
    const grey = greyscale(x);
    const mean = grey.mean([1, 2, 3], true);
    const mask = grey.gt(mean.add(grey.amax([1, 2, 3], true)).div(2)).float();
    return x
      .mul(mask)
      .sum([2, 3], true)
      .div(mask.sum([2, 3], true).clamp(1, Infinity))
      .clamp(0.3, 1);
  });
}

function augmentGeometry(x: E.Tensor, config: AugmentConfig, draws: Draws, shifted: Shifted, background: E.Tensor | null): E.Tensor {
  const [n, c, h, w] = x.shape;
  const theta = new Float32Array(n * 6);
  for (let i = 0; i < n; i++) {
    const random = draws(i);
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
    if (config.scale && shifted(i)) {
      const zoom = Math.exp(uniform(random, Math.log(config.scale[0]), Math.log(config.scale[1])));
      [sx, sy, tx, ty] = [sx / zoom, sy / zoom, tx / zoom, ty / zoom];
    }
    theta.set([sx * a, sx * b, tx, sy * d, sy * e, ty], i * 6);
  }
  const grid = E.F.affineGrid(E.tensor(theta, [n, 2, 3], { device: deviceOf(x) }), [n, c, h, w]);
  if (!background) return E.F.gridSample(x, grid, { padding: 'reflection' });
  // Sampled about the background, zeros outside: what lies beyond the image becomes the background colour.
  return E.F.gridSample(x.sub(background), grid, { padding: 'zeros' }).add(background);
}

/** The background colour outside a centred square of each shifted image, its side a fraction drawn from [lo, hi]. */
function augmentFrame(x: E.Tensor, [lo, hi]: [number, number], draws: Draws, shifted: Shifted, background: E.Tensor): E.Tensor {
  const [n, , h, w] = x.shape;
  // Inside the square: the outer product of a row and a column mask per image.
  const rows = new Float32Array(n * h).fill(1);
  const columns = new Float32Array(n * w).fill(1);
  const inside = (mask: Float32Array, i: number, length: number, side: number) => {
    const first = Math.round((length * (1 - side)) / 2);
    for (let k = 0; k < length; k++) mask[i * length + k] = k >= first && k < length - first ? 1 : 0;
  };
  for (let i = 0; i < n; i++) {
    if (!shifted(i)) continue;
    const side = uniform(draws(i), lo, hi);
    if (side >= 1) continue;
    inside(rows, i, h, side);
    inside(columns, i, w, side);
  }
  const device = deviceOf(x);
  const outside = E.tensor(rows, [n, 1, h, 1], { device })
    .mul(E.tensor(columns, [n, 1, 1, w], { device }))
    .neg()
    .add(1);
  // Added where outside is 1 and nothing elsewhere, so that the rest of the image stays exactly as it was.
  return x.add(background.sub(x).mul(outside));
}

// Ruifrok & Johnston's optical-density vectors of haematoxylin, eosin and DAB (rows), and their inverse.
export const RGB_FROM_HED = [0.65, 0.7, 0.29, 0.07, 0.99, 0.11, 0.27, 0.57, 0.78];
export const HED_FROM_RGB = invert3(RGB_FROM_HED);

function invert3(m: number[]): number[] {
  const [a, b, c, d, e, f, g, h, i] = m;
  const det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
  return [e * i - f * h, c * h - b * i, b * f - c * e, f * g - d * i, a * i - c * g, c * d - a * f, d * h - e * g, b * g - a * h, a * e - b * d].map(
    (v) => v / det,
  );
}

/** Stain strength: optical density relative to the background, scaled per stain in HED space and mapped back. */
function augmentStain(x: E.Tensor, amount: number | [number, number], draws: Draws, background: E.Tensor): E.Tensor {
  const [n, c, h, w] = x.shape;
  const [lo, hi] = typeof amount === 'number' ? [1 - amount, 1 + amount] : amount;
  const matrices = new Float32Array(n * 9);
  for (let i = 0; i < n; i++) {
    const random = draws(i);
    const gains = [uniform(random, lo, hi), uniform(random, lo, hi), 1];
    // OD' = OD · HED_FROM_RGB · diag(gains) · RGB_FROM_HED, with OD as row vectors; stored transposed for bmm.
    const scaled = HED_FROM_RGB.map((v, k) => v * gains[k % 3]);
    matrices.set(transpose3(multiply3(scaled, RGB_FROM_HED)), i * 9);
  }
  const density = x
    .div(background)
    .clamp(1 / 255, 1)
    .log()
    .neg();
  const changed = E.tensor(matrices, [n, 3, 3], { device: deviceOf(x) })
    .bmm(density.reshape([n, c, h * w]))
    .reshape([n, c, h, w]);
  return changed.neg().exp().mul(background);
}

function transpose3(m: number[]): number[] {
  return [m[0], m[3], m[6], m[1], m[4], m[7], m[2], m[5], m[8]];
}

/** Additive Gaussian noise, its standard deviation drawn per image up to maxSigma. */
function augmentNoise(x: E.Tensor, maxSigma: number, draws: Draws): E.Tensor {
  const [n, c, h, w] = x.shape;
  const sigmas = E.tensor(
    Float32Array.from({ length: n }, (_, i) => uniform(draws(i), 0, maxSigma)),
    [n, 1, 1, 1],
    { device: deviceOf(x) },
  );
  const noise = Array.from({ length: n }, (_, i) => E.randn([1, c, h, w], { seed: Math.floor(draws(i)() * 2 ** 31), device: deviceOf(x) }));
  return x.add(E.cat(noise).mul(sigmas));
}

/** Colour temperature: red and blue gains in opposite directions. */
function augmentTemperature(x: E.Tensor, amount: number, draws: Draws): E.Tensor {
  const n = x.shape[0];
  const gains = new Float32Array(n * 3);
  for (let i = 0; i < n; i++) {
    const random = draws(i);
    const t = uniform(random, -amount, amount);
    gains.set([1 + t, 1, 1 - t], i * 3);
  }
  return x.mul(E.tensor(gains, [n, 3, 1, 1], { device: deviceOf(x) }));
}

/** Each image resampled down to a factor of its side drawn from [lowest, 1] (antialiased), then back up. */
function augmentResolution(x: E.Tensor, lowest: number, draws: Draws): E.Tensor {
  const [n, , h, w] = x.shape;
  const images = Array.from({ length: n }, (_, i) => {
    const factor = uniform(draws(i), lowest, 1);
    const image = x.narrow(0, i, 1);
    const size: [number, number] = [Math.max(2, Math.round(h * factor)), Math.max(2, Math.round(w * factor))];
    if (size[0] === h && size[1] === w) return image;
    return E.F.interpolate(E.F.interpolate(image, { size, antialias: true }), { size: [h, w] });
  });
  return E.cat(images);
}

/** Gaussian blur of half of the images, sigma drawn up to maxSigma; one grouped convolution for the batch. */
function augmentBlur(x: E.Tensor, maxSigma: number, draws: Draws): E.Tensor {
  const [n, c, h, w] = x.shape;
  const radius = Math.max(1, Math.ceil(2 * maxSigma));
  const side = 2 * radius + 1;
  const kernels = new Float32Array(n * c * side * side);
  for (let i = 0; i < n; i++) {
    const random = draws(i);
    const sigma = random() < 0.5 ? uniform(random, 0.3, maxSigma) : 0;
    const weights = Array.from({ length: side }, (_, k) => (sigma ? Math.exp(-((k - radius) ** 2) / (2 * sigma * sigma)) : k === radius ? 1 : 0));
    const total = weights.reduce((p, q) => p + q, 0);
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < side; y++) for (let z = 0; z < side; z++) kernels[((i * c + ch) * side + y) * side + z] = (weights[y] * weights[z]) / (total * total);
    }
  }
  const padded = E.F.pad(x.reshape([1, n * c, h, w]), [radius, radius, radius, radius], 'reflect');
  const weight = E.tensor(kernels, [n * c, 1, side, side], { device: deviceOf(x) });
  return E.F.conv2d(padded, weight, undefined, { groups: n * c }).reshape([n, c, h, w]);
}

// Luma weights (ITU-R BT.601) and the RGB → YIQ transform, whose I/Q plane a hue change rotates.
const LUMA = [0.299, 0.587, 0.114];
const TO_YIQ = [0.299, 0.587, 0.114, 0.596, -0.274, -0.322, 0.211, -0.523, 0.312];
const FROM_YIQ = [1, 0.956171, 0.621433, 1, -0.272689, -0.646813, 1, -1.103744, 1.700623]; // the inverse of TO_YIQ

function greyscale(x: E.Tensor): E.Tensor {
  return E.tidy(() => x.mul(E.tensor(LUMA, [1, 3, 1, 1], { device: deviceOf(x) })).sum(1, true));
}

function multiply3(p: number[], q: number[]): number[] {
  const out = new Array<number>(9).fill(0);
  for (let r = 0; r < 3; r++) for (let c = 0; c < 3; c++) for (let k = 0; k < 3; k++) out[r * 3 + c] += p[r * 3 + k] * q[k * 3 + c];
  return out;
}

/** Brightness for every image; saturation and hue, which other stains and cameras change, for the shifted share. */
function augmentColour(x: E.Tensor, config: AugmentConfig, draws: Draws, shifted: Shifted): E.Tensor {
  const [n, c, h, w] = x.shape;
  const matrices = new Float32Array(n * 9);
  for (let i = 0; i < n; i++) {
    const random = draws(i);
    const brightness = uniform(random, 1 - config.brightness, 1 + config.brightness);
    // Drawn for every image, so that which images are shifted does not change the draws that follow.
    const saturation = uniform(random, 1 - config.saturation, 1 + config.saturation);
    const angle = uniform(random, -config.hue, config.hue) * 2 * Math.PI;
    if (!shifted(i)) {
      // Brightness alone scales every channel alike: no round trip through YIQ to blur the identity.
      matrices.set([brightness, 0, 0, 0, brightness, 0, 0, 0, brightness], i * 9);
      continue;
    }
    const [cos, sin] = [Math.cos(angle), Math.sin(angle)];
    const inYiq = [
      brightness,
      0,
      0,
      0,
      brightness * saturation * cos,
      -brightness * saturation * sin,
      0,
      brightness * saturation * sin,
      brightness * saturation * cos,
    ];
    matrices.set(multiply3(FROM_YIQ, multiply3(inYiq, TO_YIQ)), i * 9);
  }
  return E.tensor(matrices, [n, 3, 3], { device: deviceOf(x) })
    .bmm(x.reshape([n, c, h * w]))
    .reshape([n, c, h, w]);
}
