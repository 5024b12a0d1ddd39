// One convention for a labelled set in every command that reads one: a folder of class folders as the argument, or
// --images DIR --labels CSV; and --part wherever a split is given.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { SHARED } from './helpers.js';

const work = mkdtempSync(path.join(tmpdir(), 'hemato-labelled-'));
const folders = path.join(work, 'folders');
const flat = path.join(work, 'flat');
const labels = path.join(work, 'labels.csv');
after(() => rmSync(work, { recursive: true, force: true }));

const rows: string[] = [];
mkdirSync(flat);
for (const cls of ['basophil', 'neutrophil']) {
  mkdirSync(path.join(folders, cls), { recursive: true });
  const names = readdirSync(path.join(SHARED, 'data/pbc', cls))
    .filter((f) => f.endsWith('.jpg') && !f.startsWith('.'))
    .sort()
    .slice(0, 6);
  for (const name of names) {
    copyFileSync(path.join(SHARED, 'data/pbc', cls, name), path.join(folders, cls, name));
    copyFileSync(path.join(SHARED, 'data/pbc', cls, name), path.join(flat, name));
    rows.push(`${name},${cls}`);
  }
}
writeFileSync(labels, `file,label\n${rows.join('\n')}\n`);

const hemato = (...args: string[]) => spawnSync(process.execPath, ['bin/hemato.js', ...args], { encoding: 'utf8', timeout: 120_000 });

test('scan and split read --images DIR --labels CSV as they read class folders, with the same result', () => {
  const byFolders = JSON.parse(hemato('scan', folders, '--classes', 'basophil,neutrophil', '--json').stdout);
  const byLabels = hemato('scan', '--images', flat, '--labels', labels, '--classes', 'basophil,neutrophil', '--json');
  assert.equal(byLabels.status, 0, byLabels.stderr);
  const { images, classes } = JSON.parse(byLabels.stdout);
  assert.deepEqual({ images, classes }, { images: 12, classes: { basophil: 6, neutrophil: 6 } });
  assert.deepEqual({ images: byFolders.images, classes: byFolders.classes }, { images, classes });
  const viaCsv = hemato('scan', flat, '--csv', labels, '--classes', 'basophil,neutrophil', '--json');
  assert.equal(viaCsv.status, 0, '--csv stays the earlier name of --labels');
  const split = hemato(
    'split',
    '--images',
    flat,
    '--labels',
    labels,
    '--classes',
    'basophil,neutrophil',
    '--val',
    '0.5',
    '--out',
    path.join(work, 'split.csv'),
  );
  assert.equal(split.status, 0, split.stderr);
});

test('a labelled set given twice, or half given, is a usage error that says what to give', () => {
  for (const [args, message] of [
    [['scan', folders, '--images', flat, '--labels', labels], /as the argument or as --images, not both/],
    [['scan', '--images', flat], /--images needs --labels/],
    [['scan'], /no data: give a folder of class folders, or --images DIR --labels CSV/],
    [['split', flat, '--csv', labels, '--labels', labels, '--out', path.join(work, 'x.csv')], /--labels or --csv/],
    [['calibrate', folders, '--part', 'test'], /--part needs --split/],
    [['split', '--images', flat, '--labels', labels, '--out', labels], /--out .*labels\.csv is the --labels file this command reads, and would replace it/],
    [['pack', '--images', flat, '--labels', labels, '--out', labels], /--out .*labels\.csv is the --labels file this command reads/],
  ] as [string[], RegExp][]) {
    const run = hemato(...args);
    assert.equal(run.status, 2, `${args.join(' ')}: ${run.stderr}`);
    assert.match(run.stderr, message);
  }
  assert.equal(readFileSync(labels, 'utf8'), `file,label\n${rows.join('\n')}\n`, 'the labels are left as they were');
});

