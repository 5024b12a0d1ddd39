// hemato's library entry point: classification first, then the layers beneath it for those who build on them.
export {
  loadClassifier,
  Classifier,
  BUNDLED_MODEL,
  type Classification,
  type ClassificationError,
  type ClassificationErrorCode,
  type ClassifierOptions,
  type Prediction,
  type ImageInput,
  type UncertainReason,
} from './api/classifier.js';
export { overlayPng, camValues, type Explanation, type ExplainOptions, type ExplainPath, type OverlayOptions } from './api/explain.js';
export type { ScaleReport } from './data/prepare.js';
export { createModel, listModels, modelAliases } from './models/index.js';
export { importTimmCheckpoint } from './models/timm-import.js';
export { Module } from './nn/module.js';
export { loadModel, saveModel, type ModelMetadata } from './models/io.js';
export { decodeImage, readImageFile, type RgbImage } from './data/image.js';
export { computeMetrics, type Metrics } from './eval/metrics.js';
export * as engine from './engine/index.js';
