// `hemato bundle` and its rehearsal: the archive is written (fast xz preset), extracted into a clean directory outside
// the repository, run.sh reports what a machine lacks, then unpacks node, builds the addon with g++ alone against
// this machine's libtorch and runs `hemato doctor --json` from there. The bundle's own CUDA run needs a machine with a GPU.
// What goes in (the model, links resolved) and the clean-up after a failure or a signal are tested without the
// archive.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BUNDLE_DIR, bundleJobs, bundleModel, findNapiHeaders, NAPI_HEADERS, runtimeModules, stage } from '../src/bundle/bundle.js';

const ROOT = path.resolve('.');
const BIN = path.join(ROOT, 'bin/hemato.js');
const MODEL = path.join(ROOT, 'models/hemato-convnext-atto.safetensors');

test('the runtime modules are the dependency closure, without dev dependencies', () => {
  const modules = runtimeModules(ROOT);
  const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
    dependencies: Record<string, string>;
    devDependencies: Record<string, string>;
  };
  for (const dep of Object.keys(pkg.dependencies)) assert.ok(modules.includes(`node_modules/${dep}`), `${dep} is bundled`);
  for (const dep of Object.keys(pkg.devDependencies)) assert.ok(!modules.includes(`node_modules/${dep}`), `${dep} (dev) stays out`);
  // sharp's own needs come along: its dependencies and the prebuilt libvips of this platform.
  assert.ok(modules.includes('node_modules/detect-libc'));
  assert.ok(
    modules.some((m) => m.startsWith(`node_modules/@img/sharp-${process.platform}-${process.arch}`)),
    modules.join(),
  );
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

test('the bundled model is carried unless another or none is asked for', () => {
  assert.equal(bundleModel(ROOT, undefined), MODEL);
  assert.equal(bundleModel(ROOT, false), undefined);
  const elsewhere = mkdtempSync(path.join(os.tmpdir(), 'hemato-bundle-model-'));
  try {
    assert.throws(() => bundleModel(elsewhere, undefined), /the bundled model .* is missing: pass --model FILE, or --no-model/);
    assert.throws(() => bundleModel(ROOT, path.join(elsewhere, 'other.safetensors')), /other\.safetensors does not exist/);
  } finally {
    rmSync(elsewhere, { recursive: true, force: true });
  }
  const what = { napiDir: findNapiHeaders(), modules: [] };
  const modelJobs = (model?: string) => bundleJobs(ROOT, { ...what, model }).filter((job) => job.part === 'model');
  assert.deepEqual(modelJobs(MODEL), [{ part: 'model', from: MODEL, to: `${BUNDLE_DIR}/app/models/hemato-convnext-atto.safetensors` }]);
  assert.deepEqual(modelJobs(undefined), []);
});

test('links are staged as the files they point to, and counted at their size', async () => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'hemato-bundle-links-'));
  try {
    const weights = path.join(work, 'weights.bin');
    writeFileSync(weights, randomBytes(4096));
    const link = path.join(work, 'model.safetensors');
    symlinkSync(weights, link);
    const pack = path.join(work, 'pack');
    mkdirSync(pack);
    symlinkSync(weights, path.join(pack, 'part.bin'));
    const staging = path.join(work, 'staging');
    mkdirSync(staging);
    const parts = await stage(
      [
        { part: 'model', from: link, to: `${BUNDLE_DIR}/app/models/model.safetensors` },
        { part: 'pack', from: pack, to: `${BUNDLE_DIR}/data/pack` },
      ],
      staging,
    );
    for (const staged of ['app/models/model.safetensors', 'data/pack/part.bin']) {
      const file = path.join(staging, BUNDLE_DIR, staged);
      assert.ok(lstatSync(file).isFile(), `${staged} is a file, not a link`);
      assert.deepEqual(readFileSync(file), readFileSync(weights));
    }
    assert.deepEqual(parts, { model: 4096, pack: 4096 });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});

/** The staging folders `hemato bundle` has under `tmp` (its TMPDIR). */
const stagingFolders = (tmp: string) => readdirSync(tmp).filter((name) => name.startsWith('hemato-bundle-'));

