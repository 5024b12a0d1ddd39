import { availableParallelism } from 'node:os';
import type { Command } from 'commander';
import * as E from '../../engine/index.js';
import { addonPath, located } from '../../engine/located.js';
import { printJson } from '../output.js';
import { parseChoice } from './shared.js';

interface Check {
  name: string;
  ok: boolean;
  detail: string;
  /** What to do when the check fails, most likely first. */
  fixes?: string[];
}

type DeviceRequest = 'auto' | 'cpu' | 'cuda';

/** Gathers what hemato stands on; every failed check carries the commands that fix it. */
export async function diagnose(device: DeviceRequest = 'auto'): Promise<{ ok: boolean; checks: Check[]; report: Record<string, unknown> }> {
  const checks: Check[] = [];
  const report: Record<string, unknown> = { node: process.version, platform: `${process.platform}-${process.arch}` };
  const nodeMajor = Number(process.versions.node.split('.')[0]);
  checks.push({ name: 'node', ok: nodeMajor >= 20, detail: process.version, fixes: ['install Node.js 20 or newer'] });
  const threadSetting = threadSettingCheck();
  if (threadSetting) checks.push(threadSetting);
  // An invalid HEMATO_NUM_THREADS stops the addon from loading, so libtorch is checked only without one.
  else checkLibtorch(checks, report, device);
  checks.push(await checkSharp(report));
  // Fixes belong to failures only.
  return { ok: checks.every((c) => c.ok), checks: checks.map(({ fixes, ...c }) => (c.ok ? c : { ...c, fixes })), report };
}

function threadSettingCheck(): Check | undefined {
  const value = process.env.HEMATO_NUM_THREADS;
  if (!value) return undefined;
  try {
    E.checkThreadCount(value, 'HEMATO_NUM_THREADS');
    return undefined;
  } catch (error) {
    const fix = `set HEMATO_NUM_THREADS to a whole number in 1..${E.maxThreads()}, or unset it to use the ${availableParallelism()} cores`;
    return { name: 'threads', ok: false, detail: (error as Error).message, fixes: [fix] };
  }
}

function checkLibtorch(checks: Check[], report: Record<string, unknown>, device: DeviceRequest): void {
  try {
    E.loadAddon();
  } catch (error) {
    const reason = error instanceof E.AddonLoadError ? error.reason : (error as Error).message.split('\n')[0];
    checks.push({ name: 'libtorch addon', ok: false, detail: reason, fixes: error instanceof E.AddonLoadError ? error.fixes : undefined });
    return;
  }
  const info = E.libtorchInfo();
  const cpu = E.cpuFeatures();
  const precision = cpu.amx ? 'bf16 autocast' : 'fp32';
  Object.assign(report, {
    libtorch: { version: info.torchVersion, source: located?.source ?? 'unknown', libdir: located?.libdir, cxx11Abi: info.cxx11Abi },
    threads: E.numThreads(),
    devices: ['cpu', ...Array.from({ length: info.cudaDeviceCount }, (_, i) => `cuda:${i}`)],
    cuda: info.cudaAvailable,
    cpu: { ...cpu, defaultPrecision: precision },
    mkldnn: info.mkldnn,
    openblasCore: info.openblasCore || 'not loaded',
  });
  checks.push({ name: 'libtorch addon', ok: true, detail: addonPath });
  checks.push(versionCheck(info.torchVersion));
  checks.push(threadsCheck());
  const cpuRun = roundTrip('cpu');
  const cpuDetail = `${cpu.model}; AMX-BF16 ${cpu.amx ? 'yes' : 'no'}, AVX-512-BF16 ${cpu.avx512bf16 ? 'yes' : 'no'}; default precision ${precision}`;
  checks.push({ name: 'cpu', ok: cpuRun.ok, detail: cpuRun.ok ? cpuDetail : cpuRun.detail, fixes: [REBUILD] });
  checks.push(...cudaChecks(info, device));
}

const REBUILD = 'npm run build:native   (rebuilds the addon against the libtorch installed)';

