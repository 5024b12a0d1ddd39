import { constants } from 'node:fs';
import { access, lstat, mkdir, realpath, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { escapeControl, fsReason, specialKind } from '../data/files.js';
import { writeFileAtomic } from '../engine/atomic-write.js';

/** An error meant for the user: its message says what went wrong and what to do. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Prints one JSON document on stdout, the contract of every `--json` flag. */
export function printJson(value: unknown): void {
  for (const piece of jsonPieces(value)) process.stdout.write(piece);
}

const PIECE_CHARS = 2 ** 20;

/**
 * The text of JSON.stringify(value, null, 2) and a newline, in pieces of about a MiB. The top level's arrays are
 * turned into text an element at a time: whole, a million images' results outgrow V8's longest string (about
 * 512 MiB), and the document would be lost after every image was classified.
 */
export function* jsonPieces(value: unknown): Generator<string> {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || typeof (value as { toJSON?: unknown }).toJSON === 'function') {
    yield `${JSON.stringify(value, null, 2)}\n`;
    return;
  }
  const nested = (item: unknown, indent: string) => (JSON.stringify(item, null, 2) ?? 'null').replace(/\n/g, `\n${indent}`);
  // As JSON.stringify does, keys whose values have no JSON are left out.
  const entries = Object.entries(value).filter(([, v]) => v !== undefined && typeof v !== 'function' && typeof v !== 'symbol');
  if (entries.length === 0) {
    yield '{}\n';
    return;
  }
  let text = '{';
  for (const [i, [key, item]] of entries.entries()) {
    text += `${i === 0 ? '' : ','}\n  ${JSON.stringify(key)}: `;
    if (!Array.isArray(item) || item.length === 0) text += nested(item, '  ');
    else {
      text += '[';
      for (const [j, element] of item.entries()) {
        text += `${j === 0 ? '' : ','}\n    ${nested(element, '    ')}`;
        if (text.length >= PIECE_CHARS) {
          yield text;
          text = '';
        }
      }
      text += '\n  ]';
    }
  }
  yield `${text}\n}\n`;
}

/**
 * File names as a table's first column: escaped, padded to the longest (4 to 60 characters), longer ones shown by
 * their end. Measured with a loop: spreading the lengths into Math.max overflows the stack past ~120,000 files.
 */
export function nameColumn(files: readonly string[]): string[] {
  const shown = files.map(escapeControl);
  let width = 4;
  for (const name of shown) width = Math.max(width, Math.min(60, name.length));
  return shown.map((name) => (name.length > width ? `…${name.slice(-width + 1)}` : name.padEnd(width)));
}

// Kernel file systems, not places for output: Node's recursive mkdir loops forever under /proc. /dev/shm is tmpfs.
const SYSTEM_FOLDERS = ['/proc', '/sys', '/dev'];
const SYSTEM_EXCEPTIONS = ['/dev/shm'];

/**
 * Creates the output folder `dir` (for the option `what`) after checking it can be one: not under /proc, /sys or
 * /dev (links resolved), and no existing part of the path a file or a dangling link. Returns its absolute path.
 */
export async function prepareOutputDir(dir: string, what: string): Promise<string> {
  const target = path.resolve(dir);
  const fail = (reason: string) => new CliError(`${what} ${dir}: ${reason}; choose another folder`);
  // The deepest part of the path that exists, and the parts to create below it.
  let existing = target;
  const missing: string[] = [];
  for (;;) {
    try {
      if (!(await stat(existing)).isDirectory()) throw fail(`${existing} exists and is not a folder`);
      break;
    } catch (error) {
      if (error instanceof CliError) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      const isLink = await lstat(existing).then(
        (info) => info.isSymbolicLink(),
        () => false,
      );
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || isLink) throw fail(`${existing}: ${await fsReason(existing, error)}`);
      missing.unshift(path.basename(existing));
      existing = path.dirname(existing);
    }
  }
  const real = path.join(await realpath(existing), ...missing);
  const under = (root: string) => real === root || real.startsWith(`${root}/`);
  if (SYSTEM_FOLDERS.some(under) && !SYSTEM_EXCEPTIONS.some(under))
    throw fail(`${real} is inside ${SYSTEM_FOLDERS.find(under)}, a kernel file system, not a place for output`);
  // One level at a time: a recursive mkdir can retry forever where the kernel refuses in odd ways.
  let current = existing;
  for (const part of missing) {
    current = path.join(current, part);
    try {
      await mkdir(current);
    } catch (error) {
      if (
        (error as NodeJS.ErrnoException).code !== 'EEXIST' ||
        !(await stat(current).then(
          (i) => i.isDirectory(),
          () => false,
        ))
      ) {
        throw fail(`cannot create ${current}: ${await fsReason(current, error)}`);
      }
    }
  }
  // Before any work: a folder that exists but cannot be written to would fail only at the first file.
  await access(target, constants.W_OK).catch(async (error) => {
    throw fail(`cannot write into ${target}: ${await fsReason(target, error)}`);
  });
  return target;
}

/**
 * Writes one of a command's files into its --out folder. A file or link already at that name is replaced only where
 * `replace`, and then whole: the new file is renamed over the name, so a link there is replaced itself, never
 * written through to what it points at. A failure names the file and stops the command.
 */
export async function writeOutput(file: string, bytes: Uint8Array, replace: boolean): Promise<void> {
  try {
    // 'wx' refuses what appeared at the name since the command checked, a dangling link included.
    await (replace ? writeFileAtomic(file, [bytes]) : writeFile(file, bytes, { flag: 'wx' }));
  } catch (error) {
    throw new CliError(`cannot write ${escapeControl(file)}: ${await fsReason(file, error)}; choose another --out`);
  }
}

/**
 * Checks a command's one output file before any work is done: its folder can be made (prepareOutputDir) and it is
 * not a folder itself. Whether a file is there already: the command replaces it only once the new one is complete,
 * and says so.
 */
export async function prepareOutputFile(file: string, flag = '--out'): Promise<{ replaces: boolean }> {
  await prepareOutputDir(path.dirname(path.resolve(file)), `the folder of ${flag}`);
  const info = await stat(file).catch(() => null);
  if (info?.isDirectory()) throw new CliError(`${flag} ${file} is a folder; give a file name`);
  // A pipe or a device there would be replaced by a file, not written to.
  if (info && !info.isFile()) throw new CliError(`${flag} ${file} is ${specialKind(info)}, not a file; give a file name`);
  return { replaces: info !== null };
}

/**
 * Refuses, before any work, an output that would replace one of the command's inputs. Compared as files (device and
 * inode, links followed), so another path to the same file is caught too; an output not there yet is no input.
 */
export async function refuseOutputOverInput(
  flag: string,
  out: string,
  outputs: readonly string[],
  inputs: readonly [string, string | undefined][],
): Promise<void> {
  for (const output of outputs) {
    const target = await stat(output).catch(() => null);
    if (!target) continue;
    for (const [inputFlag, input] of inputs) {
      const source = input === undefined ? null : await stat(input).catch(() => null);
      if (source && source.dev === target.dev && source.ino === target.ino)
        throw new CliError(
          `${flag} ${escapeControl(out)} ${output === out ? 'is' : `writes ${escapeControl(output)}, which is`} the ${inputFlag} file this command reads, and would replace it; give another ${flag}`,
          2,
        );
    }
  }
}
