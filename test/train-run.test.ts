// runTraining on a tiny image folder: skipped files are reported, no file of an earlier run (nor a link) is replaced
// unasked or written through, the models to start from are checked before the data is read, --resume refuses other
// settings, other data, a damaged checkpoint and a finished run, one process per run folder, and a diverged model is
// never kept.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { createModel } from '../src/models/index.js';
import { type RunConfigInput, RunConfigError } from '../src/train/config.js';
import { LOCK_FILE, lockRunDir } from '../src/train/lock.js';
import { runTraining, type TrainingRequest } from '../src/train/run.js';
import { loadModel, saveModel } from '../src/models/io.js';
import { SHARED } from './helpers.js';
import { TINY_RUN, writeNoisyImageFolder } from './train-fixtures.js';

const root = mkdtempSync(path.join(tmpdir(), 'hemato-run-'));
const CLASSES = ['neutrophil', 'platelet'];

/** 8 noisy 40 px images per class (noise keeps them from being duplicates), and one file that is not an image. */
async function imageFolder(name: string): Promise<string> {
  const folder = await writeNoisyImageFolder(path.join(root, name), CLASSES, 3);
  writeFileSync(path.join(folder, 'neutrophil', 'notes.png'), 'not an image');
  return folder;
}

function request(runDir: string, folder: string, extra: Partial<TrainingRequest> & { settings?: RunConfigInput } = {}): TrainingRequest & { notes: string[] } {
  const notes: string[] = [];
  const { settings, ...rest } = extra;
  return {
    runDir,
    overrides: { ...TINY_RUN, ...settings, data: { ...TINY_RUN.data, source: { dir: folder }, ...settings?.data } },
    note: (message) => notes.push(message),
    notes,
    ...rest,
  };
}

const lines = (file: string) => readFileSync(file, 'utf8').trim().split('\n');

