// safetensors: an 8-byte little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}
// plus an optional __metadata__ map of strings, then the raw little-endian data.
import { readFile, writeFile, rename } from 'node:fs/promises';
import { type DType, itemSize } from './dtype.js';
import { tensor, type Tensor } from './tensor.js';
import { dispose } from './scope.js';

const TO_FILE: Record<DType, string> = {
  float32: 'F32', float64: 'F64', bfloat16: 'BF16', float16: 'F16', int64: 'I64', int32: 'I32', uint8: 'U8', bool: 'BOOL',
};
const FROM_FILE = new Map(Object.entries(TO_FILE).map(([dtype, code]) => [code, dtype as DType]));

export interface SafetensorsFile {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/** Parses a safetensors buffer into CPU tensors. Errors name the file's defect. */
export function parseSafetensors(bytes: Uint8Array, source = 'safetensors data'): SafetensorsFile {
  if (bytes.length < 8) throw new Error(`${source}: too short to be a safetensors file (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > bytes.length - 8 || headerLength > 100_000_000) throw new Error(`${source}: header length ${headerLength} exceeds the file`);
  let header: Record<string, HeaderEntry | Record<string, string>>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  } catch {
    throw new Error(`${source}: the header is not valid JSON; the file is damaged or not safetensors`);
  }
  const dataStart = 8 + headerLength;
  const dataLength = bytes.length - dataStart;
  const tensors = new Map<string, Tensor>();
  try {
    for (const [name, entry] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const { dtype: code, shape, data_offsets: offsets } = entry as HeaderEntry;
      const dtype = FROM_FILE.get(code);
      if (!dtype) throw new Error(`${source}: tensor '${name}' has dtype ${code}, which hemato does not read`);
      const [begin, end] = offsets;
      const expected = shape.reduce((a, b) => a * b, 1) * itemSize(dtype);
      if (!(begin >= 0 && end >= begin && end <= dataLength) || end - begin !== expected) {
        throw new Error(`${source}: tensor '${name}' has offsets [${begin}, ${end}] that do not fit its shape [${shape}] or the file`);
      }
      // Copy into a fresh, aligned buffer: the file's offsets need not be aligned for typed-array views
      // (and Buffer#slice would share the file's memory rather than copy it).
      const raw = Uint8Array.prototype.slice.call(bytes, dataStart + begin, dataStart + end);
      tensors.set(name, tensor(viewAs(dtype, raw.buffer), shape, { dtype }));
    }
  } catch (error) {
    dispose([...tensors.values()]);
    throw error;
  }
  const metadata = (header.__metadata__ as Record<string, string> | undefined) ?? {};
  return { tensors, metadata };
}

function viewAs(dtype: DType, buffer: ArrayBuffer) {
  switch (dtype) {
    case 'float32': return new Float32Array(buffer);
    case 'float64': return new Float64Array(buffer);
    case 'bfloat16': case 'float16': return new Uint16Array(buffer);
    case 'int64': return new BigInt64Array(buffer);
    case 'int32': return new Int32Array(buffer);
    default: return new Uint8Array(buffer);
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
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);  // align the data section to 8 bytes
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
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    throw new Error(`cannot read ${file}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`);
  }
  return parseSafetensors(bytes, file);
}

/** Writes atomically: a crash leaves either the old file or the new one, never half of one. */
export async function saveSafetensors(file: string, tensors: Map<string, Tensor> | Record<string, Tensor>, metadata: Record<string, string> = {}): Promise<void> {
  const temporary = `${file}.${process.pid}.tmp`;
  await writeFile(temporary, serializeSafetensors(tensors, metadata));
  await rename(temporary, file);
}
