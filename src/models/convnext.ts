// ConvNeXt v1 (Liu et al. 2022) with timm's semantics and parameter names, so timm checkpoints load by name.
import * as E from '../engine/index.js';
import { Conv2d, DropPath, Identity, LayerNorm, LayerNorm2d, Linear, Module, ModuleList, Sequential, dropPathRates, type UnaryModule } from '../nn/index.js';
import { ClassifierHead, ImageClassifier } from './classifier.js';
import { registerModel } from './registry.js';

type Tensor = E.Tensor;

export interface ConvNeXtConfig {
  depths: readonly number[];
  dims: readonly number[];
  /**
   * timm's conv_mlp: the MLP is stored as 1×1 convs and the block norm as LayerNorm2d (atto…nano); otherwise as
   * Linear layers and LayerNorm (tiny, small). Only the stored shapes differ; both compute the same function.
   */
  convMlp: boolean;
  /** 0 builds a backbone without a head (the dual-path network's ConvNeXt path). */
  numClasses: number;
  inChannels?: number;
  dropPathRate?: number;
  /** Dropout before the classifier. */
  dropRate?: number;
  /** The layer scale's initial value (timm: 1e-6). */
  layerScaleInit?: number;
  /** The side of the square inputs this model is meant for; any multiple of 32 works. */
  inputSize?: number;
  /**
   * timm's stem_type: 'patch' (default) cuts 4×4 patches; 'overlap' is two overlapping 3×3 convs of stride 2, and
   * 'overlap_tiered' the same with half the width between them (timm's _ols variants). Both keep detail a
   * patchify stem throws away, which matters at small inputs.
   */
  stemType?: 'patch' | 'overlap' | 'overlap_tiered';
}

const NORM_EPS = 1e-6;

/**
 * A pointwise layer of the block's MLP on NHWC maps: a Linear, or a 1×1 conv stored as timm stores it. Both run as
 * a matmul over the channels, except on the CPU in fp32, where libtorch's 1×1 conv (oneDNN) on the channels-last view
 * takes about half the time of the BLAS matmul for these narrow layers, forward and backward (docs/benchmarks.md).
 * Under bf16 autocast the matmul is the faster. The same function either way, and no copies.
 */
function pointwise(layer: Linear | Conv2d, x: Tensor, asConv: boolean): Tensor {
  const [outChannels, inChannels] = layer instanceof Linear ? [layer.outFeatures, layer.inFeatures] : [layer.outChannels, layer.inChannels];
  return E.tidy(() => asConv
    ? E.F.conv2d(x.permute([0, 3, 1, 2]), layer.weight.view([outChannels, inChannels, 1, 1]), layer.bias).permute([0, 2, 3, 1])
    : E.F.linear(x, layer.weight.view([outChannels, inChannels]), layer.bias));
}

class ConvNeXtMlp extends Module {
  readonly fc1: Linear | Conv2d;
  readonly fc2: Linear | Conv2d;

  constructor(dim: number, hidden: number, convMlp: boolean) {
    super();
    this.fc1 = this.registerModule('fc1', convMlp ? new Conv2d(dim, hidden, 1) : new Linear(dim, hidden));
    this.fc2 = this.registerModule('fc2', convMlp ? new Conv2d(hidden, dim, 1) : new Linear(hidden, dim));
  }

  /** On NHWC maps. */
  forward(x: Tensor): Tensor {
    const asConv = x.device === 'cpu' && x.dtype === 'float32' && !E.isAutocastEnabled('cpu');
    return E.tidy(() => pointwise(this.fc2, E.F.gelu(pointwise(this.fc1, x, asConv)), asConv));
  }
}

/** Depthwise 7×7 conv, norm, MLP (4×), layer scale, drop path and the residual. */
export class ConvNeXtBlock extends Module implements UnaryModule {
  readonly convDw: Conv2d;
  readonly norm: LayerNorm;
  readonly mlp: ConvNeXtMlp;
  readonly dropPath: UnaryModule;

  constructor(readonly dim: number, options: { convMlp: boolean; dropPath: number; layerScaleInit: number }) {
    super();
    // timm registers gamma first; the order only shows in namedParameters().
    E.noGrad(() => this.registerParameter('gamma', E.full([dim], options.layerScaleInit)));
    this.convDw = this.registerModule('conv_dw', new Conv2d(dim, dim, 7, { padding: 3, groups: dim }));
    this.norm = this.registerModule('norm', options.convMlp ? new LayerNorm2d(dim, NORM_EPS) : new LayerNorm(dim, NORM_EPS));
    this.mlp = this.registerModule('mlp', new ConvNeXtMlp(dim, 4 * dim, options.convMlp));
    this.dropPath = this.registerModule('drop_path', options.dropPath > 0 ? new DropPath(options.dropPath) : new Identity());
  }

  get gamma(): Tensor { return this.parameter('gamma'); }

  forward(x: Tensor): Tensor {
    return E.tidy(() => {
      // Channels last from here: on a channels-last map this permute is free and LayerNorm and the MLP need no copy.
      const nhwc = this.convDw.forward(x).permute([0, 2, 3, 1]);
      // LayerNorm2d's weights are LayerNorm's over the channel dim; apply them as such on NHWC.
      const normed = E.F.layerNorm(nhwc, [this.dim], this.norm.weight, this.norm.bias, this.norm.eps);
      const branch = this.mlp.forward(normed).mul(this.gamma).permute([0, 3, 1, 2]);
      return this.dropPath.forward(branch).add(x);
    });
  }
}

class ConvNeXtStage extends Module implements UnaryModule {
  readonly downsample: UnaryModule;
  readonly blocks: Sequential<ConvNeXtBlock>;

