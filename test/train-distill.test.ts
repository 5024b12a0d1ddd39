// Distillation: the loss is least where the student matches the soft labels, a teacher's labels do not depend on
// which flip or rotation of an image it saw, and a run computes them once, keeps them and reuses them on --resume. A
// teacher that is no hemato model, or has other classes than the run's, is refused before the data is read; one with
// NaN outputs is named, and none of its labels are kept.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { IMAGENET_NORMALIZATION, type ImageSet } from '../src/data/batches.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { NonFiniteModelError } from '../src/eval/finite.js';
import { createModel } from '../src/models/index.js';
import { saveModel } from '../src/models/io.js';
import { RunConfigError } from '../src/train/config.js';
import { computeTeacherTargets, distillationLoss, TEACHER_FILE, teacherTargets } from '../src/train/distill.js';
import { runTraining } from '../src/train/run.js';
import { saveUntrainedModel } from './helpers.js';
import { TINY_RUN, writeNoisyImageFolder } from './train-fixtures.js';

const root = mkdtempSync(path.join(tmpdir(), 'hemato-distill-'));

test('the distillation loss is T² times the soft cross-entropy, least where the student matches the labels', () => {
  const before = E.liveTensors();
  const T = 2;
  const logits = E.randn([4, 8], { seed: 1 });
  E.tidy(() => {
    const targets = E.F.softmax(logits.div(T), 1);
    const p = targets.toArray() as number[];
    const entropy = -p.reduce((sum, v) => sum + (v > 0 ? v * Math.log(v) : 0), 0) / 4;
    const matched = distillationLoss(logits, targets, T).item();
    assert.ok(Math.abs(matched - T * T * entropy) < 1e-4, `${matched} against ${T * T * entropy}`);
    for (let seed = 2; seed < 6; seed++) {
      const other = logits.add(E.randn([4, 8], { seed }).mul(0.5));
      assert.ok(distillationLoss(other, targets, T).item() > matched, 'another student costs more');
    }
  });
  logits.dispose();
  assert.equal(E.liveTensors(), before);
});

test("a teacher's labels are the same for every flip and rotation of an image, and sum to 1", async () => {
  const teacher = path.join(root, 'teacher.safetensors');
  await saveUntrainedModel(teacher);
  const size = 64;
  const pixels = size * size * 3;
  const image = Uint8Array.from({ length: pixels }, (_, i) => (i * 37 + (i >> 7) * 11) % 251);
  const turned = new Uint8Array(pixels); // rotated by 90°: (y, x) → (size − 1 − x, y)
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) turned.set(image.subarray((y * size + x) * 3, (y * size + x) * 3 + 3), ((size - 1 - x) * size + y) * 3);
  const images = new Uint8Array(3 * pixels);
  images.set(image, 0);
  images.set(turned, pixels);
  const data: ImageSet = { images, size, labels: Int32Array.from([0, 0, 1]), classes: [...PBC_CLASSES] };
  const options = { normalization: IMAGENET_NORMALIZATION, device: 'cpu' as const, precision: 'fp32' as const, batchSize: 2 };
  const targets = await computeTeacherTargets({ teachers: [teacher], weight: 0.5, temperature: 2 }, data, Int32Array.from([0, 1]), options);
  const k = PBC_CLASSES.length;
  const row = (i: number) => Array.from(targets.subarray(i * k, (i + 1) * k));
  assert.ok(Math.abs(row(0).reduce((a, b) => a + b, 0) - 1) < 1e-5);
  row(0).forEach((v, c) => assert.ok(Math.abs(v - row(1)[c]) < 1e-5, `class ${c}: ${v} against ${row(1)[c]}`));
  assert.deepEqual(row(2), new Array(k).fill(0), 'an image outside the indices gets no labels');
});

test('a run distils from its teachers, keeps their labels in the run folder and reuses them on --resume', async () => {
  const folder = await writeNoisyImageFolder(path.join(root, 'cells'), ['neutrophil', 'platelet'], 6);
  const teacher = path.join(root, 'teacher-32.safetensors');
  await saveUntrainedModel(teacher);
  const runDir = path.join(root, 'run');
  const settings = {
    ...TINY_RUN,
    epochs: 2,
    distill: { teachers: [teacher], weight: 0.5, temperature: 2 },
    data: { ...TINY_RUN.data, source: { dir: folder } },
  };
  const notes: string[] = [];
  let steps = 0;
  const first = await runTraining({ runDir, overrides: settings, note: (n) => notes.push(n), shouldStop: () => ++steps >= 2 });
  assert.equal(first.interrupted, true);
  assert.ok(
    notes.some((n) => /^distillation: labelling \d+ training images with 1 teacher\(s\), 8 views each$/.test(n)),
    notes.join('\n'),
  );
  assert.ok(existsSync(path.join(runDir, TEACHER_FILE)));
  const resumed: string[] = [];
  const second = await runTraining({ runDir, overrides: settings, resume: true, note: (n) => resumed.push(n) });
  assert.equal(second.interrupted, false);
  assert.ok(
    resumed.some((n) => n.startsWith("distillation: the teachers' labels from ")),
    resumed.join('\n'),
  );
  await assert.rejects(
    runTraining({
      runDir: path.join(root, 'bad'),
      overrides: { ...settings, distill: { ...settings.distill, teachers: [path.join(root, 'none.safetensors')] } },
      note: () => {},
    }),
    /none\.safetensors/,
  );
});

