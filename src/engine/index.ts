// The engine: tensors, autograd, mixed precision, optimizers and safetensors over libtorch.
// hostReads() counts every time tensor data reaches JS (item, data, toArray); a model's forward pass makes none.
export * from './tensor.js';
export * as F from './functional.js';
export * as distributed from './distributed.js';
export { DTYPES, type DType, isFloating } from './dtype.js';
export { tidy, keep, dispose, liveTensors, type Disposable } from './scope.js';
export { noGrad, enableGrad, isGradEnabled } from './autograd.js';
export { autocast, isAutocastEnabled, type AutocastOptions } from './autocast.js';
export { AdamW, SGD, clipGradNorm, type ParamGroup, type OptimizerState } from './optim.js';
export { loadSafetensors, readSafetensorsMetadata, saveSafetensors, parseSafetensors, serializeSafetensors, type SafetensorsFile } from './safetensors.js';
export * from './runtime.js';
export * from './precision.js';
