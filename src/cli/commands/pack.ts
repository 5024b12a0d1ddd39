import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { listDataset, noLabelledImages, PBC_CLASSES, type SkippedFile } from '../../data/dataset.js';
import { DEFAULT_GEOMETRY } from '../../data/geometry.js';
import { escapeControl } from '../../data/files.js';
import { isPackFile, type PackItem, writePack } from '../../data/pack.js';
import { BLOB_CODECS, type BlobCodec, isLossy } from '../../data/prepare.js';
import { progressReporter } from '../progress.js';
import { readSplit } from '../../data/split.js';
import { resolveMpmConfig } from '../../preprocess/mpm.js';
import { CliError, prepareOutputFile, printJson, refuseOutputOverInput } from '../output.js';
import { parseGeometry, readMpmConfig } from './preprocess.js';
import { addSourceOptions, resolveSource, type SourceOptions } from './scan.js';
import { parseThreadCount } from './shared.js';

interface PackOptions extends SourceOptions {
  out: string;
  split?: string;
  size: string;
  field: string;
  mpm?: boolean;
  mpmConfig?: string;
  /** false with --no-scale. */
  scale: boolean;
  codec: string;
  quality: string;
  threads?: number;
  json?: boolean;
}

export function registerPack(program: Command): void {
  addSourceOptions(
    program
      .command('pack')
      .argument('[dir]', 'data set folder: one sub-folder per class, or the images folder of --split (or give --images DIR --labels CSV)')
      .description('decode, cut the centred field, resize (and optionally apply MPM) once, and write one compact pack file to train from'),
  )
    .requiredOption('--out <file>', 'the pack file to write; an existing one is replaced only once the new one is complete')
    .option('--split <file.csv>', 'a split from hemato split: its files, labels and parts, and its hash, go into the pack')
    .option('--size <px>', 'side of the square images in the pack, a multiple of 32', String(DEFAULT_GEOMETRY.size))
    .option('--field <px|none>', 'centred square field cut before resizing; "none" takes the largest centred square', String(DEFAULT_GEOMETRY.field))
    .option('--mpm', 'apply the Multi-scale Preprocessing Module before encoding')
    .option('--no-scale', "take the files' pixels as they are, instead of bringing every image to the training part's red-cell scale and background colour")
    .option('--mpm-config <file>', 'JSON file with MPM settings (implies --mpm)')
    .option(
      '--codec <codec>',
      'how each image is stored: webp-lossless, or webp/jpeg at --quality (smaller, but a model trained on them loses accuracy on originals), or png',
      'webp-lossless',
    )
    .option('--quality <q>', 'quality of the lossy codecs (webp, jpeg), 1..100', '85')
    .option('--threads <n>', 'worker threads, up to 4 × the core count (default: the core count)', parseThreadCount('--threads'))
    .option('--json', 'print one JSON document on stdout')
    .action(async (dir: string | undefined, options: PackOptions) => {
      const { source, root: dataRoot, classes: classOption, maxPixels, maxFileBytes } = await resolveSource(dir, options);
      const geometry = parseGeometry(options.size, options.field);
      // A pack is for training, and the models take only multiples of 32 (both paths reach stride 32).
      if (geometry.size % 32 !== 0) throw new CliError(`--size must be a multiple of 32 (the sizes a model trains at), got ${options.size}`, 2);
      const codec = options.codec as BlobCodec;
      if (!BLOB_CODECS.includes(codec)) throw new CliError(`--codec must be one of ${BLOB_CODECS.join(', ')}, got "${options.codec}"`, 2);
      const quality = Number(options.quality);
      if (!(Number.isInteger(quality) && quality >= 1 && quality <= 100))
        throw new CliError(`--quality must be an integer in 1..100, got "${options.quality}"`, 2);
      const mpm = options.mpm || options.mpmConfig ? resolveMpmConfig(await readMpmConfig(options.mpmConfig)) : null;
      // Checked now, not after minutes of decoding.
      const labels: [string, string | undefined] = [options.labels ? '--labels' : '--csv', options.labels ?? options.csv];
      await refuseOutputOverInput('--out', options.out, [options.out], [['--split', options.split], labels, ['--mpm-config', options.mpmConfig]]);
      const { replaces } = await prepareOutputFile(options.out);
      const earlier = replaces && ((await isPackFile(options.out)) ? 'pack' : 'file');
      const classes = classOption ?? [...PBC_CLASSES];

      let items: PackItem[];
      let skipped: SkippedFile[];
      let splitHash: string | null = null;
      if (options.split) {
        const split = await readSplit(options.split).catch((error: Error) => {
          throw new CliError(error.message);
        });
        const root = path.resolve(dataRoot);
        items = split.rows.map((r) => ({ file: r.file, path: path.join(root, r.file), label: r.label, part: r.part }));
        splitHash = split.hash;
        skipped = [];
      } else {
        const listing = await listDataset(source, { classes, maxFileBytes });
        if (listing.items.length === 0) throw new CliError(noLabelledImages(listing.root, listing.skipped.length, classes));
        items = listing.items;
        skipped = listing.skipped;
      }
      const unknown = items.find((i) => !classes.includes(i.label));
      if (unknown) throw new CliError(`${unknown.file}: label "${unknown.label}" is not one of the classes (${classes.join(', ')}); pass --classes`);

      const progress = progressReporter('pack');
      const started = performance.now();
      const header = await writePack(items, options.out, {
        classes,
        geometry,
        mpm,
        ...(options.scale === false ? { reference: null } : {}),
        codec,
        quality,
        threads: options.threads,
        maxPixels,
        maxFileBytes,
        splitHash,
        source: path.resolve(dataRoot),
        skipped,
        onProgress: progress.update,
      }).finally(() => progress.stop());
      const bytes = (await stat(options.out)).size;
      const summary = {
        pack: options.out,
        bytes,
        mib: Math.round((bytes / 2 ** 20) * 100) / 100,
        images: header.count,
        size: header.size,
        codec,
        quality,
        mpm: header.mpm !== null,
        splitHash,
        replaced: replaces,
        seconds: Math.round((performance.now() - started) / 100) / 10,
        skipped: header.skipped,
      };
      if (options.json) printJson(summary);
      else {
        process.stdout.write(
          `${escapeControl(options.out)}: ${header.count} images at ${header.size} px, ${codec}${isLossy(codec) ? ` q${quality}` : ''}${mpm ? ', MPM' : ''}, ${summary.mib} MiB in ${summary.seconds} s${earlier ? ` (replaced the earlier ${earlier})` : ''}\n`,
        );
        for (const s of header.skipped) process.stdout.write(`  skipped ${escapeControl(s.path)}  [${s.reason}] ${escapeControl(s.detail)}\n`);
      }
    });
}
