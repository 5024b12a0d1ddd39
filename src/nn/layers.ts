// Building-block layers with PyTorch's parameter names (weight, bias) and timm's default initialisation.
import * as E from '../engine/index.js';
import { Module, type UnaryModule } from './module.js';
import { fanInUniform_, ones_, truncNormal_, zeros_ } from './init.js';

type Tensor = E.Tensor;

/** How a layer's weights start: timm's truncated normal (std 0.02, zero bias) or PyTorch's fan-in uniform. */
export type WeightInit = 'truncNormal' | 'fanInUniform';

function initWeightAndBias(weight: Tensor, bias: Tensor | undefined, init: WeightInit, fanIn: number): void {
  if (init === 'truncNormal') {
    truncNormal_(weight);
    if (bias) zeros_(bias);
  } else {
    fanInUniform_(weight, fanIn);
    if (bias) fanInUniform_(bias, fanIn);
  }
}

export interface LinearOptions {
  bias?: boolean;
  init?: WeightInit;
}

/** y = x Wᵀ + b over the last dim, so it works on NHWC maps and token sequences alike. */
export class Linear extends Module implements UnaryModule {
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    options: LinearOptions = {},
  ) {
    super();
    const weight = this.registerParameter('weight', E.empty([outFeatures, inFeatures]));
    const bias = (options.bias ?? true) ? this.registerParameter('bias', E.empty([outFeatures])) : undefined;
    initWeightAndBias(weight, bias, options.init ?? 'truncNormal', inFeatures);
    this.hasBias = bias !== undefined;
  }

  readonly hasBias: boolean;
  get weight(): Tensor {
    return this.parameter('weight');
  }
  get bias(): Tensor | undefined {
    return this.hasBias ? this.parameter('bias') : undefined;
  }

  /** Re-draws the weights, e.g. for a new classifier head. */
  resetParameters(init: WeightInit = 'truncNormal'): void {
    initWeightAndBias(this.weight, this.bias, init, this.inFeatures);
  }

  forward(x: Tensor): Tensor {
    return E.F.linear(x, this.weight, this.bias);
  }
}

export interface Conv2dOptions {
  stride?: number;
  padding?: number;
  groups?: number;
  bias?: boolean;
  init?: WeightInit;
}

export class Conv2d extends Module implements UnaryModule {
  readonly stride: number;
  readonly padding: number;
  readonly groups: number;
  readonly hasBias: boolean;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: number,
    options: Conv2dOptions = {},
  ) {
    super();
    this.stride = options.stride ?? 1;
    this.padding = options.padding ?? 0;
    this.groups = options.groups ?? 1;
    if (inChannels % this.groups !== 0 || outChannels % this.groups !== 0) {
      throw new RangeError(`Conv2d: groups=${this.groups} must divide ${inChannels} input and ${outChannels} output channels`);
    }
    const perGroup = inChannels / this.groups;
    const weight = this.registerParameter('weight', E.empty([outChannels, perGroup, kernelSize, kernelSize]));
    const bias = (options.bias ?? true) ? this.registerParameter('bias', E.empty([outChannels])) : undefined;
    this.hasBias = bias !== undefined;
    initWeightAndBias(weight, bias, options.init ?? 'truncNormal', perGroup * kernelSize * kernelSize);
  }

  get weight(): Tensor {
    return this.parameter('weight');
  }
  get bias(): Tensor | undefined {
    return this.hasBias ? this.parameter('bias') : undefined;
  }

  forward(x: Tensor): Tensor {
    return E.F.conv2d(x, this.weight, this.bias, { stride: this.stride, padding: this.padding, groups: this.groups });
  }
}

/** 1-D convolution over [N, C, L], without bias by default (ECA's channel attention uses one). */
export class Conv1d extends Module implements UnaryModule {
  readonly padding: number;
  readonly hasBias: boolean;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: number,
    options: { padding?: number; bias?: boolean } = {},
  ) {
    super();
    this.padding = options.padding ?? 0;
    const weight = this.registerParameter('weight', E.empty([outChannels, inChannels, kernelSize]));
    const bias = (options.bias ?? false) ? this.registerParameter('bias', E.empty([outChannels])) : undefined;
    this.hasBias = bias !== undefined;
    initWeightAndBias(weight, bias, 'fanInUniform', inChannels * kernelSize);
  }

  get weight(): Tensor {
    return this.parameter('weight');
  }
  get bias(): Tensor | undefined {
    return this.hasBias ? this.parameter('bias') : undefined;
  }

  forward(x: Tensor): Tensor {
    return E.F.conv1d(x, this.weight, this.bias, { padding: this.padding });
  }
}

