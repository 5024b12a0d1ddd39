// Starting a run from timm checkpoints (--pretrained) as against hemato model files (--init): the weights arrive,
// a head for other classes starts fresh, the dual-path network takes one file per path, and each wrong kind of
// file is refused with the flag it needs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { createModel, importPretrained } from '../src/models/index.js';
import { loadModel, readModelMetadata } from '../src/models/io.js';
import type { RunConfigInput } from '../src/train/config.js';
import { runTraining } from '../src/train/run.js';
import { TINY_RUN, writeNoisyImageFolder } from './train-fixtures.js';

const root = mkdtempSync(path.join(tmpdir(), 'hemato-pretrained-'));
const CLASSES = ['neutrophil', 'platelet'];
const stemKey = 'stem.0.weight';

/** A convnext_atto checkpoint with timm's key names and no hemato metadata, for 5 classes (another head). */
async function timmCheckpoint(): Promise<{ file: string; stem: number[] }> {
  const model = createModel('convnext_atto', { numClasses: 5, inputSize: 32 });
  const file = path.join(root, 'convnext_atto.safetensors');
  await E.saveSafetensors(file, model.stateDict());
  const stem = model.stateDict().get(stemKey)!.toArray() as number[];
  model.dispose();
  return { file, stem };
}

const maxAbsDiff = (a: number[], b: number[]) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);

function settings(folder: string, extra: RunConfigInput): RunConfigInput {
  return { ...TINY_RUN, ...extra, data: { ...TINY_RUN.data, source: { dir: folder } } };
}

test('a run starts from a timm checkpoint: its weights arrive and a head for other classes starts fresh', async () => {
  const folder = await writeNoisyImageFolder(path.join(root, 'cells'), CLASSES, 4);
  const { file, stem } = await timmCheckpoint();
  const notes: string[] = [];
  const runDir = path.join(root, 'run');
  // A learning rate this small leaves the weights where the checkpoint put them.
  const outcome = await runTraining({
    runDir,
    overrides: settings(folder, { pretrained: file, lr: 1e-12, minLr: 0, weightDecay: 0 }),
    note: (n) => notes.push(n),
  });
  assert.equal(outcome.interrupted, false);
  assert.ok(
    notes.some((n) => /^--pretrained: \d+ tensors from .*convnext_atto\.safetensors; the classifier head starts fresh$/.test(n)),
    notes.join('\n'),
  );
  const { model } = await loadModel(path.join(runDir, 'model.safetensors'));
  assert.ok(maxAbsDiff(model.stateDict().get(stemKey)!.toArray() as number[], stem) < 1e-5, 'the stem is the checkpoint’s');
  model.dispose();

  // The model just trained is a hemato file: --pretrained refuses it and names --init; --init refuses the timm file.
  const hematoFile = path.join(runDir, 'model.safetensors');
  await assert.rejects(
    runTraining({ runDir: path.join(root, 'wrong-1'), overrides: settings(folder, { pretrained: hematoFile }), note: () => {} }),
    /--pretrained takes a timm checkpoint, and .* is a model saved by hemato; start from it with --init/,
  );
  await assert.rejects(
    runTraining({ runDir: path.join(root, 'wrong-2'), overrides: settings(folder, { init: file }), note: () => {} }),
    /--init takes a model saved by hemato, and .* has no hemato metadata; start from a timm checkpoint with --pretrained/,
  );
  await assert.rejects(
    runTraining({ runDir: path.join(root, 'wrong-3'), overrides: settings(folder, { init: hematoFile, pretrained: file }), note: () => {} }),
    /--init and --pretrained are two starting points/,
  );
  await assert.rejects(
    runTraining({ runDir: path.join(root, 'wrong-4'), overrides: settings(folder, { pretrained: path.join(root, 'missing.safetensors') }), note: () => {} }),
    /--pretrained: cannot read .*missing\.safetensors/,
  );
  await assert.rejects(
    runTraining({ runDir: path.join(root, 'wrong-5'), overrides: settings(folder, { pretrained: { resnet: file } as never }), note: () => {} }),
    /pretrained must be a checkpoint file, or \{"convnext": FILE, "swin": FILE\}/,
  );
});

