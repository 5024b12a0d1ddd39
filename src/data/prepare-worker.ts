// A PreparePool thread: decodes and prepares each image it is sent, loading OpenCV once per MPM setting.
import { parentPort, workerData } from 'node:worker_threads';
import { type MpmConfig, Mpm } from '../preprocess/mpm.js';
import { DecodeError } from './errors.js';
import type { LooksJob, LooksResult, PoolTask, PrepareFailure } from './prepare-pool.js';
import { decodeAndPrepare, type PrepareRecipe, type PrepareResult, prepareFile } from './prepare.js';

const fileRecipe = workerData as PrepareRecipe | null;
const mpms = new Map<string, Promise<Mpm>>();
const mpmFor = (config: MpmConfig | null): Promise<Mpm | null> => {
  if (!config) return Promise.resolve(null);
  const key = JSON.stringify(config);
  if (!mpms.has(key)) mpms.set(key, Mpm.create(config));
  return mpms.get(key)!;
};

const failure = (error: unknown): PrepareFailure =>
  error instanceof DecodeError ? { code: error.code, message: error.message } : { message: (error as Error).message ?? String(error) };

async function prepareLooks({ input, recipe, maxPixels, looks }: LooksJob): Promise<LooksResult> {
  const mpm = await mpmFor(recipe.mpm);
  try {
    const prepared = await decodeAndPrepare(
      input,
      recipe,
      looks.map((look) => ({ ...look, mpm })),
      maxPixels,
    );
    return { ok: true, warnings: prepared.warnings, looks: prepared.looks.map((look) => (look instanceof Error ? failure(look) : look)) };
  } catch (error) {
    return { ok: false, ...failure(error) };
  }
}

parentPort!.on('message', async ({ id, task }: { id: number; task: PoolTask }) => {
  let result: PrepareResult | LooksResult;
  try {
    result = task.kind === 'file' ? await prepareFile(task.path, fileRecipe!, await mpmFor(fileRecipe!.mpm)) : await prepareLooks(task);
  } catch (error) {
    // Every request gets an answer, so the pool never waits forever.
    result = { ok: false, code: 'unreadable', message: `failed to prepare: ${(error as Error).message}` };
  }
  parentPort!.postMessage({ id, result });
});
parentPort!.postMessage('ready');
