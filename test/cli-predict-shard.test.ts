// predict --shard I/N: the --csv and --jsonl outputs of shards 1…N, concatenated, are one process's output; bad
// shard specifications are usage errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { saveUntrainedModel } from './helpers.js';
import { writeNoisyImageFolder } from './train-fixtures.js';
import { parseShard, shardOf } from '../src/cli/commands/predict.js';

const run = promisify(execFile);
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-shard-'));
const modelFile = path.join(dir, 'model.safetensors');
await saveUntrainedModel(modelFile);
// 16 images, a file that is not an image (an error in its shard's rows) and a FIFO (skipped, reported last).
const folder = await writeNoisyImageFolder(path.join(dir, 'cells'), ['neutrophil', 'platelet'], 9);
writeFileSync(path.join(folder, 'platelet', 'notes.png'), 'not an image');
execFileSync('mkfifo', [path.join(folder, 'platelet', 'pipe.png')]);

async function predict(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, '--batch-size', '4', ...args, folder]).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (error) => ({ code: error.code, stdout: error.stdout, stderr: error.stderr }),
  );
}

const DECIMAL = /-?\d+\.\d+(?:e-?\d+)?/g;

/**
 * The same text, with scores equal to 1e-6: a batch of another size may sum in another order (CPUs without
 * AVX-512 pick other GEMM kernels by shape), which moves the last digits of a float32 score.
 */
function assertSameOutput(actual: string, expected: string, what: string): void {
  assert.equal(actual.replace(DECIMAL, '#'), expected.replace(DECIMAL, '#'), what);
  const [a, e] = [actual.match(DECIMAL) ?? [], expected.match(DECIMAL) ?? []];
  a.forEach((value, i) => assert.ok(Math.abs(Number(value) - Number(e[i])) < 1e-6, `${what}: ${value} against ${e[i]}`));
}

test('shards are contiguous blocks, the first ones longer by one', () => {
  const items = Array.from({ length: 7 }, (_, i) => i);
  assert.deepEqual(
    [1, 2, 3].map((index) => shardOf(items, { index, count: 3 })),
    [
      [0, 1, 2],
      [3, 4],
      [5, 6],
    ],
  );
  assert.deepEqual(shardOf([1, 2], { index: 3, count: 3 }), []);
  assert.deepEqual(parseShard(' 2/4 '), { index: 2, count: 4 });
});

test('the CSV and JSONL outputs of three shards concatenate to the unsharded output', async () => {
  for (const format of ['--csv', '--jsonl']) {
    const whole = await predict(format);
    assert.equal(whole.code, 1, 'files that cannot be classified make the exit code 1');
    const shards = await Promise.all([1, 2, 3].map((i) => predict(format, '--shard', `${i}/3`)));
    // 17 files: shard 2 holds platelet/notes.png (the 9th); the last shard reports the skipped FIFO.
    assert.deepEqual(
      shards.map((s) => s.code),
      [0, 1, 1],
    );
    assertSameOutput(shards.map((s) => s.stdout).join(''), whole.stdout, format);
    const lines = whole.stdout.trim().split('\n');
    assert.equal(lines.length, (format === '--csv' ? 1 : 0) + 17 + 1, 'a header (CSV), a line per file and the skipped FIFO');
    assert.match(lines.at(-1)!, /pipe\.png.*skipped/);
    assert.match(shards[1].stderr, /shard 2\/3: 6 of 17 files/);
    assert.doesNotMatch(shards[0].stderr + shards[1].stderr, /pipe\.png/);
  }
});

test('--jsonl and --csv write the rows of each batch while the rest are still being classified', async () => {
  const inputs = Array.from({ length: 8 }, () => folder); // 136 files, one per batch
  const total = 8 * 17;
  for (const format of ['--jsonl', '--csv']) {
    const child = spawn(process.execPath, ['bin/hemato.js', 'predict', '--model', modelFile, '--batch-size', '1', format, ...inputs], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let [stdout, stderr] = ['', ''];
    const firstRow = new Promise<void>((resolve) =>
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk;
        if (stdout.split('\n').length > (format === '--csv' ? 2 : 1)) resolve();
      }),
    );
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
    const ended = new Promise((resolve) => child.on('close', resolve));
    await firstRow;
    child.kill('SIGSTOP'); // frozen: what it wrote so far is in the pipes
    await new Promise((resolve) => setTimeout(resolve, 300));
    child.kill('SIGKILL');
    await ended;
    assert.doesNotMatch(stderr, new RegExp(`classifying ${total}/${total}`), `${format}: rows came only after every image was classified`);
    const lines = stdout.split('\n').filter((line) => line !== '');
    const rows = format === '--csv' ? lines.slice(1) : lines;
    assert.ok(rows.length >= 1 && rows.length < total, `${format}: ${rows.length} rows`);
    const files = rows.map((row) => (format === '--csv' ? row.split(',')[0] : JSON.parse(row).file));
    assert.ok(files[0].startsWith(path.join(folder, 'neutrophil')) && files.every((file) => file.startsWith(folder)), files.join('\n'));
  }
});

test('bad shard specifications and output formats are usage errors', async () => {
  for (const shard of ['0/3', '4/3', '1/0', 'a/b', '2', '1/2/3']) {
    const outcome = await predict('--csv', '--shard', shard);
    assert.equal(outcome.code, 2, shard);
    assert.match(outcome.stderr, /--shard.*expected I\/N with 1 ≤ I ≤ N/, shard);
  }
  const both = await predict('--csv', '--jsonl');
  assert.equal(both.code, 2);
  assert.match(both.stderr, /choose one of --json, --csv and --jsonl/);
});
