// Many images at once are prepared on worker threads, the next batch while the model reads one: the answers, the
// error codes and the second looks must be those of the main thread, batch by batch, and the threads must neither
// keep a process alive nor lose an image when they stop.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { type Classification, type ClassificationError, loadClassifier } from '../src/api/classifier.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { readImageFile } from '../src/data/image.js';
import { PreparePool } from '../src/data/prepare-pool.js';
import { prepareImage } from '../src/data/prepare.js';
import { SHARED } from './helpers.js';

const PBC = path.join(SHARED, 'data/pbc');
const BCCD = path.join(SHARED, 'data/external/bccd-wbc');
const firstFiles = (dir: string, n: number) =>
  readdirSync(dir)
    .filter((f) => !f.startsWith('.'))
    .sort()
    .slice(0, n)
    .map((f) => path.join(dir, f));
const run = promisify(execFile);
/**
 * Results with each error's code and what failed (the message up to its first colon): libvips' own words for a
 * damaged file vary from run to run when several fail at once, on any thread.
 */
const comparable = (results: (Classification | ClassificationError)[]) =>
  results.map((r) => ('error' in r ? { code: r.code, failed: r.error.split(':')[0] } : r));
const parallel = availableParallelism() > 1;

test('classifyBatch answers from worker threads as from the main thread: the same answers, error codes and second looks', { skip: !parallel }, async () => {
  const pbc = PBC_CLASSES.flatMap((c) => firstFiles(path.join(PBC, c), 2));
  // Pale images from another lab: their answers come from the second look at a raised stain.
  const bccd = firstFiles(path.join(BCCD, 'neutrophil'), 4);
  const jpeg = readFileSync(pbc[0]);
  const truncated = jpeg.subarray(0, jpeg.length >> 1);
  const inputs = [...pbc, ...bccd, jpeg, truncated, path.join(PBC, 'no-such-file.jpg'), await readImageFile(pbc[1])];
  const pooled = await loadClassifier();
  const single = await loadClassifier();
  try {
    const progress: [number, number][] = [];
    const together = await pooled.classifyBatch(inputs, { batchSize: 8, onProgress: (done, total) => progress.push([done, total]) });
    assert.deepEqual(progress, [
      [8, inputs.length],
      [16, inputs.length],
      [24, inputs.length],
    ]);
    await assert.rejects(pooled.classifyBatch(inputs, { onProgress: 'bar' as never }), /onProgress must be a function, got 'bar'/);
    const pool = await (pooled as unknown as { shared: { pool: Promise<PreparePool | null> } }).shared.pool;
    assert.ok(pool && pool.threads > 1, 'the batch was prepared on worker threads');
    // Calls with fewer images than start the threads, in the same batches (the forward pass's numbers depend on them).
    const here = [];
    for (let start = 0; start < inputs.length; start += 8) here.push(...(await single.classifyBatch(inputs.slice(start, start + 8), { batchSize: 8 })));
    assert.equal(await (single as unknown as { shared: { pool: unknown } }).shared.pool, null);
    assert.deepEqual(comparable(together), comparable(here));
    assert.ok(
      together.slice(pbc.length, pbc.length + bccd.length).some((r) => 'stain' in r && r.stain === 'raised'),
      'a second look answered',
    );
    assert.deepEqual(
      together.slice(-4).map((r) => ('error' in r ? r.code : 'answer')),
      ['answer', 'truncated', 'unreadable', 'answer'],
    );
  } finally {
    pooled.dispose();
    single.dispose();
  }
});

test("a classifier's options reach the threads: a pixel limit and a pixel size give the main thread's answers", { skip: !parallel }, async () => {
  const files = PBC_CLASSES.flatMap((c) => firstFiles(path.join(PBC, c), 2));
  for (const options of [{ maxPixels: 10_000 }, { pixelSize: 0.2 }]) {
    const pooled = await loadClassifier(undefined, options);
    const here = await loadClassifier(undefined, options);
    try {
      const together = await pooled.classifyBatch(files, { batchSize: 8 });
      const apart = [...(await here.classifyBatch(files.slice(0, 8), { batchSize: 8 })), ...(await here.classifyBatch(files.slice(8), { batchSize: 8 }))];
      assert.deepEqual(comparable(together), comparable(apart), JSON.stringify(options));
      if ('maxPixels' in options) assert.ok(together.every((r) => 'code' in r && r.code === 'too-large'));
      else assert.ok(together.every((r) => 'scale' in r && r.scale.source === 'given'));
    } finally {
      pooled.dispose();
      here.dispose();
    }
  }
});

test('images whose preparing threads have stopped are prepared on the main thread, with the same answers', { skip: !parallel }, async () => {
  const files = PBC_CLASSES.flatMap((c) => firstFiles(path.join(PBC, c), 2));
  const classifier = await loadClassifier();
  try {
    const before = await classifier.classifyBatch(files);
    const pool = await (classifier as unknown as { shared: { pool: Promise<PreparePool | null> } }).shared.pool;
    assert.ok(pool);
    await pool.close();
    assert.deepEqual(await classifier.classifyBatch(files), before);
  } finally {
    classifier.dispose();
  }
});

test('a pool prepares every look at an image exactly as the main thread does, and names a file it cannot decode', async () => {
  const classifier = await loadClassifier();
  const pool = await PreparePool.start(null, 2);
  try {
    const file = firstFiles(path.join(BCCD, 'eosinophil'), 1)[0];
    const looks = [{ measure: true }, { measure: true, raisePaleStain: true }, { measure: true, arcScale: true }];
    const result = await pool.looks({ input: file, recipe: classifier.recipe, looks });
    assert.ok(result.ok);
    const image = await readImageFile(file);
    for (const [i, look] of looks.entries()) assert.deepEqual(result.looks[i], await prepareImage(image, classifier.recipe, look), `look ${i}`);
    const bad = await pool.looks({ input: new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]), recipe: classifier.recipe, looks });
    assert.equal(bad.ok, false);
    assert.ok(!bad.ok && (bad.code === 'truncated' || bad.code === 'corrupt'), JSON.stringify(bad));
  } finally {
    await pool.close();
    classifier.dispose();
  }
  await assert.rejects(pool.looks({ input: 'x.jpg', recipe: classifier.recipe, looks: [{}] }), /preparing threads have stopped/);
});

test('a process that classified on worker threads exits by itself, without dispose', { skip: !parallel, timeout: 120_000 }, async () => {
  const files = PBC_CLASSES.flatMap((c) => firstFiles(path.join(PBC, c), 2));
  const script = `
    const { loadClassifier } = await import(${JSON.stringify(path.resolve('dist/src/api/classifier.js'))});
    const classifier = await loadClassifier();
    const results = await classifier.classifyBatch(${JSON.stringify(files)});
    console.log(results.filter((r) => 'predictions' in r).length);`;
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { timeout: 90_000 });
  assert.equal(stdout.trim(), String(files.length));
});
