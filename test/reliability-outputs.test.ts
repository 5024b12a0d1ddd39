// Outputs and limits: output folders in kernel file systems are refused instead of hanging, thread counts and batch
// sizes are bounded, packs and checkpoints are written whole or not at all with no temporary left behind, contact
// sheets never overwrite one another, and a closed output pipe ends a command quietly. Child processes run with a
// time limit, so a hang fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import * as E from '../src/engine/index.js';
import { ConvNeXt } from '../src/models/convnext.js';
import { writeFileAtomic } from '../src/engine/atomic-write.js';
import { loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.js';
import { parseFileSize, parseThreadCount } from '../src/cli/commands/shared.js';
import { sheetNames } from '../src/cli/commands/preprocess.js';
import { CliError, jsonPieces, nameColumn, prepareOutputDir } from '../src/cli/output.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { readModelMetadata } from '../src/models/io.js';
import { saveUntrainedModel, SHARED } from './helpers.js';

interface Outcome {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Runs a node program; a run past 20 s is killed and shows as code null. */
function node(args: string[]): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile(process.execPath, args, { timeout: 20_000, maxBuffer: 64 * 2 ** 20 }, (error, stdout, stderr) => {
      const failure = error as (Error & { code?: number; signal?: string }) | null;
      resolve({ code: failure ? (typeof failure.code === 'number' ? failure.code : null) : 0, signal: failure?.signal ?? null, stdout, stderr });
    });
  });
}
const hemato = (...args: string[]) => node(['bin/hemato.js', ...args]);

const linux = process.platform === 'linux';
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-outputs-'));
const modelFile = path.join(dir, 'model.safetensors');

async function png(file: string, shade: number): Promise<void> {
  mkdirSync(path.dirname(file), { recursive: true });
  await sharp({ create: { width: 70, height: 70, channels: 3, background: { r: 200, g: shade, b: 150 } } })
    .png()
    .toFile(file);
}

async function fixtures() {
  await saveUntrainedModel(modelFile);
  const ds = path.join(dir, 'ds');
  for (const label of ['neutrophil', 'platelet'])
    for (let i = 0; i < 2; i++) await png(path.join(ds, label, `${i}.png`), 40 * i + (label === 'platelet' ? 100 : 0));
  // Real cells for pack, which measures the slide's scale from them; copied outside the repository.
  const pbc = path.join(SHARED, 'data/pbc/neutrophil');
  const cells = path.join(dir, 'cells');
  if (!existsSync(pbc)) return { ds, cells: null };
  mkdirSync(path.join(cells, 'neutrophil'), { recursive: true });
  for (const name of readdirSync(pbc)
    .filter((n) => n.endsWith('.jpg') && !n.startsWith('.'))
    .sort()
    .slice(0, 3))
    copyFileSync(path.join(pbc, name), path.join(cells, 'neutrophil', name));
  return { ds, cells };
}
const ready = fixtures();

test('output folders under /proc, /sys and /dev are refused at once, not created forever', { skip: !linux }, async () => {
  const { ds } = await ready;
  const cases: [string[], RegExp][] = [
    [['train', ds, '--out', '/proc/hemato-run'], /--out \/proc\/hemato-run: .*inside \/proc/],
    [['preprocess', path.join(ds, 'neutrophil', '0.png'), '--out', '/proc/hemato/sheets'], /--out \/proc\/hemato\/sheets: .*inside \/proc/],
    [['eval', ds, '--model', modelFile, '--report', '/sys/hemato'], /--report \/sys\/hemato: .*inside \/sys/],
    [['pack', ds, '--out', '/proc/hemato/p.hpk'], /the folder of --out \/proc\/hemato: .*inside \/proc/],
  ];
  for (const [args, message] of cases) {
    const outcome = await hemato(...args);
    assert.equal(outcome.code, 1, `${args.join(' ')}: ${outcome.stderr}`);
    assert.match(outcome.stderr, message);
  }
});

