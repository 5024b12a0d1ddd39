import { lstat } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_GEOMETRY, toModelGeometry, validateGeometry } from '../../data/geometry.js';
import { escapeControl, readFailure, readRegularFile } from '../../data/files.js';
import { DecodeError, readImageFile } from '../../data/image.js';
import { MAX_INPUT_SIZE } from '../../models/io.js';
import { renderContactSheet } from '../../preprocess/contact-sheet.js';
import { Mpm, type MpmConfigInput, resolveMpmConfig } from '../../preprocess/mpm.js';
import { CliError, prepareOutputDir, printJson, writeOutput } from '../output.js';
import { MAX_FILE_SIZE_HELP, parseFileSize } from './shared.js';

interface PreprocessOptions {
  out: string;
  size: string;
  field: string;
  config?: string;
  maxFileSize?: number;
  json?: boolean;
}

export function registerPreprocess(program: Command): void {
  program
    .command('preprocess')
    .argument('<images...>', 'image files to show')
    .description('write a PNG contact sheet per image: the model-size input, each MPM stage and the final result')
    .requiredOption('--out <dir>', 'folder for the contact sheets (created if missing); <name>.mpm.png, <name>-2.mpm.png, … when names repeat')
    .option('--size <px>', 'working size the model sees', String(DEFAULT_GEOMETRY.size))
    .option('--field <px|none>', 'centred square field cut before resizing; "none" takes the largest centred square', String(DEFAULT_GEOMETRY.field))
    .option('--config <file>', 'JSON file with MPM settings (any subset of the config; the rest are defaults)')
    .option('--max-file-size <size>', MAX_FILE_SIZE_HELP, parseFileSize)
    .option('--json', 'print one JSON document on stdout')
    .action(async (images: string[], options: PreprocessOptions) => {
      const geometry = parseGeometry(options.size, options.field);
      const mpm = await Mpm.create(await readMpmConfig(options.config));
      await prepareOutputDir(options.out, '--out');
      const written: { image: string; sheet: string; replaced: boolean }[] = [];
      const failed: { image: string; error: string }[] = [];
      const names = sheetNames(images);
      for (const [i, file] of images.entries()) {
        try {
          const prepared = await toModelGeometry(await readImageFile(file, { maxFileBytes: options.maxFileSize }), geometry);
          const title = `${file}  (${geometry.field ?? 'square'} px field → ${geometry.size} px)`;
          const sheet = path.join(options.out, names[i]);
          // A sheet from an earlier run is replaced, and said so.
          const replaced = await lstat(sheet).then(
            () => true,
            () => false,
          );
          await writeOutput(sheet, await renderContactSheet(mpm.stages(prepared), { title }), true);
          written.push({ image: file, sheet, replaced });
          if (!options.json) process.stdout.write(`${escapeControl(sheet)}${replaced ? '  (replaced the earlier sheet)' : ''}\n`);
        } catch (error) {
          if (!(error instanceof DecodeError)) throw error;
          failed.push({ image: file, error: error.message });
          process.stderr.write(`hemato: skipped ${escapeControl(file)}: ${escapeControl(error.message)}\n`);
        }
      }
      if (options.json) printJson({ config: mpm.config, geometry, written, failed });
      if (failed.length > 0) process.exitCode = 1;
    });
}

/** One sheet name per input, <base>.mpm.png, with -2, -3, … where bases repeat (also by case, for macOS and Windows). */
export function sheetNames(images: readonly string[]): string[] {
  const taken = new Set<string>();
  return images.map((file) => {
    const base = path.basename(file, path.extname(file));
    let name = `${base}.mpm.png`;
    for (let n = 2; taken.has(name.toLowerCase()); n++) name = `${base}-${n}.mpm.png`;
    taken.add(name.toLowerCase());
    return name;
  });
}

/** --size and --field: a size no model takes would only cost minutes (the MPM at 4096 px). */
export function parseGeometry(size: string, field: string) {
  if (Number(size) > MAX_INPUT_SIZE) throw new CliError(`--size must be at most ${MAX_INPUT_SIZE} px, the largest input a hemato model takes`, 2);
  try {
    return validateGeometry({ size: Number(size), field: field === 'none' ? null : Number(field) });
  } catch (error) {
    throw new CliError(`${(error as Error).message} (--size, --field)`, 2);
  }
}

/** An MPM settings file (JSON), or none: the defaults. Its settings are checked here, so a mistake names the file. */
export async function readMpmConfig(file: string | undefined): Promise<MpmConfigInput> {
  if (!file) return {};
  let config: MpmConfigInput;
  try {
    config = JSON.parse((await readRegularFile(file)).toString('utf8')) as MpmConfigInput;
  } catch (error) {
    throw new CliError(`cannot read MPM config ${file}: ${readFailure(error)}`);
  }
  try {
    resolveMpmConfig(config);
  } catch (error) {
    throw new CliError(`${file}: ${(error as Error).message}`, 2);
  }
  return config;
}
