// Inputs that are not plain image files: FIFOs, devices, huge files, link loops, dangling links, unreadable folders,
// paths too long and control characters in names. Each is skipped with its real reason and the rest are used; no
// command hangs. Every command runs in a child process with a time limit, so a hang fails instead of blocking.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  renameSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { listCsvDataset } from '../src/data/dataset.js';
import { DecodeError } from '../src/data/errors.js';
import { escapeControl, inspectPath, listFirst, readRegularFile } from '../src/data/files.js';
import { readImageFile } from '../src/data/image.js';
import { saveUntrainedModel, SHARED } from './helpers.js';

interface Outcome {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs hemato; a run past its time limit (20 s unless given) is killed and shows as code null. Killed outright: a
 * command that stops gracefully on SIGTERM (train saves a checkpoint first) would otherwise wait on what hung it.
 */
function hemato(args: string[], options: { uid?: number; gid?: number; timeout?: number } = {}): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['bin/hemato.js', ...args],
      { timeout: 20_000, killSignal: 'SIGKILL', maxBuffer: 64 * 2 ** 20, ...options },
      (error, stdout, stderr) => {
        const failure = error as (Error & { code?: number; signal?: string }) | null;
        resolve({ code: failure ? (typeof failure.code === 'number' ? failure.code : null) : 0, signal: failure?.signal ?? null, stdout, stderr });
      },
    );
  });
}

const posix = process.platform !== 'win32';
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-inputs-'));
chmodSync(dir, 0o755); // readable by the unprivileged user of the unreadable-folder test
const modelFile = path.join(dir, 'model.safetensors');
const ESCAPED_NAME = 'e\x1b[31mred\nx.png';

async function png(file: string, shade: number): Promise<void> {
  mkdirSync(path.dirname(file), { recursive: true });
  await sharp({ create: { width: 72 + (shade % 5), height: 70, channels: 3, background: { r: 200, g: shade % 256, b: 150 } } })
    .png()
    .toFile(file);
}

async function fixtures() {
  await saveUntrainedModel(modelFile);

  const cells = path.join(dir, 'cells');
  await png(path.join(cells, 'a.png'), 10);
  await png(path.join(cells, 'sub', 'b.png'), 20);
  await png(path.join(cells, ESCAPED_NAME), 30);
  if (posix) {
    execFileSync('mkfifo', [path.join(cells, 'p.png')]);
    symlinkSync('/dev/zero', path.join(cells, 'z.png'));
    symlinkSync('nowhere.png', path.join(cells, 'dangling.png'));
    symlinkSync('loop', path.join(cells, 'loop'));
    symlinkSync('..', path.join(cells, 'sub', 'up'));
  }
  truncateSync(createEmpty(path.join(cells, 'big.png')), 300 * 2 ** 20); // sparse: no disk used
  // A path longer than the system allows (4096 on Linux): made short, then renamed from the bottom up.
  const deep = path.join(cells, 'deep');
  const levels = 20;
  const short = Array.from({ length: levels }, () => 'd');
  await png(path.join(deep, ...short, 'c.png'), 40);
  for (let i = levels; i >= 1; i--) renameSync(path.join(deep, ...short.slice(0, i)), path.join(deep, ...short.slice(0, i - 1), 'L'.repeat(250)));

  // Real cells (pack and train measure the slide's scale from them), ten per class, copied outside the repository.
  const ds = path.join(dir, 'ds');
  const pbc = path.join(SHARED, 'data/pbc');
  if (!existsSync(pbc)) return { cells, ds: null };
  for (const label of ['eosinophil', 'neutrophil']) {
    mkdirSync(path.join(ds, label), { recursive: true });
    for (const name of readdirSync(path.join(pbc, label))
      .filter((n) => n.endsWith('.jpg') && !n.startsWith('.'))
      .sort()
      .slice(0, 10))
      copyFileSync(path.join(pbc, label, name), path.join(ds, label, name));
  }
  if (posix) {
    execFileSync('mkfifo', [path.join(ds, 'neutrophil', 'f.jpg')]);
    execFileSync('mkfifo', [path.join(ds, 'neutrophil', '.hidden.jpg')]);
  }
  truncateSync(createEmpty(path.join(ds, 'eosinophil', 'big.jpg')), 300 * 2 ** 20);
  writeFileSync(path.join(ds, 'eosinophil', 'noise.jpg'), randomFillSync(Buffer.alloc(5000)));
  return { cells, ds };
}

