// BMP, which sharp cannot read: header checks here, pixels from bmp-ts (all bit depths, RLE, bit fields).
import * as bmp from 'bmp-ts';
import { checkPixelLimit, DecodeError } from './errors.js';
import type { RgbImage } from './image.js';

const INFO_HEADER_SIZES = new Set([40, 52, 56, 108, 124]);
const BI_RGB = 0;
const BI_BITFIELDS = 3;

/** Decodes a BMP into 8-bit RGB; its alpha byte is ignored, since BI_RGB files leave it undefined (often 0). */
export function decodeBmp(bytes: Uint8Array, maxPixels: number): RgbImage {
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  if (view.length < 30) throw new DecodeError('truncated', `truncated BMP: ${view.length} bytes is shorter than its header`);
  const headerSize = view.readUInt32LE(14);
  if (!INFO_HEADER_SIZES.has(headerSize)) {
    throw new DecodeError('unsupported', `unsupported BMP variant (header size ${headerSize}); convert it to PNG`);
  }
  if (view.length < 14 + headerSize) throw new DecodeError('truncated', 'truncated BMP: the file ends inside its header');
  const width = view.readInt32LE(18);
  const height = Math.abs(view.readInt32LE(22));
  const bitsPerPixel = view.readUInt16LE(28);
  const compression = view.readUInt32LE(30);
  if (width <= 0 || height === 0) throw new DecodeError('corrupt', `corrupt BMP: declared size ${width}×${height}`);
  checkPixelLimit(width, height, maxPixels);
  if (compression === BI_RGB || compression === BI_BITFIELDS) {
    const rowBytes = Math.floor((bitsPerPixel * width + 31) / 32) * 4;
    const needed = view.readUInt32LE(10) + rowBytes * height;
    if (view.length < needed) throw new DecodeError('truncated', `truncated BMP: ${view.length} bytes, its header needs ${needed}`);
  }
  let rgba: Uint8Array;
  try {
    rgba = bmp.decode(view, { toRGBA: true }).data;
  } catch (error) {
    throw new DecodeError('corrupt', `corrupt BMP: ${(error as Error).message}`);
  }
  const data = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < data.length; i += 3, j += 4) {
    data[i] = rgba[j];
    data[i + 1] = rgba[j + 1];
    data[i + 2] = rgba[j + 2];
  }
  return { width, height, data };
}
