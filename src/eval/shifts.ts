// The shift suite: what images from other microscopes, stains and scanners do to a PBC image, each applied to the
// decoded source image before the classifier prepares it, with its parameters recorded.
import sharp, { type Sharp } from 'sharp';
import { cropToField, resizeRgb } from '../data/geometry.js';
import type { RgbImage } from '../data/image.js';
import { scaleChannels } from '../data/prepare.js';
import { measureCells } from '../data/scale.js';
import { scaleStains } from '../data/stain.js';

export interface Shift {
  name: string;
  params: Record<string, number | number[]>;
  apply(image: RgbImage): Promise<RgbImage>;
}

/** The white cell's diameter relative to its nucleus's extent: a rough constant, enough to cut a tight crop. */
const CELL_PER_NUCLEUS = 1.35;

export const SHIFTS: readonly Shift[] = [
  ...[0.5, 1.5, 2, 3].map((s) => ({ name: `magnification-${s}`, params: { factor: s }, apply: (image: RgbImage) => magnify(image, s) })),
  { name: 'tight-crop', params: { side_per_cell_diameter: 1.2 }, apply: tightCrop },
  ...[1, 2].map((sigma) => ({ name: `blur-${sigma}`, params: { sigma_px: sigma }, apply: (image: RgbImage) => viaSharp(image, (s) => s.blur(sigma)) })),
  { name: 'jpeg-30', params: { quality: 30 }, apply: jpeg30 },
  { name: 'yellow-cast', params: { rgb_gains: [1, 0.95, 0.8] }, apply: async (image: RgbImage) => scaleChannels(image, [1, 0.95, 0.8]) },
  { name: 'blue-cast', params: { rgb_gains: [0.85, 0.92, 1] }, apply: async (image: RgbImage) => scaleChannels(image, [0.85, 0.92, 1]) },
  { name: 'paler-stain', params: { hed_factor: 0.6 }, apply: async (image: RgbImage) => stain(image, 0.6) },
  { name: 'darker-stain', params: { hed_factor: 1.4 }, apply: async (image: RgbImage) => stain(image, 1.4) },
];

export function selectShifts(names: readonly string[] | true): Shift[] {
  if (names === true) return [...SHIFTS];
  return names.map((name) => {
    const shift = SHIFTS.find((s) => s.name === name);
    if (!shift) throw new RangeError(`unknown shift '${name}'; the shifts are ${SHIFTS.map((s) => s.name).join(', ')}`);
    return shift;
  });
}

/** Zoom about the centre: s > 1 crops the centre 1/s and enlarges it; s < 1 shrinks and pads with the background. */
export async function magnify(image: RgbImage, s: number): Promise<RgbImage> {
  const { width, height } = image;
  if (s >= 1) {
    const cw = Math.max(1, Math.round(width / s));
    const ch = Math.max(1, Math.round(height / s));
    const left = Math.floor((width - cw) / 2);
    const top = Math.floor((height - ch) / 2);
    const data = await sharp(image.data, { raw: { width, height, channels: 3 } })
      .extract({ left, top, width: cw, height: ch })
      .resize(width, height, { fit: 'fill', kernel: 'lanczos3' })
      .raw()
      .toBuffer();
    return { width, height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
  }
  const background = measureCells(image).background;
  const small = await resizeRgb(image, Math.max(1, Math.round(width * s)), Math.max(1, Math.round(height * s)));
  return padTo(small, width, height, background);
}

function padTo(image: RgbImage, width: number, height: number, fill: readonly [number, number, number]): RgbImage {
  const out = new Uint8Array(width * height * 3);
  const left = Math.floor((width - image.width) / 2);
  const top = Math.floor((height - image.height) / 2);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const sx = x - left;
      const sy = y - top;
      const d = (y * width + x) * 3;
      const inside = sx >= 0 && sy >= 0 && sx < image.width && sy < image.height;
      const s = (sy * image.width + sx) * 3;
      for (let c = 0; c < 3; c++) out[d + c] = inside ? image.data[s + c] : fill[c];
    }
  }
  return { width, height, data: out };
}

/** A square of 1.2 × the white cell's diameter about the centre, as some scanners export (the cell fills it). */
async function tightCrop(image: RgbImage): Promise<RgbImage> {
  const measures = measureCells(image);
  const diameter = (measures.nucleusExtent ?? Math.min(image.width, image.height) / 3) * CELL_PER_NUCLEUS;
  const side = Math.min(image.width, image.height, Math.round(1.2 * diameter));
  return cropToField(image, side, measures.background);
}

async function jpeg30(image: RgbImage): Promise<RgbImage> {
  const encoded = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .jpeg({ quality: 30 })
    .toBuffer();
  const data = await sharp(encoded).removeAlpha().raw().toBuffer();
  return { width: image.width, height: image.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

async function viaSharp(image: RgbImage, op: (s: Sharp) => Sharp): Promise<RgbImage> {
  const data = await op(sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } }))
    .raw()
    .toBuffer();
  return { width: image.width, height: image.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

/** Haematoxylin and eosin densities × factor, relative to the background (which stays as it is). */
export function stain(image: RgbImage, factor: number): RgbImage {
  return scaleStains(image, measureCells(image).background, [factor, factor]);
}