function createEmpty(file: string): string {
  writeFileSync(file, '');
  return file;
}

const ready = fixtures();

test('predict skips FIFOs, devices, huge files, link loops, dangling links and paths too long, and classifies the rest', { skip: !posix }, async () => {
  const { cells } = await ready;
  const missing = path.join(dir, 'missing.png');
  const tooLong = path.join(dir, `${'x'.repeat(300)}.png`);
  const outcome = await hemato(['predict', '--model', modelFile, '--json', cells, '/dev/zero', missing, tooLong]);
  assert.equal(outcome.code, 1, outcome.stderr); // some inputs skipped
  const report = JSON.parse(outcome.stdout);
  assert.deepEqual(
    report.results.map((r: { file: string }) => r.file),
    [path.join(cells, 'a.png'), path.join(cells, ESCAPED_NAME), path.join(cells, 'sub', 'b.png')],
  );
  assert.ok(report.results.every((r: { predictions?: unknown[] }) => r.predictions?.length === 3));
  const reason = (file: string) => report.skipped.find((s: { file: string }) => s.file === file)?.error as string;
  assert.match(reason(path.join(cells, 'p.png')), /not a regular file: a named pipe \(FIFO\)/);
  assert.match(reason(path.join(cells, 'z.png')), /not a regular file: a character device/);
  assert.match(reason('/dev/zero'), /not a regular file: a character device/);
  assert.match(reason(path.join(cells, 'big.png')), /300 MiB is over the 256 MiB limit/);
  assert.match(reason(path.join(cells, 'dangling.png')), /dangling symbolic link/);
  assert.match(reason(path.join(cells, 'loop')), /symbolic link loop/);
  assert.match(reason(path.join(cells, 'sub', 'up')), /already listed/);
  assert.match(reason(missing), /no such file/);
  assert.match(reason(tooLong), /too long/);
  assert.ok(
    report.skipped.some((s: { file: string; error: string }) => s.file.startsWith(path.join(cells, 'deep')) && /too long/.test(s.error)),
    JSON.stringify(report.skipped),
  );
  assert.equal(report.skipped.length, 10);
  // A lower --max-file-size skips more; an explicit FIFO is refused without being opened.
  const strict = await hemato(['predict', '--model', modelFile, '--json', '--max-file-size', '10B', path.join(cells, 'a.png'), path.join(cells, 'p.png')]);
  assert.equal(strict.code, 1, strict.stderr);
  assert.match(strict.stderr, /over the 10 B limit/);
  assert.match(strict.stderr, /named pipe/);
  assert.equal((await hemato(['predict', '--max-file-size', 'lots', 'x.png'])).code, 2);
});

test('predict escapes control characters in names for people, and keeps them exact in --json and --csv', async () => {
  const { cells } = await ready;
  const file = path.join(cells, ESCAPED_NAME);
  const human = await hemato(['predict', '--model', modelFile, file, path.join(dir, `gone\x1b]0;x\x07.png`)]);
  assert.equal(human.code, 1, human.stderr);
  assert.ok(!/[\x00-\x08\x0b-\x1f\x7f]/.test(human.stdout + human.stderr.replace(/\r/g, '')), JSON.stringify(human.stdout + human.stderr));
  assert.ok(human.stdout.includes(`${path.join(cells, 'e')}\\x1b[31mred\\nx.png`), human.stdout);
  assert.ok(human.stderr.includes('gone\\x1b]0;x\\x07.png'), human.stderr);
  assert.equal(human.stdout.trim().split('\n').length, 1);
  const csv = await hemato(['predict', '--model', modelFile, '--csv', file]);
  assert.equal(csv.code, 0, csv.stderr);
  assert.ok(csv.stdout.includes(`\n"${file}",`), csv.stdout);
  const json = JSON.parse((await hemato(['predict', '--model', modelFile, '--json', file])).stdout);
  assert.equal(json.results[0].file, file);
  assert.equal(escapeControl('a\tb\r\u009b\u202ez\\n'), 'a\\tb\\r\\x9b\\u202ez\\n');
});