test('a teacher is checked before the data is read: a file missing, empty, a FIFO, a folder, no hemato model, or other classes', async () => {
  const dir = path.join(root, 'teachers');
  mkdirSync(dir);
  const empty = path.join(dir, 'empty.safetensors');
  writeFileSync(empty, '');
  const fifo = path.join(dir, 'pipe.safetensors');
  execFileSync('mkfifo', [fifo]);
  const timm = path.join(dir, 'timm.safetensors');
  const weights = E.tensor(new Float32Array(2), [2]);
  await E.saveSafetensors(timm, { weight: weights });
  weights.dispose();
  const twoClasses = path.join(dir, 'two-classes.safetensors');
  E.manualSeed(0);
  const model = createModel('convnext_atto', { numClasses: 2, inputSize: 32 });
  await saveModel(twoClasses, model, { classes: ['neutrophil', 'platelet'], normalization: IMAGENET_NORMALIZATION });
  model.dispose();
  const cases: [string, RegExp][] = [
    [path.join(dir, 'none.safetensors'), /^--teacher: cannot read .*none\.safetensors: no such file/],
    [empty, /^--teacher: .*empty\.safetensors is not a safetensors file/],
    [fifo, /^--teacher: cannot read .*pipe\.safetensors: not a regular file: a named pipe/],
    [dir, /^--teacher: cannot read .*teachers: not a regular file: a folder/],
    [timm, /^--teacher takes a model saved by hemato, and .*timm\.safetensors has no hemato metadata/],
    [
      twoClasses,
      new RegExp(
        `^--teacher .*two-classes\\.safetensors has the classes neutrophil, platelet, and this run trains on ${PBC_CLASSES.join(', ')} ` +
          "\\(hemato's classes, which a data folder or labels CSV is read against\\); .*: use a model trained on these classes, or leave --teacher .*two-classes\\.safetensors out$",
      ),
    ],
  ];
  const runDir = path.join(root, 'never-run');
  // The data folder does not exist: each teacher must be refused before it is looked at.
  const data = { ...TINY_RUN.data, source: { dir: path.join(root, 'no-cells') } };
  for (const [teacher, message] of cases)
    await assert.rejects(
      runTraining({ runDir, overrides: { ...TINY_RUN, data, distill: { teachers: [teacher], weight: 0.5, temperature: 2 } }, note: () => {} }),
      (e: Error) => e instanceof RunConfigError && message.test(e.message),
    );
  assert.ok(!existsSync(runDir));
});

test('a teacher whose outputs overflow to NaN is named, and none of its labels are kept', async () => {
  const teacher = path.join(root, 'overflowing.safetensors');
  const classes = ['neutrophil', 'platelet'];
  E.manualSeed(0);
  const model = createModel('convnext_atto', { numClasses: classes.length, inputSize: 32 });
  // Finite weights whose logits are not: the check of the weights passes, the outputs are what is wrong.
  E.noGrad(() => model.stateDict().get('head.fc.weight')!.fill_(3e38));
  await saveModel(teacher, model, { classes, normalization: IMAGENET_NORMALIZATION });
  model.dispose();
  const size = 32;
  const data: ImageSet = {
    images: Uint8Array.from({ length: 2 * size * size * 3 }, (_, i) => (i * 37) % 251),
    size,
    labels: Int32Array.from([0, 1]),
    classes,
  };
  const runDir = mkdtempSync(path.join(tmpdir(), 'hemato-teacher-'));
  const options = { normalization: IMAGENET_NORMALIZATION, device: 'cpu' as const, precision: 'fp32' as const, batchSize: 2, write: true, note: () => {} };
  await assert.rejects(
    teacherTargets(runDir, { teachers: [teacher], weight: 0.5, temperature: 2 }, data, Int32Array.from([0, 1]), options),
    (e: Error) =>
      e instanceof NonFiniteModelError && /^the teacher .*overflowing\.safetensors gives NaN or infinite outputs on the training images/.test(e.message),
  );
  assert.ok(!existsSync(path.join(runDir, TEACHER_FILE)));
});
