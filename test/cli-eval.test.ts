// `hemato eval` with a tiny model on a few PBC and BCCD images: one part of a split, a split refused as --labels, the
// exit status when files could not be evaluated, the model named in the output, the report and per-image answers.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import * as E from '../src/engine/index.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { saveModel } from '../src/models/io.js';
import { createModel } from '../src/models/index.js';
import { SHARED } from './helpers.js';
import type { ImagePrediction } from '../src/eval/evaluation.js';

const BIN = path.resolve('bin/hemato.js');
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-eval-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const modelFile = path.join(dir, 'tiny.safetensors');
const data = path.join(dir, 'data');
const splitFile = path.join(dir, 'split.csv');
const bccd = path.join(dir, 'bccd');
const CREATED = '2026-02-03T04:05:06.000Z';

// train: 2 neutrophils, 1 platelet and a row whose file is gone; val: one of each; test: 2 platelets.
const PARTS = { neutrophil: ['train', 'train', 'val'], platelet: ['train', 'val', 'test', 'test'] } as const;

async function fixtures(): Promise<void> {
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  await saveModel(modelFile, model, {
    classes: [...PBC_CLASSES],
    normalization: IMAGENET_NORMALIZATION,
    preprocessing: { geometry: { field: null, size: 64 }, mpm: null },
    provenance: { date: CREATED },
  });
  model.dispose();
  const rows = ['file,label,part'];
  for (const [label, parts] of Object.entries(PARTS)) {
    mkdirSync(path.join(data, label), { recursive: true });
    const names = readdirSync(path.join(SHARED, 'data/pbc', label))
      .filter((n) => n.endsWith('.jpg') && !n.startsWith('.'))
      .sort()
      .slice(0, parts.length);
    names.forEach((name, i) => {
      copyFileSync(path.join(SHARED, 'data/pbc', label, name), path.join(data, label, name));
      rows.push(`${label}/${name},${label},${parts[i]}`);
    });
  }
  rows.push('neutrophil/gone.jpg,neutrophil,train');
  writeFileSync(splitFile, `${rows.join('\n')}\n`);
  // Two images of each of two classes from another lab, named as BCCD names them.
  for (const label of ['eosinophil', 'neutrophil']) {
    mkdirSync(path.join(bccd, label), { recursive: true });
    for (const name of readdirSync(path.join(SHARED, 'data/external/bccd-wbc', label))
      .sort()
      .slice(0, 2))
      copyFileSync(path.join(SHARED, 'data/external/bccd-wbc', label, name), path.join(bccd, label, name));
  }
}
const ready = fixtures();

function hemato(args: string[]) {
  return spawnSync(process.execPath, [BIN, 'eval', '--model', modelFile, ...args], { encoding: 'utf8', timeout: 120_000 });
}

interface Report {
  n: number;
  per_class: Record<string, { support: number }>;
  skipped: { path: string; reason: string }[];
  model_info: Record<string, string>;
}
const supports = (report: Report) =>
  Object.fromEntries(
    Object.entries(report.per_class)
      .filter(([, m]) => m.support > 0)
      .map(([c, m]) => [c, m.support]),
  );

test('eval --split scores the validation part by default, and names the model', async () => {
  await ready;
  const run = hemato([data, '--split', splitFile, '--json']);
  assert.equal(run.status, 0, run.stderr);
  const report = JSON.parse(run.stdout) as Report;
  assert.equal(report.n, 2);
  assert.deepEqual(supports(report), { neutrophil: 1, platelet: 1 });
  assert.deepEqual(report.skipped, [], 'the training part, with its missing file, is not looked at');
  const version = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;
  const sha256 = createHash('sha256').update(readFileSync(modelFile)).digest('hex');
  assert.deepEqual(report.model_info, { name: 'tiny.safetensors', architecture: 'convnext_only_atto', sha256, hemato_version: version, created: CREATED });
});

test('eval --part picks the rows of one part, with paths relative to --images', async () => {
  await ready;
  const testPart = hemato(['--images', data, '--split', splitFile, '--part', 'test', '--json']);
  assert.equal(testPart.status, 0, testPart.stderr);
  assert.deepEqual(supports(JSON.parse(testPart.stdout) as Report), { platelet: 2 });

  // The training part's missing file is reported, after the results, and the run fails.
  const train = hemato(['--images', data, '--split', splitFile, '--part', 'train', '--json']);
  assert.equal(train.status, 1, train.stderr);
  const report = JSON.parse(train.stdout) as Report;
  assert.deepEqual(supports(report), { neutrophil: 2, platelet: 1 });
  assert.deepEqual(
    report.skipped.map((s) => s.path),
    ['neutrophil/gone.jpg'],
  );
  assert.match(train.stderr, /1 files could not be evaluated/);
});

test('eval exits 1 when a file could not be read, after printing its results', async () => {
  await ready;
  const folder = path.join(dir, 'folder');
  for (const label of Object.keys(PARTS)) mkdirSync(path.join(folder, label), { recursive: true });
  const image = readdirSync(path.join(data, 'platelet'))[0];
  copyFileSync(path.join(data, 'platelet', image), path.join(folder, 'platelet', image));
  writeFileSync(path.join(folder, 'neutrophil', 'empty.jpg'), '');
  const run = hemato([folder]);
  assert.equal(run.status, 1, run.stderr);
  assert.match(run.stdout, /^model tiny\.safetensors \(convnext_only_atto, sha256 [0-9a-f]{12}…, made 2026-02-03T04:05:06\.000Z\)$/m);
  assert.match(run.stdout, /^images 1 /m);
  assert.match(run.stdout, /accuracy/);
  assert.match(run.stdout, /skipped 1 files/);
  assert.match(run.stderr, /1 files could not be evaluated/);
});

