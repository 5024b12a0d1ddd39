// The one rule for touching input files: only regular files of bounded size, checked before they are opened
// (opening a FIFO blocks; /dev/zero never ends) and read with a bounded read; folder walks where one bad entry
// (a link loop, a dangling link, an unreadable folder, a path too long) is reported with its real reason, never
// fatal. Whole-or-nothing writes are the engine's (engine/atomic-write.ts), which model files share.
import { constants, type Dirent, type Stats } from 'node:fs';
import { lstat, open, readdir, readlink, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { DecodeError, type DecodeErrorCode } from './errors.js';

/** 256 MiB: hundreds of times a microscope image, yet small enough to hold in memory. */
export const DEFAULT_MAX_FILE_BYTES = 256 * 2 ** 20;

/** What a path is, links followed; nothing is opened. `missing`: nothing at all there (not even a dangling link). */
export type PathInfo = { kind: 'file'; size: number } | { kind: 'folder' } | { kind: 'skip'; error: DecodeError; missing: boolean };

export async function inspectPath(file: string, maxBytes = DEFAULT_MAX_FILE_BYTES): Promise<PathInfo> {
  let info: Stats;
  try {
    info = await stat(file);
  } catch (error) {
    const missing =
      (error as NodeJS.ErrnoException).code === 'ENOENT' &&
      !(await lstat(file).then(
        () => true,
        () => false,
      ));
    return { kind: 'skip', error: await fsFailure(file, error), missing };
  }
  if (info.isDirectory()) return { kind: 'folder' };
  const problem = checkFile(info, maxBytes);
  return problem ? { kind: 'skip', error: problem, missing: false } : { kind: 'file', size: info.size };
}

/** Reads a whole regular file of at most `maxBytes`; anything else is a DecodeError saying why. */
export async function readRegularFile(file: string, maxBytes = DEFAULT_MAX_FILE_BYTES): Promise<Buffer> {
  return withRegularFile(file, maxBytes, async (handle, size) => {
    // One byte more than its size tells a file that grows (still being copied) or lies about its size (/proc).
    const buffer = Buffer.allocUnsafe(Math.min(size, maxBytes) + 1);
    let total = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, total, buffer.length - total, total);
      if (bytesRead === 0) return buffer.subarray(0, total);
      total += bytesRead;
      if (total === buffer.length) throw new DecodeError('unreadable', 'cannot read: the file is longer than its size said (still being written?)');
    }
  });
}

/** The first `bytes` bytes of a regular file, under the same rule. */
export async function readFileHead(file: string, bytes: number): Promise<Uint8Array> {
  return withRegularFile(file, Number.MAX_SAFE_INTEGER, async (handle) => {
    const head = new Uint8Array(bytes);
    const { bytesRead } = await handle.read(head, 0, bytes, 0);
    return head.subarray(0, bytesRead);
  });
}

type Handle = Awaited<ReturnType<typeof open>>;

