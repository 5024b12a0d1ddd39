// One training run, from settings to a calibrated model: checked settings, a locked run folder that never
// overwrites earlier results unasked, the data (skipped files reported, identity recorded and checked on --resume),
// the training loop, and the final calibration and report. In a data-parallel run every rank runs this; rank 0
// alone holds the lock and writes to the run folder, and calibrates the model once the ranks have parted.
import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import * as E from '../engine/index.js';
import { finishRun, type RunSummary } from './finish.js';
import type { SkippedFile } from '../data/dataset.js';
import { readFailure, readRegularFile } from '../data/files.js';
import { backgroundColours, type InputRecipe } from '../data/prepare.js';
import { writeSplit } from '../data/split.js';
import type { ImageClassifier } from '../models/classifier.js';
import { isHematoModelFile, loadModel, readModelMetadata, saveModel } from '../models/io.js';
import { createModel, importPretrained, type PretrainedWeights } from '../models/index.js';
import {
  type ConfigLayer,
  type RunConfig,
  type RunConfigInput,
  RunConfigError,
  type RunSettings,
  describeChange,
  resolveRunSettings,
  settingsChanges,
} from './config.js';
import { type DataManifest, dataManifest, type LoadProgress, loadTrainingData, manifestChanges, type TrainingData, type TrainingDataOptions } from './data.js';
import { TEACHER_FILE, teacherTargets } from './distill.js';
import { lockRunDir } from './lock.js';
import { provenance } from './provenance.js';
import { CHECKPOINT_FILE, checkRunDir } from './checkpoint.js';
import { LOG_FILE, type TrainEvent, train } from './trainer.js';
import type { DataParallel } from './data-parallel.js';

export const CONFIG_FILE = 'config.json';
export const DATA_FILE = 'data.json';
export const SKIPPED_FILE = 'skipped.json';
const BEST_FILE = 'best.safetensors';
const MODEL_FILE = 'model.safetensors';

/** Files that hold a run's results: a new run refuses to start over any of them unless told to overwrite. */
const RESULTS = [CHECKPOINT_FILE, BEST_FILE, MODEL_FILE, LOG_FILE];
/** Everything a run writes, removed before an overwriting run so that nothing of the old run is left to mix in. */
const OUTPUTS = [
  ...RESULTS,
  CONFIG_FILE,
  DATA_FILE,
  SKIPPED_FILE,
  'provenance.json',
  'split.csv',
  'split.json',
  TEACHER_FILE,
  'curves.svg',
  'report.md',
  'confusion.svg',
  'reliability.svg',
  'errors.svg',
];
/** Settings that may differ on --resume: they change how fast, not what is computed. */
const FREE_ON_RESUME = new Set(['workers']);
/** How many skipped files are named on stderr; the run folder lists them all. */
const SKIPPED_SHOWN = 5;

export interface TrainingRequest {
  /** The run folder (--out). */
  runDir: string;
  /** A JSON file of settings (--config). */
  configFile?: string;
  /** Settings given explicitly on the command line: they win over the file, and the file over the defaults. */
  overrides?: RunConfigInput;
  /** Continue the run in runDir from its checkpoint, with its settings and its data. */
  resume?: boolean;
  /** Replace the results of an earlier run in runDir. */
  overwrite?: boolean;
  /** With resume: continue although the data differ from the run's (the differences are noted). */
  allowChangedData?: boolean;
  onEvent?: (event: TrainEvent) => void;
  onLoadProgress?: LoadProgress;
  /** Returns true to stop after the current step, with a checkpoint. */
  shouldStop?: () => boolean;
  /** Messages for the user (stderr by default). */
  note?: (message: string) => void;
  /**
   * Train as one rank of a data-parallel group; the group is destroyed once training ends. The batch size is the
   * global batch and must divide evenly by the world size. Ranks other than 0 write nothing and get no summary.
   */
  parallel?: DataParallel;
}

export type TrainingOutcome =
  | { config: RunConfig; interrupted: true }
  /** summary is null on the ranks of a data-parallel run other than 0. */
  | { config: RunConfig; interrupted: false; summary: RunSummary | null };

async function readJson(file: string, what: string): Promise<unknown> {
  try {
    return JSON.parse((await readRegularFile(file)).toString('utf8'));
  } catch (error) {
    throw new RunConfigError(`cannot read ${what} ${file}: ${readFailure(error)}`);
  }
}

