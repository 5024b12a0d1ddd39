// The folder a server was started with, read-only: listed and read by paths relative to it. Exactly the files of
// the listing are served (no '..', absolute or hidden paths; links are resolved and must stay inside).
import { constants } from 'node:fs';
import { open, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { DEFAULT_MAX_FILE_BYTES, readFailure, readRegularFile, walkFolder } from '../data/files.js';
import { ServeError } from './model-worker.js';

export interface FolderListing {
  name: string;
  files: { path: string; bytes: number }[];
  /** Entries the walk could not use, with the reason's code (docs/reliability.md): `unreadable`, `not-a-file`, … */
  skipped: { path: string; reason: string }[];
}

const NOT_FOUND = (rel: string) => new ServeError(`no image '${rel}' in the served folder`, 'not-found', 404);

export class ServedFolder {
  /** The paths of the latest listing: only these are served. */
  private listed = new Set<string>();
  private walking: Promise<FolderListing> | null = null;

  private constructor(
    readonly root: string,
    private readonly maxBytes: number,
  ) {}

  static async open(dir: string, maxBytes = DEFAULT_MAX_FILE_BYTES): Promise<ServedFolder> {
    const root = await realpath(dir).catch((error: NodeJS.ErrnoException) => {
      throw new Error(`cannot serve ${dir}: ${error.code === 'ENOENT' ? 'no such folder' : error.message}`);
    });
    if (!(await stat(root)).isDirectory()) throw new Error(`cannot serve ${dir}: not a folder`);
    return new ServedFolder(root, maxBytes);
  }

  /** Every regular file below the folder (hidden entries passed over), with '/'-separated relative paths. */
  list(): Promise<FolderListing> {
    // Requests that come while the folder is walked share that walk.
    return (this.walking ??= this.walk().finally(() => {
      this.walking = null;
    }));
  }

  /** A file's bytes by its relative path, if the listing holds it; a file added since is found by listing again. */
  async read(rel: unknown): Promise<Buffer> {
    if (typeof rel !== 'string' || rel === '') throw new ServeError("give the image's path in the served folder as ?path=", 'bad-request', 400);
    // Paths no listing can hold are refused without walking the folder.
    if (rel.includes('\0') || rel.split('/').some((part) => part === '' || part.startsWith('.'))) throw NOT_FOUND(rel);
    if (!this.listed.has(rel)) await this.list();
    if (!this.listed.has(rel)) throw NOT_FOUND(rel);
    // Checked again: the file may have been removed or replaced by a link since it was listed.
    const real = await realpath(path.join(this.root, rel)).catch(() => null);
    if (real === null) {
      await this.list(); // says so if it is the whole folder that is gone
      throw NOT_FOUND(rel);
    }
    if (!this.contains(real)) throw NOT_FOUND(rel);
    try {
      return await readRegularFile(real, this.maxBytes);
    } catch (error) {
      throw await failure(`'${rel}' in the served folder`, real, readFailure(error));
    }
  }

  private async walk(): Promise<FolderListing> {
    const name = path.basename(this.root);
    const walked = await walkFolder(this.root, '', { maxBytes: this.maxBytes, within: this.root });
    // The folder itself could not be listed (moved, deleted, its permissions changed): no listing, but why.
    const root = walked.skipped.find((entry) => entry.rel === '');
    if (root) {
      const why = root.detail.replace(/^cannot read: /, '');
      throw await failure(`the served folder '${name}'`, this.root, why, 'restart hemato serve with a folder it can read');
    }
    const files: FolderListing['files'] = [];
    for (const file of walked.files) {
      const real = await realpath(file.path).catch(() => null);
      if (real === null || !this.contains(real)) continue;
      const info = await stat(real).catch(() => null);
      if (info) files.push({ path: file.rel.slice(1), bytes: info.size });
    }
    this.listed = new Set(files.map((file) => file.path));
    // Codes only: a detail may name a link's target outside the folder.
    return { name, files, skipped: walked.skipped.map((entry) => ({ path: entry.rel.slice(1), reason: entry.code })) };
  }

  private contains(real: string): boolean {
    return real.startsWith(this.root + path.sep);
  }
}

/**
 * A listed file or the folder itself that cannot be read, with the real cause: permission denied is 403, anything
 * else (gone, a failing disk) the server's own problem, 500. Never 404: the server listed it.
 */
async function failure(what: string, real: string, reason: string, advice?: string): Promise<ServeError> {
  // Opened again for the system's own error code (not access(), which asks for the real user, not the effective one).
  const code = await open(real, constants.O_RDONLY | constants.O_NONBLOCK).then(
    (handle) => handle.close().then(() => undefined),
    (failed: NodeJS.ErrnoException) => failed.code,
  );
  if (code === 'EACCES' || code === 'EPERM')
    return new ServeError(`cannot read ${what}: permission denied; ${advice ?? "give the server's user read access to it"}`, 'forbidden', 403);
  const why = code === 'ENOENT' ? 'it no longer exists (moved or deleted?)' : reason;
  return new ServeError(`cannot read ${what}: ${why}${advice ? `; ${advice}` : ''}`, 'unreadable', 500);
}
