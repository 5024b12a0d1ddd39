// Model files (save → load) and timm checkpoint import: paths, head re-initialisation, ignored buffers,
// resized bias tables, and the one error that lists every key that does not fit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { StateDictError } from '../src/nn/index.js';
import {
  ConvNeXt,
  DualPathNet,
  SwinTransformer,
  createModel,
  importTimmCheckpoint,
  importTimmStateDict,
  loadModel,
  resizeRelativePositionBiasTable,
  saveModel,
  type ImageClassifier,
  type ModelInfo,
} from '../src/models/index.js';
import { CHECKPOINT_FORMAT, isHematoModelFile, readModelMetadata } from '../src/models/io.js';
import { SHARED, maxAbsDiff, saveUntrainedModel } from './helpers.js';

const FIXTURES = path.join(SHARED, 'fixtures/timm');
const fixture = (name: string) => path.join(FIXTURES, `${name}.safetensors`);
const CONVNEXT_FIXTURE = { depths: [1, 1, 2, 1], dims: [16, 32, 64, 128], convMlp: true } as const;
const SWIN_FIXTURE = { embedDim: 16, depths: [2, 2, 2, 2], numHeads: [1, 2, 4, 8] } as const;

const workdir = mkdtempSync(path.join(tmpdir(), 'hemato-models-'));
test.after(() => rmSync(workdir, { recursive: true, force: true }));

