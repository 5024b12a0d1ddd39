// The c10d layer: stores, a Gloo process group and its collectives, run as 2–3 ranks in child processes on this
// machine (test/distributed-rank.ts), plus world size 1 and argument checks in this process. A dead or silent peer
// must reject every surviving rank's promise, and every rank must exit by itself once its group is destroyed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import type { RankSettings } from './distributed-rank.js';

const RANK_SCRIPT = path.resolve('dist/test/distributed-rank.js');
/** A rank still running after this long is hung: it is killed, and the test fails on its signal. */
const HANG_LIMIT_MS = 60_000;

const info = E.distributed.distributedInfo();
const skip = info.available ? false : `distributed training is unavailable in this build of the addon: ${info.reason}`;

interface RankRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  result?: Record<string, unknown>;
}

/** Starts one rank; `onLine` sees each line it prints. */
function startRank(settings: RankSettings, onLine: (line: string) => void = () => {}): Promise<RankRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RANK_SCRIPT, JSON.stringify(settings)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let pending = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk;
      pending += chunk;
      let newline: number;
      while ((newline = pending.indexOf('\n')) >= 0) {
        onLine(pending.slice(0, newline));
        pending = pending.slice(newline + 1);
      }
    });
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), HANG_LIMIT_MS);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const last = stdout.trim().split('\n').pop();
      let result: Record<string, unknown> | undefined;
      try {
        result = last ? (JSON.parse(last) as Record<string, unknown>) : undefined;
      } catch {
        result = undefined;
      }
      resolve({ code, signal, stdout, stderr, result });
    });
  });
}