/** Layer norm over the last dim (channels of NHWC maps, features of tokens). Computes in fp32 under autocast. */
export class LayerNorm extends Module implements UnaryModule {
  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
  ) {
    super();
    ones_(this.registerParameter('weight', E.empty([dim])));
    zeros_(this.registerParameter('bias', E.empty([dim])));
  }

  get weight(): Tensor {
    return this.parameter('weight');
  }
  get bias(): Tensor {
    return this.parameter('bias');
  }

  forward(x: Tensor): Tensor {
    return E.F.layerNorm(x, [this.dim], this.weight, this.bias, this.eps);
  }
}

/** Layer norm over the channels of an NCHW map, at every position (timm's LayerNorm2d). */
export class LayerNorm2d extends LayerNorm {
  constructor(dim: number, eps = 1e-6) {
    super(dim, eps);
  }

  override forward(x: Tensor): Tensor {
    return E.tidy(() => super.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2]));
  }
}

export class Identity extends Module implements UnaryModule {
  forward(x: Tensor): Tensor {
    return x;
  }
}

export class Dropout extends Module implements UnaryModule {
  constructor(readonly p: number) {
    super();
    if (!(p >= 0 && p < 1)) throw new RangeError(`Dropout: p must be in [0, 1), got ${p}`);
  }

  forward(x: Tensor): Tensor {
    return this.training && this.p > 0 ? E.F.dropout(x, this.p, true) : x;
  }
}

/**
 * Stochastic depth (Huang et al. 2016): in training, drops a residual branch for whole samples with probability p
 * and scales the kept ones by 1/(1−p), so the expectation is unchanged. Used on the branch before the residual add.
 */
export class DropPath extends Module implements UnaryModule {
  constructor(readonly p: number) {
    super();
    if (!(p >= 0 && p < 1)) throw new RangeError(`DropPath: p must be in [0, 1), got ${p}`);
  }

  forward(x: Tensor): Tensor {
    if (!this.training || this.p === 0) return x;
    const keep = 1 - this.p;
    const n = x.shape[0];
    const shard = batchShard && batchShard.total !== n ? batchShard : null;
    if (shard && shard.offset + n > shard.total)
      throw new RangeError(`DropPath: a batch of ${n} at offset ${shard.offset} does not fit in a global batch of ${shard.total}`);
    return E.tidy(() => {
      const ones = new Array<number>(x.ndim - 1).fill(1);
      // Draws for the whole global batch, keeping this process's rows: the generator advances as in one process.
      let draws = E.rand([shard ? shard.total : n, ...ones], { device: x.device as E.Device });
      if (shard) draws = draws.narrow(0, shard.offset, n);
      const mask = draws.lt(keep).to(x.dtype).div_(keep);
      return x.mul(mask);
    });
  }
}

/** Where this process's batch lies within the global batch of a data-parallel step. */
export interface BatchShard {
  offset: number;
  total: number;
}

let batchShard: BatchShard | null = null;

/**
 * Runs fn with drop path drawing for the whole global batch and keeping this process's rows, so that with the same
 * generator seed every sample gets the draw it would get if one process trained on the global batch.
 */
export function withBatchShard<T>(shard: BatchShard | null, fn: () => T): T {
  const before = batchShard;
  batchShard = shard;
  try {
    return fn();
  } finally {
    batchShard = before;
  }
}

/** Children named 0, 1, 2…, so keys read like timm's 'stages.0.blocks.1.conv_dw.weight'. */
export class ModuleList<M extends Module = Module> extends Module {
  readonly #items: M[] = [];

  constructor(items: Iterable<M> = []) {
    super();
    for (const item of items) this.append(item);
  }

  append(item: M): this {
    this.registerModule(String(this.#items.length), item);
    this.#items.push(item);
    return this;
  }

  get length(): number {
    return this.#items.length;
  }

  at(index: number): M {
    const item = this.#items[index];
    if (!item) throw new RangeError(`${this.constructor.name}: index ${index} is out of range (length ${this.#items.length})`);
    return item;
  }

  [Symbol.iterator](): Iterator<M> {
    return this.#items[Symbol.iterator]();
  }
}

/** Applies its children in order. Intermediate outputs are freed as soon as the next one exists. */
export class Sequential<M extends UnaryModule = UnaryModule> extends ModuleList<M> implements UnaryModule {
  forward(x: Tensor): Tensor {
    let out = x;
    for (const module of this) {
      const next = module.forward(out);
      // Autograd holds what backward needs, so freeing the handle only lowers peak memory in inference.
      if (out !== x && next !== out) out.dispose();
      out = next;
    }
    return out;
  }
}

/** Stochastic-depth rates rising linearly from 0 to maxRate over all blocks, split by stage (as timm does). */
export function dropPathRates(depths: readonly number[], maxRate: number): number[][] {
  const total = depths.reduce((a, b) => a + b, 0);
  const rates = Array.from({ length: total }, (_, i) => (total > 1 ? (maxRate * i) / (total - 1) : 0));
  let start = 0;
  return depths.map((depth) => rates.slice(start, (start += depth)));
}
