import type { Command } from 'commander';
import { BUNDLE_DIR, makeBundle, SIZE_TARGET, type BundleStage } from '../../bundle/bundle.js';
import { readModelMetadata } from '../../models/io.js';
import { CliError, prepareOutputFile, printJson } from '../output.js';
import { progressBar, type Progress } from '../progress.js';

const MiB = 2 ** 20;
const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;

// The archive is always an xz-compressed tar: a name that says otherwise would mislead whoever unpacks it.
const OTHER_ARCHIVE = /\.(tar|tgz|tar\.gz|gz|tbz2?|tar\.bz2|bz2|tzst|tar\.zst|zst|zip|7z)$/i;

const LABELS: Record<BundleStage, string> = { copy: 'copying files ', node: 'compressing node', archive: 'writing archive' };

export function registerBundle(program: Command): void {
  program
    .command('bundle')
    .description('write one .tar.xz that runs hemato on an offline machine with g++ and PyTorch (node, JS, addon sources, run.sh, the bundled model)')
    .requiredOption(
      '--out <file>',
      'the archive to write, an xz-compressed tar: e.g. hemato-bundle.tar.xz; a file there is replaced once the new one is complete, and the output says so',
    )
    .option('--model <file>', 'the model file to carry instead of the bundled model (lands in app/models/)')
    .option('--no-model', 'carry no model: every command that classifies then needs a model file')
    .option('--pack <file>', 'a packed data set (file or directory) to carry (lands in data/)')
    .option('--xz-level <n>', 'xz preset 0-9 for node and the archive (0 is fastest)', '6')
    .option('--json', 'print one JSON document on stdout')
    .action(async (options: { out: string; model?: string | false; pack?: string; xzLevel: string; json?: boolean }) => {
      if (OTHER_ARCHIVE.test(options.out))
        throw new CliError(`--out ${options.out}: hemato bundle writes an xz-compressed tar: name it ${options.out.replace(OTHER_ARCHIVE, '.tar.xz')}`, 2);
      const xzLevel = Number(options.xzLevel);
      if (!/^\d$/.test(options.xzLevel)) throw new CliError(`--xz-level takes a digit 0-9, got '${options.xzLevel}'`, 2);
      // A file that is not a hemato model would only fail on the offline machine.
      if (typeof options.model === 'string')
        await readModelMetadata(options.model).catch((error: Error) => {
          throw new CliError(`--model: ${error.message}`, 2);
        });
      const { replaces } = await prepareOutputFile(options.out);
      let stage: BundleStage | undefined;
      let bar: Progress | undefined;
      let barTotal = 0;
      // Each stage's bar ends at its total, so that a log shows every stage complete.
      const finish = () => {
        bar?.update(barTotal);
        bar?.stop();
      };
      const result = await makeBundle({
        out: options.out,
        model: options.model,
        pack: options.pack,
        xzLevel,
        onProgress: (next, done, total) => {
          if (next !== stage) {
            finish();
            stage = next;
            barTotal = next === 'copy' ? total : Math.ceil(total / MiB);
            bar =
              next === 'copy'
                ? progressBar(LABELS[next], barTotal, '{bar} {percentage}% | {value}/{total} parts')
                : progressBar(LABELS[next], barTotal, '{bar} {percentage}% | {value}/{total} MiB | ETA {eta_formatted}');
          }
          bar!.update(next === 'copy' ? done : Math.min(barTotal, Math.floor(done / MiB)));
        },
      }).catch((error: unknown) => {
        bar?.stop();
        throw new CliError(`bundle: ${error instanceof Error ? error.message : String(error)}`);
      });
      finish();
      process.stderr.write(
        `bundle: ${result.out}: ${mib(result.bytes)} (${result.bytes} bytes) in ${result.seconds} s${replaces ? '; replaced the earlier archive' : ''}\n`,
      );
      if (!result.underSizeTarget) process.stderr.write(`bundle: warning: over ${mib(SIZE_TARGET)} without the model and data\n`);
      if (options.json) {
        printJson({ ...result, replaced: replaces });
      } else {
        process.stdout.write(`${result.out}  ${mib(result.bytes)}\n`);
        for (const [part, bytes] of Object.entries(result.parts))
          process.stdout.write(
            `  ${part.padEnd(13)} ${mib(bytes)}${part === 'node' ? ` (xz of ${mib(result.node.bytes)}, node ${result.node.version})` : ''}\n`,
          );
        process.stdout.write(`run it: tar -xJf ${result.out} && ./${BUNDLE_DIR}/run.sh doctor --json\n`);
      }
    });
}
