// What a data set really holds: decodable images per class, what was skipped and why, byte-identical duplicates
// (also across labels) and the image sizes per class, which must not be able to reveal the label.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { type DatasetListing, type DatasetSource, type ListOptions, type SkippedFile, compareStrings, listDataset } from './dataset.js';
import { DecodeError } from './errors.js';
import { escapeControl, readFileHead, readRegularFile } from './files.js';
import { type DecodeOptions, decodeImage, describeNonImage, sniffFormat } from './image.js';
import { mapLimit } from './pool.js';

export interface ScannedImage {
  file: string;
  label: string;
  sha256: string;
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
  /** Per class, how many images have each "W×H" size. */
  sizes: Record<string, Record<string, number>>;
  formats: Record<string, number>;
  /** One entry per decodable image, in file order. */
  entries: ScannedImage[];
}

export interface ScanOptions extends ListOptions, DecodeOptions {
  /** Files decoded at once; sharp decodes on its own threads. */
  concurrency?: number;
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
  skipped.push(...results.filter((r): r is SkippedFile => 'reason' in r));
  skipped.sort((a, b) => compareStrings(a.path, b.path));
  return summarise(listing, entries, skipped);
}

export function summarise(listing: Pick<DatasetListing, 'root' | 'layout' | 'classes'>, entries: ScannedImage[], skipped: SkippedFile[]): ScanReport {
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
    sizes,
    formats,
    entries,
  };
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

/** The summary as people read it: counts, skips, duplicates, conflicts and sizes; control characters in names escaped. */
export function formatScanReport(report: ScanReport): string {
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
  return lines.join('\n');
}
