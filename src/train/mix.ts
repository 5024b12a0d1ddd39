// Mixup and CutMix, as timm applies them: each training batch is blended with itself reversed, by a factor drawn
// from Beta(α, α), either as a whole (mixup) or by pasting a box (CutMix), and the loss weighs both labels by the
// same factor. The draws come from the step's own seed, so a resumed run mixes exactly as the uninterrupted one.
import * as E from '../engine/index.js';
import { seededRandom } from '../data/random.js';

export interface MixSettings {
  /** Mixup's Beta α; 0 turns it off. */
  mixup: number;
  /** CutMix's Beta α; 0 turns it off. With both on, each batch uses one of them, with even odds. */
  cutmix: number;
}

/** A batch's mixing: the blended images, and the labels of the images blended in with their share of the loss, 1 − λ. */
export interface Mix {
  x: E.Tensor;
  mixedWith: { y: E.Tensor; weight: number };
}

/** Marsaglia and Tsang's gamma sampler (shape α, scale 1), boosted for α < 1. */
function gamma(alpha: number, random: () => number): number {
  if (alpha < 1) return gamma(alpha + 1, random) * Math.pow(random() || Number.MIN_VALUE, 1 / alpha);
  const d = alpha - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    // Box–Muller: one standard normal.
    const z = Math.sqrt(-2 * Math.log(random() || Number.MIN_VALUE)) * Math.cos(2 * Math.PI * random());
    const v = (1 + c * z) ** 3;
    if (v <= 0) continue;
    const u = random();
    if (Math.log(u || Number.MIN_VALUE) < 0.5 * z * z + d - d * v + d * Math.log(v)) return d * v;
  }
}

export function sampleBeta(alpha: number, random: () => number): number {
  const a = gamma(alpha, random);
  const b = gamma(alpha, random);
  return a / (a + b);
}

/** The box CutMix pastes, for a mixing factor λ: area 1 − λ of the image, centred anywhere, clipped at the edges. */
export function cutmixBox(lambda: number, height: number, width: number, random: () => number): { top: number; left: number; bottom: number; right: number } {
  const ratio = Math.sqrt(1 - lambda);
  const [cutH, cutW] = [Math.floor(height * ratio), Math.floor(width * ratio)];
  const [cy, cx] = [Math.floor(random() * height), Math.floor(random() * width)];
  const clip = (v: number, hi: number) => Math.min(Math.max(v, 0), hi);
  return { top: clip(cy - cutH / 2, height), bottom: clip(cy + cutH / 2, height), left: clip(cx - cutW / 2, width), right: clip(cx + cutW / 2, width) };
}

/**
 * Mixes a batch of images [N, C, H, W] and labels [N] with its reverse; undefined when mixing is off or the batch
 * holds one image. The caller owns the tensors returned; the batch's own are left as they are.
 */
export function mixBatch(batch: { x: E.Tensor; y: E.Tensor }, settings: Partial<MixSettings>, seed: number): Mix | undefined {
  const [mixup, cutmix] = [settings.mixup ?? 0, settings.cutmix ?? 0];
  if ((mixup <= 0 && cutmix <= 0) || batch.x.shape[0] < 2) return undefined;
  const random = seededRandom(seed ^ 0x5bd1e995);
  const useCutmix = cutmix > 0 && (mixup <= 0 || random() < 0.5);
  let lambda = sampleBeta(useCutmix ? cutmix : mixup, random);
  return E.tidy(() => {
    const other = batch.x.flip([0]);
    let x: E.Tensor;
    if (useCutmix) {
      const [, , height, width] = batch.x.shape;
      const box = cutmixBox(lambda, height, width, random);
      const mask = new Float32Array(height * width);
      for (let r = Math.floor(box.top); r < Math.floor(box.bottom); r++) mask.fill(1, r * width + Math.floor(box.left), r * width + Math.floor(box.right));
      // λ is what is left of the image after the box, once clipped at the edges.
      lambda = 1 - mask.reduce((a, b) => a + b, 0) / (height * width);
      const pasted = E.tensor(mask, [1, 1, height, width])
        .to(batch.x.device as E.Device)
        .to(batch.x.dtype);
      // Each pixel exactly from one image or the other: x·(1 − m) + other·m.
      x = batch.x.mul(pasted.neg().add(1)).add(other.mul(pasted));
    } else {
      x = batch.x.mul(lambda).add(other.mul(1 - lambda));
    }
    return { x, mixedWith: { y: batch.y.flip([0]), weight: 1 - lambda } };
  });
}
