// Decoding: unusual but valid files become the right 8-bit RGB; broken files give one clear error each.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import * as bmp from 'bmp-ts';
import sharp from 'sharp';
import { DecodeError, decodeImage, readImageFile } from '../src/data/image.js';
import { pngBomb } from './bad-inputs.js';

const W = 24;
const H = 16;
/** A left half of one colour and a right half of another, so channel order and orientation both show. */
function halves(left: number[], right: number[], channels = left.length): Buffer {
  const data = Buffer.alloc(W * H * channels);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) data.set(x < W / 2 ? left : right, (y * W + x) * channels);
  return data;
}
const raw = (data: Buffer, channels: 1 | 2 | 3 | 4) => sharp(data, { raw: { width: W, height: H, channels } });
const RED_BLUE = halves([220, 30, 40], [20, 40, 200]);

function pixel(image: { width: number; data: Uint8Array }, x: number, y: number): number[] {
  return [...image.data.subarray((y * image.width + x) * 3, (y * image.width + x) * 3 + 3)];
}
function near(actual: number[], expected: number[], tolerance: number, what: string): void {
  assert.ok(
    actual.every((v, i) => Math.abs(v - expected[i]) <= tolerance),
    `${what}: got ${actual}, expected ${expected} ±${tolerance}`,
  );
}
async function rejects(bytes: Uint8Array, code: string, message: RegExp, maxPixels?: number): Promise<void> {
  await assert.rejects(decodeImage(bytes, { maxPixels }), (error: unknown) => {
    assert.ok(error instanceof DecodeError, `expected a DecodeError, got ${error}`);
    assert.equal(error.code, code, error.message);
    assert.match(error.message, message);
    return true;
  });
}

test('8-bit PNG, progressive JPEG, TIFF and WebP decode to RGB with the right colours', async () => {
  for (const [name, bytes, tolerance] of [
    ['png', await raw(RED_BLUE, 3).png().toBuffer(), 0],
    ['progressive jpeg', await raw(RED_BLUE, 3).jpeg({ quality: 95, progressive: true }).toBuffer(), 12],
    ['tiff', await raw(RED_BLUE, 3).tiff({ compression: 'lzw' }).toBuffer(), 0],
    ['webp', await raw(RED_BLUE, 3).webp({ lossless: true }).toBuffer(), 0],
  ] as const) {
    const image = await decodeImage(bytes);
    assert.deepEqual([image.width, image.height, image.data.length], [W, H, W * H * 3], name);
    near(pixel(image, 2, 8), [220, 30, 40], tolerance, `${name} left`);
    near(pixel(image, W - 3, 8), [20, 40, 200], tolerance, `${name} right`);
  }
});

test('16-bit PNG becomes 8-bit', async () => {
  const bytes = await raw(halves([255, 128, 0], [0, 64, 255]), 3)
    .toColourspace('rgb16')
    .png()
    .toBuffer();
  assert.equal((await sharp(bytes).metadata()).depth, 'ushort', 'the test file must really be 16-bit');
  const image = await decodeImage(bytes);
  near(pixel(image, 1, 1), [255, 128, 0], 1, '16-bit png left');
  near(pixel(image, W - 1, 1), [0, 64, 255], 1, '16-bit png right');
});

test('greyscale PNG becomes three equal channels', async () => {
  const bytes = await raw(halves([50], [200], 1), 1)
    .toColourspace('b-w')
    .png()
    .toBuffer();
  assert.equal((await sharp(bytes).metadata()).channels, 1);
  const image = await decodeImage(bytes);
  assert.deepEqual(pixel(image, 1, 1), [50, 50, 50]);
  assert.deepEqual(pixel(image, W - 1, 1), [200, 200, 200]);
});

test('RGBA PNG is flattened onto white', async () => {
  const bytes = await raw(halves([0, 0, 0, 0], [0, 0, 255, 255], 4), 4)
    .png()
    .toBuffer();
  const image = await decodeImage(bytes);
  assert.deepEqual(pixel(image, 1, 1), [255, 255, 255], 'transparent becomes white');
  assert.deepEqual(pixel(image, W - 1, 1), [0, 0, 255], 'opaque keeps its colour');
});

test('CMYK JPEG is converted to sRGB', async () => {
  const bytes = await raw(RED_BLUE, 3).toColourspace('cmyk').jpeg({ quality: 95 }).toBuffer();
  assert.equal((await sharp(bytes).metadata()).space, 'cmyk');
  const image = await decodeImage(bytes);
  const [r, g, b] = pixel(image, 2, 8);
  assert.ok(r > 150 && g < 110 && b < 110, `left should be red, got ${r},${g},${b}`);
  const [r2, g2, b2] = pixel(image, W - 3, 8);
  assert.ok(b2 > 130 && r2 < 110, `right should be blue, got ${r2},${g2},${b2}`);
});