/** Runs a scenario over a file store with worldSize ranks at once. */
async function runRanks(scenario: RankSettings['scenario'], worldSize: number, timeoutMs: number): Promise<RankRun[]> {
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-dist-'));
  try {
    return await Promise.all(Array.from({ length: worldSize }, (_, rank) => startRank({ scenario, rank, worldSize, timeoutMs, dir })));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function assertExitedCleanly(run: RankRun, what: string): Record<string, unknown> {
  assert.equal(run.signal, null, `${what} was killed by ${run.signal} (hung or crashed); stderr: ${run.stderr}`);
  assert.equal(run.code, 0, `${what} exited with ${run.code}; stderr: ${run.stderr}`);
  assert.ok(run.result, `${what} printed no result; stdout: ${run.stdout}`);
  assert.match(String((run.result.afterDestroy as { message?: string })?.message), /process group was destroyed/);
  return run.result;
}

test('this build reports the distributed binding: Gloo, and NCCL with its reason', () => {
  assert.equal(typeof info.available, 'boolean');
  assert.equal(typeof info.ncclReason, 'string');
  if (info.available) {
    assert.deepEqual(info.backends, ['gloo']);
    assert.equal(info.reason, undefined);
  } else {
    assert.ok(info.reason && info.fixes && info.fixes.length > 0);
  }
});

test('three ranks over a file store: all-reduce, broadcast, barrier, all-gather and gather', { skip }, async () => {
  const runs = await runRanks('collectives', 3, 10_000);
  const results = runs.map((run, rank) => assertExitedCleanly(run, `rank ${rank}`));
  const bf16 = results[0].bf16 as { values?: number[]; message?: string };
  for (const [rank, r] of results.entries()) {
    assert.deepEqual(r.sum, [6, 60, -3], `rank ${rank}`);
    assert.deepEqual(r.maxInt64, [2, 2 ** 40 + 2]);
    assert.deepEqual(r.avg, [1, 1]);
    // bfloat16 is summed where this libtorch's Gloo has it, and refused plainly where not, alike on every rank.
    const mine = r.bf16 as { values?: number[]; message?: string };
    if (bf16.values) assert.deepEqual(mine.values, [4.5, 6]);
    else
      assert.match(
        String(mine.message),
        new RegExp(`^allReduce failed on rank ${rank} of 3: this libtorch's Gloo cannot carry bfloat16 tensors; convert to float32`),
      );
    assert.deepEqual(r.broadcast, [7, 8, 9]);
    assert.equal(r.broadcastSameTensor, true);
    assert.deepEqual(r.marksAfterBarrier, [true, true, true]);
    assert.deepEqual(r.allGather, [
      { shape: [1, 2], values: [0, 0] },
      { shape: [2, 2], values: [1, 1, 1, 1] },
      { shape: [3, 2], values: [2, 2, 2, 2, 2, 2] },
    ]);
    assert.deepEqual(
      r.gather,
      rank === 2
        ? [
            [10, 10],
            [11, 11],
            [12, 12],
          ]
        : null,
    );
    assert.match(
      String((r.mismatch as { message: string }).message),
      /share a dtype and all dimensions but the first; rank 0 has float32 \[2, 1\], rank 1 has float32 \[2, 2\]/,
    );
    assert.equal(r.usableAfterMismatch, true);
  }
});

test('two ranks over a TCP store on 127.0.0.1, the server on a port it picks', { skip }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-dist-'));
  try {
    const base = { scenario: 'tcp' as const, worldSize: 2, timeoutMs: 10_000, dir };
    let client: Promise<RankRun> | undefined;
    const server = startRank({ ...base, rank: 0, port: 0 }, (line) => {
      const { port } = JSON.parse(line) as { port?: number };
      if (port && !client) client = startRank({ ...base, rank: 1, port });
    });
    const serverRun = await server;
    assert.ok(client, `the server reported no port; stderr: ${serverRun.stderr}`);
    const runs = [serverRun, await client];
    for (const [rank, run] of runs.entries()) {
      const r = assertExitedCleanly(run, `rank ${rank}`);
      assert.deepEqual(r.sum, [3, 3, 3, 3]);
      assert.deepEqual(r.broadcast, [0, 0]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a peer killed mid-run rejects every surviving rank’s collective; they destroy the group and exit', { skip }, async () => {
  const runs = await runRanks('killed-peer', 3, 10_000);
  assert.equal(runs[2].signal, 'SIGKILL', 'the victim killed itself');
  for (const rank of [0, 1]) {
    const r = assertExitedCleanly(runs[rank], `rank ${rank}`);
    assert.equal(r.first, 3);
    const error = r.error as { message: string };
    assert.match(error.message, new RegExp(`^allReduce failed on rank ${rank} of 3`));
    // Once a collective failed, the next one is refused at once instead of waiting out the time-out again.
    assert.match((r.afterFailure as { message: string }).message, /an earlier collective of this group failed, so it is unusable; destroy it/);
  }
});

test('a silent peer rejects the others’ collective after the group’s time-out', { skip }, async () => {
  const runs = await runRanks('silent-peer', 3, 4_000);
  for (const rank of [0, 1]) {
    const r = assertExitedCleanly(runs[rank], `rank ${rank}`);
    assert.match(
      (r.error as { message: string }).message,
      /^allReduce failed on rank \d of 3 \(no answer from a peer within the group's time-out of 4000 ms\)/,
    );
  }
  assertExitedCleanly(runs[2], 'the silent rank');
});

test('world size 1: collectives leave or copy the values, and the group is destroyed cleanly', { skip }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-dist-'));
  try {
    const store = await E.distributed.createStore({ kind: 'file', path: path.join(dir, 'store'), worldSize: 1 });
    const group = await E.distributed.initProcessGroup({ store, rank: 0, worldSize: 1, timeoutMs: 10_000, interface: 'lo,lo' });
    assert.equal(group.timeoutMs, 10_000);
    const x = E.tensor([1.5, -2, 3], [3]);
    assert.equal(await group.allReduce(x, 'sum'), x);
    assert.deepEqual(x.toArray(), [1.5, -2, 3]);
    await group.allReduce(x, 'avg');
    assert.deepEqual(x.toArray(), [1.5, -2, 3]);
    await group.broadcast(x, 0);
    await group.barrier();
    const [copy] = await group.allGather(x);
    assert.notEqual(copy, x);
    assert.deepEqual(copy.toArray(), [1.5, -2, 3]);
    const gathered = await group.gather(E.scalar(4), 0);
    assert.deepEqual(
      gathered?.map((t) => [t.shape, t.item()]),
      [[[], 4]],
    );
    await group.destroy();
    await group.destroy();
    assert.equal(group.destroyed, true);
    await assert.rejects(group.allReduce(x), /allReduce: the process group was destroyed/);
    // A second group on the same store takes its own keys.
    const again = await E.distributed.initProcessGroup({ store, rank: 0, worldSize: 1, timeoutMs: 10_000 });
    await again.barrier();
    await again.destroy();
    store.close();
    await assert.rejects(E.distributed.initProcessGroup({ store, rank: 0, worldSize: 1 }), /the store was closed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bad arguments are refused with errors that say what to change', { skip }, async () => {
  const { createStore, initProcessGroup } = E.distributed;
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-dist-'));
  const file = path.join(dir, 'store');
  try {
    for (const worldSize of [0, -1, 1.5, NaN, '2'] as unknown[]) {
      await assert.rejects(createStore({ kind: 'file', path: file, worldSize } as never), {
        name: 'RangeError',
        message: /worldSize must be an integer in 1\.\./,
      });
    }
    await assert.rejects(createStore({ kind: 'nfs', worldSize: 1 } as never), /kind must be 'tcp' or 'file'/);
    await assert.rejects(createStore({ kind: 'file', path: '', worldSize: 1 }), /path must be a non-empty string/);
    await assert.rejects(createStore({ kind: 'file', path: file, worldSize: 1, timeoutMs: 0 }), /timeoutMs must be an integer in 1\.\./);
    await assert.rejects(createStore({ kind: 'tcp', host: '127.0.0.1', port: 70000, isServer: true, worldSize: 2 }), /port must be an integer in 0\.\.65535/);
    await assert.rejects(createStore({ kind: 'tcp', host: '127.0.0.1', port: 0, isServer: false, worldSize: 2 }), /port must be an integer in 1\.\.65535/);
    await assert.rejects(createStore({ kind: 'tcp', host: '127.0.0.1', port: 1234, worldSize: 2 } as never), /isServer must be true on the one rank/);
    await assert.rejects(
      createStore({ kind: 'file', path: path.join(dir, 'no/such/dir/store'), worldSize: 1 }),
      /the folder of the file store .*no\/such\/dir\/store does not exist/,
    );

    const store = await createStore({ kind: 'file', path: file, worldSize: 2 });
    await assert.rejects(initProcessGroup({ store, rank: 2, worldSize: 2 }), { name: 'RangeError', message: /rank must be an integer in 0\.\.1, got 2/ });
    await assert.rejects(initProcessGroup({ store, rank: -1, worldSize: 2 }), /rank must be an integer in 0\.\.1/);
    await assert.rejects(initProcessGroup({ store, rank: 0, worldSize: 3 }), /worldSize 3 differs from the store's 2/);
    await assert.rejects(
      initProcessGroup({ store, rank: 0, worldSize: 2, backend: 'nccl' as never }),
      /the NCCL backend is not available \(.+\); use backend 'gloo'/,
    );
    await assert.rejects(initProcessGroup({ store, rank: 0, worldSize: 2, backend: 'mpi' as never }), /backend must be 'gloo'/);
    await assert.rejects(initProcessGroup({ store, rank: 0, worldSize: 2, interface: 'lo', hostname: 'localhost' }), /interface or hostname, not both/);
    await assert.rejects(initProcessGroup({ store: {} as never, rank: 0, worldSize: 2 }), /store must come from createStore/);
    // The other rank never comes: the rendezvous gives up at the time-out, saying what to check.
    await assert.rejects(
      initProcessGroup({ store, rank: 0, worldSize: 2, timeoutMs: 500 }),
      /rank 0 of 2 could not join the group within 500 ms \(did every rank start/,
    );
    store.close();

    const one = await createStore({ kind: 'file', path: path.join(dir, 'one'), worldSize: 1 });
    const group = await initProcessGroup({ store: one, rank: 0, worldSize: 1, timeoutMs: 10_000 });
    const matrix = E.zeros([2, 3]);
    await assert.rejects(group.allReduce(matrix.transpose(0, 1)), /must be contiguous \(call \.contiguous\(\) first\)/);
    await assert.rejects(group.allReduce(E.zeros([2], { dtype: 'bool' })), /collectives carry float32, .* tensors, not bool/);
    await assert.rejects(group.allReduce(E.zeros([2], { dtype: 'int32' }), 'avg'), /'avg' needs a floating-point tensor, got int32/);
    await assert.rejects(group.allReduce(matrix, 'mean' as never), /op must be one of sum, avg, max, min, product/);
    await assert.rejects(group.broadcast(matrix, 1), /root must be an integer in 0\.\.0, got 1/);
    await assert.rejects(group.gather(matrix, -1), /root must be an integer in 0\.\.0/);
    await assert.rejects(group.allReduce([1, 2] as never), /expected a Tensor/);
    const gone = E.zeros([2]);
    gone.dispose();
    await assert.rejects(group.allReduce(gone), /the tensor was disposed/);
    // Refused calls leave the group working.
    await group.allReduce(matrix);
    await group.destroy();
    one.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the native binding refuses foreign handles and bad tensors with exceptions, not crashes', { skip }, async () => {
  const { native } = await import('../src/engine/native.js');
  const t = E.zeros([2]);
  assert.throws(() => native.allReduce({} as never, t.handle, 'sum'), { name: 'TypeError', message: /group must be a handle from this addon/ });
  assert.throws(() => native.initGloo(t.handle as never, 0, 1, 1000), /store must be a handle from this addon/);
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-dist-'));
  try {
    const store = native.createFileStore(path.join(dir, 'store'), 1, 10_000);
    const group = await native.initGloo(store, 0, 1, 10_000);
    assert.throws(() => native.allReduce(group, t.handle, 'avg' as never), /op must be 'sum', 'product', 'min' or 'max'/);
    assert.throws(() => native.allReduce(group, E.zeros([2], { dtype: 'bool' }).handle, 'sum'), /Gloo cannot carry Bool tensors/);
    assert.throws(() => native.broadcast(group, t.handle, 3), /root must be an integer in 0\.\.0/);
    assert.throws(() => native.allGather(group, t.handle, []), /one tensor per rank/);
    assert.throws(() => native.allGather(group, t.handle, [E.zeros([3]).handle]), /the input's dtype and shape/);
    await native.destroyGroup(group, true);
    assert.throws(() => native.barrier(group), /the process group was destroyed/);
    native.closeStore(store);
    assert.throws(() => native.initGloo(store, 0, 1, 1000), /the store was closed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
