// Where the labelled images that eval and calibrate score come from: an ImageFolder, --images with --labels, or one
// part of a split, each checked before the model loads.
import { parseCsv } from '../../data/csv.js';
import { type DatasetListing, listCsvDataset, listDataset, type ListOptions, rowFile, type SkippedFile } from '../../data/dataset.js';
import { escapeControl, listFirst, readRegularFile } from '../../data/files.js';
import { type Part, readSplit } from '../../data/split.js';
import { CliError } from '../output.js';
import { datasetSource } from './shared.js';

export interface SourceOptions {
  images?: string;
  labels?: string;
  split?: string;
  part?: Part;
}

/** A listing, and with a split the SHA-256 of the split file its rows came from. */
type LabelledListing = DatasetListing & { splitHash?: string };
type Lister = (listOptions: ListOptions) => Promise<LabelledListing>;

/**
 * Where the labelled images come from: an ImageFolder, --images with --labels, or one part of a split. The flags
 * are checked here, before the model loads; the listing needs the model's classes.
 */
export async function imageSource(dir: string | undefined, options: SourceOptions): Promise<Lister> {
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
export async function listSplitPart(split: string, root: string, part: Part, listOptions: ListOptions): Promise<LabelledListing & { splitHash: string }> {
  const { rows, hash } = await readSplit(split);
  // Named as the listing names them, else rows written `class\file.png` or with padded cells would drop out unseen.
  const chosen = new Set(rows.filter((r) => r.part === part).map((r) => rowFile(r.file)));
  if (chosen.size === 0) throw new CliError(`${split} has no ${part} part`);
  const listing = await listCsvDataset(split, root, listOptions);
  return {
    ...listing,
    items: listing.items.filter((i) => chosen.has(i.file)),
    skipped: listing.skipped.filter((s) => chosen.has(s.path)),
    splitHash: hash,
  };
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

/** A listing's skipped entry as a file that could not be used, with its reason's code and words. */
export const asFailure = (s: SkippedFile): { path: string; reason: string } => ({ path: s.path, reason: `${s.reason}: ${s.detail}` });

/** The first few files that could not be read, each with its reason. */
export function failureList(failed: readonly { path: string; reason: string }[], shown = 5): string {
  return listFirst(
    failed.map((f) => `${escapeControl(f.path)}: ${f.reason}`),
    shown,
    '; ',
  );
}
