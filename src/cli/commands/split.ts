import { type Command, InvalidArgumentError } from 'commander';
import { noLabelledImages, PBC_CLASSES } from '../../data/dataset.js';
import { escapeControl } from '../../data/files.js';
import { progressReporter } from '../progress.js';
import { scanDataset } from '../../data/scan.js';
import { checkSplitOptions, isSplitFile, MAX_SEED, makeSplit, type Part, type Split, splitMetaPath, writeSplit } from '../../data/split.js';
import { CliError, prepareOutputFile, printJson, refuseOutputOverInput } from '../output.js';
import { addSourceOptions, NEAR_THRESHOLD_HELP, parseNearThreshold, resolveSource, type SourceOptions } from './scan.js';

interface SplitCommandOptions extends SourceOptions {
  out: string;
  seed: number;
  val: number;
  test: number;
  keepConflicts?: boolean;
  nearDuplicates?: boolean;
  nearThreshold?: number;
  halveVal?: boolean;
  json?: boolean;
}

function parseSeed(value: string): number {
  // Digits only: Number() would also read '', '0x10', '1e3' and round 20-digit numbers.
  if (!/^\d+$/.test(value) || Number(value) > MAX_SEED) throw new InvalidArgumentError(`expected a whole number in 0..${MAX_SEED}`);
  return Number(value);
}

function parseSplitFraction(value: string): number {
  if (!/^(\d+(\.\d*)?|\.\d+)$/.test(value) || Number(value) >= 1)
    throw new InvalidArgumentError('expected a decimal fraction from 0 up to (not including) 1, such as 0.15');
  return Number(value);
}

/** The parts the split was asked to fill that came out empty, each with what to change. */
function emptyParts(split: Split, halveVal: boolean): string[] {
  const empty = (part: Part) => Object.values(split.counts[part]).every((n) => n === 0);
  const fractions = `--val ${split.val}${split.test > 0 ? ` and --test ${split.test}` : ''}`;
  const warnings: string[] = [];
  if (empty('train'))
    warnings.push(`the train part is empty: with ${fractions} no image is left for it; training needs it: lower the fractions, or give more images`);
  if (split.val > 0 && empty('val'))
    warnings.push(`the val part is empty: no class has enough images for --val ${split.val} to draw one; training needs it: raise --val, or give more images`);
  if (halveVal && split.val > 0 && empty('test'))
    warnings.push('the test part is empty: no class has enough validation images for --halve-val to move one to test; raise --val, or give more images');
  if (split.test > 0 && empty('test'))
    warnings.push(`the test part is empty: no class has enough images for --test ${split.test} to draw one; raise --test, or give more images`);
  return warnings;
}

