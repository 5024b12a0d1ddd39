// Memory stays bounded on huge images: a batch of 16 64-megapixel JPEGs is classified within 1 GiB of peak RSS.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import sharp from 'sharp';

const dir = mkdtempSync(path.join(tmpdir(), 'hemato-memory-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('16 JPEGs of 8000 × 8000 px in one batch: every one classified, peak RSS at most 1 GiB', { timeout: 240_000 }, async () => {
  // A smooth gradient: a small file that decodes to the full 192 MB.
  const side = 8000;
  const gradient = Buffer.from(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${side}" height="${side}"><defs><linearGradient id="g"><stop offset="0" stop-color="#f5e0c8"/><stop offset="1" stop-color="#b08aa8"/></linearGradient></defs><rect width="100%" height="100%" fill="url(#g)"/></svg>`,
  );
  const file = path.join(dir, 'huge.jpg');
  await sharp(gradient, { limitInputPixels: false }).jpeg({ quality: 80 }).toFile(file);
  const script = `
    import { loadClassifier } from './dist/src/api/classifier.js';
    const clf = await loadClassifier(undefined, { device: 'cpu' });
    const results = await clf.classifyBatch(Array(16).fill(${JSON.stringify(file)}), { batchSize: 16 });
    console.log(JSON.stringify({ ok: results.filter((r) => !('error' in r)).length, errors: results.filter((r) => 'error' in r).map((r) => r.error), maxRssKiB: process.resourceUsage().maxRSS }));`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { timeout: 200_000, maxBuffer: 1 << 20 });
  const outcome = JSON.parse(stdout.trim().split('\n').pop()!);
  assert.equal(outcome.ok, 16, JSON.stringify(outcome.errors));
  assert.ok(outcome.maxRssKiB <= 1024 * 1024, `peak RSS ${(outcome.maxRssKiB / 1024).toFixed(0)} MiB`);
});
