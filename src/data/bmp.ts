// BMP, which sharp cannot read: uncompressed 1/4/8-bit (palette), 16/32-bit (default masks or bit fields) and 24-bit
// pixels are read here; every other variant, and every header that contradicts itself, is refused by name.
import { checkPixelLimit, DecodeError } from './errors.js';
import type { RgbImage } from './image.js';

const FILE_HEADER = 14;
const INFO_HEADER_SIZES = new Set([40, 52, 56, 108, 124]);
const BI_RGB = 0;
const BI_BITFIELDS = 3;
const UNSUPPORTED_COMPRESSION = new Map([
  [1, 'RLE8-compressed'],
  [2, 'RLE4-compressed'],
  [4, 'JPEG-compressed'],
  [5, 'PNG-compressed'],
  [6, 'alpha bit-field'],
]);
const DEPTHS = new Set([1, 4, 8, 16, 24, 32]);
/** Where BI_RGB leaves the masks to convention: 5-5-5 for 16 bits, 8-8-8 for 32. */
const DEFAULT_MASKS: Record<number, number[]> = { 16: [0x7c00, 0x03e0, 0x001f], 32: [0xff0000, 0xff00, 0xff] };

interface Layout {
  width: number;
  height: number;
  topDown: boolean;
  bitsPerPixel: number;
  offset: number;
  stride: number;
  /** BGRx entries, for 1-, 4- and 8-bit images. */
  palette: Uint8Array | null;
  masks: number[] | null;
}

/** Decodes a BMP into 8-bit RGB; an alpha channel is ignored, since BI_RGB files leave it undefined (often 0). */
export function decodeBmp(bytes: Uint8Array, maxPixels: number): RgbImage {
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  return readPixels(view, readLayout(view, maxPixels));
}

const corrupt = (problem: string) => new DecodeError('corrupt', `corrupt BMP: ${problem}`);

function readLayout(view: Buffer, maxPixels: number): Layout {
  if (view.length < 30) throw new DecodeError('truncated', `truncated BMP: ${view.length} bytes is shorter than its header`);
  const headerSize = view.readUInt32LE(14);
  if (!INFO_HEADER_SIZES.has(headerSize)) {
    throw new DecodeError('unsupported', `unsupported BMP variant (header size ${headerSize}); convert it to PNG`);
  }
  if (view.length < FILE_HEADER + headerSize) throw new DecodeError('truncated', 'truncated BMP: the file ends inside its header');
  const width = view.readInt32LE(18);
  const signedHeight = view.readInt32LE(22);
  const height = Math.abs(signedHeight);
  const bitsPerPixel = view.readUInt16LE(28);
  const compression = view.readUInt32LE(30);
  if (width <= 0 || height === 0) throw corrupt(`declared size ${width}×${height}`);
  checkPixelLimit(width, height, maxPixels);
  const unsupported = UNSUPPORTED_COMPRESSION.get(compression);
  if (unsupported) throw new DecodeError('unsupported', `unsupported BMP variant: ${unsupported} pixels; convert it to PNG`);
  if (compression !== BI_RGB && compression !== BI_BITFIELDS) throw corrupt(`unknown compression ${compression}`);
  if (!DEPTHS.has(bitsPerPixel)) throw corrupt(`${bitsPerPixel} bits per pixel (a BMP has 1, 4, 8, 16, 24 or 32)`);
  if (compression === BI_BITFIELDS && bitsPerPixel !== 16 && bitsPerPixel !== 32)
    throw corrupt(`bit fields with ${bitsPerPixel} bits per pixel (only 16 and 32 have them)`);
  const offset = view.readUInt32LE(10);
  if (offset < FILE_HEADER + headerSize) throw corrupt(`the pixel data (byte ${offset}) would start inside the ${FILE_HEADER + headerSize}-byte header`);
  const stride = Math.floor((bitsPerPixel * width + 31) / 32) * 4;
  const needed = offset + stride * height;
  if (view.length < needed) throw new DecodeError('truncated', `truncated BMP: ${view.length} bytes, its header needs ${needed}`);
  return {
    width,
    height,
    topDown: signedHeight < 0,
    bitsPerPixel,
    offset,
    stride,
    palette: bitsPerPixel <= 8 ? readPalette(view, headerSize, bitsPerPixel, offset) : null,
    masks: bitsPerPixel === 16 || bitsPerPixel === 32 ? readMasks(view, compression, headerSize, bitsPerPixel, offset) : null,
  };
}