test('messages name the first few of a long list and count the rest', () => {
  const names = Array.from({ length: 200_000 }, (_, i) => `f${i}`);
  assert.equal(listFirst(names), 'f0, f1, f2, and 199997 more');
  assert.equal(listFirst(names.slice(0, 3)), 'f0, f1, f2');
  assert.equal(listFirst(names.slice(0, 7), 5, '; '), 'f0; f1; f2; f3; f4; and 2 more');
  assert.equal(listFirst([]), '');
});

test('an unreadable folder is reported as such and the other files are classified', { skip: !posix }, async () => {
  const { cells } = await ready;
  const root = path.join(dir, 'locked-case');
  await png(path.join(root, 'ok.png'), 50);
  await png(path.join(root, 'locked', 'hidden-away.png'), 60);
  chmodSync(path.join(root, 'locked'), 0o000);
  // root reads any folder: run as an unprivileged user there.
  const user = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
  const outcome = await hemato(['predict', '--model', modelFile, '--json', root, path.join(cells, 'a.png')], user);
  chmodSync(path.join(root, 'locked'), 0o755);
  assert.equal(outcome.code, 1, outcome.stderr);
  const report = JSON.parse(outcome.stdout);
  assert.deepEqual(
    report.results.map((r: { file: string }) => r.file),
    [path.join(root, 'ok.png'), path.join(cells, 'a.png')],
  );
  assert.deepEqual(report.skipped, [{ file: path.join(root, 'locked'), error: 'cannot read: permission denied' }]);
});

