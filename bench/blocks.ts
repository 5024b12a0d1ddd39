// The ConvNeXt block both engine benchmarks time (bench/engine.ts on the CPU, bench/cuda-block.ts on a GPU):
// the same ops, in the same order, as the PyTorch peers in bench/peers/.
import * as E from '../src/engine/index.js';

const { F } = E;

export type Params = Record<string, E.Tensor>;

export interface BlockShape {
  batch: number;
  channels: number;
  size: number;
  heads?: number;
  window?: number;
}

/** A leaf parameter: scale·N(0, 1) + offset, on the device. */
export function param(shape: number[], scale = 1, offset = 0, device: E.Device = 'cpu'): E.Tensor {
  return E.keep(E.tidy(() => E.randn(shape).mul(scale).add(offset).to(device)).requiresGrad_());
}

/** Depthwise 7×7 conv, LayerNorm, a ×4 MLP with GELU, layer scale and the residual; forward() returns a scalar loss. */
export function convnextBlock(
  s: BlockShape,
  options: { device?: E.Device; channelsLast?: boolean } = {},
): { params: Params; forward: () => E.Tensor; free: () => void } {
  const c = s.channels;
  const device = options.device ?? 'cpu';
  const p: Params = {
    dw: param([c, 1, 7, 7], 0.1, 0, device),
    dwb: param([c], 0, 0, device),
    nw: param([c], 0, 1, device),
    nb: param([c], 0, 0, device),
    w1: param([4 * c, c], 0.05, 0, device),
    b1: param([4 * c], 0, 0, device),
    w2: param([c, 4 * c], 0.05, 0, device),
    b2: param([c], 0, 0, device),
    gamma: param([c], 0, 0.1, device),
  };
  const x = E.keep(
    E.tidy(() => {
      const t = E.randn([s.batch, c, s.size, s.size], { device });
      return options.channelsLast ? t.channelsLast() : t;
    }),
  );
  const forward = () => {
    let y = F.conv2d(x, p.dw, p.dwb, { padding: 3, groups: c }).permute([0, 2, 3, 1]);
    y = F.layerNorm(y, [c], p.nw, p.nb, 1e-6);
    y = F.linear(F.gelu(F.linear(y, p.w1, p.b1)), p.w2, p.b2);
    y = y.mul(p.gamma).permute([0, 3, 1, 2]);
    return x.add(y).float().pow(2).mean();
  };
  return { params: p, forward, free: () => E.dispose([p, x]) };
}
