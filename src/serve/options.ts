// The service's settings and their defaults, apart from the server so that `hemato --help` loads no HTTP stack.
import type { ClassifierOptions } from '../api/classifier.js';

export interface ServeOptions {
  /** A hemato model file (default: the bundled model). */
  model?: string;
  classifier?: ClassifierOptions;
  /** A folder the review page may open, read-only. */
  folder?: string;
  host?: string;
  /** 0 takes a free port. */
  port?: number;
  /** Required as `Authorization: Bearer TOKEN` on /v1/* and /metrics when set. */
  token?: string;
  /** The one origin allowed to call the API from a browser; CORS is off without it. */
  cors?: string;
  maxBatch?: number;
  batchWaitMs?: number;
  /** Bytes per request body. */
  maxBody?: number;
  /** Images per batch request. */
  maxParts?: number;
  /** Images waiting for the model; more get 503 with Retry-After. */
  maxQueue?: number;
  /** Milliseconds to receive a request, and again to answer it. */
  timeoutMs?: number;
}

export type Limits = Required<Pick<ServeOptions, 'host' | 'port' | 'maxBatch' | 'batchWaitMs' | 'maxBody' | 'maxParts' | 'maxQueue' | 'timeoutMs'>>;

export const SERVE_DEFAULTS: Readonly<Limits> = {
  host: '127.0.0.1',
  port: 8080,
  maxBatch: 64,
  batchWaitMs: 5,
  maxBody: 32 * 2 ** 20,
  maxParts: 64,
  maxQueue: 256,
  timeoutMs: 30_000,
};

/** The range each numeric setting takes, inclusive. */
export const SERVE_RANGES: Readonly<Record<Exclude<keyof Limits, 'host'>, readonly [number, number]>> = {
  port: [0, 65535],
  maxBatch: [1, 4096],
  batchWaitMs: [0, 10_000],
  maxBody: [1, 2 ** 31],
  maxParts: [1, 4096],
  maxQueue: [1, 1_000_000],
  timeoutMs: [1, 3_600_000],
};
