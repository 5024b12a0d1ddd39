// Decoding any image file a lab exports into 8-bit RGB, with one clear error per bad file.
import sharp, { type Metadata } from 'sharp';
import { decodeBmp } from './bmp.js';
import { checkPixelLimit, DecodeError } from './errors.js';
import { readRegularFile } from './files.js';
import type { RgbImage } from '../preprocess/image.js';

export { DecodeError, type DecodeErrorCode } from './errors.js';

export type { RgbImage } from '../preprocess/image.js';

/** A decoded file: its pixels, and what the decoder warned about when it could only decode them leniently. */
export interface DecodedImage extends RgbImage {
  /** libvips' warnings: the pixels may be damaged, so an answer from them must not be trusted as it is. */
  warnings?: string[];
}

export type ImageFormat = 'jpeg' | 'png' | 'tiff' | 'webp' | 'bmp';

type FailOn = 'truncated' | 'error' | 'warning';

/**
 * The sharp failOn level a file must pass to be decoded at all; anything it passes that fails 'warning' is decoded
 * with a warning. JPEG: 'warning' itself, which no clean PBC image trips, while overwritten data only makes libjpeg
 * warn (measured in docs/reliability.md). Other formats: 'truncated', since a bad PNG checksum is only a warning.
 */
const ACCEPT_AT: Record<Exclude<ImageFormat, 'bmp'>, FailOn> = { jpeg: 'warning', png: 'truncated', tiff: 'truncated', webp: 'truncated' };

export interface DecodeOptions {
  /** Refuse images whose declared width × height exceeds this (decompression bombs). */
  maxPixels?: number;
}

/** 64 MP: far above any microscope field, far below what would exhaust memory. */
export const DEFAULT_MAX_PIXELS = 64_000_000;

/** Recognises the formats we decode by their magic bytes, never by the file name. */
export function sniffFormat(bytes: Uint8Array): ImageFormat | null {
  const at = (offset: number, ...values: number[]) => values.every((v, i) => bytes[offset + i] === v);
  if (at(0, 0xff, 0xd8, 0xff)) return 'jpeg';
  if (at(0, 0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a)) return 'png';
  if (at(0, 0x49, 0x49, 0x2a, 0x00) || at(0, 0x4d, 0x4d, 0x00, 0x2a) || at(0, 0x49, 0x49, 0x2b, 0x00) || at(0, 0x4d, 0x4d, 0x00, 0x2b)) return 'tiff';
  if (at(0, 0x52, 0x49, 0x46, 0x46) && at(8, 0x57, 0x45, 0x42, 0x50)) return 'webp';
  if (at(0, 0x42, 0x4d)) return 'bmp';
  return null;
}

/**
 * Image formats a lab may export that hemato does not decode, by their magic bytes (each signature an offset, then
 * the bytes there), so that the message names the format and how to convert it rather than "unknown content".
 */
const UNSUPPORTED_FORMATS: readonly { name: string; fix: string; signatures: readonly number[][] }[] = [
  { name: 'GIF', fix: 'convert it to PNG', signatures: [[0, 0x47, 0x49, 0x46, 0x38]] },
  { name: 'HEIF/AVIF or video container', fix: 'convert it to PNG or JPEG', signatures: [[4, 0x66, 0x74, 0x79, 0x70]] },
  {
    name: 'JPEG 2000',
    fix: 'convert it to PNG or TIFF',
    signatures: [
      [0, 0x00, 0x00, 0x00, 0x0c, 0x6a, 0x50, 0x20, 0x20],
      [0, 0xff, 0x4f, 0xff, 0x51],
    ],
  },
  {
    name: 'JPEG XL',
    fix: 'convert it to PNG',
    signatures: [
      [0, 0x00, 0x00, 0x00, 0x0c, 0x4a, 0x58, 0x4c, 0x20],
      [0, 0xff, 0x0a],
    ],
  },
  { name: 'DICOM', fix: 'export the image from the DICOM file as PNG or TIFF', signatures: [[128, 0x44, 0x49, 0x43, 0x4d]] },
  { name: 'Photoshop document', fix: 'export it as PNG or TIFF', signatures: [[0, 0x38, 0x42, 0x50, 0x53]] },
];

