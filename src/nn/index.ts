// Neural-network layers over the engine: modules with timm-compatible state dicts, layers and initialisation.
export { Module, StateDictError, type UnaryModule, type ShapeMismatch, type LoadStateDictOptions } from './module.js';
export * from './layers.js';
export * from './init.js';
export { weightDecayGroups, skipsWeightDecay, type WeightDecayGroups } from './param-groups.js';
