// Test-time augmentation: the 8 flips and rotations, averaged.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import * as E from '../src/engine/index.js';
import { loadClassifier } from '../src/api/classifier.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { readImageFile, type RgbImage } from '../src/data/image.js';
import { saveModel } from '../src/models/io.js';
import { createModel } from '../src/models/index.js';

const dir = mkdtempSync(path.join(tmpdir(), 'hemato-tta-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = path.join(dir, 'model.safetensors');

/** A disc centred on the pixel grid: the same under every flip and quarter turn. */
function disc(size: number): RgbImage {
  const data = new Uint8Array(size * size * 3);
  const c = (size - 1) / 2;
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) {
      const r = Math.hypot(x - c, y - c);
      data.set(r < size / 4 ? [90, 40, 140] : r < size / 3 ? [200, 150, 160] : [250, 230, 205], (y * size + x) * 3);
    }
  return { width: size, height: size, data };
}

test('a symmetric image scores the same with and without TTA; an asymmetric one differs; batch and single agree', async () => {
  E.manualSeed(3);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  await saveModel(file, model, {
    classes: [...PBC_CLASSES],
    normalization: IMAGENET_NORMALIZATION,
    preprocessing: { geometry: { field: null, size: 64 }, mpm: null },
  });
  model.dispose();
  const plain = await loadClassifier(file, { device: 'cpu', precision: 'fp32' });
  const tta = await loadClassifier(file, { device: 'cpu', precision: 'fp32', tta: true });
  const symmetric = (await plain.prepare(disc(64))).image;
  const [a, b] = [plain.score([symmetric]).logits, tta.score([symmetric]).logits];
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) < 1e-4, `logit ${i}: ${a[i]} vs ${b[i]}`);
  const cell = (await plain.prepare(await readImageFile(path.resolve('../shared/data/pbc/neutrophil/BNE_101007.jpg')))).image;
  const [c, d] = [plain.score([cell]).logits, tta.score([cell]).logits];
  assert.ok(
    c.some((v, i) => Math.abs(v - d[i]) > 1e-4),
    "TTA changes an asymmetric image's logits",
  );
  const single = await tta.classify(cell, { topK: 8 });
  const [batch] = await tta.classifyBatch([disc(64), cell], { topK: 8 }).then((r) => r.slice(1));
  assert.ok(!('error' in batch));
  assert.deepEqual(
    single.predictions.map((p) => p.label),
    batch.predictions.map((p) => p.label),
  );
  single.predictions.forEach((p, i) => assert.ok(Math.abs(p.score - batch.predictions[i].score) < 1e-5));
  await assert.rejects(loadClassifier(file, { tta: 'yes' as unknown as boolean }), /tta must be true or false/);
  plain.dispose();
  tta.dispose();
});
