// The Multi-scale Preprocessing Module: global illumination normalisation, colour-cast removal, local contrast
// (CLAHE) and morphological enhancement, all on L* of CIELAB, at the model's working size.
// The order is deliberate: flatten the field first so CLAHE's tile histograms and the white reference see the
// cell, not the lamp; enhance structure last, on the contrast the model will see.
import type { RgbImage } from './image.js';
import { type FloatImage, type GrayImage, type ImageOps, type LabImage, loadImageOps } from './ops.js';

export interface MpmConfig {
  /** Divide L* by a multi-scale Gaussian estimate of the background light. */
  illumination: {
    enabled: boolean;
    /** Gaussian σ of each scale, as a fraction of the image's shorter side; the estimate is their mean. */
    sigmas: number[];
  };
  /** White-patch: make the brightest background neutral and bring it to a fixed lightness. */
  colour: {
    enabled: boolean;
    /** The reference is the pixels whose L* is at or above this quantile. */
    quantile: number;
    /** 8-bit L (0..255) the reference is scaled to; null leaves lightness alone. */
    white: number | null;
  };
  /** CLAHE on L*, OpenCV semantics. */
  contrast: {
    enabled: boolean;
    clipLimit: number;
    tiles: number;
  };
  /** L' = L + Σ wₛ (TopHatₛ − BlackHatₛ) with elliptical elements. */
  morphology: {
    enabled: boolean;
    /** Element diameter of each scale, as a fraction of the shorter side (rounded to the nearest odd size ≥ 3). */
    scales: number[];
    weights: number[];
  };
}

/**
 * Defaults, chosen and documented in docs/data.md (the paper publishes none). The morphology scales give the
 * fixtures' 7 and 15 px ellipses at PBC's 360 px, and 3 and 5 px at 128 px.
 */
export const DEFAULT_MPM_CONFIG: MpmConfig = {
  illumination: { enabled: true, sigmas: [0.25, 0.5] },
  colour: { enabled: true, quantile: 0.98, white: 240 },
  contrast: { enabled: true, clipLimit: 2, tiles: 8 },
  morphology: { enabled: true, scales: [0.02, 0.042], weights: [0.5, 0.5] },
};

export type MpmConfigInput = { [K in keyof MpmConfig]?: Partial<MpmConfig[K]> };

