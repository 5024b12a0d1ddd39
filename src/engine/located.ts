// Where the build found libtorch, as recorded by `npm run build:native` next to the addon.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { addonPath } from './native.js';

export interface LibtorchLocation {
  source: string;
  libdir: string;
  include: string[];
  cuda: boolean;
}

function read(): LibtorchLocation | undefined {
  try {
    return JSON.parse(readFileSync(path.join(path.dirname(addonPath), '..', 'libtorch.json'), 'utf8')) as LibtorchLocation;
  } catch {
    return undefined;
  }
}

export const located = read();
