// Answers that must not be given: a label from a damaged JPEG or from NaN scores, a model file whose header or
// metadata contradicts itself, options and inputs of the wrong kind, BMP variants the reader does not understand.
// Each case ends in an error that names the problem, or in an answer flagged uncertain.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import * as E from '../src/engine/index.js';
import { createModel } from '../src/models/index.js';
import { loadModel, saveModel } from '../src/models/io.js';
import { IMAGENET_NORMALIZATION } from '../src/data/batches.js';
import { seededRandom } from '../src/data/augment.js';
import { PBC_CLASSES } from '../src/data/dataset.js';
import { DecodeError, decodeImage } from '../src/data/image.js';
import { type Classification, type ClassificationError, loadClassifier } from '../src/api/classifier.js';
import { SHARED } from './helpers.js';

const PBC = path.join(SHARED, 'data/pbc');
const dir = mkdtempSync(path.join(tmpdir(), 'hemato-answers-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
const modelFile = path.join(dir, 'model.safetensors');
const nanFile = path.join(dir, 'nan.safetensors');

/** A small model; its twin has NaN classifier weights. */
async function models(): Promise<void> {
  E.manualSeed(0);
  const model = createModel('convnext-only', { numClasses: 8, inputSize: 64 });
  const info = {
    classes: [...PBC_CLASSES],
    normalization: IMAGENET_NORMALIZATION,
    temperature: 1,
    uncertaintyThreshold: 0.5,
    preprocessing: { geometry: { field: null, size: 64 }, mpm: null },
  };
  await saveModel(modelFile, model, info, { dtype: 'float16' });
  E.noGrad(() => model.head!.fc.weight.fill_(Number.NaN));
  await saveModel(nanFile, model, info);
  model.dispose();
}
const ready = models();

const isError = (r: Classification | ClassificationError): r is ClassificationError => 'error' in r;

async function png(r: number, g: number, b: number): Promise<Buffer> {
  return sharp({ create: { width: 80, height: 72, channels: 3, background: { r, g, b } } })
    .png()
    .toBuffer();
}

test(
  '40 PBC JPEGs with 4 KB overwritten in the middle each give an error or a flagged answer, their clean originals neither',
  { skip: !existsSync(PBC) },
  async () => {
    await ready;
    const random = seededRandom(20_240_611);
    const classes = readdirSync(PBC)
      .filter((c) => !c.startsWith('.'))
      .sort();
    const originals = Array.from({ length: 40 }, (_, i) => {
      const names = readdirSync(path.join(PBC, classes[i % classes.length]))
        .filter((n) => n.endsWith('.jpg') && !n.startsWith('.'))
        .sort();
      return readFileSync(path.join(PBC, classes[i % classes.length], names[Math.floor(random() * names.length)]));
    });
    const damaged = originals.map((bytes) => {
      const copy = Buffer.from(bytes);
      const start = (copy.length >> 1) - 2048;
      for (let i = 0; i < 4096; i++) copy[start + i] = Math.floor(random() * 256);
      return copy;
    });
    // Threshold 0: no answer is flagged for low confidence, so only the damage itself can stop a label.
    const classifier = await loadClassifier(modelFile, { device: 'cpu', uncertaintyThreshold: 0 });
    const clean = await classifier.classifyBatch(originals);
    // What the image shows may still be flagged (no-single-cell); the file itself must not be.
    for (const [i, r] of clean.entries()) assert.ok(!isError(r) && !r.reasons.includes('decode-warning'), `clean file ${i}: ${JSON.stringify(r)}`);
    const results = await classifier.classifyBatch(damaged);
    for (const [i, r] of results.entries()) {
      if (isError(r)) {
        assert.ok(r.code === 'corrupt' || r.code === 'truncated', `file ${i}: ${r.code} ${r.error}`);
        assert.match(r.error, /JPEG/);
      } else {
        assert.ok(r.uncertain && r.reasons.includes('decode-warning'), `file ${i} got a label without a flag: ${JSON.stringify(r)}`);
      }
    }
    await assert.rejects(
      decodeImage(damaged[0]),
      (e: unknown) => e instanceof DecodeError && e.code === 'corrupt' && /corrupt JPEG: .*Corrupt JPEG data/.test(e.message),
    );
    classifier.dispose();
  },
);

test('a PNG that decodes only leniently (bad checksum) is classified with the reason decode-warning', async () => {
  await ready;
  const good = await png(200, 120, 150);
  const bad = Buffer.from(good);
  const idat = bad.indexOf('IDAT', 8, 'latin1');
  const crcAt = idat + 4 + bad.readUInt32BE(idat - 4);
  bad.writeUInt32BE((bad.readUInt32BE(crcAt) ^ 0xffff) >>> 0, crcAt);
  const decoded = await decodeImage(bad);
  assert.equal(decoded.warnings?.length, 1, 'the decoder says what it warned about');
  assert.deepEqual((await decodeImage(good)).warnings, undefined);
  const classifier = await loadClassifier(modelFile, { device: 'cpu', uncertaintyThreshold: 0 });
  const [fromBytes, fromPixels, clean] = await classifier.classifyBatch([bad, decoded, good]);
  for (const r of [fromBytes, fromPixels]) {
    assert.ok(!isError(r));
    assert.equal(r.uncertain, true);
    // A flat colour shows no cell: that reason comes with both, the decoder's only with the damaged file.
    assert.deepEqual(r.reasons, ['no-single-cell', 'decode-warning']);
  }
  assert.ok(!isError(clean));
  assert.deepEqual(clean.reasons, ['no-single-cell']);
  classifier.dispose();
});

/** Runs hemato; a run past 20 s is killed and shows as code null. */
function hemato(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['bin/hemato.js', ...args], { timeout: 20_000, maxBuffer: 16 * 2 ** 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? (error as { code: number }).code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

test('NaN scores give no label: classifyBatch reports non-finite-output, classify throws it, predict exits 1', async () => {
  await ready;
  const image = path.join(dir, 'cell.png');
  writeFileSync(image, await png(190, 110, 160));
  const classifier = await loadClassifier(nanFile, { device: 'cpu' });
  const [result] = await classifier.classifyBatch([image]);
  assert.ok(isError(result), `a label from NaN scores: ${JSON.stringify(result)}`);
  assert.equal(result.code, 'non-finite-output');
  assert.match(result.error, /cell\.png: .*not finite numbers/);
  await assert.rejects(classifier.classify(image), (e: unknown) => e instanceof Error && (e as { code?: string }).code === 'non-finite-output');
  classifier.dispose();
  const run = await hemato('predict', image, '--model', nanFile, '--device', 'cpu', '--json');
  assert.equal(run.code, 1, run.stderr);
  const rows = (JSON.parse(run.stdout) as { results: { code?: string; label?: string }[] }).results;
  assert.equal(rows[0].code, 'non-finite-output');
  assert.equal(rows[0].label, undefined);
});

/** A copy of the model file with its header (and the hemato document in it) edited; the data section is kept. */
function edited(base: Buffer, edit: (header: Record<string, any>, meta: Record<string, any>) => unknown): Buffer {
  const length = Number(base.readBigUInt64LE(0));
  const header = JSON.parse(base.subarray(8, 8 + length).toString('utf8'));
  const meta = JSON.parse(header.__metadata__.hemato);
  const replaced = edit(header, meta);
  if (replaced === undefined && header.__metadata__?.hemato !== undefined && typeof header.__metadata__.hemato === 'string')
    header.__metadata__.hemato = JSON.stringify(meta);
  const json = Buffer.from(JSON.stringify(replaced ?? header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([prefix, json, base.subarray(8 + length)]);
}

/** Two tensors with the same byte length, for the overlap case. */
function sameSized(header: Record<string, any>): [string, string] {
  const sizes = new Map<number, string>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const bytes = entry.data_offsets[1] - entry.data_offsets[0];
    const twin = sizes.get(bytes);
    if (twin) return [twin, name];
    sizes.set(bytes, name);
  }
  throw new Error('no two tensors of one size');
}

type Header = Record<string, any>;
const first = (header: Header) => Object.keys(header).find((k) => k !== '__metadata__')!;

/** Malformed model files, each with the message it must give. */
const MALFORMED: [string, (header: Header, meta: Header) => unknown, RegExp][] = [
  // The safetensors header.
  ['header not an object', () => [1, 2], /the header is \[1,2\], not a JSON object/],
  [
    'entry null',
    (h) => {
      h[first(h)] = null;
    },
    /tensor '.+' is described by null, not an object/,
  ],
  [
    'entry a number',
    (h) => {
      h[first(h)] = 7;
    },
    /tensor '.+' is described by 7, not an object/,
  ],
  [
    'dtype missing',
    (h) => {
      delete h[first(h)].dtype;
    },
    /tensor '.+' has dtype undefined, which hemato does not read/,
  ],
  [
    'dtype unknown',
    (h) => {
      h[first(h)].dtype = 'F8_E4M3';
    },
    /tensor '.+' has dtype "F8_E4M3", which hemato does not read/,
  ],
  [
    'shape not a list',
    (h) => {
      h[first(h)].shape = '4';
    },
    /tensor '.+' has shape "4", not a list of non-negative integers/,
  ],
  [
    'shape negative',
    (h) => {
      h[first(h)].shape = [-1, 8];
    },
    /has shape \[-1,8\], not a list/,
  ],
  [
    'shape fractional',
    (h) => {
      h[first(h)].shape = [2.5];
    },
    /has shape \[2.5\], not a list/,
  ],
  [
    'offsets missing',
    (h) => {
      delete h[first(h)].data_offsets;
    },
    /has data_offsets undefined, not \[begin, end\]/,
  ],
  [
    'offsets reversed',
    (h) => {
      h[first(h)].data_offsets = [10, 2];
    },
    /has data_offsets \[10,2\], not \[begin, end\]/,
  ],
  [
    'offsets of three',
    (h) => {
      h[first(h)].data_offsets = [0, 2, 4];
    },
    /has data_offsets \[0,2,4\]/,
  ],
  [
    'offsets beyond the data',
    (h) => {
      const e = h[first(h)];
      e.data_offsets = [e.data_offsets[0] + 1e9, e.data_offsets[1] + 1e9];
    },
    /beyond the \d+ bytes of data/,
  ],
  [
    'shape and bytes disagree',
    (h) => {
      h[first(h)].shape.push(2);
    },
    /bytes\), but shape \[.*\] of F\d+ needs \d+/,
  ],
  [
    'tensors share bytes',
    (h) => {
      const [a, b] = sameSized(h);
      h[b].data_offsets = [...h[a].data_offsets];
    },
    /tensors '.+' \[\d+, \d+\] and '.+' \[\d+, \d+\] share bytes/,
  ],
  [
    'metadata values not strings',
    (h, m) => {
      h.__metadata__ = { hemato: m };
      return h;
    },
    /__metadata__ must map names to strings/,
  ],
  // The hemato document.
  [
    'document not JSON',
    (h) => {
      h.__metadata__.hemato = '{"format": ';
      return h;
    },
    /the hemato metadata is not valid JSON/,
  ],
  [
    'document null',
    (h) => {
      h.__metadata__.hemato = 'null';
      return h;
    },
    /the hemato metadata is null, not an object/,
  ],
  [
    'format',
    (_, m) => {
      m.format = 'onnx';
    },
    /metadata format "onnx" is not 'hemato-model'/,
  ],
  [
    'version not a number',
    (_, m) => {
      m.version = 'one';
    },
    /metadata version "one" is not a positive integer/,
  ],
  [
    'version newer',
    (_, m) => {
      m.version = 99;
    },
    /newer hemato \(model format 99\)/,
  ],
  [
    'architecture unknown',
    (_, m) => {
      m.architecture = 'resnet50';
    },
    /architecture "resnet50" is not one of/,
  ],
  [
    '3 class names for 8 outputs',
    (_, m) => {
      m.classes = m.classes.slice(0, 3);
    },
    /3 class names for a model with 8 outputs/,
  ],
  [
    'duplicate class names',
    (_, m) => {
      m.classes[7] = m.classes[0];
    },
    /class name "basophil" appears twice/,
  ],
  [
    'empty class name',
    (_, m) => {
      m.classes[2] = ' ';
    },
    /class name " " is not a non-empty string/,
  ],
  [
    'classes not a list',
    (_, m) => {
      m.classes = 'basophil';
    },
    /classes must be a list of 1 to \d+ names/,
  ],
  [
    'options null',
    (_, m) => {
      m.options = null;
    },
    /options must be an object, got null/,
  ],
  [
    'a billion outputs',
    (_, m) => {
      m.options.numClasses = 1e9;
    },
    /8 class names for a model with 1000000000 outputs/,
  ],
  [
    'inputSize zero',
    (_, m) => {
      m.inputSize = 0;
    },
    /inputSize must be a multiple of 32 in 32\.\.1024, got 0/,
  ],
  [
    'inputSize disagrees',
    (_, m) => {
      m.options.inputSize = 96;
    },
    /options.inputSize 96 differs from inputSize 64/,
  ],
  [
    'drop rate',
    (_, m) => {
      m.options.dropRate = 3;
    },
    /options.dropRate must be a number in \[0, 1\]/,
  ],
  [
    'temperature zero',
    (_, m) => {
      m.temperature = 0;
    },
    /temperature must be a number above zero, got 0/,
  ],
  [
    'temperature negative',
    (_, m) => {
      m.temperature = -1.5;
    },
    /temperature must be a number above zero, got -1.5/,
  ],
  [
    'temperature a string',
    (_, m) => {
      m.temperature = '1.2';
    },
    /temperature must be a number above zero, got "1.2"/,
  ],
  [
    'std zero',
    (_, m) => {
      m.normalization.std = [0.2, 0, 0.2];
    },
    /normalization.std must be three finite numbers above zero/,
  ],
  [
    'mean of two',
    (_, m) => {
      m.normalization.mean = [0.5, 0.5];
    },
    /normalization.mean must be three finite numbers/,
  ],
  [
    'feature scale without weights',
    (_, m) => {
      m.featureScale = { pooling: 'stage-std', bias: 0.1 };
    },
    /featureScale must hold a pooling \(stage-std or pre-logits\), a finite bias and 1 to 4096 finite weights/,
  ],
  [
    'feature scale with a weight that is not a number',
    (_, m) => {
      m.featureScale = { pooling: 'stage-std', bias: 0.1, weights: [0.5, null] };
    },
    /featureScale must hold a pooling/,
  ],
  [
    'threshold above 1',
    (_, m) => {
      m.uncertaintyThreshold = 1.5;
    },
    /uncertaintyThreshold must be a probability in \[0, 1\], got 1.5/,
  ],
  [
    'threshold below 0',
    (_, m) => {
      m.uncertaintyThreshold = -0.1;
    },
    /uncertaintyThreshold must be a probability in \[0, 1\], got -0.1/,
  ],
  [
    'dtype of the document',
    (_, m) => {
      m.dtype = 'int8';
    },
    /dtype "int8" is not one of float32, float16, bfloat16/,
  ],
  [
    'detector threshold',
    (_, m) => {
      m.outOfDistribution = { kind: 'mahalanobis', threshold: -1, validationFlagged: 0.05, features: 320 };
    },
    /out-of-distribution threshold must be a number above zero, got -1/,
  ],
  [
    'detector kind',
    (_, m) => {
      m.outOfDistribution = { kind: 'knn' };
    },
    /outOfDistribution must be a 'mahalanobis' detector/,
  ],
  [
    'classes agree with options, not with the weights',
    (_, m) => {
      m.classes = m.classes.slice(0, 3);
      m.options.numClasses = 3;
    },
    /head\.fc\.weight/,
  ],
  [
    'preprocessing geometry',
    (_, m) => {
      m.preprocessing.geometry.size = 'big';
    },
    /geometry\.size must be an integer/,
  ],
];

test(`${MALFORMED.length} malformed model files each fail at load with one message naming the file and the problem`, async () => {
  await ready;
  const base = readFileSync(modelFile);
  const classifier = await loadClassifier(modelFile, { device: 'cpu' }); // the unedited file is fine
  classifier.dispose();
  for (const [i, [name, edit, message]] of MALFORMED.entries()) {
    const file = path.join(dir, `malformed-${i}.safetensors`);
    writeFileSync(file, edited(base, edit));
    await assert.rejects(
      loadClassifier(file, { device: 'cpu' }),
      (e: unknown) => {
        assert.ok(e instanceof Error, name);
        assert.ok(e.message.startsWith(`${file}: `), `${name}: the message does not name the file: ${e.message}`);
        assert.match(e.message, message, name);
        return true;
      },
      name,
    );
  }
  // A header length beyond the file is caught before any JSON is read.
  const long = Buffer.from(base);
  long.writeBigUInt64LE(BigInt(base.length), 0);
  writeFileSync(path.join(dir, 'long.safetensors'), long);
  await assert.rejects(loadModel(path.join(dir, 'long.safetensors')), /long\.safetensors: header length \d+ exceeds the file/);
});

test('classifier options are checked before the model is loaded, naming the option and what it takes', async () => {
  const missing = path.join(dir, 'never-read.safetensors'); // a bad option is reported before the missing file
  const cases: [object, ErrorConstructor, RegExp][] = [
    [{ precision: 'foo' }, TypeError, /precision must be one of 'auto', 'fp32', 'bf16', got 'foo'/],
    [{ uncertaintyThreshold: 5 }, RangeError, /uncertaintyThreshold must be a probability in \[0, 1\], got 5/],
    [{ uncertaintyThreshold: Number.NaN }, RangeError, /uncertaintyThreshold .* got NaN/],
    [{ uncertaintyThreshold: '0.3' }, TypeError, /uncertaintyThreshold .* got '0.3'/],
    [{ field: -3 }, RangeError, /field must be null \(the largest centred square\) or a whole number of pixels in 8\.\.8000, got -3/],
    [{ field: 1e6 }, RangeError, /field .* got 1000000/],
    [{ field: 12.5 }, RangeError, /field .* got 12.5/],
    [{ pixelSize: 0 }, RangeError, /pixelSize must be a positive, finite number of µm per pixel, got 0/],
    [{ pixelSize: -0.1 }, RangeError, /pixelSize .* got -0.1/],
    [{ pixelSize: Number.POSITIVE_INFINITY }, RangeError, /pixelSize .* got Infinity/],
    [{ pixelSize: Number.NaN }, RangeError, /pixelSize .* got NaN/],
    [{ device: 'tpu' }, TypeError, /device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'/],
    [{ treshold: 0.3 }, TypeError, /unknown classifier option 'treshold'; the options are device, precision, uncertaintyThreshold, field, pixelSize/],
  ];
  for (const [options, kind, message] of cases) {
    await assert.rejects(loadClassifier(missing, options as never), (e: unknown) => e instanceof kind && message.test(e.message), JSON.stringify(options));
  }
  await assert.rejects(loadClassifier(123 as never), (e: unknown) => e instanceof TypeError && /the path of a model file, got 123/.test(e.message));
  await assert.rejects(loadClassifier(missing, null as never), (e: unknown) => e instanceof TypeError && /options must be an object, got null/.test(e.message));
});

test('inputs that are not a path, file bytes or a consistent RgbImage are refused with what they should be', async () => {
  await ready;
  const classifier = await loadClassifier(modelFile, { device: 'cpu' });
  const cases: [unknown, ErrorConstructor, RegExp][] = [
    [123, TypeError, /input must be a file path, an image file's bytes \(Uint8Array\) or an RgbImage \{ width, height, data \}, got 123/],
    [null, TypeError, /got null/],
    [undefined, TypeError, /got undefined/],
    [[1, 2, 3], TypeError, /got an array/],
    ['', TypeError, /input is an empty file path/],
    [{ width: 10, height: 10, data: new Uint8Array(10) }, RangeError, /an RgbImage of 10×10 needs 300 bytes \(3 per pixel\), got 10/],
    [{ width: 10, height: 10, data: new Uint8Array(400) }, RangeError, /needs 300 bytes .* got 400/],
    [{ width: 0, height: 10, data: new Uint8Array(0) }, RangeError, /width and height must be positive integers, got 0 × 10/],
    [{ width: 2.5, height: 2, data: new Uint8Array(15) }, RangeError, /got 2.5 × 2/],
    [{ width: 2, height: 2, data: [1, 2, 3] }, TypeError, /data must be a Uint8Array, got an array/],
  ];
  for (const [input, kind, message] of cases) {
    await assert.rejects(classifier.classify(input as never), (e: unknown) => e instanceof kind && message.test(e.message), String(input));
    await assert.rejects(classifier.prepare(input as never), (e: unknown) => e instanceof kind && message.test(e.message), String(input));
  }
  const good = { width: 70, height: 70, data: new Uint8Array(70 * 70 * 3).fill(180) };
  await assert.rejects(
    classifier.classifyBatch([good, 123] as never),
    (e: unknown) => e instanceof TypeError && /inputs\[1\] must be a file path/.test(e.message),
  );
  await assert.rejects(
    classifier.classifyBatch('cell.png' as never),
    (e: unknown) => e instanceof TypeError && /an array of inputs, got 'cell.png'/.test(e.message),
  );
  assert.ok(!isError((await classifier.classifyBatch([good]))[0]));
  classifier.dispose();
});

test("per-call options are checked like the classifier's, and a disposed classifier says so", async () => {
  await ready;
  const classifier = await loadClassifier(modelFile, { device: 'cpu' });
  const good = { width: 70, height: 70, data: new Uint8Array(70 * 70 * 3).fill(180) };
  const calls: [() => Promise<unknown>, ErrorConstructor, RegExp][] = [
    [() => classifier.classify(good, null as never), TypeError, /classify options must be an object, got null/],
    [() => classifier.classify(good, 'x' as never), TypeError, /classify options must be an object, got 'x'/],
    [() => classifier.classify(good, { topk: 1 } as never), TypeError, /unknown classify option 'topk'; the options are topK/],
    [() => classifier.classify(good, { topK: '3' } as never), TypeError, /topK must be a positive integer, got '3'/],
    [() => classifier.classifyBatch([good], { batchSize: '2' } as never), TypeError, /batchSize must be an integer in 1\.\.4096, got '2'/],
    [() => classifier.classifyBatch([good], { onProgres: () => {} } as never), TypeError, /unknown classifyBatch option 'onProgres'/],
    // A sparse array's holes are inputs of the wrong kind too.
    [() => classifier.classifyBatch(new Array(2) as never), TypeError, /inputs\[0\] must be a file path/],
    [() => classifier.prepare(good, { pixelSize: -1 } as never), TypeError, /unknown prepare option 'pixelSize'/],
    [() => classifier.prepare(good, { arcScale: 'yes' } as never), TypeError, /arcScale must be true or false, got 'yes'/],
    [() => classifier.prepare(good, { appearanceFactor: 0 }), RangeError, /appearanceFactor must be a positive, finite number, got 0/],
  ];
  for (const [call, kind, message] of calls) await assert.rejects(call(), (e: unknown) => e instanceof kind && message.test(e.message), String(message));
  const twin = classifier.withOverrides({ pixelSize: 0.1 });
  classifier.dispose();
  const disposed = /this classifier was disposed, and its weights freed; load the model again with loadClassifier\(\)/;
  for (const c of [classifier, twin]) {
    await assert.rejects(c.classify(good), disposed);
    await assert.rejects(c.classifyBatch([good]), disposed);
    await assert.rejects(c.prepare(good), disposed);
    await assert.rejects(c.explain(good), disposed);
  }
});

/** A BMP with a 40-byte info header: palette (RGB triples) and pixel rows, bottom row first unless topDown. */
function bmp(o: {
  bpp: number;
  width?: number;
  height?: number;
  compression?: number;
  colours?: number;
  palette?: number[][];
  masks?: number[];
  rows: number[][];
  topDown?: boolean;
  offset?: number;
}): Buffer {
  const width = o.width ?? 3;
  const height = o.height ?? 2;
  const stride = Math.floor((o.bpp * width + 31) / 32) * 4;
  const pixels = Buffer.concat(o.rows.map((row) => Buffer.concat([Buffer.from(row), Buffer.alloc(Math.max(0, stride - row.length))])));
  const extra = Buffer.concat([
    ...(o.masks ?? []).map((m) => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(m);
      return b;
    }),
    ...(o.palette ?? []).map(([r, g, b]) => Buffer.from([b, g, r, 0])),
  ]);
  const offset = o.offset ?? 54 + extra.length;
  const header = Buffer.alloc(54);
  header.write('BM', 0, 'latin1');
  header.writeUInt32LE(offset + pixels.length, 2);
  header.writeUInt32LE(offset, 10);
  header.writeUInt32LE(40, 14);
  header.writeInt32LE(width, 18);
  header.writeInt32LE(o.topDown ? -height : height, 22);
  header.writeUInt16LE(1, 26);
  header.writeUInt16LE(o.bpp, 28);
  header.writeUInt32LE(o.compression ?? 0, 30);
  header.writeUInt32LE(pixels.length, 34);
  header.writeUInt32LE(o.colours ?? o.palette?.length ?? 0, 46);
  return Buffer.concat([header, extra, Buffer.alloc(Math.max(0, offset - 54 - extra.length)), pixels]);
}

// Top row: red, green, blue; bottom row: white, black, grey.
const EXPECTED = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 128, 128, 128];
const PALETTE = [
  [255, 0, 0],
  [0, 255, 0],
  [0, 0, 255],
  [255, 255, 255],
  [0, 0, 0],
  [128, 128, 128],
];
const word16 = (v: number) => [v & 0xff, v >> 8];
const rgb555 = (r: number, g: number, b: number) => word16((Math.round((r * 31) / 255) << 10) | (Math.round((g * 31) / 255) << 5) | Math.round((b * 31) / 255));
const rgb565 = (r: number, g: number, b: number) => word16((Math.round((r * 31) / 255) << 11) | (Math.round((g * 63) / 255) << 5) | Math.round((b * 31) / 255));
const TOP = [
  [255, 0, 0],
  [0, 255, 0],
  [0, 0, 255],
];
const BOTTOM = [
  [255, 255, 255],
  [0, 0, 0],
  [128, 128, 128],
];

test('BMPs of every uncompressed depth decode to the right colours', async () => {
  const grey = (v: number) => Array.from({ length: 3 }, () => v);
  const variants: [string, Buffer, number[]][] = [
    [
      '8-bit palette',
      bmp({
        bpp: 8,
        palette: PALETTE,
        rows: [
          [3, 4, 5],
          [0, 1, 2],
        ],
      }),
      EXPECTED,
    ],
    [
      '8-bit palette, top-down',
      bmp({
        bpp: 8,
        palette: PALETTE,
        rows: [
          [0, 1, 2],
          [3, 4, 5],
        ],
        topDown: true,
      }),
      EXPECTED,
    ],
    [
      '4-bit palette',
      bmp({
        bpp: 4,
        palette: PALETTE,
        rows: [
          [0x34, 0x50],
          [0x01, 0x20],
        ],
      }),
      EXPECTED,
    ],
    [
      '1-bit palette',
      bmp({
        bpp: 1,
        palette: [
          [0, 0, 0],
          [255, 255, 255],
        ],
        rows: [[0b10100000], [0b01000000]],
      }),
      [...grey(0), ...grey(255), ...grey(0), ...grey(255), ...grey(0), ...grey(255)],
    ],
    ['24-bit', bmp({ bpp: 24, rows: [BOTTOM.flatMap(([r, g, b]) => [b, g, r]), TOP.flatMap(([r, g, b]) => [b, g, r])] }), EXPECTED],
    ['32-bit', bmp({ bpp: 32, rows: [BOTTOM.flatMap(([r, g, b]) => [b, g, r, 0]), TOP.flatMap(([r, g, b]) => [b, g, r, 0])] }), EXPECTED],
    [
      '16-bit 5-5-5',
      bmp({ bpp: 16, rows: [BOTTOM.flatMap(([r, g, b]) => rgb555(r, g, b)), TOP.flatMap(([r, g, b]) => rgb555(r, g, b))] }),
      [...EXPECTED.slice(0, 15), 132, 132, 132],
    ],
    [
      '16-bit 5-6-5 bit fields',
      bmp({
        bpp: 16,
        compression: 3,
        masks: [0xf800, 0x07e0, 0x001f],
        rows: [BOTTOM.flatMap(([r, g, b]) => rgb565(r, g, b)), TOP.flatMap(([r, g, b]) => rgb565(r, g, b))],
      }),
      [...EXPECTED.slice(0, 15), 132, 130, 132],
    ],
  ];
  for (const [name, bytes, expected] of variants) {
    const image = await decodeImage(bytes);
    assert.deepEqual([image.width, image.height], [3, 2], name);
    assert.deepEqual([...image.data], expected, name);
  }
});

test('BMP variants the reader does not understand are refused with what they are', async () => {
  await ready;
  const cases: [string, Buffer, string, RegExp][] = [
    [
      '8-bit without a palette',
      bmp({
        bpp: 8,
        rows: [
          [3, 4, 5],
          [0, 1, 2],
        ],
      }),
      'corrupt',
      /no room for the palette of 256 colours \(8 bits per pixel\) before the pixel data, which starts at byte 54/,
    ],
    [
      '4-bit with its palette cut',
      bmp({
        bpp: 4,
        colours: 16,
        palette: PALETTE,
        rows: [
          [0x34, 0x50],
          [0x01, 0x20],
        ],
      }),
      'corrupt',
      /no room for the palette of 16 colours/,
    ],
    [
      'more colours than the depth has',
      bmp({ bpp: 1, colours: 3, palette: PALETTE.slice(0, 3), rows: [[0], [0]] }),
      'corrupt',
      /3 palette colours for a 1-bit image \(at most 2\)/,
    ],
    [
      'an index beyond the palette',
      bmp({
        bpp: 8,
        palette: PALETTE,
        rows: [
          [3, 4, 5],
          [0, 1, 9],
        ],
      }),
      'corrupt',
      /uses colour 9 of a 6-colour palette/,
    ],
    [
      'RLE8',
      bmp({
        bpp: 8,
        compression: 1,
        palette: PALETTE,
        rows: [
          [1, 3, 1, 4, 1, 5, 0, 0],
          [1, 0, 1, 1, 1, 2, 0, 1],
        ],
      }),
      'unsupported',
      /RLE8-compressed pixels; convert it to PNG/,
    ],
    [
      'RLE4',
      bmp({
        bpp: 4,
        compression: 2,
        palette: PALETTE,
        rows: [
          [1, 0x30, 1, 0x40],
          [1, 0x50, 0, 1],
        ],
      }),
      'unsupported',
      /RLE4-compressed pixels; convert it to PNG/,
    ],
    [
      'JPEG inside',
      bmp({
        bpp: 0,
        compression: 4,
        rows: [
          [0xff, 0xd8],
          [0xff, 0xd9],
        ],
      }),
      'unsupported',
      /JPEG-compressed pixels/,
    ],
    [
      '0 bits per pixel',
      bmp({
        bpp: 0,
        rows: [
          [0, 0, 0],
          [0, 0, 0],
        ],
      }),
      'corrupt',
      /0 bits per pixel \(a BMP has 1, 4, 8, 16, 24 or 32\)/,
    ],
    [
      '7 bits per pixel',
      bmp({
        bpp: 7,
        rows: [
          [0, 0, 0],
          [0, 0, 0],
        ],
      }),
      'corrupt',
      /7 bits per pixel/,
    ],
    [
      'unknown compression',
      bmp({
        bpp: 24,
        compression: 99,
        rows: [
          [0, 0, 0],
          [0, 0, 0],
        ],
      }),
      'corrupt',
      /unknown compression 99/,
    ],
    [
      'bit fields on 24 bits',
      bmp({
        bpp: 24,
        compression: 3,
        masks: [0xff0000, 0xff00, 0xff],
        rows: [
          [0, 0, 0],
          [0, 0, 0],
        ],
      }),
      'corrupt',
      /bit fields with 24 bits per pixel/,
    ],
    [
      'a zero mask',
      bmp({
        bpp: 16,
        compression: 3,
        masks: [0xf800, 0, 0x1f],
        rows: [
          [0, 0],
          [0, 0],
        ],
      }),
      'corrupt',
      /colour masks 0xf800, 0x0, 0x1f do not fit 16-bit pixels/,
    ],
    [
      'pixels inside the header',
      bmp({
        bpp: 24,
        offset: 30,
        rows: [
          [0, 0, 0],
          [0, 0, 0],
        ],
      }),
      'corrupt',
      /the pixel data \(byte 30\) would start inside the 54-byte header/,
    ],
  ];
  for (const [name, bytes, code, message] of cases) {
    await assert.rejects(decodeImage(bytes), (e: unknown) => e instanceof DecodeError && e.code === code && message.test(e.message), name);
  }
  const classifier = await loadClassifier(modelFile, { device: 'cpu' });
  const [noPalette] = await classifier.classifyBatch([cases[0][1]]);
  assert.ok(isError(noPalette) && noPalette.code === 'corrupt', JSON.stringify(noPalette));
  classifier.dispose();
});
