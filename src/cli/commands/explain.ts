import { lstat } from 'node:fs/promises';
import path from 'node:path';
import { type Command, InvalidArgumentError } from 'commander';
import { BUNDLED_MODEL, loadClassifier, type UncertainReason } from '../../api/classifier.js';
import { checkExplainOptions, DEFAULT_EXPLAIN_STAGE, EXPLAIN_PATHS, type ExplainPath, overlayPng } from '../../api/explain.js';
import { modelInfo } from '../../api/model-info.js';
import { escapeControl, listFirst } from '../../data/files.js';
import { DecodeError } from '../../data/image.js';
import { CliError, nameColumn, prepareOutputDir, printJson, writeOutput } from '../output.js';
import { progressBar } from '../progress.js';
import { expandInputs } from './predict.js';
import { classifierOptions, MAX_FILE_SIZE_HELP, modelOption, notForCommand, parseChoice, parseFileSize } from './shared.js';

type Row =
  | { file: string; label: string; score: number; uncertain: boolean; reasons: UncertainReason[]; overlay: string }
  | { file: string; error: string; code?: string };

/** Options of modelOption() that classification uses and an explanation does not: refused, and left out of --help. */
const NOT_FOR_EXPLAIN: Record<string, string> = {
  precision: '--precision does not apply: explanations always run in fp32',
  tta: '--tta does not apply: an explanation is of one view',
};

export function registerExplain(program: Command): void {
  const command = program
    .command('explain')
    .description(
      "write, per image, a PNG of the model's input with a class activation map (Grad-CAM with per-position gradients) over it: where the evidence for the label lies",
    )
    .argument('<inputs...>', 'image files or folders of them')
    .requiredOption('--out <dir>', 'folder for the overlays (created if missing): <name>.cam.png, <name>-2.cam.png, … when names repeat')
    .option('--label <label>', "the class to explain (default: each image's top predicted class)")
    .option(
      '--path <path>',
      'dual-path models: the path to take gradients at, convnext, swin or fused (both)',
      parseChoice(EXPLAIN_PATHS),
      'fused' as ExplainPath,
    )
    .option('--stage <n|last>', `the stage whose map is explained, from 0, or last (default: ${DEFAULT_EXPLAIN_STAGE}, stride 8)`, parseStage)
    .option('--overwrite', 'replace overlays already in --out (otherwise their presence is an error)')
    .option('--json', 'print one JSON document on stdout')
    .option('--max-file-size <size>', MAX_FILE_SIZE_HELP, parseFileSize);
  modelOption(command);
  const refuseUnused = notForCommand(command, NOT_FOR_EXPLAIN);
  command.action(async (inputs: string[], options) => {
    refuseUnused();
    const { files, skipped } = await expandInputs(inputs, { maxFileBytes: options.maxFileSize });
    for (const s of skipped) process.stderr.write(`hemato: skipped ${escapeControl(s.file)}: ${escapeControl(s.error)}\n`);
    if (files.length === 0) throw new CliError('no files to explain in the given inputs');
    const out = await prepareOutputDir(options.out, '--out');
    const targets = overlayNames(files).map((name) => path.join(out, name));
    if (!options.overwrite) {
      const existing = (
        await Promise.all(
          targets.map((t) =>
            lstat(t).then(
              () => t,
              () => null,
            ),
          ),
        )
      ).filter((t): t is string => t !== null);
      if (existing.length > 0) {
        throw new CliError(`--out already holds ${listFirst(existing.map(escapeControl))}; pass --overwrite to replace them, or choose another --out`);
      }
    }
    const classifier = await loadClassifier(options.model, { ...classifierOptions(options), precision: 'fp32' });
    try {
      const explainOptions = { label: options.label as string | undefined, path: options.path as ExplainPath, stage: options.stage as number | undefined };
      let resolved;
      try {
        resolved = checkExplainOptions(classifier, explainOptions);
      } catch (error) {
        if (error instanceof RangeError) throw new CliError(`${error.message} (--label, --path, --stage)`, 2);
        throw error;
      }
      const bar = progressBar('explaining', files.length);
      const rows: Row[] = [];
      for (const [i, file] of files.entries()) {
        try {
          const explanation = await classifier.explain(file, explainOptions);
          await writeOutput(targets[i], await overlayPng(explanation), options.overwrite === true);
          const { label, score, uncertain, reasons } = explanation;
          rows.push({ file, label, score, uncertain, reasons, overlay: targets[i] });
        } catch (error) {
          const code = (error as { code?: string }).code;
          if (!(error instanceof DecodeError) && code !== 'non-finite-output') throw error;
          rows.push({ file, error: (error as Error).message, code });
        }
        bar.update(i + 1);
      }
      bar.stop();
      const failed = rows.filter((r) => 'error' in r).length;
      if (options.json) {
        printJson({
          model: classifier.metadata.architecture,
          model_info: await modelInfo(options.model ?? BUNDLED_MODEL),
          path: resolved.path,
          stage: resolved.stage,
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
              `${name}  ${r.label} ${(100 * r.score).toFixed(1)}%${r.uncertain ? `  [uncertain: ${r.reasons.join(', ')}]` : ''}  → ${escapeControl(r.overlay)}\n`,
            );
        }
      }
      if (failed + skipped.length > 0) {
        process.stderr.write(`hemato: ${failed + skipped.length} of ${files.length + skipped.length} files could not be explained (see their errors)\n`);
        process.exitCode = 1;
      }
    } finally {
      classifier.dispose();
    }
  });
}

function parseStage(value: string): number {
  if (value === 'last') return -1;
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) throw new InvalidArgumentError("expected a stage number from 0, or 'last'");
  return n;
}

/** One overlay name per input, <base>.cam.png, with -2, -3, … where bases repeat (also by case, for macOS and Windows). */
export function overlayNames(files: readonly string[]): string[] {
  const taken = new Set<string>();
  return files.map((file) => {
    const base = path.basename(file, path.extname(file));
    let name = `${base}.cam.png`;
    for (let n = 2; taken.has(name.toLowerCase()); n++) name = `${base}-${n}.cam.png`;
    taken.add(name.toLowerCase());
    return name;
  });
}
