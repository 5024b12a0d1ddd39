import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { type Classification, loadClassifier } from '../../api/classifier.js';
import { CliError, printJson } from '../output.js';
import { progressBar } from '../progress.js';
import { classifierOptions, modelOption, parsePositiveInt } from './shared.js';

/** Expands directories (recursively, skipping hidden entries) into files; files are kept as given. */
export async function expandInputs(inputs: string[]): Promise<string[]> {
  const files: string[] = [];
  for (const input of inputs) {
    const info = await stat(input).catch(() => undefined);
    if (!info) throw new CliError(`${input}: no such file or directory`);
    if (!info.isDirectory()) {
      files.push(input);
      continue;
    }
    const entries = (await readdir(input, { withFileTypes: true })).filter((e) => !e.name.startsWith('.')).sort((a, b) => (a.name < b.name ? -1 : 1));
    files.push(...(await expandInputs(entries.map((e) => path.join(input, e.name)))));
  }
  return files;
}

const csvField = (value: string) => (/[",\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value);

export function registerPredict(program: Command): void {
  const command = program
    .command('predict')
    .description('classify single-cell images (files or folders) with calibrated probabilities and an uncertainty flag')
    .argument('<inputs...>', 'image files or folders of them')
    .option('-k, --top-k <k>', 'labels to report per image', parsePositiveInt, 3)
    .option('--batch-size <n>', 'images per forward pass', parsePositiveInt, 32)
    .option('--json', 'print one JSON document on stdout')
    .option('--csv', 'print CSV on stdout');
  modelOption(command).action(async (inputs: string[], options) => {
    if (options.json && options.csv) throw new CliError('choose one of --json and --csv', 2);
    const files = await expandInputs(inputs);
    if (files.length === 0) throw new CliError('no files to classify in the given folders');
    const classifier = await loadClassifier(options.model, classifierOptions(options));
    const bar = progressBar('classifying', files.length);
    const results: (Classification | { error: string })[] = [];
    for (let start = 0; start < files.length; start += options.batchSize) {
      results.push(...(await classifier.classifyBatch(files.slice(start, start + options.batchSize), { topK: options.topK, batchSize: options.batchSize })));
      bar.update(results.length);
    }
    bar.stop();
    const rows = files.map((file, i) => ({ file, ...results[i] }));
    const failed = rows.filter((r) => 'error' in r).length;
    if (options.json) {
      printJson({ model: classifier.metadata.architecture, uncertainty_threshold: classifier.uncertaintyThreshold, results: rows, failed });
    } else if (options.csv) {
      process.stdout.write(`file,label,score,uncertain,top_k,error\n`);
      for (const r of rows) {
        if ('error' in r) process.stdout.write(`${csvField(r.file)},,,,,${csvField(r.error)}\n`);
        else process.stdout.write(`${csvField(r.file)},${r.predictions[0].label},${r.predictions[0].score.toFixed(4)},${r.uncertain},${csvField(r.predictions.map((p) => `${p.label}:${p.score.toFixed(4)}`).join(' '))},\n`);
      }
    } else {
      const width = Math.min(60, Math.max(4, ...files.map((f) => f.length)));
      for (const r of rows) {
        const name = r.file.length > width ? `…${r.file.slice(-width + 1)}` : r.file.padEnd(width);
        if ('error' in r) process.stdout.write(`${name}  ERROR ${r.error}\n`);
        else process.stdout.write(`${name}  ${r.predictions.map((p) => `${p.label} ${(100 * p.score).toFixed(1)}%`).join('  ')}${r.uncertain ? '  [uncertain]' : ''}\n`);
      }
    }
    if (failed > 0) {
      process.stderr.write(`hemato: ${failed} of ${files.length} files could not be classified (see their errors)\n`);
      process.exitCode = 1;
    }
    classifier.dispose();
  });
}
