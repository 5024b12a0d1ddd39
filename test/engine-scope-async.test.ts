// tidy() and asynchronous work: refused before it runs, and nothing leaks when a promise comes back.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as E from '../src/engine/index.js';

test('tidy refuses an async function before running it, and frees what a promise-returning function made', () => {
  const before = E.liveTensors();
  let ran = false;
  assert.throws(
    () =>
      E.tidy((async () => {
        ran = true;
        return E.ones([2]);
      }) as unknown as () => E.Tensor),
    /cannot wrap an async function/,
  );
  assert.equal(ran, false, 'the async function never ran');
  assert.throws(
    () =>
      E.tidy(() => {
        E.ones([1000]);
        E.zeros([10]);
        return Promise.resolve(1);
      }),
    /got a promise back/,
  );
  assert.equal(E.liveTensors(), before, 'nothing the function made is left alive');
});