test('prepareOutputDir creates nested folders and refuses files, dangling links and links into /proc on the way', async () => {
  const base = path.join(dir, 'prepare');
  assert.equal(await prepareOutputDir(path.join(base, 'a', 'b'), '--out'), path.join(base, 'a', 'b'));
  assert.ok(readdirSync(path.join(base, 'a')).includes('b'));
  assert.equal(await prepareOutputDir(path.join(base, 'a'), '--out'), path.join(base, 'a')); // existing: fine
  writeFileSync(path.join(base, 'file'), '');
  const refused = (dirName: string, message: RegExp) =>
    assert.rejects(prepareOutputDir(dirName, '--out'), (e: unknown) => e instanceof CliError && message.test(e.message));
  await refused(path.join(base, 'file', 'x'), /file exists and is not a folder/);
  await refused(path.join(base, 'file'), /file exists and is not a folder/);
  if (linux) {
    symlinkSync('nowhere', path.join(base, 'dangling'));
    await refused(path.join(base, 'dangling', 'x'), /dangling symbolic link/);
    symlinkSync('/proc/self', path.join(base, 'kernel'));
    await refused(path.join(base, 'kernel', 'x'), /inside \/proc/);
    await refused('/dev/hemato', /inside \/dev/);
  }
});

test('--threads and --workers take 1..4 × the cores (workers also 0); anything else is a usage error', async () => {
  const { ds } = await ready;
  const max = 4 * availableParallelism();
  for (const value of ['100000', '0', '1.5', 'two', String(max + 1)]) {
    const outcome = await hemato('pack', ds, '--out', path.join(dir, 'never.hpk'), '--threads', value);
    assert.equal(outcome.code, 2, outcome.stderr);
    assert.ok(outcome.stderr.includes(`--threads must be an integer in 1..${max}`), outcome.stderr);
  }
  const workers = await hemato('train', ds, '--out', path.join(dir, 'never-run'), '--workers', '100000');
  assert.equal(workers.code, 2, workers.stderr);
  assert.ok(workers.stderr.includes(`--workers must be an integer in 0..${max}`), workers.stderr);
  assert.ok(!existsSync(path.join(dir, 'never.hpk')) && !existsSync(path.join(dir, 'never-run')));
  assert.equal(parseThreadCount('--threads')(String(max)), max);
  assert.equal(parseThreadCount('--workers', 0)('0'), 0);
  assert.throws(() => parseThreadCount('--threads')(''), /--threads must be an integer/);
});

test('--max-file-size takes MiB or a size with a unit', () => {
  assert.equal(parseFileSize('256'), 256 * 2 ** 20);
  assert.equal(parseFileSize('100K'), 100 * 2 ** 10);
  assert.equal(parseFileSize('1.5GiB'), 1.5 * 2 ** 30);
  assert.equal(parseFileSize('5000000B'), 5_000_000);
  for (const bad of ['', '0', '-1', 'big', '1T', '0.1B']) assert.throws(() => parseFileSize(bad), /expected a size/, bad);
});

test('classifyBatch rejects a batchSize or topK that is not a usable positive integer, naming it', async () => {
  const { ds } = await ready;
  // In a child process: before the check, batchSize 0 looped forever.
  const script = `
    import { loadClassifier } from './dist/src/api/classifier.js';
    const classifier = await loadClassifier(${JSON.stringify(modelFile)});
    const image = ${JSON.stringify(path.join(ds, 'neutrophil', '0.png'))};
    const outcomes = [];
    for (const options of [{ batchSize: 0 }, { batchSize: NaN }, { batchSize: 0.5 }, { batchSize: 5000 }, { topK: 0.5 }, { topK: 9.5 }, { batchSize: 4096, topK: 20 }]) {
      outcomes.push(await classifier.classifyBatch([image], options).then((r) => 'predictions' in r[0] ? r[0].predictions.length : r[0].error, (e) => e.name + ': ' + e.message));
    }
    console.log(JSON.stringify(outcomes));
    classifier.dispose();`;
  const outcome = await node(['--input-type=module', '-e', script]);
  assert.equal(outcome.code, 0, outcome.stderr);
  const [zero, nan, half, huge, halfK, bigFractionK, fine] = JSON.parse(outcome.stdout) as (string | number)[];
  assert.equal(zero, 'RangeError: batchSize must be an integer in 1..4096, got 0');
  assert.equal(nan, 'RangeError: batchSize must be an integer in 1..4096, got NaN');
  assert.equal(half, 'RangeError: batchSize must be an integer in 1..4096, got 0.5');
  assert.equal(huge, 'RangeError: batchSize must be an integer in 1..4096, got 5000');
  assert.equal(halfK, 'RangeError: topK must be a positive integer, got 0.5');
  assert.equal(bigFractionK, 'RangeError: topK must be a positive integer, got 9.5');
  assert.equal(fine, 8); // topK beyond the classes gives them all
});

