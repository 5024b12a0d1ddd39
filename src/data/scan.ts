// What a data set really holds: decodable images per class, what was skipped and why, byte-identical duplicates
// and near-duplicates (also across labels), and the image sizes per class, which must not be able to reveal the label.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { type DatasetListing, type DatasetSource, type ListOptions, type SkippedFile, compareStrings, listDataset } from './dataset.js';
import { DecodeError } from './errors.js';
import { escapeControl, readFileHead, readRegularFile } from './files.js';
import { type DecodeOptions, decodeImage, describeNonImage, sniffFormat } from './image.js';
import { DEFAULT_NEAR_THRESHOLD, forEachHashPair, PHASH_BITS, PHASH_METHOD, perceptualHash } from './phash.js';
import { mapLimit } from './pool.js';
import type { Part, SplitRow } from './split.js';

export interface ScannedImage {
  file: string;
  label: string;
  sha256: string;
  /** Perceptual hash (`perceptualHash`), for near-duplicates. */
  phash: string;
  width: number;
  height: number;
  format: string;
  bytes: number;
}

export interface DuplicateGroup {
  sha256: string;
  paths: string[];
  labels: string[];
}

export interface NearDuplicatePair {
  paths: [string, string];
  labels: [string, string];
  /** Bits in which the two perceptual hashes differ. */
  distance: number;
}

/** Pairs of images that are not byte-identical but whose perceptual hashes differ in at most `threshold` bits. */
export interface NearDuplicates {
  method: string;
  bits: number;
  threshold: number;
  /** In file order: the first MAX_NEAR_PAIRS of them. */
  pairs: NearDuplicatePair[];
  /** How many pairs there are, listed or not. */
  total: number;
  /** How many of the pairs have different labels. */
  conflicts: number;
}

export interface ScanReport {
  root: string;
  layout: DatasetListing['layout'];
  /** Every file looked at, decodable or not. */
  files: number;
  /** Decodable image files. */
  images: number;
  classes: Record<string, number>;
  skipped: SkippedFile[];
  duplicates: DuplicateGroup[];
  conflicts: DuplicateGroup[];
  near_duplicates: NearDuplicates;
  /** Per class, how many images have each "W×H" size. */
  sizes: Record<string, Record<string, number>>;
  formats: Record<string, number>;
  /** One entry per decodable image, in file order. */
  entries: ScannedImage[];
}

export interface ScanOptions extends ListOptions, DecodeOptions {
  /** Files decoded at once; sharp decodes on its own threads. */
  concurrency?: number;
  /** The largest distance between perceptual hashes counted as a near-duplicate (default: DEFAULT_NEAR_THRESHOLD). */
  nearThreshold?: number;
  onProgress?: (done: number, total: number) => void;
}

/** Lists the data set, then hashes and fully decodes every file, so a truncated file cannot pass as an image. */
export async function scanDataset(source: DatasetSource, options: ScanOptions = {}): Promise<ScanReport> {
  const listing = await listDataset(source, options);
  const skipped = [...listing.skipped];
  await describeHiddenFiles(listing.root, skipped);
  let done = 0;
  options.onProgress?.(0, listing.items.length);
  const results = await mapLimit(listing.items, options.concurrency ?? 8, async (item): Promise<ScannedImage | SkippedFile> => {
    try {
      const bytes = await readRegularFile(item.path, options.maxFileBytes);
      const sha256 = createHash('sha256').update(bytes).digest('hex');
      const image = await decodeImage(bytes, options);
      return {
        file: item.file,
        label: item.label,
        sha256,
        phash: perceptualHash(image),
        width: image.width,
        height: image.height,
        format: sniffFormat(bytes) ?? 'unknown',
        bytes: bytes.length,
      };
    } catch (error) {
      if (error instanceof DecodeError) return { path: item.file, reason: error.code, detail: error.message };
      return { path: item.file, reason: 'unreadable', detail: (error as Error).message };
    } finally {
      options.onProgress?.(++done, listing.items.length);
    }
  });
  const entries = results.filter((r): r is ScannedImage => 'sha256' in r);
  for (const result of results) if ('reason' in result) skipped.push(result); // not push(...): a set can hold 120,000 or more
  skipped.sort((a, b) => compareStrings(a.path, b.path));
  return summarise(listing, entries, skipped, options.nearThreshold);
}