test('the dual-path network takes one checkpoint per path, and a single file only where it has one path', async () => {
  const { file, stem } = await timmCheckpoint();
  const dual = createModel('dualpath_atto', { numClasses: 2, inputSize: 64 });
  await assert.rejects(importPretrained(dual, file), /a ConvNeXt and a Swin path: give a checkpoint for each path \(convnext=FILE, swin=FILE\)/);
  const [imported] = await importPretrained(dual, { convnext: file });
  assert.equal(imported.path, 'convnext');
  assert.ok(
    imported.report.skipped.some((s) => s.key === 'head.fc.weight'),
    'the checkpoint’s classifier is not used in a path',
  );
  const dualStem = (dual as unknown as { convnext: { stateDict(): Map<string, E.Tensor> } }).convnext.stateDict().get(stemKey)!;
  assert.ok(maxAbsDiff(dualStem.toArray() as number[], stem) < 1e-7);
  await assert.rejects(importPretrained(dual, { swin: file }), /does not fit the model's swin path/);
  dual.dispose();

  const single = createModel('convnext_only_atto', { numClasses: 2, inputSize: 64 });
  const [one] = await importPretrained(single, file);
  assert.equal(one.path, 'convnext', "a one-path network's single file goes into its path");
  single.dispose();

  const plain = createModel('convnext_atto', { numClasses: 5, inputSize: 64 });
  await assert.rejects(importPretrained(plain, { convnext: file }), /has no paths: give its checkpoint alone/);
  plain.dispose();
});

test('a fine-tune from --init keeps the scale, background and stain range of the model it starts from, and records them', async () => {
  const folder = await writeNoisyImageFolder(path.join(root, 'cells-init'), CLASSES, 5);
  const startDir = path.join(root, 'start');
  await runTraining({ runDir: startDir, overrides: settings(folder, {}), note: () => {} });
  // The starting point as if trained at a physical scale: its recipe written into the file.
  const recipe = {
    geometry: { field: 40, size: 32 },
    mpm: null,
    scale: { rbcDiameter: 12, rbcDiameterUm: 7.5, nucleusExtent: 20 },
    background: [[240, 220, 200]],
    stain: { haematoxylin: [0.5, 1.5], eosin: [0.2, 0.9] },
  };
  const file = await E.loadSafetensors(path.join(startDir, 'model.safetensors'));
  const info = JSON.parse(file.metadata.hemato);
  const start = path.join(root, 'start-with-recipe.safetensors');
  await E.saveSafetensors(start, file.tensors, { ...file.metadata, hemato: JSON.stringify({ ...info, preprocessing: recipe }) });
  E.dispose([...file.tensors.values()]);

  const notes: string[] = [];
  const runDir = path.join(root, 'fine-tune');
  await runTraining({
    runDir,
    overrides: { ...TINY_RUN, init: start, data: { ...TINY_RUN.data, source: { dir: folder }, field: 40 } },
    note: (n) => notes.push(n),
  });
  assert.ok(
    notes.some((n) => /^--init: images are brought to .*'s red-cell scale \(12\.0 px\), background, stain range$/.test(n)),
    notes.join('\n'),
  );
  const preprocessing = (await readModelMetadata(path.join(runDir, 'model.safetensors'))).preprocessing as typeof recipe;
  assert.deepEqual(
    { scale: preprocessing.scale, background: preprocessing.background, stain: preprocessing.stain },
    { scale: recipe.scale, background: recipe.background, stain: recipe.stain },
  );

  // Without a field (the largest centred square) images keep the file's scale, and nothing claims otherwise.
  const unscaled: string[] = [];
  await runTraining({ runDir: path.join(root, 'fine-tune-unscaled'), overrides: settings(folder, { init: start }), note: (n) => unscaled.push(n) });
  assert.ok(!unscaled.some((n) => n.startsWith('--init: images are brought')), unscaled.join('\n'));
});