  constructor(inDim: number, outDim: number, downsample: boolean, blocks: ConvNeXtBlock[]) {
    super();
    this.downsample = this.registerModule('downsample', downsample
      ? new Sequential([new LayerNorm2d(inDim, NORM_EPS), new Conv2d(inDim, outDim, 2, { stride: 2 })])
      : new Identity());
    this.blocks = this.registerModule('blocks', new Sequential(blocks));
  }

  forward(x: Tensor): Tensor {
    return E.tidy(() => this.blocks.forward(this.downsample.forward(x)));
  }
}

/** timm's make_divisible: the nearest multiple of 8, never more than 10 % below the value. */
function makeDivisible(value: number, divisor = 8): number {
  const rounded = Math.max(divisor, Math.floor((value + divisor / 2) / divisor) * divisor);
  return rounded < 0.9 * value ? rounded + divisor : rounded;
}

/** The stride-4 stem, keyed as timm's: stem.0 (and stem.1) the convs, then the norm. */
function stem(inChannels: number, width: number, type: NonNullable<ConvNeXtConfig['stemType']>): Sequential {
  if (type === 'patch') return new Sequential([new Conv2d(inChannels, width, 4, { stride: 4 }), new LayerNorm2d(width, NORM_EPS)]);
  const mid = type === 'overlap_tiered' ? makeDivisible(width / 2) : width;
  return new Sequential([
    new Conv2d(inChannels, mid, 3, { stride: 2, padding: 1 }),
    new Conv2d(mid, width, 3, { stride: 2, padding: 1 }),
    new LayerNorm2d(width, NORM_EPS),
  ]);
}

export class ConvNeXt extends ImageClassifier {
  readonly stem: Sequential;
  readonly stages: ModuleList<ConvNeXtStage>;
  readonly head: ClassifierHead | undefined;
  readonly numFeatures: number;
  readonly inputSize: number;

  constructor(readonly config: ConvNeXtConfig) {
    super();
    const { depths, dims } = config;
    if (depths.length !== dims.length || depths.length === 0) throw new RangeError(`ConvNeXt: depths [${depths}] and dims [${dims}] must have the same, non-zero length`);
    this.numFeatures = dims[dims.length - 1];
    this.inputSize = config.inputSize ?? 224;
    this.stem = this.registerModule('stem', stem(config.inChannels ?? 3, dims[0], config.stemType ?? 'patch'));
    const rates = dropPathRates(depths, config.dropPathRate ?? 0);
    const stages = depths.map((depth, i) => new ConvNeXtStage(
      i === 0 ? dims[0] : dims[i - 1], dims[i], i > 0,
      rates[i].map((rate) => new ConvNeXtBlock(dims[i], { convMlp: config.convMlp, dropPath: rate, layerScaleInit: config.layerScaleInit ?? 1e-6 })),
    ));
    this.stages = this.registerModule('stages', new ModuleList(stages));
    this.head = config.numClasses > 0
      ? this.registerModule('head', new ClassifierHead(this.numFeatures, config.numClasses, { inputFormat: 'NCHW', norm: true, normEps: NORM_EPS, dropRate: config.dropRate }))
      : undefined;
  }

  /** NCHW features at stride 32, in channels-last memory, and each stage's map. */
  forwardIntermediates(x: Tensor): { features: Tensor; intermediates: Tensor[] } {
    return E.tidy(() => {
      let out = this.stem.forward(x.channelsLast());
      const intermediates = [...this.stages].map((stage) => (out = stage.forward(out)));
      return { features: out, intermediates };
    });
  }

  get intermediateChannels(): readonly number[] {
    return this.config.dims;
  }
}

/** timm's ConvNeXt variants: depths, widths and how the MLP is stored. The dual-path network takes its paths from here. */
export const CONVNEXT_VARIANTS = {
  convnext_atto: { depths: [2, 2, 6, 2], dims: [40, 80, 160, 320], convMlp: true },
  convnext_femto: { depths: [2, 2, 6, 2], dims: [48, 96, 192, 384], convMlp: true },
  convnext_pico: { depths: [2, 2, 6, 2], dims: [64, 128, 256, 512], convMlp: true },
  convnext_nano: { depths: [2, 2, 8, 2], dims: [80, 160, 320, 640], convMlp: true },
  // _ols: timm's overlapping stem.
  convnext_atto_ols: { depths: [2, 2, 6, 2], dims: [40, 80, 160, 320], convMlp: true, stemType: 'overlap_tiered' },
  convnext_femto_ols: { depths: [2, 2, 6, 2], dims: [48, 96, 192, 384], convMlp: true, stemType: 'overlap_tiered' },
  convnext_pico_ols: { depths: [2, 2, 6, 2], dims: [64, 128, 256, 512], convMlp: true, stemType: 'overlap_tiered' },
  convnext_nano_ols: { depths: [2, 2, 8, 2], dims: [80, 160, 320, 640], convMlp: true, stemType: 'overlap_tiered' },
  convnext_tiny: { depths: [3, 3, 9, 3], dims: [96, 192, 384, 768], convMlp: false },
  convnext_small: { depths: [3, 3, 27, 3], dims: [96, 192, 384, 768], convMlp: false },
} satisfies Record<string, Pick<ConvNeXtConfig, 'depths' | 'dims' | 'convMlp' | 'stemType'>>;

for (const [name, variant] of Object.entries(CONVNEXT_VARIANTS)) {
  registerModel(
    name,
    (o) => new ConvNeXt({ ...variant, numClasses: o.numClasses, inputSize: o.inputSize, dropRate: o.dropRate, dropPathRate: o.dropPathRate }),
  );
}
