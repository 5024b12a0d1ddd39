// One training process per run folder: a lock file records the holder's PID and host. Two runs into one folder
// would interleave configs, logs and models; a lock left by a process that died is taken over, with a note.
import { readFileSync, rmSync } from 'node:fs';
import { link, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export const LOCK_FILE = 'train.lock';

interface Holder {
  pid: number;
  host: string;
  since: string;
}

export interface RunLock {
  release(): Promise<void>;
}

function isAlive(holder: Holder): boolean {
  if (holder.host !== os.hostname()) return true; // another machine's process cannot be checked from here
  try {
    process.kill(holder.pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function readHolder(file: string): Promise<{ text: string; holder: Holder | null } | null> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  try {
    const holder = JSON.parse(text) as Holder;
    return { text, holder: Number.isInteger(holder.pid) ? holder : null };
  } catch {
    return { text, holder: null };
  }
}

/** Creates the lock file with its content in one step (a hard link fails if the name exists), so no reader sees it half-written. */
async function tryCreate(file: string, text: string): Promise<boolean> {
  const draft = `${file}.${process.pid}.new`;
  await writeFile(draft, text);
  try {
    await link(draft, file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  } finally {
    await rm(draft, { force: true });
  }
}

/** Moves a dead holder's lock aside, unless another process replaced it meanwhile (then it is put back). */
async function takeOver(file: string, staleText: string): Promise<void> {
  const aside = `${file}.${process.pid}.stale`;
  try {
    await rename(file, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  if ((await readFile(aside, 'utf8')) !== staleText) await link(aside, file).catch(() => undefined);
  await rm(aside, { force: true });
}

/**
 * Locks runDir for this process. A live holder is an error that names it; a dead one's lock is taken over and
 * `note` says so.
 */
export async function lockRunDir(runDir: string, note: (message: string) => void): Promise<RunLock> {
  const file = path.join(runDir, LOCK_FILE);
  const mine: Holder = { pid: process.pid, host: os.hostname(), since: new Date().toISOString() };
  const text = `${JSON.stringify(mine)}\n`;
  for (let attempt = 0; attempt < 5; attempt++) {
    if (await tryCreate(file, text)) return held(file, text);
    const found = await readHolder(file);
    if (!found) continue;
    const { holder } = found;
    if (holder && isAlive(holder)) {
      throw new Error(
        `${runDir} is in use by another training process (PID ${holder.pid} on ${holder.host}, since ${holder.since}); ` +
          `wait for it to finish or choose another --out. If no such process runs, delete ${file}.`,
      );
    }
    note(
      holder ? `${runDir}: taking over the lock of process ${holder.pid}, which is no longer running` : `${runDir}: replacing an unreadable lock file ${file}`,
    );
    await takeOver(file, found.text);
  }
  throw new Error(`could not lock ${runDir}: ${file} keeps changing; is another training process starting there?`);
}

/** The lock, released when asked or, failing that, when the process exits (a second Ctrl-C, an abort). */
function held(file: string, text: string): RunLock {
  const onExit = () => {
    try {
      if (readFileSync(file, 'utf8') === text) rmSync(file, { force: true });
    } catch {
      // Gone already, or unreadable: a later run takes it over.
    }
  };
  process.on('exit', onExit);
  return {
    release: async () => {
      process.off('exit', onExit);
      await release(file, text);
    },
  };
}

async function release(file: string, text: string): Promise<void> {
  const found = await readHolder(file);
  if (found?.text === text) await rm(file, { force: true });
}