function fixPrecision(settings: RunSettings): RunConfig {
  return {
    ...settings,
    precision:
      settings.precision === 'auto'
        ? E.precisionFor({ device: E.resolveDevice(settings.device), family: E.modelFamily(settings.model), purpose: 'training' }).precision
        : settings.precision,
  };
}

/** A run's recorded settings; config.json files written before the split's seed was the run's carry it twice. */
async function storedLayer(runDir: string): Promise<ConfigLayer> {
  const file = path.join(runDir, CONFIG_FILE);
  const settings = await readJson(file, "the run's settings");
  const data = (settings as { data?: Record<string, unknown> }).data;
  if (data && data.seed === (settings as { seed?: unknown }).seed) delete data.seed;
  return { source: file, settings };
}

/**
 * The settings a request runs with. On resume they are the run's own; any requested setting that differs from them
 * is an error that lists the differences, since a resumed run must compute what the interrupted one would have.
 */
export async function resolveTrainingConfig(request: TrainingRequest): Promise<RunConfig> {
  const layers: ConfigLayer[] = [];
  if (request.configFile) layers.push({ source: request.configFile, settings: await readJson(request.configFile, 'the settings file') });
  if (request.overrides) layers.push({ source: 'the command line', settings: request.overrides });
  if (!request.resume) return fixPrecision(resolveRunSettings(layers));
  const runDir = path.resolve(request.runDir);
  checkRunDir(runDir, true);
  const stored = await storedLayer(runDir);
  const before = fixPrecision(resolveRunSettings([stored]));
  const after = fixPrecision(resolveRunSettings([stored, ...layers]));
  const changes = settingsChanges(before, after).filter((change) => !FREE_ON_RESUME.has(change.key));
  if (changes.length > 0) {
    throw new RunConfigError(
      `--resume continues a run with its own settings, and these differ from ${stored.source}:\n  ${changes.map(describeChange).join('\n  ')}\n` +
        'Leave them out to resume, or start a new run (another --out, or --overwrite).',
    );
  }
  return after;
}

/**
 * A new run must not start over an earlier run's results unless asked to; throws if it would. Returns the results
 * found (which --overwrite replaces).
 */
export function refuseEarlierResults(runDir: string, request: Pick<TrainingRequest, 'resume' | 'overwrite'>): string[] {
  if (request.resume) return [];
  const found = RESULTS.filter((file) => existsSync(path.join(runDir, file)));
  if (found.length > 0 && !request.overwrite) {
    const finished = found.includes(MODEL_FILE);
    const what = finished ? "a finished run's model" : found.includes(CHECKPOINT_FILE) ? 'an unfinished run' : "an earlier run's results";
    const resume = !finished && found.includes(CHECKPOINT_FILE) ? 'continue it with --resume, ' : '';
    throw new Error(`${runDir} holds ${what} (${found.join(', ')}); ${resume}choose another --out, or pass --overwrite to replace it`);
  }
  return found;
}

/** A new run must not start over an earlier run's results, unless asked to, and then nothing of them is left. */
async function prepareRunDir(runDir: string, config: RunConfig, request: TrainingRequest): Promise<void> {
  if (refuseEarlierResults(runDir, request).length === 0) return;
  // A split the new run reads from this folder is its input, not an old output.
  const input = config.data.split && path.resolve(config.data.split);
  await Promise.all(
    OUTPUTS.map((file) => path.join(runDir, file))
      .filter((file) => file !== input)
      .map((file) => rm(file, { force: true })),
  );
}

async function reportSkipped(runDir: string, skipped: SkippedFile[], note: (message: string) => void): Promise<void> {
  const file = path.join(runDir, SKIPPED_FILE);
  if (skipped.length === 0) return rm(file, { force: true });
  await writeFile(file, `${JSON.stringify(skipped, null, 2)}\n`);
  const shown = skipped.slice(0, SKIPPED_SHOWN).map((s) => `  ${s.path}: ${s.detail}`);
  if (skipped.length > SKIPPED_SHOWN) shown.push(`  … and ${skipped.length - SKIPPED_SHOWN} more`);
  note(`skipped ${skipped.length} file${skipped.length === 1 ? '' : 's'} that cannot be used:\n${shown.join('\n')}\nthe full list is in ${file}`);
}

