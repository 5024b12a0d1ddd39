import { access } from 'node:fs/promises';
import { type Command, InvalidArgumentError } from 'commander';
import { type DatasetSource, PBC_CLASSES } from '../../data/dataset.js';
import { fsReason } from '../../data/files.js';
import { DEFAULT_MAX_PIXELS } from '../../data/image.js';
import { DEFAULT_NEAR_THRESHOLD, PHASH_BITS } from '../../data/phash.js';
import { progressReporter } from '../progress.js';
import { formatScanReport, scanDataset, splitLeaks } from '../../data/scan.js';
import { readSplit } from '../../data/split.js';
import { CliError, printJson } from '../output.js';
import { MAX_FILE_SIZE_HELP, parseFileSize } from './shared.js';

/** Options shared by the commands that read a labelled data set. */
export interface SourceOptions {
  images?: string;
  labels?: string;
  /** The earlier name of --labels. */
  csv?: string;
  classes?: string;
  maxPixels?: string;
  /** Bytes, from parseFileSize. */
  maxFileSize?: number;
}

export function addSourceOptions(command: Command): Command {
  return command
    .option('--images <dir>', 'the images folder, with --labels (instead of a folder of class folders)')
    .option('--labels <csv>', 'a CSV of file,label (paths relative to --images)')
    .option('--csv <file>', 'the same as --labels, with the images folder given as the argument')
    .option('--classes <list>', `comma-separated class names, in index order (default: ${PBC_CLASSES.join(',')})`)
    .option('--max-pixels <n>', `refuse images declaring more pixels than this (default: ${DEFAULT_MAX_PIXELS})`)
    .option('--max-file-size <size>', MAX_FILE_SIZE_HELP, parseFileSize);
}

/**
 * The labelled set of a command, in the one convention every command takes: a folder of class folders as the
 * argument, or --images DIR --labels CSV (--csv CSV with the folder as the argument, as before). `root` is the
 * folder that file paths are relative to.
 */
export async function resolveSource(dir: string | undefined, options: SourceOptions) {
  if (options.csv && options.labels) throw new CliError('give --labels or --csv (its earlier name), not both', 2);
  const labels = options.labels ?? options.csv;
  if (dir && options.images) throw new CliError('give the images folder as the argument or as --images, not both', 2);
  const root = dir ?? options.images;
  if (!root) throw new CliError('no data: give a folder of class folders, or --images DIR --labels CSV (file,label)', 2);
  if (options.images && !labels) throw new CliError('--images needs --labels CSV (file,label); a folder of class folders is given as the argument', 2);
  for (const file of labels ? [root, labels] : [root]) {
    const problem = await access(file).then(
      () => null,
      (error: unknown) => fsReason(file, error),
    );
    if (problem) throw new CliError(`cannot read ${file}: ${problem}; give an existing data set folder${labels ? ' and CSV' : ''}`);
  }
  const source: DatasetSource = labels ? { csv: labels, images: root } : { dir: root };
  const classes = options.classes
    ?.split(',')
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c !== '');
  if (classes && (classes.length < 2 || new Set(classes).size !== classes.length)) {
    throw new CliError(`--classes needs at least two distinct names, got "${options.classes}"`, 2);
  }
  const maxPixels = options.maxPixels === undefined ? undefined : Number(options.maxPixels);
  if (maxPixels !== undefined && !(Number.isInteger(maxPixels) && maxPixels > 0)) {
    throw new CliError(`--max-pixels must be a positive integer, got "${options.maxPixels}"`, 2);
  }
  return { source, root, classes, maxPixels, maxFileBytes: options.maxFileSize };
}

/** --near-threshold: bits of perceptual hash in which two images may differ and still count as near-duplicates. */
export function parseNearThreshold(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < 0 || n > PHASH_BITS) throw new InvalidArgumentError(`expected an integer from 0 to ${PHASH_BITS}`);
  return n;
}

export const NEAR_THRESHOLD_HELP = `the largest perceptual-hash distance, in bits of ${PHASH_BITS}, counted as a near-duplicate (default: ${DEFAULT_NEAR_THRESHOLD}, chosen on PBC)`;

export function registerScan(program: Command): void {
  addSourceOptions(
    program
      .command('scan')
      .argument('[dir]', 'data set folder: one sub-folder per class (or give --images DIR --labels CSV)')
      .description(
        'report what a data set holds: images per class, skipped files and why, duplicates and near-duplicates, label conflicts, sizes per class; with --split, what crosses its parts',
      ),
  )
    .option('--split <csv>', "a split from 'hemato split' (paths relative to DIR): count the duplicates and near-duplicates it puts in different parts")
    .option('--near-threshold <bits>', NEAR_THRESHOLD_HELP, parseNearThreshold)
    .option('--json', 'print one JSON document on stdout')
    .action(async (dir: string | undefined, options: SourceOptions & { split?: string; nearThreshold?: number; json?: boolean }) => {
      const { source, classes, maxPixels, maxFileBytes } = await resolveSource(dir, options);
      const split = options.split
        ? await readSplit(options.split).catch((error: Error) => {
            throw new CliError(error.message);
          })
        : undefined;
      const progress = progressReporter('scan');
      const report = await scanDataset(source, { classes, maxPixels, maxFileBytes, nearThreshold: options.nearThreshold, onProgress: progress.update }).finally(
        () => progress.stop(),
      );
      const leaks = split ? { csv: options.split!, hash: split.hash, ...splitLeaks(report, split.rows) } : undefined;
      const { entries: _entries, ...summary } = report;
      if (options.json) printJson(leaks ? { ...summary, split: leaks } : summary);
      else process.stdout.write(`${formatScanReport(report, leaks)}\n`);
    });
}