export function summarise(
  listing: Pick<DatasetListing, 'root' | 'layout' | 'classes'>,
  entries: ScannedImage[],
  skipped: SkippedFile[],
  nearThreshold = DEFAULT_NEAR_THRESHOLD,
): ScanReport {
  const classes: Record<string, number> = Object.fromEntries(listing.classes.map((c) => [c, 0]));
  const sizes: Record<string, Record<string, number>> = {};
  const formats: Record<string, number> = {};
  const byHash = new Map<string, ScannedImage[]>();
  for (const entry of entries) {
    classes[entry.label] = (classes[entry.label] ?? 0) + 1;
    const size = `${entry.width}x${entry.height}`;
    sizes[entry.label] ??= {};
    sizes[entry.label][size] = (sizes[entry.label][size] ?? 0) + 1;
    formats[entry.format] = (formats[entry.format] ?? 0) + 1;
    const group = byHash.get(entry.sha256);
    if (group) group.push(entry);
    else byHash.set(entry.sha256, [entry]);
  }
  const duplicates: DuplicateGroup[] = [...byHash.entries()]
    .filter(([, group]) => group.length > 1)
    .map(([sha256, group]) => ({ sha256, paths: group.map((e) => e.file), labels: group.map((e) => e.label) }))
    .sort((a, b) => compareStrings(a.paths[0], b.paths[0]));
  const conflicts = duplicates.filter((group) => new Set(group.labels).size > 1);
  return {
    root: listing.root,
    layout: listing.layout,
    files: entries.length + skipped.length,
    images: entries.length,
    classes,
    skipped,
    duplicates,
    conflicts,
    near_duplicates: findNearDuplicates(entries, nearThreshold),
    sizes,
    formats,
    entries,
  };
}

/** Near-duplicate pairs kept at most: a set of many look-alike images (empty fields, say) has millions of pairs. */
export const MAX_NEAR_PAIRS = 50_000;

/**
 * The pairs of images within `threshold` bits of perceptual hash, one pair per two contents: byte-identical copies
 * are duplicates, and are represented by the first of them in file order. The first MAX_NEAR_PAIRS are kept; all
 * are counted.
 */
export function findNearDuplicates(entries: readonly ScannedImage[], threshold = DEFAULT_NEAR_THRESHOLD): NearDuplicates {
  const contents = new Set<string>();
  const sorted = [...entries].sort((a, b) => compareStrings(a.file, b.file)).filter((e) => !contents.has(e.sha256) && contents.add(e.sha256));
  const pairs: NearDuplicatePair[] = [];
  let total = 0;
  let conflicts = 0;
  forEachHashPair(
    sorted.map((e) => e.phash),
    threshold,
    ({ i, j, distance }) => {
      total++;
      if (sorted[i].label !== sorted[j].label) conflicts++;
      if (pairs.length < MAX_NEAR_PAIRS) pairs.push({ paths: [sorted[i].file, sorted[j].file], labels: [sorted[i].label, sorted[j].label], distance });
    },
  );
  return { method: PHASH_METHOD, bits: PHASH_BITS, threshold, pairs, total, conflicts };
}

export interface SplitLeaks {
  /** Byte-identical groups, and near-duplicate pairs, whose files lie in different parts of the split. */
  duplicates: (DuplicateGroup & { parts: (Part | null)[] })[];
  near_duplicates: (NearDuplicatePair & { parts: [Part, Part] })[];
  /** Images of the scan that the split does not list; pairs with one of them are not counted. */
  unlisted: number;
}

/** What of the scan's duplicates and near-duplicates a split puts on both sides, where a model could learn its test. */
export function splitLeaks(
  report: Pick<ScanReport, 'entries' | 'duplicates' | 'near_duplicates'>,
  rows: readonly Pick<SplitRow, 'file' | 'part'>[],
): SplitLeaks {
  const partOf = new Map(rows.map((r) => [r.file, r.part]));
  const duplicates = report.duplicates
    .map((g) => ({ ...g, parts: g.paths.map((p) => partOf.get(p) ?? null) }))
    .filter((g) => new Set(g.parts.filter((p) => p !== null)).size > 1);
  const near_duplicates = report.near_duplicates.pairs
    .map((p) => ({ ...p, parts: [partOf.get(p.paths[0]), partOf.get(p.paths[1])] }))
    .filter((p): p is NearDuplicatePair & { parts: [Part, Part] } => p.parts[0] !== undefined && p.parts[1] !== undefined && p.parts[0] !== p.parts[1]);
  return { duplicates, near_duplicates, unlisted: report.entries.filter((e) => !partOf.has(e.file)).length };
}

