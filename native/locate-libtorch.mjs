// Finds libtorch for the addon build, in the order tch-rs made familiar:
// 1. $LIBTORCH (a libtorch directory or a PyTorch installation), 2. the torch package of `python3` on PATH,
// 3. Debian's libtorch-dev. Prints one field for binding.gyp: `include`, `libdir`, `libs`, `ldflags` or `json`.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const SYSTEM = { include: '/usr/include', libdir: '/usr/lib/x86_64-linux-gnu' };

function fromRoot(root, source) {
  const torchDir = existsSync(join(root, 'torch', 'include')) ? join(root, 'torch') : root;
  const include = join(torchDir, 'include');
  const libdir = join(torchDir, 'lib');
  if (!existsSync(join(include, 'torch')) || !existsSync(libdir)) return undefined;
  return { source, include: [include, join(include, 'torch/csrc/api/include')], libdir };
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

if (import.meta.url === `file://${process.argv[1]}`) {
  const field = process.argv[2] ?? 'json';
  try {
    const lib = locateLibtorch();
    const out = {
      include: lib.include.join(' '),
      libdir: lib.libdir,
      // --no-as-needed keeps libtorch_cuda linked although no symbol of it is referenced: that is what registers CUDA.
      ldflags: `-L${lib.libdir} -Wl,-rpath,${lib.libdir} -Wl,--no-as-needed ${lib.libs.map((l) => `-l${l}`).join(' ')} -Wl,--as-needed`,
      json: JSON.stringify(lib),
    }[field];
    process.stdout.write(`${out}\n`);
  } catch (error) {
    process.stderr.write(`${error.message}\n`);
    process.exit(1);
  }
}
