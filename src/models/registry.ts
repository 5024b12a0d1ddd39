// Named model variants: the dual-path network, its ablations, and the plain timm ConvNeXt and Swin models.
import type * as E from '../engine/index.js';
import type { ImageClassifier } from './classifier.js';
import { ConvNeXt, type ConvNeXtConfig } from './convnext.js';
import { DualPathNet, type FusionKind } from './dualpath.js';
import { SwinTransformer, type SwinConfig } from './swin.js';

export interface ModelOptions {
  numClasses: number;
  /** Side of the square input in pixels (default 224). Swin's windows are fixed by it; it must be a multiple of 32. */
  inputSize?: number;
  /** Dropout before the classifier (default 0). */
  dropRate?: number;
  /** Stochastic depth, rising linearly to this rate over each path's blocks (default 0). */
  dropPathRate?: number;
  /** Dual-path models: iterative AFF instead of AFF. */
  iterativeAff?: boolean;
  /** Dual-path models: the common width both paths are projected to before AFF. */
  fusionDim?: number;
  /** Ablations (convnext-only, swin-only, dualpath-concat): which dual-path variant's paths to use (default atto). */
  scale?: 'atto' | 'tiny';
  /** Swin paths and models: override the window (default: per variant). */
  windowSize?: number;
  device?: E.Device;
}

type PathConfigs = { convnext: Omit<ConvNeXtConfig, 'numClasses'>; swin: Omit<SwinConfig, 'numClasses'> };

const CONVNEXT: Record<string, Pick<ConvNeXtConfig, 'depths' | 'dims' | 'convMlp'>> = {
  convnext_atto: { depths: [2, 2, 6, 2], dims: [40, 80, 160, 320], convMlp: true },
  convnext_femto: { depths: [2, 2, 6, 2], dims: [48, 96, 192, 384], convMlp: true },
  convnext_pico: { depths: [2, 2, 6, 2], dims: [64, 128, 256, 512], convMlp: true },
  convnext_nano: { depths: [2, 2, 8, 2], dims: [80, 160, 320, 640], convMlp: true },
  convnext_tiny: { depths: [3, 3, 9, 3], dims: [96, 192, 384, 768], convMlp: false },
  convnext_small: { depths: [3, 3, 27, 3], dims: [96, 192, 384, 768], convMlp: false },
};

const SWIN: Record<string, Pick<SwinConfig, 'embedDim' | 'depths' | 'numHeads' | 'windowSize'>> = {
  swin_tiny_patch4_window7_224: { embedDim: 96, depths: [2, 2, 6, 2], numHeads: [3, 6, 12, 24], windowSize: 7 },
  swin_small_patch4_window7_224: { embedDim: 96, depths: [2, 2, 18, 2], numHeads: [3, 6, 12, 24], windowSize: 7 },
};

/** dualpath-atto's small Swin: window 7 where the stride-32 map is a multiple of 7 (224 px), else 8 (128 px). */
function attoSwinWindow(inputSize: number): number {
  return (inputSize / 32) % 7 === 0 ? 7 : 8;
}

function dualPathPaths(scale: 'atto' | 'tiny', o: Required<Pick<ModelOptions, 'inputSize' | 'dropPathRate'>> & ModelOptions): PathConfigs {
  const common = { inputSize: o.inputSize, dropPathRate: o.dropPathRate };
  if (scale === 'atto') {
    return {
      convnext: { ...CONVNEXT.convnext_atto, ...common },
      swin: { embedDim: 32, depths: [2, 2, 2, 2], numHeads: [1, 2, 4, 8], windowSize: o.windowSize ?? attoSwinWindow(o.inputSize), ...common },
    };
  }
  return {
    convnext: { ...CONVNEXT.convnext_tiny, ...common },
    swin: { ...SWIN.swin_tiny_patch4_window7_224, windowSize: o.windowSize ?? 7, ...common },
  };
}

type Resolved = Required<Pick<ModelOptions, 'numClasses' | 'inputSize' | 'dropRate' | 'dropPathRate'>> & ModelOptions;

function dualPath(scale: 'atto' | 'tiny' | undefined, fusion: FusionKind, keep: 'convnext' | 'swin' | 'both') {
  return (o: Resolved): ImageClassifier => {
    const paths = dualPathPaths(scale ?? o.scale ?? 'atto', o);
    const kind: FusionKind = fusion === 'aff' && o.iterativeAff ? 'iaff' : fusion;
    return new DualPathNet({
      convnext: keep === 'swin' ? undefined : paths.convnext,
      swin: keep === 'convnext' ? undefined : paths.swin,
      fusion: kind,
      fusionDim: o.fusionDim,
      numClasses: o.numClasses,
      inputSize: o.inputSize,
      dropRate: o.dropRate,
    });
  };
}

const BUILDERS: Record<string, (o: Resolved) => ImageClassifier> = {
  'dualpath-atto': dualPath('atto', 'aff', 'both'),
  'dualpath-tiny': dualPath('tiny', 'aff', 'both'),
  'dualpath-concat': dualPath(undefined, 'concat', 'both'),
  'convnext-only': dualPath(undefined, 'single', 'convnext'),
  'swin-only': dualPath(undefined, 'single', 'swin'),
  ...Object.fromEntries(Object.entries(CONVNEXT).map(([name, variant]) => [name, (o: Resolved) => new ConvNeXt({
    ...variant, numClasses: o.numClasses, inputSize: o.inputSize, dropRate: o.dropRate, dropPathRate: o.dropPathRate,
  })])),
  ...Object.fromEntries(Object.entries(SWIN).map(([name, variant]) => [name, (o: Resolved) => new SwinTransformer({
    ...variant, windowSize: o.windowSize ?? variant.windowSize, numClasses: o.numClasses, inputSize: o.inputSize, dropRate: o.dropRate, dropPathRate: o.dropPathRate,
  })])),
};

/** Every name createModel() accepts. */
export function listModels(): string[] {
  return Object.keys(BUILDERS);
}

/**
 * Builds a named model with fresh (timm-style) initial weights. The resolved options are recorded on
 * model.spec, so saveModel() can store them and loadModel() can rebuild the same architecture.
 */
export function createModel(name: string, options: ModelOptions): ImageClassifier {
  const build = BUILDERS[name];
  if (!build) throw new Error(`unknown model '${name}'; choose one of: ${listModels().join(', ')}`);
  const { device, ...rest } = options;
  const resolved: Resolved = { inputSize: 224, dropRate: 0, dropPathRate: 0, ...rest };
  if (!Number.isInteger(resolved.inputSize) || resolved.inputSize < 32 || resolved.inputSize % 32 !== 0) {
    throw new RangeError(`inputSize must be a multiple of 32 (at least 32), got ${resolved.inputSize}`);
  }
  const model = build(resolved);
  model.spec = { architecture: name, options: { ...resolved } };
  return device && device !== 'cpu' ? model.to(device) : model;
}
