// hemato's library entry point: classification first, then the layers beneath it for those who build on them.
export { loadClassifier, Classifier, BUNDLED_MODEL, type Classification, type ClassifierOptions, type Prediction, type ImageInput } from './api/classifier.js';
export { createModel, listModels } from './models/registry.js';
export { loadModel, saveModel, type ModelMetadata } from './models/io.js';
export { decodeImage, readImageFile, type RgbImage } from './data/image.js';
export { computeMetrics, type Metrics } from './eval/metrics.js';
export * as engine from './engine/index.js';