/** The colour table that follows the header; it must end before the pixel data begins. */
function readPalette(view: Buffer, headerSize: number, bitsPerPixel: number, offset: number): Uint8Array {
  const declared = view.readUInt32LE(46);
  const most = 2 ** bitsPerPixel;
  if (declared > most) throw corrupt(`${declared} palette colours for a ${bitsPerPixel}-bit image (at most ${most})`);
  const colours = declared || most;
  const start = FILE_HEADER + headerSize;
  if (start + 4 * colours > offset) {
    throw corrupt(`no room for the palette of ${colours} colours (${bitsPerPixel} bits per pixel) before the pixel data, which starts at byte ${offset}`);
  }
  return view.subarray(start, start + 4 * colours);
}

/** Red, green and blue masks: from the header (or just after a 40-byte one) with BI_BITFIELDS, else the convention. */
function readMasks(view: Buffer, compression: number, headerSize: number, bitsPerPixel: number, offset: number): number[] {
  if (compression !== BI_BITFIELDS) return DEFAULT_MASKS[bitsPerPixel];
  const at = FILE_HEADER + 40;
  if (headerSize === 40 && at + 12 > offset) throw corrupt(`bit fields declared, but the pixel data starts at byte ${offset}, before the masks end`);
  const masks = [0, 4, 8].map((i) => view.readUInt32LE(at + i));
  if (masks.some((m) => m === 0 || m >= 2 ** bitsPerPixel))
    throw corrupt(`colour masks ${masks.map((m) => `0x${m.toString(16)}`).join(', ')} do not fit ${bitsPerPixel}-bit pixels`);
  return masks;
}

function readPixels(view: Buffer, layout: Layout): RgbImage {
  const { width, height, bitsPerPixel: bpp, palette } = layout;
  const data = new Uint8Array(width * height * 3);
  const channels = layout.masks?.map(maskReader);
  for (let y = 0; y < height; y++) {
    const row = layout.offset + (layout.topDown ? y : height - 1 - y) * layout.stride;
    for (let x = 0, o = y * width * 3; x < width; x++, o += 3) {
      if (palette) {
        const bit = x * bpp;
        const index = (view[row + (bit >> 3)] >> (8 - bpp - (bit & 7))) & ((1 << bpp) - 1);
        if (4 * index >= palette.length) throw corrupt(`pixel (${x}, ${y}) uses colour ${index} of a ${palette.length / 4}-colour palette`);
        data[o] = palette[4 * index + 2];
        data[o + 1] = palette[4 * index + 1];
        data[o + 2] = palette[4 * index];
      } else if (channels) {
        const value = bpp === 16 ? view.readUInt16LE(row + 2 * x) : view.readUInt32LE(row + 4 * x);
        data[o] = channels[0](value);
        data[o + 1] = channels[1](value);
        data[o + 2] = channels[2](value);
      } else {
        data[o] = view[row + 3 * x + 2];
        data[o + 1] = view[row + 3 * x + 1];
        data[o + 2] = view[row + 3 * x];
      }
    }
  }
  return { width, height, data };
}

/** Takes one channel out of a pixel and scales it to 0..255 (a 5-bit 31 becomes 255). */
function maskReader(mask: number): (value: number) => number {
  const shift = 31 - Math.clz32(mask & -mask);
  const max = mask >>> shift;
  return (value) => Math.round((((value & mask) >>> shift) * 255) / max);
}