test('a run reports skipped files, keeps finished results unless told to overwrite, and resumes only as it was', async () => {
  const folder = await imageFolder('cells');
  const runDir = path.join(root, 'run');
  const first = request(runDir, folder);
  const outcome = await runTraining(first);
  assert.equal(outcome.interrupted, false);
  assert.ok(existsSync(path.join(runDir, 'model.safetensors')));
  const { metadata, model } = await loadModel(path.join(runDir, 'model.safetensors'));
  model.dispose();
  const validation = metadata.provenance.validation as { n: number; accuracy: number; split: string };
  assert.ok(validation.n > 0 && validation.accuracy >= 0 && validation.accuracy <= 1, JSON.stringify(validation));
  assert.equal(validation.split, metadata.provenance.split_hash, 'the model file records its validation figures and split');
  assert.ok(!existsSync(path.join(runDir, LOCK_FILE)), 'the lock is released');
  const report = readFileSync(path.join(runDir, 'report.md'), 'utf8');
  assert.match(report, /!\[training curves\]\(curves\.svg\)\n\n1 epoch; the weights kept are those of epoch 1/);
  assert.ok(readFileSync(path.join(runDir, 'curves.svg'), 'utf8').includes('<circle'), 'one epoch is drawn as points');
  const skippedNote = first.notes.find((n) => n.startsWith('skipped 1 file'));
  assert.ok(skippedNote?.includes('neutrophil/notes.png'), first.notes.join('\n'));
  assert.deepEqual(
    JSON.parse(readFileSync(path.join(runDir, 'skipped.json'), 'utf8')).map((s: { path: string }) => s.path),
    ['neutrophil/notes.png'],
  );
  const manifest = JSON.parse(readFileSync(path.join(runDir, 'data.json'), 'utf8'));
  assert.equal(manifest.rows.length, 16);

  await assert.rejects(
    runTraining(request(runDir, folder, { resume: true, settings: { epochs: 2, lr: 0.01 } })),
    (e: Error) => /differ from .*config\.json/.test(e.message) && /epochs: 1 → 2/.test(e.message) && /lr: 0\.001 → 0\.01/.test(e.message),
  );
  // A finished run has nothing to resume: it says so and how to train further, and rewrites nothing.
  const finished = readFileSync(path.join(runDir, 'model.safetensors'));
  await assert.rejects(
    runTraining(request(runDir, folder, { resume: true })),
    /the run in .*run is finished \(it trained its 1 epoch, and its model is .*model\.safetensors\); there is nothing to resume\. To train it further, start a new run from its model: --init /,
  );
  assert.deepEqual(readFileSync(path.join(runDir, 'model.safetensors')), finished);
  assert.equal(readFileSync(path.join(runDir, 'report.md'), 'utf8'), report);

  // An image that became unreadable changes the data of an unfinished run: refused, unless allowed, and then said.
  const partDir = path.join(root, 'run-part');
  assert.equal((await runTraining(request(partDir, folder, { shouldStop: () => true }))).interrupted, true);
  writeFileSync(path.join(folder, 'platelet', 'platelet_0.png'), 'truncated');
  await assert.rejects(
    runTraining(request(partDir, folder, { resume: true })),
    /training data differ from the run's[^]*1 removed: platelet\/platelet_0\.png[^]*--allow-changed-data/,
  );
  const allowed = request(partDir, folder, { resume: true, allowChangedData: true, settings: { workers: 1 } });
  assert.equal((await runTraining(allowed)).interrupted, false);
  assert.ok(
    allowed.notes.some((n) => n.startsWith('--allow-changed-data') && n.includes('platelet/platelet_0.png')),
    allowed.notes.join('\n'),
  );

  // Without its checkpoint the finished run is still there to keep.
  rmSync(path.join(runDir, 'checkpoint.safetensors'));
  await assert.rejects(
    runTraining(request(runDir, folder)),
    /holds a finished run's model \(best\.safetensors, model\.safetensors, log\.jsonl and 10 other files\); choose another --out, or pass --overwrite/,
  );
  const again = request(runDir, folder, { overwrite: true, settings: { seed: 5 } });
  await runTraining(again);
  assert.equal(lines(path.join(runDir, 'log.jsonl')).length, 1, "nothing of the old run's log is left");
  assert.equal(JSON.parse(readFileSync(path.join(runDir, 'config.json'), 'utf8')).seed, 5);
});

test('a run asked for bf16 where bf16 is emulated says so, and runs', async () => {
  const folder = await imageFolder('bf16-cells');
  const asked = request(path.join(root, 'bf16-run'), folder, { settings: { precision: 'bf16' } });
  assert.equal((await runTraining(asked)).interrupted, false);
  const warned = asked.notes.some((n) => /^warning: bf16 is emulated on this CPU/.test(n));
  assert.equal(warned, E.bf16Emulated('cpu'), asked.notes.join('\n'));
});