export function registerSplit(program: Command): void {
  addSourceOptions(
    program
      .command('split')
      .argument('[dir]', 'data set folder: one sub-folder per class (or give --images DIR --labels CSV)')
      .description(
        'write a seeded, stratified train/val(/test) split as CSV (file,label,part) and report its sha256; duplicates (and with --near-duplicates, near-duplicates) stay in one part',
      ),
  )
    .requiredOption(
      '--out <file.csv>',
      'where to write the split; <name>.json beside it records hash, settings and counts (files there are replaced once the new ones are written, and the output says so)',
    )
    .option('--seed <n>', `seed, a whole number in 0..${MAX_SEED}; the same seed and files give the same split on any machine`, parseSeed, 0)
    .option('--val <fraction>', 'fraction of each class for validation', parseSplitFraction, 0.15)
    .option('--test <fraction>', 'fraction of each class for test', parseSplitFraction, 0)
    .option(
      '--halve-val',
      'divide the validation part into two seeded halves: val, to choose epochs, temperature and thresholds on, and test, to quote figures on; the training part is unchanged',
    )
    .option('--keep-conflicts', 'keep identical files filed under different labels (each in one part) instead of excluding them')
    .option('--near-duplicates', 'also keep near-duplicates (re-encoded, resized, re-lit or slightly shifted copies; see hemato scan) in one part')
    .option('--near-threshold <bits>', NEAR_THRESHOLD_HELP, parseNearThreshold)
    .option('--json', 'print one JSON document on stdout')
    .action(async (dir: string | undefined, options: SplitCommandOptions) => {
      if (options.nearThreshold !== undefined && !options.nearDuplicates) throw new CliError('--near-threshold applies only with --near-duplicates', 2);
      const { seed, val, test } = options;
      try {
        checkSplitOptions({ seed, val, test, halveVal: options.halveVal });
      } catch (error) {
        throw new CliError(`${(error as Error).message} (--seed, --val, --test${options.halveVal ? ', --halve-val' : ''})`, 2);
      }
      const { source, classes, maxPixels, maxFileBytes } = await resolveSource(dir, options);
      await refuseOutputOverInput(
        '--out',
        options.out,
        [options.out, splitMetaPath(options.out)],
        [[options.labels ? '--labels' : '--csv', options.labels ?? options.csv]],
      );
      // Checked now, not after the scan.
      const { replaces } = await prepareOutputFile(options.out);
      const earlier = replaces && ((await isSplitFile(options.out)) ? 'split' : 'file');
      const progress = progressReporter('scan');
      const report = await scanDataset(source, { classes, maxPixels, maxFileBytes, nearThreshold: options.nearThreshold, onProgress: progress.update }).finally(
        () => progress.stop(),
      );
      if (report.entries.length === 0) throw new CliError(noLabelledImages(report.root, report.skipped.length, classes ?? PBC_CLASSES));
      const near = report.near_duplicates;
      if (options.nearDuplicates && near.total > near.pairs.length)
        throw new CliError(
          `${near.total} near-duplicate pairs: too many to keep together (at most ${near.pairs.length}); the data set is mostly look-alike images. Lower --near-threshold, or split without --near-duplicates`,
        );
      const split = makeSplit(report.entries, {
        seed,
        val,
        test,
        conflicts: options.keepConflicts ? 'keep' : 'exclude',
        nearDuplicates: options.nearDuplicates ? report.near_duplicates : undefined,
        halveVal: options.halveVal,
      });
      const meta = await writeSplit(split, options.out, report.root);
      const warnings = emptyParts(split, Boolean(options.halveVal));
      for (const warning of warnings) process.stderr.write(`warning: ${warning}\n`);
      const { rows: _rows, csv: _csv, ...summary } = split;
      if (options.json) {
        printJson({ csv: options.out, meta, replaced: replaces, ...summary, skipped: report.skipped, warnings });
        return;
      }
      const fractions = split.val_halved ? `val ${val}, halved into val and test` : `val ${val}, test ${test}`;
      const lines = [
        `${escapeControl(options.out)}  sha256 ${split.hash}${earlier ? `  (replaced the earlier ${earlier})` : ''}`,
        `seed ${seed}, ${fractions}; details in ${escapeControl(meta)}`,
      ];
      for (const part of ['train', 'val', 'test'] as Part[]) {
        const counts = split.counts[part];
        const total = Object.values(counts).reduce((a, b) => a + b, 0);
        if (total > 0)
          lines.push(
            `${part.padEnd(5)} ${String(total).padStart(6)}  ${Object.entries(counts)
              .map(([c, n]) => `${c} ${n}`)
              .join(', ')}`,
          );
      }
      const grouping = split.near_duplicates;
      if (grouping.grouped)
        lines.push(
          `near-duplicates kept together: ${grouping.pairs} pairs (${grouping.method} distance ≤ ${grouping.threshold} of ${grouping.bits} bits) joined files into ${grouping.groups} groups`,
        );
      for (const g of split.excluded)
        lines.push(`excluded (same bytes, different labels): ${g.paths.map((p, i) => `${escapeControl(p)} (${g.labels[i]})`).join(', ')}`);
      if (report.skipped.length > 0) lines.push(`skipped ${report.skipped.length} files that are not usable images; run hemato scan for the list`);
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