/** Records what the run trains on; on resume, refuses other data unless allowed, and then says what changed. */
async function checkData(runDir: string, data: TrainingData, request: TrainingRequest, note: (message: string) => void): Promise<void> {
  const file = path.join(runDir, DATA_FILE);
  const now = dataManifest(data);
  if (request.resume) {
    if (!existsSync(file)) {
      note(`${file} is missing (a run from an older hemato): the data cannot be checked against the run's`);
    } else {
      const before = (await readJson(file, "the run's data record")) as DataManifest;
      if (before.hash === now.hash) return;
      const changes = manifestChanges(before, now).join('\n  ');
      if (!request.allowChangedData)
        throw new Error(
          `--resume: the training data differ from the run's (${file}):\n  ${changes}\nResume with the run's data, or pass --allow-changed-data to continue on these`,
        );
      note(`--allow-changed-data: continuing on training data that differ from the run's:\n  ${changes}`);
    }
  }
  await writeFile(file, `${JSON.stringify(now)}\n`);
}

/** The scale, background and stain range a model file was trained at, where it records them. */
async function referenceOf(file: string): Promise<TrainingDataOptions['reference'] | null> {
  const recipe = (await readModelMetadata(file)).preprocessing as Partial<InputRecipe> | null;
  return recipe?.scale ? { scale: recipe.scale, background: backgroundColours(recipe.background), stain: recipe.stain ?? null } : null;
}

/** Whether a file is a hemato model (or else a timm checkpoint), with the flag that named it in any error. */
async function isHematoModel(file: string, flag: string): Promise<boolean> {
  try {
    return await isHematoModelFile(file);
  } catch (error) {
    // The reader's message names the file and says why it cannot be read.
    throw new RunConfigError(`${flag}: ${(error as Error).message}`);
  }
}

const pretrainedFiles = (weights: PretrainedWeights | null): string[] =>
  weights === null ? [] : typeof weights === 'string' ? [weights] : Object.values(weights).filter((f) => f !== undefined);

/** --init takes a model saved by hemato and --pretrained timm checkpoints; the wrong kind of file names the other flag. */
async function checkStartingPoints(config: RunConfig): Promise<void> {
  if (config.init && config.pretrained) throw new RunConfigError('--init and --pretrained are two starting points: give one of them');
  if (config.init && !(await isHematoModel(config.init, '--init')))
    throw new RunConfigError(`--init takes a model saved by hemato, and ${config.init} has no hemato metadata; start from a timm checkpoint with --pretrained`);
  for (const file of pretrainedFiles(config.pretrained))
    if (await isHematoModel(file, '--pretrained'))
      throw new RunConfigError(`--pretrained takes a timm checkpoint, and ${file} is a model saved by hemato; start from it with --init`);
}

/** Loads a trained hemato model's weights into a fresh model; a head with other classes is left freshly initialised. */
async function initialiseFrom(model: ImageClassifier, file: string, classes: string[], device: E.Device, note: (message: string) => void): Promise<void> {
  const { model: source, metadata } = await loadModel(file, { device });
  try {
    const sameClasses = metadata.classes.join() === classes.join();
    if (!sameClasses) source.resetClassifier(classes.length);
    model.loadStateDict(source.stateDict());
    if (!sameClasses) note(`--init: classes differ from ${file}'s; the classifier head starts fresh`);
  } finally {
    source.dispose();
  }
}

/** Trains (or resumes) a run in request.runDir, then calibrates the best model and writes the report. */
export async function runTraining(request: TrainingRequest): Promise<TrainingOutcome> {
  const note = request.note ?? ((message: string) => process.stderr.write(`${message}\n`));
  const runDir = path.resolve(request.runDir);
  const config = await resolveTrainingConfig(request);
  if (!request.resume) await checkStartingPoints(config);
  const { parallel } = request;
  if (parallel) {
    checkGlobalBatch(config.batchSize, parallel.worldSize);
    if (!parallel.isRoot) return await trainLocked(runDir, config, request, note);
  }
  await mkdir(runDir, { recursive: true });
  const lock = await lockRunDir(runDir, note);
  try {
    await prepareRunDir(runDir, config, request);
    return await trainLocked(runDir, config, request, note);
  } finally {
    await lock.release();
  }
}

/** A data-parallel run splits each global batch evenly across its processes. */
export function checkGlobalBatch(batchSize: number, worldSize: number): void {
  if (batchSize % worldSize !== 0)
    throw new RunConfigError(
      `the batch size ${batchSize} is the global batch, split evenly across the ${worldSize} processes; choose a multiple of ${worldSize}`,
    );
}

