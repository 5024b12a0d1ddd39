import type { Command } from 'commander';
import { printJson } from '../output.js';

interface Check {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

/** Gathers what hemato stands on; every failed check carries the exact command that fixes it. */
export async function diagnose(): Promise<{ ok: boolean; checks: Check[]; report: Record<string, unknown> }> {
  const checks: Check[] = [];
  const report: Record<string, unknown> = { node: process.version, platform: `${process.platform}-${process.arch}` };
  const nodeMajor = Number(process.versions.node.split('.')[0]);
  checks.push({ name: 'node', ok: nodeMajor >= 20, detail: process.version, fix: 'install Node.js 20 or newer' });

  let engine: typeof import('../../engine/index.js') | undefined;
  try {
    engine = await import('../../engine/index.js');
  } catch (error) {
    checks.push({
      name: 'libtorch addon', ok: false, detail: (error as Error).message.split('\n')[0],
      fix: 'bash scripts/setup.sh   (installs libtorch-dev and libopenblas0-pthread with apt, then builds the addon)',
    });
  }
  if (engine) {
    const { located } = await import('../../engine/located.js');
    const info = engine.libtorchInfo();
    const cpu = engine.cpuFeatures();
    const precision = cpu.amx ? 'bf16 autocast' : 'fp32';
    Object.assign(report, {
      libtorch: { version: info.torchVersion, source: located?.source ?? 'unknown', libdir: located?.libdir, cxx11Abi: info.cxx11Abi },
      threads: engine.numThreads(),
      devices: ['cpu', ...Array.from({ length: info.cudaDeviceCount }, (_, i) => `cuda:${i}`)],
      cuda: info.cudaAvailable,
      cpu: { ...cpu, defaultPrecision: precision },
      mkldnn: info.mkldnn,
      openblasCore: info.openblasCore || 'not loaded',
    });
    checks.push({ name: 'libtorch', ok: true, detail: `${info.torchVersion} from ${located?.source ?? 'unknown'}` });
    checks.push({ name: 'threads', ok: engine.numThreads() >= 1, detail: `${engine.numThreads()} (cores: ${engine.defaultThreads})` });
    checks.push({ name: 'cuda', ok: true, detail: info.cudaAvailable ? `${info.cudaDeviceCount} device(s)` : 'not available (CPU only)' });
    checks.push({ name: 'cpu', ok: true, detail: `${cpu.model}; AMX-BF16 ${cpu.amx ? 'yes' : 'no'}, AVX-512-BF16 ${cpu.avx512bf16 ? 'yes' : 'no'}; default precision ${precision}` });
  }
  try {
    const sharp = (await import('sharp')).default;
    report.sharp = { version: sharp.versions.sharp, libvips: sharp.versions.vips };
    checks.push({ name: 'sharp', ok: true, detail: `${sharp.versions.sharp} (libvips ${sharp.versions.vips})` });
  } catch (error) {
    checks.push({ name: 'sharp', ok: false, detail: (error as Error).message.split('\n')[0], fix: 'npm ci' });
  }
  return { ok: checks.every((c) => c.ok), checks, report };
}

export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description('check the installation: libtorch, devices, threads, CPU features and native dependencies')
    .option('--json', 'print one JSON document on stdout')
    .action(async (options: { json?: boolean }) => {
      const { ok, checks, report } = await diagnose();
      if (options.json) {
        printJson({ ok, ...report, checks });
      } else {
        for (const check of checks) {
          process.stdout.write(`${check.ok ? '✓' : '✗'} ${check.name.padEnd(15)} ${check.detail}\n`);
          if (!check.ok && check.fix) process.stdout.write(`  fix: ${check.fix}\n`);
        }
      }
      if (!ok) process.exitCode = 1;
    });
}
