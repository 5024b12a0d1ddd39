// What a run records about where it ran: code version, libraries, hardware.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import * as E from '../engine/index.js';

function gitCommit(): string | null {
  try {
    return execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

function packageVersion(name: string): string | null {
  try {
    return (JSON.parse(readFileSync(new URL(`../../../node_modules/${name}/package.json`, import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return null;
  }
}

export function provenance(device: E.Device): Record<string, unknown> {
  const info = E.libtorchInfo();
  const cpu = E.cpuFeatures();
  return {
    git_commit: gitCommit(),
    hemato: (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version,
    node: process.version,
    libtorch: info.torchVersion,
    packages: { sharp: packageVersion('sharp'), '@techstark/opencv-js': packageVersion('@techstark/opencv-js') },
    device,
    cpu: { model: cpu.model, cores: os.availableParallelism(), amx: cpu.amx, avx512bf16: cpu.avx512bf16, threads: E.numThreads() },
    cuda_devices: info.cudaDeviceCount,
    hostname: os.hostname(),
    date: new Date().toISOString(),
  };
}
