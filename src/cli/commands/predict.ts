import { type Command, InvalidArgumentError } from 'commander';
import { BUNDLED_MODEL, type Classification, type ClassificationError, loadClassifier } from '../../api/classifier.js';
import { type ModelIdentity, modelInfo } from '../../api/model-info.js';
import { blockRange } from '../../data/batches.js';
import { DEFAULT_MAX_FILE_BYTES, escapeControl, inspectPath, sizeText, walkFolder } from '../../data/files.js';
import { CliError, nameColumn, printJson } from '../output.js';
import { progressBar } from '../progress.js';
import { classifierOptions, MAX_FILE_SIZE_HELP, modelOption, parseFileSize, parseBatchSize, parsePositiveInt } from './shared.js';

export interface ExpandedInputs {
  files: string[];
  /** Inputs or folder entries that cannot be read as files, with the real reason. */
  skipped: { file: string; error: string }[];
}

/** The input that names standard input, as in most command-line tools (a file named "-" is ./-). */
export const STANDARD_INPUT = '-';

/**
 * Expands folders (recursively, links followed, hidden entries passed over) into regular files; files, and "-" for
 * standard input, are kept as given. An input or entry that cannot be used (missing, a FIFO or device, over the size
 * limit, a dangling link, a link loop, an unreadable folder, a path too long) is skipped with its reason, and the
 * rest go on.
 */
export async function expandInputs(inputs: string[], options: { maxFileBytes?: number } = {}): Promise<ExpandedInputs> {
  const expanded: ExpandedInputs = { files: [], skipped: [] };
  for (const input of inputs) {
    if (input === STANDARD_INPUT) {
      expanded.files.push(input);
      continue;
    }
    const info = await inspectPath(input, options.maxFileBytes);
    if (info.kind === 'file') expanded.files.push(input);
    else if (info.kind === 'skip') expanded.skipped.push({ file: input, error: info.error.message });
    else {
      const found = await walkFolder(input, input, { maxBytes: options.maxFileBytes });
      // One push per entry: spreading a folder of 120,000 or more into push() overflows the stack.
      for (const file of found.files) expanded.files.push(file.path);
      for (const skip of found.skipped) expanded.skipped.push({ file: skip.path, error: skip.detail });
    }
  }
  return expanded;
}