test("the table's name column fits any number of files: padded to the longest, long names shown by their end", () => {
  assert.deepEqual(nameColumn(['a.png', 'bb.png']), ['a.png ', 'bb.png']);
  assert.deepEqual(nameColumn(['x']), ['x   ']);
  const long = `${'d/'.repeat(40)}cell.png`;
  const [cut] = nameColumn([long]);
  assert.equal(cut.length, 60);
  assert.ok(cut.startsWith('…') && long.endsWith(cut.slice(1)));
  assert.equal(nameColumn(['line\nbreak.png'])[0], 'line\\nbreak.png');
  const many = Array.from({ length: 300_000 }, (_, i) => `cells/${i}.png`); // a large lab folder
  const column = nameColumn(many);
  assert.equal(column.length, many.length);
  assert.equal(column[0], 'cells/0.png'.padEnd('cells/299999.png'.length));
});

test('a --json document is written in pieces, as JSON.stringify(value, null, 2) writes it whole', () => {
  const documents: unknown[] = [
    { model: 'm', results: [{ file: 'a.png', predictions: [{ label: 'basophil', score: 0.5 }], reasons: [] }, null, undefined, 'x\ny'], skipped: [] },
    { a: undefined, b: () => 1, c: NaN, d: {}, e: [], f: { g: [1, { h: [2] }] }, i: new Date(0), j: [[1, 2], []] },
    {},
    { only: undefined },
    [1, { a: 2 }],
    'text',
    null,
  ];
  for (const value of documents) assert.equal([...jsonPieces(value)].join(''), `${JSON.stringify(value, null, 2)}\n`, JSON.stringify(value));
  const many = { results: Array.from({ length: 40_000 }, (_, i) => ({ file: `cells/${i}.png`, score: i / 40_000 })) };
  const pieces = [...jsonPieces(many)];
  assert.ok(pieces.length > 1, `${pieces.length} piece`);
  assert.equal(pieces.join(''), `${JSON.stringify(many, null, 2)}\n`);
});

test('a --json document longer than the longest string V8 can hold is printed whole', async () => {
  // 520 results of 1 MiB each: 545 MB of JSON, past V8's limit of about 512 MiB for one string.
  const script = `
    const { printJson } = await import(${JSON.stringify(path.resolve('dist/src/cli/output.js'))});
    printJson({ results: new Array(520).fill({ file: 'x'.repeat(2 ** 20) }) });`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let bytes = 0;
  let tail = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
    tail = (tail + chunk.toString('latin1')).slice(-16);
  });
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
  const code = await new Promise((resolve) => child.on('close', resolve));
  assert.equal(code, 0, stderr);
  const element = `    {\n      "file": "${'x'.repeat(2 ** 20)}"\n    }`.length;
  assert.equal(bytes, '{\n  "results": [\n'.length + 520 * element + 519 * ',\n'.length + '\n  ]\n}\n'.length);
  assert.equal(tail.slice(-8), '"\n    }\n  ]\n}\n'.slice(-8));
});

test('writeFileAtomic replaces a file only when the new one is complete, and removes its temporary on failure', async () => {
  const file = path.join(dir, 'atomic', 'data.bin');
  mkdirSync(path.dirname(file));
  await writeFileAtomic(file, [Buffer.from('old')]);
  assert.equal(readFileSync(file, 'utf8'), 'old');
  async function* failing() {
    yield Buffer.from('half of the new');
    throw new Error('disk full');
  }
  await assert.rejects(writeFileAtomic(file, failing()), /disk full/);
  assert.equal(readFileSync(file, 'utf8'), 'old');
  assert.deepEqual(readdirSync(path.dirname(file)), ['data.bin']);
  await writeFileAtomic(file, [Buffer.from('n'), Buffer.from('ew')]);
  assert.equal(readFileSync(file, 'utf8'), 'new');
  assert.deepEqual(readdirSync(path.dirname(file)), ['data.bin']);
});

