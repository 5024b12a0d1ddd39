// safetensors: an 8-byte little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}
// plus an optional __metadata__ map of strings, then the raw little-endian data.
import { constants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { writeFileAtomic } from './atomic-write.js';
import { type DType, itemSize } from './dtype.js';
import { tensor, type Tensor } from './tensor.js';
import { dispose } from './scope.js';

const TO_FILE: Record<DType, string> = {
  float32: 'F32',
  float64: 'F64',
  bfloat16: 'BF16',
  float16: 'F16',
  int64: 'I64',
  int32: 'I32',
  uint8: 'U8',
  bool: 'BOOL',
};
const FROM_FILE = new Map(Object.entries(TO_FILE).map(([dtype, code]) => [code, dtype as DType]));

export interface SafetensorsFile {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

interface HeaderEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

/** The most header a file may declare: far more than any model's, little enough to read before checking it. */
const MAX_HEADER_BYTES = 100_000_000;

/** Parses a safetensors buffer into CPU tensors. Errors name the file's defect. */
export function parseSafetensors(bytes: Uint8Array, source = 'safetensors data'): SafetensorsFile {
  if (bytes.length < 8) throw new Error(`${source}: too short to be a safetensors file (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > bytes.length - 8 || headerLength > MAX_HEADER_BYTES) throw new Error(`${source}: header length ${headerLength} exceeds the file`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  } catch {
    throw new Error(`${source}: the header is not valid JSON; the file is damaged or not safetensors`);
  }
  const dataStart = 8 + headerLength;
  const { entries, metadata } = readHeader(header, bytes.length - dataStart, source);
  const tensors = new Map<string, Tensor>();
  try {
    for (const { name, dtype, shape, begin, end } of entries) {
      // Copy into a fresh, aligned buffer: the file's offsets need not be aligned for typed-array views
      // (and Buffer#slice would share the file's memory rather than copy it).
      const raw = Uint8Array.prototype.slice.call(bytes, dataStart + begin, dataStart + end);
      tensors.set(name, tensor(viewAs(dtype, raw.buffer), shape, { dtype }));
    }
  } catch (error) {
    dispose([...tensors.values()]);
    throw error;
  }
  return { tensors, metadata };
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const isIndex = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0;
/** A value as JSON, cut short: a damaged header can hold anything. */
const brief = (value: unknown): string => {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
};

/** Checks the whole header before any tensor is made: every entry's form, dtype, size and place in the data. */
function readHeader(header: unknown, dataLength: number, source: string): { entries: HeaderEntry[]; metadata: Record<string, string> } {
  if (!isObject(header)) throw new Error(`${source}: the header is ${brief(header)}, not a JSON object`);
  const { __metadata__: metadata = {}, ...described } = header;
  if (!isObject(metadata) || !Object.values(metadata).every((v) => typeof v === 'string')) throw new Error(`${source}: __metadata__ must map names to strings`);
  const entries = Object.entries(described).map(([name, entry]) => readEntry(name, entry, dataLength, source));
  // Two tensors sharing bytes would load fine and silently alias each other's weights.
  const placed = entries.filter((e) => e.end > e.begin).sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < placed.length; i++) {
    const [a, b] = [placed[i - 1], placed[i]];
    if (b.begin < a.end) throw new Error(`${source}: tensors '${a.name}' [${a.begin}, ${a.end}] and '${b.name}' [${b.begin}, ${b.end}] share bytes`);
  }
  return { entries, metadata: metadata as Record<string, string> };
}

function readEntry(name: string, entry: unknown, dataLength: number, source: string): HeaderEntry {
  const what = `${source}: tensor '${name}'`;
  if (!isObject(entry)) throw new Error(`${what} is described by ${brief(entry)}, not an object`);
  const { dtype: code, shape, data_offsets: offsets } = entry;
  const dtype = typeof code === 'string' ? FROM_FILE.get(code) : undefined;
  if (!dtype) throw new Error(`${what} has dtype ${brief(code)}, which hemato does not read (${[...FROM_FILE.keys()].join(', ')})`);
  if (!Array.isArray(shape) || !shape.every(isIndex)) throw new Error(`${what} has shape ${brief(shape)}, not a list of non-negative integers`);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex) || offsets[0] > offsets[1]) {
    throw new Error(`${what} has data_offsets ${brief(offsets)}, not [begin, end] with 0 ≤ begin ≤ end`);
  }
  const [begin, end] = offsets as [number, number];
  if (end > dataLength) throw new Error(`${what} has offsets [${begin}, ${end}] beyond the ${dataLength} bytes of data; the file is cut short or damaged`);
  const expected = shape.reduce((a: number, b: number) => a * b, 1) * itemSize(dtype);
  if (end - begin !== expected)
    throw new Error(`${what} has offsets [${begin}, ${end}] (${end - begin} bytes), but shape [${shape}] of ${code} needs ${expected}`);
  return { name, dtype, shape, begin, end };
}

function viewAs(dtype: DType, buffer: ArrayBuffer) {
  switch (dtype) {
    case 'float32':
      return new Float32Array(buffer);
    case 'float64':
      return new Float64Array(buffer);
    case 'bfloat16':
    case 'float16':
      return new Uint16Array(buffer);
    case 'int64':
      return new BigInt64Array(buffer);
    case 'int32':
      return new Int32Array(buffer);
    default:
      return new Uint8Array(buffer);
  }
}

/** Serialises tensors (any device) and string metadata to safetensors bytes, keys sorted as PyTorch writes them. */
export function serializeSafetensors(tensors: Map<string, Tensor> | Record<string, Tensor>, metadata: Record<string, string> = {}): Uint8Array {
  const entries = [...(tensors instanceof Map ? tensors.entries() : Object.entries(tensors))].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    const data = new Uint8Array(t.data().buffer);
    header[name] = { dtype: TO_FILE[t.dtype], shape: t.shape, data_offsets: [offset, offset + data.length] };
    chunks.push(data);
    offset += data.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8); // align the data section to 8 bytes
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let position = 8 + headerBytes.length;
  for (const chunk of chunks) {
    out.set(chunk, position);
    position += chunk.length;
  }
  return out;
}

export async function loadSafetensors(file: string): Promise<SafetensorsFile> {
  return parseSafetensors(await withFile(file, (handle) => handle.readFile()), file);
}

/** The `__metadata__` strings of a safetensors file, read from its header alone. */
export async function readSafetensorsMetadata(file: string): Promise<Record<string, string> | undefined> {
  const { header, dataLength } = await withFile(file, async (handle, size) => {
    const prefix = Buffer.alloc(8);
    await handle.read(prefix, 0, 8, 0);
    const length = Number(prefix.readBigUInt64LE(0));
    if (size < 8 || length > size - 8 || length > MAX_HEADER_BYTES) throw new Error(`${file} is not a safetensors file (its header does not fit it)`);
    const bytes = Buffer.alloc(length);
    await handle.read(bytes, 0, length, 8);
    return { header: bytes, dataLength: size - 8 - length };
  });
  let parsed: Record<string, { data_offsets?: unknown }> & { __metadata__?: Record<string, string> };
  try {
    parsed = JSON.parse(header.toString('utf8'));
  } catch {
    throw new Error(`${file}: the safetensors header is not valid JSON; the file is damaged`);
  }
  // The tensors' bytes are not read, but they must be there: a copy cut short would otherwise pass for a model.
  const end = Object.values(parsed ?? {}).reduce(
    (last, entry) => Math.max(last, Array.isArray(entry?.data_offsets) ? Number(entry.data_offsets[1]) || 0 : 0),
    0,
  );
  if (end > dataLength)
    throw new Error(`${file} holds ${dataLength} bytes of tensor data where its header describes ${end}; the file is cut short or damaged: copy it again`);
  return parsed?.__metadata__;
}

/**
 * Runs `use` on a file opened for reading, if it is a regular file. It is opened without blocking: opening a named
 * pipe would wait for a writer. A file that cannot be read is an Error naming it and saying why.
 */
async function withFile<T>(file: string, use: (handle: FileHandle, size: number) => Promise<T>): Promise<T> {
  let handle: FileHandle;
  try {
    handle = await open(file, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    // The code stays for callers that word file-system failures their own way.
    throw Object.assign(new Error(`cannot read ${file}: ${code === 'ENOENT' ? 'no such file' : message}`), { code });
  }
  try {
    const info = await handle.stat();
    if (!info.isFile())
      throw new Error(`cannot read ${file}: not a regular file: ${info.isDirectory() ? 'a folder' : info.isFIFO() ? 'a named pipe (FIFO)' : 'a special file'}`);
    return await use(handle, info.size);
  } finally {
    await handle.close();
  }
}

/** Writes whole or not at all: a crash or an interrupt leaves either the old file or the new one, and no temporary. */
export async function saveSafetensors(
  file: string,
  tensors: Map<string, Tensor> | Record<string, Tensor>,
  metadata: Record<string, string> = {},
): Promise<void> {
  await writeFileAtomic(file, [serializeSafetensors(tensors, metadata)]);
}
