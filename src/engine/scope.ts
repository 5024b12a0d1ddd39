// Deterministic memory management in the spirit of tfjs's tidy(): tensors made inside a scope are freed when it
// closes, except those it returns or keeps. Garbage collection is only a safety net.
import { native } from './native.js';

export interface Disposable {
  dispose(): void;
  readonly isDisposed: boolean;
}

const scopes: Set<Disposable>[] = [];

/** Called by every new tensor: the innermost open scope takes ownership of it. */
export function track<T extends Disposable>(item: T): T {
  // Tested first: scopes[-1] would be a slow, string-keyed property lookup on every tensor made outside a scope.
  if (scopes.length > 0) scopes[scopes.length - 1].add(item);
  return item;
}

/** Removes a tensor from every open scope, so that it outlives them; the caller must dispose it later. */
export function keep<T extends Disposable>(item: T): T {
  for (const scope of scopes) scope.delete(item);
  return item;
}

/**
 * Runs fn and disposes every tensor it made, except those in its result (a tensor, or arrays and plain
 * objects of them, also inside a promise-free return value), which move to the enclosing scope.
 */
export function tidy<T>(fn: () => T): T {
  // An async function's tensors would be made after the scope closed, outside any scope: refuse it before it runs.
  if (fn.constructor.name === 'AsyncFunction')
    throw new TypeError('tidy() cannot wrap an async function: its tensors would outlive the scope; use tidy() inside it around synchronous work');
  const scope = new Set<Disposable>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (error) {
    scopes.pop();
    for (const item of scope) item.dispose();
    throw error;
  }
  scopes.pop();
  if (result instanceof Promise) {
    for (const item of scope) item.dispose();
    throw new TypeError('tidy() got a promise back: the function must be synchronous; what it made so far has been freed');
  }
  const returned = new Set<Disposable>();
  collect(result, returned, 0);
  const parent = scopes.length > 0 ? scopes[scopes.length - 1] : undefined;
  for (const item of scope) {
    if (returned.has(item)) parent?.add(item);
    else item.dispose();
  }
  return result;
}

function collect(value: unknown, into: Set<Disposable>, depth: number): void {
  if (value === null || typeof value !== 'object' || depth > 8) return;
  if (isDisposable(value)) {
    into.add(value);
    return;
  }
  const items = Array.isArray(value) ? value : value instanceof Map ? [...value.values()] : Object.values(value);
  for (const item of items) collect(item, into, depth + 1);
}

function isDisposable(value: object): value is Disposable {
  return typeof (value as Disposable).dispose === 'function' && 'isDisposed' in value;
}

/** Disposes every tensor in a (possibly nested) array or object. */
export function dispose(value: unknown): void {
  const items = new Set<Disposable>();
  collect(value, items, 0);
  for (const item of items) item.dispose();
}

/** The number of native tensors alive in this thread: a leak shows as a count that keeps growing. */
export function liveTensors(): number {
  return native.liveTensors();
}
