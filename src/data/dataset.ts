// Listing a labelled data set from its two layouts: ImageFolder (one folder per class) or a CSV of file,label.
import path from 'node:path';
import { parseCsv } from './csv.js';
import { escapeControl, fsReason, inspectPath, readFailure, readFolder, readRegularFile, walkFolder, type WalkedSkip } from './files.js';

/** hemato's classes, in the index order every model and pack uses. */
export const PBC_CLASSES: readonly string[] = ['basophil', 'eosinophil', 'erythroblast', 'ig', 'lymphocyte', 'monocyte', 'neutrophil', 'platelet'];

export interface DatasetItem {
  /** Path relative to the data set's root, with '/' separators: the stable name used in splits and packs. */
  file: string;
  /** Absolute path on this machine. */
  path: string;
  label: string;
}

/** Why a listing skipped an entry: a walk's reasons (docs/reliability.md), or a label that does not fit. */
export type SkipReason = 'unknown-label' | 'missing' | 'no-class-folder' | WalkedSkip['code'];

export interface SkippedFile {
  path: string;
  reason: SkipReason;
  detail: string;
}

export interface DatasetListing {
  root: string;
  layout: 'imagefolder' | 'csv';
  classes: string[];
  items: DatasetItem[];
  skipped: SkippedFile[];
}

export interface ListOptions {
  /** The known labels, in index order; defaults to PBC_CLASSES. Anything else is reported, not guessed. */
  classes?: readonly string[];
  /** Files larger than this many bytes are skipped (default 256 MiB); special files (FIFOs, devices) always are. */
  maxFileBytes?: number;
}

/** What to say of a data set in which no labelled image was found: where, how much was passed over, what to give. */
export function noLabelledImages(root: string, skipped: number, classes: readonly string[]): string {
  return `no labelled images found in ${root} (skipped ${skipped}); give a folder with one folder per class (${classes.join(', ')}), or --images DIR --labels CSV`;
}

/** Where a data set comes from: a folder of class folders, or a CSV with paths relative to an images folder. */
export type DatasetSource = { dir: string } | { csv: string; images: string };

export function listDataset(source: DatasetSource, options: ListOptions = {}): Promise<DatasetListing> {
  return 'dir' in source ? listImageFolder(source.dir, options) : listCsvDataset(source.csv, source.images, options);
}

/**
 * One folder per class; class folders are searched recursively (links followed); hidden entries, special files,
 * files over the size limit and entries that cannot be read (dangling links, link loops) are skipped and reported.
 */
export async function listImageFolder(root: string, options: ListOptions = {}): Promise<DatasetListing> {
  const classes = [...(options.classes ?? PBC_CLASSES)];
  const absRoot = path.resolve(root);
  const entries = await readFolder(absRoot).catch(async (error: unknown) => {
    throw new Error(`cannot list ${absRoot}: ${await fsReason(absRoot, error)}`);
  });
  const items: DatasetItem[] = [];
  const skipped: SkippedFile[] = [];
  const seen = new Set<string>();
  for (const entry of entries) {
    const rel = entry.name;
    if (entry.name.startsWith('.')) {
      skipped.push({ path: rel, reason: 'hidden', detail: `hidden ${entry.isDirectory() ? 'folder' : 'file'}` });
      continue;
    }
    const info = await inspectPath(path.join(absRoot, rel), options.maxFileBytes);
    if (info.kind === 'skip') {
      skipped.push({ path: rel, reason: info.error.code, detail: info.error.message });
    } else if (info.kind === 'file') {
      skipped.push({ path: rel, reason: 'no-class-folder', detail: 'file at the top level; ImageFolder expects <class>/<file>' });
    } else if (!classes.includes(entry.name)) {
      skipped.push({
        path: rel,
        reason: 'unknown-label',
        detail: `folder "${entry.name}" is not a known class (${classes.join(', ')}); pass --classes to use your own`,
      });
    } else {
      const found = await walkFolder(path.join(absRoot, rel), rel, { maxBytes: options.maxFileBytes, reportHidden: true, seen });
      for (const file of found.files) items.push({ file: file.rel, path: file.path, label: entry.name });
      for (const skip of found.skipped) skipped.push({ path: skip.rel, reason: skip.code, detail: skip.detail });
    }
  }
  items.sort((a, b) => compareStrings(a.file, b.file));
  return { root: absRoot, layout: 'imagefolder', classes, items, skipped };
}

/**
 * A CSV with a header naming `file` and `label` columns (other columns are ignored); paths are relative to `imagesDir`.
 * Labels are matched after trimming and lower-casing. Bad rows are reported one by one; the rest are listed. A row
 * whose path leaves the images folder, or that names a file an earlier row named, is an Error: it is a mistake in the
 * CSV, not an image to pass over.
 */
