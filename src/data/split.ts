// Deterministic, seeded, stratified train/val(/test) splits, keyed on file content so that byte-identical files
// (and, when asked, near-duplicates) always land in one part, and renaming or moving files changes nothing.
import { createHash } from 'node:crypto';
import { writeFileAtomic } from '../engine/atomic-write.js';
import { formatCsv, parseCsv } from './csv.js';
import { checkRowPath, compareStrings } from './dataset.js';
import { escapeControl, readFailure, readFileHead, readRegularFile } from './files.js';
import type { DuplicateGroup, NearDuplicates, ScannedImage } from './scan.js';

export type Part = 'train' | 'val' | 'test';

export interface SplitOptions {
  seed?: number;
  /** Fractions of each class's images for validation and test; the rest is training. */
  val?: number;
  test?: number;
  /** Duplicate groups whose labels differ: left out (default) or kept, each file with its own label, in one part. */
  conflicts?: 'exclude' | 'keep';
  /**
   * A scan's near-duplicate pairs (`ScanReport.near_duplicates`): images joined by them, directly or through others,
   * are drawn as one unit like byte-identical files. Their labels may differ; each keeps its own.
   */
  nearDuplicates?: NearDuplicates;
  /**
   * Divides the validation part in two, each class's units by a second seeded draw: one half stays `val`, the
   * *select* half that epochs, temperatures and thresholds are chosen on, and the other becomes `test`, the *report*
   * half that figures are quoted on. The training part is the one the split has without it.
   */
  halveVal?: boolean;
}

/**
 * Whether a split grouped near-duplicates, by which hash and threshold, how many pairs it used, and how many units
 * they formed from more than one distinct file.
 */
export type NearDuplicateGrouping = { grouped: false } | { grouped: true; method: string; bits: number; threshold: number; pairs: number; groups: number };

export interface SplitRow {
  file: string;
  label: string;
  part: Part;
}

export interface Split {
  rows: SplitRow[];
  /** The CSV exactly as written: header file,label,part, rows in file order. */
  csv: string;
  /** sha256 of the CSV text; training and evaluation record it. */
  hash: string;
  seed: number;
  val: number;
  test: number;
  counts: Record<Part, Record<string, number>>;
  /** Whether the validation part was halved into val (select) and test (report). */
  val_halved: boolean;
  /** Conflicting duplicate groups left out of every part. */
  excluded: DuplicateGroup[];
  near_duplicates: NearDuplicateGrouping;
}

/** The largest seed: the seeds a training run accepts, so that any split can be remade by the run that trains on it. */
export const MAX_SEED = 2 ** 32 - 1;

/** Refuses settings no split can be drawn with; makeSplit checks them, and callers may check them before a scan. */
export function checkSplitOptions(options: SplitOptions): void {
  const { seed = 0, val = 0.15, test = 0 } = options;
  if (!Number.isInteger(seed)) throw new Error(`seed must be an integer, got ${seed}`);
  if (!(val >= 0 && test >= 0 && val + test < 1)) throw new Error(`val and test fractions must be ≥ 0 and sum to less than 1, got ${val} and ${test}`);
  if (options.halveVal && test > 0) throw new Error('halving the validation part makes the test part: leave the test fraction at 0');
}

export function makeSplit(entries: readonly ScannedImage[], options: SplitOptions = {}): Split {
  checkSplitOptions(options);
  const seed = options.seed ?? 0;
  const val = options.val ?? 0.15;
  const test = options.test ?? 0;

  const groups = new Map<string, ScannedImage[]>();
  for (const entry of entries) groups.set(entry.sha256, [...(groups.get(entry.sha256) ?? []), entry]);

  // A unit is one group of identical files, or of near-duplicates; it is drawn as a whole, within the stratum of its
  // (first) label, keyed on its smallest content hash, so a unit of one group is drawn exactly as without grouping.
  const kept: [string, ScannedImage[]][] = [];
  const excluded: DuplicateGroup[] = [];
  for (const [sha256, members] of groups) {
    const labels = members.map((m) => m.label);
    if (new Set(labels).size > 1 && (options.conflicts ?? 'exclude') === 'exclude') {
      members.sort((a, b) => compareStrings(a.file, b.file));
      excluded.push({ sha256, paths: members.map((m) => m.file), labels });
      continue;
    }
    kept.push([sha256, members]);
  }
  const { units, grouping } = options.nearDuplicates
    ? joinNearDuplicates(kept, options.nearDuplicates)
    : { units: kept, grouping: { grouped: false as const } };
  const strata = new Map<string, { key: string; members: ScannedImage[] }[]>();
  for (const [sha256, members] of units) {
    members.sort((a, b) => compareStrings(a.file, b.file));
    const key = createHash('sha256').update(`${seed}:${sha256}`).digest('hex');
    strata.set(members[0].label, [...(strata.get(members[0].label) ?? []), { key, members }]);
  }

  const rows: SplitRow[] = [];
  for (const units of strata.values()) {
    units.sort((a, b) => compareStrings(a.key, b.key));
    const nVal = Math.round(units.length * val);
    const nTest = Math.round(units.length * test);
    // The report half is drawn by a second key, so the halves are a fresh draw and the training part stays as it was.
    const halves = options.halveVal ? units.slice(0, nVal).map((unit) => ({ unit, key: sha256Text(`${seed}:report:${unit.key}`) })) : [];
    halves.sort((a, b) => compareStrings(a.key, b.key));
    const reported = new Set(halves.slice(Math.ceil(halves.length / 2)).map(({ unit }) => unit));
    units.forEach((unit, i) => {
      const part: Part = i < nVal ? (reported.has(unit) ? 'test' : 'val') : i < nVal + nTest ? 'test' : 'train';
      for (const m of unit.members) rows.push({ file: m.file, label: m.label, part });
    });
  }
  rows.sort((a, b) => compareStrings(a.file, b.file));
  excluded.sort((a, b) => compareStrings(a.paths[0], b.paths[0]));

  const csv = formatCsv([['file', 'label', 'part'], ...rows.map((r) => [r.file, r.label, r.part])]);
  const counts: Record<Part, Record<string, number>> = { train: {}, val: {}, test: {} };
  for (const r of rows) counts[r.part][r.label] = (counts[r.part][r.label] ?? 0) + 1;
  return { rows, csv, hash: sha256Text(csv), seed, val, test, val_halved: Boolean(options.halveVal), counts, excluded, near_duplicates: grouping };
}