test('BMP (24-bit, bottom-up) decodes through the BMP decoder', async () => {
  const abgr = Buffer.alloc(W * H * 4);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) abgr.set(x < W / 2 ? [0, 40, 30, 220] : [0, 200, 40, 20], (y * W + x) * 4);
  const bytes = bmp.encode({ data: abgr, width: W, height: H, bitPP: 24 }).data;
  assert.equal(bytes.subarray(0, 2).toString('ascii'), 'BM');
  const image = await decodeImage(bytes);
  assert.deepEqual([image.width, image.height], [W, H]);
  assert.deepEqual(pixel(image, 1, 1), [220, 30, 40]);
  assert.deepEqual(pixel(image, W - 1, H - 1), [20, 40, 200]);
});

test('broken files: each gets its own clear error', async () => {
  const jpeg = await raw(RED_BLUE, 3).jpeg().toBuffer();
  await rejects(new Uint8Array(0), 'empty', /empty file/);
  await rejects(jpeg.subarray(0, Math.floor(jpeg.length / 2)), 'truncated', /truncated JPEG/);
  await rejects(jpeg.subarray(0, jpeg.length - 40), 'truncated', /truncated JPEG/);
  await rejects(Buffer.from('label,file\nthis is not an image\n'), 'not-image', /not an image: text file/);
  await rejects(Buffer.from([0, 0, 0, 1, 0x42, 0x75, 0x64, 0x31, 0, 0]), 'not-image', /DS_Store/);
  await rejects(Buffer.from('GIF89a\x01\x00\x01\x00'), 'unsupported', /GIF/);
  // Formats a lab may export that are images, but not ones hemato decodes: named, with the conversion to make.
  const dicom = Buffer.concat([Buffer.alloc(128), Buffer.from('DICM\x02\x00\x00\x00')]);
  await rejects(dicom, 'unsupported', /^unsupported image format: DICOM \(export the image .* as PNG or TIFF\)$/);
  await rejects(Buffer.from([0, 0, 0, 0x0c, 0x6a, 0x50, 0x20, 0x20, 0x0d, 0x0a, 0x87, 0x0a]), 'unsupported', /JPEG 2000/);
  await rejects(Buffer.from([0xff, 0x4f, 0xff, 0x51, 0, 0x2f]), 'unsupported', /JPEG 2000/);
  await rejects(Buffer.from([0xff, 0x0a, 0xfa, 0x7f]), 'unsupported', /JPEG XL/);
  await rejects(Buffer.from('8BPS\x00\x01\x00\x00'), 'unsupported', /Photoshop/);
  const svg = '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>';
  await rejects(Buffer.from(svg), 'unsupported', /SVG drawing \(convert it to PNG\)/);
  await rejects(Buffer.from('<html><body>an svg-free page</body></html>'), 'not-image', /not an image: text file/);
  const bmpBytes = bmp.encode({ data: Buffer.alloc(W * H * 4), width: W, height: H, bitPP: 24 }).data;
  await rejects(bmpBytes.subarray(0, 80), 'truncated', /truncated BMP/);
  // A PNG that ends after its header: libvips' message for it ends in a colon with nothing after it.
  const png = await raw(RED_BLUE, 3).png().toBuffer();
  const headerOnly = Buffer.concat([png.subarray(0, png.indexOf('IDAT', 8, 'latin1') - 4), png.subarray(png.length - 12)]);
  await rejects(headerOnly, 'corrupt', /^corrupt PNG: header: [^\n]*[^:\s]$/);
});

test('a huge declared size is refused from the header, before any pixel is allocated', async () => {
  await rejects(await pngBomb(100_000), 'too-large', /100000×100000 .* exceeds the pixel limit/);
  const bomb = Buffer.from(bmp.encode({ data: Buffer.alloc(W * H * 4), width: W, height: H, bitPP: 24 }).data);
  bomb.writeInt32LE(100_000, 18);
  bomb.writeInt32LE(100_000, 22);
  await rejects(bomb, 'too-large', /exceeds the pixel limit/);
  await rejects(await raw(RED_BLUE, 3).png().toBuffer(), 'too-large', /24×16 \(384 pixels\) exceeds the pixel limit of 100 pixels/, 100);
  // Under the pixel limit, but millions of rows would take libvips minutes to decode.
  const strip = await sharp({ create: { width: 1, height: 70_000, channels: 3, background: '#ddd' } })
    .png()
    .toBuffer();
  await rejects(strip, 'too-large', /1×70000 has a side longer than 65535 px/);
});

test('readImageFile names a missing file as unreadable', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-decode-'));
  writeFileSync(path.join(dir, 'ok.png'), await raw(RED_BLUE, 3).png().toBuffer());
  assert.equal((await readImageFile(path.join(dir, 'ok.png'))).width, W);
  await assert.rejects(readImageFile(path.join(dir, 'missing.png')), (e: unknown) => e instanceof DecodeError && e.code === 'unreadable');
  rmSync(dir, { recursive: true, force: true });
});
