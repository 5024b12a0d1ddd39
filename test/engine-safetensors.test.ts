// safetensors: round trips in every dtype, metadata, and the files timm wrote.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { SHARED } from './helpers.js';

test('every dtype round-trips with its metadata', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-st-'));
  const file = path.join(dir, 'all.safetensors');
  const originals = new Map(E.DTYPES.map((dtype) => [`t_${dtype}`, E.arange(6, undefined, 1, { dtype: 'float32' }).reshape([2, 3]).to(dtype)]));
  await E.saveSafetensors(file, originals, { format: 'pt', note: 'hello' });
  const loaded = await E.loadSafetensors(file);
  assert.deepEqual(loaded.metadata, { format: 'pt', note: 'hello' });
  for (const [name, original] of originals) {
    const copy = loaded.tensors.get(name)!;
    assert.equal(copy.dtype, original.dtype, name);
    assert.deepEqual(copy.shape, [2, 3], name);
    assert.deepEqual(copy.toArray(), original.toArray(), name);
  }
  E.dispose([originals, loaded.tensors]);
});

test('a save is whole or nothing: a failed one leaves no temporary, and one left by a killed writer is removed', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-st-'));
  const weights = { w: E.arange(4, undefined, 1, { dtype: 'float32' }) };
  const folder = path.join(dir, 'model.safetensors');
  mkdirSync(folder); // a folder where the file should go: the rename fails
  await assert.rejects(E.saveSafetensors(folder, weights));
  assert.deepEqual(readdirSync(dir), ['model.safetensors']);
  const file = path.join(dir, 'kept.safetensors');
  writeFileSync(`${file}.999999999.tmp`, 'half of a model'); // no process has this id
  await E.saveSafetensors(file, weights);
  assert.deepEqual(readdirSync(dir).sort(), ['kept.safetensors', 'model.safetensors']);
  const loaded = await E.loadSafetensors(file);
  assert.deepEqual(loaded.tensors.get('w')!.toArray(), [0, 1, 2, 3]);
  E.dispose([weights, loaded.tensors]);
});

test('the timm fixtures load with every key, shape and value', async () => {
  const dir = path.join(SHARED, 'fixtures/timm');
  for (const name of readdirSync(dir).filter((f) => f.endsWith('.safetensors'))) {
    const bytes = readFileSync(path.join(dir, name));
    const headerLength = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as Record<
      string,
      { dtype: string; shape: number[]; data_offsets: [number, number] }
    >;
    const { tensors } = E.parseSafetensors(bytes, name);
    const keys = Object.keys(header).filter((k) => k !== '__metadata__');
    assert.deepEqual([...tensors.keys()].sort(), keys.sort(), name);
    for (const key of keys) {
      const entry = header[key];
      const t = tensors.get(key)!;
      assert.deepEqual(t.shape, entry.shape, `${name}:${key}`);
      // Values: compare against the raw little-endian float32 bytes of the file.
      const start = 8 + headerLength + entry.data_offsets[0];
      const raw = new Float32Array(bytes.buffer.slice(bytes.byteOffset + start, bytes.byteOffset + 8 + headerLength + entry.data_offsets[1]));
      assert.equal(entry.dtype, 'F32');
      assert.deepEqual(t.data(), raw, `${name}:${key}`);
    }
    E.dispose(tensors);
  }
});

test('damaged files give errors that name the defect', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'hemato-st-bad-'));
  assert.throws(() => E.parseSafetensors(new Uint8Array(3)), /too short/);
  const header = Buffer.from(JSON.stringify({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }));
  const truncated = Buffer.concat([Buffer.alloc(8), header, Buffer.alloc(8)]);
  truncated.writeBigUInt64LE(BigInt(header.length), 0);
  assert.throws(() => E.parseSafetensors(truncated, 'cut.safetensors'), /cut.safetensors: tensor 'w' has offsets/);
  const garbage = Buffer.concat([Buffer.alloc(8), Buffer.from('{nope')]);
  garbage.writeBigUInt64LE(5n, 0);
  assert.throws(() => E.parseSafetensors(garbage), /not valid JSON/);
  writeFileSync(path.join(dir, 'x'), '');
  return assert.rejects(E.loadSafetensors(path.join(dir, 'missing.safetensors')), /no such file/);
});
