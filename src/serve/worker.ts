// The worker thread that holds the model: the HTTP server's event loop never waits for a forward pass, a decode or
// a scale measurement. Requests are answered one at a time, in the order they came.
import { parentPort, workerData } from 'node:worker_threads';
import sharp from 'sharp';
import { type Classifier, loadClassifier } from '../api/classifier.js';
import { overlayPng } from '../api/explain.js';
import * as E from '../engine/index.js';
import type { ExplainResult, ImageJob, JobResult, WorkerReply, WorkerRequest, WorkerSetup, WorkerStatus } from './protocol.js';

const port = parentPort!;
const setup = workerData as WorkerSetup;

// libvips' operation cache keeps recent decodes for reuse; a service sees each image once, so it only holds memory.
sharp.cache(false);

let classifier: Classifier;
try {
  classifier = await loadClassifier(setup.model, setup.options);
  port.postMessage({ ready: true } satisfies WorkerStatus);
} catch (error) {
  port.postMessage({ ready: false, error: (error as Error).message } satisfies WorkerStatus);
  process.exit(1);
}

// What the decoders and the model free stays with their threads' heaps, and the resident size creeps up: it is
// given back (E.releaseFreeMemory, some milliseconds) after a second without requests, and each second under load.
const IDLE_RELEASE_MS = 1000;
const BUSY_RELEASE_MS = 1000;
let idleTimer: NodeJS.Timeout | undefined;
let released = performance.now();
const release = () => {
  E.releaseFreeMemory();
  released = performance.now();
};

let chain = Promise.resolve();
port.on('message', (request: WorkerRequest) => {
  clearTimeout(idleTimer);
  chain = chain
    .then(() => answer(request))
    .finally(() => {
      if (performance.now() - released > BUSY_RELEASE_MS) release();
      clearTimeout(idleTimer);
      idleTimer = setTimeout(release, IDLE_RELEASE_MS);
    });
});

async function answer(request: WorkerRequest): Promise<void> {
  try {
    const value = request.kind === 'classify' ? await classify(request.images) : await explain(request);
    port.postMessage({ id: request.id, ok: true, value } satisfies WorkerReply);
  } catch (error) {
    const { message, code, status } = error as Error & { code?: string; status?: number };
    port.postMessage({
      id: request.id,
      ok: false,
      error: message,
      ...(typeof code === 'string' ? { code } : {}),
      ...(status ? { status } : {}),
    } satisfies WorkerReply);
  }
}

/** Classifies a batch whose images may ask for different pixel sizes or TTA: one pass per distinct choice. */
async function classify(images: ImageJob[]): Promise<JobResult[]> {
  const results: JobResult[] = new Array(images.length);
  const groups = new Map<string, number[]>();
  images.forEach((image, i) => {
    const key = `${image.pixelSize ?? ''}|${image.tta ?? ''}`;
    groups.set(key, [...(groups.get(key) ?? []), i]);
  });
  for (const indices of groups.values()) {
    const { pixelSize, tta } = images[indices[0]];
    const variant =
      pixelSize === undefined && tta === undefined
        ? classifier
        : classifier.withOverrides({ ...(pixelSize !== undefined ? { pixelSize } : {}), ...(tta !== undefined ? { tta } : {}) });
    const answers = await variant.classifyBatch(
      indices.map((i) => images[i].bytes),
      { topK: classifier.classes.length, batchSize: indices.length },
    );
    indices.forEach((image, k) => {
      results[image] = answers[k];
    });
  }
  return results;
}

async function explain({ job }: Extract<WorkerRequest, { kind: 'explain' }>): Promise<ExplainResult> {
  if (Date.now() > job.deadline) throw Object.assign(new Error('the request was answered 503 before its turn came'), { code: 'timeout', status: 503 });
  const explanation = await classifier.explain(job.bytes, job.label === undefined ? {} : { label: job.label });
  const { label, score, uncertain, reasons, grid, stage } = explanation;
  if (job.format === 'png') return { label, score, uncertain, reasons, png: await overlayPng(explanation) };
  return { label, score, uncertain, reasons, grid, stage, size: explanation.image.width, cam: Array.from(explanation.cam) };
}
