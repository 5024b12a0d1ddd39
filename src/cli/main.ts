import { Command, CommanderError } from 'commander';
import { registerDoctor } from './commands/doctor.js';
import { registerScan } from './commands/scan.js';
import { registerPreprocess } from './commands/preprocess.js';
import { registerSplit } from './commands/split.js';
import { registerPack } from './commands/pack.js';
import { registerPredict } from './commands/predict.js';
import { registerExplain } from './commands/explain.js';
import { registerEval } from './commands/eval.js';
import { registerTrain } from './commands/train.js';
import { registerCalibrate } from './commands/calibrate.js';
import { registerBundle } from './commands/bundle.js';
import { registerInfo } from './commands/info.js';
import { registerServe } from './commands/serve.js';
import { CliError } from './output.js';
import { HEMATO_VERSION } from '../api/model-info.js';

/** Builds the `hemato` program. Each command lives in its own module under commands/. */
export function buildProgram(): Command {
  const program = new Command('hemato')
    .description(
      'Classify single blood-cell images (8 classes) on libtorch, with the bundled ConvNeXt model or one you train (ConvNeXt, Swin or both in the dual-path network).',
    )
    .version(HEMATO_VERSION, '-V, --version')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerDoctor(program);
  registerScan(program);
  registerPreprocess(program);
  registerSplit(program);
  registerPack(program);
  registerPredict(program);
  registerExplain(program);
  registerEval(program);
  registerTrain(program);
  registerCalibrate(program);
  registerBundle(program);
  registerInfo(program);
  registerServe(program);
  return program;
}

/** Runs the CLI and returns the process exit code: 0 success, 1 failure, 2 usage error. */
export async function main(argv: string[]): Promise<number> {
  stopWhenOutputCloses();
  try {
    await buildProgram().parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 2;
    if (error instanceof CliError) {
      process.stderr.write(`hemato: ${error.message}\n`);
      return error.exitCode;
    }
    process.stderr.write(`hemato: ${error instanceof Error ? error.message : String(error)}\n`);
    if (process.env.HEMATO_DEBUG && error instanceof Error) process.stderr.write(`${error.stack}\n`);
    return 1;
  }
}

let watchingOutput = false;

/**
 * When the reader of standard output goes away (`hemato predict … | head`), stops at once and quietly with 141, as
 * a program ended by SIGPIPE does, instead of failing with a stack trace. A training run stopped this way leaves
 * its last checkpoint, and its lock is taken over by the next run.
 */
function stopWhenOutputCloses(): void {
  if (watchingOutput) return;
  watchingOutput = true;
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(141);
    throw error;
  });
}
