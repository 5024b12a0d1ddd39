import { readFile, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import * as E from '../../engine/index.js';
import { createModel, listModels } from '../../models/registry.js';
import { loadModel, saveModel } from '../../models/io.js';
import type { ImageClassifier } from '../../models/classifier.js';
import { DEFAULT_AUGMENT, NO_AUGMENT } from '../../data/augment.js';
import { IMAGENET_NORMALIZATION } from '../../data/batches.js';
import { checkRunDir, type TrainConfig, type TrainEvent, train } from '../../train/trainer.js';
import { finishRun } from '../../api/finish.js';
import { loadTrainingData, type TrainingDataOptions } from '../../train/data.js';
import { provenance } from '../../train/provenance.js';
import { defaultPrecision } from '../../api/classifier.js';
import { writeSplit } from '../../data/split.js';
import { CliError, printJson } from '../output.js';
import { progressBar, progressReporter, type Progress } from '../progress.js';
import { parseChoice, parseFraction, parseNumber, parsePositiveInt } from './shared.js';

/** Everything a run is configured by; a --config JSON file supplies any of it, flags override. */
export interface RunConfig extends TrainConfig {
  model: string;
  inputSize: number;
  dropPathRate: number;
  device: 'auto' | 'cpu' | 'cuda';
  workers: number;
  data: TrainingDataOptions;
  init: string | null;
}

export const DEFAULT_RUN: Omit<RunConfig, 'data'> = {
  model: 'dualpath-atto', inputSize: 128, dropPathRate: 0.1, device: 'auto', workers: 1, init: null,
  epochs: 30, batchSize: 32, lr: 1e-3, minLr: 1e-6, weightDecay: 0.05, warmupFraction: 0.05, labelSmoothing: 0.1,
  emaDecay: null, precision: 'fp32', clipGrad: 1, seed: 0, patience: 8, augment: DEFAULT_AUGMENT,
  normalization: IMAGENET_NORMALIZATION, evalBatchSize: 64, checkpointMinutes: 5,
};

function describeEvent(bar: { current?: Progress }, event: TrainEvent, epochs: number): void {
  switch (event.type) {
    case 'start':
      if (event.resumedAt) process.stderr.write(`resuming at epoch ${event.resumedAt.epoch + 1}, batch ${event.resumedAt.batch + 1}\n`);
      break;
    case 'step':
      if (event.batch === 0 || !bar.current) {
        bar.current?.stop();
        bar.current = progressBar(`epoch ${event.epoch + 1}/${epochs}`, event.batches, '{bar} {value}/{total} | ETA {eta_formatted} | {speed} img/s | loss {loss} | lr {lr}');
      }
      bar.current.update(event.batch + 1, { speed: event.imagesPerSecond.toFixed(1), loss: event.loss.toFixed(4), lr: event.lr.toExponential(2) });
      break;
    case 'epoch':
      bar.current?.stop();
      bar.current = undefined;
      process.stderr.write(`epoch ${event.epoch + 1}: train loss ${event.trainLoss.toFixed(4)} | val accuracy ${(100 * event.val.accuracy).toFixed(2)}% macro-F1 ${(100 * event.val.macro_f1).toFixed(2)}% NLL ${event.val.nll.toFixed(4)} | ${event.seconds.toFixed(0)} s${event.best ? ' | best so far' : ''}\n`);
      break;
    case 'stop':
      process.stderr.write(`early stop: ${event.reason}\n`);
      break;
    case 'checkpoint':
      break;
  }
}

export function registerTrain(program: Command): void {
  program
    .command('train')
    .description('train a model on labelled images, with checkpoints every epoch; --resume continues an interrupted run')
    .argument('[dir]', 'an ImageFolder: one folder per class')
    .option('--images <dir>', 'the images folder, with --labels')
    .option('--labels <csv>', 'a CSV of file,label (paths relative to --images)')
    .option('--pack <file>', "train from a pack made by 'hemato pack --split' (fastest; the split comes with it)")
    .option('--split <csv>', "a split from 'hemato split' (default: a seeded, stratified, duplicate-aware 85/15 split made now)")
    .option('-c, --config <json>', 'a JSON file with any of the settings below; flags override it')
    .option('-o, --out <dir>', 'the run directory', 'runs/latest')
    .option('--resume', 'continue the run in --out from its last checkpoint')
    .option('--model <name>', `the architecture (default ${DEFAULT_RUN.model}): ${listModels().join(', ')}`)
    .option('--size <px>', `input size in pixels, a multiple of 32 (default ${DEFAULT_RUN.inputSize})`, parsePositiveInt)
    .option('--epochs <n>', `epochs (default ${DEFAULT_RUN.epochs})`, parsePositiveInt)
    .option('--batch-size <n>', `images per step (default ${DEFAULT_RUN.batchSize})`, parsePositiveInt)
    .option('--lr <lr>', `peak learning rate of AdamW, after a linear warm-up and before cosine decay (default ${DEFAULT_RUN.lr})`, parseNumber)
    .option('--weight-decay <wd>', `AdamW weight decay, not on norms and biases (default ${DEFAULT_RUN.weightDecay})`, parseNumber)
    .option('--label-smoothing <eps>', `label smoothing (default ${DEFAULT_RUN.labelSmoothing})`, parseFraction)
    .option('--ema <decay>', 'keep an exponential moving average of the weights with this decay', parseFraction)
    .option('--precision <p>', 'auto (bf16 on CUDA and on CPUs with AMX), fp32 or bf16', parseChoice(['auto', 'fp32', 'bf16'] as const), 'auto')
    .option('--device <d>', 'auto (CUDA when present), cpu or cuda (default auto)', parseChoice(['auto', 'cpu', 'cuda'] as const))
    .option('--seed <n>', `seed for the split, initialisation, order and augmentation (default ${DEFAULT_RUN.seed})`, parseNumber)
    .option('--patience <epochs>', `stop after this many epochs without a better validation macro-F1 (default ${DEFAULT_RUN.patience})`, parsePositiveInt)
    .option('--workers <n>', `CPU threads that prepare batches ahead, 0 for inline (default ${DEFAULT_RUN.workers}); on CUDA batches are made on the GPU`, parseNumber)
    .option('--no-augment', 'train without augmentation')
    .option('--mpm', 'apply the Multi-scale Preprocessing Module to every image')
    .option('--init <file>', 'start from a trained hemato model (fine-tuning); the head is re-initialised if the classes differ')
    .option('--json', 'print one JSON document with the outcome on stdout')
    .action(async (dir: string | undefined, flags) => {
      const runDir = path.resolve(flags.out);
      const configFile = path.join(runDir, 'config.json');
      let config: RunConfig;
      // Checked before the data loads, which takes minutes on a large set.
      try {
        checkRunDir(runDir, Boolean(flags.resume));
      } catch (error) {
        throw new CliError((error as Error).message);
      }
      if (flags.resume) {
        config = JSON.parse(await readFile(configFile, 'utf8')) as RunConfig;
      } else {
        const fromFile = flags.config ? (JSON.parse(await readFile(flags.config, 'utf8')) as Partial<RunConfig>) : {};
        config = mergeFlags({ ...DEFAULT_RUN, ...fromFile, data: fromFile.data ?? { source: undefined as never } } as RunConfig, dir, flags);
      }
      const device = E.resolveDevice(config.device);
      if (flags.precision !== 'auto') config.precision = flags.precision;
      else if (!flags.resume) config.precision = defaultPrecision(device);
      await mkdir(runDir, { recursive: true });
      const stages = new Map<string, ReturnType<typeof progressReporter>>();
      const data = await loadTrainingData(config.data, config.inputSize, (stage, done, total) => {
        if (!stages.has(stage)) stages.set(stage, progressReporter(stage));
        stages.get(stage)!.update(done, total);
      });
      for (const reporter of stages.values()) reporter.stop();
      if (data.madeSplit) {
        config.data.split = path.join(runDir, 'split.csv');
        await writeSplit(data.madeSplit, config.data.split, JSON.stringify(config.data.source));
      }
      if (!flags.resume) await writeFile(configFile, `${JSON.stringify(config, null, 2)}\n`);
      E.manualSeed(config.seed);
      let model: ImageClassifier = createModel(config.model, { numClasses: data.set.classes.length, inputSize: config.inputSize, dropPathRate: config.dropPathRate, device });
      if (config.init && !flags.resume) model = await initialiseFrom(model, config.init, data.set.classes, device);
      const runProvenance = { ...provenance(device), split_hash: data.splitHash, precision: config.precision, model: config.model };
      await writeFile(path.join(runDir, 'provenance.json'), `${JSON.stringify(runProvenance, null, 2)}\n`);
      process.stderr.write(`training ${config.model} at ${config.inputSize} px on ${device} (${config.precision}); ${data.train.length} train / ${data.val.length} validation images; split ${data.splitHash.slice(0, 12)}\n`);

      let stopRequested = false;
      const onSignal = () => {
        if (stopRequested) process.exit(130);
        stopRequested = true;
        process.stderr.write('\nstopping after this step and writing a checkpoint (Ctrl-C again to abort at once)…\n');
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      const bar: { current?: Progress } = {};
      const info = { classes: data.set.classes, normalization: config.normalization, preprocessing: data.preprocessing };
      try {
        const outcome = await train({
          model, data: data.set, trainIndices: data.train, valIndices: data.val, runDir, config, device, resume: Boolean(flags.resume),
          workers: config.workers, shouldStop: () => stopRequested,
          onEvent: (event) => describeEvent(bar, event, config.epochs),
          onBest: async (best) => { await saveModel(path.join(runDir, 'best.safetensors'), best, { ...info, provenance: runProvenance }); },
        });
        bar.current?.stop();
        if (outcome.interrupted) {
          process.stderr.write(`interrupted; continue with: hemato train --out ${flags.out} --resume\n`);
          process.exitCode = 130;
          return;
        }
        const summary = await finishRun({ runDir, data, config, device, provenance: runProvenance });
        if (flags.json) printJson(summary);
        else process.stdout.write(`model: ${summary.model}\nvalidation accuracy ${(100 * summary.validation.accuracy).toFixed(2)}%, macro-F1 ${(100 * summary.validation.macro_f1).toFixed(2)}%, ECE ${summary.validation.ece.toFixed(4)} (T = ${summary.temperature.toFixed(3)})\nreport: ${summary.report}\n`);
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        model.dispose();
      }
    });
}

function mergeFlags(config: RunConfig, dir: string | undefined, flags: Record<string, unknown>): RunConfig {
  const set = <K extends keyof RunConfig>(key: K, value: unknown) => { if (value !== undefined) config[key] = value as RunConfig[K]; };
  set('model', flags.model);
  set('inputSize', flags.size);
  set('epochs', flags.epochs);
  set('batchSize', flags.batchSize);
  set('lr', flags.lr);
  set('weightDecay', flags.weightDecay);
  set('labelSmoothing', flags.labelSmoothing);
  set('emaDecay', flags.ema);
  set('device', flags.device);
  set('seed', flags.seed);
  set('patience', flags.patience);
  set('workers', flags.workers);
  set('init', flags.init);
  if (flags.augment === false) config.augment = NO_AUGMENT;
  if (!listModels().includes(config.model)) throw new CliError(`unknown model '${config.model}'; choose one of: ${listModels().join(', ')}`, 2);
  const source = flags.pack ? { pack: flags.pack as string } : dir ? { dir } : flags.images && flags.labels ? { csv: flags.labels as string, images: flags.images as string } : config.data.source;
  if (!source) throw new CliError('no data: give a folder of class folders, --images DIR --labels CSV, or --pack FILE', 2);
  config.data = { ...config.data, source, split: (flags.split as string | undefined) ?? config.data.split ?? null, mpm: Boolean(flags.mpm) || (config.data.mpm ?? false), seed: config.seed };
  return config;
}

/** Loads a trained hemato model's weights into a fresh model; a head with other classes is left freshly initialised. */
async function initialiseFrom(model: ImageClassifier, file: string, classes: string[], device: E.Device): Promise<ImageClassifier> {
  const { model: source, metadata } = await loadModel(file, { device });
  try {
    const sameClasses = metadata.classes.join() === classes.join();
    const state = new Map([...source.stateDict()].filter(([key]) => sameClasses || !key.startsWith('head.fc.')));
    model.loadStateDict(state, { strict: sameClasses });
    if (!sameClasses) process.stderr.write(`--init: classes differ from ${file}'s; the classifier head starts fresh\n`);
    return model;
  } finally {
    source.dispose();
  }
}
