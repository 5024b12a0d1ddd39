import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import * as E from '../../engine/index.js';
import { listModels, modelAliases, type PretrainedWeights } from '../../models/index.js';
import { NO_AUGMENT } from '../../data/augment.js';
import type { DatasetSource } from '../../data/dataset.js';
import { DEFAULT_DISTILL, DEFAULT_RUN, RunConfigError, type RunConfigInput } from '../../train/config.js';
import { checkGlobalBatch, checkTrainingRequest, resolveTrainingConfig, runTraining, type TrainingRequest } from '../../train/run.js';
import { joinGroup } from '../../train/data-parallel.js';
import { CHECKPOINT_FILE } from '../../train/checkpoint.js';
import type { RunSummary } from '../../train/finish.js';
import { CliError, prepareOutputDir, printJson } from '../output.js';
import { launchPlan, launchWorkers, placeFromEnvironment, type RankPlace, withoutLaunchFlags } from '../launch.js';
import { progressReporter } from '../progress.js';
import { trainingProgress } from '../train-progress.js';
import { parseChoice, parseFraction, parseNonNegativeInt, parseNumber, parsePort, parsePositiveInt, parseThreadCount } from './shared.js';
import { DEFAULT_MASTER_PORT } from '../launch.js';

/** Flags that set one run setting each, by commander's option name. */
const FLAG_SETTINGS: Record<string, keyof RunConfigInput> = {
  arch: 'arch',
  model: 'model',
  size: 'inputSize',
  epochs: 'epochs',
  batchSize: 'batchSize',
  lr: 'lr',
  weightDecay: 'weightDecay',
  labelSmoothing: 'labelSmoothing',
  ema: 'emaDecay',
  dropPath: 'dropPathRate',
  precision: 'precision',
  device: 'device',
  seed: 'seed',
  patience: 'patience',
  workers: 'workers',
  init: 'init',
};

function dataSource(dir: string | undefined, flags: Record<string, unknown>): DatasetSource | { pack: string } | undefined {
  if (Boolean(flags.images) !== Boolean(flags.labels)) throw new CliError('--images and --labels go together', 2);
  const given = [
    dir && { dir },
    typeof flags.images === 'string' && { csv: flags.labels as string, images: flags.images },
    typeof flags.pack === 'string' && { pack: flags.pack },
  ].filter(Boolean);
  if (given.length > 1) throw new CliError('give one data source: a folder of class folders, --images DIR --labels CSV, or --pack FILE', 2);
  return given[0] || undefined;
}

/** --pretrained FILE, or --pretrained convnext=FILE and/or --pretrained swin=FILE. */
function pretrainedWeights(values: string[]): PretrainedWeights {
  const byPath = values.map((value) => /^(convnext|swin)=(.+)$/.exec(value));
  if (byPath.every((m) => m === null)) {
    if (values.length > 1) throw new CliError('--pretrained takes one file, or one per path: --pretrained convnext=FILE --pretrained swin=FILE', 2);
    return values[0];
  }
  if (byPath.some((m) => m === null)) throw new CliError('--pretrained: give one file alone, or name the path of each (convnext=FILE, swin=FILE)', 2);
  const weights: Record<string, string> = {};
  for (const [, path, file] of byPath as RegExpExecArray[]) {
    if (weights[path]) throw new CliError(`--pretrained: the ${path} path is given twice`, 2);
    weights[path] = file;
  }
  return weights;
}

/** The settings given explicitly on the command line; a flag's default never overrides a config file. */
function explicitSettings(command: Command, dir: string | undefined, flags: Record<string, unknown>): RunConfigInput {
  const explicit = (name: string) => command.getOptionValueSource(name) === 'cli';
  const settings: Record<string, unknown> = {};
  for (const [flag, key] of Object.entries(FLAG_SETTINGS)) if (explicit(flag)) settings[key] = flags[flag];
  const augment: Record<string, unknown> = explicit('augment') ? { ...NO_AUGMENT } : {};
  if (explicit('mixup')) augment.mixup = flags.mixup;
  if (explicit('cutmix')) augment.cutmix = flags.cutmix;
  if (Object.keys(augment).length > 0) settings.augment = augment;
  if (explicit('pretrained')) settings.pretrained = pretrainedWeights(flags.pretrained as string[]);
  const distill: Record<string, unknown> = {};
  if (explicit('teacher')) Object.assign(distill, { weight: DEFAULT_DISTILL.weight, temperature: DEFAULT_DISTILL.temperature, teachers: flags.teacher });
  if (explicit('distillWeight')) distill.weight = flags.distillWeight;
  if (explicit('distillTemperature')) distill.temperature = flags.distillTemperature;
  if (Object.keys(distill).length > 0) settings.distill = distill;
  const data: Record<string, unknown> = {};
  const source = dataSource(dir, flags);
  if (source) data.source = source;
  if (explicit('split')) data.split = flags.split;
  if (explicit('mpm')) data.mpm = flags.mpm;
  if (explicit('scale')) data.normalizeScale = flags.scale;
  if (Object.keys(data).length > 0) settings.data = data;
  return settings as RunConfigInput;
}