/** A hidden file is skipped unread, but saying what it is (often a .DS_Store named like an image) helps. */
async function describeHiddenFiles(root: string, skipped: SkippedFile[]): Promise<void> {
  for (const entry of skipped) {
    if (entry.reason !== 'hidden' || entry.detail !== 'hidden file') continue;
    try {
      const bytes = await readFileHead(path.join(root, entry.path), 512);
      const kind = bytes.length === 0 ? 'empty' : sniffFormat(bytes) ? `a ${sniffFormat(bytes)!.toUpperCase()} image` : describeNonImage(bytes);
      entry.detail = `hidden file (${kind})`;
    } catch (error) {
      // Not a regular file, or unreadable: say so, without ever opening a FIFO or a device.
      if (error instanceof DecodeError) entry.detail = `hidden file (${error.message})`;
    }
  }
}

/** Pairs listed in the text summary; --json lists them all. */
const LISTED_PAIRS = 50;

/**
 * The summary as people read it: counts, skips, duplicates, near-duplicates, conflicts and sizes, and with a split,
 * what it puts on both sides; control characters in names escaped.
 */
export function formatScanReport(report: ScanReport, leaks?: SplitLeaks & { csv: string }): string {
  const lines: string[] = [];
  const pad = (s: string | number, n: number) => String(s).padStart(n);
  const show = escapeControl;
  lines.push(`${show(report.root)} (${report.layout})`);
  lines.push(`${report.files} files: ${report.images} images, ${report.skipped.length} skipped`);
  lines.push('', 'class            images  sizes');
  for (const [label, count] of Object.entries(report.classes)) {
    const sizes = Object.entries(report.sizes[label] ?? {})
      .sort((a, b) => b[1] - a[1])
      .map(([s, n]) => `${s}: ${n}`)
      .join(', ');
    lines.push(`${show(label).padEnd(16)} ${pad(count, 6)}  ${sizes}`);
  }
  if (report.skipped.length > 0) {
    lines.push('', `skipped (${report.skipped.length}):`);
    for (const s of report.skipped) lines.push(`  ${show(s.path)}  [${s.reason}] ${show(s.detail)}`);
  }
  const dupFiles = report.duplicates.reduce((n, g) => n + g.paths.length, 0);
  lines.push('', `duplicates: ${report.duplicates.length} groups of byte-identical files (${dupFiles} files)`);
  for (const g of report.duplicates) lines.push(`  ${g.sha256.slice(0, 12)}  ${g.paths.map(show).join('  ')}`);
  lines.push(`conflicts: ${report.conflicts.length} duplicate groups whose labels differ`);
  for (const g of report.conflicts) lines.push(`  ${g.sha256.slice(0, 12)}  ${g.paths.map((p, i) => `${show(p)} (${show(g.labels[i])})`).join('  ')}`);
  const near = report.near_duplicates;
  const pairLine = (p: NearDuplicatePair, parts?: string[]) =>
    `  ${pad(p.distance, 3)}  ${p.paths.map((f, i) => `${show(f)} (${show(p.labels[i])}${parts ? `, ${parts[i]}` : ''})`).join('  ')}`;
  const listPairs = (pairs: (NearDuplicatePair & { parts?: string[] })[], total = pairs.length) => {
    for (const p of pairs.slice(0, LISTED_PAIRS)) lines.push(pairLine(p, p.parts));
    const more = total - LISTED_PAIRS;
    if (more > 0) lines.push(`  … ${more} more (--json lists ${total > MAX_NEAR_PAIRS ? `the first ${MAX_NEAR_PAIRS}` : 'them all'})`);
  };
  lines.push(
    '',
    `near-duplicates: ${near.total} pairs of images that are not byte-identical but look alike (perceptual hash ${near.method}: distance ≤ ${near.threshold} of ${near.bits} bits)`,
  );
  listPairs(near.pairs, near.total);
  lines.push(`near-duplicate conflicts: ${near.conflicts} pairs whose labels differ`);
  listPairs(
    near.pairs.filter((p) => p.labels[0] !== p.labels[1]),
    near.conflicts,
  );
  if (leaks) {
    const listed = leaks.duplicates.length + leaks.near_duplicates.length;
    lines.push('', `split ${show(leaks.csv)}: ${listed === 0 ? 'no' : listed} duplicates or near-duplicates across its parts`);
    lines.push(`  duplicate groups across parts: ${leaks.duplicates.length}`);
    for (const g of leaks.duplicates)
      lines.push(`  ${g.sha256.slice(0, 12)}  ${g.paths.map((p, i) => `${show(p)} (${g.parts[i] ?? 'not in the split'})`).join('  ')}`);
    lines.push(`  near-duplicate pairs across parts: ${leaks.near_duplicates.length}`);
    listPairs(leaks.near_duplicates);
    if (leaks.unlisted > 0) lines.push(`  ${leaks.unlisted} images are not in the split`);
  }
  return lines.join('\n');
}
