// Training checkpoints: model weights, optimizer state, EMA weights and the loop's position in one
// safetensors file, written atomically (write, then rename) so an interruption never leaves half a file, nor a
// temporary: one from a write that was killed outright is removed at the next load or save.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { removeStaleTemporaries, writeFileAtomic } from '../engine/atomic-write.js';
import * as E from '../engine/index.js';
import { NonFiniteModelError } from '../eval/finite.js';
import type { Module } from '../nn/index.js';
import { CHECKPOINT_FORMAT } from '../models/io.js';
import { RESTART_ADVICE } from './step.js';

export const CHECKPOINT_FILE = 'checkpoint.safetensors';

export interface LoopState {
  /** The epoch and the batch within it that the next step will run. */
  epoch: number;
  batch: number;
  globalStep: number;
  bestScore: number;
  bestEpoch: number;
  history: Record<string, unknown>[];
}

/** What a checkpoint holds besides the loop's position: the weights, the optimiser's state and the EMA weights. */
export interface TrainingParts {
  model: Module;
  optimizer: E.AdamW;
  ema?: Map<string, E.Tensor>;
}

export async function saveCheckpoint(file: string, parts: TrainingParts, loop: LoopState, config: unknown): Promise<void> {
  const tensors = new Map<string, E.Tensor>();
  for (const [key, t] of parts.model.stateDict()) tensors.set(`model.${key}`, t);
  const optimizerState = parts.optimizer.stateDict();
  for (const [key, t] of optimizerState.tensors) tensors.set(`optimizer.${key}`, t);
  for (const [key, t] of parts.ema ?? []) tensors.set(`ema.${key}`, t);
  await writeFileAtomic(file, [
    E.serializeSafetensors(tensors, {
      format: CHECKPOINT_FORMAT,
      loop: JSON.stringify(loop),
      optimizer: JSON.stringify(optimizerState.json),
      config: JSON.stringify(config),
    }),
  ]);
}

export interface LoadedCheckpoint {
  loop: LoopState;
  config: unknown;
}

/**
 * A checkpoint that cannot be resumed from: the damage, and the two ways on (the run's best model, where it has one,
 * survives a damaged checkpoint).
 */
export function unusableCheckpoint(file: string, problem: string): Error {
  const best = path.join(path.dirname(file), 'best.safetensors');
  const fineTune = existsSync(best) ? `, or fine-tune its best model in a new run (--init ${best} --out NEW)` : '';
  return new Error(`${problem}; the run cannot continue from it: start it again with --overwrite${fineTune}`);
}

/** Runs a step of reading a checkpoint; whatever it throws becomes unusableCheckpoint's error. */
async function asCheckpoint<T>(file: string, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (error) {
    const message = (error as Error).message;
    throw unusableCheckpoint(file, message.includes(file) ? message : `${file}: ${message}`);
  }
}

/** A checkpoint's loop position and settings, read from its header alone (nothing is loaded). */
export async function readCheckpointHeader(file: string): Promise<LoadedCheckpoint> {
  return asCheckpoint(file, async () => {
    const metadata = await E.readSafetensorsMetadata(file);
    return parseHeader(file, metadata ?? {});
  });
}

function parseHeader(file: string, metadata: Record<string, string>): LoadedCheckpoint {
  if (metadata.format !== CHECKPOINT_FORMAT) throw new Error(`${file} is not a hemato training checkpoint`);
  let header: LoadedCheckpoint;
  try {
    header = { loop: JSON.parse(metadata.loop) as LoopState, config: JSON.parse(metadata.config) };
  } catch {
    throw new Error(`${file}: the loop position or settings in its header are not valid JSON; the file is damaged`);
  }
  const { epoch, batch, bestEpoch } = (header.loop ?? {}) as Partial<LoopState>;
  if (![epoch, batch, bestEpoch].every((n) => Number.isInteger(n) && n! >= -1))
    throw new Error(`${file}: the loop position in its header is ${JSON.stringify(header.loop)?.slice(0, 80)}; the file is damaged`);
  return header;
}

