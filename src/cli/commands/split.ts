import type { Command } from 'commander';
import { noLabelledImages, PBC_CLASSES } from '../../data/dataset.js';
import { escapeControl } from '../../data/files.js';
import { progressReporter } from '../progress.js';
import { scanDataset } from '../../data/scan.js';
import { makeSplit, type Part, writeSplit } from '../../data/split.js';
import { CliError, prepareOutputFile, printJson } from '../output.js';
import { addSourceOptions, NEAR_THRESHOLD_HELP, parseNearThreshold, resolveSource, type SourceOptions } from './scan.js';

interface SplitCommandOptions extends SourceOptions {
  out: string;
  seed: string;
  val: string;
  test: string;
  keepConflicts?: boolean;
  nearDuplicates?: boolean;
  nearThreshold?: number;
  halveVal?: boolean;
  json?: boolean;
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
    .option('--seed <n>', 'seed; the same seed and files give the same split on any machine', '0')
    .option('--val <fraction>', 'fraction of each class for validation', '0.15')
    .option('--test <fraction>', 'fraction of each class for test', '0')
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
      const { source, classes, maxPixels, maxFileBytes } = await resolveSource(dir, options);
      // Checked now, not after the scan.
      const { replaces } = await prepareOutputFile(options.out);
      const [seed, val, test] = [Number(options.seed), Number(options.val), Number(options.test)];
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
      let split;
      try {
        split = makeSplit(report.entries, {
          seed,
          val,
          test,
          conflicts: options.keepConflicts ? 'keep' : 'exclude',
          nearDuplicates: options.nearDuplicates ? report.near_duplicates : undefined,
          halveVal: options.halveVal,
        });
      } catch (error) {
        throw new CliError(`${(error as Error).message} (--seed, --val, --test${options.halveVal ? ', --halve-val' : ''})`, 2);
      }
      const meta = await writeSplit(split, options.out, report.root);
      const { rows: _rows, csv: _csv, ...summary } = split;
      if (options.json) {
        printJson({ csv: options.out, meta, replaced: replaces, ...summary, skipped: report.skipped });
        return;
      }
      const fractions = split.val_halved ? `val ${val}, halved into val and test` : `val ${val}, test ${test}`;
      const lines = [
        `${escapeControl(options.out)}  sha256 ${split.hash}${replaces ? '  (replaced the earlier split)' : ''}`,
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
