// The registry's names (timm's scheme, with the earlier names as aliases), resetClassifier, the bundled model as
// timm's convnext_atto, and `hemato train --arch`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as E from '../src/engine/index.js';
import { BUNDLED_MODEL } from '../src/api/classifier.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { ConvNeXt, createModel, importTimmStateDict, listModels, loadModel, modelAliases, resolveModelName, saveModel } from '../src/models/index.js';
import { SHARED, maxAbsDiff } from './helpers.js';

const dir = mkdtempSync(path.join(tmpdir(), 'hemato-registry-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

const run = promisify(execFile);
async function hemato(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(process.execPath, ['bin/hemato.js', ...args], { timeout: 120_000 }).then(
    (r) => ({ code: 0, ...r }),
    (e) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

const ALIASES = {
  'convnext-only': 'convnext_only_atto',
  'dualpath-atto': 'dualpath_atto',
  'dualpath-concat': 'dualpath_concat_atto',
  'dualpath-tiny': 'dualpath_tiny',
  'swin-only': 'swin_only_atto',
};

test('the registry lists snake_case names, family first, and the earlier names apart, as aliases', () => {
  const names = listModels();
  assert.deepEqual(names, [...names].sort());
  for (const name of names) assert.match(name, /^(convnext|swin|dualpath)_[a-z0-9_]+$/);
  for (const name of ['dualpath_atto', 'dualpath_tiny', 'dualpath_concat_atto', 'convnext_only_atto', 'swin_only_atto', 'swin_atto', 'convnext_atto']) {
    assert.ok(names.includes(name), name);
  }
  assert.deepEqual(modelAliases(), ALIASES);
  assert.deepEqual(listModels({ aliases: true }), [...names, ...Object.keys(ALIASES)]);
  for (const alias of Object.keys(ALIASES)) assert.ok(!names.includes(alias));
});

test('an earlier name builds the same network as its canonical name, and the model records the canonical one', () => {
  for (const [alias, canonical] of Object.entries(ALIASES)) {
    E.manualSeed(1);
    const old = createModel(alias, { numClasses: 3, inputSize: 64 });
    E.manualSeed(1);
    const current = createModel(canonical, { numClasses: 3, inputSize: 64 });
    assert.equal(old.spec!.architecture, canonical);
    assert.deepEqual(old.spec, current.spec);
    const [before, now] = [[...old.stateDict()], [...current.stateDict()]];
    assert.deepEqual(
      before.map(([key, t]) => [key, t.shape]),
      now.map(([key, t]) => [key, t.shape]),
      alias,
    );
    // Drawn from the same seed in the same order: the stem's and a middle layer's weights agree.
    for (const i of [0, Math.floor(before.length / 2)]) assert.deepEqual(before[i][1].toArray(), now[i][1].toArray(), `${alias}: ${before[i][0]}`);
    old.dispose();
    current.dispose();
  }
});

test("the ablations' earlier names take the scale option; the current names carry the scale and refuse it", () => {
  assert.equal(resolveModelName('dualpath-concat', { scale: 'tiny' }), 'dualpath_concat_tiny');
  assert.equal(resolveModelName('convnext-only', { scale: 'tiny' }), 'convnext_only_tiny');
  assert.equal(resolveModelName('swin-only', { scale: 'atto' }), 'swin_only_atto');
  assert.equal(resolveModelName('dualpath-atto', { scale: 'tiny' }), 'dualpath_atto', 'the full networks never took the scale');
  const model = createModel('dualpath-concat', { numClasses: 3, inputSize: 64, scale: 'tiny' });
  assert.equal(model.head!.inFeatures, 768 + 768);
  assert.deepEqual(model.spec, { architecture: 'dualpath_concat_tiny', options: { numClasses: 3, inputSize: 64, dropRate: 0, dropPathRate: 0 } });
  model.dispose();
  assert.throws(() => createModel('dualpath_concat_atto', { numClasses: 3, scale: 'tiny' }), /scale option goes with the earlier ablation names only/);
});

test('an unknown name is an error that lists the names and the aliases', () => {
  assert.throws(
    () => createModel('convnext_huge', { numClasses: 2 }),
    (error: Error) =>
      /^unknown model 'convnext_huge'; choose one of: convnext_atto, /.test(error.message) &&
      error.message.includes('swin_tiny_patch4_window7_224') &&
      error.message.includes('earlier names, still accepted: convnext-only → convnext_only_atto, dualpath-atto → dualpath_atto'),
  );
});

test('model files keep the architecture they recorded; new files record the canonical name', async () => {
  // A file saved under the earlier name, as models made before the canonical names were.
  const earlier = path.join(dir, 'earlier-name.safetensors');
  const convnext = createModel('convnext_only_atto', { numClasses: 2, inputSize: 64 });
  await saveModel(earlier, convnext, { classes: ['a', 'b'], normalization: IMAGENET_NORMALIZATION });
  convnext.dispose();
  const saved0 = await E.loadSafetensors(earlier);
  const info = JSON.parse(saved0.metadata.hemato);
  await E.saveSafetensors(earlier, saved0.tensors, { hemato: JSON.stringify({ ...info, architecture: 'convnext-only' }) });
  E.dispose([...saved0.tensors.values()]);
  const { model: old, metadata } = await loadModel(earlier);
  assert.equal(metadata.architecture, 'convnext-only');
  assert.equal(old.spec!.architecture, 'convnext_only_atto');
  old.dispose();
  const file = path.join(dir, 'alias.safetensors');
  E.manualSeed(0);
  const model = createModel('swin-only', { numClasses: 2, inputSize: 64 });
  const saved = await saveModel(file, model, { classes: ['a', 'b'], normalization: IMAGENET_NORMALIZATION });
  assert.equal(saved.architecture, 'swin_only_atto');
  const loaded = await loadModel(file);
  assert.equal(loaded.metadata.architecture, 'swin_only_atto');
  const x = E.randn([1, 3, 64, 64], { seed: 2 });
  const [a, b] = E.noGrad(() => [model.eval().forward(x), loaded.model.forward(x)]);
  assert.deepEqual(b.toArray(), a.toArray());
  E.dispose([x, a, b]);
  model.dispose();
  loaded.model.dispose();
});

test('resetClassifier puts a fresh classifier for another class count in place, and the rest keeps its weights', async () => {
  E.manualSeed(0);
  const model = createModel('convnext_only_atto', { numClasses: 8, inputSize: 64 });
  assert.deepEqual(model.classifierKeys(), ['head.fc.weight', 'head.fc.bias']);
  const keys = [...model.stateDict().keys()];
  const before = new Map([...model.stateDict()].map(([key, t]) => [key, t.toArray()]));
  const live = E.liveTensors();
  model.resetClassifier(3);
  assert.equal(E.liveTensors(), live, 'the old classifier is freed');
  assert.equal(model.numClasses, 3);
  assert.equal(model.spec!.options.numClasses, 3, 'saveModel records the new class count');
  assert.deepEqual([...model.stateDict().keys()], keys, 'the keys keep their order');
  assert.deepEqual(model.head!.fc.weight.shape, [3, 320]);
  assert.deepEqual(model.head!.fc.bias!.toArray(), [0, 0, 0]);
  for (const [key, t] of model.stateDict()) if (!key.startsWith('head.fc.')) assert.deepEqual(t.toArray(), before.get(key), key);
  const x = E.randn([2, 3, 64, 64], { seed: 1 });
  const logits = E.noGrad(() => model.eval().forward(x));
  assert.deepEqual(logits.shape, [2, 3]);
  const file = path.join(dir, 'reset.safetensors');
  await saveModel(file, model, { classes: ['a', 'b', 'c'], normalization: IMAGENET_NORMALIZATION });
  const loaded = await loadModel(file);
  assert.deepEqual(E.noGrad(() => loaded.model.forward(x)).toArray(), logits.toArray());
  E.dispose([x, logits]);
  loaded.model.dispose();
  assert.throws(() => model.resetClassifier(0), /at least one class/);
  const backbone = (model as unknown as { convnext: ConvNeXt }).convnext;
  assert.deepEqual(backbone.classifierKeys(), []);
  assert.throws(() => backbone.resetClassifier(2), /backbone .* no classifier to reset/);
  model.dispose();
});

test("convnext_atto_ols has timm's overlapping stem: two 3×3 convs of stride 2, the first half as wide, then the norm", () => {
  const patch = createModel('convnext_atto', { numClasses: 8, inputSize: 128 });
  const ols = createModel('convnext_atto_ols', { numClasses: 8, inputSize: 128 });
  const stemShapes = [...ols.stateDict()].filter(([key]) => key.startsWith('stem.')).map(([key, t]) => [key, t.shape]);
  // timm: mid = make_divisible(40 / 2) = 24; stem.0 and stem.1 are the convs, stem.2 the LayerNorm2d.
  assert.deepEqual(stemShapes, [
    ['stem.0.weight', [24, 3, 3, 3]],
    ['stem.0.bias', [24]],
    ['stem.1.weight', [40, 24, 3, 3]],
    ['stem.1.bias', [40]],
    ['stem.2.weight', [40]],
    ['stem.2.bias', [40]],
  ]);
  const rest = (model: typeof ols) => [...model.stateDict()].filter(([key]) => !key.startsWith('stem.')).map(([key, t]) => [key, t.shape]);
  assert.deepEqual(rest(ols), rest(patch), 'only the stem differs');
  const x = E.randn([2, 3, 128, 128], { seed: 3 });
  const [a, b] = E.noGrad(() => [ols.eval().forwardFeatures(x), patch.eval().forwardFeatures(x)]);
  assert.deepEqual(a.shape, b.shape, 'the same stride 32');
  assert.ok(a.toArray().every(Number.isFinite));
  E.dispose([x, a, b]);
  patch.dispose();
  ols.dispose();
});

test("the bundled model is timm's convnext_atto under the prefix convnext.: the same keys, shapes and logits", async () => {
  const fixtures = JSON.parse(await readFile(path.join(SHARED, 'fixtures/timm/timm_fixtures.json'), 'utf8'));
  const timm = Object.entries(fixtures.state_dict_shapes.convnext_atto as Record<string, number[]>).map(([key, shape]) =>
    // The fixture is the ImageNet checkpoint's: 1000 classes where the bundled model has 8.
    key.startsWith('head.fc.') ? [key, [8, ...shape.slice(1)]] : [key, shape],
  );
  const { model: bundled } = await loadModel(BUNDLED_MODEL);
  const stripped = new Map([...bundled.stateDict()].map(([key, t]) => [key.replace(/^convnext\./, ''), t]));
  assert.deepEqual(
    [...stripped].map(([key, t]) => [key, t.shape]),
    timm,
  );
  const plain = createModel('convnext_atto', { numClasses: 8, inputSize: 128 });
  const report = importTimmStateDict(plain, stripped);
  assert.equal(report.loaded.length, timm.length);
  assert.deepEqual(report.skipped, []);
  assert.equal(report.headReinitialized, false);
  const x = E.randn([2, 3, 128, 128], { seed: 7 });
  const [a, b] = E.noGrad(() => [bundled.forward(x), plain.eval().forward(x)]);
  assert.ok(maxAbsDiff(a.toArray(), b.toArray()) < 1e-4, 'the same function');
  E.dispose([x, a, b]);
  bundled.dispose();
  plain.dispose();
});

test('hemato train --arch names the architecture; --model and a config file\'s "arch" are other names for it', async () => {
  const help = await hemato('train', '--help');
  assert.equal(help.code, 0);
  const flat = help.stdout.replace(/\s+/g, ' ');
  assert.match(flat, /--arch <name> the architecture \(default dualpath_atto\): convnext_atto, /);
  assert.match(flat, /earlier names still work: convnext-only, dualpath-atto, dualpath-concat, dualpath-tiny, swin-only/);
  assert.match(flat, /--model <name> another name for --arch, .*elsewhere --model is a model file/);
  const config = async (...args: string[]) => {
    const outcome = await hemato('train', 'cells', ...args, '--print-config');
    assert.equal(outcome.code, 0, outcome.stderr);
    return JSON.parse(outcome.stdout).model;
  };
  assert.equal(await config(), 'dualpath_atto');
  assert.equal(await config('--arch', 'swin_only_atto'), 'swin_only_atto');
  assert.equal(await config('--model', 'convnext-only'), 'convnext_only_atto', 'an earlier name is recorded as the canonical one');
  const file = path.join(dir, 'arch.json');
  writeFileSync(file, JSON.stringify({ arch: 'dualpath-concat' }));
  assert.equal(await config('--config', file), 'dualpath_concat_atto');
  assert.equal(await config('--config', file, '--arch', 'convnext_atto'), 'convnext_atto', 'the command line beats the file');
  const unknown = await hemato('train', 'cells', '--arch', 'resnet50', '--print-config');
  assert.equal(unknown.code, 2);
  assert.match(
    unknown.stderr,
    /arch must be one of convnext_atto, .*swin_tiny_patch4_window7_224.* \(earlier names, still accepted: convnext-only → convnext_only_atto, /,
  );
  const both = await hemato('train', 'cells', '--arch', 'convnext_atto', '--model', 'swin_atto', '--print-config');
  assert.equal(both.code, 2);
  assert.match(both.stderr, /arch "convnext_atto" and model "swin_atto" are one setting; give one of them/);
});

test('hemato train --init from a model with other classes starts from its weights with a fresh classifier', async () => {
  const start = path.join(dir, 'start.safetensors');
  // Another seed than the run's, so that weights from --init differ from those the run would draw.
  E.manualSeed(123);
  const first = createModel('convnext_only_atto', { numClasses: 3, inputSize: 64 });
  await saveModel(start, first, { classes: ['blast', 'smudge', 'other'], normalization: IMAGENET_NORMALIZATION });
  first.dispose();
  const data = path.join(dir, 'cells');
  for (const label of ['basophil', 'platelet']) {
    mkdirSync(path.join(data, label), { recursive: true });
    const source = path.join(SHARED, 'data/pbc', label);
    for (const file of readdirSync(source).sort().slice(0, 4)) copyFileSync(path.join(source, file), path.join(data, label, file));
  }
  const out = path.join(dir, 'run');
  // A learning rate this small leaves the weights where --init put them.
  const settings = path.join(dir, 'still.json');
  writeFileSync(settings, JSON.stringify({ lr: 1e-12, minLr: 0 }));
  const outcome = await hemato(
    ...['train', data, '--out', out, '--config', settings, '--arch', 'convnext_only_atto', '--init', start, '--size', '64', '--epochs', '1'],
    ...['--batch-size', '4', '--workers', '0', '--no-augment', '--json'],
  );
  assert.equal(outcome.code, 0, outcome.stderr);
  assert.match(outcome.stderr, /--init: classes differ from .*start\.safetensors's; the classifier head starts fresh/);
  const [initial, trained] = await Promise.all([loadModel(start), loadModel(path.join(out, 'model.safetensors'))]);
  assert.deepEqual(trained.metadata.classes, PBC_CLASSES);
  assert.equal(trained.metadata.architecture, 'convnext_only_atto');
  const weights = (m: typeof initial, key: string) => m.model.stateDict().get(key)!.toArray();
  for (const key of ['convnext.stem.0.weight', 'convnext.stages.3.blocks.1.mlp.fc2.weight', 'head.norm.weight']) {
    assert.ok(maxAbsDiff(weights(trained, key), weights(initial, key)) < 1e-3, key);
  }
  assert.deepEqual(trained.model.head!.fc.weight.shape, [8, 320]);
  initial.model.dispose();
  trained.model.dispose();
});
