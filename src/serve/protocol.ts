// The messages between the HTTP server and the worker thread that holds the model.
import type { Classification, ClassificationError, ClassifierOptions, UncertainReason } from '../api/classifier.js';

export interface WorkerSetup {
  model: string;
  options: ClassifierOptions;
}

/** One image to classify, with the options of the request it came in. */
export interface ImageJob {
  bytes: Uint8Array;
  pixelSize?: number;
  tta?: boolean;
}

export interface ExplainJob {
  bytes: Uint8Array;
  label?: string;
  format: 'png' | 'json';
  /** Date.now() after which the request has been answered 503 already: the worker skips the work. */
  deadline: number;
}

export type WorkerRequest = { id: number; kind: 'classify'; images: ImageJob[] } | { id: number; kind: 'explain'; job: ExplainJob };

/** Every class's probability, most likely first: the server cuts each answer to its request's top-k. */
export type JobResult = Classification | ClassificationError;

export interface ExplainResult {
  label: string;
  score: number;
  /** Whether the image's classification should not be trusted as it is, and why (Explanation). */
  uncertain: boolean;
  reasons: UncertainReason[];
  /** The overlay PNG, or the map's numbers. */
  png?: Uint8Array;
  grid?: [number, number];
  /** The network stage whose map it is (from 0). */
  stage?: number;
  /** rows × cols values in [0, 1], row-major, over the model's size × size input. */
  cam?: number[];
  size?: number;
}

export type WorkerReply = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string; code?: string; status?: number };

export type WorkerStatus = { ready: true } | { ready: false; error: string };
