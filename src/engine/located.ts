// Where the addon is, and the libtorch it was built against, as recorded by `npm run build:native` next to it.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** The addon `npm run build:native` makes. */
export const builtAddonPath = path.join(root, 'native/build/Release/hemato_native.node');

/** The addon hemato loads: HEMATO_ADDON when set, else the one the build makes. */
export const addonPath = process.env.HEMATO_ADDON || builtAddonPath;

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
