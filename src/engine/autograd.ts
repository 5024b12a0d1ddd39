// Grad mode scopes. libtorch keeps grad mode per thread; JS runs ops on its own thread, so a scope here covers them.
import { native } from './native.js';

function withGradMode<T>(enabled: boolean, fn: () => T): T {
  const previous = native.setGradEnabled(enabled);
  try {
    const result = fn();
    if (result instanceof Promise) throw new TypeError('grad-mode scopes cannot wrap async functions');
    return result;
  } finally {
    native.setGradEnabled(previous);
  }
}

/** Runs fn without recording operations for autograd (inference, optimizer updates). */
export function noGrad<T>(fn: () => T): T {
  return withGradMode(false, fn);
}

/** Runs fn with autograd recording, also inside a noGrad scope. */
export function enableGrad<T>(fn: () => T): T {
  return withGradMode(true, fn);
}

export function isGradEnabled(): boolean {
  return native.isGradEnabled();
}