/** Settings errors are usage errors (exit 2). */
async function usage<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    throw error instanceof RunConfigError ? new CliError(error.message, 2) : error;
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
    .option('-c, --config <json>', 'a JSON file with any of the run settings (config.json of a run shows them all); flags given here override it')
    .option('-o, --out <dir>', 'the run directory', 'runs/latest')
    .option('--resume', 'continue the run in --out from its last checkpoint, with its settings and data')
    .option('--allow-changed-data', "with --resume: continue although the data differ from the run's (the differences are printed)")
    .option('--overwrite', 'replace an earlier run in --out (its model, checkpoint and logs are deleted)')
    .option('--print-config', 'print the settings the run would use, as JSON, and exit')
    .option(
      '--arch <name>',
      `the architecture (default ${DEFAULT_RUN.model}): ${listModels().join(', ')}; earlier names still work: ${Object.keys(modelAliases()).join(', ')}`,
    )
    .option('--model <name>', 'another name for --arch, kept for existing scripts (elsewhere --model is a model file, so prefer --arch)')
    .option('--size <px>', `input size in pixels, a multiple of 32 (default ${DEFAULT_RUN.inputSize})`, parsePositiveInt)
    .option('--epochs <n>', `epochs (default ${DEFAULT_RUN.epochs})`, parsePositiveInt)
    .option(
      '--batch-size <n>',
      `images per step, over all processes of a distributed run (each takes an equal share, so a multiple of their number) (default ${DEFAULT_RUN.batchSize})`,
      parsePositiveInt,
    )
    .option(
      '--lr <lr>',
      `peak learning rate of AdamW for the global batch, after a linear warm-up and before cosine decay; not rescaled with the number of processes (default ${DEFAULT_RUN.lr})`,
      parseNumber,
    )
    .option('--weight-decay <wd>', `AdamW weight decay, not on norms and biases (default ${DEFAULT_RUN.weightDecay})`, parseNumber)
    .option('--label-smoothing <eps>', `label smoothing (default ${DEFAULT_RUN.labelSmoothing})`, parseFraction)
    .option(
      '--drop-path <rate>',
      `stochastic depth: the chance a residual block is skipped, rising to this rate at the last block (default ${DEFAULT_RUN.dropPathRate})`,
      parseFraction,
    )
    .option('--ema <decay>', 'keep an exponential moving average of the weights with this decay', parseFraction)
    .option(
      '--precision <p>',
      "auto (the engine's training entry for the device, CPU and model; hemato doctor shows it), fp32 or bf16",
      parseChoice(['auto', 'fp32', 'bf16'] as const),
      'auto',
    )
    .option('--device <d>', 'auto (CUDA when present), cpu or cuda (default auto)', parseChoice(['auto', 'cpu', 'cuda'] as const))
    .option('--seed <n>', `seed for the split, initialisation, order and augmentation (default ${DEFAULT_RUN.seed})`, parseNumber)
    .option('--patience <epochs>', `stop after this many epochs without a better validation macro-F1 (default ${DEFAULT_RUN.patience})`, parsePositiveInt)
    .option(
      '--workers <n>',
      `CPU threads that prepare batches ahead, 0 for inline (default ${DEFAULT_RUN.workers}); on CUDA batches are made on the GPU; at most 4 × the cores`,
      parseThreadCount('--workers', 0),
    )
    .option('--no-augment', 'train without augmentation')
    .option(
      '--mixup <alpha>',
      'blend each batch with itself reversed by a factor drawn from Beta(alpha, alpha), both labels weighted alike (timm uses 0.8; default off)',
      parseNumber,
    )
    .option(
      '--cutmix <alpha>',
      'paste a box of the reversed batch into each batch, its area drawn from Beta(alpha, alpha) (timm uses 1.0; default off); with --mixup, each batch uses one of the two',
      parseNumber,
    )
    .option('--mpm', 'apply the Multi-scale Preprocessing Module to every image')
    .option('--no-mpm', "leave the MPM off although --config switches it on (the paper's recipe does)")
    .option('--no-scale', "take the files' pixels as they are, instead of bringing every image to the training data's red-cell scale and background colour")
    .option('--init <file>', 'start from a trained hemato model (fine-tuning); the head is re-initialised if the classes differ')
    .option(
      '--pretrained <file>',
      'start from a timm checkpoint (.safetensors) of the same architecture; for the dual-path network give one per path: --pretrained convnext=FILE --pretrained swin=FILE',
      (value: string, previous: string[] = []) => [...previous, value],
    )
    .option(
      '--teacher <model>',
      "distil from a trained hemato model's soft labels (averaged over its 8 flips and rotations, computed once and kept in --out); repeat it for an ensemble",
      (value: string, previous: string[] = []) => [...previous, value],
    )
    .option('--distill-weight <w>', `the soft labels' share of the loss (default ${DEFAULT_DISTILL.weight})`, parseFraction)
    .option('--distill-temperature <t>', `the softmax temperature of distillation (default ${DEFAULT_DISTILL.temperature})`, parseNumber)
    .option('--json', 'print one JSON document with the outcome on stdout')
    .option(
      '--nproc-per-node <n>',
      'data-parallel training: start this many processes on this machine, at most 4 × the cores (see docs/distributed.md)',
      parseThreadCount('--nproc-per-node'),
    )
    .option('--nnodes <n>', 'machines taking part, each started with the same flags and its own --node-rank (default 1)', parsePositiveInt)
    .option('--node-rank <r>', "this machine's place among --nnodes, from 0; the processes of machine 0 hold ranks 0…", parseNonNegativeInt)
    .option('--master-addr <host>', 'the address of machine 0 as the others reach it (default 127.0.0.1 on one machine)')
    .option(
      '--master-port <port>',
      `the port where machine 0 meets the others (default: a free one on one machine, ${DEFAULT_MASTER_PORT} across machines)`,
      parsePort(1),
    )
    .option(
      '--dist-timeout <seconds>',
      'how long a process of a distributed run waits for the others (meeting, each exchange, validation) before it gives up',
      parsePositiveInt,
      DEFAULT_DIST_TIMEOUT_S,
    )
    .addHelpText(
      'after',
      '\nDistributed training: --nproc-per-node N starts N processes here (add --nnodes, --node-rank, --master-addr and\n' +
        '--master-port to span machines, as torchrun does), or a scheduler starts each process with RANK, WORLD_SIZE,\n' +
        'LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. --batch-size is the global batch and --lr applies to it unchanged.\n' +
        'Rank 0 alone writes to --out; --resume continues such a run. On a quiet 2-core machine one process is faster.',
    )
    .action(async (dir: string | undefined, flags, command: Command) => {
      const request: TrainingRequest = {
        runDir: flags.out,
        configFile: flags.config,
        overrides: explicitSettings(command, dir, flags),
        resume: Boolean(flags.resume),
        overwrite: Boolean(flags.overwrite),
        allowChangedData: Boolean(flags.allowChangedData),
      };
      if (flags.allowChangedData && !flags.resume) throw new CliError('--allow-changed-data goes with --resume', 2);
      if (flags.overwrite && flags.resume) throw new CliError('--resume continues the run in --out and --overwrite replaces it: give one of them', 2);
      if (flags.printConfig) {
        printJson(await usage(resolveTrainingConfig(request)));
        return;
      }
      const plan = launchPlan(flags);
      const place = placeFromEnvironment();
      if (plan) {
        const info = E.distributed.distributedInfo();
        if (!info.available) throw new CliError(`${new E.distributed.DistributedUnavailableError(info.reason!, info.fixes!).message}`);
      }
      // Everything that needs no data is checked before the run folder is made, so that a mistake leaves nothing
      // behind; with --nproc-per-node, before any worker starts.
      const writes = plan ? plan.nodeRank === 0 : !place || place.rank === 0;
      const checked = await usage(checkTrainingRequest(request, writes));
      if (plan) await usage(Promise.resolve().then(() => checkGlobalBatch(checked.batchSize, plan.nprocPerNode * plan.nnodes)));
      // Checked here: a recursive mkdir under /proc never returns.
      if (!place || place.rank === 0) await prepareOutputDir(flags.out, '--out');
      const timeoutMs = flags.distTimeout * 1000;
      if (plan) {
        const note = (message: string) => process.stderr.write(`hemato: ${message}\n`);
        // Workers that outlive the others by this much are stuck beyond their own time-outs.
        process.exitCode = await launchWorkers(plan, withoutLaunchFlags(process.argv.slice(2)), timeoutMs + 30_000, note);
        return;
      }
      if (place) return trainRank({ ...request, checked }, flags, place, timeoutMs);
      let stopRequested = false;
      // Until the loop starts, a stop has no step to finish and nothing to save: reading the data can take minutes.
      let started = false;
      const onSignal = () => {
        if (!started) {
          process.stderr.write('\ninterrupted before training began; nothing was trained. Run the same command to start again.\n');
          process.exit(130);
        }
        if (stopRequested) process.exit(130);
        stopRequested = true;
        process.stderr.write('\nstopping after this step and writing a checkpoint (Ctrl-C again to abort at once)…\n');
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      const progress = trainingProgress();
      const stages = new Map<string, ReturnType<typeof progressReporter>>();
      try {
        const outcome = await usage(
          runTraining({
            ...request,
            checked,
            shouldStop: () => stopRequested,
            onEvent: (event) => {
              if (event.type === 'start') started = true;
              progress.onEvent(event);
            },
            onLoadProgress: (stage, done, total) => {
              if (!stages.has(stage)) stages.set(stage, progressReporter(stage));
              stages.get(stage)!.update(done, total);
              if (done === total) stages.get(stage)!.stop();
            },
          }),
        );
        if (outcome.interrupted) {
          process.stderr.write(`interrupted; continue with: hemato train --out ${flags.out} --resume\n`);
          process.exitCode = 130;
          return;
        }
        printSummary(outcome.summary!, Boolean(flags.json));
      } finally {
        progress.stop();
        for (const reporter of stages.values()) reporter.stop();
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });
}

/** PyTorch's default time-out for a distributed run, in seconds. */
const DEFAULT_DIST_TIMEOUT_S = 300;

/** How to continue a distributed run: the same command with --resume, started as this one was. */
function resumeAdvice(out: string, place: RankPlace): string {
  const local = Number(process.env.LOCAL_WORLD_SIZE);
  const how =
    local === place.worldSize ? ` --nproc-per-node ${local}` : `, started as this run was (--nproc-per-node/--nnodes, or RANK and WORLD_SIZE from a scheduler)`;
  return `continue with: hemato train --out ${out} --resume${how}`;
}

/**
 * One rank of a data-parallel run: joins the others, trains its share, and exits. Rank 0 shows progress and the
 * outcome; a rank that fails ends its process at once, so that the others' next exchange fails too.
 */
async function trainRank(request: TrainingRequest, flags: Record<string, unknown>, place: RankPlace, timeoutMs: number): Promise<void> {
  const out = flags.out as string;
  const root = place.rank === 0;
  const say = (message: string) => process.stderr.write(root ? `${message}\n` : `[rank ${place.rank}] ${message}\n`);
  const advice = () => {
    const checkpoint = path.join(out, CHECKPOINT_FILE);
    const kept = existsSync(checkpoint)
      ? `The last checkpoint, ${checkpoint}, is intact; ${resumeAdvice(out, place)}`
      : `No checkpoint was written yet; start the run again with --overwrite.`;
    return kept;
  };
  let stopRequested = false;
  const onSignal = () => {
    if (stopRequested) process.exit(130);
    stopRequested = true;
    if (root) process.stderr.write('\nstopping all processes after this step and writing a checkpoint (Ctrl-C again to abort at once)…\n');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const progress = root ? trainingProgress() : undefined;
  let code = 0;
  try {
    const parallel = await joinGroup({ ...place, timeoutMs }, advice);
    const outcome = await usage(
      runTraining({
        ...request,
        parallel,
        shouldStop: () => stopRequested,
        onEvent: progress?.onEvent,
        note: root ? undefined : () => {},
      }),
    );
    if (outcome.interrupted) {
      if (root) process.stderr.write(`interrupted; ${resumeAdvice(out, place)}\n`);
      code = 130;
    } else if (outcome.summary) {
      printSummary(outcome.summary, Boolean(flags.json));
    }
  } catch (error) {
    progress?.stop();
    const message = error instanceof Error ? error.message : String(error);
    say(`hemato: ${message}`);
    code = error instanceof CliError ? error.exitCode : 1;
  } finally {
    progress?.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  // After a failure the process exits now: its connections must close, so that the other ranks fail at once.
  if (code !== 0 && code !== 130) process.exit(code);
  process.exitCode = code;
}

function printSummary(summary: RunSummary, json: boolean): void {
  if (json) printJson(summary);
  else
    process.stdout.write(
      `model: ${summary.model}\nvalidation accuracy ${(100 * summary.validation.accuracy).toFixed(2)}%, macro-F1 ${(100 * summary.validation.macro_f1).toFixed(2)}%, ECE ${summary.validation.ece.toFixed(4)} (T = ${summary.temperature.toFixed(3)})\nreport: ${summary.report}\n`,
    );
}
