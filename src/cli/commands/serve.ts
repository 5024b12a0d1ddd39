import { type Command, InvalidArgumentError, Option } from 'commander';
import { isIP } from 'node:net';
import { sizeText } from '../../data/files.js';
import { SERVE_DEFAULTS, SERVE_RANGES, type ServeOptions } from '../../serve/options.js';
import { CliError } from '../output.js';
import { classifierOptions, modelOption, parseFileSize, parsePort } from './shared.js';

// The server's ranges in the flags' own units, so that a refusal names the flag and what it takes.
const { maxBatch, batchWaitMs, maxBody, maxParts, maxQueue, timeoutMs } = SERVE_RANGES;

export function registerServe(program: Command): void {
  const command = program
    .command('serve')
    .description('serve the model over HTTP (POST /v1/classify, /v1/classify/batch, /v1/explain; GET /v1/model, /healthz, /metrics) and the review page at /')
    .argument('[folder]', 'a folder of images the review page may open (read-only)')
    .option('--host <host>', 'address to listen on; anything but a loopback address should have a --token', SERVE_DEFAULTS.host)
    .option('--port <port>', 'port to listen on (0: a free one)', parsePort(0), SERVE_DEFAULTS.port)
    .option('--token <token>', 'require Authorization: Bearer TOKEN on /v1/* and /metrics (default: $HEMATO_TOKEN)')
    .option('--cors <origin>', 'allow browser calls from this origin (default: none)')
    .option('--max-batch <n>', 'images per forward pass at most', wholeIn(maxBatch[0], maxBatch[1]), SERVE_DEFAULTS.maxBatch)
    .option(
      '--batch-wait-ms <ms>',
      'how long an image may wait for others to share its forward pass',
      wholeIn(batchWaitMs[0], batchWaitMs[1], 'milliseconds'),
      SERVE_DEFAULTS.batchWaitMs,
    )
    .addOption(
      new Option('--max-body <size>', 'largest request body, in MiB or with a unit (B, K, M, G)')
        .argParser(parseBodySize)
        .default(SERVE_DEFAULTS.maxBody, sizeText(SERVE_DEFAULTS.maxBody)),
    )
    .option('--max-parts <n>', 'images per batch request at most', wholeIn(maxParts[0], maxParts[1]), SERVE_DEFAULTS.maxParts)
    .option(
      '--max-queue <n>',
      'images waiting for the model at most; more get 503 with Retry-After',
      wholeIn(maxQueue[0], maxQueue[1]),
      SERVE_DEFAULTS.maxQueue,
    )
    .option(
      '--timeout <s>',
      'seconds to receive a request, and again to answer it',
      wholeIn(1, timeoutMs[1] / 1000, 'seconds'),
      SERVE_DEFAULTS.timeoutMs / 1000,
    )
    .option('--json', 'print {url, model} as one JSON line on stdout once listening');
  modelOption(command).action(async (folder: string | undefined, options) => {
    const token: string | undefined = options.token ?? (process.env.HEMATO_TOKEN || undefined);
    if (options.maxQueue < options.maxParts) {
      throw new CliError(
        `--max-queue (${options.maxQueue}) must be at least --max-parts (${options.maxParts}), so that one full batch request fits in the queue`,
        2,
      );
    }
    const serveOptions: ServeOptions = {
      model: options.model,
      classifier: classifierOptions(options),
      folder,
      host: options.host,
      port: options.port,
      token,
      cors: options.cors,
      maxBatch: options.maxBatch,
      batchWaitMs: options.batchWaitMs,
      maxBody: options.maxBody,
      maxParts: options.maxParts,
      maxQueue: options.maxQueue,
      timeoutMs: options.timeout * 1000,
    };
    if (!token && !isLoopback(options.host)) {
      process.stderr.write(
        `\n  WARNING: hemato serve listens on ${options.host} without a token: anyone who can reach this machine can use it.\n  Set --token or HEMATO_TOKEN, and put a TLS reverse proxy in front of it.\n\n`,
      );
    }
    // The HTTP stack loads only here: other commands start without it.
    const { startServer } = await import('../../serve/server.js');
    const server = await startServer(serveOptions).catch((error: Error) => {
      throw new CliError(error.message);
    });
    if (options.json) process.stdout.write(`${JSON.stringify({ url: server.url, model: server.identity.architecture })}\n`);
    else
      process.stderr.write(
        `hemato: serving ${server.identity.name} (${server.identity.architecture}) at ${server.url}${folder ? ` with the folder ${folder}` : ''}; Ctrl-C stops\n`,
      );
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        process.stderr.write(`hemato: ${signal}: finishing accepted requests, then stopping\n`);
        server.close().then(resolve, (error: Error) => {
          process.stderr.write(`hemato: ${error.message}\n`);
          resolve();
        });
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
  });
}

/** A whole number (of `unit`) in min..max. */
function wholeIn(min: number, max: number, unit?: string): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (!/^\s*\d+\s*$/.test(value) || n < min || n > max)
      throw new InvalidArgumentError(`expected a whole number${unit ? ` of ${unit}` : ''} in ${min}..${max}`);
    return n;
  };
}

function parseBodySize(value: string): number {
  const bytes = parseFileSize(value);
  if (bytes > maxBody[1]) throw new InvalidArgumentError(`expected a size of at most ${sizeText(maxBody[1])}`);
  return bytes;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}
