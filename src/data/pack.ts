// A pack: a whole data set decoded, cut to the field, resized (and optionally MPM-processed) once, stored as one
// file that travels with the code. Layout: 8-byte magic, u32 LE header length, the JSON header, then one encoded
// image per entry (offsets in the header, relative to the end of the header).
import { open, stat } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { writeFileAtomic } from '../engine/atomic-write.js';
import type { MpmConfig } from '../preprocess/mpm.js';
import { type SkippedFile, unusableFile } from './dataset.js';
import { readFailure, readFileHead, readRegularFile } from './files.js';
import { DEFAULT_GEOMETRY, type GeometryConfig } from './geometry.js';
import { mapLimit } from './pool.js';
import { BLOB_CODECS, type BlobCodec, measureReference, type Reference, type ReferenceScale, type Rgb } from './prepare.js';
import { PreparePool } from './prepare-pool.js';
import type { Part } from './split.js';
import type { StainRange } from './stain.js';

const MAGIC = 'HMTPACK1';

export interface PackItem {
  file: string;
  path: string;
  label: string;
  part?: Part;
}

export interface PackEntry {
  file: string;
  label: number;
  part: Part | null;
  offset: number;
  length: number;
}

export interface PackHeader {
  format: 'hemato-pack';
  version: 1;
  /** Images are size × size × 3, uint8, HWC. */
  size: number;
  classes: string[];
  count: number;
  codec: BlobCodec;
  quality: number;
  geometry: GeometryConfig;
  /** The MPM config applied before encoding, or null. */
  mpm: MpmConfig | null;
  /** The reference scale and background the images were brought to (absent in packs made before them). */
  scale?: ReferenceScale | null;
  background?: Rgb | Rgb[] | null;
  /** The range of stain strengths images were brought into (absent in packs made before it). */
  stain?: StainRange | null;
  /** sha256 of the split CSV the parts came from. */
  splitHash: string | null;
  source: string | null;
  entries: PackEntry[];
  skipped: SkippedFile[];
}

export interface WritePackOptions {
  classes: readonly string[];
  geometry?: GeometryConfig;
  mpm?: MpmConfig | null;
  /** The scale and background to bring images to; absent: measured on the training part (or all items); null: none. */
  reference?: Reference | null;
  /**
   * Lossless WebP by default: a model trained on lossy images loses accuracy on the originals (docs/data.md).
   * Lossy WebP at quality 85 keeps PBC at 128 px under 40 MiB, for carrying a pack to another machine.
   */
  codec?: BlobCodec;
  quality?: number;
  threads?: number;
  maxPixels?: number;
  /** Files larger than this many bytes are skipped (default 256 MiB); special files (FIFOs, devices) always are. */
  maxFileBytes?: number;
  splitHash?: string | null;
  source?: string | null;
  /** Files already known to be unusable (from listing), carried into the header. */
  skipped?: SkippedFile[];
  onProgress?: (done: number, total: number) => void;
}

/**
 * Prepares every item on worker threads and writes the pack whole or not at all (an existing pack stays intact until
 * the new one is complete); files that fail are skipped and listed in the header.
 */
