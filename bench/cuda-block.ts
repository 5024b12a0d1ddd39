// The ConvNeXt block training step (forward, backward, AdamW) of bench/engine.ts on one device, with bf16 autocast,
// timed with synchronisation: the hemato half of the GPU check (scripts/gpu-check.sh runs it beside
// bench/peers/torch_cuda_block.py, which does the same ops in PyTorch). Prints one JSON document on stdout.
//   node dist/bench/cuda-block.js [--device cuda|cpu] [--batch 128] [--size 56] [--channels 96] [--reps 10] [--fp32] [--channels-last]
import * as E from '../src/engine/index.js';
import { convnextBlock } from './blocks.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const device = E.resolveDevice(arg('device', 'cuda') as E.Device);
const batch = Number(arg('batch', '128'));
const size = Number(arg('size', '56'));
const c = Number(arg('channels', '96'));
const reps = Number(arg('reps', '10'));
const warmup = Number(arg('warmup', '3'));
const bf16 = !process.argv.includes('--fp32');
const channelsLast = process.argv.includes('--channels-last');
const autocastDevice = device.startsWith('cuda') ? 'cuda' : 'cpu';
const log = (message: string) => process.stderr.write(`${message}\n`);

E.manualSeed(0);
const block = convnextBlock({ batch, channels: c, size }, { device, channelsLast });
const p = block.params;
const forward = block.forward;

const optimizer = new E.AdamW(Object.values(p), { lr: 1e-4 });
let loss = NaN;
const step = () => {
  E.tidy(() => {
    const l = bf16 ? E.autocast(forward, { device: autocastDevice }) : forward();
    l.backward();
    loss = l.item();
  });
  optimizer.step();
  optimizer.zeroGrad();
};

log(
  `hemato ConvNeXt block step on ${device}: batch ${batch}, ${c}×${size}×${size}, ${bf16 ? 'bf16 autocast' : 'fp32'}${channelsLast ? ', channels_last' : ''}`,
);
for (let i = 0; i < warmup; i++) step();
E.synchronize();
const times: number[] = [];
for (let i = 0; i < reps; i++) {
  const start = performance.now();
  step();
  E.synchronize();
  times.push(performance.now() - start);
}
times.sort((a, b) => a - b);
const median = times.length % 2 ? times[times.length >> 1] : (times[times.length / 2 - 1] + times[times.length / 2]) / 2;
const memory = E.memoryReport();
optimizer.dispose();
block.free();

process.stdout.write(
  `${JSON.stringify({
    impl: 'hemato',
    torch: E.libtorchInfo().torchVersion,
    device,
    batch,
    channels: c,
    size,
    precision: bf16 ? 'bf16-autocast' : 'fp32',
    channels_last: channelsLast,
    step_ms: Math.round(median * 100) / 100,
    images_per_s: Math.round((batch / median) * 1000 * 10) / 10,
    loss,
    memory: memory.cuda.find((m) => m.device === (device === 'cuda' ? 'cuda:0' : device)) ?? null,
    live_tensors_after: E.liveTensors(),
  })}\n`,
);
