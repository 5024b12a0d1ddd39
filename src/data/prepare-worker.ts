// A PreparePool thread: loads OpenCV once, then prepares each path it is sent.
import { parentPort, workerData } from 'node:worker_threads';
import { Mpm } from '../preprocess/mpm.js';
import { type PrepareRecipe, type PrepareResult, prepareFile } from './prepare.js';

const recipe = workerData as PrepareRecipe;
const mpm = recipe.mpm ? await Mpm.create(recipe.mpm) : null;
parentPort!.on('message', async (path: string) => {
  let result: PrepareResult;
  try {
    result = await prepareFile(path, recipe, mpm);
  } catch (error) {
    // Every path gets an answer, so the pool never waits forever.
    result = { ok: false, code: 'unreadable', message: `failed to prepare: ${(error as Error).message}` };
  }
  parentPort!.postMessage(result);
});
parentPort!.postMessage('ready');
