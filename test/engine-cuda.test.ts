// The engine on CUDA, checked against the CPU: host/device copies, a matmul, a convolution (contiguous and
// channels_last), a bf16 autocast training step, synchronisation and the CUDA memory figures of the live-tensor
// report. Without a CUDA device the CUDA tests skip with 'no CUDA device'; they run in the offline bundle on
// a machine with a GPU (gpu-check.sh). The report's CPU-only shape is checked everywhere.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as E from '../src/engine/index.js';

const { F } = E;
const cuda = E.cudaAvailable();
const skip = cuda ? false : 'no CUDA device';

/** Relative L2 error of actual against reference. */
function relError(actual: E.Tensor, reference: E.Tensor): number {
  const a = actual.toArray();
  const r = reference.toArray();
  assert.equal(a.length, r.length);
  let diff2 = 0;
  let ref2 = 0;
  for (let i = 0; i < a.length; i++) {
    diff2 += (a[i] - r[i]) ** 2;
    ref2 += r[i] ** 2;
  }
  return Math.sqrt(diff2 / ref2);
}

test('the live-tensor report counts handles and lists CUDA memory per device', () => {
  const before = E.memoryReport();
  assert.equal(before.liveTensors, E.liveTensors());
  const t = E.zeros([4]);
  assert.equal(E.memoryReport().liveTensors, before.liveTensors + 1);
  t.dispose();
  const info = E.libtorchInfo();
  if (!info.cudaAvailable) {
    assert.deepEqual(before.cuda, []);
    assert.equal(before.cudaMemoryReadable, false);
  } else if (before.cudaMemoryReadable) {
    assert.equal(before.cuda.length, info.cudaDeviceCount);
    for (const d of before.cuda) assert.ok(d.reservedBytes >= d.allocatedBytes && d.peakAllocatedBytes >= d.allocatedBytes, JSON.stringify(d));
  }
});

test('a CUDA device request fails clearly without CUDA', { skip: cuda ? 'CUDA is present' : false }, () => {
  assert.throws(() => E.resolveDevice('cuda'), /sees no CUDA device/);
  assert.equal(E.resolveDevice('auto'), 'cpu');
});

test('host to device and back is exact, and ops stay on the device', { skip }, () => {
  E.tidy(() => {
    const host = E.randn([3, 5, 7], { seed: 1 });
    const dev = host.to('cuda');
    assert.equal(dev.device, 'cuda:0');
    assert.deepEqual(dev.shape, [3, 5, 7]);
    assert.equal(dev.mul(2).device, 'cuda:0');
    assert.deepEqual(dev.cpu().toArray(), host.toArray());
    assert.deepEqual(Array.from(dev.data() as Float32Array), host.toArray());
    assert.equal(E.randn([2, 2], { device: 'cuda', seed: 3 }).device, 'cuda:0');
    assert.equal(E.resolveDevice('auto'), 'cuda');
  });
});

test('matmul on cuda matches the CPU', { skip }, () => {
  E.tidy(() => {
    const a = E.randn([256, 384], { seed: 2 });
    const b = E.randn([384, 128], { seed: 3 });
    const onCuda = a.to('cuda').matmul(b.to('cuda'));
    E.synchronize();
    // cuBLAS fp32 (TF32 off by default in libtorch) against CPU fp32: rounding differences only.
    assert.ok(relError(onCuda.cpu(), a.matmul(b)) < 1e-5);
  });
});

test('conv2d on cuda matches the CPU, contiguous and channels_last', { skip }, () => {
  E.tidy(() => {
    const x = E.randn([4, 16, 20, 20], { seed: 4 });
    const w = E.randn([32, 16, 3, 3], { seed: 5 }).mul(0.1);
    const bias = E.randn([32], { seed: 6 });
    const reference = F.conv2d(x, w, bias, { padding: 1 });
    const xc = x.to('cuda');
    const wc = w.to('cuda');
    const bc = bias.to('cuda');
    // cuDNN may use TF32 for convolutions (libtorch's default): about 1e-3 relative.
    const plain = F.conv2d(xc, wc, bc, { padding: 1 });
    assert.ok(relError(plain.cpu(), reference) < 5e-3);
    const nhwc = F.conv2d(xc.channelsLast(), wc.channelsLast(), bc, { padding: 1 });
    assert.ok(nhwc.isContiguous('channelsLast'), 'a channels_last input gives a channels_last output');
    assert.ok(relError(nhwc.cpu(), reference) < 5e-3);
  });
});