/** Trains with the run folder locked (by rank 0, in a data-parallel run; the other ranks only read it). */
async function trainLocked(runDir: string, config: RunConfig, request: TrainingRequest, note: (message: string) => void): Promise<TrainingOutcome> {
  const resume = Boolean(request.resume);
  const { parallel } = request;
  const root = !parallel || parallel.isRoot;
  // A fine-tuned model keeps its starting point's scale and colour, so the weights see cells as they learned them
  // (without a field, the largest centred square, images are taken at the file's scale and none applies).
  const reference = config.init && config.data.normalizeScale !== false && config.data.field !== null ? await referenceOf(config.init) : null;
  if (reference && root)
    note(
      `--init: images are brought to ${config.init}'s red-cell scale (${reference.scale.rbcDiameter.toFixed(1)} px)${reference.background ? ', background' : ''}${reference.stain ? ', stain range' : ''}`,
    );
  const data = await loadTrainingData({ ...config.data, seed: config.seed, ...(reference ? { reference } : {}) }, config.inputSize, request.onLoadProgress);
  if (root) {
    await reportSkipped(runDir, data.skipped, note);
    await checkData(runDir, data, request, note);
  }
  if (data.madeSplit) {
    config.data.split = path.join(runDir, 'split.csv');
    if (root) await writeSplit(data.madeSplit, config.data.split, JSON.stringify(config.data.source));
  }
  if (root && !resume) await writeFile(path.join(runDir, CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
  return trainModel(runDir, config, request, data, note);
}

/** Creates the model and trains it; rank 0 (or the only process) then calibrates it and writes the report. */
async function trainModel(
  runDir: string,
  config: RunConfig,
  request: TrainingRequest,
  data: TrainingData,
  note: (message: string) => void,
): Promise<TrainingOutcome> {
  const resume = Boolean(request.resume);
  const device = E.resolveDevice(config.device);
  const { parallel } = request;
  const root = !parallel || parallel.isRoot;
  if (parallel) {
    await parallel.checkSame('settings', JSON.stringify(config));
    await parallel.checkSame('training data', dataManifest(data).hash);
  }
  E.manualSeed(config.seed);
  const model = createModel(config.model, { numClasses: data.set.classes.length, inputSize: config.inputSize, dropPathRate: config.dropPathRate, device });
  try {
    if (config.init && !resume) await initialiseFrom(model, config.init, data.set.classes, device, root ? note : () => {});
    if (config.pretrained && !resume)
      for (const { file, path: into, report } of await importPretrained(model, config.pretrained))
        if (root)
          note(
            `--pretrained: ${report.loaded.length} tensors from ${file}${into ? ` into the ${into} path` : ''}${report.headReinitialized ? '; the classifier head starts fresh' : ''}`,
          );
    const worldSize = parallel?.worldSize ?? 1;
    const runProvenance = { ...provenance(device), split_hash: data.splitHash, precision: config.precision, model: config.model, world_size: worldSize };
    if (root) {
      await writeFile(path.join(runDir, 'provenance.json'), `${JSON.stringify(runProvenance, null, 2)}\n`);
      const processes = worldSize > 1 ? ` in ${worldSize} processes (${config.batchSize / worldSize} images each per step)` : '';
      note(
        `training ${config.model} at ${config.inputSize} px on ${device} (${config.precision})${processes}; ${data.train.length} train / ${data.val.length} validation images; split ${data.splitHash.slice(0, 12)}`,
      );
    }
    const distillation = config.distill && {
      ...config.distill,
      targets: await teacherTargets(runDir, config.distill, data.set, data.train, {
        normalization: config.normalization,
        device,
        precision: config.precision,
        batchSize: config.evalBatchSize,
        write: root,
        note: root ? note : () => {},
        onProgress: (done, total) => request.onLoadProgress?.('teachers', done, total),
      }),
    };
    const info = { classes: data.set.classes, normalization: config.normalization, preprocessing: data.preprocessing };
    const outcome = await train({
      model,
      data: data.set,
      trainIndices: data.train,
      valIndices: data.val,
      runDir,
      config,
      device,
      resume,
      workers: config.workers,
      shouldStop: request.shouldStop,
      onEvent: request.onEvent,
      onBest: async (best) => {
        await saveModel(path.join(runDir, BEST_FILE), best, { ...info, provenance: runProvenance });
      },
      parallel,
      distillation: distillation || undefined,
    });
    // The ranks part as soon as training ends; calibration is rank 0's alone. A rank that failed does not wait for
    // the others: its process ends, and with it its connections, which fails the others' next collective at once.
    await parallel?.destroy();
    if (outcome.interrupted) return { config, interrupted: true };
    if (!root) return { config, interrupted: false, summary: null };
    return { config, interrupted: false, summary: await finishRun({ runDir, data, config, device, provenance: runProvenance }) };
  } finally {
    model.dispose();
  }
}
