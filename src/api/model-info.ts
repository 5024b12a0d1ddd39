// Which model made an output, and what a model file says about itself, read from the file's header alone: no
// libtorch is needed, so `hemato info` works where the addon does not.
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { ModelMetadata } from '../models/io.js';

/** The `model_info` of every output: enough to tell which model file, and which hemato, made it. */
export interface ModelIdentity {
  /** The file's base name. */
  name: string;
  architecture: string;
  /** Of the whole file: two files with the same hash are the same model, calibration included. */
  sha256: string;
  /** The hemato that produced the output (not the one that trained the model). */
  hemato_version: string;
  /** When the model was made: its provenance's date, else the file's modification time. */
  created: string;
}

export interface ModelFile {
  file: string;
  bytes: number;
  identity: ModelIdentity;
  metadata: ModelMetadata;
}

// The same bound the safetensors reader puts on a header.
const MAX_HEADER_BYTES = 100_000_000;

export const HEMATO_VERSION = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** The `model_info` object for a model file. */
export async function modelInfo(file: string): Promise<ModelIdentity> {
  return (await readModelFile(file)).identity;
}

/** A model file's size, identity and hemato metadata. Errors name the file and its defect. */
export async function readModelFile(file: string): Promise<ModelFile> {
  const [metadata, info, sha256] = await Promise.all([readMetadata(file), stat(file), hashFile(file)]);
  const date = metadata.provenance?.date;
  const created = typeof date === 'string' && !Number.isNaN(Date.parse(date)) ? date : info.mtime.toISOString();
  return {
    file: path.resolve(file),
    bytes: info.size,
    identity: { name: path.basename(file), architecture: metadata.architecture, sha256, hemato_version: HEMATO_VERSION, created },
    metadata,
  };
}

/** The hemato document in a safetensors header (8-byte little-endian length, then JSON). */
async function readMetadata(file: string): Promise<ModelMetadata> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    const prefix = Buffer.alloc(8);
    await handle.read(prefix, 0, 8, 0);
    const length = Number(prefix.readBigUInt64LE(0));
    if (size < 8 || length > size - 8 || length > MAX_HEADER_BYTES) throw new Error(`${file} is not a safetensors file (its header does not fit it)`);
    const header = Buffer.alloc(length);
    await handle.read(header, 0, length, 8);
    return parseHematoMetadata(header.toString('utf8'), file);
  } finally {
    await handle.close();
  }
}

function parseHematoMetadata(headerJson: string, file: string): ModelMetadata {
  let document: string | undefined;
  try {
    document = (JSON.parse(headerJson) as { __metadata__?: Record<string, string> }).__metadata__?.hemato;
  } catch {
    throw new Error(`${file}: the safetensors header is not valid JSON; the file is damaged`);
  }
  if (document === undefined) throw new Error(`${file} has no hemato metadata; it is not a model saved by hemato`);
  let metadata: ModelMetadata;
  try {
    metadata = JSON.parse(document) as ModelMetadata;
  } catch {
    throw new Error(`${file}: the hemato metadata is not valid JSON; the file is damaged`);
  }
  if (metadata.format !== 'hemato-model') throw new Error(`${file}: metadata format '${String(metadata.format)}' is not 'hemato-model'`);
  return metadata;
}

async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}
