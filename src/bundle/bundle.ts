// The offline bundle: one .tar.xz that runs hemato on a machine without node or a package registry (the GPU target
// in DESIGN.md). It holds the running node binary (xz-compressed), the compiled JS, the runtime node_modules, the
// addon's sources with the N-API headers to build them with g++ alone, run.sh, the bundled model (or another, or
// none) and optionally a data set.
import { spawn, spawnSync } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync, openSync, readdirSync, readFileSync, realpathSync, rmSync, statSync } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { BUNDLED_MODEL } from '../api/classifier.js';

/** The repository (or installed package) root: dist/src/bundle/ is three levels below it. */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
/** The N-API headers an addon build needs; node_api.h includes the other three. */
export const NAPI_HEADERS = ['node_api.h', 'node_api_types.h', 'js_native_api.h', 'js_native_api_types.h'];
/** The top directory inside the archive. */
export const BUNDLE_DIR = 'hemato-bundle';
/** The size an archive without a model or data should stay under. */
export const SIZE_TARGET = 40 * 2 ** 20;

export interface BundleOptions {
  out: string;
  /** The model to carry into app/models/; default: the bundled model, false: none. */
  model?: string | false;
  pack?: string;
  /** xz preset for the node binary and the archive, 0 (fast) to 9; default 6. */
  xzLevel?: number;
  root?: string;
  /** Called as each stage makes progress; `total` is in the stage's own unit (bytes or files). */
  onProgress?: (stage: BundleStage, done: number, total: number) => void;
}

export type BundleStage = 'copy' | 'node' | 'archive';

export interface BundleResult {
  out: string;
  bytes: number;
  /** Whether the archive, less the model and data it carries, stays under SIZE_TARGET. */
  underSizeTarget: boolean;
  node: { version: string; from: string; bytes: number; xzBytes: number };
  napiHeadersFrom: string;
  modules: string[];
  /** Bytes staged per part, before the archive's compression. */
  parts: Record<string, number>;
  model?: string;
  pack?: string;
  xzLevel: number;
  seconds: number;
}

/** Files of the repository that go into the bundle besides dist/src: the entry point, tests and bench for the GPU run. */
const EXTRA_FILES = [
  'bin/hemato.js',
  'dist/test/engine-cuda.test.js',
  'dist/test/helpers.js',
  'dist/bench/cuda-block.js',
  'dist/bench/blocks.js',
  'bench/peers/torch_cuda_block.py',
  'native/binding.gyp',
  'native/locate-libtorch.mjs',
];