/** Fills defaults and checks every field, so a model's metadata always holds the complete, valid recipe. */
export function resolveMpmConfig(input: MpmConfigInput = {}): MpmConfig {
  const d = DEFAULT_MPM_CONFIG;
  checkMpmShape(input);
  const config: MpmConfig = {
    illumination: { ...d.illumination, ...input.illumination },
    colour: { ...d.colour, ...input.colour },
    contrast: { ...d.contrast, ...input.contrast },
    morphology: { ...d.morphology, ...input.morphology },
  };
  const fail = (message: string) => {
    throw new Error(`invalid MPM config: ${message}`);
  };
  const { illumination, colour, contrast, morphology } = config;
  if (illumination.sigmas.length === 0 || illumination.sigmas.some((s) => !(s > 0 && s <= 4)))
    fail(`illumination.sigmas must be fractions in (0, 4], got ${JSON.stringify(illumination.sigmas)}`);
  if (!(colour.quantile > 0 && colour.quantile < 1)) fail(`colour.quantile must be in (0, 1), got ${colour.quantile}`);
  if (colour.white !== null && !(colour.white > 0 && colour.white <= 255)) fail(`colour.white must be in (0, 255] or null, got ${colour.white}`);
  if (!(contrast.clipLimit >= 0)) fail(`contrast.clipLimit must be ≥ 0, got ${contrast.clipLimit}`);
  if (!Number.isInteger(contrast.tiles) || contrast.tiles < 1 || contrast.tiles > 64) fail(`contrast.tiles must be an integer in 1..64, got ${contrast.tiles}`);
  if (morphology.scales.some((s) => !(s > 0 && s < 1))) fail(`morphology.scales must be fractions in (0, 1), got ${JSON.stringify(morphology.scales)}`);
  if (morphology.weights.length !== morphology.scales.length)
    fail(`morphology.weights needs one weight per scale (${morphology.scales.length}), got ${morphology.weights.length}`);
  return structuredClone(config);
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** Only the stages and settings the MPM has, each of its kind: a misspelt setting would otherwise be left at its default unnoticed. */
function checkMpmShape(input: unknown): void {
  const fail = (message: string) => {
    throw new Error(`invalid MPM config: ${message}`);
  };
  const stages = Object.keys(DEFAULT_MPM_CONFIG);
  if (!isObject(input))
    fail(`expected an object with any of ${stages.join(', ')}, got ${input === null ? 'null' : Array.isArray(input) ? 'an array' : typeof input}`);
  for (const [stage, settings] of Object.entries(input as object)) {
    if (!stages.includes(stage)) fail(`unknown stage '${stage}'; the stages are ${stages.join(', ')}`);
    const defaults = DEFAULT_MPM_CONFIG[stage as keyof MpmConfig] as Record<string, unknown>;
    if (!isObject(settings)) fail(`${stage} must be an object with any of ${Object.keys(defaults).join(', ')}`);
    for (const [key, value] of Object.entries(settings as object)) {
      if (!(key in defaults)) fail(`unknown setting ${stage}.${key}; ${stage} has ${Object.keys(defaults).join(', ')}`);
      const expected = defaults[key];
      const fits = Array.isArray(expected)
        ? Array.isArray(value) && value.every((v) => typeof v === 'number')
        : typeof expected === 'boolean'
          ? typeof value === 'boolean'
          : typeof value === 'number' || (value === null && key === 'white');
      if (!fits)
        fail(
          `${stage}.${key} must be ${Array.isArray(expected) ? 'an array of numbers' : typeof expected === 'boolean' ? 'true or false' : 'a number'}, got ${JSON.stringify(value)}`,
        );
    }
  }
}

/** The odd element size for a relative scale on an image whose shorter side is `side`. */
export function elementSize(scale: number, side: number): number {
  return Math.max(3, 2 * Math.round((scale * side - 1) / 2) + 1);
}

export interface MpmStage {
  name: string;
  /** What the panel shows, for contact sheets. */
  caption: string;
  image: RgbImage;
}

export class Mpm {
  private constructor(
    private readonly ops: ImageOps,
    readonly config: MpmConfig,
  ) {}

  static async create(config: MpmConfigInput = {}): Promise<Mpm> {
    return new Mpm(await loadImageOps(), resolveMpmConfig(config));
  }

  /** MPM on one image; the output has the input's size. */
  apply(image: RgbImage): RgbImage {
    return this.run(image, null);
  }

  /** MPM on n contiguous images of height × width × 3 (HWC), as a pack or a batch holds them. */
  applyBatch(images: Uint8Array, n: number, height: number, width = height): Uint8Array {
    const pixels = height * width * 3;
    if (images.length !== n * pixels) throw new RangeError(`batch holds ${images.length} bytes, ${n}×${height}×${width}×3 needs ${n * pixels}`);
    const out = new Uint8Array(images.length);
    for (let i = 0; i < n; i++) {
      out.set(this.apply({ width, height, data: images.subarray(i * pixels, (i + 1) * pixels) }).data, i * pixels);
    }
    return out;
  }

  /** Every intermediate result, for people to see what each stage does. */
  stages(image: RgbImage): MpmStage[] {
    const stages: MpmStage[] = [{ name: 'original', caption: 'original', image }];
    this.run(image, stages);
    return stages;
  }

  /** The illumination blur; see reductionFactor for why it may run at reduced size. */
  smoothBlur(image: FloatImage, sigma: number): Float32Array {
    const factor = reductionFactor(sigma, image.width, image.height);
    if (factor === 1) return this.ops.gaussianBlur(image, sigma).data;
    const small = this.ops.resizeFloat(image, Math.round(image.width / factor), Math.round(image.height / factor));
    const blurred = this.ops.gaussianBlur(small, sigma / factor);
    return this.ops.resizeFloat(blurred, image.width, image.height).data;
  }

  private run(image: RgbImage, stages: MpmStage[] | null): RgbImage {
    const { ops, config } = this;
    const { illumination, colour, contrast, morphology } = config;
    if (!illumination.enabled && !colour.enabled && !contrast.enabled && !morphology.enabled) return image;
    const side = Math.min(image.width, image.height);
    const n = image.width * image.height;
    const lab = ops.rgbToLab(image);
    const show = (name: string, caption: string, current: LabImage) => stages?.push({ name, caption, image: ops.labToRgb(current) });
    const showGray = (name: string, caption: string, gray: Float32Array | Uint8Array) => {
      const data = new Uint8Array(n * 3);
      for (let i = 0; i < n; i++) data[3 * i] = data[3 * i + 1] = data[3 * i + 2] = clampByte(gray[i]);
      stages?.push({ name, caption, image: { width: image.width, height: image.height, data } });
    };

    if (illumination.enabled) {
      const L = Float32Array.from(lab.L);
      const background = new Float32Array(n);
      for (const sigma of illumination.sigmas) {
        const blurred = this.smoothBlur({ width: image.width, height: image.height, data: L }, sigma * side);
        for (let i = 0; i < n; i++) background[i] += blurred[i] / illumination.sigmas.length;
      }
      // Dividing by the estimate flattens the field; multiplying by its mean keeps the overall lightness.
      let mean = 0;
      for (let i = 0; i < n; i++) mean += background[i] / n;
      for (let i = 0; i < n; i++) lab.L[i] = clampByte((L[i] * mean) / Math.max(background[i], 1));
      if (stages) {
        let lo = Infinity;
        let hi = -Infinity;
        for (const v of background) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
        const stretched = background.map((v) => (hi > lo ? ((v - lo) / (hi - lo)) * 255 : 128));
        showGray(
          'illumination-field',
          `illumination estimate (σ = ${illumination.sigmas.join(', ')} × side), stretched from L ${Math.round(lo)}..${Math.round(hi)}`,
          stretched,
        );
      }
      show('illumination', 'L* divided by the estimate', lab);
    }

    if (colour.enabled) {
      const threshold = quantileOf(lab.L, config.colour.quantile);
      let count = 0;
      let sumL = 0;
      let sumA = 0;
      let sumB = 0;
      for (let i = 0; i < n; i++) {
        if (lab.L[i] < threshold) continue;
        count++;
        sumL += lab.L[i];
        sumA += lab.a[i];
        sumB += lab.b[i];
      }
      // The brightest pixels are the unstained background, lit by the lamp alone: their chroma is the cast.
      const shiftA = 128 - sumA / count;
      const shiftB = 128 - sumB / count;
      const gain = config.colour.white === null ? 1 : config.colour.white / Math.max(sumL / count, 1);
      for (let i = 0; i < n; i++) {
        lab.a[i] = clampByte(lab.a[i] + shiftA);
        lab.b[i] = clampByte(lab.b[i] + shiftB);
        lab.L[i] = clampByte(lab.L[i] * gain);
      }
      show(
        'colour',
        `white patch: top ${round((1 - config.colour.quantile) * 100)}% of L* made neutral${config.colour.white === null ? '' : ` at L=${config.colour.white}`}`,
        lab,
      );
    }

    if (contrast.enabled) {
      lab.L = ops.clahe({ width: image.width, height: image.height, data: lab.L }, config.contrast.clipLimit, config.contrast.tiles).data;
      show('contrast', `CLAHE clip ${config.contrast.clipLimit}, ${config.contrast.tiles}×${config.contrast.tiles} tiles`, lab);
    }

    if (morphology.enabled) {
      const L: GrayImage = { width: image.width, height: image.height, data: lab.L };
      const detail = new Float32Array(n);
      const sizes = config.morphology.scales.map((s) => elementSize(s, side));
      sizes.forEach((size, s) => {
        const top = ops.topHat(L, size).data;
        const black = ops.blackHat(L, size).data;
        const weight = config.morphology.weights[s];
        for (let i = 0; i < n; i++) detail[i] += weight * (top[i] - black[i]);
      });
      const enhanced = new Uint8Array(n);
      for (let i = 0; i < n; i++) enhanced[i] = clampByte(lab.L[i] + detail[i]);
      lab.L = enhanced;
      const shown = new Float32Array(n);
      for (let i = 0; i < n; i++) shown[i] = 128 + 4 * detail[i];
      showGray('morphology-detail', `Σ w (TopHat − BlackHat), ellipses ${sizes.join(', ')} px, ×4 about grey`, shown);
      show('morphology', 'L* + detail (final)', lab);
    }
    return stages ? stages[stages.length - 1].image : ops.labToRgb(lab);
  }
}

/**
 * A Gaussian of large σ computed on a reduced copy: the result is so smooth that averaging down by f, blurring
 * with σ/f and interpolating back differs from the full-size blur by well under one grey level (checked in
 * test/preprocess-mpm.test.ts), at a fraction of the cost (8σ+1 taps per pixel become 8σ/f+1 on 1/f² of the pixels).
 */
export function reductionFactor(sigma: number, width: number, height: number): number {
  let factor = 1;
  while (sigma / (factor * 2) >= 16 && Math.min(width, height) / (factor * 2) >= 32) factor *= 2;
  return factor;
}

function clampByte(value: number): number {
  return value <= 0 ? 0 : value >= 255 ? 255 : Math.round(value);
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}

/** The smallest 8-bit value v with at least `q` of the pixels below or at v, from a histogram. */
function quantileOf(values: Uint8Array, q: number): number {
  const histogram = new Uint32Array(256);
  for (const v of values) histogram[v]++;
  const target = q * values.length;
  let cumulative = 0;
  for (let v = 0; v < 256; v++) {
    cumulative += histogram[v];
    if (cumulative >= target) return v;
  }
  return 255;
}
