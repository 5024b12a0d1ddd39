// No size leak through geometry, and packs that read back exactly what was packed.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import sharp from 'sharp';
import { listImageFolder } from '../src/data/dataset.js';
import { cropToField, toModelGeometry } from '../src/data/geometry.js';
import { decodeImage, type RgbImage, readImageFile } from '../src/data/image.js';
import { readPack, readPackHeader, streamPack, writePack } from '../src/data/pack.js';
import { backgroundColours, prepareImage } from '../src/data/prepare.js';
import { resolveMpmConfig } from '../src/preprocess/mpm.js';

const PBC = path.resolve('../shared/data/pbc');

function maxDiff(a: Uint8Array, b: Uint8Array): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

async function withBorder(image: RgbImage, border: number, colour: { r: number; g: number; b: number }): Promise<RgbImage> {
  const png = await sharp(image.data, { raw: { width: image.width, height: image.height, channels: 3 } })
    .extend({ top: border, bottom: border, left: border, right: border, background: colour })
    .png()
    .toBuffer();
  return decodeImage(png);
}

test('size-leak property: a 360×363 PBC image and the same with a 3 px border (366×369) give the same model input', async () => {
  for (const file of ['basophil/BA_100102.jpg', 'platelet/PLATELET_100161.jpg', 'eosinophil/EO_10150.jpg']) {
    const original = await readImageFile(path.join(PBC, file));
    assert.deepEqual([original.width, original.height], [360, 363]);
    for (const colour of [
      { r: 0, g: 0, b: 0 },
      { r: 255, g: 255, b: 255 },
      { r: 200, g: 30, b: 160 },
    ]) {
      const bordered = await withBorder(original, 3, colour);
      assert.deepEqual([bordered.width, bordered.height], [366, 369]);
      const a = await toModelGeometry(original);
      const b = await toModelGeometry(bordered);
      assert.deepEqual([a.width, a.height], [128, 128]);
      assert.ok(maxDiff(a.data, b.data) <= 1, `${file} with a ${JSON.stringify(colour)} border differs`);
    }
  }
});

test('size-leak property on random content, for any border from 0 to 6 px', async () => {
  const base: RgbImage = { width: 360, height: 363, data: new Uint8Array(360 * 363 * 3) };
  let state = 12345;
  for (let i = 0; i < base.data.length; i++) base.data[i] = (state = (Math.imul(state, 1103515245) + 12345) >>> 0) >>> 24;
  const reference = await toModelGeometry(base);
  for (let border = 0; border <= 6; border++) {
    const bordered = await withBorder(base, border, { r: 17, g: 99, b: 230 });
    assert.ok(maxDiff(reference.data, (await toModelGeometry(bordered)).data) <= 1, `border ${border}`);
  }
});

test('fields: 360×360 is cut without loss, a 359 px side is padded with the background colour, never its edge', () => {
  const image = (w: number, h: number): RgbImage => ({ width: w, height: h, data: Uint8Array.from({ length: w * h * 3 }, (_, i) => i % 251) });
  const square = image(360, 360);
  assert.deepEqual(cropToField(square, 360).data, square.data);
  const narrow = cropToField(image(359, 360), 360, [240, 220, 200]);
  assert.deepEqual([narrow.width, narrow.height], [360, 360]);
  // The offset rounds down, so the one missing column is added on the left.
  for (let y = 0; y < 360; y++) assert.deepEqual([...narrow.data.subarray(y * 360 * 3, (y * 360 + 1) * 3)], [240, 220, 200], 'first column is background');
  assert.deepEqual([...narrow.data.subarray(3, 6)], [...image(359, 360).data.subarray(0, 3)], 'the image starts in the second column');
  assert.deepEqual(cropToField(image(40, 30), null).width, 30);
});

const folders: string[] = [];
after(() => folders.forEach((f) => rmSync(f, { recursive: true, force: true })));

async function makeFolder(): Promise<string> {
  const root = mkdtempSync(path.join(tmpdir(), 'hemato-pack-'));
  folders.push(root);
  for (const [c, files] of Object.entries({ basophil: ['BA_100102.jpg', 'BA_127671.jpg'], platelet: ['PLATELET_100161.jpg'], lymphocyte: ['LY_100275.jpg'] })) {
    mkdirSync(path.join(root, c));
    for (const f of files) writeFileSync(path.join(root, c, f), readFileSync(path.join(PBC, c, f)));
  }
  writeFileSync(path.join(root, 'platelet/broken.jpg'), 'not an image');
  return root;
}