/** A short description of what a non-image file seems to be, for the skip reason. */
export function describeNonImage(bytes: Uint8Array): string {
  const at = (offset: number, ...values: number[]) => values.every((v, i) => bytes[offset + i] === v);
  if (at(0, 0x00, 0x00, 0x00, 0x01, 0x42, 0x75, 0x64, 0x31)) return 'not an image: macOS .DS_Store folder metadata';
  const unsupported = UNSUPPORTED_FORMATS.find((f) => f.signatures.some(([offset, ...values]) => at(offset, ...values)));
  if (unsupported) return `unsupported image format: ${unsupported.name} (${unsupported.fix})`;
  if (at(0, 0x25, 0x50, 0x44, 0x46)) return 'not an image: PDF document';
  if (at(0, 0x50, 0x4b, 0x03, 0x04)) return 'not an image: ZIP archive';
  const head = bytes.subarray(0, 512);
  let printable = 0;
  for (const b of head) if (b === 9 || b === 10 || b === 13 || (b >= 32 && b < 127) || b >= 128) printable++;
  if (head.length > 0 && printable === head.length) {
    return /<svg[\s>]/i.test(Buffer.from(head).toString('latin1')) ? 'unsupported image format: SVG drawing (convert it to PNG)' : 'not an image: text file';
  }
  const hex = [...bytes.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
  return `not an image: unknown content (first bytes ${hex})`;
}

/**
 * Decodes JPEG (incl. CMYK, progressive), PNG (8/16-bit, grey, alpha), TIFF, WebP and BMP into 8-bit sRGB. A file
 * that decodes only below the strictest level comes back with `warnings`.
 */
export async function decodeImage(bytes: Uint8Array, options: DecodeOptions = {}): Promise<DecodedImage> {
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  if (bytes.length === 0) throw new DecodeError('empty', 'empty file (0 bytes)');
  const format = sniffFormat(bytes);
  if (format === null) {
    const what = describeNonImage(bytes);
    throw new DecodeError(what.startsWith('unsupported') ? 'unsupported' : 'not-image', what);
  }
  if (format === 'bmp') return decodeBmp(bytes, maxPixels);

  // Check the declared size from the header before any pixel is decoded.
  let declared: Metadata;
  try {
    declared = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (error) {
    throw failure(format, bytes, `header: ${sharpMessage(error)}`);
  }
  checkPixelLimit(declared.width ?? 0, declared.height ?? 0, maxPixels);

  // Decoding takes its pixels from a budget shared by the process, so that many huge files at once cannot
  // exhaust memory: one image of the largest allowed size, or many small ones, decode at a time.
  return withPixelBudget((declared.width ?? 0) * (declared.height ?? 0), () => decodeWithin(bytes, format, maxPixels));
}

/**
 * Runs work on an image of this many pixels within the process-wide budget: one image of the largest allowed size,
 * or many small ones, at a time. Decoding takes from it, and so should work on decoded pixels that allocates.
 */
export async function withPixelBudget<T>(pixels: number, work: () => Promise<T>): Promise<T> {
  const share = Math.min(PIXEL_BUDGET, pixels);
  await pixelBudget.acquire(share);
  try {
    return await work();
  } finally {
    pixelBudget.release(share);
  }
}

/** Clean files decode once; only a file that fails the strict pass is decoded again, leniently. */
async function decodeWithin(bytes: Uint8Array, format: Exclude<ImageFormat, 'bmp'>, maxPixels: number): Promise<DecodedImage> {
  let strictError: unknown;
  try {
    return await decodePixels(bytes, maxPixels, 'warning');
  } catch (error) {
    strictError = error;
  }
  if (ACCEPT_AT[format] === 'warning') throw failure(format, bytes, sharpMessage(strictError));
  try {
    return { ...(await decodePixels(bytes, maxPixels, ACCEPT_AT[format])), warnings: [sharpMessage(strictError)] };
  } catch (error) {
    throw failure(format, bytes, sharpMessage(error));
  }
}

/** Pixels decoded or prepared at once, process-wide. */
const PIXEL_BUDGET = DEFAULT_MAX_PIXELS;

/** A counting semaphore over pixels: waiters are served in order as earlier decodes finish. */
class PixelBudget {
  private available: number;
  private readonly waiting: { pixels: number; resume: () => void }[] = [];

  constructor(total: number) {
    this.available = total;
  }

  acquire(pixels: number): Promise<void> {
    if (this.waiting.length === 0 && pixels <= this.available) {
      this.available -= pixels;
      return Promise.resolve();
    }
    return new Promise((resume) => this.waiting.push({ pixels, resume }));
  }

  release(pixels: number): void {
    this.available += pixels;
    while (this.waiting.length && this.waiting[0].pixels <= this.available) {
      const next = this.waiting.shift()!;
      this.available -= next.pixels;
      next.resume();
    }
  }
}

const pixelBudget = new PixelBudget(PIXEL_BUDGET);

async function decodePixels(bytes: Uint8Array, maxPixels: number, failOn: FailOn): Promise<RgbImage> {
  const { data, info } = await sharp(bytes, { limitInputPixels: maxPixels, failOn, pages: 1 })
    .autoOrient()
    .flatten({ background: '#ffffff' })
    .toColourspace('srgb')
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`expected 3 channels after conversion, got ${info.channels}`);
  return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

export interface ReadOptions extends DecodeOptions {
  /** Refuse files larger than this many bytes (default DEFAULT_MAX_FILE_BYTES, 256 MiB). */
  maxFileBytes?: number;
}

/** Reads (regular files only, of bounded size) and decodes one file; every failure is a DecodeError naming what is wrong. */
export async function readImageFile(path: string, options: ReadOptions = {}): Promise<DecodedImage> {
  return decodeImage(await readRegularFile(path, options.maxFileBytes), options);
}

/**
 * Names a cut-off file as truncated (the usual cause: an interrupted copy), anything else as corrupt. The file's
 * own structure decides first, since libvips' message can be lost when several files fail at once.
 */
function failure(format: ImageFormat, bytes: Uint8Array, message: string): DecodeError {
  // libjpeg's "Corrupt JPEG data: premature end of data segment" is damage inside the file, not a cut-off one.
  const truncated = endsEarly(format, bytes) || /premature end of (jpeg )?file|truncat|unexpected end|end of (file|stream)|short read/i.test(message);
  const kind = truncated ? 'truncated' : 'corrupt';
  return new DecodeError(kind, `${kind} ${format.toUpperCase()}: ${message}${truncated ? '; copy the file again from its source' : ''}`);
}

/** Whether the file stops before its format's end marker (JPEG EOI, PNG IEND, the RIFF length of WebP). */
function endsEarly(format: ImageFormat, bytes: Uint8Array): boolean {
  const n = bytes.length;
  if (format === 'jpeg') return !(bytes[n - 2] === 0xff && bytes[n - 1] === 0xd9);
  if (format === 'png') return Buffer.from(bytes.subarray(Math.max(0, n - 8), n - 4)).toString('latin1') !== 'IEND';
  if (format === 'webp') return n < 8 || new DataView(bytes.buffer, bytes.byteOffset, n).getUint32(4, true) + 8 > n;
  return false;
}

function sharpMessage(error: unknown): string {
  // libvips ends a message with a colon where the detail that should follow is empty ("…has corrupt header:").
  const message = (error instanceof Error ? error.message : String(error)).split('\n')[0].trim().replace(/:$/, '');
  return message === 'Unknown error' || message === '' ? 'the decoder failed without saying why' : message;
}
