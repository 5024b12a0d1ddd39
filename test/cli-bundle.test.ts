// `hemato bundle` and its rehearsal: the archive is written (fast xz preset), extracted into a clean directory outside
// the repository, run.sh reports what a machine lacks, then unpacks node, builds the addon with g++ alone against
// this machine's libtorch and runs `hemato doctor --json` from there. The bundle's own CUDA run needs a GPU machine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BUNDLE_DIR, findNapiHeaders, NAPI_HEADERS, runtimeModules } from '../src/bundle/bundle.js';

const ROOT = path.resolve('.');
const BIN = path.join(ROOT, 'bin/hemato.js');

test('the runtime modules are the dependency closure, without dev dependencies', () => {
  const modules = runtimeModules(ROOT);
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
  for (const dep of Object.keys(pkg.dependencies)) assert.ok(modules.includes(`node_modules/${dep}`), `${dep} is bundled`);
  for (const dep of Object.keys(pkg.devDependencies)) assert.ok(!modules.includes(`node_modules/${dep}`), `${dep} (dev) stays out`);
  // sharp's own needs come along: its dependencies and the prebuilt libvips of this platform.
  assert.ok(modules.includes('node_modules/detect-libc'));
  assert.ok(modules.some((m) => m.startsWith(`node_modules/@img/sharp-${process.platform}-${process.arch}`)), modules.join());
  for (const m of modules) assert.ok(existsSync(path.join(ROOT, m, 'package.json')), m);
});

test('a missing runtime dependency is named', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hemato-bundle-deps-'));
  try {
    writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ dependencies: { 'not-installed-here': '1' } }));
    assert.throws(() => runtimeModules(dir), /not-installed-here is not installed/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the N-API headers are found for this node', () => {
  const dir = findNapiHeaders();
  for (const header of NAPI_HEADERS) assert.ok(existsSync(path.join(dir, header)), header);
  assert.match(readFileSync(path.join(dir, 'node_api.h'), 'utf8'), /napi_module_register|NAPI_MODULE_INIT/);
});

test('bundle: written, extracted outside the repository, checked, built and run', { timeout: 300_000 }, () => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'hemato-bundle-test-'));
  try {
    const archive = path.join(work, 'hemato.tar.xz');
    const made = spawnSync(process.execPath, [BIN, 'bundle', '--out', archive, '--xz-level', '0', '--json'], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(made.status, 0, made.stderr);
    const result = JSON.parse(made.stdout) as { out: string; bytes: number; fitsOneCall: boolean; modules: string[]; node: { version: string; xzBytes: number } };
    assert.equal(result.out, archive);
    assert.equal(result.bytes, statSync(archive).size);
    assert.equal(result.node.version, process.version);
    assert.ok(result.fitsOneCall, `${result.bytes} bytes fit one 64 MiB device call`);
    assert.match(made.stderr, /MiB/, 'the size is printed on stderr');

    const clean = path.join(work, 'clean');
    mkdirSync(clean);
    const untar = spawnSync('tar', ['-xJf', archive, '-C', clean], { encoding: 'utf8' });
    assert.equal(untar.status, 0, untar.stderr);
    const top = path.join(clean, BUNDLE_DIR);
    for (const file of ['run.sh', 'gpu-check.sh', 'MANIFEST.json', 'node/node.xz', 'app/bin/hemato.js', 'app/dist/src/cli/main.js',
      'app/native/src/addon.cc', 'app/native/napi-include/node_api.h', 'app/node_modules/node-addon-api/napi.h',
      'app/node_modules/commander/package.json', 'app/dist/test/engine-cuda.test.js', 'app/dist/bench/cuda-block.js', 'app/dist/bench/blocks.js',
      'app/bench/peers/torch_cuda_block.py']) {
      assert.ok(existsSync(path.join(top, file)), `${file} is in the bundle`);
    }
    assert.ok(!existsSync(path.join(top, 'app/node_modules/typescript')), 'no dev dependencies');
    assert.ok(!existsSync(path.join(top, 'app/native/build')), 'no addon built here travels');

    // A machine without g++ (and without python3): run.sh names what is missing and stops before building.
    const bin = path.join(work, 'bin');
    mkdirSync(bin);
    for (const tool of ['bash', 'dirname', 'sed', 'grep', 'head', 'cat', 'xz', 'tar']) {
      const found = spawnSync('bash', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim();
      if (found) symlinkSync(found, path.join(bin, tool));
    }
    const bare = spawnSync(path.join(bin, 'bash'), [path.join(top, 'run.sh'), '--check'], { cwd: clean, encoding: 'utf8', env: { PATH: bin, LIBTORCH: '' } });
    assert.equal(bare.status, 3, bare.stderr);
    assert.match(bare.stderr, /missing: g\+\+/);
    assert.match(bare.stderr, /python3 not found/);
    assert.ok(!existsSync(path.join(top, 'node/bin/node')), 'nothing unpacked after a failed check');

    // This machine: node unpacked, the addon compiled by g++ from the shipped headers, doctor from the extract.
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.HEMATO_RUN_QUIET;
    const run = spawnSync(path.join(top, 'run.sh'), ['doctor', '--json'], { cwd: clean, encoding: 'utf8', env });
    assert.equal(run.status, 0, run.stderr);
    const doctor = JSON.parse(run.stdout) as { ok: boolean; node: string; libtorch: { source: string; version: string } };
    assert.equal(doctor.ok, true, run.stdout);
    assert.equal(doctor.node, process.version);
    assert.match(run.stderr, /building the addon against libtorch/);
    const source = /libtorch: \S+ from (.*) \(libdir/.exec(run.stderr)?.[1];
    assert.equal(doctor.libtorch.source, source, 'doctor reports the libtorch run.sh built against');
    assert.ok(existsSync(path.join(top, 'app/native/build/Release/hemato_native.node')));

    // A second run finds the addon up to date.
    const again = spawnSync(path.join(top, 'run.sh'), ['--prepare'], { cwd: clean, encoding: 'utf8', env });
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stderr, /addon: up to date/);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
