// `hemato info` prints a model file's card from its header, and every output names the model that made it
// (`model_info`): predict's JSON here, eval's in cli-eval.test.ts.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import * as E from '../src/engine/index.js';
import { BUNDLED_MODEL } from '../src/api/classifier.js';
import { modelInfo } from '../src/api/model-info.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { saveModel } from '../src/models/io.js';
import { createModel } from '../src/models/index.js';

const BIN = path.resolve('bin/hemato.js');
const VERSION = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-info-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const FEATURES = 320;
const PROVENANCE = { date: '2026-01-02T03:04:05.000Z', git_commit: 'abc123', validation: { accuracy: 0.97 } };
const RECIPE = {
  geometry: { field: 300, size: 64 },
  mpm: null,
  scale: { rbcDiameter: 73, rbcDiameterUm: 7.5, nucleusExtent: 114 },
  background: [250, 230, 200],
  stain: { haematoxylin: [0.9, 2.4], eosin: [0.4, 1.7], typical: [2.2, 1.3] },
};

/** A tiny calibrated model with a detector and provenance, and one with none of them. */
async function models(): Promise<{ full: string; bare: string }> {
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  const full = path.join(dir, 'full.safetensors');
  const bare = path.join(dir, 'bare.safetensors');
  const ood = {
    kind: 'mahalanobis' as const,
    pooling: 'stage-std' as const,
    threshold: 123.5,
    validationFlagged: 0.05,
    features: FEATURES,
    means: new Float32Array(8 * FEATURES),
    precision: new Float32Array(FEATURES * FEATURES),
  };
  await saveModel(
    full,
    model,
    {
      classes: [...PBC_CLASSES],
      normalization: IMAGENET_NORMALIZATION,
      temperature: 1.25,
      uncertaintyThreshold: 0.8,
      preprocessing: RECIPE,
      provenance: PROVENANCE,
      ood,
      featureScale: { pooling: 'stage-std', bias: -0.5, weights: new Array(FEATURES).fill(0.01) },
    },
    { dtype: 'float16' },
  );
  await saveModel(bare, model, {
    classes: [...PBC_CLASSES],
    normalization: IMAGENET_NORMALIZATION,
    preprocessing: { geometry: { field: null, size: 64 }, mpm: null },
  });
  model.dispose();
  return { full, bare };
}
const ready = models();

const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

function hemato(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
}

test('info --json prints the card: identity, input and preprocessing, calibration, detector, provenance', async () => {
  const { full } = await ready;
  // The header alone is read: no libtorch is needed.
  const run = hemato(['info', full, '--json'], { HEMATO_ADDON: '/nonexistent/hemato_native.node' });
  assert.equal(run.status, 0, run.stderr);
  const card = JSON.parse(run.stdout);
  assert.deepEqual(card.model_info, {
    name: 'full.safetensors',
    architecture: 'convnext_only_atto',
    sha256: sha256(full),
    hemato_version: VERSION,
    created: PROVENANCE.date,
  });
  assert.equal(card.file, full);
  assert.equal(card.bytes, statSync(full).size);
  assert.equal(card.dtype, 'float16');
  assert.deepEqual(card.classes, [...PBC_CLASSES]);
  assert.equal(card.input_size, 64);
  assert.deepEqual(card.preprocessing, { field: 300, size: 64, scale: RECIPE.scale, background: [RECIPE.background], stain: RECIPE.stain, mpm: null });
  assert.equal(card.temperature, 1.25);
  assert.equal(card.uncertainty_threshold, 0.8);
  assert.deepEqual(card.out_of_distribution, { kind: 'mahalanobis', pooling: 'stage-std', threshold: 123.5, validation_flagged: 0.05, features: FEATURES });
  assert.deepEqual(card.feature_scale, { pooling: 'stage-std', features: FEATURES });
  assert.deepEqual(card.provenance, PROVENANCE);
});

test('info prints the card for people, and says what a model lacks', async () => {
  const { full, bare } = await ready;
  const run = hemato(['info', full]);
  assert.equal(run.status, 0, run.stderr);
  assert.match(run.stdout, /^architecture +convnext_only_atto, float16 weights$/m);
  assert.match(run.stdout, /^input +64 px from a centred 300 px field$/m);
  assert.match(run.stdout, /^scale +.*red cell 73\.0 px \(7\.5 µm\), nucleus 114\.0 px$/m);
  assert.match(run.stdout, /^background +white-balanced to rgb\(250, 230, 200\)$/m);
  assert.match(
    run.stdout,
    /^stain +strength brought into the training range: haematoxylin 0\.90–2\.40, eosin 0\.40–1\.70; out-of-distribution images paler than 2\.20 \/ 1\.30 get a second look$/m,
  );
  assert.match(run.stdout, /^out-of-distribution +mahalanobis detector on stage-std features, threshold 123\.50 \(flags 5\.0 % of validation images\)$/m);
  assert.match(run.stdout, new RegExp(`^scale from features +estimated from ${FEATURES} stage-std features where nothing measurable sets it`, 'm'));
  assert.match(run.stdout, new RegExp(`^sha256 +${sha256(full)}$`, 'm'));
  assert.match(run.stdout, /^ {2}validation +\{"accuracy":0\.97\}$/m);

  const plain = hemato(['info', bare]);
  assert.equal(plain.status, 0, plain.stderr);
  for (const line of [
    /^input +64 px from the largest centred square$/m,
    /^scale +none/m,
    /^stain +none/m,
    /^temperature +none \(not calibrated\)$/m,
    /^out-of-distribution +no detector$/m,
    /^scale from features +not fitted$/m,
  ])
    assert.match(plain.stdout, line);
});

test('model_info takes the date from the provenance, else the file time', async () => {
  const { bare } = await ready;
  const when = new Date('2025-05-05T06:07:08.000Z');
  utimesSync(bare, when, when);
  assert.equal((await modelInfo(bare)).created, when.toISOString());
});

test('info without a model shows the bundled one; a file that is no model is refused', async () => {
  const bundled = hemato(['info', '--json']);
  assert.equal(bundled.status, 0, bundled.stderr);
  assert.equal(JSON.parse(bundled.stdout).model_info.name, path.basename(BUNDLED_MODEL));

  const notModel = path.join(dir, 'notes.safetensors');
  writeFileSync(notModel, 'not a model');
  const refused = hemato(['info', notModel]);
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, /notes\.safetensors is not a safetensors file/);
  const missing = hemato(['info', path.join(dir, 'missing.safetensors')]);
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /cannot read .*missing\.safetensors: no such file/);
});

test('predict --json names the model that made it', async () => {
  const { full } = await ready;
  const image = path.join(dir, 'cell.png');
  await sharp({ create: { width: 80, height: 80, channels: 3, background: { r: 200, g: 120, b: 160 } } })
    .png()
    .toFile(image);
  const run = hemato(['predict', '--model', full, '--json', image]);
  assert.equal(run.status, 0, run.stderr);
  const report = JSON.parse(run.stdout);
  assert.equal(report.model, 'convnext_only_atto');
  assert.deepEqual(report.model_info, {
    name: 'full.safetensors',
    architecture: 'convnext_only_atto',
    sha256: sha256(full),
    hemato_version: VERSION,
    created: PROVENANCE.date,
  });
});
