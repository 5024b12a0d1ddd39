// Run settings: defaults < config file < explicit flags, one schema for all of them, errors that name their source.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as E from '../src/engine/index.js';
import { DEFAULT_AUGMENT } from '../src/data/augment.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { createModel } from '../src/models/index.js';
import { saveModel } from '../src/models/io.js';
import { DEFAULT_RUN, RunConfigError, resolveRunSettings, settingsChanges } from '../src/train/config.js';

const run = promisify(execFile);
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-config-'));
const data = { data: { source: { dir: 'cells' } } };
const resolve = (...layers: unknown[]) => resolveRunSettings(layers.map((settings, i) => ({ source: `layer${i}.json`, settings })));

function configFile(name: string, settings: unknown): string {
  const file = path.join(dir, name);
  writeFileSync(file, JSON.stringify(settings));
  return file;
}

async function hemato(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(process.execPath, ['bin/hemato.js', ...args], { timeout: 60_000 }).then(
    (r) => ({ code: 0, ...r }),
    (e) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

test('layers merge over the defaults in order, nested settings key by key', () => {
  const settings = resolve(
    { ...data, batchSize: 8, lr: 0.01, augment: { hue: 0.05 }, data: { source: { dir: 'cells' }, mpm: { contrast: { clipLimit: 3 } } } },
    { batchSize: 4, augment: { crop: { scale: [0.5, 1], ratio: [0.8, 1.25] } }, data: { mpm: true } },
  );
  assert.equal(settings.batchSize, 4);
  assert.equal(settings.lr, 0.01);
  assert.equal(settings.epochs, DEFAULT_RUN.epochs);
  assert.deepEqual(settings.augment, { ...DEFAULT_AUGMENT, hue: 0.05, crop: { scale: [0.5, 1], ratio: [0.8, 1.25] } });
  assert.deepEqual(settings.data.mpm, { contrast: { clipLimit: 3 } }, "a bare --mpm keeps the file's MPM settings");
  assert.equal(settings.data.split, null);
  assert.deepEqual(DEFAULT_RUN.augment, DEFAULT_AUGMENT, 'the defaults are not modified');
});

test('unknown settings are errors naming the source and the nearest known key', () => {
  assert.throws(() => resolve({ ...data, bachSize: 8 }), /layer0\.json: unknown setting 'bachSize'; did you mean 'batchSize'\?/);
  assert.throws(
    () => resolve({ ...data, warmup_epochs: 3 }),
    (e: Error) => e instanceof RunConfigError && /layer0\.json: unknown setting 'warmup_epochs'; known ones: .*warmupFraction/.test(e.message),
  );
  assert.throws(
    () => resolve({ data: { source: { dir: 'cells' }, mpm: { contrast: { clipLimt: 3 } } } }),
    /unknown setting 'data\.mpm\.contrast\.clipLimt'; did you mean 'clipLimit'\?/,
  );
  assert.throws(() => resolve(data, { augment: { flip: true } }), /layer1\.json: unknown setting 'augment\.flip'/);
});

test("settings named like Object's own properties are unknown settings, not a crash", () => {
  for (const [text, key] of [
    ['{"constructor": {}}', 'constructor'],
    ['{"__proto__": {"epochs": 2}}', '__proto__'],
    ['{"toString": 1}', 'toString'],
    ['{"augment": {"toString": 1}}', 'augment\\.toString'],
    ['{"data": {"hasOwnProperty": true}}', 'data\\.hasOwnProperty'],
  ]) {
    assert.throws(
      () => resolve(data, JSON.parse(text)),
      (e: Error) => e instanceof RunConfigError && new RegExp(`layer1\\.json: unknown setting '${key}'`).test(e.message),
      text,
    );
  }
});

test('types and ranges are checked', () => {
  for (const batchSize of [0, -1, 0.5, 'abc', null, 1e9])
    assert.throws(() => resolve({ ...data, batchSize }), /batchSize must be an integer from 1 to 4096/, String(batchSize));
  assert.throws(() => resolve({ ...data, evalBatchSize: 0 }), /evalBatchSize must be an integer from 1/);
  assert.throws(() => resolve(data, { batchSize: Number.NaN }), /layer1\.json: batchSize must be an integer/);
  assert.throws(() => resolve({ ...data, lr: 'abc' }), /lr must be a finite number above 0, not "abc"/);
  assert.throws(() => resolve({ ...data, lr: 0 }), /lr must be a finite number above 0/);
  assert.throws(() => resolve({ ...data, epochs: 2.5 }), /epochs must be an integer from 1/);
  assert.throws(() => resolve({ ...data, inputSize: 100 }), /inputSize must be a multiple of 32/);
  assert.throws(() => resolve({ ...data, precision: 'fp16' }), /precision must be one of "auto", "fp32", "bf16"/);
  assert.throws(() => resolve({ ...data, model: 'resnet' }), /model must be one of/);
  assert.throws(() => resolve({ ...data, augment: { crop: { scale: [1, 0.5], ratio: [1, 1] } } }), /augment\.crop\.scale must be \[min, max\]/);
  assert.throws(() => resolve({ ...data, augment: { crop: { scale: [0.5, 1] } } }), /augment\.crop needs 'ratio'/);
  assert.deepEqual(resolve({ ...data, augment: { stain: [0.45, 1.15] } }).augment.stain, [0.45, 1.15]);
  assert.equal(resolve({ ...data, augment: { stain: 0.4 } }).augment.stain, 0.4);
  assert.throws(() => resolve({ ...data, augment: { stain: [1.2, 0.8] } }), /augment\.stain must be a number from 0 to 1, or \[min, max\] stain factors/);
  assert.throws(() => resolve({ ...data, augment: { stain: 1.5 } }), /augment\.stain must be/);
  assert.throws(() => resolve({ ...data, minLr: 0.1 }), /minLr \(0\.1\) is above lr/);
  assert.throws(() => resolve({ data: { source: { dir: 'cells' }, mpm: { contrast: { tiles: 0 } } } }), /data\.mpm: .*contrast\.tiles/);
  assert.throws(() => resolve({ data: { source: { folder: 'cells' } } }), /data\.source must be/);
  assert.throws(() => resolve({}), /no data/);
  assert.throws(() => resolve([1]), /expected a JSON object of settings/);
});

test('every config shipped in configs/ passes the schema', () => {
  const files = readdirSync('configs').filter((f) => f.endsWith('.json'));
  assert.ok(files.length > 0);
  for (const file of files) {
    const settings = JSON.parse(readFileSync(path.join('configs', file), 'utf8'));
    assert.doesNotThrow(() => resolve(data, settings), file);
  }
});

test('settingsChanges lists what differs, a data source as one setting', () => {
  const before = resolve(data);
  const after = resolve(data, { epochs: 40, augment: { hue: 0.1 }, data: { source: { pack: 'cells.pack' } } });
  assert.deepEqual(
    settingsChanges(before, after).map((c) => c.key),
    ['epochs', 'augment.hue', 'data.source'],
  );
  assert.deepEqual(settingsChanges(before, resolve(data)), []);
});

test("hemato train: a config file beats the flags' defaults, and explicit flags beat the file", async () => {
  const file = configFile('run.json', { precision: 'bf16', batchSize: 8, epochs: 3, device: 'cpu', augment: { hue: 0.05 } });
  const fromFile = JSON.parse((await hemato('train', 'cells', '--config', file, '--print-config')).stdout);
  assert.equal(fromFile.precision, 'bf16', "--precision's default must not replace the file's");
  assert.equal(fromFile.batchSize, 8);
  assert.equal(fromFile.augment.hue, 0.05);
  assert.equal(fromFile.augment.hflip, true);
  assert.deepEqual(fromFile.data.source, { dir: 'cells' });
  const flagged = JSON.parse(
    (await hemato('train', 'cells', '--config', file, '--precision', 'fp32', '--batch-size', '4', '--no-augment', '--print-config')).stdout,
  );
  assert.equal(flagged.precision, 'fp32');
  assert.equal(flagged.batchSize, 4);
  assert.equal(flagged.epochs, 3);
  assert.equal(flagged.augment.hflip, false);
  assert.equal(flagged.augment.hue, 0);
});

test('hemato train: a bad config file is a usage error that names the file and the key', async () => {
  const typo = configFile('typo.json', { epochs: 3, lerning_rate: 0.1 });
  const outcome = await hemato('train', 'cells', '--config', typo, '--print-config');
  assert.equal(outcome.code, 2);
  assert.match(outcome.stderr, new RegExp(`${typo.replace(/[.\\]/g, '\\$&')}: unknown setting 'lerning_rate'`));
  const range = await hemato('train', 'cells', '--config', configFile('range.json', { batchSize: 0 }), '--print-config');
  assert.equal(range.code, 2);
  assert.match(range.stderr, /batchSize must be an integer from 1 to 4096, not 0/);
  const flag = await hemato('train', 'cells', '--workers', '-1', '--print-config');
  assert.equal(flag.code, 2);
  assert.match(flag.stderr, /--workers must be an integer in 0\.\.\d+ \(up to 4 × the \d+ cores\)/);
  const fromConfig = await hemato('train', 'cells', '--config', configFile('workers.json', { workers: 100_000 }), '--print-config');
  assert.equal(fromConfig.code, 2);
  assert.match(fromConfig.stderr, /workers must be an integer from 0 to \d+/);
});

test('hemato train: --pretrained takes one file or one per path, and --drop-path sets the stochastic depth', async () => {
  const print = async (...args: string[]) => hemato('train', 'cells', ...args, '--print-config');
  const single = await print('--pretrained', 'atto.safetensors', '--drop-path', '0.2');
  assert.equal(single.code, 0, single.stderr);
  assert.equal(JSON.parse(single.stdout).pretrained, 'atto.safetensors');
  assert.equal(JSON.parse(single.stdout).dropPathRate, 0.2);
  const paths = JSON.parse((await print('--pretrained', 'convnext=c.safetensors', '--pretrained', 'swin=s.safetensors')).stdout);
  assert.deepEqual(paths.pretrained, { convnext: 'c.safetensors', swin: 's.safetensors' });
  for (const [args, message] of [
    [['--pretrained', 'a.safetensors', '--pretrained', 'b.safetensors'], /takes one file, or one per path/],
    [['--pretrained', 'convnext=a.safetensors', '--pretrained', 'b.safetensors'], /name the path of each/],
    [['--pretrained', 'swin=a.safetensors', '--pretrained', 'swin=b.safetensors'], /the swin path is given twice/],
    [['--drop-path', '1.5'], /--drop-path/],
  ] as const) {
    const outcome = await print(...args);
    assert.equal(outcome.code, 2, `${args.join(' ')}: ${outcome.stderr}`);
    assert.match(outcome.stderr, message);
  }
  assert.equal(JSON.parse((await print()).stdout).pretrained, null);
});

test('hemato train: usage errors are found before the run folder is made, and leave nothing behind', async () => {
  const other = path.join(dir, 'femto.safetensors');
  const femto = createModel('convnext_femto', { numClasses: 2, inputSize: 32 });
  await saveModel(other, femto, { classes: ['a', 'b'], normalization: IMAGENET_NORMALIZATION });
  femto.dispose();
  const cases: [string[], RegExp][] = [
    [['--lr', '-1'], /lr must be a finite number above 0, not -1/],
    [['--config', configFile('proto.json', { constructor: {} })], /unknown setting 'constructor'/],
    [['--config', configFile('augment-proto.json', { augment: { toString: 1 } })], /unknown setting 'augment\.toString'/],
    [['--resume'], /--resume: no checkpoint at .*; start without --resume/],
    [['--nproc-per-node', '1000'], /--nproc-per-node must be an integer in 1\.\.\d+ \(up to 4 × the \d+ cores\)/],
    [
      ['--arch', 'convnext_atto', '--init', other],
      /--init .*femto\.safetensors is a convnext_femto model; this run trains convnext_atto: pass --arch convnext_femto/,
    ],
  ];
  if (!E.cudaAvailable()) cases.push([['--device', 'cuda'], /sees no CUDA device.*--device cpu/]);
  for (const [i, [args, message]] of cases.entries()) {
    const out = path.join(dir, `never-${i}`, 'a', 'b');
    const outcome = await hemato('train', path.join(dir, 'no-cells'), ...args, '--out', out);
    assert.equal(outcome.code, 2, `${args.join(' ')}: ${outcome.stderr}`);
    assert.match(outcome.stderr, message);
    assert.ok(!existsSync(path.join(dir, `never-${i}`)), `${args.join(' ')} made its --out folder`);
  }
  // A pack fixed its split when it was made: a --split beside it is refused from the settings alone.
  const packed = await hemato('train', '--pack', path.join(dir, 'cells.pack'), '--split', 'split.csv', '--out', path.join(dir, 'never-pack', 'a'));
  assert.equal(packed.code, 2, packed.stderr);
  assert.match(packed.stderr, /cells\.pack is a pack, and its split was fixed when it was made/);
  assert.ok(!existsSync(path.join(dir, 'never-pack')));
});
