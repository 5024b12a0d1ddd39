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