async function withRegularFile<T>(file: string, maxBytes: number, use: (handle: Handle, size: number) => Promise<T>): Promise<T> {
  const info = await inspectPath(file, maxBytes);
  if (info.kind === 'skip') throw info.error;
  if (info.kind === 'folder') throw new DecodeError('not-a-file', 'not a regular file: a folder');
  let handle: Handle;
  try {
    // Non-blocking, and checked again once open: the path may have become a FIFO since it was looked at.
    handle = await open(file, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (error) {
    throw await fsFailure(file, error);
  }
  try {
    const now = await handle.stat();
    const problem = now.isDirectory() ? new DecodeError('not-a-file', 'not a regular file: a folder') : checkFile(now, maxBytes);
    if (problem) throw problem;
    return await use(handle, now.size);
  } catch (error) {
    if (error instanceof DecodeError) throw error;
    throw await fsFailure(file, error);
  } finally {
    await handle.close();
  }
}

function checkFile(info: Stats, maxBytes: number): DecodeError | null {
  if (!info.isFile()) return new DecodeError('not-a-file', `not a regular file: ${specialKind(info)}`);
  if (info.size > maxBytes) {
    return new DecodeError(
      'too-large',
      `file ${sizeText(info.size)} is over the ${sizeText(maxBytes)} limit; raise --max-file-size only if the file is trusted`,
    );
  }
  return null;
}

/** What a file that is neither a regular file nor a folder is, in words. */
export function specialKind(info: Stats): string {
  if (info.isFIFO()) return 'a named pipe (FIFO)';
  if (info.isCharacterDevice()) return 'a character device';
  if (info.isBlockDevice()) return 'a block device';
  if (info.isSocket()) return 'a socket';
  return 'a special file';
}

/** A byte count as people write it: '100 KiB', '32 MiB', '1.5 GiB', '900 B'. */
export function sizeText(bytes: number): string {
  for (const [unit, size] of [
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['KiB', 2 ** 10],
  ] as const) {
    if (bytes >= size) return `${Number((bytes / size).toFixed(1))} ${unit}`;
  }
  return `${bytes} B`;
}

/** The real reason a path could not be looked at, as a DecodeError('unreadable'). */
async function fsFailure(file: string, error: unknown): Promise<DecodeError> {
  return new DecodeError('unreadable', `cannot read: ${await fsReason(file, error)}`);
}

/** Why readRegularFile could not read a file, for a message that names the file itself. */
export function readFailure(error: unknown): string {
  return (error as Error).message.replace(/^cannot read: /, '');
}

const UNDECODABLE_NAME = 'its name is not valid UTF-8 (� marks the bytes that are not), and hemato cannot open a file by such a name: rename it in UTF-8';

/**
 * The names in `dir` that are not valid UTF-8, as Node.js lists them: with U+FFFD in place of the bad bytes, a
 * name that then opens nothing.
 */
async function undecodableNames(dir: string): Promise<Set<string>> {
  const names = await readdir(dir, { encoding: 'buffer' }).catch(() => [] as Buffer[]);
  return new Set(names.filter((raw) => !raw.equals(Buffer.from(raw.toString('utf8')))).map((raw) => raw.toString('utf8')));
}

/** Why a file-system call on `file` failed, in words: a dangling link, a link loop, a name too long, … */
export async function fsReason(file: string, error: unknown): Promise<string> {
  const code = (error as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOENT': {
      const target = await readlink(file).catch(() => null);
      if (target !== null) return `dangling symbolic link (its target ${target} does not exist)`;
      const name = path.basename(file);
      return name.includes('\uFFFD') && (await undecodableNames(path.dirname(file))).has(name) ? UNDECODABLE_NAME : 'no such file or folder';
    }
    case 'ELOOP':
      return 'symbolic link loop (too many levels of links)';
    case 'ENAMETOOLONG':
      return 'name or path too long for the file system';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'ENOTDIR':
      // Listing a file fails the same way as a path through one.
      return (await stat(file).then(
        (info) => !info.isDirectory(),
        () => false,
      ))
        ? 'not a folder'
        : 'a part of the path is not a folder';
    case 'EIO':
      return 'input/output error (a failing disk or an unreachable network share?)';
    default:
      // Node's message repeats the code and the path: keep what is left.
      return (error as Error).message.replace(/^[A-Z]+: /, '').replace(/, \w+ '.*'$/s, '');
  }
}

export interface WalkedFile {
  /** `rel` of the folder joined with '/' and the entry's name. */
  rel: string;
  path: string;
}

export interface WalkedSkip extends WalkedFile {
  code: DecodeErrorCode | 'hidden' | 'repeated-folder' | 'outside-folder';
  detail: string;
}

export interface WalkResult {
  files: WalkedFile[];
  skipped: WalkedSkip[];
}

export interface WalkOptions {
  maxBytes?: number;
  /** Report hidden entries as skipped (data sets) instead of passing over them in silence. */
  reportHidden?: boolean;
  /** Folders already listed (by device and inode), shared across walks so a link cannot list one twice. */
  seen?: Set<string>;
  /** A folder (its real path) that links may not lead out of: links resolving outside it are skipped, unfollowed. */
  within?: string;
}

/**
 * Lists a folder recursively in code-unit order (links followed). What cannot be used (a special file, a file over
 * the size limit, a dangling link, a link loop, an unreadable folder) lands in `skipped` with its reason.
 */
export async function walkFolder(dir: string, rel: string, options: WalkOptions = {}, result: WalkResult = { files: [], skipped: [] }): Promise<WalkResult> {
  const seen = options.seen ?? new Set<string>();
  let entries: Dirent[];
  try {
    const info = await stat(dir);
    const id = `${info.dev}:${info.ino}`;
    if (seen.has(id)) {
      result.skipped.push({ rel, path: dir, code: 'repeated-folder', detail: 'a folder already listed, reached again through a symbolic link; listed once' });
      return result;
    }
    seen.add(id);
    entries = await readFolder(dir);
  } catch (error) {
    result.skipped.push({ rel, path: dir, ...asSkip(await fsFailure(dir, error)) });
    return result;
  }
  // One listing of the raw names finds every name that opens nothing, rather than one listing per such file.
  const undecodable = entries.some((entry) => entry.name.includes('\uFFFD')) ? await undecodableNames(dir) : undefined;
  for (const entry of entries) {
    const child = { rel: `${rel}/${entry.name}`, path: path.join(dir, entry.name) };
    if (entry.name.startsWith('.')) {
      if (options.reportHidden) result.skipped.push({ ...child, code: 'hidden', detail: `hidden ${entry.isDirectory() ? 'folder' : 'file'}` });
      continue;
    }
    if (undecodable?.has(entry.name)) {
      result.skipped.push({ ...child, code: 'unreadable', detail: `cannot read: ${UNDECODABLE_NAME}` });
      continue;
    }
    if (options.within !== undefined && entry.isSymbolicLink()) {
      const target = await realpath(child.path).catch(() => null);
      if (target !== null && target !== options.within && !target.startsWith(options.within + path.sep)) {
        result.skipped.push({ ...child, code: 'outside-folder', detail: 'a symbolic link that leads outside the folder' });
        continue;
      }
    }
    const info = await inspectPath(child.path, options.maxBytes);
    if (info.kind === 'file') result.files.push(child);
    else if (info.kind === 'skip') result.skipped.push({ ...child, ...asSkip(info.error) });
    else await walkFolder(child.path, child.rel, { ...options, seen }, result);
  }
  return result;
}

/** A folder's entries in code-unit order, the same on every machine and locale. */
export async function readFolder(dir: string): Promise<Dirent[]> {
  return (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

function asSkip(error: DecodeError): { code: DecodeErrorCode; detail: string } {
  return { code: error.code, detail: error.message };
}

/** File names as a terminal may show them: control characters (newlines, escape sequences) written as escapes. */
export function escapeControl(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\r') return '\\r';
    if (c === '\t') return '\\t';
    const code = c.charCodeAt(0);
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

/** The first few of a list for a message, and how many more there are: "a, b, c, and 4 more". */
export function listFirst(items: readonly string[], shown = 3, separator = ', '): string {
  const first = items.slice(0, shown).join(separator);
  return items.length > shown ? `${first}${separator.trimEnd()} and ${items.length - shown} more` : first;
}