test('a new run replaces no file it writes unasked, nor a file it reads, and never writes through a link', async () => {
  const folder = await imageFolder('cells-outputs');
  const first = path.join(root, 'outputs-first');
  await runTraining(request(first, folder));

  // A split made beforehand (hemato split) is an earlier file where the run makes its own, and an input where given.
  const splitDir = path.join(root, 'with-split');
  mkdirSync(splitDir);
  for (const name of ['split.csv', 'split.json']) copyFileSync(path.join(first, name), path.join(splitDir, name));
  const split = readFileSync(path.join(splitDir, 'split.csv'));
  await assert.rejects(
    runTraining(request(splitDir, folder)),
    /with-split holds files this run writes \(split\.csv, split\.json\); train on its split with --split .*split\.csv, choose another --out, or pass --overwrite to replace them/,
  );
  assert.ok(!existsSync(path.join(splitDir, 'config.json')));
  await runTraining(request(splitDir, folder, { settings: { data: { split: path.join(splitDir, 'split.csv') } } }));
  assert.deepEqual(readFileSync(path.join(splitDir, 'split.csv')), split);

  // A model the run starts or distils from may not be one it replaces: --overwrite would delete it unread.
  const inputs: [string, RunConfigInput][] = [
    ['--init', { init: path.join(first, 'model.safetensors') }],
    ['--teacher', { distill: { teachers: [path.join(first, 'best.safetensors')], weight: 0.5, temperature: 2 } }],
  ];
  for (const [flag, settings] of inputs) {
    await assert.rejects(
      runTraining(request(first, folder, { overwrite: true, settings })),
      (e: Error) =>
        e instanceof RunConfigError &&
        new RegExp(`^${flag} .*outputs-first/(model|best)\\.safetensors is in --out .*outputs-first, where this run writes its own`).test(e.message),
    );
  }
  assert.ok(
    ['model.safetensors', 'best.safetensors', 'log.jsonl'].every((name) => existsSync(path.join(first, name))),
    'nothing was removed',
  );

  // A link at one of its names, even a dangling one, is an earlier file; --overwrite removes the link, not its target.
  const keep = path.join(root, 'keep.txt');
  writeFileSync(keep, 'keep');
  const linked = path.join(root, 'linked');
  mkdirSync(linked);
  symlinkSync(keep, path.join(linked, 'provenance.json'));
  symlinkSync(path.join(root, 'gone.txt'), path.join(linked, 'config.json'));
  await assert.rejects(runTraining(request(linked, folder)), /linked holds files this run writes \(config\.json, provenance\.json\)/);
  assert.equal(readFileSync(keep, 'utf8'), 'keep');
  await runTraining(request(linked, folder, { overwrite: true }));
  assert.equal(readFileSync(keep, 'utf8'), 'keep');
  assert.ok(!existsSync(path.join(root, 'gone.txt')));

  // A resumed run writes its files whole under their names: a link there is replaced, never written through.
  const resumed = path.join(root, 'linked-resume');
  assert.equal((await runTraining(request(resumed, folder, { shouldStop: () => true }))).interrupted, true);
  rmSync(path.join(resumed, 'provenance.json'));
  symlinkSync(keep, path.join(resumed, 'provenance.json'));
  assert.equal((await runTraining(request(resumed, folder, { resume: true }))).interrupted, false);
  assert.equal(readFileSync(keep, 'utf8'), 'keep');
  assert.ok(lstatSync(path.join(resumed, 'provenance.json')).isFile());

  // The log is appended to, not rewritten: a link at its name is refused on --resume before the data is read.
  const logged = path.join(root, 'linked-log');
  assert.equal((await runTraining(request(logged, folder, { shouldStop: () => true }))).interrupted, true);
  symlinkSync(keep, path.join(logged, 'log.jsonl'));
  const events: string[] = [];
  await assert.rejects(
    runTraining(request(logged, folder, { resume: true, onEvent: (e) => events.push(e.type), onLoadProgress: (stage) => events.push(stage) })),
    /linked-log\/log\.jsonl is a symbolic link, where the run appends its log to a file of its own: remove it \(or put the run's own log\.jsonl in its place\) and run again$/,
  );
  assert.deepEqual(events, [], 'nothing was read or trained');
  assert.equal(readFileSync(keep, 'utf8'), 'keep');
  rmSync(path.join(logged, 'log.jsonl'));
  assert.equal((await runTraining(request(logged, folder, { resume: true }))).interrupted, false);
  assert.equal(lines(path.join(logged, 'log.jsonl')).length, 1);
});

test('a model to start or distil from is checked before the data is read: its architecture and its weights', async () => {
  const save = async (name: string, architecture: string, damaged = false, classes: readonly string[] = CLASSES) => {
    const file = path.join(root, `${name}.safetensors`);
    E.manualSeed(0);
    const model = createModel(architecture, { numClasses: classes.length, inputSize: 32 });
    if (damaged) E.noGrad(() => model.stateDict().get('head.fc.weight')!.fill_(Number.NaN));
    await saveModel(file, model, { classes: [...classes], normalization: IMAGENET_NORMALIZATION });
    model.dispose();
    return file;
  };
  const femto = await save('femto', 'convnext_femto');
  const nan = await save('nan', 'convnext_atto', true);
  // A teacher must have the run's classes (a folder is read against hemato's): this one fails on its weights alone.
  const nanTeacher = await save('nan-teacher', 'convnext_atto', true, PBC_CLASSES);
  const cases: [RunConfigInput, RegExp][] = [
    [{ init: femto }, /^--init .*femto\.safetensors is a convnext_femto model; this run trains convnext_atto: pass --arch convnext_femto, or another --init$/],
    [{ init: nan }, /^--init .*nan\.safetensors has NaN or infinite weights \(head\.fc\.weight\); the file is damaged: start from another model$/],
    [
      { distill: { teachers: [nanTeacher], weight: 0.5, temperature: 2 } },
      /^--teacher .*nan-teacher\.safetensors has NaN or infinite weights \(head\.fc\.weight\); the file is damaged: use another teacher$/,
    ],
  ];
  // The data folder does not exist: each case must be refused before it is looked at.
  for (const [settings, message] of cases)
    await assert.rejects(
      runTraining(request(path.join(root, 'never-run'), path.join(root, 'no-cells'), { settings })),
      (e: Error) => e instanceof RunConfigError && message.test(e.message),
    );
  assert.ok(!existsSync(path.join(root, 'never-run')));
});

test('on --resume, a damaged checkpoint or one of another architecture is refused with the ways on', async () => {
  const folder = await imageFolder('cells-damaged');
  const runDir = path.join(root, 'damaged');
  assert.equal((await runTraining(request(runDir, folder, { shouldStop: () => true }))).interrupted, true);
  const checkpoint = path.join(runDir, 'checkpoint.safetensors');
  const intact = readFileSync(checkpoint);
  const header = (config: unknown) =>
    E.serializeSafetensors(new Map(), {
      format: 'hemato-checkpoint',
      loop: JSON.stringify({ epoch: 0, batch: 1, globalStep: 1, bestScore: -1, bestEpoch: -1, history: [] }),
      optimizer: '{}',
      config: JSON.stringify(config),
    });
  const config = JSON.parse(readFileSync(path.join(runDir, 'config.json'), 'utf8'));
  const cases: [Uint8Array, RegExp][] = [
    [intact.subarray(0, intact.length >> 1), /checkpoint\.safetensors holds \d+ bytes of tensor data where its header describes \d+/],
    [Buffer.from('not a checkpoint'), /checkpoint\.safetensors is not a safetensors file/],
    [
      header({ ...config, model: 'convnext_femto' }),
      /checkpoint\.safetensors is a checkpoint of a convnext_femto run, and .*config\.json trains convnext_atto/,
    ],
    // Its header is sound, its weights missing: found as it is loaded, after the data.
    [header(config), /checkpoint\.safetensors: .*model/],
  ];
  for (const [bytes, damage] of cases) {
    writeFileSync(checkpoint, bytes);
    await assert.rejects(
      runTraining(request(runDir, folder, { resume: true })),
      (e: Error) => damage.test(e.message) && /; the run cannot continue from it: start it again with --overwrite/.test(e.message),
    );
  }
});

test('one training process per run folder: a live holder is an error, a dead one is taken over', async () => {
  const folder = await imageFolder('cells-lock');
  const runDir = path.join(root, 'locked');
  mkdirSync(runDir);
  writeFileSync(path.join(runDir, LOCK_FILE), JSON.stringify({ pid: process.pid, host: hostname(), since: 'now' }));
  await assert.rejects(runTraining(request(runDir, folder)), new RegExp(`in use by another training process \\(PID ${process.pid} `));
  assert.ok(!existsSync(path.join(runDir, 'config.json')), 'nothing was written');
  const cli = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const child = execFile(process.execPath, ['bin/hemato.js', 'train', folder, '--out', runDir], { timeout: 60_000 }, (_, __, stderr) =>
      resolve({ code: child.exitCode, stderr }),
    );
  });
  assert.equal(cli.code, 1);
  assert.match(cli.stderr, new RegExp(`in use by another training process \\(PID ${process.pid} `));

  const dead = spawnSync(process.execPath, ['-e', ''], { timeout: 30_000 }).pid;
  writeFileSync(path.join(runDir, LOCK_FILE), JSON.stringify({ pid: dead, host: hostname(), since: 'then' }));
  const notes: string[] = [];
  const lock = await lockRunDir(runDir, (n) => notes.push(n));
  assert.match(notes.join('\n'), new RegExp(`taking over the lock of process ${dead}, which is no longer running`));
  assert.equal(JSON.parse(readFileSync(path.join(runDir, LOCK_FILE), 'utf8')).pid, process.pid);
  await assert.rejects(
    lockRunDir(runDir, () => {}),
    /in use by another training process/,
  );
  await lock.release();
  assert.ok(!existsSync(path.join(runDir, LOCK_FILE)));
});