export async function makeBundle(options: BundleOptions): Promise<BundleResult> {
  const started = Date.now();
  const root = options.root ?? PACKAGE_ROOT;
  const level = options.xzLevel ?? 6;
  if (!Number.isInteger(level) || level < 0 || level > 9) throw new RangeError(`xz level must be an integer 0–9, got ${level}`);
  const progress = options.onProgress ?? (() => {});
  const out = path.resolve(options.out);
  const model = bundleModel(root, options.model);
  if (options.pack && !existsSync(options.pack)) throw new Error(`the data set ${options.pack} does not exist`);
  for (const tool of ['tar', 'xz'])
    await run(tool, ['--version']).catch(() => {
      throw new Error(`${tool} is needed to write the bundle and was not found on PATH`);
    });
  const distEntry = path.join(root, 'dist/src/cli/main.js');
  if (!existsSync(distEntry)) throw new Error(`${distEntry} is missing: compile first (npx tsc -p tsconfig.json)`);
  const napiDir = findNapiHeaders();
  const modules = runtimeModules(root);
  const jobs = bundleJobs(root, { napiDir, modules, model, pack: options.pack });

  const staging = await mkdtemp(path.join(os.tmpdir(), 'hemato-bundle-'));
  const partial = `${out}.partial`;
  const release = removeOnSignal([staging, partial]);
  try {
    const top = path.join(staging, BUNDLE_DIR);
    const app = path.join(top, 'app');

    // ---- copy: JS, addon sources, headers, node_modules, scripts, model, data
    const parts = await stage(jobs, staging, (done) => progress('copy', done, jobs.length));
    await writeFile(path.join(app, 'package.json'), `${JSON.stringify(runtimePackageJson(root), null, 2)}\n`);
    await chmod(path.join(top, 'run.sh'), 0o755);
    await chmod(path.join(top, 'gpu-check.sh'), 0o755);

    // ---- node: the running binary, xz-compressed
    const nodeFrom = realpathSync(process.execPath);
    checkPortable(nodeFrom);
    const nodeBytes = statSync(nodeFrom).size;
    const nodeXz = path.join(top, 'node/node.xz');
    await mkdirUnder(staging, path.relative(staging, path.dirname(nodeXz)));
    await xzFile(nodeFrom, nodeXz, level, (done) => progress('node', done, nodeBytes));
    const xzBytes = (await stat(nodeXz)).size;
    parts.node = xzBytes;

    const manifest = {
      name: 'hemato',
      version: runtimePackageJson(root).version,
      created: new Date().toISOString(),
      node: { version: process.version, platform: `${process.platform}-${process.arch}`, napi: process.versions.napi },
      napiHeadersFrom: napiDir,
      modules: modules.map((m) => m.replace(/^node_modules\//, '')),
      model: model ? `app/models/${path.basename(model)}` : null,
      pack: options.pack ? `data/${path.basename(options.pack)}` : null,
    };
    await writeFile(path.join(top, 'MANIFEST.json'), `${JSON.stringify(manifest, null, 2)}\n`);

    // ---- archive: tar | xz, written beside the target and renamed into place
    const total = await sizeOf(top);
    await mkdir(path.dirname(out), { recursive: true });
    try {
      await tarXz(staging, BUNDLE_DIR, partial, level, (done) => progress('archive', Math.min(done, total), total));
      await rename(partial, out);
    } finally {
      await rm(partial, { force: true });
    }
    const bytes = (await stat(out)).size;
    return {
      out,
      bytes,
      underSizeTarget: bytes - (parts.model ?? 0) - (parts.pack ?? 0) <= SIZE_TARGET,
      node: { version: process.version, from: nodeFrom, bytes: nodeBytes, xzBytes },
      napiHeadersFrom: napiDir,
      modules: manifest.modules,
      parts,
      model: manifest.model ?? undefined,
      pack: manifest.pack ?? undefined,
      xzLevel: level,
      seconds: Math.round((Date.now() - started) / 100) / 10,
    };
  } finally {
    release();
    await rm(staging, { recursive: true, force: true });
  }
}

/** The model file to carry: the one given, else the package's bundled model (which must then be there), or none. */
export function bundleModel(root: string, model: string | false | undefined): string | undefined {
  if (model === false) return undefined;
  const file = model ?? path.join(root, 'models', path.basename(BUNDLED_MODEL));
  if (!existsSync(file)) {
    throw new Error(
      model === undefined
        ? `the bundled model ${file} is missing: pass --model FILE, or --no-model for a bundle that carries none`
        : `the model ${file} does not exist`,
    );
  }
  return file;
}

/** One copy into the staging folder: a bundle part (for the size report), and where from and to (relative). */
export interface BundleJob {
  part: string;
  from: string;
  to: string;
}

/** Everything the archive holds besides node and the generated files, as copies to make. */
export function bundleJobs(root: string, what: { napiDir: string; modules: string[]; model?: string; pack?: string }): BundleJob[] {
  const app = path.join(BUNDLE_DIR, 'app');
  const jobs: BundleJob[] = [{ part: 'js', from: path.join(root, 'dist/src'), to: path.join(app, 'dist/src') }];
  for (const file of EXTRA_FILES) {
    const from = path.join(root, file);
    if (!existsSync(from)) throw new Error(`${from} is missing: compile first (npx tsc -p tsconfig.json)`);
    jobs.push({ part: file.startsWith('native/') ? 'native' : 'js', from, to: path.join(app, file) });
  }
  // The review page's static files, which `hemato serve` reads from beside dist/.
  jobs.push({ part: 'js', from: path.join(root, 'src/serve/page'), to: path.join(app, 'src/serve/page') });
  jobs.push({ part: 'native', from: path.join(root, 'native/src'), to: path.join(app, 'native/src') });
  for (const header of NAPI_HEADERS) jobs.push({ part: 'native', from: path.join(what.napiDir, header), to: path.join(app, 'native/napi-include', header) });
  for (const dir of what.modules) {
    if (dir === 'node_modules/node-addon-api') {
      // Only its headers are needed: the addon is compiled against them.
      for (const name of readdirSync(path.join(root, dir)).filter((n) => n.endsWith('.h') || n === 'package.json' || n.startsWith('LICENSE'))) {
        jobs.push({ part: 'node_modules', from: path.join(root, dir, name), to: path.join(app, dir, name) });
      }
    } else {
      jobs.push({ part: 'node_modules', from: path.join(root, dir), to: path.join(app, dir) });
    }
  }
  jobs.push({ part: 'scripts', from: path.join(root, 'scripts/bundle/run.sh'), to: path.join(BUNDLE_DIR, 'run.sh') });
  jobs.push({ part: 'scripts', from: path.join(root, 'scripts/gpu-check.sh'), to: path.join(BUNDLE_DIR, 'gpu-check.sh') });
  if (what.model) jobs.push({ part: 'model', from: what.model, to: path.join(app, 'models', path.basename(what.model)) });
  if (what.pack) jobs.push({ part: 'pack', from: what.pack, to: path.join(BUNDLE_DIR, 'data', path.basename(what.pack)) });
  return jobs;
}

/**
 * Copies the jobs under the folder `staging`, which must exist, and returns the bytes staged per part. Links are resolved: the archive must hold
 * the files themselves, since a link's target does not travel with it.
 */
export async function stage(jobs: BundleJob[], staging: string, onJob: (done: number) => void = () => {}): Promise<Record<string, number>> {
  const parts: Record<string, number> = {};
  for (const [i, { part, from, to }] of jobs.entries()) {
    const target = path.join(staging, to);
    await mkdirUnder(staging, path.dirname(to));
    await cp(from, target, { recursive: true, dereference: true, filter: (src) => keep(src, from) });
    parts[part] = (parts[part] ?? 0) + (await sizeOf(target));
    onJob(i + 1);
  }
  return parts;
}

/**
 * Makes `dir` (relative) and the folders above it under `root`, one by one and never `root` itself. A recursive
 * mkdir still in flight on libuv's threads when an interrupted bundle removes its staging folder would make the
 * whole chain again, the staging folder included; one folder at a time needs its parent, so nothing can.
 */
async function mkdirUnder(root: string, dir: string): Promise<void> {
  let at = root;
  for (const name of dir.split(path.sep).filter(Boolean)) {
    at = path.join(at, name);
    await mkdir(at).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error;
    });
  }
}