export async function writePack(allItems: readonly PackItem[], outPath: string, options: WritePackOptions): Promise<PackHeader> {
  const classes = [...options.classes];
  for (const item of allItems) {
    if (!classes.includes(item.label)) throw new Error(`${item.file}: label "${item.label}" is not one of the classes (${classes.join(', ')})`);
  }
  const skipped = [...(options.skipped ?? [])];
  // Items from a split were never listed: special files and files over the limit are skipped here, unopened.
  const items: PackItem[] = [];
  for (const item of allItems) {
    const unusable = await unusableFile(item.file, item.path, options.maxFileBytes);
    if (unusable) skipped.push(unusable);
    else items.push(item);
  }
  const geometry = options.geometry ?? DEFAULT_GEOMETRY;
  const codec = options.codec ?? 'webp-lossless';
  const quality = options.quality ?? 85;
  const trainItems = items.filter((i) => i.part === 'train');
  const reference =
    options.reference !== undefined
      ? options.reference
      : await measureReference(
          (trainItems.length ? trainItems : items).map((i) => i.path),
          { maxPixels: options.maxPixels, geometry },
        );
  const recipe = {
    geometry,
    mpm: options.mpm ?? null,
    scale: reference?.scale ?? null,
    background: reference?.background ?? null,
    stain: reference?.stain ?? null,
  };
  const pool = await PreparePool.start({ ...recipe, maxPixels: options.maxPixels, encode: { codec, quality } }, options.threads);
  let results;
  try {
    options.onProgress?.(0, items.length);
    results = await pool.map(
      items.map((i) => i.path),
      (done) => options.onProgress?.(done, items.length),
    );
  } finally {
    await pool.close();
  }
  const entries: PackEntry[] = [];
  const blobs: Uint8Array[] = [];
  let offset = 0;
  results.forEach((result, i) => {
    const item = items[i];
    if (!result.ok) {
      skipped.push({ path: item.file, reason: result.code, detail: result.message });
      return;
    }
    entries.push({ file: item.file, label: classes.indexOf(item.label), part: item.part ?? null, offset, length: result.data.length });
    blobs.push(result.data);
    offset += result.data.length;
  });
  // A pack without images is no data set; readers would refuse it.
  if (entries.length === 0) {
    const first = skipped[options.skipped?.length ?? 0];
    throw new Error(
      `none of the ${allItems.length} files could be packed${first ? ` (the first: ${first.path} [${first.reason}] ${first.detail})` : ''}; nothing was written`,
    );
  }
  const header: PackHeader = {
    format: 'hemato-pack',
    version: 1,
    size: geometry.size,
    classes,
    count: entries.length,
    codec,
    quality,
    geometry,
    mpm: options.mpm ?? null,
    scale: recipe.scale,
    background: recipe.background,
    stain: recipe.stain,
    splitHash: options.splitHash ?? null,
    source: options.source ?? null,
    entries,
    skipped,
  };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const length = Buffer.alloc(4);
  length.writeUInt32LE(json.length);
  await writeFileAtomic(outPath, [Buffer.from(MAGIC, 'ascii'), length, json, ...blobs]);
  return header;
}

export interface PackData {
  /** n × size × size × 3, uint8, HWC, contiguous. */
  images: Uint8Array;
  n: number;
  size: number;
  labels: Int32Array;
  classes: string[];
  files: string[];
  parts: (Part | null)[];
  header: PackHeader;
}

export interface ReadPackOptions {
  /** Only entries of these parts (e.g. ['train']); entries without a part are kept only when this is absent. */
  parts?: Part[];
  /** Images decoded at once (sharp decodes on its own threads). */
  concurrency?: number;
}

/** A pack's first `bytes` bytes, or all of it; a path that is not a readable regular file is an Error naming it. */
async function readPackBytes(packPath: string, bytes?: number): Promise<Buffer> {
  try {
    if (bytes === undefined) return await readRegularFile(packPath, Number.MAX_SAFE_INTEGER);
    const head = await readFileHead(packPath, bytes);
    return Buffer.from(head.buffer, head.byteOffset, head.length);
  } catch (error) {
    throw new Error(`cannot read pack ${packPath}: ${readFailure(error)}`);
  }
}

/** Reads the header without touching the images; a header that does not describe this file is an Error naming it. */
export async function readPackHeader(packPath: string): Promise<{ header: PackHeader; dataOffset: number }> {
  const prefix = await readPackBytes(packPath, 12);
  checkMagic(prefix, packPath);
  const length = prefix.length === 12 ? prefix.readUInt32LE(8) : 0;
  const head = await readPackBytes(packPath, 12 + length);
  if (head.length !== 12 + length) throw damaged(packPath, 'the header is cut short');
  const fileBytes = (await stat(packPath)).size;
  return { header: parseHeader(head.subarray(12), packPath, fileBytes - 12 - length), dataOffset: 12 + length };
}

