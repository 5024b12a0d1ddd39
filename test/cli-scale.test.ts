// The scale options from the command line: what each result says about scale, and the usage errors.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);
const cell = path.resolve('../shared/data/pbc/eosinophil/EO_101772.jpg');
const hemato = (...args: string[]) =>
  run(process.execPath, ['bin/hemato.js', ...args], { timeout: 60_000 }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => e,
  );

test('predict reports the scale used: estimated from red cells by default, given with --pixel-size', async () => {
  const estimated = JSON.parse((await hemato('predict', cell, '--json')).stdout).results[0];
  assert.equal(estimated.scale.source, 'red-cells');
  assert.ok(estimated.scale.um_per_px > 0.08 && estimated.scale.um_per_px < 0.12, JSON.stringify(estimated.scale));
  const given = JSON.parse((await hemato('predict', cell, '--pixel-size', '0.2', '--json')).stdout).results[0];
  assert.deepEqual([given.scale.source, given.scale.um_per_px], ['given', 0.2]);
  assert.ok(Math.abs(given.scale.factor - 0.2 / (7.5 / 72.81)) < 0.01, `factor ${given.scale.factor}`);
  assert.ok(!given.reasons.includes('scale-out-of-range'));
  // Four times PBC's pixel size: the cell must be enlarged beyond what the model can trust.
  const coarse = JSON.parse((await hemato('predict', cell, '--pixel-size', '0.4', '--json')).stdout).results[0];
  assert.ok(coarse.reasons.includes('scale-out-of-range') && coarse.uncertain, JSON.stringify(coarse));
  const csv = (await hemato('predict', cell, '--csv')).stdout.split('\n');
  assert.match(csv[0], /,reasons,scale_source,um_per_px,scale_factor,stain,model,model_sha256,hemato_version$/);
  assert.match(csv[1], /,red-cells,0\.\d+,1\.0000,recipe,hemato-convnext-atto\.safetensors,[0-9a-f]{64},\d+\.\d+\.\d+$/);
});

test('--pixel-size with --field, or out of range, is a usage error', async () => {
  const both = await hemato('predict', cell, '--pixel-size', '0.1', '--field', '360');
  assert.equal(both.code, 2);
  assert.match(both.stderr, /give --pixel-size or --field, not both/);
  const zero = await hemato('predict', cell, '--pixel-size', '0');
  assert.equal(zero.code, 2);
  assert.match(zero.stderr, /pixel size in µm from 0\.01 to 10/);
});
