// Debian's PyTorch (python3-torch, the same libtorch 1.13 as the addon) for the benchmarks' side-by-side peers.
// It installs for Debian's /usr/bin/python3, not for a python3 that comes first on PATH.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const debianPython = '/usr/bin/python3';

/** bench/peers/, where the PyTorch sides of the benchmarks live (this file runs from dist/bench/). */
export const peersDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bench/peers');

/**
 * The environment for a PyTorch peer: hemato's own OpenBLAS thread count (one, unless the user set
 * OPENBLAS_NUM_THREADS), so that both sides run their fp32 matmuls alike.
 */
export function peerEnv(openblasThreads: number): NodeJS.ProcessEnv {
  return openblasThreads > 0 ? { ...process.env, OPENBLAS_NUM_THREADS: String(openblasThreads) } : process.env;
}

/** Installs python3-torch with apt-get when it is missing (as root); returns why PyTorch is unavailable, or undefined. */
export function ensureTorch(log: (message: string) => void): string | undefined {
  const probe = () => spawnSync(debianPython, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
  if (probe()) return undefined;
  if (process.getuid?.() !== 0) return 'python3-torch is missing; install it with: apt-get install -y python3-torch';
  log("installing Debian's python3-torch (the same libtorch 1.13) for the side-by-side run…");
  const install = () =>
    spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'python3-torch'], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    }).status === 0;
  if (!install()) {
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore' });
    install();
  }
  return probe() ? undefined : 'python3-torch could not be installed with apt-get';
}
