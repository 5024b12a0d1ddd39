// `hemato doctor --json` reports libtorch, threads and devices, and exits 0 on a working install.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { availableParallelism } from 'node:os';

test('hemato doctor --json prints one document describing the installation', () => {
  const out = execFileSync(process.execPath, ['bin/hemato.js', 'doctor', '--json'], { encoding: 'utf8' });
  const report = JSON.parse(out);
  assert.equal(report.ok, true);
  assert.match(report.libtorch.version, /^\d+\.\d+/);
  assert.ok(report.libtorch.source.length > 0);
  assert.equal(report.threads, Number(process.env.HEMATO_NUM_THREADS) || availableParallelism());
  assert.ok(report.devices.includes('cpu'));
  assert.equal(typeof report.cpu.amx, 'boolean');
  assert.ok(report.checks.every((c: { ok: boolean }) => c.ok));
});

test('unknown commands are usage errors with exit code 2', () => {
  assert.throws(() => execFileSync(process.execPath, ['bin/hemato.js', 'frobnicate'], { stdio: 'pipe' }), (error: { status: number }) => error.status === 2);
});
