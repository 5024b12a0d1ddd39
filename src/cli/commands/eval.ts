import path from 'node:path';
import type { Command } from 'commander';
import { loadClassifier } from '../../api/classifier.js';
import { evaluateScores, evaluateShifts, scoreItems, shiftTable, writeReport } from '../../api/evaluate.js';
import { selectShifts, SHIFTS } from '../../eval/shifts.js';
import { listDataset } from '../../data/dataset.js';
import { CliError, prepareOutputDir, printJson } from '../output.js';
import { progressBar } from '../progress.js';
import { classifierOptions, datasetSource, MAX_FILE_SIZE_HELP, modelOption, parseFileSize, parsePositiveInt } from './shared.js';

const pct = (x: number) => `${(100 * x).toFixed(2)}%`;

export function registerEval(program: Command): void {
  const command = program
    .command('eval')
    .description('evaluate a model on labelled images: accuracy, balanced accuracy, macro-F1, per-class figures, ROC-AUC, κ, NLL and ECE')
    .argument('[dir]', 'an ImageFolder: one folder per class')
    .option('--images <dir>', 'the images folder, with --labels')
    .option('--labels <csv>', 'a CSV of file,label (paths relative to --images)')
    .option('--report <dir>', 'write report.md with a confusion matrix and a reliability diagram there')
    .option('--shifts [names]', `also score each image under simulated scanner and stain shifts (all, or a comma-separated list of: ${SHIFTS.map((s) => s.name).join(', ')})`)
    .option('--batch-size <n>', 'images per forward pass', parsePositiveInt, 64)
    .option('--max-file-size <size>', MAX_FILE_SIZE_HELP, parseFileSize)
    .option('--json', 'print one JSON document on stdout');
  modelOption(command).action(async (dir: string | undefined, options) => {
    // Checked before the model loads and the images are scored, not after.
    if (options.report) await prepareOutputDir(options.report, '--report');
    let shifts;
    try {
      shifts = options.shifts === undefined ? [] : selectShifts(options.shifts === true ? true : String(options.shifts).split(',').map((s) => s.trim()));
    } catch (error) {
      throw new CliError((error as Error).message, 2);
    }
    const classifier = await loadClassifier(options.model, classifierOptions(options));
    const listing = await listDataset(datasetSource(dir, options), { classes: classifier.classes, maxFileBytes: options.maxFileSize });
    if (listing.items.length === 0) throw new CliError(`no labelled images found in ${listing.root} (skipped ${listing.skipped.length}); labels must be among: ${classifier.classes.join(', ')}`);
    const bar = progressBar('evaluating', listing.items.length);
    const scored = await scoreItems(classifier, listing.items, { batchSize: options.batchSize, onProgress: (done) => bar.update(done) });
    bar.stop();
    if (scored.labels.length === 0) throw new CliError('none of the images could be read; see the skipped list with --json');
    const evaluation = evaluateScores(scored, classifier);
    let shiftResults;
    if (shifts.length) {
      const shiftBar = progressBar('shifts', shifts.length * listing.items.length);
      const names = shifts.map((s) => s.name);
      shiftResults = await evaluateShifts(classifier, listing.items, shifts, { batchSize: options.batchSize, onProgress: (name, done) => shiftBar.update(names.indexOf(name) * listing.items.length + done) });
      shiftBar.stop();
    }
    const skipped = [...listing.skipped.map((s) => ({ path: s.path, reason: `${s.reason}: ${s.detail}` })), ...scored.failed];
    const reportFile = options.report ? await writeReport(options.report, `Evaluation of ${path.basename(options.model ?? 'the bundled model')} on ${listing.root}`, evaluation, shiftResults ? shiftTable(evaluation, shiftResults) : []) : undefined;
    if (options.json) {
      printJson({ data: listing.root, model: options.model ?? 'bundled', ...evaluation, ...(shiftResults ? { shifts: shiftResults } : {}), skipped, report: reportFile });
    } else {
      process.stdout.write(`images ${evaluation.n} (classes present: ${evaluation.classes_evaluated.join(', ')})\n`);
      process.stdout.write(`accuracy ${pct(evaluation.accuracy)}  balanced accuracy ${pct(evaluation.balanced_accuracy)}  macro-F1 ${pct(evaluation.macro_f1)}  κ ${evaluation.cohen_kappa.toFixed(4)}\n`);
      process.stdout.write(`NLL ${evaluation.nll.toFixed(4)}  ECE ${evaluation.ece.toFixed(4)} (before temperature scaling ${evaluation.ece_uncalibrated.toFixed(4)})  uncertain ${pct(evaluation.uncertain_fraction)}\n`);
      for (const [name, m] of Object.entries(evaluation.per_class)) {
        process.stdout.write(`  ${name.padEnd(14)} precision ${pct(m.precision).padStart(7)}  recall ${pct(m.recall).padStart(7)}  F1 ${pct(m.f1).padStart(7)}  n ${m.support}\n`);
      }
      if (shiftResults) for (const line of shiftTable(evaluation, shiftResults)) process.stdout.write(`${line}\n`);
      if (skipped.length) process.stdout.write(`skipped ${skipped.length} files (see --json)\n`);
      if (reportFile) process.stdout.write(`report: ${reportFile}\n`);
    }
    classifier.dispose();
  });
}
