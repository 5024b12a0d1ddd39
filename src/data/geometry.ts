// Crop and resize that never let the file's pixel size reach the model.
// PBC's image size varies with the class (360×363, 366×369, 360×360, …) at one magnification, so every image is
// cut to the same physical field, centred, before it is resized: a border of any width changes nothing.
import sharp from 'sharp';
import { DEFAULT_MAX_PIXELS, type RgbImage } from './image.js';

export interface GeometryConfig {
  /** Side of the square field, in source pixels, cut from the centre; null cuts the largest centred square. */
  field: number | null;
  /** Side of the square the model sees. */
  size: number;
}

/** PBC (CellaVision DM96): every image holds a centred 360 px field; 128 px is the working size. */
export const DEFAULT_GEOMETRY: GeometryConfig = { field: 360, size: 128 };

/** The smallest field, and the largest: a padded square the side of the largest image decoded (DEFAULT_MAX_PIXELS). */
export const MIN_FIELD = 8;
export const MAX_FIELD = Math.floor(Math.sqrt(DEFAULT_MAX_PIXELS));

export function validateGeometry(config: GeometryConfig): GeometryConfig {
  const { field, size } = config;
  if (!Number.isInteger(size) || size < 8 || size > 4096) throw new Error(`geometry.size must be an integer in 8..4096, got ${size}`);
  // A huge field would allocate its padded square (gigabytes) before anything else failed.
  if (field !== null && !(Number.isInteger(field) && field >= MIN_FIELD && field <= MAX_FIELD))
    throw new Error(`geometry.field must be an integer in ${MIN_FIELD}..${MAX_FIELD} or null, got ${field}`);
  return { field, size };
}

/**
 * Cuts the centred side×side square. Where the square reaches past the image (a side shorter than the field, or
 * an image shrunk to the training scale), it is filled with `fill`, the slide's background colour: repeating or
 * reflecting edges would invent cell parts. The offset rounds down, so adding k pixels on every side moves the
 * window by exactly k.
 */
export function cropToField(image: RgbImage, field: number | null, fill: readonly [number, number, number] = [255, 255, 255]): RgbImage {
  const side = field ?? Math.min(image.width, image.height);
  const left = Math.floor((image.width - side) / 2);
  const top = Math.floor((image.height - side) / 2);
  const out = new Uint8Array(side * side * 3);
  // Where the square reaches past the image, fill it all first; then copy each row's part inside the image.
  if (left < 0 || top < 0 || left + side > image.width || top + side > image.height) {
    for (let d = 0; d < out.length; d += 3) ((out[d] = fill[0]), (out[d + 1] = fill[1]), (out[d + 2] = fill[2]));
  }
  const [x0, x1] = [Math.max(0, -left), Math.min(side, image.width - left)];
  for (let y = Math.max(0, -top); y < Math.min(side, image.height - top) && x1 > x0; y++) {
    const s = ((top + y) * image.width + left + x0) * 3;
    out.set(image.data.subarray(s, s + (x1 - x0) * 3), (y * side + x0) * 3);
  }
  return { width: side, height: side, data: out };
}

/** Resizes with libvips' Lanczos-3 (antialiased when shrinking); raw input, so no decoder shortcut depends on file size. */
export async function resizeRgb(image: RgbImage, width: number, height = width): Promise<RgbImage> {
  if (image.width === width && image.height === height) return image;
  const data = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .resize(width, height, { fit: 'fill', kernel: 'lanczos3' })
    .raw()
    .toBuffer();
  return { width, height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

/** The model's view of a decoded image: the centred field, resized to size×size. */
export async function toModelGeometry(image: RgbImage, config: GeometryConfig = DEFAULT_GEOMETRY, fill?: readonly [number, number, number]): Promise<RgbImage> {
  return resizeRgb(cropToField(image, config.field, fill), config.size);
}