/** Decodes a whole pack (or some parts of it) into one contiguous buffer with its labels. */
export async function readPack(packPath: string, options: ReadPackOptions = {}): Promise<PackData> {
  const bytes = await readPackBytes(packPath);
  checkMagic(bytes, packPath);
  const headerLength = bytes.length >= 12 ? bytes.readUInt32LE(8) : Infinity;
  if (12 + headerLength > bytes.length) throw damaged(packPath, 'the header is cut short');
  const dataOffset = 12 + headerLength;
  const header = parseHeader(bytes.subarray(12, dataOffset), packPath, bytes.length - dataOffset);
  const entries = selectEntries(header, options.parts);
  const pixels = header.size * header.size * 3;
  const images = new Uint8Array(entries.length * pixels);
  await mapLimit(entries, options.concurrency ?? 8, async (entry, i) => {
    const start = dataOffset + entry.offset;
    images.set(await decodeBlob(bytes.subarray(start, start + entry.length), header.size, entry.file, packPath), i * pixels);
  });
  return {
    images,
    n: entries.length,
    size: header.size,
    labels: Int32Array.from(entries, (e) => e.label),
    classes: header.classes,
    files: entries.map((e) => e.file),
    parts: entries.map((e) => e.part),
    header,
  };
}

/** A pack that cannot be used as it is: what is wrong, and what to do. */
function damaged(packPath: string, detail: string): Error {
  return new Error(`${packPath}: damaged pack (${detail}); make the pack again with hemato pack`);
}

/**
 * The JSON header, checked against what readers rely on: each entry's label names a class, its bytes lie inside the
 * `dataBytes` after the header, the class names are distinct. A damaged header fails here, naming the pack, not later
 * in a batch worker or when the model is saved.
 */
function parseHeader(json: Uint8Array, packPath: string, dataBytes: number): PackHeader {
  let header: PackHeader;
  try {
    header = JSON.parse(Buffer.from(json).toString('utf8')) as PackHeader;
  } catch (error) {
    throw damaged(packPath, `the header is not JSON: ${(error as Error).message}`);
  }
  const problem = headerProblem(header, dataBytes);
  if (problem) throw damaged(packPath, problem);
  if (header.entries.length === 0) throw new Error(`${packPath} holds no images; make the pack again with hemato pack from a data set with images`);
  return header;
}

const isCount = (value: unknown) => Number.isSafeInteger(value) && (value as number) >= 0;
const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

function headerProblem(header: unknown, dataBytes: number): string | null {
  if (!isObject(header)) return 'the header is not a JSON object';
  if (header.format !== 'hemato-pack' || header.version !== 1)
    return `format ${JSON.stringify(header.format)} version ${JSON.stringify(header.version)}, not hemato-pack 1`;
  const { size, classes, entries, count } = header;
  if (!(Number.isInteger(size) && (size as number) >= 8 && (size as number) <= 4096)) return `size ${JSON.stringify(size)} is not a side in 8..4096`;
  if (!isObject(header.geometry) || header.geometry.size !== size) return 'the geometry does not match the size';
  if (!BLOB_CODECS.includes(header.codec as BlobCodec)) return `codec ${JSON.stringify(header.codec)} is not one of ${BLOB_CODECS.join(', ')}`;
  if (!(header.mpm === null || isObject(header.mpm))) return 'mpm is neither null nor a settings object';
  if (!Array.isArray(classes) || classes.length === 0 || !classes.every((c) => typeof c === 'string' && c !== '')) return 'classes is not a list of names';
  const repeated = classes.find((c, i) => classes.indexOf(c) !== i);
  if (repeated !== undefined) return `class "${repeated}" is named twice`;
  if (!Array.isArray(entries)) return 'entries is not a list';
  if (count !== entries.length) return `count ${JSON.stringify(count)} but ${entries.length} entries`;
  if (!Array.isArray(header.skipped)) return 'skipped is not a list';
  for (const [i, entry] of entries.entries()) {
    const at = `entry ${i}`;
    if (!isObject(entry) || typeof entry.file !== 'string' || entry.file === '') return `${at} names no file`;
    if (!(Number.isInteger(entry.label) && (entry.label as number) >= 0 && (entry.label as number) < classes.length))
      return `${at} (${entry.file}): label ${JSON.stringify(entry.label)} is not a class index in 0..${classes.length - 1}`;
    if (!(entry.part === null || entry.part === 'train' || entry.part === 'val' || entry.part === 'test'))
      return `${at} (${entry.file}): part ${JSON.stringify(entry.part)} is not train, val, test or null`;
    if (!(isCount(entry.offset) && isCount(entry.length) && (entry.length as number) > 0 && (entry.offset as number) + (entry.length as number) <= dataBytes))
      return `${at} (${entry.file}): bytes ${JSON.stringify(entry.offset)} + ${JSON.stringify(entry.length)} do not lie within the ${dataBytes} bytes of images (a truncated copy?)`;
  }
  return null;
}

