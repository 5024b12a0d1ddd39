import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { DEFAULT_GEOMETRY, toModelGeometry, validateGeometry } from '../../data/geometry.js';
import { DecodeError, readImageFile } from '../../data/image.js';
import { renderContactSheet } from '../../preprocess/contact-sheet.js';
import { Mpm, type MpmConfigInput } from '../../preprocess/mpm.js';
import { CliError, printJson } from '../output.js';

interface PreprocessOptions {
  out: string;
  size: string;
  field: string;
  config?: string;
  json?: boolean;
}

export function registerPreprocess(program: Command): void {
  program
    .command('preprocess')
    .argument('<images...>', 'image files to show')
    .description('write a PNG contact sheet per image: the model-size input, each MPM stage and the final result')
    .requiredOption('--out <dir>', 'folder for the contact sheets (created if missing)')
    .option('--size <px>', 'working size the model sees', String(DEFAULT_GEOMETRY.size))
    .option('--field <px|none>', 'centred square field cut before resizing; "none" takes the largest centred square', String(DEFAULT_GEOMETRY.field))
    .option('--config <file>', 'JSON file with MPM settings (any subset of the config; the rest are defaults)')
    .option('--json', 'print one JSON document on stdout')
    .action(async (images: string[], options: PreprocessOptions) => {
      const geometry = parseGeometry(options.size, options.field);
      const mpm = await Mpm.create(await readConfig(options.config));
      await mkdir(options.out, { recursive: true });
      const written: { image: string; sheet: string }[] = [];
      const failed: { image: string; error: string }[] = [];
      for (const file of images) {
        try {
          const prepared = await toModelGeometry(await readImageFile(file), geometry);
          const title = `${file}  (${geometry.field ?? 'square'} px field → ${geometry.size} px)`;
          const sheet = path.join(options.out, `${path.basename(file, path.extname(file))}.mpm.png`);
          await writeFile(sheet, await renderContactSheet(mpm.stages(prepared), { title }));
          written.push({ image: file, sheet });
          if (!options.json) process.stdout.write(`${sheet}\n`);
        } catch (error) {
          if (!(error instanceof DecodeError)) throw error;
          failed.push({ image: file, error: error.message });
          process.stderr.write(`hemato: skipped ${file}: ${error.message}\n`);
        }
      }
      if (options.json) printJson({ config: mpm.config, geometry, written, failed });
      if (failed.length > 0) process.exitCode = 1;
    });
}

export function parseGeometry(size: string, field: string) {
  try {
    return validateGeometry({ size: Number(size), field: field === 'none' ? null : Number(field) });
  } catch (error) {
    throw new CliError(`${(error as Error).message} (--size, --field)`, 2);
  }
}

async function readConfig(file: string | undefined): Promise<MpmConfigInput> {
  if (!file) return {};
  try {
    return JSON.parse(await readFile(file, 'utf8')) as MpmConfigInput;
  } catch (error) {
    throw new CliError(`cannot read MPM config ${file}: ${(error as Error).message}`);
  }
}