/**
 * Removes `p` and all it holds while copies in flight on libuv's threads may still add a file (ENOTEMPTY). rmSync's
 * own retries repeat only the final rmdir, which then fails for good; the whole removal is repeated instead.
 */
function removeAll(p: string): void {
  for (let attempt = 1; ; attempt++) {
    try {
      rmSync(p, { recursive: true, force: true });
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOTEMPTY' || attempt === 20) throw error;
      // Let the copies in flight finish: none can start while this handler holds the main thread.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10 * attempt);
    }
  }
}

const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

/**
 * Interrupted (Ctrl-C, kill), node exits without running finally blocks: remove these paths on SIGINT and SIGTERM
 * first. With another listener for the signal, that listener decides what follows; alone, do what the default would.
 * Returns the function that detaches the listeners.
 */
function removeOnSignal(paths: string[]): () => void {
  const onSignal = (signal: NodeJS.Signals) => {
    for (const p of paths) {
      // Never let a failure here keep the signal from ending the process.
      try {
        removeAll(p);
      } catch (error) {
        process.stderr.write(`could not remove ${p}: ${(error as Error).message}\n`);
      }
    }
    if (process.listenerCount(signal) > 1) return;
    detach();
    process.kill(process.pid, signal);
  };
  const detach = () => {
    for (const signal of SIGNALS) process.off(signal, onSignal);
  };
  for (const signal of SIGNALS) process.on(signal, onSignal);
  return detach;
}

/** What a portable node links: glibc, libstdc++ and libgcc, which every Linux target has. */
const BASE_LIBS = /^(linux-vdso|libdl|libstdc\+\+|libm|libgcc_s|libpthread|libc|librt|libatomic|ld-linux[-\w]*)\.so/;

/**
 * A node linked against its distribution's shared libraries (libnode, libuv, ICU, OpenSSL) would not start on the
 * target: refuse it, naming the libraries. Skipped where ldd is absent.
 */
function checkPortable(node: string): void {
  const ldd = spawnSync('ldd', [node], { encoding: 'utf8' });
  if (ldd.status !== 0 || !ldd.stdout) return;
  const libs = ldd.stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/)[0])
    .filter(Boolean)
    .map((l) => path.basename(l));
  const extra = libs.filter((lib) => !BASE_LIBS.test(lib));
  if (extra.length > 0) {
    throw new Error(
      `${node} links ${extra.join(', ')}, which the target may lack: run hemato bundle with an official ` +
        'node build (the nodejs.org linux-x64 tarball), whose binary links only glibc and libstdc++',
    );
  }
}

/** Source maps, declarations and nested node_modules stay out (nested packages are copied as modules of their own). */
function keep(src: string, base: string): boolean {
  const rel = path.relative(base, src);
  if (rel.split(path.sep).includes('node_modules')) return false;
  return !/\.(map|d\.ts)$/.test(src) || src === base;
}

/**
 * The N-API headers of this node: beside the binary (official tarballs), node-gyp's header cache, or the system's
 * (Debian's nodejs-dev). Only the four N-API headers are used, and N-API is stable across node versions.
 */