/** All of standard input, refused past `maxBytes` as a file would be, and when it is a terminal rather than an image. */
async function readStandardInput(maxBytes = DEFAULT_MAX_FILE_BYTES): Promise<Buffer> {
  if (process.stdin.isTTY)
    throw new CliError('- reads an image from standard input, which is a terminal here: pipe or redirect one, as in hemato predict - < cell.jpg', 2);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) {
      process.stdin.destroy();
      throw new CliError(`standard input is over the ${sizeText(maxBytes)} limit; raise --max-file-size only if the image is trusted`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/** One of N equal parts of a list: I counts from 1. */
export interface Shard {
  index: number;
  count: number;
}

/** --shard I/N: integers with 1 ≤ I ≤ N. */
export function parseShard(value: string): Shard {
  const match = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(value);
  const [index, count] = match ? [Number(match[1]), Number(match[2])] : [NaN, NaN];
  if (!(index >= 1 && count >= 1 && index <= count && Number.isSafeInteger(count)))
    throw new InvalidArgumentError('expected I/N with 1 ≤ I ≤ N, e.g. 2/4 for the second of four parts');
  return { index, count };
}

/** Shard I's contiguous block of the list: the first (length mod N) blocks are one item longer. */
export function shardOf<T>(items: readonly T[], shard: Shard): T[] {
  return items.slice(...blockRange(items.length, shard.index - 1, shard.count));
}

// CSV and JSON keep names exactly (quoted); only the table for people escapes control characters.
const csvField = (value: string) => (/[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value);

type Row = { file: string } & (Classification | ClassificationError);

/** A line-per-image format: its header (or ''), an image's line, and an input's line skipped outright. */
interface LineFormat {
  header: string;
  row: (r: Row) => string;
  skipped: (s: { file: string; error: string }) => string;
}

/** One JSON document per line; each names the model that made it. */
function jsonlLines(info: ModelIdentity): LineFormat {
  const model = { model: info.name, model_sha256: info.sha256, hemato_version: info.hemato_version };
  return {
    header: '',
    row: (r) => `${JSON.stringify({ ...r, ...model })}\n`,
    skipped: (s) => `${JSON.stringify({ file: s.file, error: `skipped: ${s.error}`, ...model })}\n`,
  };
}

/** CSV; each row names the model that made it, so that rows copied elsewhere keep their provenance. */
function csvLines(info: ModelIdentity, withHeader: boolean): LineFormat {
  const model = `${csvField(info.name)},${info.sha256},${info.hemato_version}`;
  return {
    header: withHeader ? 'file,label,score,uncertain,top_k,error,reasons,scale_source,um_per_px,scale_factor,stain,model,model_sha256,hemato_version\n' : '',
    row: (r) => {
      if ('error' in r) return `${csvField(r.file)},,,,,${csvField(r.error)},,,,,,${model}\n`;
      const top = r.predictions.map((p) => `${p.label}:${p.score.toFixed(4)}`).join(' ');
      const scale = `${r.scale.source},${r.scale.um_per_px?.toFixed(4) ?? ''},${r.scale.factor.toFixed(4)},${r.stain}`;
      return `${csvField(r.file)},${r.predictions[0].label},${r.predictions[0].score.toFixed(4)},${r.uncertain},${csvField(top)},,${r.reasons.join(' ')},${scale},${model}\n`;
    },
    skipped: (s) => `${csvField(s.file)},,,,,${csvField(`skipped: ${s.error}`)},,,,,,${model}\n`,
  };
}

export function registerPredict(program: Command): void {
  const command = program
    .command('predict')
    .description('classify single-cell images (files or folders) with calibrated probabilities and an uncertainty flag')
    .argument('<inputs...>', 'image files or folders of them; - reads one image from standard input')
    .option('-k, --top-k <k>', 'labels to report per image', parsePositiveInt, 3)
    .option('--batch-size <n>', 'images per forward pass', parseBatchSize, 32)
    .option('--json', 'print one JSON document on stdout')
    .option('--csv', "print CSV on stdout, each batch's rows as soon as it is done")
    .option(
      '--jsonl',
      "print one JSON line per image on stdout, each batch's as soon as it is done (then one per entry skipped outright), so that shards concatenate",
    )
    .option(
      '--shard <I/N>',
      "classify only the I-th of N contiguous blocks of the file list (inputs in the order given, each folder's files sorted by name); " +
        'the --csv or --jsonl outputs of shards 1…N, concatenated in order, are those of one process (the CSV header comes with shard 1; entries skipped outright, such as special files or files over --max-file-size, with shard N; --jsonl scores can differ in their last digits, since the shards batch the images differently)',
      parseShard,
    )
    .option('--max-file-size <size>', MAX_FILE_SIZE_HELP, parseFileSize);
  modelOption(command).action(async (inputs: string[], options) => {
    if ([options.json, options.csv, options.jsonl].filter(Boolean).length > 1) throw new CliError('choose one of --json, --csv and --jsonl', 2);
    if (inputs.filter((input) => input === STANDARD_INPUT).length > 1) throw new CliError('- (standard input) can be given once', 2);
    const shard: Shard = options.shard ?? { index: 1, count: 1 };
    const expanded = await expandInputs(inputs, { maxFileBytes: options.maxFileSize });
    const files = shardOf(expanded.files, shard);
    // Entries skipped outright are the last shard's to report, as one process reports them after the rest.
    const skipped = shard.index === shard.count ? expanded.skipped : [];
    for (const s of skipped) process.stderr.write(`hemato: skipped ${escapeControl(s.file)}: ${escapeControl(s.error)}\n`);
    // With nothing to classify the chosen format still prints its document (no results, the skipped inputs), so
    // that scripts parsing stdout need no special case; the error and the exit status come after it.
    const nothing = expanded.files.length === 0;
    if (shard.count > 1) process.stderr.write(`hemato: shard ${shard.index}/${shard.count}: ${files.length} of ${expanded.files.length} files\n`);
    // Read before the model loads, so that a terminal or an oversized input is refused at once.
    const images = files.includes(STANDARD_INPUT) ? await withStandardInput(files, options.maxFileSize) : files;
    const classifier = await loadClassifier(options.model, classifierOptions(options));
    const info = options.json || options.jsonl || options.csv ? await modelInfo(options.model ?? BUNDLED_MODEL) : undefined;
    // --jsonl and --csv rows are written as each batch is done: an interrupted run keeps what it classified.
    const write = info && (options.jsonl ? jsonlLines(info) : options.csv ? csvLines(info, shard.index === 1) : undefined);
    if (write) process.stdout.write(write.header);
    const bar = progressBar('classifying', files.length);
    const results = await classifier.classifyBatch(images, {
      topK: options.topK,
      batchSize: options.batchSize,
      onProgress: (done) => bar.update(done),
      onResults: write ? (batch, start) => process.stdout.write(batch.map((r, i) => write.row({ file: files[start + i], ...r })).join('')) : undefined,
    });
    bar.stop();
    const rows = files.map((file, i) => ({ file, ...results[i] }));
    const failed = rows.filter((r) => 'error' in r).length;
    if (write) {
      for (const s of skipped) process.stdout.write(write.skipped(s));
    } else if (options.json) {
      printJson({
        model: classifier.metadata.architecture,
        model_info: info,
        uncertainty_threshold: classifier.uncertaintyThreshold,
        results: rows,
        failed,
        skipped,
      });
    } else {
      const names = nameColumn(files);
      for (const [i, r] of rows.entries()) {
        const name = names[i];
        if ('error' in r) process.stdout.write(`${name}  ERROR ${escapeControl(r.error)}\n`);
        else
          process.stdout.write(
            `${name}  ${r.predictions.map((p) => `${p.label} ${(100 * p.score).toFixed(1)}%`).join('  ')}${r.stain === 'raised' ? '  (pale stain raised)' : ''}${r.uncertain ? `  [uncertain: ${r.reasons.join(', ')}]` : ''}\n`,
          );
      }
    }
    classifier.dispose();
    if (nothing) {
      const why = expanded.skipped.length > 0 ? `: ${expanded.skipped.length} skipped${skipped.length > 0 ? ' (reasons above)' : ''}` : '';
      throw new CliError(`no files to classify in the given inputs${why}; give image files, or folders that contain them`);
    }
    if (failed + skipped.length > 0) {
      process.stderr.write(`hemato: ${failed + skipped.length} of ${files.length + skipped.length} files could not be classified (see their errors)\n`);
      process.exitCode = 1;
    }
  });
}

/** The inputs to classify: each path as it is, and "-" replaced by the bytes of standard input. */
async function withStandardInput(files: string[], maxBytes: number | undefined): Promise<(string | Uint8Array)[]> {
  const bytes = await readStandardInput(maxBytes);
  return files.map((file) => (file === STANDARD_INPUT ? bytes : file));
}
