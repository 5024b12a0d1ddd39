import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { BUNDLED_MODEL, loadClassifier } from '../../api/classifier.js';
import { modelInfo } from '../../api/model-info.js';
import { evaluateScores, evaluateShifts, imagePredictions, REPORT_FILE, scoreItems, shiftTable, writeReport } from '../../api/evaluate.js';
import { selectShifts, SHIFTS } from '../../eval/shifts.js';
import { parseCsv } from '../../data/csv.js';
import { type DatasetListing, listCsvDataset, listDataset, type ListOptions, noLabelledImages } from '../../data/dataset.js';
import { readRegularFile } from '../../data/files.js';
import { readImageFile } from '../../data/image.js';
import { type Part, readSplit } from '../../data/split.js';
import { CliError, prepareOutputDir, printJson } from '../output.js';
import { progressBar } from '../progress.js';
import { classifierOptions, datasetSource, MAX_FILE_SIZE_HELP, modelOption, parseChoice, parseFileSize, parseBatchSize, parsePositiveInt } from './shared.js';

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;
const range = ([lo, hi]: [number, number]) => `${(100 * lo).toFixed(1)}–${(100 * hi).toFixed(1)}%`;

export function registerEval(program: Command): void {
  const command = program
    .command('eval')
    .description('evaluate a model on labelled images: accuracy, balanced accuracy, macro-F1, per-class figures, ROC-AUC, κ, NLL and ECE')
    .argument('[dir]', 'an ImageFolder: one folder per class (with --split: the data folder)')
    .option('--images <dir>', 'the images folder, with --labels or --split')
    .option('--labels <csv>', 'a CSV of file,label (paths relative to --images)')
    .option('--split <csv>', "a split from 'hemato split' (file,label,part; paths relative to the folder or --images)")
    .option('--part <part>', 'the part of --split to score: train, val or test (default: val)', parseChoice(['train', 'val', 'test'] as const))
    .option('--report <dir>', 'write report.md there, with a confusion matrix, a reliability diagram and the most confident errors')
    .option(
      '--shifts [names]',
      `also score each image under simulated scanner and stain shifts (all, or a comma-separated list of: ${SHIFTS.map((s) => s.name).join(', ')})`,
    )
    .option('--batch-size <n>', 'images per forward pass', parseBatchSize, 64)
    .option('--max-file-size <size>', MAX_FILE_SIZE_HELP, parseFileSize)
    .option('--json', 'print one JSON document on stdout')
    .option('--per-image', "with --json: each image's answer too (file, label, predicted, probability, uncertain, reasons)");
  modelOption(command).action(async (dir: string | undefined, options) => {
    // Checked before the model loads and the images are scored, not after.
    if (options.perImage && !options.json) throw new CliError('--per-image needs --json', 2);
    if (options.report) await prepareOutputDir(options.report, '--report');
    let shifts;
    try {
      shifts =
        options.shifts === undefined
          ? []
          : selectShifts(
              options.shifts === true
                ? true
                : String(options.shifts)
                    .split(',')
                    .map((s) => s.trim()),
            );
    } catch (error) {
      throw new CliError((error as Error).message, 2);
    }
    const listImages = await imageSource(dir, options);
    const classifier = await loadClassifier(options.model, classifierOptions(options));
    const listing = await listImages({ classes: classifier.classes, maxFileBytes: options.maxFileSize });
    if (listing.items.length === 0) throw new CliError(noLabelledImages(listing.root, listing.skipped.length, classifier.classes));
    const bar = progressBar('evaluating', listing.items.length);
    const scored = await scoreItems(classifier, listing.items, { batchSize: options.batchSize, onProgress: (done) => bar.update(done) });
    bar.stop();
    if (scored.labels.length === 0) throw new CliError('none of the images could be read; see the skipped list with --json');
    const predictions = imagePredictions(scored, classifier);
    const evaluation = evaluateScores(scored, classifier, predictions);
    let shiftResults;
    if (shifts.length) {
      const shiftBar = progressBar('shifts', shifts.length * listing.items.length);
      const names = shifts.map((s) => s.name);
      shiftResults = await evaluateShifts(classifier, listing.items, shifts, {
        batchSize: options.batchSize,
        onProgress: (name, done) => shiftBar.update(names.indexOf(name) * listing.items.length + done),
      });
      shiftBar.stop();
    }
    // Hidden entries are passed over on purpose, as predict does; anything else left out is a file not evaluated.
    const notEvaluated = listing.skipped.filter((s) => s.reason !== 'hidden').length + scored.failed.length;
    const skipped = [...listing.skipped.map((s) => ({ path: s.path, reason: `${s.reason}: ${s.detail}` })), ...scored.failed];
    const model = await modelInfo(options.model ?? BUNDLED_MODEL);
    let reportFile;
    let reportReplaced = false;
    if (options.report) {
      reportReplaced = existsSync(path.join(options.report, REPORT_FILE));
      // The report names the data set and its files by their names under its root: nothing of this machine's paths.
      const paths = new Map(listing.items.map((item) => [item.file, item.path]));
      const dataName = path.basename(path.resolve(listing.root));
      const source = options.split
        ? `the ${options.part ?? 'val'} part of ${path.basename(options.split)}`
        : options.labels
          ? path.basename(options.labels)
          : null;
      reportFile = await writeReport(options.report, `Evaluation of ${model.name} on ${dataName}`, evaluation, {
        data: `${evaluation.n} labelled images of ${dataName}${source ? ` (${source})` : ''}${notEvaluated ? `; ${notEvaluated} files could not be evaluated` : ''}.`,
        predictions,
        image: (i) => readImageFile(paths.get(scored.files[i])!, { maxFileBytes: options.maxFileSize }),
        extra: shiftResults ? shiftTable(evaluation, shiftResults) : [],
      });
    }
    if (options.json) {
      printJson({
        data: listing.root,
        model: options.model ?? 'bundled',
        model_info: model,
        ...evaluation,
        ...(shiftResults ? { shifts: shiftResults } : {}),
        ...(options.perImage ? { per_image: predictions } : {}),
        skipped,
        report: reportFile,
        ...(reportFile ? { report_replaced: reportReplaced } : {}),
      });
    } else {
      process.stdout.write(`model ${model.name} (${model.architecture}, sha256 ${model.sha256.slice(0, 12)}…, made ${model.created})\n`);
      process.stdout.write(`images ${evaluation.n} (classes present: ${evaluation.classes_evaluated.join(', ')})\n`);
      process.stdout.write(
        `accuracy ${pct(evaluation.accuracy)} (95 % interval ${range(evaluation.accuracy_interval)})  balanced accuracy ${pct(evaluation.balanced_accuracy)} (${range(evaluation.balanced_accuracy_interval)})  macro-F1 ${pct(evaluation.macro_f1)}  κ ${evaluation.cohen_kappa.toFixed(4)}\n`,
      );
      process.stdout.write(
        `NLL ${evaluation.nll.toFixed(4)}  ECE ${evaluation.ece.toFixed(4)} (before temperature scaling ${evaluation.ece_uncalibrated.toFixed(4)})  uncertain ${pct(evaluation.uncertain_fraction)} (threshold ${evaluation.uncertainty_threshold.toFixed(3)})\n`,
      );
      for (const [name, m] of Object.entries(evaluation.per_class)) {
        process.stdout.write(
          `  ${name.padEnd(14)} precision ${pct(m.precision).padStart(7)}  recall ${pct(m.recall).padStart(7)}  F1 ${pct(m.f1).padStart(7)}  n ${m.support}\n`,
        );
      }
      if (shiftResults) for (const line of shiftTable(evaluation, shiftResults)) process.stdout.write(`${line}\n`);
      if (skipped.length) process.stdout.write(`skipped ${skipped.length} files (see --json)\n`);
      if (reportFile) process.stdout.write(`report: ${reportFile}${reportReplaced ? ' (replaced the earlier report)' : ''}\n`);
    }
    if (notEvaluated > 0) {
      process.stderr.write(`hemato: ${notEvaluated} files could not be evaluated (see skipped in --json); the figures leave them out\n`);
      process.exitCode = 1;
    }
    classifier.dispose();
  });
}

