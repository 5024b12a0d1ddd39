import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
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
  else if (checkLibtorch(checks, report, device)) checks.push(await checkDistributed(report));
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

/** Checks libtorch through the addon; false when the addon could not be loaded. */
function checkLibtorch(checks: Check[], report: Record<string, unknown>, device: DeviceRequest): boolean {
  try {
    E.loadAddon();
  } catch (error) {
    const reason = error instanceof E.AddonLoadError ? error.reason : (error as Error).message.split('\n')[0];
    checks.push({ name: 'libtorch addon', ok: false, detail: reason, fixes: error instanceof E.AddonLoadError ? error.fixes : undefined });
    return false;
  }
  const info = E.libtorchInfo();
  const cpu = E.cpuFeatures();
  // The device work would run on: the one asked for, else CUDA when present.
  const target: E.Device = device === 'cuda' || (device === 'auto' && info.cudaAvailable) ? 'cuda' : 'cpu';
  const precision = E.precisionEntries(target, cpu);
  Object.assign(report, {
    libtorch: { version: info.torchVersion, source: located?.source ?? 'unknown', libdir: located?.libdir, cxx11Abi: info.cxx11Abi },
    threads: E.numThreads(),
    devices: ['cpu', ...Array.from({ length: info.cudaDeviceCount }, (_, i) => `cuda:${i}`)],
    cuda: info.cudaAvailable,
    cpu: { ...cpu, kind: E.cpuKind(cpu) },
    precision: { device: target, ...precision },
    mkldnn: info.mkldnn,
    openblasCore: info.openblasCore || 'not loaded',
    openblasThreads: info.openblasThreads >= 0 ? info.openblasThreads : 'not loaded',
  });
  checks.push({ name: 'libtorch addon', ok: true, detail: addonPath });
  checks.push(versionCheck(info.torchVersion));
  checks.push(threadsCheck());
  const cpuRun = roundTrip('cpu');
  const blas = info.openblasCore ? `; OpenBLAS kernels ${info.openblasCore}` : '';
  const cpuDetail = `${cpu.model}; AMX-BF16 ${cpu.amx ? 'yes' : 'no'}, AVX-512-BF16 ${cpu.avx512bf16 ? 'yes' : 'no'}${blas}`;
  checks.push({ name: 'cpu', ok: cpuRun.ok, detail: cpuRun.ok ? cpuDetail : cpuRun.detail, fixes: [REBUILD] });
  const cuda = cudaChecks(info, device);
  checks.push(...cuda);
  if (target === 'cpu' || cuda.every((c) => c.ok)) checks.push(precisionCheck(target, precision));
  return true;
}

/**
 * Distributed training: whether the addon was built with c10d and Gloo, and if so, whether a one-rank group runs an
 * all-reduce. A build without it is no failure (nothing else needs it); the line says why and how to enable it.
 */