test('pack (PNG blobs) reads back exactly the model inputs, with labels, files, skips and the measured reference', async () => {
  const root = await makeFolder();
  const listing = await listImageFolder(root);
  const out = path.join(root, 'set.pack');
  const header = await writePack(listing.items, out, { classes: listing.classes, codec: 'png', threads: 2, source: root });
  assert.equal(header.count, 4);
  assert.deepEqual(
    header.skipped.map((s) => [s.path, s.reason]),
    [['platelet/broken.jpg', 'not-image']],
  );
  const pack = await readPack(out);
  assert.equal(pack.n, 4);
  assert.equal(pack.images.length, 4 * 128 * 128 * 3);
  assert.deepEqual(pack.files, ['basophil/BA_100102.jpg', 'basophil/BA_127671.jpg', 'lymphocyte/LY_100275.jpg', 'platelet/PLATELET_100161.jpg']);
  assert.deepEqual([...pack.labels], [0, 0, 4, 7]);
  // PBC's red cells are about 75 px across at 360 px, on a cream background.
  assert.ok(header.scale && header.scale.rbcDiameter > 60 && header.scale.rbcDiameter < 90, JSON.stringify(header.scale));
  const background = backgroundColours(header.background);
  assert.ok(
    background?.some((c) => c[0] > 200 && c[2] < c[0]),
    JSON.stringify(header.background),
  );
  assert.ok(header.stain && header.stain.haematoxylin[0] < header.stain.haematoxylin[1], JSON.stringify(header.stain));
  const recipe = { geometry: header.geometry, mpm: null, scale: header.scale ?? null, background, stain: header.stain ?? null };
  for (let i = 0; i < pack.n; i++) {
    const expected = await prepareImage(await readImageFile(path.join(root, pack.files[i])), recipe);
    assert.deepEqual(pack.images.subarray(i * 128 * 128 * 3, (i + 1) * 128 * 128 * 3), expected.image.data, pack.files[i]);
  }
  const streamed: Uint8Array[] = [];
  for await (const batch of streamPack(out, { batchSize: 3 })) streamed.push(batch.images);
  assert.deepEqual(Buffer.concat(streamed), Buffer.from(pack.images));
});

test('the default pack codec is lossless: the same pixels as PNG, in fewer bytes', async () => {
  const root = await makeFolder();
  const listing = await listImageFolder(root);
  const png = await writePack(listing.items, path.join(root, 'png.pack'), { classes: listing.classes, codec: 'png', threads: 1 });
  const byDefault = await writePack(listing.items, path.join(root, 'default.pack'), { classes: listing.classes, threads: 1 });
  assert.equal(byDefault.codec, 'webp-lossless');
  const [a, b] = [await readPack(path.join(root, 'png.pack')), await readPack(path.join(root, 'default.pack'))];
  assert.deepEqual(Buffer.from(b.images), Buffer.from(a.images));
  const bytes = (h: typeof png) => h.entries.reduce((n, e) => n + e.length, 0);
  assert.ok(bytes(byDefault) < bytes(png), `${bytes(byDefault)} bytes against PNG's ${bytes(png)}`);
});

test('pack with WebP and MPM: compact, close to its source, config and parts recorded', async () => {
  const root = await makeFolder();
  const listing = await listImageFolder(root);
  const items = listing.items.map((item, i) => ({ ...item, part: i === 0 ? ('val' as const) : ('train' as const) }));
  const mpm = resolveMpmConfig();
  const out = path.join(root, 'mpm.pack');
  await writePack(items, out, { classes: listing.classes, mpm, codec: 'webp', splitHash: 'abc', threads: 1 });
  const { header } = await readPackHeader(out);
  assert.deepEqual(header.mpm, mpm);
  assert.equal(header.codec, 'webp');
  assert.equal(header.splitHash, 'abc');
  const pack = await readPack(out, { parts: ['val'] });
  assert.equal(pack.n, 1);
  assert.deepEqual(pack.parts, ['val']);
  const blobBytes = header.entries.reduce((n, e) => n + e.length, 0) / header.count;
  assert.ok(blobBytes < 12_000, `mean blob ${blobBytes} bytes`);
  await assert.rejects(readPack(path.join(root, 'basophil/BA_100102.jpg')), /not a hemato pack/);
});

