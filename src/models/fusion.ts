// Attention for fusing the two paths: ECA (Wang et al. 2020) gates each path's channels, AFF (Dai et al. 2021)
// mixes the two maps with a learned, position- and channel-wise weight. Everything works on NHWC maps, and every
// norm is a LayerNorm over channels, so training works at batch size 1 (BatchNorm, as in the papers, would not).
import * as E from '../engine/index.js';
import { Conv1d, LayerNorm, Linear, Module, type UnaryModule } from '../nn/index.js';

type Tensor = E.Tensor;

/** ECA's adaptive kernel size: k = |log2(C)/γ + b/γ|, rounded down and then up to the next odd number. */
export function ecaKernelSize(channels: number, gamma = 2, b = 1): number {
  if (!Number.isInteger(channels) || channels < 1) throw new RangeError(`ecaKernelSize: channels must be a positive integer, got ${channels}`);
  const t = Math.floor(Math.abs((Math.log2(channels) + b) / gamma));
  return t % 2 === 1 ? t : t + 1;
}

/** Efficient channel attention: pool, a 1-D conv across neighbouring channels, and a sigmoid gate. */
export class EfficientChannelAttention extends Module implements UnaryModule {
  readonly conv: Conv1d;

  constructor(readonly channels: number, gamma = 2, b = 1) {
    super();
    const k = ecaKernelSize(channels, gamma, b);
    this.conv = this.registerModule('conv', new Conv1d(1, 1, k, { padding: (k - 1) / 2 }));
  }

  get kernelSize(): number {
    return this.conv.kernelSize;
  }

  /** x: [B, H, W, C]. */
  forward(x: Tensor): Tensor {
    return E.tidy(() => {
      const [b, , , c] = x.shape;
      const pooled = x.mean([1, 2]).unsqueeze(1);  // [B, 1, C]: channels become the conv's length
      const gate = E.F.sigmoid(this.conv.forward(pooled)).view([b, 1, 1, c]);
      return x.mul(gate);
    });
  }
}

/** A 1×1 projection to the fusion width, then LayerNorm: brings both paths to one width and scale. */
export class Projection extends Module implements UnaryModule {
  readonly fc: Linear;
  readonly norm: LayerNorm;

  constructor(inDim: number, outDim: number) {
    super();
    this.fc = this.registerModule('fc', new Linear(inDim, outDim, { bias: false }));
    this.norm = this.registerModule('norm', new LayerNorm(outDim));
  }

  forward(x: Tensor): Tensor {
    return E.tidy(() => this.norm.forward(this.fc.forward(x)));
  }
}

/** Pointwise bottleneck over channels: Linear → LN → ReLU → Linear → LN (AFF's context branches). */
export class ChannelBottleneck extends Module implements UnaryModule {
  readonly fc1: Linear;
  readonly norm1: LayerNorm;
  readonly fc2: Linear;
  readonly norm2: LayerNorm;

  constructor(dim: number, hidden: number) {
    super();
    this.fc1 = this.registerModule('fc1', new Linear(dim, hidden));
    this.norm1 = this.registerModule('norm1', new LayerNorm(hidden));
    this.fc2 = this.registerModule('fc2', new Linear(hidden, dim));
    this.norm2 = this.registerModule('norm2', new LayerNorm(dim));
  }

  forward(x: Tensor): Tensor {
    return E.tidy(() => this.norm2.forward(this.fc2.forward(E.F.relu(this.norm1.forward(this.fc1.forward(x))))));
  }
}

/** AFF's multi-scale channel attention: M = σ(L(S) + G(S)), L on every position, G on the pooled vector. */
export class MultiScaleChannelAttention extends Module {
  readonly local: ChannelBottleneck;
  readonly global: ChannelBottleneck;

  constructor(dim: number, hidden: number) {
    super();
    this.local = this.registerModule('local', new ChannelBottleneck(dim, hidden));
    this.global = this.registerModule('global', new ChannelBottleneck(dim, hidden));
  }

  /** s: [B, H, W, C] → weights in (0, 1), same shape. */
  forward(s: Tensor): Tensor {
    return E.tidy(() => E.F.sigmoid(this.local.forward(s).add(this.global.forward(s.mean([1, 2], true)))));
  }
}

export interface AffOptions {
  /** Bottleneck ratio r of the context branches (AFF: 4). */
  reduction?: number;
  /** iAFF: a second attention, computed on the first fusion's result, decides the final mix. */
  iterative?: boolean;
}

/** Attentional feature fusion: Z = M·X + (1 − M)·Y with M = σ(L(X+Y) + G(X+Y)); optionally iterated (iAFF). */
export class AttentionalFeatureFusion extends Module {
  readonly attention: MultiScaleChannelAttention;
  readonly refinement: MultiScaleChannelAttention | undefined;

  constructor(readonly dim: number, options: AffOptions = {}) {
    super();
    const reduction = options.reduction ?? 4;
    const hidden = Math.max(1, Math.floor(dim / reduction));
    this.attention = this.registerModule('attention', new MultiScaleChannelAttention(dim, hidden));
    this.refinement = options.iterative ? this.registerModule('refinement', new MultiScaleChannelAttention(dim, hidden)) : undefined;
  }

  /** x, y: [B, H, W, C] of the same shape. */
  forward(x: Tensor, y: Tensor): Tensor {
    if (x.shape.join() !== y.shape.join()) throw new RangeError(`AFF: the maps differ in shape, [${x.shape}] vs [${y.shape}]`);
    return E.tidy(() => {
      const difference = x.sub(y);
      // M·X + (1 − M)·Y written as Y + M·(X − Y): one product instead of two.
      const mix = (weights: Tensor) => y.add(weights.mul(difference));
      const first = mix(this.attention.forward(x.add(y)));
      return this.refinement ? mix(this.refinement.forward(first)) : first;
    });
  }
}
