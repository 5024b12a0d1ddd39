// The dual-path network, our reading of Kılıç (2026): one input through a ConvNeXt path (local texture) and a Swin
// path (global context), both to stride 32; ECA on each map, a projection to a common width, AFF to fuse, then
// pooling, LayerNorm, dropout and a Linear classifier. The ablations drop a path or replace ECA+AFF by concatenation.
import * as E from '../engine/index.js';
import { Module } from '../nn/index.js';
import { ClassifierHead, ImageClassifier } from './classifier.js';
import { CONVNEXT_VARIANTS, ConvNeXt, type ConvNeXtConfig } from './convnext.js';
import { SWIN_VARIANTS, SwinTransformer, variantWindow, type SwinConfig } from './swin.js';
import { AttentionalFeatureFusion, EfficientChannelAttention, Projection } from './fusion.js';
import { registerModel, registerModelAlias, type ResolvedModelOptions } from './registry.js';

type Tensor = E.Tensor;

/** How the paths' maps become one: ECA + projection + AFF (or iAFF), plain channel concatenation, or one path only. */
export type FusionKind = 'aff' | 'iaff' | 'concat' | 'single';

/** The paths' last-stage maps, NHWC; a single-path model has one of them. */
export interface PathMaps {
  convnext?: Tensor;
  swin?: Tensor;
}

export interface DualPathConfig {
  /** Path configs without a head (numClasses is forced to 0); leave one out for a single-path ablation. */
  convnext?: Omit<ConvNeXtConfig, 'numClasses'>;
  swin?: Omit<SwinConfig, 'numClasses'>;
  fusion: FusionKind;
  /** Width both paths are projected to before AFF. */
  fusionDim?: number;
  /** AFF's bottleneck ratio. */
  affReduction?: number;
  numClasses: number;
  inputSize: number;
  dropRate?: number;
}

/** One path's attention and projection before AFF: keys eca_<path>.*, proj_<path>.*. */
class PathAdapter extends Module {
  readonly eca: EfficientChannelAttention;
  readonly proj: Projection;

  constructor(inDim: number, outDim: number) {
    super();
    this.eca = this.registerModule('eca', new EfficientChannelAttention(inDim));
    this.proj = this.registerModule('proj', new Projection(inDim, outDim));
  }

  forward(x: Tensor): Tensor {
    return E.tidy(() => this.proj.forward(this.eca.forward(x)));
  }
}

export class DualPathNet extends ImageClassifier {
  readonly convnext: ConvNeXt | undefined;
  readonly swin: SwinTransformer | undefined;
  readonly adaptConvnext: PathAdapter | undefined;
  readonly adaptSwin: PathAdapter | undefined;
  readonly fusion: AttentionalFeatureFusion | undefined;
  readonly head: ClassifierHead;
  readonly numFeatures: number;
  readonly inputSize: number;

  constructor(readonly config: DualPathConfig) {
    super();
    const { fusion, inputSize } = config;
    const paths = [config.convnext, config.swin].filter((p) => p !== undefined).length;
    if (fusion === 'single' ? paths !== 1 : paths !== 2) {
      throw new RangeError(`DualPathNet: fusion '${fusion}' needs ${fusion === 'single' ? 'exactly one path' : 'both a ConvNeXt and a Swin path'}, got ${paths}`);
    }
    if (inputSize % 32 !== 0) throw new RangeError(`DualPathNet: inputSize must be a multiple of 32 (both paths reach stride 32), got ${inputSize}`);
    this.inputSize = inputSize;
    this.convnext = config.convnext ? this.registerModule('convnext', new ConvNeXt({ ...config.convnext, numClasses: 0, inputSize })) : undefined;
    this.swin = config.swin ? this.registerModule('swin', new SwinTransformer({ ...config.swin, numClasses: 0, inputSize })) : undefined;
    const widths = [this.convnext?.numFeatures, this.swin?.numFeatures].filter((w): w is number => w !== undefined);
    if (fusion === 'aff' || fusion === 'iaff') {
      const dim = config.fusionDim ?? Math.min(...widths);
      this.adaptConvnext = this.registerModule('adapt_convnext', new PathAdapter(this.convnext!.numFeatures, dim));
      this.adaptSwin = this.registerModule('adapt_swin', new PathAdapter(this.swin!.numFeatures, dim));
      this.fusion = this.registerModule('fusion', new AttentionalFeatureFusion(dim, { reduction: config.affReduction, iterative: fusion === 'iaff' }));
      this.numFeatures = dim;
    } else {
      this.numFeatures = widths.reduce((a, b) => a + b, 0);
    }
    this.head = this.registerModule('head', new ClassifierHead(this.numFeatures, config.numClasses, { inputFormat: 'NHWC', norm: true, normEps: 1e-6, dropRate: config.dropRate }));
  }

