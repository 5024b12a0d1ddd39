// The folder a server was started with, read-only: listed and read by paths relative to it, and nothing outside it
// is reachable (no '..', absolute or hidden paths; links are resolved and must stay inside).
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { DEFAULT_MAX_FILE_BYTES, readRegularFile, walkFolder } from '../data/files.js';
import { ServeError } from './model-worker.js';

export interface FolderListing {
  name: string;
  files: { path: string; bytes: number }[];
}

const NOT_FOUND = (rel: string) => new ServeError(`no image '${rel}' in the served folder`, 'not-found', 404);

export class ServedFolder {
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
  async list(): Promise<FolderListing> {
    const walked = await walkFolder(this.root, '', { maxBytes: this.maxBytes, within: this.root });
    const files: FolderListing['files'] = [];
    for (const file of walked.files) {
      const real = await realpath(file.path).catch(() => null);
      if (real === null || !this.contains(real)) continue;
      files.push({ path: file.rel.slice(1), bytes: (await stat(real)).size });
    }
    return { name: path.basename(this.root), files };
  }

  /** A file's bytes by its relative path; anything that is not a listed file is 404, whatever the reason. */
  async read(rel: unknown): Promise<Buffer> {
    if (typeof rel !== 'string' || rel === '') throw new ServeError("give the image's path in the served folder as ?path=", 'bad-request', 400);
    const parts = rel.split('/');
    if (rel.includes('\0') || parts.some((part) => part === '' || part.startsWith('.'))) throw NOT_FOUND(rel);
    const real = await realpath(path.join(this.root, ...parts)).catch(() => null);
    if (real === null || !this.contains(real)) throw NOT_FOUND(rel);
    return readRegularFile(real, this.maxBytes).catch(() => {
      throw NOT_FOUND(rel);
    });
  }

  private contains(real: string): boolean {
    return real.startsWith(this.root + path.sep);
  }
}