export interface PackBatch {
  /** Positions of these images among the selected entries. */
  start: number;
  n: number;
  images: Uint8Array;
  labels: Int32Array;
  files: string[];
}

/** Streams a pack in order, batch by batch, reading only what each batch needs: for sets larger than memory. */
export async function* streamPack(packPath: string, options: ReadPackOptions & { batchSize?: number } = {}): AsyncGenerator<PackBatch> {
  const { header, dataOffset } = await readPackHeader(packPath);
  const entries = selectEntries(header, options.parts);
  const batchSize = options.batchSize ?? 256;
  const pixels = header.size * header.size * 3;
  const handle = await open(packPath);
  try {
    for (let start = 0; start < entries.length; start += batchSize) {
      const batch = entries.slice(start, start + batchSize);
      const blobs = await Promise.all(
        batch.map(async (entry) => {
          const blob = Buffer.alloc(entry.length);
          const { bytesRead } = await handle.read(blob, 0, entry.length, dataOffset + entry.offset);
          if (bytesRead !== entry.length) throw damaged(packPath, `entry ${entry.file} is cut short`);
          return blob;
        }),
      );
      const images = new Uint8Array(batch.length * pixels);
      await mapLimit(blobs, options.concurrency ?? 8, async (blob, i) => images.set(await decodeBlob(blob, header.size, batch[i].file, packPath), i * pixels));
      yield { start, n: batch.length, images, labels: Int32Array.from(batch, (e) => e.label), files: batch.map((e) => e.file) };
    }
  } finally {
    await handle.close();
  }
}

function selectEntries(header: PackHeader, parts: Part[] | undefined): PackEntry[] {
  return parts ? header.entries.filter((e) => e.part !== null && parts.includes(e.part)) : header.entries;
}

/** One entry's pixels; bytes that do not decode, or decode to another shape, are a damaged pack. */
async function decodeBlob(blob: Uint8Array, size: number, file: string, packPath: string): Promise<Uint8Array> {
  let decoded;
  try {
    decoded = await sharp(blob).raw().toBuffer({ resolveWithObject: true });
  } catch (error) {
    throw damaged(packPath, `entry ${file} does not decode: ${(error as Error).message}`);
  }
  const { data, info } = decoded;
  if (info.width !== size || info.height !== size || info.channels !== 3)
    throw damaged(packPath, `entry ${file} decodes to ${info.width}×${info.height}×${info.channels}, not ${size}×${size}×3`);
  return data;
}

/** Whether a file is a pack, by its magic; for saying what an output replaced. Nothing but its start is read. */
export async function isPackFile(file: string): Promise<boolean> {
  const head = await readFileHead(file, MAGIC.length).catch(() => null);
  return head !== null && Buffer.from(head).toString('ascii') === MAGIC;
}

function checkMagic(bytes: Uint8Array, packPath: string): void {
  if (Buffer.from(bytes.subarray(0, 8)).toString('ascii') !== MAGIC) {
    throw new Error(`${path.basename(packPath)} is not a hemato pack (bad magic); make one with hemato pack`);
  }
}