test('scan, pack, eval and train skip a FIFO, a hidden FIFO and a huge file instead of hanging', { skip: !posix }, async (t) => {
  const { ds } = await ready;
  if (!ds) return t.skip('../shared/data/pbc is not here');
  const scan = await hemato(['scan', ds, '--json']);
  assert.equal(scan.code, 0, scan.stderr);
  const report = JSON.parse(scan.stdout);
  assert.equal(report.images, 20, JSON.stringify(report.skipped));
  const reasons = Object.fromEntries(report.skipped.map((s: { path: string; reason: string; detail: string }) => [s.path, `${s.reason}: ${s.detail}`]));
  assert.match(reasons['neutrophil/f.jpg'], /^not-a-file: not a regular file: a named pipe/);
  assert.match(reasons['neutrophil/.hidden.jpg'], /^hidden: hidden file \(not a regular file: a named pipe/);
  assert.match(reasons['eosinophil/big.jpg'], /^too-large: file 300 MiB/);
  assert.match(reasons['eosinophil/noise.jpg'], /^not-image/);
  const strict = JSON.parse((await hemato(['scan', ds, '--json', '--max-file-size', '4K'])).stdout);
  assert.match(strict.skipped.find((s: { path: string }) => s.path === 'eosinophil/noise.jpg').detail, /4\.9 KiB is over the 4 KiB limit/);

  const pack = await hemato(['pack', ds, '--out', path.join(dir, 'packs', 'ds.hpk'), '--size', '32', '--field', 'none', '--threads', '1', '--json']);
  assert.equal(pack.code, 0, pack.stderr);
  const packed = JSON.parse(pack.stdout);
  assert.equal(packed.images, 20);
  assert.ok(packed.skipped.some((s: { path: string; reason: string }) => s.path === 'neutrophil/f.jpg' && s.reason === 'not-a-file'));

  const evaluation = await hemato(['eval', ds, '--model', modelFile, '--json']);
  // The figures leave the FIFO out, and the exit code says so.
  assert.equal(evaluation.code, 1, evaluation.stderr);
  const evaluated = JSON.parse(evaluation.stdout);
  assert.equal(evaluated.n, 20);
  assert.ok(evaluated.skipped.some((s: { path: string; reason: string }) => s.path === 'neutrophil/f.jpg' && /named pipe/.test(s.reason)));

  // A checkpoint write killed outright left a 0-byte temporary: the next run removes it.
  const runDir = path.join(dir, 'run');
  mkdirSync(runDir);
  const stale = path.join(runDir, `checkpoint.safetensors.${deadPid()}.tmp`);
  writeFileSync(stale, '');
  const train = await hemato(
    ['train', ds, '--out', runDir, '--model', 'convnext-only', '--size', '32', '--epochs', '1', '--batch-size', '4', '--workers', '0', '--json'],
    { timeout: 60_000 },
  );
  assert.equal(train.code, 0, train.stderr);
  assert.ok(existsSync(path.join(runDir, 'checkpoint.safetensors')));
  assert.ok(!existsSync(stale), 'the stale temporary is gone');
});

test('a named pipe given where one file is expected is refused at once, never waited on', { skip: !posix }, async () => {
  const fifos = path.join(dir, 'fifos');
  mkdirSync(fifos);
  const fifo = (name: string) => {
    const file = path.join(fifos, name);
    execFileSync('mkfifo', [file]);
    return file;
  };
  const image = path.join(fifos, 'cell.png');
  await sharp({ create: { width: 64, height: 64, channels: 3, background: '#d0a0c0' } })
    .png()
    .toFile(image);
  const model = fifo('model.safetensors');
  const cases: [string[], RegExp][] = [
    [['predict', image, '--model', model], /cannot read .*model\.safetensors: not a regular file: a named pipe/],
    [['info', model], /cannot read .*model\.safetensors: not a regular file: a named pipe/],
    [['train', fifos, '--init', model, '--out', path.join(fifos, 'run-init')], /--init: cannot read .*: not a regular file: a named pipe/],
    [
      ['train', fifos, '--config', fifo('settings.json'), '--out', path.join(fifos, 'run-config')],
      /cannot read the settings file .*: not a regular file: a named pipe/,
    ],
    [['train', '--pack', fifo('data.pack'), '--out', path.join(fifos, 'run-pack')], /cannot read pack .*data\.pack: not a regular file: a named pipe/],
    [['eval', '--images', fifos, '--labels', fifo('labels.csv')], /cannot read CSV .*labels\.csv: not a regular file: a named pipe/],
    [['eval', fifos, '--split', fifo('split.csv')], /cannot read split .*split\.csv: not a regular file: a named pipe/],
    [
      ['preprocess', image, '--config', fifo('mpm.json'), '--out', path.join(fifos, 'sheets')],
      /cannot read MPM config .*mpm\.json: not a regular file: a named pipe/,
    ],
  ];
  const outcomes = await Promise.all(cases.map(([args]) => hemato(args)));
  outcomes.forEach((outcome, i) => {
    const [args, message] = cases[i];
    assert.notEqual(outcome.code, null, `hemato ${args.join(' ')} waited on the pipe until it was killed`);
    assert.notEqual(outcome.code, 0, `hemato ${args.join(' ')}`);
    assert.match(outcome.stderr, message, `hemato ${args.join(' ')}`);
  });
});

/** The pid of a process that has ended. */
function deadPid(): number {
  const child = execFileSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(child.toString());
}

test('readRegularFile and readImageFile refuse special files and files over the limit before reading them', { skip: !posix }, async () => {
  const { cells } = await ready;
  const code = (promise: Promise<unknown>) =>
    promise.then(
      () => 'read',
      (error: unknown) => (error instanceof DecodeError ? `${error.code}: ${error.message}` : String(error)),
    );
  assert.match(await code(readRegularFile('/dev/zero')), /^not-a-file: not a regular file: a character device/);
  assert.match(await code(readRegularFile(path.join(cells, 'p.png'))), /^not-a-file: .*FIFO/);
  assert.match(await code(readImageFile(path.join(cells, 'z.png'))), /^not-a-file/);
  assert.match(await code(readImageFile(path.join(cells, 'big.png'))), /^too-large: file 300 MiB is over the 256 MiB limit/);
  assert.match(await code(readRegularFile(cells)), /^not-a-file: not a regular file: a folder/);
  const noise = path.join(dir, 'noise.bin');
  writeFileSync(noise, randomFillSync(Buffer.alloc(5000)));
  assert.equal((await readRegularFile(noise, 5000)).length, 5000);
  assert.match(await code(readRegularFile(noise, 4999)), /^too-large/);
  // Its size says 0 bytes; the read stops one byte later instead of trusting it.
  if (process.platform === 'linux')
    assert.match(await code(readRegularFile('/proc/self/status')), /^unreadable: cannot read: the file is longer than its size said/);
  assert.match(await code(readImageFile(path.join(cells, 'loop'))), /^unreadable: cannot read: symbolic link loop/);
  assert.deepEqual(await inspectPath(path.join(cells, 'dangling.png')).then((i) => i.kind === 'skip' && [i.error.message, i.missing]), [
    'cannot read: dangling symbolic link (its target nowhere.png does not exist)',
    false,
  ]);
});

test('a file whose name is not valid UTF-8 is skipped as such, not as missing; the rest are classified', { skip: process.platform !== 'linux' }, async () => {
  const root = mkdtempSync(path.join(tmpdir(), 'hemato-names-'));
  try {
    const png = await sharp({ create: { width: 48, height: 48, channels: 3, background: { r: 200, g: 120, b: 160 } } })
      .png()
      .toBuffer();
    const cells = path.join(root, 'cells');
    mkdirSync(cells);
    writeFileSync(Buffer.concat([Buffer.from(`${cells}/cell-`), Buffer.from([0xff]), Buffer.from('.png')]), png); // Latin-1 ÿ
    writeFileSync(path.join(cells, 'plain.png'), png);
    const model = path.join(root, 'model.safetensors');
    await saveUntrainedModel(model);
    const outcome = await hemato(['predict', '--model', model, '--json', cells]);
    assert.equal(outcome.code, 1, outcome.stderr);
    const document = JSON.parse(outcome.stdout);
    assert.deepEqual(
      document.results.map((r: { file: string }) => path.basename(r.file)),
      ['plain.png'],
    );
    assert.equal(document.skipped.length, 1);
    assert.equal(path.basename(document.skipped[0].file), 'cell-\uFFFD.png');
    assert.match(document.skipped[0].error, /its name is not valid UTF-8 .*rename it in UTF-8/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a folder of many files is listed for predict and scanned whole: no list is spread into one call', { skip: !posix }, async () => {
  // Past about 120,000 arguments, f(...list) overflows the default stack, and a lab's archive can hold that many
  // files. With the stack at a fifth, 30,000 files overflow it where a list is spread, and cost a few seconds.
  const root = mkdtempSync(path.join(tmpdir(), 'hemato-many-'));
  try {
    const count = 30_000;
    mkdirSync(path.join(root, 'neutrophil'));
    for (let i = 0; i < count; i++) writeFileSync(path.join(root, 'neutrophil', `${i}.png`), '');
    const script = `
      const { expandInputs } = await import(${JSON.stringify(path.resolve('dist/src/cli/commands/predict.js'))});
      const { scanDataset } = await import(${JSON.stringify(path.resolve('dist/src/data/scan.js'))});
      const listed = await expandInputs([${JSON.stringify(root)}]);
      const scanned = await scanDataset({ dir: ${JSON.stringify(root)} });
      console.log(JSON.stringify({ listed: listed.files.length, skipped: scanned.skipped.length, reasons: [...new Set(scanned.skipped.map((s) => s.reason))] }));`;
    const { stdout } = await promisify(execFile)(process.execPath, ['--stack-size=200', '--input-type=module', '-e', script], { timeout: 60_000 });
    assert.deepEqual(JSON.parse(stdout), { listed: count, skipped: count, reasons: ['empty'] });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a CSV listing names a FIFO, a folder, a dangling link and a missing file for what they are', { skip: !posix }, async () => {
  const { cells } = await ready;
  const csv = path.join(dir, 'labels.csv');
  writeFileSync(csv, 'file,label\na.png,neutrophil\np.png,neutrophil\nsub,neutrophil\ndangling.png,platelet\nnone.png,platelet\n');
  const listing = await listCsvDataset(csv, cells);
  assert.deepEqual(
    listing.items.map((i) => i.file),
    ['a.png'],
  );
  assert.deepEqual(
    listing.skipped.map((s) => [s.path, s.reason]),
    [
      ['p.png', 'not-a-file'],
      ['sub', 'not-a-file'],
      ['dangling.png', 'unreadable'],
      ['none.png', 'missing'],
    ],
  );
});

test.after(() => {
  // GNU rm removes a tree whose paths are longer than the system allows; Node's rm does not.
  execFileSync('rm', ['-rf', dir]);
});
