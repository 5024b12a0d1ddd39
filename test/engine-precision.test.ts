// The default-precision table: one entry per device, CPU kind, model family and purpose, with CPU features injected.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';
import { listModels } from '../src/models/index.js';
import { BUNDLED_MODEL, defaultPrecision, loadClassifier } from '../src/api/classifier.js';

const AMX = { amx: true, avx512bf16: true };
const AVX512 = { amx: false, avx512bf16: true };
const PLAIN = { amx: false, avx512bf16: false };
const PURPOSES = ['inference', 'training'] as const;

function precision(cpu: typeof AMX, purpose: E.Purpose, family?: E.ModelFamily, device = 'cpu'): E.Precision {
  return E.precisionFor({ device, cpu, purpose, family }).precision;
}

test('CPUs without bf16 hardware use fp32 for everything; CUDA uses bf16 for everything', () => {
  for (const purpose of PURPOSES) {
    for (const family of E.MODEL_FAMILIES) {
      assert.equal(precision(PLAIN, purpose, family), 'fp32');
      for (const cpu of [PLAIN, AVX512, AMX]) assert.equal(precision(cpu, purpose, family, 'cuda:0'), 'bf16');
    }
  }
});

test('bf16 is emulated only on a CPU with neither AMX-BF16 nor AVX-512-BF16, never on CUDA', () => {
  assert.equal(E.bf16Emulated('cpu', PLAIN), true);
  assert.equal(E.bf16Emulated('cpu', AVX512), false);
  assert.equal(E.bf16Emulated('cpu', AMX), false);
  assert.equal(E.bf16Emulated('cuda:0', PLAIN), false);
});

test('AMX: bf16 inference; training in bf16 except ConvNeXt alone, whose convolutions are faster in fp32', () => {
  for (const family of E.MODEL_FAMILIES) assert.equal(precision(AMX, 'inference', family), 'bf16');
  assert.equal(precision(AMX, 'training', 'convnext'), 'fp32');
  assert.equal(precision(AMX, 'training', 'swin'), 'bf16');
  assert.equal(precision(AMX, 'training', 'dualpath'), 'bf16');
});

test('AVX-512-BF16 without AMX: bf16 inference only where measured (ConvNeXt, the dual path), bf16 training', () => {
  assert.equal(precision(AVX512, 'inference', 'convnext'), 'bf16');
  assert.match(E.precisionFor({ device: 'cpu', cpu: AVX512, family: 'convnext' }).why, /99\.95 % top-1 agreement/);
  assert.equal(precision(AVX512, 'inference', 'dualpath'), 'bf16');
  assert.match(E.precisionFor({ device: 'cpu', cpu: AVX512, family: 'dualpath' }).why, /100 % top-1 agreement/);
  assert.equal(precision(AVX512, 'inference', 'swin'), 'fp32');
  for (const family of E.MODEL_FAMILIES) assert.equal(precision(AVX512, 'training', family), 'bf16');
});

test('without a family: the choice all families share, else fp32 saying why', () => {
  assert.equal(precision(AMX, 'inference'), 'bf16');
  assert.equal(precision(AVX512, 'training'), 'bf16');
  const split = E.precisionFor({ device: 'cpu', cpu: AVX512, purpose: 'inference' });
  assert.equal(split.precision, 'fp32');
  assert.match(split.why, /families differ here \(convnext bf16, swin fp32, dualpath bf16\)/);
  assert.equal(precision(AMX, 'training'), 'fp32');
  assert.equal(E.precisionFor({ device: 'cpu', cpu: AVX512 }).precision, 'fp32', 'inference is the default purpose');
});

test('every entry says why, and every registered architecture has a family', () => {
  for (const cpu of [PLAIN, AVX512, AMX]) {
    for (const device of ['cpu', 'cuda']) {
      const entries = E.precisionEntries(device, cpu);
      for (const purpose of PURPOSES) for (const family of E.MODEL_FAMILIES) assert.ok(entries[purpose][family].why.length > 20);
    }
  }
  assert.equal(E.cpuKind(AMX), 'amx');
  assert.equal(E.cpuKind(AVX512), 'avx512bf16');
  assert.equal(E.cpuKind(PLAIN), 'plain');
  for (const name of listModels()) assert.ok(E.modelFamily(name), name);
  assert.equal(E.modelFamily('dualpath-atto'), 'dualpath');
  assert.equal(E.modelFamily('convnext-only'), 'convnext');
  assert.equal(E.modelFamily('swin_tiny_patch4_window7_224'), 'swin');
  assert.equal(E.modelFamily('resnet50'), undefined);
});

test("the classifier's automatic precision is the table's entry for its model on this machine", async () => {
  const expected = E.precisionFor({ device: 'cpu', family: 'convnext' }).precision;
  assert.equal(defaultPrecision('cpu', 'convnext-only'), expected);
  assert.equal(defaultPrecision('cuda', 'dualpath-atto'), 'bf16');
  const classifier = await loadClassifier(BUNDLED_MODEL, { device: 'cpu' });
  try {
    assert.equal(classifier.metadata.architecture, 'convnext_only_atto');
    assert.equal(classifier.precision, expected);
  } finally {
    classifier.dispose();
  }
});