/** Merges groups of identical files that near-duplicate pairs join (union-find); each unit is named by its smallest hash. */
function joinNearDuplicates(groups: [string, ScannedImage[]][], near: NearDuplicates): { units: [string, ScannedImage[]][]; grouping: NearDuplicateGrouping } {
  const groupOf = new Map<string, number>();
  groups.forEach(([, members], g) => members.forEach((m) => groupOf.set(m.file, g)));
  const parent = groups.map((_, g) => g);
  const root = (g: number): number => {
    while (parent[g] !== g) g = parent[g] = parent[parent[g]];
    return g;
  };
  let pairs = 0;
  for (const { paths } of near.pairs) {
    const [a, b] = paths.map((p) => groupOf.get(p));
    // A pair with an excluded file (a conflict) or one not in these entries joins nothing.
    if (a === undefined || b === undefined) continue;
    pairs++;
    parent[root(a)] = root(b);
  }
  const merged = new Map<number, { sha256: string; members: ScannedImage[]; groups: number }>();
  groups.forEach(([sha256, members], g) => {
    const unit = merged.get(root(g));
    if (!unit) merged.set(root(g), { sha256, members: [...members], groups: 1 });
    else {
      if (compareStrings(sha256, unit.sha256) < 0) unit.sha256 = sha256;
      unit.members.push(...members);
      unit.groups++;
    }
  });
  const units = [...merged.values()].map((u): [string, ScannedImage[]] => [u.sha256, u.members]);
  const joined = [...merged.values()].filter((u) => u.groups > 1).length;
  const { method, bits, threshold } = near;
  return { units, grouping: { grouped: true, method, bits, threshold, pairs, groups: joined } };
}

export function sha256Text(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/** Where writeSplit records a split's details: `<name>.json` beside its CSV. */
export function splitMetaPath(csvPath: string): string {
  return csvPath.replace(/\.csv$/i, '') + '.json';
}

/**
 * Writes the CSV, and beside it `<name>.json` with the hash, the settings, the counts and what was excluded; each
 * whole or not at all.
 */
export async function writeSplit(split: Split, csvPath: string, source?: string): Promise<string> {
  const metaPath = splitMetaPath(csvPath);
  const { rows: _rows, csv: _csv, ...meta } = split;
  await writeFileAtomic(csvPath, [Buffer.from(split.csv)]);
  await writeFileAtomic(metaPath, [Buffer.from(`${JSON.stringify({ csv: csvPath, source, ...meta }, null, 2)}\n`)]);
  return metaPath;
}

/**
 * Reads a split CSV back; the hash is recomputed from the bytes, so it names exactly this file's content. Blank lines
 * are passed over. A row with a part other than train, val or test, a path that leaves the images folder, or a file
 * an earlier row named (it would be trained and validated on, or counted twice) is an Error naming the row.
 */
export async function readSplit(csvPath: string): Promise<{ rows: SplitRow[]; hash: string }> {
  const text = await readRegularFile(csvPath).then(
    (bytes) => bytes.toString('utf8'),
    (error: Error) => {
      throw new Error(`cannot read split ${csvPath}: ${readFailure(error)}`);
    },
  );
  const [header, ...body] = parseCsv(text);
  if (header?.join(',') !== 'file,label,part')
    throw new Error(`${csvPath} is not a split CSV (its header must be file,label,part); make one with hemato split`);
  const rows: SplitRow[] = [];
  const rowOf = new Map<string, number>();
  body.forEach((cells, i) => {
    const line = i + 2;
    if (cells.every((cell) => cell.trim() === '')) return;
    const [file = '', label = '', part] = cells;
    if (part !== 'train' && part !== 'val' && part !== 'test')
      throw new Error(`${csvPath}:${line}: part must be train, val or test, got ${part === undefined ? 'nothing' : `"${escapeControl(part)}"`}`);
    if (file === '') throw new Error(`${csvPath}:${line}: the row names no file; give each row a path relative to the images folder`);
    checkRowPath(csvPath, line, file, rowOf);
    rows.push({ file, label, part });
  });
  return { rows, hash: sha256Text(text) };
}

/** Whether a file is a split CSV, by its header; for saying what an output replaced. Nothing but its start is read. */
export async function isSplitFile(file: string): Promise<boolean> {
  const head = await readFileHead(file, 64).catch(() => null);
  return head !== null && /^file,label,part\r?\n/.test(Buffer.from(head).toString('utf8'));
}