interface SourceOptions {
  images?: string;
  labels?: string;
  split?: string;
  part?: Part;
}

type Lister = (listOptions: ListOptions) => Promise<DatasetListing>;

/**
 * Where the labelled images come from: an ImageFolder, --images with --labels, or one part of a split. The flags
 * are checked here, before the model loads; the listing needs the model's classes.
 */
async function imageSource(dir: string | undefined, options: SourceOptions): Promise<Lister> {
  if (options.part && !options.split) throw new CliError('--part needs --split', 2);
  if (!options.split) {
    const source = datasetSource(dir, options);
    if (options.labels) await refuseSplitAsLabels(options.labels);
    return (listOptions) => listDataset(source, listOptions);
  }
  const split = options.split;
  if (options.labels) throw new CliError('give --labels or --split, not both', 2);
  if (dir && options.images) throw new CliError('give the data folder as the argument or as --images, not both', 2);
  const root = dir ?? options.images;
  if (!root) throw new CliError('--split needs the data folder its paths are relative to (as the argument or --images)', 2);
  return (listOptions) => listSplitPart(split, root, options.part ?? 'val', listOptions);
}

/** The rows of one part of a split, checked as any labels CSV is; the other parts' rows are not reported. */
async function listSplitPart(split: string, root: string, part: Part, listOptions: ListOptions): Promise<DatasetListing> {
  const { rows } = await readSplit(split);
  const chosen = new Set(rows.filter((r) => r.part === part).map((r) => r.file));
  if (chosen.size === 0) throw new CliError(`${split} has no ${part} part`);
  const listing = await listCsvDataset(split, root, listOptions);
  return { ...listing, items: listing.items.filter((i) => chosen.has(i.file)), skipped: listing.skipped.filter((s) => chosen.has(s.path)) };
}

/** A split given as --labels would score every part, training images included: the figures would look far too good. */
async function refuseSplitAsLabels(labels: string): Promise<void> {
  const text = await readRegularFile(labels).then(
    (bytes) => bytes.toString('utf8'),
    () => undefined,
  );
  if (text === undefined) return; // listing the data set says why it cannot be read
  const header = (parseCsv(text.split(/\r?\n/, 1)[0])[0] ?? []).map((name) => name.trim().toLowerCase());
  if (header.includes('part')) {
    throw new CliError(
      `--labels ${labels} is a split (it has a part column), and its training images would be scored too: give it as --split ${labels} --part val (or test, or train)`,
      2,
    );
  }
}
