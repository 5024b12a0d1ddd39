import path from 'node:path';
import type { Command } from 'commander';
import { BUNDLED_MODEL, loadClassifier } from '../../api/classifier.js';
import { DEFAULT_OOD_FLAGGED, evenSample, FEATURE_SCALE_SAMPLE, fitDetector, fitScaleFromFeatures } from '../../api/detector.js';
import { evaluateScores, scoreItems } from '../../api/evaluate.js';
import { validationRecord } from '../../eval/evaluation.js';
import { noLabelledImages } from '../../data/dataset.js';
import { listFirst } from '../../data/files.js';
import { saveModel } from '../../models/io.js';
import { calibrate } from '../../eval/calibration.js';
import { assertFiniteWeights } from '../../eval/finite.js';
import { CliError, prepareOutputFile, printJson, refuseOutputOverInput } from '../output.js';
import { asFailure, failureList, imageSource, listSplitPart } from './labelled.js';
import { progressBar } from '../progress.js';
import { classifierOptions, modelOption, notForCommand, parseBatchSize, parseChoice, parseFraction, parsePositiveInt, refuseEmptyPaths } from './shared.js';

export function registerCalibrate(program: Command): void {
  const command = program
    .command('calibrate')
    .description(
      'fit temperature scaling and the uncertainty threshold on labelled validation images, and store both in the model (with --tta: those used under test-time augmentation)',
    )
    .argument('[dir]', 'an ImageFolder of validation images (one folder per class)')
    .option('--images <dir>', 'the images folder, with --labels or --split')
    .option('--labels <csv>', 'a CSV of file,label (paths relative to --images)')
    .option('--split <csv>', "a split from 'hemato split' (paths relative to the folder or --images)")
    .option('--part <part>', 'the part of --split to calibrate on: train, val or test (default: val)', parseChoice(['train', 'val', 'test'] as const))
    .option(
      '-o, --out <file>',
      'where to write the calibrated model (default: <model>.calibrated.safetensors, next to --model, or in the current folder for the bundled model); a file there is replaced once the new one is written, and the output says so; never the --model, --split or --labels it reads',
    )
    .option('--target-accuracy <p>', 'the accuracy that predictions above the uncertainty threshold must reach on this data', parseFraction, 0.995)
    .option(
      '--dtype <dtype>',
      'how the weights are stored: float32, float16 (half the size, for bundled models) or bfloat16 (default: as in --model)',
      parseChoice(['float32', 'float16', 'bfloat16'] as const),
    )
    .option(
      '--ood',
      "also fit the out-of-distribution detector (statistics on a sample of the split's training part, the threshold on its validation part) and, for models with a physical scale, the scale estimate from features (on 400 training images, magnified); needs --split",
    )
    .option('--ood-sample <n>', 'training images the detector statistics are fitted on', parsePositiveInt, 3000)
    .option('--ood-flagged <p>', 'the share of validation images the detector threshold flags', parseFraction, DEFAULT_OOD_FLAGGED)
    .option('--batch-size <n>', 'images per forward pass', parseBatchSize, 64)
    .option('--json', 'print one JSON document on stdout');
  modelOption(command);
  const refuseUnused = notForCommand(command, { threshold: '--threshold does not apply: calibrate fits the uncertainty threshold (see --target-accuracy)' });
  command.action(async (dir: string | undefined, options) => {
    refuseUnused();
    refuseEmptyPaths(options, ['model', 'out', 'images', 'labels', 'split']);
    // Checked before the model is loaded.
    if (options.ood && !options.split)
      throw new CliError('--ood needs --split: the detector is fitted on the training part and its threshold on the validation part', 2);
    // The same sources, checks and skipped rows as eval's: a row eval would score is calibrated on, and no other.
    const listImages = await imageSource(dir, options);
    const modelFile: string = options.model ?? BUNDLED_MODEL;
    // Never write into the installed package: the bundled model's calibration goes to the current folder.
    const out: string =
      options.out ??
      (options.model
        ? options.model.replace(/(\.safetensors)?$/, '.calibrated.safetensors')
        : path.basename(BUNDLED_MODEL, '.safetensors') + '.calibrated.safetensors');
    // The model it reads would lose its calibration, the images' CSV would become a model file.
    await refuseOutputOverInput(
      '--out',
      out,
      [out],
      [
        ['--model', modelFile],
        ['--split', options.split],
        ['--labels', options.labels],
      ],
    );
    // Checked now, not after minutes of scoring.
    const { replaces } = await prepareOutputFile(out);
    const classifier = await loadClassifier(modelFile, classifierOptions(options));
    assertFiniteWeights(classifier.model, modelFile);
    const listing = await listImages({ classes: classifier.classes });
    if (listing.items.length === 0) throw new CliError(noLabelledImages(listing.root, listing.skipped.length, classifier.classes));
    const items = listing.items;
    let ood = classifier.ood;
    let featureScale = classifier.metadata.featureScale;
    const splitHash = listing.splitHash ?? null;
    if (options.split && options.ood) {
      const trainListing = await listSplitPart(options.split, listing.root, 'train', { classes: classifier.classes });
      // Both parts must come from one version of the split, which the model records by its hash.
      if (trainListing.splitHash !== splitHash) throw new CliError(`${options.split} changed while calibrate read it; run calibrate again once it is written`);
      const train = trainListing.items;
      if (train.length === 0) {
        const why = failureList(trainListing.skipped.map(asFailure));
        throw new CliError(`--ood fits the detector on the train part of ${options.split}, and none of its rows names an image to use: ${why}`);
      }
      // The detector's statistics are a mean per class and one covariance: every class, and two images per class.
      const present = new Set(train.map((item) => item.label));
      const absent = classifier.classes.filter((label) => !present.has(label));
      if (absent.length > 0)
        throw new CliError(
          `--ood fits the detector on training images of every class, and the train part of ${options.split} has none of ${listFirst(absent, 8)}; give a split with them, or leave --ood out`,
        );
      const needed = 2 * classifier.classes.length;
      if (train.length < needed)
        throw new CliError(
          `--ood fits the detector on at least ${needed} training images (two per class), and the train part of ${options.split} has ${train.length} it can use; give a split with more training images, or leave --ood out`,
        );
      if (options.oodSample < needed)
        throw new CliError(`--ood-sample ${options.oodSample} is too few: the detector is fitted on at least ${needed} training images (two per class)`, 2);
      const sample = evenSample(train, options.oodSample);
      const detectorBar = progressBar('fitting the out-of-distribution detector', sample.length + items.length);
      ood = await fitDetector(classifier, sample, items, {
        batchSize: options.batchSize,
        flagged: options.oodFlagged,
        onProgress: (stage, done) => detectorBar.update(stage === 'training' ? done : sample.length + done),
      });
      detectorBar.stop();
      // Models that bring images to a physical scale also learn to estimate it from their features, for images
      // in which nothing measurable sets it.
      if (classifier.recipe.scale) {
        const scaleSample = evenSample(train, FEATURE_SCALE_SAMPLE);
        const scaleBar = progressBar('fitting the scale estimate from features', scaleSample.length);
        featureScale = await fitScaleFromFeatures(classifier, scaleSample, { batchSize: options.batchSize, onProgress: (done) => scaleBar.update(done) });
        scaleBar.stop();
      }
    }
    const bar = progressBar('scoring', items.length);
    const scored = await scoreItems(classifier, items, { batchSize: options.batchSize, onProgress: (done) => bar.update(done) });
    bar.stop();
    const n = scored.labels.length;
    const k = classifier.classes.length;
    if (n < 20) throw new CliError(`only ${n} images could be scored; calibration needs a real validation set (hundreds of images)`);
    const fit = calibrate(scored.logits, scored.labels, k, options.targetAccuracy);
    const judge = {
      classes: classifier.classes,
      temperature: fit.temperature,
      uncertaintyThreshold: fit.uncertaintyThreshold,
      reasons: (top: number) => (top < fit.uncertaintyThreshold ? ['low-confidence'] : []),
    };
    const validation = validationRecord(evaluateScores(scored, judge), splitHash);
    const provenance = { ...classifier.metadata.provenance, validation };
    // With --tta the fit belongs to the averaged views and is stored beside the single view's, which stays.
    const fitted = { temperature: fit.temperature, uncertaintyThreshold: fit.uncertaintyThreshold };
    const calibration = options.tta ? { tta: fitted } : { ...fitted, provenance };
    await saveModel(
      out,
      classifier.model,
      { ...classifier.metadata, ...calibration, ood, featureScale },
      { dtype: options.dtype ?? classifier.metadata.dtype },
    );
    for (const warning of fit.warnings) process.stderr.write(`warning: ${warning}\n`);
    // Hidden entries are passed over on purpose, as eval does; anything else left out is said, not dropped unseen.
    const failed = [...listing.skipped.filter((s) => s.reason !== 'hidden').map(asFailure), ...scored.failed];
    const summary = {
      model: out,
      replaced: replaces,
      n,
      temperature: fit.temperature,
      uncertainty_threshold: fit.uncertaintyThreshold,
      nll_before: fit.nllBefore,
      nll_after: fit.nllAfter,
      ece_before: fit.eceBefore,
      ece_after: fit.eceAfter,
      ood: ood ? { threshold: ood.threshold, validation_flagged: ood.validationFlagged } : null,
      feature_scale: featureScale ? { pooling: featureScale.pooling, features: featureScale.weights.length } : null,
      warnings: fit.warnings,
      failed,
    };
    if (options.json) printJson(summary);
    else
      process.stdout.write(
        `${out}: T = ${fit.temperature.toFixed(3)}, NLL ${fit.nllBefore.toFixed(4)} → ${fit.nllAfter.toFixed(4)}, ECE ${fit.eceBefore.toFixed(4)} → ${fit.eceAfter.toFixed(4)}, uncertainty threshold ${fit.uncertaintyThreshold.toFixed(3)} (on ${n} images)${replaces ? '; replaced the earlier file' : ''}\n`,
      );
    if (failed.length > 0) {
      process.stderr.write(`hemato: ${failed.length} files could not be scored (see failed in --json); the calibration leaves them out\n`);
      process.exitCode = 1;
    }
    classifier.dispose();
  });
}
