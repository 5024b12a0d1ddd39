import path from 'node:path';
import type { Command } from 'commander';
import { loadClassifier } from '../../api/classifier.js';
import { scoreItems } from '../../api/evaluate.js';
import { listDataset } from '../../data/dataset.js';
import { readSplit } from '../../data/split.js';
import { saveModel } from '../../models/io.js';
import { chooseUncertaintyThreshold, fitTemperature, nllAt, softmaxRows } from '../../train/calibration.js';
import { expectedCalibrationError } from '../../train/metrics.js';
import { CliError, printJson } from '../output.js';
import { progressBar } from '../progress.js';
import { classifierOptions, datasetSource, modelOption, parseChoice, parseFraction, parsePositiveInt } from './shared.js';

export function registerCalibrate(program: Command): void {
  const command = program
    .command('calibrate')
    .description('fit temperature scaling and the uncertainty threshold on labelled validation images, and store both in the model')
    .argument('[dir]', 'an ImageFolder of validation images (one folder per class)')
    .option('--images <dir>', 'the images folder, with --labels or --split')
    .option('--labels <csv>', 'a CSV of file,label (paths relative to --images)')
    .option('--split <csv>', "a split from 'hemato split': its validation part is used (paths relative to the folder or --images)")
    .option('-o, --out <file>', 'where to write the calibrated model (default: next to the model, *.calibrated.safetensors)')
    .option('--target-accuracy <p>', 'the accuracy that predictions above the uncertainty threshold must reach on this data', parseFraction, 0.995)
    .option('--dtype <dtype>', "how the weights are stored: float32, float16 (half the size, for bundled models) or bfloat16 (default: as in --model)", parseChoice(['float32', 'float16', 'bfloat16'] as const))
    .option('--batch-size <n>', 'images per forward pass', parsePositiveInt, 64)
    .option('--json', 'print one JSON document on stdout');
  modelOption(command).action(async (dir: string | undefined, options) => {
    if (!options.model) throw new CliError('--model is required: the model file to calibrate', 2);
    const classifier = await loadClassifier(options.model, classifierOptions(options));
    let items;
    if (options.split) {
      const root = dir ?? options.images;
      if (!root) throw new CliError('--split needs the data folder (as the argument or --images)', 2);
      const { rows } = await readSplit(options.split);
      items = rows.filter((r) => r.part === 'val').map((r) => ({ file: r.file, path: path.join(root, r.file), label: r.label }));
      if (items.length === 0) throw new CliError(`${options.split} has no validation part`);
    } else {
      items = (await listDataset(datasetSource(dir, options), { classes: classifier.classes })).items;
    }
    const bar = progressBar('scoring', items.length);
    const scored = await scoreItems(classifier, items, { batchSize: options.batchSize, onProgress: (done) => bar.update(done) });
    bar.stop();
    const n = scored.labels.length;
    const k = classifier.classes.length;
    if (n < 20) throw new CliError(`only ${n} images could be scored; calibration needs a real validation set (hundreds of images)`);
    const temperature = fitTemperature(scored.logits, scored.labels, k);
    const calibrated = softmaxRows(scored.logits, n, k, temperature);
    const threshold = chooseUncertaintyThreshold(calibrated, scored.labels, k, options.targetAccuracy);
    const out = options.out ?? options.model.replace(/(\.safetensors)?$/, '.calibrated.safetensors');
    await saveModel(out, classifier.model, { ...classifier.metadata, temperature, uncertaintyThreshold: threshold }, { dtype: options.dtype ?? classifier.metadata.dtype });
    const summary = {
      model: out, n, temperature, uncertainty_threshold: threshold,
      nll_before: nllAt(scored.logits, scored.labels, k, 1), nll_after: nllAt(scored.logits, scored.labels, k, temperature),
      ece_before: expectedCalibrationError(softmaxRows(scored.logits, n, k, 1), scored.labels, n, k), ece_after: expectedCalibrationError(calibrated, scored.labels, n, k),
      failed: scored.failed,
    };
    if (options.json) printJson(summary);
    else process.stdout.write(`${out}: T = ${temperature.toFixed(3)}, NLL ${summary.nll_before.toFixed(4)} → ${summary.nll_after.toFixed(4)}, ECE ${summary.ece_before.toFixed(4)} → ${summary.ece_after.toFixed(4)}, uncertainty threshold ${threshold.toFixed(3)} (on ${n} images)\n`);
    classifier.dispose();
  });
}
