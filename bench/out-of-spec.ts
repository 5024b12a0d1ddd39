// `npm run bench:out-of-spec -- MODEL SPLIT [--n 200]`: a fixed, seeded out-of-spec set made from the validation
// images of a split, and how the model's uncertainty flag and out-of-distribution score handle it.
//   negatives (must be flagged): 3×3 montages, empty background, red-cell-only corners, rendered text, uniform noise;
//   rescaled cells (×0.33 and ×3): must be classified correctly or flagged.
// Reports the flagged-or-correct share, the flag rate per kind, the uncertain rate on the unaltered images and the
// detector's AUROC between unaltered images and negatives, all together and kind by kind; and the same for the
// out-of-spec score the flag acts on: the detector's distance, or the highest score where the image fails the
// one-cell check (flagged `no-single-cell` whatever its distance). The last line on stdout is one JSON document.
import path from 'node:path';
import sharp from 'sharp';
import { loadClassifier } from '../src/api/classifier.js';
import { seededRandom } from '../src/data/augment.js';
import { resizeRgb } from '../src/data/geometry.js';
import { type RgbImage, readImageFile } from '../src/data/image.js';
import { measureCells, showsOneCell } from '../src/data/scale.js';
import { readSplit } from '../src/data/split.js';
import { softmaxRows } from '../src/eval/calibration.js';
import { auroc } from '../src/eval/ood.js';

