// Finds libtorch for the addon build, in the order tch-rs made familiar:
// 1. $LIBTORCH (a libtorch directory or a PyTorch installation), 2. the torch package of `python3` on PATH,
// 3. Debian's libtorch-dev. Prints one field for binding.gyp: `include`, `libdir`, `libs`, `ldflags`, `json`, or for the
// distributed binding `c10d` (1 when it can be built, else 0), `c10dInclude`, `c10dReason` and `ncclReason`.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const SYSTEM = { include: '/usr/include', libdir: '/usr/lib/x86_64-linux-gnu' };

function fromRoot(root, source) {
  const torchDir = existsSync(join(root, 'torch', 'include')) ? join(root, 'torch') : root;
  const include = join(torchDir, 'include');
  const libdir = join(torchDir, 'lib');
  if (!existsSync(join(include, 'torch')) || !existsSync(libdir)) return undefined;
  return { source, include: [include, join(include, 'torch/csrc/api/include')], libdir, headers: include };
}

function fromPython() {
  try {
    const out = execFileSync('python3', ['-c', 'import os, torch; print(os.path.dirname(torch.__file__))'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 60_000,
    }).trim();
    return out ? fromRoot(out, `python3 torch package (${out})`) : undefined;
  } catch {
    return undefined;
  }
}

function fromSystem() {
  if (!existsSync(join(SYSTEM.libdir, 'libtorch_cpu.so'))) return undefined;
  return {
    source: "Debian's libtorch-dev",
    include: [join(SYSTEM.include, 'torch/csrc/api/include')],
    libdir: SYSTEM.libdir,
    headers: SYSTEM.include,
    system: true,
  };
}

export function locateLibtorch() {
  const env = process.env.LIBTORCH;
  if (env) {
    const found = fromRoot(env, `LIBTORCH=${env}`);
    if (!found) throw new Error(`LIBTORCH=${env} holds no libtorch (expected include/torch and lib/ there, or torch/include and torch/lib).`);
    return withLibs(found);
  }
  const found = fromPython() ?? fromSystem();
  if (!found) {
    throw new Error(
      'libtorch not found. Install it with: apt-get install -y libtorch-dev libopenblas0-pthread ' +
        '(or point LIBTORCH at a libtorch directory or a PyTorch installation).',
    );
  }
  return withLibs(found);
}

function withLibs(found) {
  const names = readdirSync(found.libdir);
  const has = (lib) => names.some((n) => n === `lib${lib}.so` || n.startsWith(`lib${lib}.so.`));
  const cuda = has('torch_cuda');
  const libs = ['torch', 'torch_cpu', 'c10', ...(cuda ? ['torch_cuda', 'c10_cuda'] : [])];
  return { ...found, cuda, libs };
}

const C10D = 'torch/csrc/distributed/c10d';
// The declarations src/c10d.cc relies on, in the forms libtorch 1.13 (ProcessGroup) and 2.x (Backend) give them.
const C10D_API = [
  ['ProcessGroupGloo.hpp', /class TORCH_API ProcessGroupGloo\s*:\s*public (ProcessGroup|Backend)\b/],
  ['ProcessGroupGloo.hpp', /createDefaultDevice\(/],
  ['ProcessGroupGloo.hpp', /static c10::intrusive_ptr<Options> create\(/],
  ['TCPStore.hpp', /struct TCPStoreOptions/],
  ['FileStore.hpp', /FileStore\((const )?std::string&? path, int numWorkers\)/],
  ['PrefixStore.hpp', /class TORCH_API PrefixStore/],
  ['Work.hpp', /virtual bool wait\(/],
];

/**
 * Whether the distributed binding (src/c10d.cc: c10d's stores and its Gloo process group) can be built against this
 * libtorch: its c10d headers must be there, in an API the binding knows, and so must the headers of the Gloo it was
 * built with. { available, include, reason }; the reason says what is missing and how to get it.
 */
export function c10dSupport(lib) {
  if (process.env.HEMATO_DISTRIBUTED === '0') return { available: false, reason: 'the addon was built with HEMATO_DISTRIBUTED=0' };
  const dir = join(lib.headers, C10D);
  if (!existsSync(join(dir, 'ProcessGroupGloo.hpp'))) {
    return { available: false, reason: `this libtorch has no c10d headers with Gloo (${join(dir, 'ProcessGroupGloo.hpp')} is missing)` };
  }
  for (const [file, pattern] of C10D_API) {
    const path = join(dir, file);
    if (!existsSync(path) || !pattern.test(readFileSync(path, 'utf8'))) {
      return { available: false, reason: `this libtorch's c10d API is one hemato does not know (${path} lacks ${pattern.source.replaceAll('\\', '')})` };
    }
  }
  // Gloo's headers must match the Gloo inside libtorch: Debian's come from libgloo-dev, a PyTorch install ships its own.
  if (!existsSync(join(lib.headers, 'gloo', 'algorithm.h'))) {
    return {
      available: false,
      reason: lib.system
        ? `Gloo's headers are missing (${join(lib.headers, 'gloo')}); Debian's package libgloo-dev has them`
        : `this libtorch ships no Gloo headers (${join(lib.headers, 'gloo')} is missing)`,
    };
  }
  return { available: true, include: lib.headers };
}

/** Why the addon has no NCCL backend: the binding speaks Gloo only, and a CPU-only libtorch has no NCCL anyway. */
export function ncclReason(lib) {
  return lib.cuda ? 'hemato binds only Gloo so far, which carries CPU tensors' : 'this libtorch was built without CUDA, so it has no NCCL';
}

// Reasons travel into the addon as a C string define: keep them to characters no shell or make treats specially.
const defineSafe = (text) => text.replace(/[^\w .,;:()/+=<>-]/g, ' ');

if (import.meta.url === `file://${process.argv[1]}`) {
  const field = process.argv[2] ?? 'json';
  try {
    const lib = locateLibtorch();
    const c10d = c10dSupport(lib);
    const out = {
      include: lib.include.join(' '),
      libdir: lib.libdir,
      // --no-as-needed keeps libtorch_cuda linked although no symbol of it is referenced: that is what registers CUDA.
      ldflags: `-L${lib.libdir} -Wl,-rpath,${lib.libdir} -Wl,--no-as-needed ${lib.libs.map((l) => `-l${l}`).join(' ')} -Wl,--as-needed`,
      json: JSON.stringify({ ...lib, distributed: { available: c10d.available, reason: c10d.reason } }),
      c10d: c10d.available ? '1' : '0',
      c10dInclude: c10d.include ?? '',
      c10dReason: defineSafe(c10d.reason ?? ''),
      ncclReason: defineSafe(ncclReason(lib)),
    }[field];
    process.stdout.write(`${out}\n`);
  } catch (error) {
    process.stderr.write(`${error.message}\n`);
    process.exit(1);
  }
}