async function checkDistributed(report: Record<string, unknown>): Promise<Check> {
  const info = E.distributed.distributedInfo();
  report.distributed = info;
  if (!info.available) {
    return { name: 'distributed', ok: true, detail: `unavailable: ${info.reason} (to enable it: ${info.fixes!.join('; or ')})` };
  }
  const nccl = info.nccl ? 'yes' : `no (${info.ncclReason})`;
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-doctor-'));
  try {
    const store = await E.distributed.createStore({ kind: 'file', path: path.join(dir, 'store'), worldSize: 1, timeoutMs: 30_000 });
    const group = await E.distributed.initProcessGroup({ store, rank: 0, worldSize: 1, timeoutMs: 30_000 });
    store.close();
    const x = E.tensor([1, 2], [2]);
    try {
      await group.allReduce(x);
      const values = x.toArray();
      if (values[0] !== 1 || values[1] !== 2) throw new Error(`a one-rank all-reduce changed [1, 2] into [${values.join(', ')}]`);
    } finally {
      x.dispose();
      await group.destroy();
    }
    return { name: 'distributed', ok: true, detail: `available: Gloo; NCCL ${nccl}` };
  } catch (error) {
    return {
      name: 'distributed',
      ok: false,
      detail: `Gloo is built in, but a one-rank all-reduce failed: ${(error as Error).message.split('\n')[0]}`,
      fixes: [REBUILD],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const CPU_KINDS: Record<E.CpuKind, string> = { amx: 'AMX-BF16', avx512bf16: 'AVX-512-BF16 and no AMX', plain: 'neither AMX-BF16 nor AVX-512-BF16' };

/** The precision table's entries for this device, and a bf16 autocast run where any of them picks bf16. */
function precisionCheck(device: E.Device, entries: ReturnType<typeof E.precisionEntries>): Check {
  const lines: string[] = [];
  let usesBf16 = false;
  for (const purpose of ['inference', 'training'] as const) {
    const groups = new Map<E.PrecisionChoice, E.ModelFamily[]>();
    for (const family of E.MODEL_FAMILIES) groups.set(entries[purpose][family], [...(groups.get(entries[purpose][family]) ?? []), family]);
    for (const [choice, families] of groups) {
      lines.push(`${purpose} ${families.join(', ')}: ${choice.precision} — ${choice.why}`);
      usesBf16 ||= choice.precision === 'bf16';
    }
  }
  const heading = `defaults on ${device === 'cpu' ? `a CPU with ${CPU_KINDS[E.cpuKind(E.cpuFeatures())]}` : device}:`;
  const run = usesBf16 ? roundTrip(device, true) : { ok: true, detail: 'ok' };
  // One line each; the printout for people indents them, --json keeps them bare.
  const detail = run.ok ? [heading, ...lines].join('\n') : `bf16 autocast: ${run.detail}`;
  return { name: 'precision', ok: run.ok, detail, fixes: ['--precision fp32   (on predict, eval and train, until the addon works under autocast)', REBUILD] };
}

const REBUILD = 'npm run build:native   (rebuilds the addon against the libtorch installed)';

function versionCheck(version: string): Check {
  const ok = /^\d+\.\d+\.\d+/.test(version);
  const source = located?.source ?? 'an unrecorded location (native/build/libtorch.json is missing)';
  return {
    name: 'libtorch',
    ok,
    detail: ok ? `${version} from ${source}` : `the addon reports version '${version}', which is not a libtorch version`,
    fixes: [REBUILD],
  };
}

/** libtorch must run with the thread count hemato asked for: OpenMP limits can silently lower it. */
function threadsCheck(): Check {
  const running = E.numThreads();
  const asked = E.defaultThreads;
  const source = process.env.HEMATO_NUM_THREADS ? 'HEMATO_NUM_THREADS' : 'the core count';
  const ok = running === asked && running >= 1 && running <= E.maxThreads();
  const detail = ok
    ? `${running} (from ${source}; ${availableParallelism()} cores)`
    : `libtorch runs ${running} threads, but ${asked} were asked for (from ${source})`;
  return { name: 'threads', ok, detail, fixes: [REBUILD] };
}

/** A small matmul on the device (under bf16 autocast if asked), read back on the host: kernels run and copies work. */
function roundTrip(device: E.Device, bf16 = false): Pick<Check, 'ok' | 'detail'> {
  try {
    const values = E.tidy(() => {
      const x = E.tensor([1, 2, 3, 4], [2, 2], { device });
      const product = bf16 ? E.autocast(() => x.matmul(x), { device: device === 'cpu' ? 'cpu' : 'cuda' }) : x.matmul(x);
      return product.float().add(1).cpu().toArray();
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
    .description('check the installation: libtorch, devices, threads, CPU features, distributed training and native dependencies')
    .option('--device <device>', 'the device you mean to use: with cuda, a missing GPU is a failure', parseChoice(['auto', 'cpu', 'cuda'] as const), 'auto')
    .option('--json', 'print one JSON document on stdout')
    .action(async (options: { device: DeviceRequest; json?: boolean }) => {
      const { ok, checks, report } = await diagnose(options.device);
      if (options.json) {
        printJson({ ok, ...report, checks });
      } else {
        for (const check of checks) {
          process.stdout.write(`${check.ok ? '✓' : '✗'} ${check.name.padEnd(15)} ${check.detail.replaceAll('\n', `\n${' '.repeat(18)}`)}\n`);
          if (!check.ok) check.fixes?.forEach((fix, i) => process.stdout.write(`  ${i === 0 ? 'fix:' : 'or: '} ${fix}\n`));
        }
      }
      if (!ok) process.exitCode = 1;
    });
}
