// What the docs show importing resolves through the package's own exports.
import assert from 'node:assert/strict';
import { test } from 'node:test';

test('the package entry points export what the README and docs/models.md use', async () => {
  const main = await import('hemato');
  for (const name of ['loadClassifier', 'Classifier', 'createModel', 'importTimmCheckpoint', 'Module', 'loadModel', 'saveModel', 'decodeImage', 'engine'])
    assert.ok(name in main, name);
  const models = await import('hemato/models');
  for (const name of ['createModel', 'importTimmCheckpoint', 'saveModel', 'loadModel', 'ConvNeXt', 'DualPathNet']) assert.ok(name in models, name);
  const nn = await import('hemato/nn');
  assert.ok('Module' in nn && 'Linear' in nn);
  const engine = await import('hemato/engine');
  assert.equal(typeof engine.tensor, 'function');
});
