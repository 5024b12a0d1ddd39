// Whole-or-nothing writes: a crash, a full disk or an interrupt leaves either the old file or the new one, never
// half of one, and no temporary behind.
import { rmSync } from 'node:fs';
import { open, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';

/**
 * Writes `file` whole or not at all: into a temporary beside it, renamed over it on success. The temporary is
 * removed on failure, at exit, and on SIGINT/SIGTERM when nothing else handles them; those left by writers that
 * were killed outright are removed before writing.
 */
export async function writeFileAtomic(file: string, chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<void> {
  await removeStaleTemporaries(file);
  const temporary = temporaryName(file, process.pid);
  const remove = () => rmSync(temporary, { force: true });
  const onSignal = (signal: NodeJS.Signals) => {
    // With another listener (train's graceful stop), that listener decides; alone, do what the default would.
    if (process.listenerCount(signal) > 1) return;
    remove();
    detach();
    process.kill(process.pid, signal);
  };
  const detach = () => {
    process.off('exit', remove);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
  process.on('exit', remove);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const handle = await open(temporary, 'w');
    try {
      for await (const chunk of chunks) await handle.write(chunk);
    } finally {
      await handle.close();
    }
    await rename(temporary, file);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  } finally {
    detach();
  }
}

const temporaryName = (file: string, pid: number) => `${file}.${pid}.tmp`;

/** Removes `<file>.<pid>.tmp` left by writers that no longer run (killed mid-write). */
export async function removeStaleTemporaries(file: string): Promise<void> {
  const dir = path.dirname(file);
  const prefix = `${path.basename(file)}.`;
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const match = /^(\d+)\.tmp$/.exec(name.slice(prefix.length));
    if (match && !isRunning(Number(match[1]))) await rm(path.join(dir, name), { force: true });
  }
}

function isRunning(pid: number): boolean {
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