test('a write stopped by SIGTERM or SIGINT leaves the old file and no temporary; one killed outright is cleaned up next time', { skip: !linux }, async () => {
  const file = path.join(dir, 'signals', 'data.bin');
  mkdirSync(path.dirname(file));
  writeFileSync(file, 'old');
  const writer = (signal: string) => `
    import { writeFileAtomic } from './dist/src/engine/atomic-write.js';
    async function* chunks() {
      yield Buffer.from('half of the new');
      process.kill(process.pid, '${signal}');
      await new Promise((resolve) => setTimeout(resolve, 15000));
      yield Buffer.from('never');
    }
    await writeFileAtomic(${JSON.stringify(file)}, chunks());`;
  for (const signal of ['SIGTERM', 'SIGINT']) {
    const outcome = await node(['--input-type=module', '-e', writer(signal)]);
    assert.equal(outcome.signal, signal, `ended by ${signal}, as without the handler: ${JSON.stringify(outcome)}`);
    assert.equal(readFileSync(file, 'utf8'), 'old');
    assert.deepEqual(readdirSync(path.dirname(file)), ['data.bin']);
  }
  const killed = await node(['--input-type=module', '-e', writer('SIGKILL')]);
  assert.equal(killed.signal, 'SIGKILL');
  assert.equal(readdirSync(path.dirname(file)).length, 2, 'SIGKILL leaves its temporary');
  const live = path.join(path.dirname(file), `data.bin.${process.ppid}.tmp`); // a running writer's: kept
  writeFileSync(live, '');
  await writeFileAtomic(file, [Buffer.from('new')]);
  assert.deepEqual(readdirSync(path.dirname(file)).sort(), ['data.bin', path.basename(live)]);
  assert.equal(readFileSync(file, 'utf8'), 'new');
});

test('hemato pack over an existing pack replaces it whole and leaves nothing else in the folder', async (t) => {
  const { cells: ds } = await ready;
  if (!ds) return t.skip('../shared/data/pbc is not here');
  const packs = path.join(dir, 'packs');
  const out = path.join(packs, 'ds.hpk');
  for (const size of ['32', '64']) {
    const outcome = await hemato('pack', ds, '--out', out, '--size', size, '--field', 'none', '--threads', '1', '--json');
    assert.equal(outcome.code, 0, outcome.stderr);
    assert.equal(JSON.parse(outcome.stdout).size, Number(size));
    assert.equal(JSON.parse(outcome.stdout).replaced, size === '64', 'the second pack says it replaced the first');
    assert.deepEqual(readdirSync(packs), ['ds.hpk']);
  }
  const folder = await hemato('pack', ds, '--out', packs);
  assert.equal(folder.code, 1);
  assert.match(folder.stderr, /is a folder/);
});

test('split and calibrate replace an existing output only once the new one is written, and say so; a folder there is refused before any work', async () => {
  const { ds } = await ready;
  const outputs = path.join(dir, 'replaced');
  const split = path.join(outputs, 'split.csv');
  const splitArgs = ['split', ds, '--classes', 'neutrophil,platelet', '--val', '0.5', '--out', split];
  const first = await hemato(...splitArgs, '--json');
  assert.equal(first.code, 0, first.stderr);
  assert.equal(JSON.parse(first.stdout).replaced, false);
  const again = await hemato(...splitArgs);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /split\.csv {2}sha256 \w+ {2}\(replaced the earlier split\)/);
  assert.deepEqual(readdirSync(outputs).sort(), ['split.csv', 'split.json'], 'no temporary left beside them');

  const labelled = path.join(dir, 'calibration');
  for (const [c, label] of PBC_CLASSES.entries()) for (let i = 0; i < 3; i++) await png(path.join(labelled, label, `${i}.png`), 25 * c + 5 * i);
  const out = path.join(outputs, 'calibrated.safetensors');
  writeFileSync(out, 'an earlier file');
  const calibrated = await hemato('calibrate', labelled, '--model', modelFile, '--out', out, '--json');
  assert.equal(calibrated.code, 0, calibrated.stderr);
  assert.equal(JSON.parse(calibrated.stdout).replaced, true);
  assert.equal((await readModelMetadata(out)).classes.length, 8);

  for (const args of [
    ['split', ds, '--classes', 'neutrophil,platelet', '--out', outputs],
    ['calibrate', labelled, '--model', modelFile, '--out', outputs],
  ]) {
    const outcome = await hemato(...args);
    assert.equal(outcome.code, 1, `hemato ${args[0]}: ${outcome.stderr}`);
    assert.match(outcome.stderr, /--out .*replaced is a folder; give a file name/);
    assert.doesNotMatch(outcome.stderr, /scan|scoring/, `hemato ${args[0]} refuses before its work`);
  }
});

