// One training run, from settings to a calibrated model: checked settings, a locked run folder that never
// overwrites earlier results unasked, the data (skipped files reported, identity recorded and checked on --resume),
// the training loop, and the final calibration and report. Everything that can be checked before the data is read
// (the settings, the device, the files to start or distil from, the state of the run folder) is checked first, by
// checkTrainingRequest. In a data-parallel run every rank runs this; rank 0 alone holds the lock and writes to the
// run folder, and calibrates the model once the ranks have parted.
import { existsSync, lstatSync, realpathSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import * as E from '../engine/index.js';
import { finishRun, type RunSummary } from './finish.js';
import type { SkippedFile } from '../data/dataset.js';
import { listFirst, readFailure, readRegularFile } from '../data/files.js';
import { writeFileAtomic } from '../engine/atomic-write.js';
import { nonFiniteWeights } from '../eval/finite.js';
import { backgroundColours, type InputRecipe } from '../data/prepare.js';
import { writeSplit } from '../data/split.js';
import type { ImageClassifier } from '../models/classifier.js';
import { isHematoModelFile, loadModel, readModelMetadata, saveModel } from '../models/io.js';
import { createModel, importPretrained, type PretrainedWeights, resolveModelName } from '../models/index.js';
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
import {
  checkPackSource,
  type DataManifest,
  dataManifest,
  type LoadProgress,
  loadTrainingData,
  manifestChanges,
  trainingClasses,
  type TrainingData,
  type TrainingDataOptions,
} from './data.js';
import { TEACHER_FILE, teacherTargets } from './distill.js';
import { lockRunDir } from './lock.js';
import { provenance } from './provenance.js';
import { CHECKPOINT_FILE, readCheckpointHeader, unusableCheckpoint } from './checkpoint.js';
import { checkRunLog, LOG_FILE, type TrainEvent, train } from './trainer.js';
import type { DataParallel } from './data-parallel.js';

export const CONFIG_FILE = 'config.json';
export const DATA_FILE = 'data.json';
export const SKIPPED_FILE = 'skipped.json';
const BEST_FILE = 'best.safetensors';
const MODEL_FILE = 'model.safetensors';

/** Files that hold a run's results. */
const RESULTS = [CHECKPOINT_FILE, BEST_FILE, MODEL_FILE, LOG_FILE];
/** Written where the run makes its split; a split given to it may be these files of its folder. */
const SPLIT_FILES = ['split.csv', 'split.json'];
/**
 * Everything a run writes: a new run refuses to start over any of them unless told to overwrite, and then removes
 * them first, so that nothing of the old run is left to mix in.
 */
const OUTPUTS = [
  ...RESULTS,
  CONFIG_FILE,
  DATA_FILE,
  SKIPPED_FILE,
  'provenance.json',
  ...SPLIT_FILES,
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
  /** The settings checkTrainingRequest() returned for this request, where the caller has checked it already. */
  checked?: RunConfig;
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

/** Writes one of the run's JSON files whole, renamed over its name: a link there is replaced, never written through. */
async function writeJson(file: string, value: unknown, indent?: number): Promise<void> {
  await writeFileAtomic(file, [Buffer.from(`${JSON.stringify(value, null, indent)}\n`)]);
}

/** The device the settings ask for; asking for CUDA where there is none is a usage error. */
function deviceOf(settings: Pick<RunSettings, 'device'>): E.Device {
  try {
    return E.resolveDevice(settings.device);
  } catch (error) {
    throw new RunConfigError(`${(error as Error).message}; train on the CPU with --device cpu`);
  }
}

function fixPrecision(settings: RunSettings): RunConfig {
  return {
    ...settings,
    precision:
      settings.precision === 'auto'
        ? E.precisionFor({ device: deviceOf(settings), family: E.modelFamily(settings.model), purpose: 'training' }).precision
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
  return (await resolveRequest(request)).config;
}

/** The settings a request runs with, and the layers they were given in (which tell a setting given from a default). */
async function resolveRequest(request: TrainingRequest): Promise<{ config: RunConfig; layers: ConfigLayer[] }> {
  const layers: ConfigLayer[] = [];
  if (request.configFile) layers.push({ source: request.configFile, settings: await readJson(request.configFile, 'the settings file') });
  if (request.overrides) layers.push({ source: 'the command line', settings: request.overrides });
  if (!request.resume) return { config: fixPrecision(resolveRunSettings(layers)), layers };
  const runDir = path.resolve(request.runDir);
  const checkpoint = path.join(runDir, CHECKPOINT_FILE);
  if (!existsSync(checkpoint)) throw new RunConfigError(`--resume: no checkpoint at ${checkpoint}, so no run to continue; start without --resume`);
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
  return { config: after, layers };
}

/**
 * Checks everything about a request that needs no data, before anything is written: the settings, the device, the
 * files to start or distil from (their kind, architecture and weights, and a teacher's classes), a pack's header, and
 * the run folder (a new run must not replace an earlier run's files unasked, nor its own inputs; a resumed one needs
 * an unfinished run, and a log it can append to). `root` is false for the processes of a data-parallel run that do
 * not write to the folder. Returns the settings, with what a pack fixed in place of what it replaces.
 */
export async function checkTrainingRequest(request: TrainingRequest, root = !request.parallel || request.parallel.isRoot): Promise<RunConfig> {
  const runDir = path.resolve(request.runDir);
  const { config, layers } = await resolveRequest(request);
  deviceOf(config);
  const { pack } = config.data.source as { pack?: string };
  let packClasses: string[] | undefined;
  if (request.resume) await checkResume(runDir, config);
  else {
    refuseInputsAmongOutputs(request.runDir, config);
    if (root) refuseEarlierResults(runDir, config, request);
    await checkStartingPoints(config);
    if (pack) {
      const header = await asUsageError(checkPackSource(pack, config.inputSize, { ...config.data, seed: config.seed }));
      refusePackFixed(pack, header.geometry.field, layers);
      // The run records what the pack used: its field, and no validation share (the pack's split chose the images).
      config.data.field = header.geometry.field;
      delete config.data.valFraction;
      packClasses = header.classes;
    }
  }
  const teachers = config.distill?.teachers ?? [];
  if (teachers.length > 0) {
    // Known without reading an image: a pack's header names its classes, and a folder or a labels CSV is read
    // against hemato's classes.
    const classes = {
      names: packClasses ?? (await asUsageError(trainingClasses(config.data.source))),
      of: pack ? `the classes of the pack ${pack}` : "hemato's classes, which a data folder or labels CSV is read against",
    };
    for (const teacher of teachers)
      await checkModelFile(teacher, '--teacher', { otherwise: 'distil from models trained by hemato train', instead: 'use another teacher' }, { classes });
  }
  return config;
}

/** A problem with the files a request names, found before anything is written, is a usage error. */
function asUsageError<T>(promise: Promise<T>): Promise<T> {
  return promise.catch((error: Error) => {
    throw new RunConfigError(error.message);
  });
}

/**
 * A pack fixed its field and split when it was made: a field or validation share given for the run would be recorded
 * but not applied. A field equal to the pack's (as a pack run's config.json records it) is no conflict.
 */
function refusePackFixed(pack: string, field: number | null, layers: readonly ConfigLayer[]): void {
  // The last layer to give a data setting is the one it came from (the layers passed the schema already).
  const given = (key: 'field' | 'valFraction') => {
    for (const { source, settings } of [...layers].reverse()) {
      const data = (settings as RunConfigInput).data;
      if (data && Object.hasOwn(data, key)) return { source, value: data[key] };
    }
    return undefined;
  };
  const valFraction = given('valFraction');
  if (valFraction)
    throw new RunConfigError(
      `${valFraction.source} sets data.valFraction, but ${pack} is a pack, and its split was fixed when it was made (hemato pack --split); leave data.valFraction out (for another validation share, make a split with hemato split --val and pack again with --split)`,
    );
  const asked = given('field');
  const flag = (value: unknown) => `--field ${value ?? 'none'}`;
  if (asked && asked.value !== field)
    throw new RunConfigError(
      `${asked.source} sets data.field ${JSON.stringify(asked.value)}, but ${pack} was packed with ${flag(field)}, and its images were cut then; leave data.field out, or make the pack again with ${flag(asked.value)}`,
    );
}

/** Whether anything is at a path, a link included (even one whose target is gone). */
function present(file: string): boolean {
  try {
    lstatSync(file);
    return true;
  } catch {
    return false;
  }
}

/** A path with its folder's links resolved, so that two ways to one name in one folder compare equal. */
function location(file: string): string {
  const absolute = path.resolve(file);
  try {
    return path.join(realpathSync(path.dirname(absolute)), path.basename(absolute));
  } catch {
    return absolute;
  }
}

/** The split files a new run reads: a split given to it, with the record beside it (hemato split writes both). */
function splitInputs(config: RunConfig): Set<string> {
  const split = config.data.split;
  return new Set(split ? [location(split), location(`${split.replace(/\.csv$/i, '')}.json`)] : []);
}

/** The names a run writes in its folder; the split's only where it makes the split. */
const writtenBy = (config: RunConfig): string[] => OUTPUTS.filter((name) => !(config.data.split && SPLIT_FILES.includes(name)));

/**
 * A file a new run reads must not be one it replaces in --out: --overwrite would delete it before it is read, and a
 * model it starts or distils from would no longer be what the run records.
 */
function refuseInputsAmongOutputs(runDir: string, config: RunConfig): void {
  if (!existsSync(runDir)) return;
  const folder = realpathSync(path.resolve(runDir));
  const { csv, pack } = config.data.source as { csv?: string; pack?: string };
  const inputs: [string, string | null | undefined][] = [
    ['--init', config.init],
    ...pretrainedFiles(config.pretrained).map((file): [string, string] => ['--pretrained', file]),
    ...(config.distill?.teachers ?? []).map((file): [string, string] => ['--teacher', file]),
    ['--labels', csv],
    ['--pack', pack],
  ];
  const written = writtenBy(config);
  for (const [flag, file] of inputs) {
    if (!file) continue;
    const at = location(file);
    if (path.dirname(at) === folder && written.includes(path.basename(at)))
      throw new RunConfigError(
        `${flag} ${file} is in --out ${runDir}, where this run writes its own ${path.basename(at)}: copy it out of ${runDir} first, or choose another --out`,
      );
  }
}

/**
 * A new run must not start over an earlier run's files (or any file it would write) unless asked to; throws if it
 * would. Returns the files found (which --overwrite replaces); a split the run reads from the folder is not one.
 */
export function refuseEarlierResults(runDir: string, config: RunConfig, request: Pick<TrainingRequest, 'resume' | 'overwrite'>): string[] {
  if (request.resume) return [];
  const inputs = splitInputs(config);
  const found = OUTPUTS.filter((name) => present(path.join(runDir, name)) && !inputs.has(location(path.join(runDir, name))));
  if (found.length > 0 && !request.overwrite) {
    const results = found.filter((name) => RESULTS.includes(name));
    const finished = found.includes(MODEL_FILE);
    const what = finished
      ? "a finished run's model"
      : found.includes(CHECKPOINT_FILE)
        ? 'an unfinished run'
        : results.length > 0
          ? "an earlier run's results"
          : 'files this run writes';
    const others = found.length - results.length;
    const listed = results.length === 0 ? found.join(', ') : `${results.join(', ')}${others > 0 ? ` and ${others} other file${others === 1 ? '' : 's'}` : ''}`;
    const resume = !finished && found.includes(CHECKPOINT_FILE) ? 'continue it with --resume, ' : '';
    const split = results.length === 0 && found.includes('split.csv') ? `train on its split with --split ${path.join(runDir, 'split.csv')}, ` : '';
    throw new Error(
      `${runDir} holds ${what} (${listed}); ${resume}${split}choose another --out, or pass --overwrite to replace ${found.length === 1 ? 'it' : 'them'}`,
    );
  }
  return found;
}

/** A new run must not start over an earlier run's results, unless asked to, and then nothing of them is left. */
async function prepareRunDir(runDir: string, config: RunConfig, request: TrainingRequest): Promise<void> {
  const found = refuseEarlierResults(runDir, config, request);
  // rm removes a link itself, never what it points to.
  await Promise.all(found.map((name) => rm(path.join(runDir, name), { force: true })));
}

/**
 * On --resume: the checkpoint's header must be readable and of the run's architecture, the run unfinished, and its
 * log a file of its own (said now, not after the data is read). Returns whether its training is complete while its
 * calibration is not (it stopped before its model was written).
 */
async function checkResume(runDir: string, config: RunConfig): Promise<boolean> {
  await checkRunLog(runDir);
  const file = path.join(runDir, CHECKPOINT_FILE);
  const { loop, config: saved } = await readCheckpointHeader(file);
  const architecture = (saved as { model?: unknown } | null)?.model;
  if (typeof architecture === 'string' && architecture !== config.model)
    throw unusableCheckpoint(file, `${file} is a checkpoint of a ${architecture} run, and ${path.join(runDir, CONFIG_FILE)} trains ${config.model}`);
  const stoppedEarly = config.patience !== null && loop.epoch - 1 - loop.bestEpoch >= config.patience;
  const complete = loop.batch === 0 && (loop.epoch >= config.epochs || stoppedEarly);
  const model = path.join(runDir, MODEL_FILE);
  if (complete && present(model)) {
    const epochs = (n: number) => `${n} epoch${n === 1 ? '' : 's'}`;
    const how =
      loop.epoch >= config.epochs ? `trained its ${epochs(config.epochs)}` : `stopped early after ${epochs(loop.epoch)} without a better validation macro-F1`;
    throw new Error(
      `--resume: the run in ${runDir} is finished (it ${how}, and its model is ${model}); there is nothing to resume. ` +
        `To train it further, start a new run from its model: --init ${model} with another --out (and --epochs for how long)`,
    );
  }
  return complete;
}

async function reportSkipped(runDir: string, skipped: SkippedFile[], note: (message: string) => void): Promise<void> {
  const file = path.join(runDir, SKIPPED_FILE);
  if (skipped.length === 0) return rm(file, { force: true });
  await writeJson(file, skipped, 2);
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
  await writeJson(file, now);
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

/**
 * A trained model to start or distil from: a model saved by hemato (else `otherwise` says what to do), that loads,
 * with finite weights (else `instead`): training from NaN weights could only diverge.
 */
async function checkModelFile(
  file: string,
  flag: string,
  advice: { otherwise: string; instead: string },
  expect: { architecture?: string; classes?: { names: readonly string[]; of: string } } = {},
): Promise<void> {
  if (!(await isHematoModel(file, flag)))
    throw new RunConfigError(`${flag} takes a model saved by hemato, and ${file} has no hemato metadata; ${advice.otherwise}`);
  const named = <T>(read: Promise<T>) =>
    read.catch((error: Error) => {
      throw new RunConfigError(`${flag}: ${error.message}`);
    });
  const metadata = await named(readModelMetadata(file));
  const its = resolveModelName(metadata.architecture);
  // Said before the weights are loaded into the wrong network, where it would be a list of every tensor's shape.
  if (expect.architecture !== undefined && its !== expect.architecture)
    throw new RunConfigError(`${flag} ${file} is a ${its} model; this run trains ${expect.architecture}: pass --arch ${its}, or another ${flag}`);
  const { classes } = expect;
  if (classes && metadata.classes.join() !== classes.names.join())
    throw new RunConfigError(
      `${flag} ${file} has the classes ${metadata.classes.join(', ')}, and this run trains on ${classes.names.join(', ')} (${classes.of}); ` +
        `its labels must be for the run's classes, in their order: use a model trained on these classes, or leave ${flag} ${file} out`,
    );
  const { model } = await named(loadModel(file));
  try {
    const bad = nonFiniteWeights(model);
    if (bad.length > 0) throw new RunConfigError(`${flag} ${file} has NaN or infinite weights (${listFirst(bad)}); the file is damaged: ${advice.instead}`);
  } finally {
    model.dispose();
  }
}

const pretrainedFiles = (weights: PretrainedWeights | null): string[] =>
  weights === null ? [] : typeof weights === 'string' ? [weights] : Object.values(weights).filter((f) => f !== undefined);

/** --init takes a model saved by hemato and --pretrained timm checkpoints; the wrong kind of file names the other flag. */
async function checkStartingPoints(config: RunConfig): Promise<void> {
  if (config.init && config.pretrained) throw new RunConfigError('--init and --pretrained are two starting points: give one of them');
  if (config.init)
    await checkModelFile(
      config.init,
      '--init',
      { otherwise: 'start from a timm checkpoint with --pretrained', instead: 'start from another model' },
      { architecture: config.model },
    );
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
  const config = request.checked ?? (await checkTrainingRequest(request));
  // Read again (its header alone): a run whose training is complete is only calibrated.
  const complete = request.resume ? await checkResume(runDir, config) : false;
  const { parallel } = request;
  if (parallel) {
    checkGlobalBatch(config.batchSize, parallel.worldSize);
    if (!parallel.isRoot) return await trainLocked(runDir, config, request, complete, note);
  }
  await mkdir(runDir, { recursive: true });
  const lock = await lockRunDir(runDir, note);
  try {
    await prepareRunDir(runDir, config, request);
    return await trainLocked(runDir, config, request, complete, note);
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
async function trainLocked(
  runDir: string,
  config: RunConfig,
  request: TrainingRequest,
  complete: boolean,
  note: (message: string) => void,
): Promise<TrainingOutcome> {
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
  if (root && !resume) await writeJson(path.join(runDir, CONFIG_FILE), config, 2);
  return trainModel(runDir, config, request, data, complete, note);
}

/** Creates the model and trains it; rank 0 (or the only process) then calibrates it and writes the report. */
async function trainModel(
  runDir: string,
  config: RunConfig,
  request: TrainingRequest,
  data: TrainingData,
  complete: boolean,
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
      await writeJson(path.join(runDir, 'provenance.json'), runProvenance, 2);
      const processes = worldSize > 1 ? ` in ${worldSize} processes (${config.batchSize / worldSize} images each per step)` : '';
      note(
        complete
          ? `the run's training had ended, but its model was not yet calibrated: calibrating its best model`
          : `training ${config.model} at ${config.inputSize} px on ${device} (${config.precision})${processes}; ${data.train.length} train / ${data.val.length} validation images; split ${data.splitHash.slice(0, 12)}`,
      );
      if (!complete && config.precision === 'bf16' && E.bf16Emulated(device)) note(`warning: ${E.EMULATED_BF16_WARNING}`);
    }
    const distillation = async () =>
      config.distill && {
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
    const outcome = complete
      ? { interrupted: false }
      : await train({
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
          distillation: (await distillation()) || undefined,
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