/** Polls until `ready` holds; rejects if the child ends first. */
async function whileRunning(child: ChildProcess, ready: () => boolean): Promise<void> {
  while (!ready()) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`hemato bundle ended first (${child.exitCode ?? child.signalCode})`);
    await sleep(50);
  }
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  test(`bundle stopped by ${signal} removes its staging folder`, { timeout: 120_000 }, async () => {
    const work = mkdtempSync(path.join(os.tmpdir(), 'hemato-bundle-signal-'));
    const tmp = path.join(work, 'tmp');
    mkdirSync(tmp);
    const out = path.join(work, 'hemato.tar.xz');
    const child = spawn(process.execPath, [BIN, 'bundle', '--out', out, '--xz-level', '0'], {
      cwd: ROOT,
      env: { ...process.env, TMPDIR: tmp },
      stdio: 'ignore',
      timeout: 120_000,
    });
    try {
      const ended = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
      // Copying has begun once the staging folder holds the bundle's top folder.
      await whileRunning(child, () => stagingFolders(tmp).some((name) => existsSync(path.join(tmp, name, BUNDLE_DIR))));
      child.kill(signal);
      assert.equal(await ended, signal, 'it ends as the signal ends a process');
      assert.deepEqual(stagingFolders(tmp), []);
      assert.ok(!existsSync(out) && !existsSync(`${out}.partial`));
    } finally {
      child.kill('SIGKILL');
      rmSync(work, { recursive: true, force: true });
    }
  });
}

