// A tiny training problem shared by the trainer's tests: 24 bright or dark 32 px images, a four-stage ConvNeXt of
// a few thousand weights, and settings that exercise every part of the loop (EMA, clipping, augmentation).
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import * as E from '../src/engine/index.js';
import { ConvNeXt } from '../src/models/convnext.js';
import { DEFAULT_AUGMENT } from '../src/data/augment.js';
import { IMAGENET_NORMALIZATION, type ImageSet } from '../src/data/batches.js';
import type { RunConfigInput } from '../src/train/config.js';
import { train, type TrainConfig, type TrainRun } from '../src/train/trainer.js';

export function tinySet(): ImageSet {
  // Two classes a tiny network can tell apart: bright and dark images, with noise.
  const n = 24;
  const size = 32;
  const images = new Uint8Array(n * size * size * 3);
  let seed = 7;
  const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % 2;
    for (let p = 0; p < size * size * 3; p++) images[i * size * size * 3 + p] = Math.min(255, (labels[i] ? 140 : 60) + random() * 100);
  }
  return { images, size, labels, classes: ['dark', 'bright'] };
}

export const config: TrainConfig = {
  epochs: 3,
  batchSize: 6,
  lr: 2e-3,
  minLr: 0,
  weightDecay: 0.05,
  warmupFraction: 0.2,
  labelSmoothing: 0.1,
  emaDecay: 0.9,
  precision: 'fp32',
  clipGrad: 1,
  seed: 11,
  patience: null,
  augment: { ...DEFAULT_AUGMENT, crop: { scale: [0.6, 1], ratio: [0.75, 1.33] }, saturation: 0.1, hue: 0.02 },
  normalization: IMAGENET_NORMALIZATION,
  evalBatchSize: 8,
  checkpointMinutes: 60,
};

/** runTraining's settings for a quick run of a real architecture on a small image folder. */
export const TINY_RUN: RunConfigInput = {
  model: 'convnext_atto',
  inputSize: 32,
  epochs: 1,
  batchSize: 4,
  evalBatchSize: 8,
  workers: 0,
  device: 'cpu',
  precision: 'fp32',
  data: { field: null },
};

export const TINY_CONVNEXT = { depths: [1, 1, 1, 1], dims: [8, 16, 24, 32], convMlp: true, numClasses: 2, dropPathRate: 0.1, inputSize: 32 };

export function tinyModel(): ConvNeXt {
  E.manualSeed(1);
  return new ConvNeXt(TINY_CONVNEXT);
}

/** A fresh run of the tiny problem on the CPU: images 0–17 train, 18–23 validate. */
export function tinyRun(model: ConvNeXt, overrides: Partial<TrainRun> = {}): TrainRun {
  return {
    model,
    data: tinySet(),
    trainIndices: Int32Array.from({ length: 18 }, (_, i) => i),
    valIndices: Int32Array.from({ length: 6 }, (_, i) => 18 + i),
    runDir: mkdtempSync(path.join(tmpdir(), 'hemato-train-')),
    config,
    device: 'cpu',
    resume: false,
    ...overrides,
  };
}

/**
 * Trains the tiny problem (images 0–17 train, 18–23 validate) in a fresh folder with these settings; with
 * interruptAfterSteps, stops after that many steps and resumes from the checkpoint with fresh weights, as a new
 * process would. Returns the final weights by name.
 */
export async function trainTiny(settings: TrainConfig, interruptAfterSteps?: number): Promise<Map<string, number[]>> {
  const data = tinySet();
  const runDir = mkdtempSync(path.join(tmpdir(), 'hemato-train-'));
  const trainIndices = Int32Array.from({ length: 18 }, (_, i) => i);
  const valIndices = Int32Array.from({ length: 6 }, (_, i) => 18 + i);
  const run = { data, trainIndices, valIndices, runDir, config: settings, device: 'cpu' as const };
  let model = tinyModel();
  if (interruptAfterSteps !== undefined) {
    let steps = 0;
    const first = await train({ ...run, model, resume: false, shouldStop: () => ++steps >= interruptAfterSteps });
    if (!first.interrupted) throw new Error(`the run ended before step ${interruptAfterSteps}`);
    model.dispose();
    model = tinyModel();
  }
  await train({ ...run, model, resume: interruptAfterSteps !== undefined });
  const weights = new Map(model.namedParameters().map(([k, p]) => [k, p.toArray() as number[]]));
  model.dispose();
  return weights;
}

/** Writes 8 noisy 40 px PNGs per class into folder/<class>/ (the noise keeps them from being duplicates). */
export async function writeNoisyImageFolder(folder: string, classes: readonly string[], seed: number): Promise<string> {
  const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  for (const [c, label] of classes.entries()) {
    mkdirSync(path.join(folder, label), { recursive: true });
    for (let i = 0; i < 8; i++) {
      const pixels = Buffer.from(Array.from({ length: 40 * 40 * 3 }, () => Math.floor((c ? 150 : 50) + random() * 100)));
      await sharp(pixels, { raw: { width: 40, height: 40, channels: 3 } })
        .png()
        .toFile(path.join(folder, label, `${label}_${i}.png`));
    }
  }
  return folder;
}