test('a checkpoint temporary left by a killed write is removed when the run resumes', async () => {
  const runDir = path.join(dir, 'checkpoint');
  mkdirSync(runDir);
  const file = path.join(runDir, 'checkpoint.safetensors');
  E.manualSeed(1);
  const model = new ConvNeXt({ depths: [1, 1, 1, 1], dims: [8, 16, 24, 32], convMlp: true, numClasses: 2, dropPathRate: 0, inputSize: 32 });
  const optimizer = new E.AdamW(model.parameters());
  const loop = { epoch: 1, batch: 0, globalStep: 3, bestScore: 0.5, bestEpoch: 0, history: [] };
  try {
    await saveCheckpoint(file, { model, optimizer }, loop, {});
    const stale = `${file}.${deadPid()}.tmp`;
    writeFileSync(stale, '');
    assert.deepEqual((await loadCheckpoint(file, { model, optimizer })).loop, loop);
    assert.ok(!existsSync(stale));
    assert.deepEqual(readdirSync(runDir), ['checkpoint.safetensors']);
  } finally {
    model.dispose();
  }
});

/** The pid of a process that has ended. */
function deadPid(): number {
  return Number(execFileSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).toString());
}

test('preprocess gives inputs with the same base name their own sheets and says when it replaces one', async () => {
  const { ds } = await ready;
  assert.deepEqual(sheetNames(['a/cell.png', 'b/cell.jpg', 'c/Cell.png', 'cell-2.png']), [
    'cell.mpm.png',
    'cell-2.mpm.png',
    'Cell-3.mpm.png',
    'cell-2-2.mpm.png',
  ]);
  const out = path.join(dir, 'sheets');
  const inputs = [path.join(ds, 'neutrophil', '0.png'), path.join(ds, 'platelet', '0.png')];
  const first = await hemato('preprocess', ...inputs, '--out', out, '--size', '64', '--field', 'none', '--json');
  assert.equal(first.code, 0, first.stderr);
  const written = JSON.parse(first.stdout).written as { sheet: string; replaced: boolean }[];
  assert.deepEqual(
    written.map((w) => [path.basename(w.sheet), w.replaced]),
    [
      ['0.mpm.png', false],
      ['0-2.mpm.png', false],
    ],
  );
  assert.deepEqual(readdirSync(out).sort(), ['0-2.mpm.png', '0.mpm.png']);
  const again = await hemato('preprocess', inputs[0], '--out', out, '--size', '64', '--field', 'none');
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /0\.mpm\.png {2}\(replaced the earlier sheet\)/);
});

test('a reader that goes away (hemato … | head) ends the command quietly with 141, as SIGPIPE would, not with a stack trace', async () => {
  const child = spawn(process.execPath, ['bin/hemato.js', 'info', '--json', 'models/hemato-convnext-atto.safetensors'], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(timer);
  assert.equal(code, 141, stderr);
  assert.equal(stderr, '');
});

test('explain and preprocess replace a link at an output name itself, never the file it points to', async () => {
  const { ds } = await ready;
  const image = path.join(ds, 'neutrophil', '0.png');
  const victim = path.join(dir, 'victim.txt');
  writeFileSync(victim, 'keep me');
  const overlays = path.join(dir, 'linked-overlays');
  mkdirSync(overlays);
  symlinkSync(victim, path.join(overlays, '0.cam.png'));
  const explained = await hemato('explain', image, '--out', overlays, '--model', modelFile, '--overwrite');
  assert.equal(explained.code, 0, explained.stderr);
  const sheets = path.join(dir, 'linked-sheets');
  mkdirSync(sheets);
  symlinkSync(victim, path.join(sheets, '0.mpm.png'));
  const sheet = await hemato('preprocess', image, '--out', sheets, '--size', '64', '--field', 'none');
  assert.equal(sheet.code, 0, sheet.stderr);
  assert.match(sheet.stdout, /replaced the earlier sheet/);
  assert.equal(readFileSync(victim, 'utf8'), 'keep me');
  for (const written of [path.join(overlays, '0.cam.png'), path.join(sheets, '0.mpm.png')]) {
    assert.ok(lstatSync(written).isFile(), `${written} is a file of its own`);
    assert.equal((await sharp(written).metadata()).format, 'png');
  }
  // Without --overwrite a dangling link counts as a file there: refused before the model loads, its target never made.
  const dangling = path.join(dir, 'dangling-overlays');
  mkdirSync(dangling);
  symlinkSync(path.join(dir, 'made-through-a-link.png'), path.join(dangling, '0.cam.png'));
  const refused = await hemato('explain', image, '--out', dangling, '--model', modelFile);
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, /--out already holds .*0\.cam\.png; pass --overwrite/);
  assert.ok(!existsSync(path.join(dir, 'made-through-a-link.png')));
});

