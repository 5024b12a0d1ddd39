// Worker threads: the addon loads in each isolate with its own state, workers compute correct results, tensors
// never cross isolates (their data does, as ArrayBuffers), and grad mode and autocast stay per thread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import * as E from '../src/engine/index.js';
import { maxAbsDiff } from './helpers.js';

const engineUrl = new URL('../src/engine/index.js', import.meta.url).href;

/** Runs an ES module body in a worker, with the engine imported as E and workerData in scope; resolves with its first message. */
function runWorker<R>(body: string, workerData: unknown = {}, transferList: ArrayBuffer[] = []): Promise<R> {
  const source = `import { parentPort, workerData } from 'node:worker_threads';\nimport * as E from ${JSON.stringify(engineUrl)};\n${body}`;
  const url = new URL(`data:text/javascript,${encodeURIComponent(source)}`);
  return new Promise<R>((resolve, reject) => {
    const worker = new Worker(url, { workerData, transferList });
    let result: { value: R } | undefined;
    worker.once('message', (value: R) => {
      result = { value };
    });
    worker.once('error', reject);
    worker.once('exit', (code) => {
      if (result) resolve(result.value);
      else reject(new Error(`worker exited with code ${code} before answering`));
    });
  });
}

test('a worker computes a matmul and a conv on data sent as ArrayBuffers, and the numbers match the main thread', async () => {
  const a = E.keep(E.randn([64, 32], { seed: 1 }));
  const b = E.keep(E.randn([32, 48], { seed: 2 }));
  const image = E.keep(E.randn([2, 3, 9, 9], { seed: 3 }));
  const kernel = E.keep(E.randn([4, 3, 3, 3], { seed: 4 }));
  try {
    // Copies made for the worker; transferring them detaches them here.
    const buffers = [a, b, image, kernel].map((t) => (t.data() as Float32Array).buffer as ArrayBuffer);
    const answer = await runWorker<{ product: ArrayBuffer; conv: ArrayBuffer; live: number; liveAtStart: number }>(
      `
      const liveAtStart = E.liveTensors();
      const [a, b, image, kernel] = workerData.buffers.map((buffer, i) => E.tensor(new Float32Array(buffer), workerData.shapes[i]));
      const product = a.matmul(b).data().buffer;
      const conv = E.F.conv2d(image, kernel, undefined, { padding: 1 }).data().buffer;
      E.dispose([a, b, image, kernel]);
      parentPort.postMessage({ product, conv, liveAtStart, live: E.liveTensors() }, [product, conv]);
    `,
      { buffers, shapes: [a.shape, b.shape, image.shape, kernel.shape] },
      buffers,
    );
    assert.equal(buffers[0].byteLength, 0, 'the buffer was transferred, not copied');
    assert.equal(answer.liveAtStart, 0, 'the worker starts with its own, empty tensor count');
    assert.equal(answer.live, 2, 'the worker counts only its own tensors (the two results it had not freed)');
    E.tidy(() => {
      assert.ok(maxAbsDiff(new Float32Array(answer.product), a.matmul(b).data() as Float32Array) < 1e-4);
      const conv = E.F.conv2d(image, kernel, undefined, { padding: 1 });
      assert.ok(maxAbsDiff(new Float32Array(answer.conv), conv.data() as Float32Array) < 1e-4);
    });
  } finally {
    E.dispose([a, b, image, kernel]);
  }
});

test('tensors cannot be posted to another isolate: a handle names nothing there, and a Tensor object arrives without one', async () => {
  const t = E.ones([3]);
  try {
    // The worker makes tensors of its own first, so that its table holds live slots a stray handle could hit.
    const handleAnswer = await runWorker<{ failed: string }>(
      `
      const { native } = await import(${JSON.stringify(new URL('../src/engine/native.js', import.meta.url).href)});
      const own = [E.ones([3]), E.zeros([3]), E.ones([2])];
      let failed = '';
      try { native.meta(workerData.handle); } catch (error) { failed = error.message; }
      E.dispose(own);
      parentPort.postMessage({ failed });
    `,
      { handle: t.handle },
    );
    assert.match(handleAnswer.failed, /must be a tensor/);
    // The class instance itself clones into a plain object: its private handle does not travel.
    const answer = await runWorker<{ isTensor: boolean; keys: string[]; failed: string }>(
      `
      const received = workerData.tensor;
      let failed = '';
      try { E.call('relu', '', received); } catch (error) { failed = error.message; }
      parentPort.postMessage({ isTensor: received instanceof E.Tensor, keys: Object.keys(received), failed });
    `,
      { tensor: t },
    );
    assert.equal(answer.isTensor, false);
    assert.deepEqual(answer.keys, []);
    assert.match(answer.failed, /must be a tensor/);
    assert.deepEqual(t.toArray(), [1, 1, 1], 'the original is untouched');
  } finally {
    t.dispose();
  }
});

test('autocast and grad mode are per thread: a worker inside autocast does not change the main thread', async () => {
  // The worker enters autocast and noGrad, signals, and holds them until the main thread has checked its own state.
  const flags = new Int32Array(new SharedArrayBuffer(8));
  const waiting = runWorker<{ dtype: string; gradEnabled: boolean; afterAutocast: boolean }>(
    `
    const flags = new Int32Array(workerData.shared);
    const seen = E.noGrad(() => E.autocast(() => {
      const product = E.ones([8, 8]).matmul(E.ones([8, 8]));
      Atomics.store(flags, 0, 1);
      Atomics.notify(flags, 0);
      Atomics.wait(flags, 1, 0, 10000);
      return { dtype: product.dtype, gradEnabled: E.isGradEnabled() };
    }));
    parentPort.postMessage({ ...seen, afterAutocast: E.isAutocastEnabled() });
  `,
    { shared: flags.buffer },
  );
  try {
    // Spin on the event loop (not Atomics.wait, which would block the worker's start-up messages) until it is in autocast.
    const started = Date.now();
    while (Atomics.load(flags, 0) === 0) {
      if (Date.now() - started > 20000) throw new Error('worker did not enter autocast');
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    assert.equal(E.isAutocastEnabled(), false, "the worker's autocast leaked into the main thread");
    assert.equal(E.isGradEnabled(), true, "the worker's noGrad leaked into the main thread");
    E.tidy(() => assert.equal(E.ones([8, 8]).matmul(E.ones([8, 8])).dtype, 'float32'));
  } finally {
    Atomics.store(flags, 1, 1);
    Atomics.notify(flags, 1);
  }
  const answer = await waiting;
  assert.equal(answer.dtype, 'bfloat16');
  assert.equal(answer.gradEnabled, false);
  assert.equal(answer.afterAutocast, false);
});

test('several workers at once, one ending with live tensors, leave the main thread working', async () => {
  const before = E.liveTensors();
  const sums = await Promise.all(
    [1, 2, 3].map((k) =>
      runWorker<number>(
        `
    const t = E.full([100, 100], workerData.k).matmul(E.ones([100, 1]));
    E.keep(E.randn([256, 256]));  // left alive on purpose: the isolate's teardown must free it
    parentPort.postMessage(t.sum().item());
  `,
        { k },
      ),
    ),
  );
  assert.deepEqual(sums, [10000, 20000, 30000]);
  assert.equal(E.liveTensors(), before, "workers' tensors are not counted here");
  E.tidy(() =>
    assert.equal(
      E.ones([10, 10])
        .matmul(E.ones([10, 10]))
        .sum()
        .item(),
      1000,
    ),
  );
});
