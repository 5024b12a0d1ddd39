// Training checkpoints: model weights, optimizer state, EMA weights and the loop's position in one
// safetensors file, written atomically (write, then rename) so an interruption never leaves half a file, nor a
// temporary: one from a write that was killed outright is removed at the next load or save.
import { removeStaleTemporaries, writeFileAtomic } from '../data/files.js';
import * as E from '../engine/index.js';
import type { Module } from '../nn/index.js';

export interface LoopState {
  /** The epoch and the batch within it that the next step will run. */
  epoch: number;
  batch: number;
  globalStep: number;
  bestScore: number;
  bestEpoch: number;
  history: Record<string, unknown>[];
}

export async function saveCheckpoint(
  file: string,
  parts: { model: Module; optimizer: E.AdamW; ema?: Map<string, E.Tensor> },
  loop: LoopState,
  config: unknown,
): Promise<void> {
  const tensors = new Map<string, E.Tensor>();
  for (const [key, t] of parts.model.stateDict()) tensors.set(`model.${key}`, t);
  const optimizerState = parts.optimizer.stateDict();
  for (const [key, t] of optimizerState.tensors) tensors.set(`optimizer.${key}`, t);
  for (const [key, t] of parts.ema ?? []) tensors.set(`ema.${key}`, t);
  await writeFileAtomic(file, [
    E.serializeSafetensors(tensors, {
      format: 'hemato-checkpoint',
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

/** Restores a checkpoint into the given model, optimizer and EMA; their tensors keep their identities. */
export async function loadCheckpoint(file: string, parts: { model: Module; optimizer: E.AdamW; ema?: Map<string, E.Tensor> }): Promise<LoadedCheckpoint> {
  await removeStaleTemporaries(file);
  const { tensors, metadata } = await E.loadSafetensors(file);
  try {
    if (metadata.format !== 'hemato-checkpoint') throw new Error(`${file} is not a hemato training checkpoint`);
    const section = (prefix: string) => new Map([...tensors].filter(([k]) => k.startsWith(prefix)).map(([k, t]) => [k.slice(prefix.length), t]));
    parts.model.loadStateDict(section('model.'));
    parts.optimizer.loadStateDict({ tensors: section('optimizer.'), json: JSON.parse(metadata.optimizer) });
    if (parts.ema)
      E.noGrad(() => {
        for (const [key, t] of section('ema.')) parts.ema!.get(key)?.copy_(t);
      });
    return { loop: JSON.parse(metadata.loop) as LoopState, config: JSON.parse(metadata.config) };
  } finally {
    E.dispose(tensors);
  }
}
