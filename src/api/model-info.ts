// Which model made an output, and what a model file says about itself, read from the file's header alone: no
// libtorch is needed, so `hemato info` works where the addon does not.
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { type ModelMetadata, readModelMetadata } from '../models/io.js';
import { inputRecipe } from './classifier.js';

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

export const HEMATO_VERSION = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** The `model_info` object for a model file. */
export async function modelInfo(file: string): Promise<ModelIdentity> {
  return (await readModelFile(file)).identity;
}

/** A model file's size, identity and hemato metadata. Errors name the file and its defect. */
export async function readModelFile(file: string): Promise<ModelFile> {
  // The metadata first: reading it refuses a named pipe, which the hash's stream would wait on for ever.
  const metadata = await readModelMetadata(file);
  const [info, sha256] = await Promise.all([stat(file), hashFile(file)]);
  const date = metadata.provenance?.date;
  const created = typeof date === 'string' && !Number.isNaN(Date.parse(date)) ? date : info.mtime.toISOString();
  return {
    file: path.resolve(file),
    bytes: info.size,
    identity: { name: path.basename(file), architecture: metadata.architecture, sha256, hemato_version: HEMATO_VERSION, created },
    metadata,
  };
}

async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}

export type ModelCard = ReturnType<typeof modelCard>;

/**
 * A model file's card, as `hemato info --json` prints it and the HTTP service serves it: the identity, then the
 * metadata with the defaults that loading fills in.
 */
export function modelCard({ file, bytes, identity, metadata }: ModelFile) {
  const recipe = inputRecipe(metadata);
  const ood = metadata.outOfDistribution;
  return {
    file,
    bytes,
    model_info: identity,
    architecture: metadata.architecture,
    options: metadata.options,
    dtype: metadata.dtype,
    classes: metadata.classes,
    input_size: metadata.inputSize,
    normalization: metadata.normalization,
    preprocessing: {
      field: recipe.geometry.field,
      size: recipe.geometry.size,
      scale: recipe.scale,
      background: recipe.background,
      stain: recipe.stain,
      mpm: recipe.mpm,
    },
    temperature: metadata.temperature ?? null,
    uncertainty_threshold: metadata.uncertaintyThreshold ?? null,
    tta: metadata.tta ? { temperature: metadata.tta.temperature, uncertainty_threshold: metadata.tta.uncertaintyThreshold } : null,
    out_of_distribution: ood
      ? { kind: ood.kind, pooling: ood.pooling, threshold: ood.threshold, validation_flagged: ood.validationFlagged, features: ood.features }
      : null,
    feature_scale: metadata.featureScale ? { pooling: metadata.featureScale.pooling, features: metadata.featureScale.weights.length } : null,
    provenance: metadata.provenance ?? {},
  };
}
