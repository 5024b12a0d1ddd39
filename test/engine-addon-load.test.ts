// The addon loads on first use, starts libtorch with a checked thread count, and a load that fails says why and
// what fixes it. Loading is process-wide, so each load scenario runs in a child process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { explainLoadFailure } from '../src/engine/native.js';

const ENGINE = path.resolve('dist/src/engine/index.js');

interface Outcome {
  loadedAtImport: boolean;
  loadedAfterUse?: boolean;
  threads?: number;
  openblasThreads?: number;
  error?: { name: string; message: string; reason?: string; fixes?: string[] };
}

/** Imports the engine in a fresh process with env, then makes a tensor; reports what happened. */
function firstUse(env: Record<string, string | undefined>): Outcome {
  const script = `
    const E = await import(${JSON.stringify(ENGINE)});
    const loaded = () => process.report.getReport().sharedObjects.some((s) => s.includes('hemato_native'));
    const loadedAtImport = loaded();
    try {
      E.zeros([1]);
      console.log(JSON.stringify({ loadedAtImport, loadedAfterUse: loaded(), threads: E.numThreads(), openblasThreads: E.libtorchInfo().openblasThreads }));
    } catch (e) {
      console.log(JSON.stringify({ loadedAtImport, error: { name: e.name, message: e.message, reason: e.reason, fixes: e.fixes } }));
    }`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: withEnv(env), timeout: 60_000 });
  assert.equal(run.status, 0, `the child process failed (signal ${run.signal}): ${run.stderr}`);
  return JSON.parse(run.stdout) as Outcome;
}

/** This process's environment with `changes` applied; an undefined value removes the variable. */
function withEnv(changes: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const env = { ...process.env, ...changes };
  for (const [key, value] of Object.entries(changes)) if (value === undefined) delete env[key];
  return env;
}

test("OpenBLAS runs one thread beside libtorch's own, unless the user set OPENBLAS_NUM_THREADS", () => {
  assert.equal(firstUse({ OPENBLAS_NUM_THREADS: undefined }).openblasThreads, 1);
  assert.equal(firstUse({ OPENBLAS_NUM_THREADS: '2' }).openblasThreads, 2);
});

test('thread counts must be integers in 1..4 × the cores, from numbers or strings', () => {
  const max = 4 * availableParallelism();
  assert.equal(E.maxThreads(), max);
  assert.equal(E.checkThreadCount(1, 'x'), 1);
  assert.equal(E.checkThreadCount(' 3 ', 'x'), 3);
  assert.equal(E.checkThreadCount(max, 'x'), max);
  for (const bad of [0, -3, 0.5, NaN, max + 1, 1e9, '0.5', '-3', '1e3', 'abc', '', String(max + 1)]) {
    assert.throws(
      () => E.checkThreadCount(bad, '--threads'),
      { name: 'RangeError', message: new RegExp(`^--threads must be a positive integer in 1\\.\\.${max} .*got`) },
      String(bad),
    );
  }
});

test('setNumThreads refuses counts above the bound before libtorch sees them', () => {
  const before = E.numThreads();
  assert.throws(() => E.setNumThreads(E.maxThreads() + 1), /setNumThreads must be a positive integer in 1\.\./);
  assert.throws(() => E.setNumThreads(1e9), RangeError);
  assert.equal(E.numThreads(), before);
});

test('importing the engine does not load the addon; the first tensor does, with HEMATO_NUM_THREADS applied', () => {
  const outcome = firstUse({ HEMATO_NUM_THREADS: '1' });
  assert.equal(outcome.error, undefined);
  assert.equal(outcome.loadedAtImport, false);
  assert.equal(outcome.loadedAfterUse, true);
  assert.equal(outcome.threads, 1);
});

test('an invalid HEMATO_NUM_THREADS fails the first use with a RangeError naming it and the range, and never reaches libtorch', () => {
  for (const value of ['1000000000', '99999', '-3', '0.5']) {
    const { error } = firstUse({ HEMATO_NUM_THREADS: value });
    assert.equal(error?.name, 'RangeError', value);
    assert.match(error!.message, new RegExp(`^HEMATO_NUM_THREADS must be a positive integer in 1\\.\\.${E.maxThreads()} .*got '${value}'`));
  }
});