const args = process.argv.slice(2);
const option = (name: string, fallback: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const [modelFile, splitFile] = args.filter((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--'));
const n = Number(option('--n', '200'));
const pbc = path.resolve('../shared/data/pbc');
const log = (message: string) => process.stderr.write(`${message}\n`);

type Kind = 'original' | 'montage' | 'background' | 'red-cell-corner' | 'text' | 'noise' | 'rescaled-0.33' | 'rescaled-3';
const NEGATIVES: Kind[] = ['montage', 'background', 'red-cell-corner', 'text', 'noise'];

async function montage(images: RgbImage[]): Promise<RgbImage> {
  const tile = 120;
  const tiles = await Promise.all(images.map((image) => resizeRgb(image, tile)));
  const out = new Uint8Array(3 * tile * 3 * tile * 3);
  tiles.forEach((t, i) => {
    const [ox, oy] = [(i % 3) * tile, Math.floor(i / 3) * tile];
    for (let y = 0; y < tile; y++) out.set(t.data.subarray(y * tile * 3, (y + 1) * tile * 3), ((oy + y) * 3 * tile + ox) * 3);
  });
  return { width: 3 * tile, height: 3 * tile, data: out };
}

function background(image: RgbImage, random: () => number): RgbImage {
  const colour = measureCells(image).background;
  return {
    width: image.width,
    height: image.height,
    data: Uint8Array.from({ length: image.data.length }, (_, i) => Math.max(0, Math.min(255, colour[i % 3] + Math.round((random() - 0.5) * 6)))),
  };
}

function corner(image: RgbImage, which: number): RgbImage {
  const side = 140;
  const [left, top] = [which % 2 ? image.width - side : 0, which < 2 ? 0 : image.height - side];
  const out = new Uint8Array(side * side * 3);
  for (let y = 0; y < side; y++) out.set(image.data.subarray(((top + y) * image.width + left) * 3, ((top + y) * image.width + left + side) * 3), y * side * 3);
  return { width: side, height: side, data: out };
}

async function text(index: number): Promise<RgbImage> {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="360" height="363"><rect width="100%" height="100%" fill="white"/><text x="20" y="180" font-size="48" font-family="sans-serif" fill="black">SAMPLE ${index}</text></svg>`;
  const { data, info } = await sharp(Buffer.from(svg)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
}

function noise(random: () => number): RgbImage {
  return { width: 360, height: 363, data: Uint8Array.from({ length: 360 * 363 * 3 }, () => Math.floor(random() * 256)) };
}

async function main(): Promise<void> {
  if (!modelFile || !splitFile) throw new Error('usage: npm run bench:out-of-spec -- MODEL SPLIT [--n 200]   (SPLIT from hemato split)');
  const { rows } = await readSplit(splitFile);
  const val = rows.filter((r) => r.part === 'val');
  const chosen = Array.from({ length: Math.min(n, val.length) }, (_, i) => val[Math.floor((i * val.length) / Math.min(n, val.length))]);
  const classifier = await loadClassifier(modelFile);
  const random = seededRandom(0);
  const originals = await Promise.all(chosen.map((r) => readImageFile(path.join(pbc, r.file))));
  const cases: { kind: Kind; image: RgbImage; label: string | null }[] = [];
  for (const [i, image] of originals.entries()) {
    cases.push({ kind: 'original', image, label: chosen[i].label });
    cases.push({ kind: 'montage', image: await montage(Array.from({ length: 9 }, (_, k) => originals[(i + k * 17) % originals.length])), label: null });
    cases.push({ kind: 'background', image: background(image, random), label: null });
    cases.push({ kind: 'red-cell-corner', image: corner(image, i % 4), label: null });
    cases.push({ kind: 'text', image: await text(i), label: null });
    cases.push({ kind: 'noise', image: noise(random), label: null });
    cases.push({ kind: 'rescaled-0.33', image: await resizeRgb(image, Math.round(image.width / 3), Math.round(image.height / 3)), label: chosen[i].label });
    cases.push({ kind: 'rescaled-3', image: await resizeRgb(image, image.width * 3, image.height * 3), label: chosen[i].label });
  }
  log(`${cases.length} cases from ${originals.length} validation images`);
  const outcome = new Map<Kind, { n: number; flagged: number; correct: number; handled: number; distances: number[]; scores: number[] }>();
  for (let start = 0; start < cases.length; start += 32) {
    const batch = cases.slice(start, start + 32);
    // Read as classification reads them, second look included.
    const { logits, distances, prepared } = await classifier.read(await Promise.all(batch.map((c) => classifier.prepare(c.image))), (i) => batch[i].image);
    const k = classifier.classes.length;
    const probs = softmaxRows(logits, batch.length, k, classifier.temperature);
    batch.forEach((c, i) => {
      const row = Array.from(probs.subarray(i * k, (i + 1) * k));
      const best = row.indexOf(Math.max(...row));
      const oneCell = prepared[i].measures ? showsOneCell(prepared[i].measures) : undefined;
      const reasons = classifier.reasons(row[best], prepared[i].scale, distances?.[i], oneCell);
      const entry = outcome.get(c.kind) ?? { n: 0, flagged: 0, correct: 0, handled: 0, distances: [], scores: [] };
      entry.n++;
      if (reasons.length) entry.flagged++;
      const correct = c.label !== null && classifier.classes[best] === c.label;
      if (correct) entry.correct++;
      // A negative is handled when flagged; a rescaled cell when flagged or classified correctly.
      if (reasons.length || (correct && !NEGATIVES.includes(c.kind))) entry.handled++;
      if (distances) {
        entry.distances.push(distances[i]);
        entry.scores.push(oneCell === false ? Number.MAX_VALUE : distances[i]);
      }
      outcome.set(c.kind, entry);
    });
    log(`${Math.min(cases.length, start + 32)}/${cases.length}`);
  }
  const byKind = Object.fromEntries(
    [...outcome].map(([kind, e]) => [kind, { n: e.n, flagged: e.flagged / e.n, accuracy: e.correct / e.n, handled: e.handled / e.n }]),
  );
  const altered = [...outcome].filter(([kind]) => kind !== 'original').map(([, e]) => e);
  const good = altered.reduce((sum, e) => sum + e.handled, 0);
  const total = altered.reduce((sum, e) => sum + e.n, 0);
  const separation = (values: 'distances' | 'scores') => {
    const inliers = outcome.get('original')![values];
    return {
      all: auroc(
        inliers,
        NEGATIVES.flatMap((kind) => outcome.get(kind)![values]),
      ),
      byKind: Object.fromEntries(NEGATIVES.map((kind) => [kind, auroc(inliers, outcome.get(kind)![values])])),
    };
  };
  const [detector, outOfSpec] = classifier.ood ? [separation('distances'), separation('scores')] : [null, null];
  console.log(
    JSON.stringify({
      bench: 'out-of-spec',
      model: path.basename(modelFile),
      images: originals.length,
      cases: cases.length,
      flagged_or_correct: good / total,
      uncertain_original: byKind.original.flagged,
      accuracy_original: byKind.original.accuracy,
      ood_auroc: detector?.all ?? null,
      ood_auroc_by_kind: detector?.byKind ?? null,
      out_of_spec_auroc: outOfSpec?.all ?? null,
      out_of_spec_auroc_by_kind: outOfSpec?.byKind ?? null,
      by_kind: byKind,
    }),
  );
  classifier.dispose();
}

main().catch((error) => {
  process.stderr.write(`bench:out-of-spec failed: ${(error as Error).message}\n`);
  process.exit(1);
});