export function findNapiHeaders(): string {
  const candidates = [
    path.resolve(path.dirname(realpathSync(process.execPath)), '../include/node'),
    path.join(os.homedir(), '.cache/node-gyp', process.versions.node, 'include/node'),
    process.env.npm_config_devdir ? path.join(process.env.npm_config_devdir, process.versions.node, 'include/node') : '',
    '/usr/include/node',
    '/usr/local/include/node',
  ].filter(Boolean);
  const found = candidates.find((dir) => NAPI_HEADERS.every((h) => existsSync(path.join(dir, h))));
  if (!found) {
    throw new Error(
      `no N-API headers (${NAPI_HEADERS.join(', ')}) found in ${candidates.join(', ')}: ` +
        'run `npx node-gyp install` once to fetch them into ~/.cache/node-gyp',
    );
  }
  return found;
}

interface PackageJson {
  name?: string;
  version?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
}

function readPackage(dir: string): PackageJson {
  return JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as PackageJson;
}

/**
 * The installed packages the runtime needs, as paths relative to root: the closure of package.json's dependencies
 * over dependencies and the optional dependencies installed here (sharp's prebuilt @img/* for this platform).
 * Resolution follows node's: the nearest node_modules upwards from the depending package.
 */
export function runtimeModules(root: string): string[] {
  const found = new Set<string>();
  root = path.resolve(root);
  // node_modules directories searched from a package directory: its own, then each enclosing one up to root's.
  const lookups = (dir: string): string[] => {
    const dirs: string[] = [];
    for (let d = dir; ; d = path.dirname(d)) {
      if (path.basename(d) !== 'node_modules') dirs.push(path.join(d, 'node_modules'));
      if (d === root || d === path.dirname(d)) return dirs;
    }
  };
  const visit = (fromDir: string, name: string, optional: boolean) => {
    const candidate = lookups(fromDir)
      .map((d) => path.join(d, name))
      .find((d) => existsSync(path.join(d, 'package.json')));
    if (!candidate) {
      if (optional) return;
      throw new Error(`the runtime dependency ${name} is not installed (needed by ${path.relative(root, fromDir) || 'hemato'}): run npm ci`);
    }
    const rel = path.relative(root, candidate);
    if (found.has(rel)) return;
    found.add(rel);
    const pkg = readPackage(candidate);
    for (const dep of Object.keys(pkg.dependencies ?? {})) visit(candidate, dep, false);
    for (const dep of Object.keys(pkg.optionalDependencies ?? {})) visit(candidate, dep, true);
  };
  for (const dep of Object.keys(readPackage(root).dependencies ?? {})) visit(root, dep, false);
  return [...found].sort();
}

/** package.json as the bundle needs it: no dev dependencies and no build scripts (there is no npm there). */
function runtimePackageJson(root: string): { version: string } & Record<string, unknown> {
  const { devDependencies: _dev, scripts: _scripts, ...rest } = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as Record<string, unknown>;
  return { ...rest, version: typeof rest.version === 'string' ? rest.version : '0.0.0' };
}

async function sizeOf(p: string): Promise<number> {
  const s = await stat(p);
  if (!s.isDirectory()) return s.size;
  let total = 0;
  for (const entry of await readdir(p)) total += await sizeOf(path.join(p, entry));
  return total;
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: 'ignore' });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} exited with ${code}`))));
  });
}

/** Waits for a child to end; its stderr becomes the error message when it fails. */
function finished(child: ReturnType<typeof spawn>, what: string): Promise<void> {
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${what} failed (exit ${code}): ${stderr.trim()}`))));
  });
}

/** A pass-through stream that reports the bytes gone through it. */
function counter(onBytes: (done: number) => void): Transform {
  let done = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      done += chunk.length;
      onBytes(done);
      callback(null, chunk);
    },
  });
}

async function xzFile(from: string, to: string, level: number, onBytes: (done: number) => void): Promise<void> {
  const xz = spawn('xz', ['-T0', `-${level}`, '-c'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const done = finished(xz, 'xz');
  await Promise.all([pipeline(createReadStream(from), counter(onBytes), xz.stdin!), pipeline(xz.stdout!, createWriteStream(to)), done]);
}

async function tarXz(cwd: string, dir: string, to: string, level: number, onBytes: (done: number) => void): Promise<void> {
  // Opened here, not on libuv's threads: an open in flight when a signal removes `to` would make it again.
  const output = createWriteStream(to, { fd: openSync(to, 'w') });
  const tar = spawn('tar', ['-C', cwd, '--owner=0', '--group=0', '--numeric-owner', '-cf', '-', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  const xz = spawn('xz', ['-T0', `-${level}`, '-c'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const done = Promise.all([finished(tar, 'tar'), finished(xz, 'xz')]);
  await Promise.all([pipeline(tar.stdout!, counter(onBytes), xz.stdin!), pipeline(xz.stdout!, output), done]);
}
