// The service's batcher: images of a request that timed out are taken back while they wait, never run; a batch
// already running finishes; the queue's bound refuses a request whole.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Batcher } from '../src/serve/batcher.js';

/** A batcher whose runs end when the test says: `release()` ends the oldest one still running. */
function controlled(maxQueue = 16) {
  const runs: string[][] = [];
  const ends: (() => void)[] = [];
  const batcher = new Batcher<string, string>({
    maxBatch: 4,
    waitMs: 0,
    maxQueue,
    run: (items) => {
      runs.push(items);
      return new Promise((resolve) => ends.push(() => resolve(items.map((item) => `${item}!`))));
    },
  });
  const release = async () => {
    ends.shift()!();
    await new Promise((resolve) => setImmediate(resolve));
  };
  return { batcher, runs, release };
}

test('images withdrawn while they wait are refused with timeout and never run; a running batch still answers', async () => {
  const { batcher, runs, release } = controlled();
  const [first] = batcher.submit(['a']);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(runs, [['a']], 'the first image runs at once');
  const late = batcher.submit(['b', 'c']);
  const kept = batcher.submit(['d']);
  assert.equal(batcher.queued, 3);
  batcher.withdraw(['b', 'c', 'a']);
  assert.equal(batcher.queued, 1, 'only the waiting images of the request are taken back');
  await Promise.all(
    late.map((refused) => assert.rejects(refused, (error: Error & { code?: string; status?: number }) => error.code === 'timeout' && error.status === 503)),
  );
  await release();
  assert.equal(await first, 'a!', 'the batch under way finishes and answers');
  assert.deepEqual(runs, [['a'], ['d']], 'the withdrawn images never reach the model');
  await release();
  assert.deepEqual(await Promise.all(kept), ['d!']);
});

test('a request that would overfill the queue is refused whole, with nothing of it queued', async () => {
  const { batcher, runs, release } = controlled(3);
  batcher.submit(['a']);
  await new Promise((resolve) => setImmediate(resolve));
  batcher.submit(['b', 'c']);
  assert.throws(
    () => batcher.submit(['d', 'e']),
    (error: Error & { code?: string }) => error.code === 'queue-full',
  );
  assert.equal(batcher.queued, 2);
  await release();
  assert.deepEqual(runs, [['a'], ['b', 'c']]);
  await release();
});
