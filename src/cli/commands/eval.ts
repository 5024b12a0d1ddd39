import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { BUNDLED_MODEL, loadClassifier } from '../../api/classifier.js';
import { modelInfo } from '../../api/model-info.js';
import { evaluateScores, evaluateShifts, imagePredictions, REPORT_FILE, scoreItems, shiftTable, writeReport } from '../../api/evaluate.js';
import { selectShifts, SHIFTS } from '../../eval/shifts.js';
import { noLabelledImages } from '../../data/dataset.js';
import { readImageFile } from '../../data/image.js';
import { CliError, prepareOutputDir, printJson } from '../output.js';
import { progressBar } from '../progress.js';
import { asFailure, failureList, imageSource } from './labelled.js';
import { classifierOptions, MAX_FILE_SIZE_HELP, modelOption, parseChoice, parseFileSize, parseBatchSize, refuseEmptyPaths } from './shared.js';

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
    refuseEmptyPaths(options, ['model', 'report', 'images', 'labels', 'split']);
    if (options.report) await prepareOutputDir(options.report, '--report');
    let shifts;
    try {
      // A shift named twice is scored once.
      const names = typeof options.shifts === 'string' ? [...new Set(options.shifts.split(',').map((s: string) => s.trim()))] : options.shifts;
      shifts = names === undefined ? [] : selectShifts(names);
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
    if (scored.labels.length === 0) throw new CliError(`none of the images could be read: ${failureList(scored.failed)}`);
    const predictions = imagePredictions(scored, classifier);
    const evaluation = evaluateScores(scored, classifier, predictions);
    let shiftResults;
    if (shifts.length) {
      // The images the figures above rest on, and no others: each shift's row is compared with them.
      const scoredFiles = new Set(scored.files);
      const shiftItems = listing.items.filter((item) => scoredFiles.has(item.file));
      const shiftBar = progressBar('shifts', shifts.length * shiftItems.length);
      const names = shifts.map((s) => s.name);
      shiftResults = await evaluateShifts(classifier, shiftItems, shifts, {
        batchSize: options.batchSize,
        maxFileBytes: options.maxFileSize,
        onProgress: (name, done) => shiftBar.update(names.indexOf(name) * shiftItems.length + done),
      });
      shiftBar.stop();
    }
    // Hidden entries are passed over on purpose, as predict does; anything else left out is a file not evaluated.
    const notEvaluated = listing.skipped.filter((s) => s.reason !== 'hidden').length + scored.failed.length;
    const skipped = [...listing.skipped.map(asFailure), ...scored.failed];
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
        image: (i) => readImageFile(paths.get(scored.files[i])!, { maxFileBytes: options.maxFileSize, maxPixels: classifier.maxPixels }),
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