test('a --model that is not a hemato model, an --out that is a pipe or names another kind of archive, are refused before any work', () => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'hemato-bundle-refused-'));
  try {
    const text = path.join(work, 'notes.safetensors');
    writeFileSync(text, 'not a model');
    const fifo = path.join(work, 'pipe.tar.xz');
    spawnSync('mkfifo', [fifo]);
    const run = (...args: string[]) => spawnSync(process.execPath, [BIN, 'bundle', ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    const model = run('--model', text, '--out', path.join(work, 'never.tar.xz'));
    assert.equal(model.status, 2, model.stderr);
    assert.match(model.stderr, /--model: .*notes\.safetensors is not a safetensors file/);
    const pipe = run('--no-model', '--out', fifo);
    assert.equal(pipe.status, 1, pipe.stderr);
    assert.match(pipe.stderr, /--out .*pipe\.tar\.xz is a named pipe \(FIFO\), not a file; give a file name/);
    assert.ok(lstatSync(fifo).isFIFO() && !existsSync(path.join(work, 'never.tar.xz')));
    for (const name of ['hemato.tar', 'hemato.tgz', 'hemato.zip']) {
      const misnamed = run('--no-model', '--out', path.join(work, name));
      assert.equal(misnamed.status, 2, misnamed.stderr);
      assert.match(misnamed.stderr, /--out .* writes an xz-compressed tar: name it .*hemato\.tar\.xz/);
      assert.ok(!existsSync(path.join(work, name)));
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});

test('a bundle that fails part-way removes its staging folder', { timeout: 120_000 }, () => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'hemato-bundle-fail-'));
  try {
    const tmp = path.join(work, 'tmp');
    mkdirSync(tmp);
    // A data set holding a dangling link fails the last copy, after everything else is staged.
    const pack = path.join(work, 'pack');
    mkdirSync(pack);
    symlinkSync(path.join(work, 'gone.bin'), path.join(pack, 'part.bin'));
    const out = path.join(work, 'hemato.tar.xz');
    const run = spawnSync(process.execPath, [BIN, 'bundle', '--out', out, '--no-model', '--pack', pack, '--xz-level', '0'], {
      cwd: ROOT,
      env: { ...process.env, TMPDIR: tmp },
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(run.status, 1, run.stderr);
    assert.match(run.stderr, /hemato: bundle: .*part\.bin/);
    assert.deepEqual(stagingFolders(tmp), []);
    assert.ok(!existsSync(out));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});

test('bundle: written, extracted outside the repository, checked, built and run', { timeout: 300_000 }, () => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'hemato-bundle-test-'));
  try {
    const archive = path.join(work, 'hemato.tar.xz');
    const made = spawnSync(process.execPath, [BIN, 'bundle', '--out', archive, '--xz-level', '0', '--json'], { cwd: ROOT, encoding: 'utf8', timeout: 280_000 });
    assert.equal(made.status, 0, made.stderr);
    const result = JSON.parse(made.stdout) as {
      out: string;
      bytes: number;
      model: string;
      parts: Record<string, number>;
      node: { version: string };
      replaced: boolean;
    };
    assert.equal(result.out, archive);
    assert.equal(result.replaced, false);
    assert.equal(result.bytes, statSync(archive).size);
    assert.equal(result.node.version, process.version);
    assert.equal(result.model, 'app/models/hemato-convnext-atto.safetensors', 'the bundled model goes by default');
    assert.equal(result.parts.model, statSync(MODEL).size);
    assert.ok(!('fitsOneCall' in result));
    assert.match(made.stderr, /MiB/, 'the size is printed on stderr');

    const clean = path.join(work, 'clean');
    mkdirSync(clean);
    const untar = spawnSync('tar', ['-xJf', archive, '-C', clean], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(untar.status, 0, untar.stderr);
    const top = path.join(clean, BUNDLE_DIR);
    for (const file of [
      'run.sh',
      'gpu-check.sh',
      'MANIFEST.json',
      'node/node.xz',
      'app/bin/hemato.js',
      'app/dist/src/cli/main.js',
      'app/native/src/addon.cc',
      'app/native/napi-include/node_api.h',
      'app/node_modules/node-addon-api/napi.h',
      'app/node_modules/commander/package.json',
      'app/dist/test/engine-cuda.test.js',
      'app/dist/bench/cuda-block.js',
      'app/dist/bench/blocks.js',
      'app/bench/peers/torch_cuda_block.py',
      'app/models/hemato-convnext-atto.safetensors',
      'app/src/serve/page/index.html',
      'app/node_modules/fastify/package.json',
    ]) {
      assert.ok(existsSync(path.join(top, file)), `${file} is in the bundle`);
    }
    assert.ok(!existsSync(path.join(top, 'app/node_modules/typescript')), 'no dev dependencies');
    assert.ok(!existsSync(path.join(top, 'app/native/build')), 'no addon built here travels');

    // A machine without g++ (and without python3): run.sh names what is missing and stops before building.
    const bin = path.join(work, 'bin');
    mkdirSync(bin);
    for (const tool of ['bash', 'dirname', 'sed', 'grep', 'head', 'cat', 'xz', 'tar']) {
      const found = spawnSync('bash', ['-c', `command -v ${tool}`], { encoding: 'utf8', timeout: 10_000 }).stdout.trim();
      if (found) symlinkSync(found, path.join(bin, tool));
    }
    const bare = spawnSync(path.join(bin, 'bash'), [path.join(top, 'run.sh'), '--check'], {
      cwd: clean,
      encoding: 'utf8',
      env: { PATH: bin, LIBTORCH: '' },
      timeout: 60_000,
    });
    assert.equal(bare.status, 3, bare.stderr);
    assert.match(bare.stderr, /missing: g\+\+/);
    assert.match(bare.stderr, /python3 not found/);
    assert.ok(!existsSync(path.join(top, 'node/bin/node')), 'nothing unpacked after a failed check');

    // This machine: node unpacked, the addon compiled by g++ from the shipped headers, doctor from the extract.
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.HEMATO_RUN_QUIET;
    const run = spawnSync(path.join(top, 'run.sh'), ['doctor', '--json'], { cwd: clean, encoding: 'utf8', env, timeout: 280_000 });
    assert.equal(run.status, 0, run.stderr);
    const doctor = JSON.parse(run.stdout) as {
      ok: boolean;
      node: string;
      libtorch: { source: string; version: string };
      distributed: { available: boolean };
    };
    assert.equal(doctor.ok, true, run.stdout);
    // run.sh builds the distributed binding where this libtorch allows it, and doctor reports what was built.
    const distributed = /distributed: (c10d with Gloo|unavailable)/.exec(run.stderr)?.[1];
    assert.ok(distributed, 'run.sh says whether it builds the distributed binding');
    assert.equal(doctor.distributed.available, distributed === 'c10d with Gloo');
    assert.equal(doctor.node, process.version);
    assert.match(run.stderr, /building the addon against libtorch/);
    const source = /libtorch: \S+ from (.*) \(libdir/.exec(run.stderr)?.[1];
    assert.equal(doctor.libtorch.source, source, 'doctor reports the libtorch run.sh built against');
    assert.ok(existsSync(path.join(top, 'app/native/build/Release/hemato_native.node')));

    // A second run finds the addon up to date.
    const again = spawnSync(path.join(top, 'run.sh'), ['--prepare'], { cwd: clean, encoding: 'utf8', env, timeout: 280_000 });
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stderr, /addon: up to date/);

    // Without a model, the bundle's doctor fails and says why.
    renameSync(path.join(top, 'app/models'), path.join(top, 'app/models-away'));
    const noModel = spawnSync(path.join(top, 'run.sh'), ['doctor', '--json'], { cwd: clean, encoding: 'utf8', env, timeout: 280_000 });
    assert.equal(noModel.status, 3, noModel.stderr);
    assert.match(noModel.stderr, /missing: a model: this bundle carries none/);
    assert.match(noModel.stderr, /error: what the bundle needs is missing \(listed above\)\n$/);
    assert.equal(noModel.stdout, '');
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