test('a bf16 autocast training step on cuda matches fp32 on the CPU', { skip }, () => {
  E.tidy(() => {
    const x = E.randn([8, 16, 12, 12], { seed: 7 });
    const w1 = E.randn([24, 16, 3, 3], { seed: 8 }).mul(0.1);
    const w2 = E.randn([10, 24], { seed: 9 }).mul(0.1);
    const step = (device: 'cpu' | 'cuda', bf16: boolean) => {
      // detach(): on the CPU, to() returns w1 itself, which must not become a leaf that the CUDA copy derives from.
      const p1 = w1.to(device).detach().requiresGrad_();
      const p2 = w2.to(device).detach().requiresGrad_();
      const forward = () => {
        const h = F.gelu(F.conv2d(x.to(device), p1, undefined, { padding: 1 })).mean([2, 3]);
        return F.linear(h, p2);
      };
      const out = bf16 ? E.autocast(forward, { device: 'cuda' }) : forward();
      const loss = out.float().pow(2).mean();
      loss.backward();
      return { out, loss, g1: p1.grad!, g2: p2.grad! };
    };
    const ref = step('cpu', false);
    const amp = step('cuda', true);
    assert.equal(amp.out.dtype, 'bfloat16', 'linear runs in bf16 under CUDA autocast');
    assert.equal(amp.out.device, 'cuda:0');
    assert.equal(amp.g1.dtype, 'float32', 'gradients of fp32 parameters stay fp32');
    assert.equal(E.isAutocastEnabled('cuda'), false, 'the scope is closed afterwards');
    // bf16 keeps 8 significant bits: a few 1e-3 relative on outputs and gradients.
    assert.ok(relError(amp.out.float().cpu(), ref.out) < 2e-2);
    assert.ok(relError(amp.g1.cpu(), ref.g1) < 3e-2);
    assert.ok(relError(amp.g2.cpu(), ref.g2) < 3e-2);
  });
});

test('an optimizer state restored from CPU tensors follows its parameters to CUDA', { skip }, () => {
  E.tidy(() => {
    const p = E.randn([4, 3], { seed: 1 }).to('cuda').detach().requiresGrad_();
    const stepOnce = (optimizer: E.AdamW) => {
      E.tidy(() => p.pow(2).sum().backward());
      optimizer.step();
      optimizer.zeroGrad();
    };
    const first = new E.AdamW([p], { lr: 0.1 });
    stepOnce(first);
    const saved = first.stateDict();
    // As a checkpoint loads: every tensor on the CPU.
    const onHost = new Map([...saved.tensors].map(([key, t]) => [key, t.cpu()]));
    const second = new E.AdamW([p], { lr: 0.1 });
    second.loadStateDict({ tensors: onHost, json: saved.json });
    for (const [key, t] of second.stateDict().tensors) assert.equal(t.device, 'cuda:0', key);
    stepOnce(second);
    first.dispose();
    second.dispose();
  });
});

test('the CUDA memory figures follow an allocation and its release', { skip }, (t) => {
  if (!E.memoryReport().cudaMemoryReadable) {
    const info = E.libtorchInfo();
    t.skip(
      info.cudaMemoryStats
        ? `libtorch ${info.torchVersion}'s CUDA allocator is not a c10::DeviceAllocator: no memory figures`
        : `this build (libtorch ${info.torchVersion}) cannot read CUDA memory figures (needs 2.9 or newer)`,
    );
    return;
  }
  const bytes = 64 * 2 ** 20;
  E.synchronize();
  const before = E.memoryReport().cuda[0];
  const big = E.empty([bytes / 4], { device: 'cuda' });
  const during = E.memoryReport().cuda[0];
  assert.ok(during.allocatedBytes - before.allocatedBytes >= bytes, `${JSON.stringify(before)} -> ${JSON.stringify(during)}`);
  assert.ok(during.peakAllocatedBytes >= during.allocatedBytes);
  assert.ok(during.reservedBytes >= during.allocatedBytes);
  big.dispose();
  const after = E.memoryReport().cuda[0];
  assert.ok(during.allocatedBytes - after.allocatedBytes >= bytes, 'disposing frees the block at once');
});