test('a missing or broken addon fails the first use with the cause and its fixes', (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-addon-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const missing = firstUse({ HEMATO_ADDON: path.join(dir, 'nowhere.node') });
  assert.equal(missing.error?.name, 'AddonLoadError');
  assert.match(missing.error!.reason!, /HEMATO_ADDON names a file that does not exist/);
  assert.ok(
    missing.error!.fixes!.some((f) => f.startsWith('bash scripts/setup.sh')) && missing.error!.fixes!.some((f) => f.startsWith('npm run build:native')),
  );
  assert.match(missing.error!.message, /Possible fixes:\n {2}- point HEMATO_ADDON at a built hemato_native\.node/);

  // A folder or another kind of file is not loaded at all: require() would look for a package, or run it as JavaScript.
  writeFileSync(path.join(dir, 'script.js'), 'hi');
  for (const other of [dir, path.join(dir, 'script.js')]) {
    const wrong = firstUse({ HEMATO_ADDON: other });
    assert.match(wrong.error!.reason!, /HEMATO_ADDON names something that is not a built addon \(a \.node file\)/, other);
  }

  writeFileSync(path.join(dir, 'junk.node'), 'not an addon');
  const junk = firstUse({ HEMATO_ADDON: path.join(dir, 'junk.node') });
  assert.match(junk.error!.reason!, /not an addon built for this platform/);
  assert.match(junk.error!.message, /loader: .*(file too short|invalid ELF header)/);
});

test('real loader failures: a missing libtorch library and an undefined symbol', (t) => {
  if (spawnSync('g++', ['--version']).status !== 0) return t.skip('g++ is not installed');
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-addon-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const compile = (out: string, source: string, ...flags: string[]) => {
    writeFileSync(path.join(dir, 'source.cc'), source);
    const run = spawnSync('g++', ['-shared', '-fPIC', '-o', path.join(dir, out), path.join(dir, 'source.cc'), ...flags], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
  };
  // An addon linked against a libtorch library that is then gone, as when libtorch is uninstalled or not on the path.
  compile('libtorch_hemato_probe.so', 'int probe() { return 0; }');
  compile('needs-libtorch.node', 'extern int probe(); int use() { return probe(); }', '-Wl,--no-as-needed', `-L${dir}`, '-ltorch_hemato_probe');
  rmSync(path.join(dir, 'libtorch_hemato_probe.so'));
  const noLibtorch = firstUse({ HEMATO_ADDON: path.join(dir, 'needs-libtorch.node') });
  assert.equal(noLibtorch.error?.reason, "libtorch's libtorch_hemato_probe.so was not found");
  assert.match(noLibtorch.error!.fixes!.join('\n'), /apt-get install libtorch-dev libopenblas0-pthread[^]*LD_LIBRARY_PATH=[^]*LIBTORCH=/);
  // A symbol the loaded libraries do not define, as when the addon was built against another libtorch.
  compile('abi.node', 'extern int at_symbol_of_another_build; int use() { return at_symbol_of_another_build; }');
  const abi = firstUse({ HEMATO_ADDON: path.join(dir, 'abi.node') });
  assert.match(abi.error!.reason!, /built against another libtorch .*undefined symbol at_symbol_of_another_build/);
  assert.match(abi.error!.fixes![0], /^npm run build:native/);
});

test('loader messages map to cause-specific fixes', () => {
  const cases: [string, RegExp, RegExp][] = [
    [
      'libc10.so: cannot open shared object file: No such file or directory',
      /libtorch's libc10\.so was not found/,
      /apt-get install libtorch-dev[^]*LD_LIBRARY_PATH[^]*LIBTORCH=/,
    ],
    [
      'libopenblas.so.0: cannot open shared object file: No such file or directory',
      /libopenblas\.so\.0, which the addon or libtorch needs/,
      /apt-get install libopenblas0-pthread/,
    ],
    ['/x/hemato_native.node: undefined symbol: _ZN2at4_ops3add4callE', /another libtorch .*undefined symbol _ZN2at4_ops3add4callE/, /^npm run build:native/],
    [
      "The module '/x/hemato_native.node' was compiled against a different Node.js version using NODE_MODULE_VERSION 108. This version of Node.js requires NODE_MODULE_VERSION 115.",
      /another version of Node\.js/,
      /^npm run build:native .*this Node\.js/,
    ],
    ['/x/hemato_native.node: invalid ELF header', /not an addon built for this platform/, /npm run build:native/],
    ['something else entirely', /^something else entirely$/, /^bash scripts\/setup\.sh[^]*npm run build:native/],
  ];
  for (const [message, reason, fixes] of cases) {
    const explained = explainLoadFailure(message);
    assert.match(explained.reason, reason, message);
    assert.match(explained.fixes.join('\n'), fixes, message);
  }
});