test('a stop asked for while the data is still being read ends the run at once, and its lock goes with it', async (t) => {
  // PBC takes tens of seconds to scan: long enough to be stopped in the middle of it.
  const pbc = path.join(SHARED, 'data/pbc');
  if (!existsSync(pbc)) return t.skip('../shared/data/pbc is not here');
  const runDir = path.join(root, 'stopped-early');
  const child = spawn(process.execPath, ['bin/hemato.js', 'train', pbc, '--out', runDir, '--epochs', '1']);
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    if (/scanning/.test(stderr) && child.exitCode === null && !child.killed) child.kill('SIGINT');
  });
  const stopped = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const code = await new Promise<number | null>((resolve) => child.on('exit', (exitCode) => resolve(exitCode)));
  clearTimeout(stopped);
  assert.equal(code, 130, stderr);
  assert.match(stderr, /interrupted before training began; nothing was trained/);
  assert.ok(!existsSync(path.join(runDir, LOCK_FILE)), 'the lock is released');
});

test('a data set without labelled images, or too small to give both parts, is refused with what to give', async () => {
  const flat = path.join(root, 'flat');
  mkdirSync(flat);
  writeFileSync(path.join(flat, 'notes.txt'), 'no class folders here');
  await assert.rejects(
    runTraining(request(path.join(root, 'run-flat'), flat)),
    /no labelled images found in .*flat \(skipped 1\); give a folder with one folder per class/,
  );
  const single = await writeNoisyImageFolder(path.join(root, 'single'), ['neutrophil'], 5);
  for (const name of readdirSync(path.join(single, 'neutrophil')).slice(1)) rmSync(path.join(single, 'neutrophil', name));
  await assert.rejects(runTraining(request(path.join(root, 'run-single'), single)), /the split gives 1 training and 0 validation images; training needs both/);
});

test('a run that diverges in its first epoch keeps no model', async () => {
  const folder = await imageFolder('cells-diverge');
  // One step per epoch, so the step that blows the weights up is the last before validation.
  const split = path.join(root, 'diverge-split.csv');
  const rows = CLASSES.flatMap((label) => Array.from({ length: 8 }, (_, i) => `${label}/${label}_${i}.png,${label},${i < 6 ? 'train' : 'val'}`));
  writeFileSync(split, `file,label,part\n${rows.join('\n')}\n`);
  const runDir = path.join(root, 'diverged');
  await assert.rejects(
    runTraining(request(runDir, folder, { settings: { lr: 1e30, batchSize: 12, data: { split } } })),
    /training diverged: .*validation outputs after epoch 1 are NaN or infinite/,
  );
  assert.ok(!existsSync(path.join(runDir, 'best.safetensors')));
  assert.ok(!existsSync(path.join(runDir, 'model.safetensors')));
});