export async function listCsvDataset(csvPath: string, imagesDir: string, options: ListOptions = {}): Promise<DatasetListing> {
  const classes = [...(options.classes ?? PBC_CLASSES)];
  const root = path.resolve(imagesDir);
  let rows: { cells: string[]; line: number }[];
  try {
    rows = parseCsv((await readRegularFile(csvPath)).toString('utf8'))
      .map((cells, i) => ({ cells, line: i + 1 }))
      .filter(({ cells }) => cells.some((cell) => cell.trim() !== ''));
  } catch (error) {
    throw new Error(`cannot read CSV ${csvPath}: ${readFailure(error)}`);
  }
  const header = (rows[0]?.cells ?? []).map((name) => name.trim().toLowerCase());
  const fileColumn = header.indexOf('file');
  const labelColumn = header.indexOf('label');
  if (fileColumn < 0 || labelColumn < 0) {
    throw new Error(`CSV ${csvPath} needs a header row naming the columns "file" and "label" (found: ${header.join(', ') || 'nothing'})`);
  }
  if (rows.length === 1) throw new Error(`CSV ${csvPath} has a header but no rows; add one row per image (file,label)`);
  const folder = await inspectPath(root);
  if (folder.kind !== 'folder') {
    const reason = folder.kind === 'file' ? 'a file, not a folder' : readFailure(folder.error);
    throw new Error(`images folder ${root}: ${reason}; give the folder the paths in ${csvPath} are relative to`);
  }
  const items: DatasetItem[] = [];
  const skipped: SkippedFile[] = [];
  const rowOf = new Map<string, number>();
  for (const { cells, line } of rows.slice(1)) {
    const file = rowFile(cells[fileColumn] ?? '');
    const label = (cells[labelColumn] ?? '').trim().toLowerCase();
    if (file === '') {
      skipped.push({ path: `${path.basename(csvPath)}:${line}`, reason: 'missing', detail: `row ${line} has no file` });
      continue;
    }
    checkRowPath(csvPath, line, file, rowOf);
    if (!classes.includes(label)) {
      skipped.push({
        path: file,
        reason: 'unknown-label',
        detail: `row ${line}: unknown label "${cells[labelColumn] ?? ''}" (known: ${classes.join(', ')})`,
      });
    } else {
      const info = await inspectPath(path.resolve(root, file), options.maxFileBytes);
      if (info.kind === 'file') items.push({ file, path: path.resolve(root, file), label });
      else if (info.kind === 'folder') skipped.push({ path: file, reason: 'not-a-file', detail: `row ${line}: a folder, not a file` });
      else if (info.missing) skipped.push({ path: file, reason: 'missing', detail: `row ${line}: no such file under ${root}` });
      else skipped.push({ path: file, reason: info.error.code, detail: `row ${line}: ${info.error.message}` });
    }
  }
  items.sort((a, b) => compareStrings(a.file, b.file));
  return { root, layout: 'csv', classes, items, skipped };
}

/** A CSV row's file as listings name it: trimmed, with Windows separators as '/'. */
export const rowFile = (cell: string): string => cell.trim().replace(/\\/g, '/');

/**
 * Refuses a CSV row whose path is absolute or leads out of the images folder once normalised (`a/../../b`; `a/../b`
 * stays inside), and one naming a file an earlier row named (`rowOf`: each normalised path and its row). Backslashes
 * count as separators, as they do on Windows.
 */
export function checkRowPath(csvPath: string, line: number, file: string, rowOf: Map<string, number>): void {
  const posix = file.replace(/\\/g, '/');
  const normal = path.posix.normalize(posix);
  const shown = escapeControl(file);
  const absolute = path.posix.isAbsolute(posix) || path.win32.isAbsolute(file);
  if (absolute || normal === '..' || normal.startsWith('../'))
    throw new Error(
      `${csvPath}:${line}: "${shown}" is outside the images folder (${absolute ? 'an absolute path' : 'it climbs out through ..'}); paths are relative to that folder and stay inside it: fix the row`,
    );
  const first = rowOf.get(normal);
  if (first !== undefined)
    throw new Error(`${csvPath}: "${shown}" is listed twice (rows ${first} and ${line}); each file belongs to one row: remove the repeated row`);
  rowOf.set(normal, line);
}

/**
 * Whether a file named by a split or a CSV can be read as one; null, or the skip that says why not. Nothing is opened.
 */
export async function unusableFile(file: string, absPath: string, maxBytes?: number): Promise<SkippedFile | null> {
  const info = await inspectPath(absPath, maxBytes);
  if (info.kind === 'file') return null;
  if (info.kind === 'folder') return { path: file, reason: 'not-a-file', detail: 'a folder, not a file' };
  if (info.missing) return { path: file, reason: 'missing', detail: `no such file: ${absPath}` };
  return { path: file, reason: info.error.code, detail: info.error.message };
}

/** Code-unit order, the same on every machine and locale. */
export function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
