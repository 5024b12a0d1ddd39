// runTraining on a tiny image folder: skipped files are reported, finished runs are not overwritten unasked,
// --resume refuses other settings and other data, one process per run folder, and a diverged model is never kept.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import type { RunConfigInput } from '../src/train/config.js';
import { LOCK_FILE, lockRunDir } from '../src/train/lock.js';
import { runTraining, type TrainingRequest } from '../src/train/run.js';
import { loadModel } from '../src/models/io.js';
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

  // An image that became unreadable changes the data: refused, unless allowed, and then said.
  writeFileSync(path.join(folder, 'platelet', 'platelet_0.png'), 'truncated');
  await assert.rejects(
    runTraining(request(runDir, folder, { resume: true })),
    /training data differ from the run's[^]*1 removed: platelet\/platelet_0\.png[^]*--allow-changed-data/,
  );
  const allowed = request(runDir, folder, { resume: true, allowChangedData: true, settings: { workers: 1 } });
  assert.equal((await runTraining(allowed)).interrupted, false);
  assert.ok(
    allowed.notes.some((n) => n.startsWith('--allow-changed-data') && n.includes('platelet/platelet_0.png')),
    allowed.notes.join('\n'),
  );

  // Without its checkpoint the finished run is still there to keep.
  rmSync(path.join(runDir, 'checkpoint.safetensors'));
  await assert.rejects(
    runTraining(request(runDir, folder)),
    /holds a finished run's model \(best\.safetensors, model\.safetensors, log\.jsonl\); choose another --out, or pass --overwrite/,
  );
  const again = request(runDir, folder, { overwrite: true, settings: { seed: 5 } });
  await runTraining(again);
  assert.equal(lines(path.join(runDir, 'log.jsonl')).length, 1, "nothing of the old run's log is left");
  assert.equal(JSON.parse(readFileSync(path.join(runDir, 'config.json'), 'utf8')).seed, 5);
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
