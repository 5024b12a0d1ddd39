// Classification timed end to end from encoded files, as bench:predict and bench:serve both measure it.
import type { Classifier } from '../src/api/classifier.js';

/** The middle value (the upper one of an even count). */
export const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1];

/** Median single-image latency (the first two calls warm up), and throughput classifying batches of 64. */
export async function endToEnd(classifier: Classifier, buffers: Buffer[], quick: boolean): Promise<{ singleMs: number; batchImgS: number }> {
  const single: number[] = [];
  for (let i = 0; i < (quick ? 12 : 40); i++) {
    const start = performance.now();
    await classifier.classify(buffers[i % buffers.length]);
    single.push(performance.now() - start);
  }
  const inputs = Array.from({ length: 64 }, (_, i) => buffers[i % buffers.length]);
  await classifier.classifyBatch(inputs, { batchSize: 64 });
  const batchTimes: number[] = [];
  for (let i = 0; i < (quick ? 2 : 4); i++) {
    const start = performance.now();
    await classifier.classifyBatch(inputs, { batchSize: 64 });
    batchTimes.push(performance.now() - start);
  }
  return { singleMs: median(single.slice(2)), batchImgS: 64 / (median(batchTimes) / 1000) };
}