test('a split given as --labels is refused, and --split and --part are checked before the model loads', async () => {
  await ready;
  // A model that does not exist: were it loaded first, that would be the error.
  const noModel = ['--model', path.join(dir, 'no-such-model.safetensors')];
  const asLabels = hemato(['--images', data, '--labels', splitFile, ...noModel]);
  assert.equal(asLabels.status, 2);
  assert.match(asLabels.stderr, /is a split \(it has a part column\).*--split .*split\.csv --part val/);
  for (const [args, message] of [
    [['--images', data, '--labels', splitFile, '--part', 'val'], /--part needs --split/],
    [['--images', data, '--labels', splitFile, '--split', splitFile], /--labels or --split, not both/],
    [['--split', splitFile], /--split needs the data folder/],
  ] as const) {
    const run = hemato([...args, ...noModel]);
    assert.equal(run.status, 2, run.stderr);
    assert.match(run.stderr, message);
  }
});

type ImageAnswer = ImagePrediction;

test('eval --report writes a readable report with its plots, free of machine paths; --per-image gives each answer', async () => {
  await ready;
  const out = path.join(dir, 'report-bccd');
  const run = hemato([bccd, '--report', out, '--json', '--per-image']);
  assert.equal(run.status, 0, run.stderr);
  const result = JSON.parse(run.stdout) as Report & {
    per_image: ImageAnswer[];
    uncertainty_threshold: number;
    uncertain_fraction: number;
    report_replaced: boolean;
  };
  assert.equal(result.per_image.length, 4);
  for (const answer of result.per_image) {
    assert.deepEqual(Object.keys(answer).sort(), ['file', 'label', 'predicted', 'probability', 'reasons', 'stain', 'uncertain']);
    assert.ok(['recipe', 'raised'].includes(answer.stain!), answer.stain);
    assert.match(answer.file, /^(eosinophil|neutrophil)\/BloodImage_\d+_\d+\.jpg$/, 'relative to the data set');
    assert.equal(answer.file.split('/')[0], answer.label);
    assert.ok(PBC_CLASSES.includes(answer.predicted));
    assert.ok(answer.probability >= 1 / 8 && answer.probability <= 1);
    assert.equal(answer.uncertain, answer.reasons.length > 0);
  }
  const errors = result.per_image.filter((a) => a.predicted !== a.label).length;
  assert.ok(errors > 0, 'an untrained model gets some wrong');

  const report = readFileSync(path.join(out, 'report.md'), 'utf8');
  for (const plot of ['confusion.svg', 'reliability.svg', 'errors.svg']) {
    assert.ok(report.includes(`](${plot})`), `report.md shows ${plot}`);
    const { info } = await sharp(readFileSync(path.join(out, plot)))
      .png()
      .toBuffer({ resolveWithObject: true });
    assert.ok(info.width > 100 && info.height > 100, `${plot} decodes`);
  }
  assert.equal(readFileSync(path.join(out, 'errors.svg'), 'utf8').match(/<image /g)?.length, errors, 'each error is pictured');
  assert.match(report, /^# Evaluation of tiny\.safetensors on bccd$/m);
  assert.match(report, /\| uncertainty threshold \| 0\.500 /, 'the threshold is stated');
  const raised = result.per_image.filter((a) => a.stain === 'raised').length;
  assert.ok(
    report.includes(`| answered from a second look, with a pale stain raised | ${((100 * raised) / 4).toFixed(2)} % |`),
    'the second-look share is stated',
  );
  const flagged = result.per_image.filter((a) => a.uncertain).length;
  assert.ok(report.includes(`| uncertain | ${(100 * result.uncertain_fraction).toFixed(2)} % (${flagged} of 4) |`), 'the uncertain rate is stated');
  for (const answer of result.per_image.filter((a) => a.predicted !== a.label)) assert.ok(report.includes(`| ${answer.file} |`), `${answer.file} is listed`);
  assert.ok(!report.includes(dir) && !report.includes(SHARED), 'no machine paths');
  assert.doesNotMatch(report, /(^|[\s(|])\/[A-Za-z]/m, 'no absolute paths');
  assert.doesNotMatch(report, /subtype/i, "BCCD's file names are not PBC's subtypes");

  const plain = hemato([bccd, '--per-image']);
  assert.equal(plain.status, 2);
  assert.match(plain.stderr, /--per-image needs --json/);

  // A second report into the same folder replaces the first, and says so.
  assert.equal(result.report_replaced, false);
  const again = hemato([bccd, '--report', out]);
  assert.equal(again.status, 0, again.stderr);
  assert.match(again.stdout, /^report: .*report\.md \(replaced the earlier report\)$/m);
  assert.deepEqual(readdirSync(out).sort(), ['confusion.svg', 'errors.svg', 'reliability.svg', 'report.md'], 'no temporary left');
});

test("eval --report on PBC's file names adds the table of errors by subtype", async () => {
  await ready;
  const out = path.join(dir, 'report-pbc');
  const run = hemato([data, '--split', splitFile, '--part', 'test', '--report', out]);
  assert.equal(run.status, 0, run.stderr);
  const report = readFileSync(path.join(out, 'report.md'), 'utf8');
  assert.match(report, /^2 labelled images of data \(the test part of split\.csv\)\.$/m);
  assert.match(report, /## Errors by file-name subtype[\s\S]*\| PLATELET \| 2 \|/);
});