test('numbers out of range are usage errors that name their flag, before any work', async () => {
  const { ds } = await ready;
  const image = path.join(ds, 'neutrophil', '0.png');
  const cases: [string[], RegExp][] = [
    [['predict', image, '--batch-size', '4097'], /--batch-size.*expected an integer in 1\.\.4096/],
    [['predict', image, '--top-k', '0x3'], /--top-k.*expected a positive integer/],
    [['predict', image, '--field', '100000'], /--field.*expected a whole number of pixels in 8\.\.8000/],
    [['predict', image, '--threshold', ''], /--threshold.*expected a number in \[0, 1\]/],
    [['eval', ds, '--batch-size', '1e9'], /--batch-size.*expected a positive integer/],
    [['preprocess', image, '--out', path.join(dir, 'never-sheets'), '--size', '4096'], /--size must be at most 1024 px/],
    [['preprocess', image, '--out', path.join(dir, 'never-sheets'), '--field', '1000000000'], /geometry\.field must be an integer in 8\.\.8000/],
    [['calibrate', ds, '--threshold', '0.5', '--out', path.join(dir, 'never-cal', 'm.safetensors')], /--threshold does not apply: calibrate fits/],
    [['calibrate', ds, '--ood', '--out', path.join(dir, 'never-cal', 'm.safetensors')], /--ood needs --split/],
  ];
  for (const [args, message] of cases) {
    const outcome = await hemato(...args);
    assert.equal(outcome.code, 2, `${args.join(' ')}: ${outcome.stderr}`);
    assert.match(outcome.stderr, message, args.join(' '));
  }
  assert.ok(!existsSync(path.join(dir, 'never-sheets')) && !existsSync(path.join(dir, 'never-cal')));
});

test('an MPM settings file of the wrong shape is refused, naming the file and the setting', async () => {
  const { ds } = await ready;
  const image = path.join(ds, 'neutrophil', '0.png');
  const cases: [unknown, RegExp][] = [
    [null, /expected an object with any of illumination, colour, contrast, morphology, got null/],
    [[1, 2], /got an array/],
    [{ contrast: { tile: 4 } }, /unknown setting contrast\.tile; contrast has enabled, clipLimit, tiles/],
    [{ colour: { enabled: 'yes' } }, /colour\.enabled must be true or false/],
  ];
  for (const [config, message] of cases) {
    const file = path.join(dir, 'mpm.json');
    writeFileSync(file, JSON.stringify(config));
    const outcome = await hemato('preprocess', image, '--out', path.join(dir, 'mpm-sheets'), '--config', file);
    assert.equal(outcome.code, 2, outcome.stderr);
    assert.ok(outcome.stderr.includes(file), outcome.stderr);
    assert.match(outcome.stderr, message);
  }
});

test('--version is the installed hemato version, whatever npm says of the project around it', async () => {
  const { version } = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
  const outcome = await new Promise<Outcome>((resolve) =>
    execFile(process.execPath, ['bin/hemato.js', '-V'], { env: { ...process.env, npm_package_version: '7.7.7' } }, (error, stdout, stderr) =>
      resolve({ code: error ? 1 : 0, signal: null, stdout, stderr }),
    ),
  );
  assert.equal(outcome.stdout.trim(), version);
});
