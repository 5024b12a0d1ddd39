// One rank of a process group, run as a child process by engine-distributed.test.ts. It reads its settings from the
// JSON in argv[2], runs one scenario and prints one JSON line of what it saw; it exits by itself once the group is
// destroyed, so a hang or a crash shows in the parent as a timeout or a signal.
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as E from '../src/engine/index.js';

export interface RankSettings {
  scenario: 'collectives' | 'tcp' | 'killed-peer' | 'silent-peer';
  rank: number;
  worldSize: number;
  timeoutMs: number;
  /** A scratch folder shared by the ranks. */
  dir: string;
  /** For the TCP store: the server's port (0 on the server, which then prints the one it took). */
  port?: number;
}

const settings = JSON.parse(process.argv[2]) as RankSettings;
const { rank, worldSize, timeoutMs, dir } = settings;
const out: Record<string, unknown> = { rank };

const values = (t: E.Tensor) => t.toArray();
const errorOf = async (promise: Promise<unknown>) => {
  try {
    await promise;
    return undefined;
  } catch (error) {
    return { name: (error as Error).name, message: (error as Error).message };
  }
};
const waitForFiles = async (files: string[]) => {
  while (!files.every((f) => existsSync(f))) await new Promise((resolve) => setTimeout(resolve, 50));
};

async function openStore(): Promise<E.distributed.Store> {
  if (settings.scenario !== 'tcp') return E.distributed.createStore({ kind: 'file', path: path.join(dir, 'store'), worldSize, timeoutMs });
  const store = await E.distributed.createStore({ kind: 'tcp', host: '127.0.0.1', port: settings.port!, isServer: rank === 0, worldSize, timeoutMs });
  if (rank === 0) process.stdout.write(`${JSON.stringify({ port: store.port })}\n`);
  return store;
}

async function collectives(group: E.distributed.ProcessGroup): Promise<void> {
  const x = E.tensor([rank + 1, 10 * (rank + 1), -rank], [3]);
  await group.allReduce(x);
  out.sum = values(x);
  const n = E.tensor([rank, 2 ** 40 + rank], [2], { dtype: 'int64' });
  await group.allReduce(n, 'max');
  out.maxInt64 = values(n);
  const a = E.tensor([rank, 1], [2]);
  await group.allReduce(a, 'avg');
  out.avg = values(a);
  const h = E.tensor([rank + 0.5, 2], [2]).to('bfloat16');
  const bf16Error = await errorOf(group.allReduce(h));
  out.bf16 = bf16Error ?? { values: values(h) };

  const b = rank === 1 ? E.tensor([7, 8, 9], [3], { dtype: 'int32' }) : E.zeros([3], { dtype: 'int32' });
  const same = await group.broadcast(b, 1);
  out.broadcast = values(b);
  out.broadcastSameTensor = same === b;

  // Every rank leaves a mark before the barrier; after it, each must see them all.
  writeFileSync(path.join(dir, `before-barrier-${rank}`), '');
  await group.barrier();
  out.marksAfterBarrier = Array.from({ length: worldSize }, (_, r) => existsSync(path.join(dir, `before-barrier-${r}`)));

  // Uneven first dimensions, as the last batch of validation logits would have.
  const logits = E.full([rank + 1, 2], rank);
  const gathered = await group.allGather(logits);
  out.allGather = gathered.map((t) => ({ shape: t.shape, values: values(t) }));
  const onRoot = await group.gather(E.full([2], 10 + rank, { dtype: 'int64' }), 2);
  out.gather = onRoot?.map(values) ?? null;

  // Ranks that disagree on the trailing dimensions all get the same clear error, and the group stays usable.
  out.mismatch = await errorOf(group.allGather(E.zeros([2, rank + 1])));
  await group.barrier();
  out.usableAfterMismatch = true;
}

async function main(): Promise<void> {
  // The ranks start their rendezvous together, so that a slow start does not eat into a short time-out. (Over TCP the
  // client starts only once the server has its port.)
  if (settings.scenario !== 'tcp') {
    writeFileSync(path.join(dir, `started-${rank}`), '');
    await waitForFiles(Array.from({ length: worldSize }, (_, r) => path.join(dir, `started-${r}`)));
  }
  const store = await openStore();
  const group = await E.distributed.initProcessGroup({ store, rank, worldSize, timeoutMs });
  store.close();
  if (settings.scenario === 'collectives') await collectives(group);
  if (settings.scenario === 'tcp') {
    const x = E.full([4], rank + 1);
    await group.allReduce(x);
    out.sum = values(x);
    const y = E.full([2], rank);
    await group.broadcast(y, 0);
    out.broadcast = values(y);
  }
  if (settings.scenario === 'killed-peer' || settings.scenario === 'silent-peer') {
    const x = E.ones([1 << 16]);
    await group.allReduce(x);
    out.first = x.toArray()[0];
    const victim = worldSize - 1;
    const survivorsDone = Array.from({ length: victim }, (_, r) => path.join(dir, `done-${r}`));
    if (rank === victim && settings.scenario === 'killed-peer') process.kill(process.pid, 'SIGKILL');
    if (rank === victim) {
      // Silent: alive but never joining the next collective, until the others have given up on it.
      await waitForFiles(survivorsDone);
    } else {
      out.error = await errorOf(group.allReduce(x));
      out.afterFailure = await errorOf(group.barrier());
      writeFileSync(survivorsDone[rank], '');
    }
  }
  await group.destroy();
  out.afterDestroy = await errorOf(group.barrier());
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

await main();
