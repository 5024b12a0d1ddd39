// `hemato doctor` reports libtorch, threads and devices, exits 0 on a working install and 1 with a fix for each
// failed check; commands that need no libtorch start without the addon.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { SHARED } from './helpers.js';

interface Check {
  name: string;
  ok: boolean;
  detail: string;
  fixes?: string[];
}

function hemato(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, ['bin/hemato.js', ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
}

const MAX_THREADS = 4 * availableParallelism();

test('hemato doctor --json prints one document describing the installation', () => {
  const out = execFileSync(process.execPath, ['bin/hemato.js', 'doctor', '--json'], { encoding: 'utf8' });
  const report = JSON.parse(out);
  assert.equal(report.ok, true);
  assert.match(report.libtorch.version, /^\d+\.\d+/);
  assert.ok(report.libtorch.source.length > 0);
  assert.equal(report.threads, Number(process.env.HEMATO_NUM_THREADS) || availableParallelism());
  assert.ok(report.devices.includes('cpu'));
  assert.equal(typeof report.cpu.amx, 'boolean');
  assert.ok(report.checks.every((c: Check) => c.ok && c.fixes === undefined));
  const names = report.checks.map((c: Check) => c.name);
  for (const name of ['libtorch addon', 'libtorch', 'threads', 'cpu', 'precision', 'distributed']) assert.ok(names.includes(name), name);
  // Distributed training: Gloo where the addon has it (with a one-rank all-reduce run), else why not and the fix.
  const distributed = report.checks.find((c: Check) => c.name === 'distributed').detail;
  if (report.distributed.available) assert.match(distributed, /^available: Gloo; NCCL (yes|no \(.+\))$/);
  else assert.match(distributed, /^unavailable: .+ \(to enable it: .*npm run build:native/);
  // The precision entries are the engine table's, for the device work would run on.
  assert.deepEqual(report.precision, { device: report.precision.device, ...E.precisionEntries(report.precision.device) });
  const precisionLine = report.checks.find((c: Check) => c.name === 'precision').detail;
  assert.ok(precisionLine.includes(E.precisionEntries(report.precision.device).inference.convnext.why));
});

test('without a loadable addon, doctor exits 1 with a ✗ line and the commands that fix it', () => {
  const run = hemato(['doctor'], { HEMATO_ADDON: '/nonexistent/hemato_native.node' });
  assert.equal(run.status, 1, run.stderr);
  assert.match(run.stdout, /^✗ libtorch addon +HEMATO_ADDON names a file that does not exist$/m);
  assert.match(run.stdout, /^ {2}fix: point HEMATO_ADDON at a built hemato_native\.node/m);
  assert.match(run.stdout, /^ {2}or: {2}bash scripts\/setup\.sh/m);
  assert.match(run.stdout, /^ {2}or: {2}npm run build:native/m);
  assert.match(run.stdout, /^✓ node/m, 'checks that do not need libtorch still run');
  assert.equal(run.stderr, '');
});

test('an invalid HEMATO_NUM_THREADS is a failed threads check in doctor', () => {
  const run = hemato(['doctor', '--json'], { HEMATO_NUM_THREADS: '0' });
  assert.equal(run.status, 1);
  const report = JSON.parse(run.stdout) as { ok: boolean; checks: Check[] };
  assert.equal(report.ok, false);
  const threads = report.checks.find((c) => c.name === 'threads');
  assert.equal(threads?.ok, false);
  assert.match(threads!.detail, new RegExp(`HEMATO_NUM_THREADS must be a positive integer in 1\\.\\.${MAX_THREADS}`));
  assert.match(threads!.fixes![0], /unset it/);
});

test('doctor --device cuda fails where no CUDA device is seen', () => {
  const run = hemato(['doctor', '--device', 'cuda', '--json']);
  const report = JSON.parse(run.stdout) as { ok: boolean; cuda: boolean; checks: Check[] };
  if (report.cuda) {
    assert.equal(run.status, 0);
    assert.ok(report.checks.some((c) => c.name === 'cuda:0' && c.ok));
    return;
  }
  assert.equal(run.status, 1);
  const cuda = report.checks.find((c) => c.name === 'cuda');
  assert.equal(cuda?.ok, false);
  assert.match(cuda!.detail, /^requested, but this/);
  assert.ok(cuda!.fixes!.length > 0);
});

test('an invalid HEMATO_NUM_THREADS stops a command with one clear line, not a stack trace or a hang', () => {
  const image = path.join(SHARED, 'data/pbc/neutrophil', readdirSync(path.join(SHARED, 'data/pbc/neutrophil'))[0]);
  for (const value of ['1000000000', '99999', '-3', '0.5']) {
    const run = hemato(['predict', image], { HEMATO_NUM_THREADS: value });
    assert.equal(run.signal, null, `${value}: killed by ${run.signal}`);
    assert.equal(run.status, 1, value);
    assert.equal(
      run.stderr,
      `hemato: HEMATO_NUM_THREADS must be a positive integer in 1..${MAX_THREADS} (up to 4 threads per core; ${availableParallelism()} cores here), got '${value}'\n`,
    );
  }
});

test('help and commands that need no libtorch run without the addon', (t) => {
  const noAddon = { HEMATO_ADDON: '/nonexistent/hemato_native.node' };
  for (const command of [[], ['doctor'], ['scan'], ['split'], ['pack'], ['preprocess'], ['bundle'], ['predict'], ['eval'], ['train'], ['calibrate']]) {
    const run = hemato([...command, '--help'], noAddon);
    assert.equal(run.status, 0, `${command.join(' ')} --help: ${run.stderr}`);
    assert.match(run.stdout, /^Usage: hemato/);
  }
  // A tiny data set: two images in each of two classes.
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-noaddon-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  for (const label of ['basophil', 'eosinophil']) {
    mkdirSync(path.join(dir, 'data', label), { recursive: true });
    for (const file of readdirSync(path.join(SHARED, 'data/pbc', label)).slice(0, 2))
      copyFileSync(path.join(SHARED, 'data/pbc', label, file), path.join(dir, 'data', label, file));
  }
  const split = hemato(['split', path.join(dir, 'data'), '--classes', 'basophil,eosinophil', '--val', '0.5', '--out', path.join(dir, 'split.csv')], noAddon);
  assert.equal(split.status, 0, split.stderr);
  const scan = hemato(['scan', path.join(dir, 'data'), '--classes', 'basophil,eosinophil', '--json'], noAddon);
  assert.equal(scan.status, 0, scan.stderr);
  // A command that needs libtorch says so in one message with its fixes.
  const predict = hemato(['predict', path.join(dir, 'data')], noAddon);
  assert.equal(predict.status, 1);
  assert.match(
    predict.stderr,
    /^hemato: the native addon \/nonexistent\/hemato_native\.node could not be loaded: HEMATO_ADDON names a file that does not exist\nPossible fixes:\n/,
  );
  assert.doesNotMatch(predict.stderr, /^\s+at /m);
});

test('unknown commands are usage errors with exit code 2', () => {
  assert.throws(
    () => execFileSync(process.execPath, ['bin/hemato.js', 'frobnicate'], { stdio: 'pipe' }),
    (error: { status: number }) => error.status === 2,
  );
});
