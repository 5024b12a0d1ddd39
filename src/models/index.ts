// Models: ConvNeXt, Swin Transformer, the attention-fused dual-path network, the registry and model files.
export { ImageClassifier, ClassifierHead, type ModelSpec, type ClassifierHeadOptions } from './classifier.js';
export { ConvNeXt, ConvNeXtBlock, type ConvNeXtConfig } from './convnext.js';
export { SwinTransformer, SwinTransformerBlock, WindowAttention, PatchMerging, windowAndShift, relativePositionIndex, shiftedWindowMask, type SwinConfig } from './swin.js';
export { EfficientChannelAttention, AttentionalFeatureFusion, MultiScaleChannelAttention, ChannelBottleneck, Projection, ecaKernelSize, type AffOptions } from './fusion.js';
export { DualPathNet, type DualPathConfig, type FusionKind } from './dualpath.js';
export { createModel, listModels, type ModelOptions } from './registry.js';
export { importTimmStateDict, importTimmCheckpoint, resizeRelativePositionBiasTable, type TimmImportOptions, type TimmImportReport } from './timm-import.js';
export { saveModel, loadModel, type ModelInfo, type ModelMetadata, type Normalization, type SaveModelOptions, type LoadedModel } from './io.js';