const INFO: ModelInfo = {
  classes: ['basophil', 'eosinophil', 'erythroblast'],
  normalization: { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
  preprocessing: { clahe: { clipLimit: 2, tiles: 8 } },
  temperature: 1.3,
  provenance: { dataset: 'test', commit: 'abc' },
};

async function fixtureIo(name: string): Promise<Map<string, E.Tensor>> {
  return (await E.loadSafetensors(path.join(FIXTURES, `${name}.io.safetensors`))).tensors;
}

function logitsOf(model: ImageClassifier, x: E.Tensor): number[] {
  return E.noGrad(() => E.tidy(() => model.eval().forward(x).toArray()));
}

test('save then load gives identical logits and the metadata back', async () => {
  E.manualSeed(5);
  const model = createModel('dualpath-atto', { numClasses: 3, inputSize: 64, dropRate: 0.1 });
  const x = E.randn([2, 3, 64, 64], { seed: 9 });
  const file = path.join(workdir, 'model.safetensors');
  await saveModel(file, model, INFO);
  const { model: loaded, metadata } = await loadModel(file);
  assert.deepEqual(logitsOf(loaded, x), logitsOf(model, x));
  assert.equal(metadata.architecture, 'dualpath_atto');
  assert.deepEqual(metadata.options, { numClasses: 3, inputSize: 64, dropRate: 0.1, dropPathRate: 0 });
  assert.equal(metadata.inputSize, 64);
  assert.deepEqual(metadata.classes, INFO.classes);
  assert.deepEqual(metadata.normalization, INFO.normalization);
  assert.deepEqual(metadata.preprocessing, INFO.preprocessing);
  assert.deepEqual(metadata.provenance, INFO.provenance);
  assert.equal(metadata.temperature, 1.3);
  assert.equal(metadata.dtype, 'float32');
  assert.equal(loaded.training, false, 'loaded models are in eval mode');
  E.dispose(x);
  model.dispose();
  loaded.dispose();
});

test('a float16 file is half the size and loads as float32 with the rounded weights', async () => {
  E.manualSeed(6);
  const model = createModel('convnext_atto', { numClasses: 3, inputSize: 64 });
  const full = path.join(workdir, 'full.safetensors');
  const half = path.join(workdir, 'half.safetensors');
  await saveModel(full, model, INFO);
  await saveModel(half, model, INFO, { dtype: 'float16' });
  const ratio = statSync(half).size / statSync(full).size;
  assert.ok(ratio > 0.49 && ratio < 0.52, `size ratio ${ratio}`);
  const { model: loaded, metadata } = await loadModel(half);
  assert.equal(metadata.dtype, 'float16');
  const original = model.stateDict().get('stages.2.blocks.3.mlp.fc1.weight')!;
  const restored = loaded.stateDict().get('stages.2.blocks.3.mlp.fc1.weight')!;
  assert.equal(restored.dtype, 'float32');
  const rounded = E.tidy(() => original.to('float16').to('float32').toArray());
  assert.deepEqual(restored.toArray(), rounded);
  const x = E.randn([1, 3, 64, 64], { seed: 2 });
  assert.ok(maxAbsDiff(logitsOf(loaded, x), logitsOf(model, x)) < 1e-2);
  E.dispose(x);
  model.dispose();
  loaded.dispose();
});

test('saving checks the class names, and loading a file without hemato metadata says what it is', async () => {
  const model = createModel('convnext_atto', { numClasses: 4, inputSize: 64 });
  await assert.rejects(saveModel(path.join(workdir, 'x.safetensors'), model, INFO), /3 class names given for a model with 4 outputs/);
  const direct = new ConvNeXt({ ...CONVNEXT_FIXTURE, numClasses: 3 });
  await assert.rejects(saveModel(path.join(workdir, 'y.safetensors'), direct, INFO), /needs a model made by createModel/);
  await assert.rejects(loadModel(fixture('convnext_d16_convmlp_128')), /no hemato metadata.*importTimmCheckpoint/);
  model.dispose();
  direct.dispose();
});

test('a timm checkpoint with another class count loads, and the classifier is re-initialised', async () => {
  const model = new ConvNeXt({ ...CONVNEXT_FIXTURE, numClasses: 5, inputSize: 128 }).eval();
  const io = await fixtureIo('convnext_d16_convmlp_128');
  const report = await importTimmCheckpoint(model, fixture('convnext_d16_convmlp_128'));
  assert.equal(report.headReinitialized, true);
  assert.deepEqual(report.skipped.map((s) => s.key).sort(), ['head.fc.bias', 'head.fc.weight']);
  assert.ok(report.loaded.includes('head.norm.weight'));
  const features = E.noGrad(() => model.forwardFeatures(io.get('input')!));
  assert.ok(maxAbsDiff(features.toArray(), io.get('features')!.toArray()) < 1e-4);
  assert.deepEqual(model.head!.fc.bias!.toArray(), [0, 0, 0, 0, 0], 'a fresh head starts with zero bias');
  E.dispose([features, ...io.values()]);
  model.dispose();
});

test('wrong, missing and misshapen keys give one error that lists them all, and nothing is copied', async () => {
  const model = new ConvNeXt({ ...CONVNEXT_FIXTURE, numClasses: 8 });
  const { tensors } = await E.loadSafetensors(fixture('convnext_d16_linear_128')); // linear MLP: fc weights are 2-D
  const state = new Map(tensors);
  state.set('stages.0.blocks.0.conv_dwx.weight', state.get('stages.0.blocks.0.conv_dw.weight')!);
  state.delete('stages.0.blocks.0.conv_dw.weight');
  state.delete('stem.1.bias');
  const before = model.stem.parameters().map((p) => p.toArray());
  assert.throws(
    () => importTimmStateDict(model, state),
    (error: unknown) => {
      assert.ok(error instanceof StateDictError);
      assert.deepEqual(error.missing.sort(), ['stages.0.blocks.0.conv_dw.weight', 'stem.1.bias']);
      assert.deepEqual(error.unexpected, ['stages.0.blocks.0.conv_dwx.weight']);
      // The conv-MLP model stores 1×1 convs where this checkpoint has Linear weights: every fc1/fc2 weight differs.
      assert.equal(error.mismatched.length, 10);
      assert.deepEqual(
        error.mismatched.find((m) => m.key === 'stages.0.blocks.0.mlp.fc1.weight'),
        { key: 'stages.0.blocks.0.mlp.fc1.weight', expected: [64, 16, 1, 1], got: [64, 16] },
      );
      assert.match(error.message, /timm checkpoint does not fit the model's architecture; check that it is the same variant/);
      assert.match(error.message, /stem\.1\.bias/);
      return true;
    },
  );
  assert.deepEqual(
    model.stem.parameters().map((p) => p.toArray()),
    before,
  );
  E.dispose([...tensors.values()]);
  model.dispose();
});

test("a checkpoint carrying timm's non-persistent buffers (relative_position_index, attn_mask) loads", async () => {
  const model = new SwinTransformer({ ...SWIN_FIXTURE, inputSize: 224, windowSize: 7, numClasses: 8 }).eval();
  const { tensors } = await E.loadSafetensors(fixture('swin_e16_w7_224'));
  const state = new Map(tensors);
  const buffers = model.namedBuffers();
  for (const [key, buffer] of buffers) state.set(key, buffer);
  assert.ok(buffers.some(([k]) => k.endsWith('attn_mask')) && buffers.some(([k]) => k.endsWith('relative_position_index')));
  const report = importTimmStateDict(model, state);
  assert.deepEqual(report.skipped.map((s) => s.key).sort(), buffers.map(([k]) => k).sort());
  assert.equal(report.headReinitialized, false);
  const io = await fixtureIo('swin_e16_w7_224');
  const logits = E.noGrad(() => model.forward(io.get('input')!));
  assert.ok(maxAbsDiff(logits.toArray(), io.get('logits')!.toArray()) < 1e-4);
  E.dispose([logits, ...tensors.values(), ...io.values()]);
  model.dispose();
});

test('a checkpoint with another window size interpolates the relative-position tables', async () => {
  // swin_e16_w7_224 into a 128 px model with window 8: stages 0–2 go from 13×13 offsets to 15×15, stage 3 (4×4 map,
  // so window 4) to 7×7.
  const model = new SwinTransformer({ ...SWIN_FIXTURE, inputSize: 128, windowSize: 8, numClasses: 8 }).eval();
  const { tensors } = await E.loadSafetensors(fixture('swin_e16_w7_224'));
  const report = importTimmStateDict(model, tensors);
  assert.equal(report.resized.length, 8);
  const key = 'layers.0.blocks.0.attn.relative_position_bias_table';
  assert.deepEqual(model.stateDict().get(key)!.shape, [225, 1]);
  // Offsets −1, 0 and +1 sit on the source grid in timm's geometric scheme, so the central 3×3 keeps its values.
  const centre = (table: E.Tensor, side: number) => {
    const values = table.toArray();
    const mid = (side - 1) / 2;
    return [-1, 0, 1].flatMap((dy) => [-1, 0, 1].map((dx) => values[(mid + dy) * side + mid + dx]));
  };
  assert.deepEqual(centre(model.stateDict().get(key)!, 15), centre(tensors.get(key)!, 13));
  const x = E.randn([1, 3, 128, 128], { seed: 4 });
  assert.ok(logitsOf(model, x).every(Number.isFinite));
  E.dispose([x, ...tensors.values()]);
  model.dispose();
});

test('resizing a relative-position table keeps same-size tables and constant tables unchanged', () => {
  const table = E.randn([169, 3], { seed: 3 });
  const same = resizeRelativePositionBiasTable(table, [7, 7]);
  assert.deepEqual(same.toArray(), table.toArray());
  const constant = E.full([169, 2], 0.25);
  for (const window of [
    [4, 4],
    [8, 8],
    [12, 12],
  ] as [number, number][]) {
    const resized = resizeRelativePositionBiasTable(constant, window);
    assert.deepEqual(resized.shape, [(2 * window[0] - 1) ** 2, 2]);
    assert.ok(resized.toArray().every((v) => Math.abs(v - 0.25) < 1e-7));
    resized.dispose();
  }
  E.dispose([table, same, constant]);
});

test('timm checkpoints load into the paths of a dual-path network, which then match timm', async () => {
  const model = new DualPathNet({
    convnext: { ...CONVNEXT_FIXTURE },
    swin: { ...SWIN_FIXTURE, inputSize: 128, windowSize: 8 },
    fusion: 'aff',
    numClasses: 3,
    inputSize: 128,
  }).eval();
  const convnextReport = await importTimmCheckpoint(model, fixture('convnext_d16_convmlp_128'), { path: 'convnext' });
  const swinReport = await importTimmCheckpoint(model, fixture('swin_e16_w8_128'), { path: 'swin' });
  assert.deepEqual(convnextReport.skipped.map((s) => s.key).sort(), ['head.fc.bias', 'head.fc.weight', 'head.norm.bias', 'head.norm.weight']);
  assert.deepEqual(swinReport.skipped.map((s) => s.key).sort(), ['head.fc.bias', 'head.fc.weight']);
  for (const [name, pathModel] of [
    ['convnext_d16_convmlp_128', model.convnext!],
    ['swin_e16_w8_128', model.swin!],
  ] as const) {
    const io = await fixtureIo(name);
    const features = E.noGrad(() => pathModel.forwardFeatures(io.get('input')!));
    assert.ok(maxAbsDiff(features.toArray(), io.get('features')!.toArray()) < 1e-4, `${name} path features`);
    E.dispose([features, ...io.values()]);
  }
  await assert.rejects(importTimmCheckpoint(model, fixture('swin_e16_w8_128')), /not a timm architecture; pass \{ path: 'convnext' \} or \{ path: 'swin' \}/);
  await assert.rejects(importTimmCheckpoint(model, fixture('swin_e16_w8_128'), { path: 'convnext' }), StateDictError);
  model.dispose();
});

test("the registry's timm variants have exactly the keys and shapes of timm's ImageNet checkpoints", async () => {
  const { readFile } = await import('node:fs/promises');
  const expected = JSON.parse(await readFile(path.join(FIXTURES, 'timm_fixtures.json'), 'utf8')).state_dict_shapes as Record<string, Record<string, number[]>>;
  assert.deepEqual(Object.keys(expected).sort(), ['convnext_atto', 'convnext_nano', 'convnext_tiny', 'swin_tiny_patch4_window7_224']);
  for (const [name, shapes] of Object.entries(expected)) {
    const model = createModel(name, { numClasses: 1000, inputSize: 224 });
    const actual = Object.fromEntries([...model.stateDict()].map(([key, t]) => [key, t.shape]));
    assert.deepEqual(actual, shapes, name);
    model.dispose();
  }
});

test('a training checkpoint and a model file cut short are refused from the header, saying what to do', async () => {
  const checkpoint = path.join(workdir, 'run', 'checkpoint.safetensors');
  mkdirSync(path.dirname(checkpoint), { recursive: true });
  writeFileSync(checkpoint, E.serializeSafetensors(new Map([['model.w', E.zeros([2])]]), { format: CHECKPOINT_FORMAT, loop: '{}' }));
  const advice =
    /checkpoint\.safetensors is a training checkpoint, not a model: continue its run with hemato train --resume --out .*run, or use the run's best\.safetensors/;
  await assert.rejects(readModelMetadata(checkpoint), advice);
  await assert.rejects(isHematoModelFile(checkpoint), advice);
  await assert.rejects(loadModel(checkpoint), advice);
  const whole = path.join(workdir, 'whole.safetensors');
  await saveUntrainedModel(whole);
  const cut = path.join(workdir, 'cut.safetensors');
  const bytes = readFileSync(whole);
  writeFileSync(cut, bytes.subarray(0, bytes.length - 1000));
  await assert.rejects(
    readModelMetadata(cut),
    /cut\.safetensors holds \d+ bytes of tensor data where its header describes \d+; the file is cut short or damaged: copy it again/,
  );
  assert.equal((await readModelMetadata(whole)).classes.length, 8);
});