/** Restores a checkpoint into the given model, optimizer and EMA; their tensors keep their identities. */
export async function loadCheckpoint(file: string, parts: TrainingParts): Promise<LoadedCheckpoint> {
  await removeStaleTemporaries(file);
  const { tensors, metadata } = await asCheckpoint(file, () => E.loadSafetensors(file));
  try {
    return await asCheckpoint(file, async () => {
      const header = parseHeader(file, metadata);
      const section = (prefix: string) => new Map([...tensors].filter(([k]) => k.startsWith(prefix)).map(([k, t]) => [k.slice(prefix.length), t]));
      parts.model.loadStateDict(section('model.'));
      parts.optimizer.loadStateDict({ tensors: section('optimizer.'), json: JSON.parse(metadata.optimizer) });
      if (parts.ema)
        E.noGrad(() => {
          for (const [key, t] of section('ema.')) parts.ema!.get(key)?.copy_(t);
        });
      return header;
    });
  } finally {
    E.dispose(tensors);
  }
}

/** A new run must not overwrite a checkpoint, and a resumed one needs one; the errors say what to do. */
export function checkRunDir(runDir: string, resume: boolean): void {
  const checkpointFile = path.join(runDir, CHECKPOINT_FILE);
  if (resume && !existsSync(checkpointFile)) throw new Error(`--resume: no checkpoint at ${checkpointFile}; start without --resume`);
  if (!resume && existsSync(checkpointFile)) throw new Error(`${runDir} already holds a training run; continue it with --resume, or choose another --out`);
}

/** A run folder's checkpoint: where the loop starts, when a mid-epoch save is due, and the saves themselves. */
export class RunCheckpoints {
  readonly file: string;
  #lastSave = Date.now();

  constructor(
    private readonly runDir: string,
    private readonly parts: TrainingParts,
    private readonly config: unknown,
    /** A mid-epoch checkpoint is due when this many minutes passed since the last save. */
    private readonly everyMinutes: number,
  ) {
    this.file = path.join(runDir, CHECKPOINT_FILE);
  }

  /**
   * The loop's state to start from: a fresh one, or on resume the checkpoint's, restored into the parts. The folder
   * is checked first (a new run must not start over a checkpoint) unless `checkFolder` is false: the other ranks of
   * a data-parallel run start while rank 0 may already have written one.
   */
  async start(resume: boolean, checkFolder = true): Promise<LoopState> {
    if (checkFolder) checkRunDir(this.runDir, resume);
    if (resume) return (await loadCheckpoint(this.file, this.parts)).loop;
    return { epoch: 0, batch: 0, globalStep: 0, bestScore: -1, bestEpoch: -1, history: [] };
  }

  get due(): boolean {
    return Date.now() - this.#lastSave > this.everyMinutes * 60_000;
  }

  /** Writes the parts and the loop's position (the next step to run) atomically; NaN or infinite values are refused. */
  async save(loop: LoopState): Promise<void> {
    const tensors = [...this.parts.model.stateDict().values(), ...this.parts.optimizer.stateDict().tensors.values(), ...(this.parts.ema?.values() ?? [])];
    const bad = countNonFiniteElements(tensors);
    if (bad > 0)
      throw new NonFiniteModelError(
        `training diverged: ${bad} weights or optimiser values are NaN or infinite after step ${loop.globalStep}; they are not checkpointed. ${RESTART_ADVICE}`,
      );
    await saveCheckpoint(this.file, this.parts, loop, this.config);
    this.#lastSave = Date.now();
  }
}

/** NaN and infinite elements in the tensors, counted on their device and read back once. */
function countNonFiniteElements(tensors: E.Tensor[]): number {
  if (tensors.length === 0) return 0;
  return E.noGrad(() =>
    E.tidy(() =>
      E.stack(tensors.map((t) => t.isfinite().logicalNot().sum()))
        .sum()
        .item(),
    ),
  );
}