function versionCheck(version: string): Check {
  const ok = /^\d+\.\d+\.\d+/.test(version);
  const source = located?.source ?? 'an unrecorded location (native/build/libtorch.json is missing)';
  return { name: 'libtorch', ok, detail: ok ? `${version} from ${source}` : `the addon reports version '${version}', which is not a libtorch version`, fixes: [REBUILD] };
}

/** libtorch must run with the thread count hemato asked for: OpenMP limits can silently lower it. */
function threadsCheck(): Check {
  const running = E.numThreads();
  const asked = E.defaultThreads;
  const source = process.env.HEMATO_NUM_THREADS ? 'HEMATO_NUM_THREADS' : 'the core count';
  const ok = running === asked && running >= 1 && running <= E.maxThreads();
  const detail = ok ? `${running} (from ${source}; ${availableParallelism()} cores)` : `libtorch runs ${running} threads, but ${asked} were asked for (from ${source})`;
  return { name: 'threads', ok, detail, fixes: [REBUILD] };
}

/** A small matmul on the device, read back on the host: proves that kernels run and copies work there. */
function roundTrip(device: E.Device): Pick<Check, 'ok' | 'detail'> {
  try {
    const values = E.tidy(() => {
      const x = E.tensor([1, 2, 3, 4], [2, 2], { device });
      return x.matmul(x).add(1).cpu().toArray();
    });
    const expected = [8, 11, 16, 23];
    const ok = values.every((v, i) => v === expected[i]);
    return { ok, detail: ok ? 'ok' : `a 2×2 matmul gave [${values.join(', ')}], expected [${expected.join(', ')}]` };
  } catch (error) {
    return { ok: false, detail: `a 2×2 matmul failed: ${(error as Error).message.split('\n')[0]}` };
  }
}

function cudaChecks(info: ReturnType<typeof E.libtorchInfo>, device: DeviceRequest): Check[] {
  if (!info.cudaAvailable) {
    const requested = device === 'cuda';
    const fixes = located?.cuda
      ? ['check the driver and the GPU: nvidia-smi', 'check CUDA_VISIBLE_DEVICES, which may hide the devices']
      : ['build the addon against a CUDA libtorch: LIBTORCH=/path/to/torch npm run build:native'];
    const why = located?.cuda ? 'this CUDA build of libtorch sees no device' : 'this libtorch was built without CUDA';
    return [{ name: 'cuda', ok: !requested, detail: requested ? `requested, but ${why}` : `not available (${why}; CPU only)`, fixes }];
  }
  return Array.from({ length: info.cudaDeviceCount }, (_, i) => {
    const result = roundTrip(`cuda:${i}`);
    return { name: `cuda:${i}`, ...result, fixes: ['check the driver and the GPU: nvidia-smi', REBUILD] };
  });
}

async function checkSharp(report: Record<string, unknown>): Promise<Check> {
  try {
    const sharp = (await import('sharp')).default;
    report.sharp = { version: sharp.versions.sharp, libvips: sharp.versions.vips };
    return { name: 'sharp', ok: true, detail: `${sharp.versions.sharp} (libvips ${sharp.versions.vips})` };
  } catch (error) {
    return { name: 'sharp', ok: false, detail: (error as Error).message.split('\n')[0], fixes: ['npm ci'] };
  }
}

export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description('check the installation: libtorch, devices, threads, CPU features and native dependencies')
    .option('--device <device>', 'the device you mean to use: with cuda, a missing GPU is a failure', parseChoice(['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--json', 'print one JSON document on stdout')
    .action(async (options: { device: DeviceRequest; json?: boolean }) => {
      const { ok, checks, report } = await diagnose(options.device);
      if (options.json) {
        printJson({ ok, ...report, checks });
      } else {
        for (const check of checks) {
          process.stdout.write(`${check.ok ? '✓' : '✗'} ${check.name.padEnd(15)} ${check.detail}\n`);
          if (!check.ok) check.fixes?.forEach((fix, i) => process.stdout.write(`  ${i === 0 ? 'fix:' : 'or: '} ${fix}\n`));
        }
      }
      if (!ok) process.exitCode = 1;
    });
}