test('split checks --seed, --val and --test as it reads them, before any folder is looked at', () => {
  const missing = path.join(work, 'not-there');
  for (const [args, message] of [
    [['--val', ''], /'--val <fraction>' argument '' is invalid\. expected a decimal fraction/],
    [['--val', '1e-1'], /'--val <fraction>' argument '1e-1' is invalid/],
    [['--test', '1'], /'--test <fraction>' argument '1' is invalid/],
    [['--seed', ''], /'--seed <n>' argument '' is invalid\. expected a whole number in 0\.\.4294967295/],
    [['--seed', '0x10'], /'--seed <n>' argument '0x10' is invalid/],
    [['--seed', '99999999999999999999'], /'--seed <n>' argument '99999999999999999999' is invalid/],
    [['--seed', '-1'], /'--seed <n>' argument '-1' is invalid/],
    [['--seed', '1.5'], /'--seed <n>' argument '1\.5' is invalid/],
    [['--val', '0.6', '--test', '0.5'], /sum to less than 1, got 0\.6 and 0\.5/],
    [['--test', '0.1', '--halve-val'], /leave the test fraction at 0/],
  ] as [string[], RegExp][]) {
    const run = hemato('split', missing, '--out', path.join(work, 'never.csv'), ...args);
    assert.equal(run.status, 2, `${args.join(' ')}: ${run.stderr}`);
    assert.match(run.stderr, message);
  }
  assert.ok(!existsSync(path.join(work, 'never.csv')));
});

test('split warns when a part it was asked to fill comes out empty, and says what it replaced', () => {
  const out = path.join(work, 'notes.csv');
  writeFileSync(out, 'some notes\n');
  const classes = ['--classes', 'basophil,neutrophil'];
  const all = hemato('split', folders, ...classes, '--val', '0.99', '--out', out);
  assert.equal(all.status, 0, all.stderr);
  assert.match(all.stderr, /^warning: the train part is empty: with --val 0\.99 no image is left for it; training needs it/m);
  assert.match(all.stdout, /notes\.csv {2}sha256 \w+ {2}\(replaced the earlier file\)/);
  const none = hemato('split', folders, ...classes, '--val', '0.05', '--out', out, '--json');
  assert.equal(none.status, 0, none.stderr);
  assert.match(none.stderr, /warning: the val part is empty: no class has enough images for --val 0\.05 to draw one/);
  const report = JSON.parse(none.stdout);
  assert.equal(report.replaced, true);
  assert.deepEqual(report.warnings, [/^warning: (.*)$/m.exec(none.stderr)?.[1]]);
  const both = hemato('split', folders, ...classes, '--val', '0.5', '--out', out);
  assert.doesNotMatch(both.stderr, /warning/);
  assert.match(both.stdout, /\(replaced the earlier split\)/);
});

test('a folder without class folders, a file given as the folder, or a missing one is named with what to give', () => {
  const image = path.join(flat, readdirSync(flat)[0]);
  const headerOnly = path.join(work, 'header-only.csv');
  writeFileSync(headerOnly, 'file,label\n');
  for (const [args, message] of [
    [['split', flat, '--out', path.join(work, 'none.csv')], /no labelled images found in .*flat \(skipped \d+\); give a folder with one folder per class/],
    [['scan', image], /cannot list .*: not a folder/],
    [['scan', path.join(image, 'x')], /cannot read .*: a part of the path is not a folder; give an existing data set folder/],
    [['scan', path.join(work, 'missing')], /cannot read .*missing: no such file or folder; give an existing data set folder/],
    [['scan', '--images', image, '--labels', labels], /images folder .*: a file, not a folder; give the folder the paths in .*labels\.csv are relative to/],
    [
      ['split', '--images', flat, '--labels', headerOnly, '--out', path.join(work, 'none.csv')],
      /header-only\.csv has a header but no rows; add one row per image/,
    ],
  ] as [string[], RegExp][]) {
    const run = hemato(...args);
    assert.equal(run.status, 1, `${args.join(' ')}: ${run.stderr}`);
    assert.match(run.stderr, message);
  }
  assert.ok(!existsSync(path.join(work, 'none.csv')), 'no empty split is written');
});
