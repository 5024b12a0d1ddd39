// Training from a pack: the pack fixed its field and split when it was made, so a field or validation share given
// for the run is refused (or, where it is the pack's own, accepted) and the run records what the pack used; a
// teacher is checked against the pack's classes, read from its header, before anything else is read or written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { writePack } from '../src/data/pack.js';
import { type RunConfigInput, RunConfigError } from '../src/train/config.js';
import { checkTrainingRequest, runTraining } from '../src/train/run.js';
import { saveUntrainedModel } from './helpers.js';
import { TINY_RUN, writeNoisyImageFolder } from './train-fixtures.js';

const root = mkdtempSync(path.join(tmpdir(), 'hemato-train-pack-'));
const CLASSES = ['neutrophil', 'platelet'];

/** A pack of 16 noisy 32 px images (6 train and 2 val per class), taken at the largest centred square. */
async function tinyPack(): Promise<string> {
  const folder = await writeNoisyImageFolder(path.join(root, 'cells'), CLASSES, 4);
  const items = CLASSES.flatMap((label) =>
    Array.from({ length: 8 }, (_, i) => ({
      file: `${label}/${label}_${i}.png`,
      path: path.join(folder, label, `${label}_${i}.png`),
      label,
      part: i < 6 ? ('train' as const) : ('val' as const),
    })),
  );
  const pack = path.join(root, 'cells.pack');
  await writePack(items, pack, { classes: CLASSES, geometry: { field: null, size: 32 }, reference: null, codec: 'png', threads: 1, splitHash: 'abc' });
  return pack;
}

let made: Promise<string> | undefined;
const packed = () => (made ??= tinyPack());
const settings = (pack: string, data: RunConfigInput['data'] = {}): RunConfigInput => ({ ...TINY_RUN, data: { source: { pack }, ...data } });

test('a field or validation share given with a pack is refused, naming the pack and where it was given, before the run folder is made', async () => {
  const pack = await packed();
  const runDir = path.join(root, 'never-run');
  const cases: [RunConfigInput['data'], RegExp][] = [
    [
      { field: 360 },
      /^the command line sets data\.field 360, but .*cells\.pack was packed with --field none, and its images were cut then; leave data\.field out, or make the pack again with --field 360$/,
    ],
    [
      { valFraction: 0.3 },
      /^the command line sets data\.valFraction, but .*cells\.pack is a pack, and its split was fixed when it was made \(hemato pack --split\); leave data\.valFraction out/,
    ],
  ];
  for (const [data, message] of cases)
    await assert.rejects(
      runTraining({ runDir, overrides: settings(pack, data), note: () => {} }),
      (e: Error) => e instanceof RunConfigError && message.test(e.message),
    );
  assert.ok(!existsSync(runDir));

  // From a settings file too, as a usage error of hemato train.
  const file = path.join(root, 'field.json');
  writeFileSync(file, JSON.stringify({ data: { field: 500 } }));
  const outcome = await promisify(execFile)(process.execPath, ['bin/hemato.js', 'train', '--pack', pack, '--size', '32', '--config', file, '--out', runDir], {
    timeout: 60_000,
  }).then(
    () => ({ code: 0, stderr: '' }),
    (e) => ({ code: e.code as number, stderr: e.stderr as string }),
  );
  assert.equal(outcome.code, 2, outcome.stderr);
  assert.match(outcome.stderr, /field\.json sets data\.field 500, but .*cells\.pack was packed with --field none/);
  assert.ok(!existsSync(runDir));
});

test("a pack run records the pack's field and no validation share, and its settings train from the pack again", async () => {
  const pack = await packed();
  const runDir = path.join(root, 'run');
  // No field given: the default (360 px) is not what the pack used, and is not recorded.
  const outcome = await runTraining({ runDir, overrides: { ...TINY_RUN, data: { source: { pack } } }, note: () => {}, shouldStop: () => true });
  assert.equal(outcome.interrupted, true);
  const recorded = JSON.parse(readFileSync(path.join(runDir, 'config.json'), 'utf8'));
  assert.equal(recorded.data.field, null);
  assert.ok(!('valFraction' in recorded.data), JSON.stringify(recorded.data));
  const again = await checkTrainingRequest({ runDir: path.join(root, 'again'), configFile: path.join(runDir, 'config.json') });
  assert.deepEqual(again.data, recorded.data);
});

test("a teacher is checked against the pack's classes, read from its header, before the run folder is made", async () => {
  const pack = await packed();
  const teacher = path.join(root, 'teacher.safetensors');
  await saveUntrainedModel(teacher);
  const runDir = path.join(root, 'never-distilled');
  await assert.rejects(
    runTraining({ runDir, overrides: { ...settings(pack, { field: null }), distill: { teachers: [teacher], weight: 0.5, temperature: 2 } }, note: () => {} }),
    (e: Error) =>
      e instanceof RunConfigError &&
      e.message.startsWith(
        `--teacher ${teacher} has the classes ${PBC_CLASSES.join(', ')}, and this run trains on ${CLASSES.join(', ')} (the classes of the pack ${pack}); `,
      ) &&
      e.message.endsWith(`use a model trained on these classes, or leave --teacher ${teacher} out`),
  );
  assert.ok(!existsSync(runDir));
});
