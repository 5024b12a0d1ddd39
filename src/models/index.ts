// Models: ConvNeXt, Swin Transformer, the attention-fused dual-path network, the registry and model files.
// Loading this module loads every architecture file, and with it every registered variant (as timm's models package).
export { ImageClassifier, ClassifierHead, type ModelSpec, type ClassifierHeadOptions, type FilteredCheckpoint } from './classifier.js';
export { ConvNeXt, ConvNeXtBlock, CONVNEXT_VARIANTS, type ConvNeXtConfig } from './convnext.js';
export {
  SwinTransformer,
  SwinTransformerBlock,
  WindowAttention,
  PatchMerging,
  SWIN_VARIANTS,
  windowAndShift,
  relativePositionIndex,
  shiftedWindowMask,
  resizeRelativePositionBiasTable,
  type SwinConfig,
} from './swin.js';
export { EfficientChannelAttention, AttentionalFeatureFusion, MultiScaleChannelAttention, ChannelBottleneck, Projection, ecaKernelSize, type AffOptions } from './fusion.js';
export { DualPathNet, type DualPathConfig, type FusionKind } from './dualpath.js';
export {
  createModel,
  listModels,
  modelAliases,
  resolveModelName,
  describeModelNames,
  registerModel,
  registerModelAlias,
  type ModelOptions,
  type ResolvedModelOptions,
  type ModelBuilder,
  type AliasTarget,
} from './registry.js';
export {
  importPretrained,
  importTimmStateDict,
  importTimmCheckpoint,
  type PretrainedImport,
  type PretrainedWeights,
  type TimmImportOptions,
  type TimmImportReport,
} from './timm-import.js';
export { saveModel, loadModel, type ModelInfo, type ModelMetadata, type Normalization, type SaveModelOptions, type LoadedModel } from './io.js';
