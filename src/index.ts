// hemato's library entry point.
export * as engine from './engine/index.js';