test('a damaged pack is refused when it is opened or decoded, naming the pack and the damage', async () => {
  const root = await makeFolder();
  const listing = await listImageFolder(root);
  const good = path.join(root, 'good.pack');
  await writePack(listing.items, good, { classes: listing.classes, geometry: { field: 360, size: 32 }, codec: 'png', threads: 1 });
  const bytes = readFileSync(good);
  const headerLength = bytes.readUInt32LE(8);
  const header = JSON.parse(bytes.subarray(12, 12 + headerLength).toString('utf8'));
  const data = bytes.subarray(12 + headerLength);
  const damaged = path.join(root, 'damaged.pack');
  const withHeader = (json: string, blobs: Uint8Array = data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32LE(Buffer.byteLength(json));
    writeFileSync(damaged, Buffer.concat([bytes.subarray(0, 8), length, Buffer.from(json), blobs]));
  };
  const edited = (edit: (h: typeof header) => void) => {
    const copy = structuredClone(header);
    edit(copy);
    withHeader(JSON.stringify(copy));
  };
  const refused = async (message: RegExp, readers: (() => Promise<unknown>)[] = [() => readPack(damaged), () => readPackHeader(damaged)]) => {
    for (const read of readers)
      await assert.rejects(read(), (error: Error) => {
        assert.match(error.message, /^.*damaged\.pack/);
        assert.match(error.message, message);
        return true;
      });
  };
  const decoding = [() => readPack(damaged), () => streamPack(damaged).next()];

  // Random bytes over an image entry, and an entry whose offset points into the middle of another.
  const scrambled = Buffer.from(data);
  for (let i = 0; i < 64; i++) scrambled[header.entries[1].offset + i] = (i * 97 + 13) % 256;
  withHeader(JSON.stringify(header), scrambled);
  await refused(/damaged pack \(entry basophil\/BA_127671\.jpg does not decode: .+\); make the pack again with hemato pack$/, decoding);
  edited((h) => (h.entries[2].offset += 5));
  await refused(/damaged pack \(entry lymphocyte\/LY_100275\.jpg does not decode/, decoding);

  withHeader(JSON.stringify(header).replace(',', ';'));
  await refused(/damaged pack \(the header is not JSON: .+\); make the pack again with hemato pack$/);
  edited((h) => (h.entries[0].label = 99));
  await refused(/damaged pack \(entry 0 \(basophil\/BA_100102\.jpg\): label 99 is not a class index in 0\.\.7\)/);
  edited((h) => (h.classes[1] = h.classes[0]));
  await refused(/class "basophil" is named twice/);
  edited((h) => (h.entries[3].offset = data.length));
  await refused(/entry 3 \(platelet\/PLATELET_100161\.jpg\): bytes \d+ \+ \d+ do not lie within the \d+ bytes of images/);
  edited((h) => (h.count = 7));
  await refused(/count 7 but 4 entries/);
  edited((h) => {
    h.entries = [];
    h.count = 0;
  });
  await refused(/damaged\.pack holds no images; make the pack again with hemato pack/);
  // What was written whole reads back.
  assert.equal((await readPack(good)).n, 4);
});

test('pack refuses a size no model trains at and an --out that is its own --split; it says whether it replaced a pack', async () => {
  const root = await makeFolder();
  const hemato = (...args: string[]) => spawnSync(process.execPath, ['bin/hemato.js', 'pack', root, '--threads', '1', ...args], { encoding: 'utf8' });
  for (const size of ['33', '48']) {
    const run = hemato('--size', size, '--out', path.join(root, 'odd.pack'));
    assert.equal(run.status, 2, run.stderr);
    assert.match(run.stderr, new RegExp(`--size must be a multiple of 32 .*got ${size}`));
  }
  const split = path.join(root, 'mine.csv');
  const csv = 'file,label,part\nbasophil/BA_100102.jpg,basophil,train\nbasophil/BA_127671.jpg,basophil,val\nbasophil/gone.jpg,basophil,train\n';
  writeFileSync(split, csv);
  const onItself = hemato('--split', split, '--size', '32', '--out', split);
  assert.equal(onItself.status, 2, onItself.stderr);
  assert.match(onItself.stderr, /--out .*mine\.csv is the --split file this command reads, and would replace it; give another --out/);
  assert.equal(readFileSync(split, 'utf8'), csv);

  const out = path.join(root, 'notes.txt');
  writeFileSync(out, 'some notes');
  for (const earlier of ['file', 'pack']) {
    const run = hemato('--split', split, '--size', '32', '--out', out);
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, new RegExp(`notes\\.txt: 2 images at 32 px.*\\(replaced the earlier ${earlier}\\)`));
    assert.match(run.stdout, /skipped basophil\/gone\.jpg {2}\[missing\] no such file/);
  }
});