  /** The fused NHWC map [B, H/32, W/32, numFeatures], and the stages' maps of the ConvNeXt path, then the Swin path. */
  forwardIntermediates(x: Tensor): { features: Tensor; intermediates: Tensor[] } {
    return E.tidy(() => {
      const convnext = this.convnext?.forwardIntermediates(x);
      const swin = this.swin?.forwardIntermediates(x);
      return {
        features: this.fusePaths(pathMaps(convnext?.features, swin?.features)),
        intermediates: [...(convnext?.intermediates ?? []), ...(swin?.intermediates ?? [])],
      };
    });
  }

  get intermediateChannels(): readonly number[] {
    return [...(this.convnext?.intermediateChannels ?? []), ...(this.swin?.intermediateChannels ?? [])];
  }

  /** Each path's last-stage map, NHWC [B, H/32, W/32, C]: what fusePaths() makes one (explanations need them apart). */
  forwardPaths(x: Tensor): PathMaps {
    return E.tidy(() => pathMaps(this.convnext?.forwardFeatures(x), this.swin?.forwardFeatures(x)));
  }

  /** The fused NHWC map [B, H/32, W/32, numFeatures] from the paths' maps; forwardHead() takes it to logits. */
  fusePaths(maps: PathMaps): Tensor {
    const { convnext: local, swin: global } = maps;
    if (Boolean(local) !== Boolean(this.convnext) || Boolean(global) !== Boolean(this.swin)) {
      throw new RangeError(`DualPathNet: fusePaths needs the map of each path the model has (${[this.convnext && 'convnext', this.swin && 'swin'].filter(Boolean).join(' and ')})`);
    }
    if (!local || !global) return (local ?? global)!;
    return E.tidy(() => {
      if (local.shape.join() !== global.shape.slice(0, 3).concat(local.shape[3]).join()) {
        throw new RangeError(`DualPathNet: the paths' maps differ in size ([${local.shape}] vs [${global.shape}])`);
      }
      if (this.fusion) return this.fusion.forward(this.adaptConvnext!.forward(local), this.adaptSwin!.forward(global));
      return E.cat([local, global], 3);
    });
  }
}

// ConvNeXt's NCHW output lives in channels-last memory, so this permute is a free view.
const pathMaps = (convnext: Tensor | undefined, swin: Tensor | undefined): PathMaps => ({ convnext: convnext?.permute([0, 2, 3, 1]), swin });

/** The paths of each scale: timm's convnext_atto with swin_atto, and the paper's scale, convnext_tiny with swin_tiny. */
const PATHS = {
  atto: { convnext: CONVNEXT_VARIANTS.convnext_atto, swin: SWIN_VARIANTS.swin_atto },
  tiny: { convnext: CONVNEXT_VARIANTS.convnext_tiny, swin: SWIN_VARIANTS.swin_tiny_patch4_window7_224 },
};

function dualPath(scale: keyof typeof PATHS, fusion: 'aff' | 'concat' | 'single', keep: 'convnext' | 'swin' | 'both') {
  return (o: ResolvedModelOptions): DualPathNet => {
    const common = { inputSize: o.inputSize, dropPathRate: o.dropPathRate };
    const { convnext, swin } = PATHS[scale];
    return new DualPathNet({
      convnext: keep === 'swin' ? undefined : { ...convnext, ...common },
      swin: keep === 'convnext' ? undefined : { ...swin, windowSize: variantWindow(swin, o.inputSize, o.windowSize), ...common },
      fusion: fusion === 'aff' && o.iterativeAff ? 'iaff' : fusion,
      fusionDim: o.fusionDim,
      numClasses: o.numClasses,
      inputSize: o.inputSize,
      dropRate: o.dropRate,
    });
  };
}

// The network and its ablations at both scales. The single-path ones are named after their path's family:
// convnext_only_atto is convnext_atto under the keys convnext.*, with the dual-path head.
for (const scale of ['atto', 'tiny'] as const) {
  registerModel(`dualpath_${scale}`, dualPath(scale, 'aff', 'both'));
  registerModel(`dualpath_concat_${scale}`, dualPath(scale, 'concat', 'both'));
  registerModel(`convnext_only_${scale}`, dualPath(scale, 'single', 'convnext'));
  registerModel(`swin_only_${scale}`, dualPath(scale, 'single', 'swin'));
}

// The names from before timm's scheme, which model files and settings carry. The ablations took their paths' scale
// from the scale option.
registerModelAlias('dualpath-atto', 'dualpath_atto');
registerModelAlias('dualpath-tiny', 'dualpath_tiny');
registerModelAlias('dualpath-concat', ({ scale }) => `dualpath_concat_${scale ?? 'atto'}`);
registerModelAlias('convnext-only', ({ scale }) => `convnext_only_${scale ?? 'atto'}`);
registerModelAlias('swin-only', ({ scale }) => `swin_only_${scale ?? 'atto'}`);
