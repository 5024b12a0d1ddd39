// CPU features from /proc/cpuinfo, and the OpenBLAS kernels hemato names from them before libtorch loads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';

// Read before anything loads the addon, which names a core when none is set.
const userCore = process.env.OPENBLAS_CORETYPE;

const cpuinfo = (vendor: string, flags: string) =>
  `processor\t: 0\nvendor_id\t: ${vendor}\nmodel name\t: Test CPU\nflags\t\t: fpu sse sse2 ${flags}\n\nprocessor\t: 1\n`;
const AVX512 = 'avx2 fma avx512f avx512dq avx512bw avx512vl';

test('features are read from cpuinfo text', () => {
  const emerald = E.cpuFeatures(cpuinfo('GenuineIntel', `${AVX512} avx512_bf16 amx_bf16 amx_tile`));
  assert.deepEqual(emerald, { model: 'Test CPU', amx: true, avx512bf16: true, avx512: true, avx2: true, vendor: 'intel' });
  const partial = E.cpuFeatures(cpuinfo('AuthenticAMD', 'avx2 avx512f'));
  assert.deepEqual(partial, { model: 'Test CPU', amx: false, avx512bf16: false, avx512: false, avx2: false, vendor: 'amd' });
  assert.deepEqual(E.cpuFeatures(''), { model: 'unknown', amx: false, avx512bf16: false, avx512: false, avx2: false, vendor: 'other' });
});

test('the OpenBLAS core follows the instruction sets, and is left to OpenBLAS without AVX2', () => {
  const core = (vendor: string, flags: string) => E.openblasCoreFor(E.cpuFeatures(cpuinfo(vendor, flags)));
  assert.equal(core('GenuineIntel', `${AVX512} avx512_bf16 amx_bf16`), 'Cooperlake');
  assert.equal(core('AuthenticAMD', `${AVX512} avx512_bf16`), 'Cooperlake');
  assert.equal(core('GenuineIntel', AVX512), 'SkylakeX');
  assert.equal(core('GenuineIntel', 'avx2 fma'), 'Haswell');
  assert.equal(core('AuthenticAMD', 'avx2 fma'), 'Zen');
  assert.equal(core('GenuineIntel', 'avx avx2'), undefined, 'AVX2 without FMA');
  assert.equal(core('GenuineIntel', 'sse4_2 avx'), undefined);
});

test('libtorch runs the OpenBLAS core named for this CPU, or the one the user set', () => {
  const expected = userCore || E.openblasCoreFor(E.cpuFeatures());
  const running = E.libtorchInfo().openblasCore;
  if (!running) return; // this libtorch does not use OpenBLAS
  if (expected) assert.equal(running.toLowerCase(), expected.toLowerCase());
  assert.equal(process.env.OPENBLAS_CORETYPE, expected);
});
