// Module: a tree of named parameters, buffers and children whose dotted key names match PyTorch's state_dict(),
// so that checkpoints made by timm load by name.
import * as E from '../engine/index.js';

type Tensor = E.Tensor;

interface BufferEntry {
  tensor: Tensor;
  /** Persistent buffers go into stateDict(); the others are derived constants (timm's relative_position_index). */
  persistent: boolean;
}

/** A key that did not fit, with the shapes on both sides. */
export interface ShapeMismatch {
  key: string;
  expected: number[];
  got: number[];
}

/** One error that lists every key that did not fit, so a user fixes them all in one go. */
export class StateDictError extends Error {
  constructor(
    readonly missing: string[],
    readonly unexpected: string[],
    readonly mismatched: ShapeMismatch[],
    hint = 'check that the checkpoint was made for this architecture and variant',
  ) {
    const lines: string[] = [];
    const list = (title: string, keys: string[]) => {
      if (keys.length === 0) return;
      lines.push(`  ${title} (${keys.length}):`);
      for (const key of keys) lines.push(`    ${key}`);
    };
    list('missing from the checkpoint', missing);
    list('unexpected in the checkpoint', unexpected);
    list(
      'shape differs',
      mismatched.map((m) => `${m.key}: model [${m.expected.join(', ')}], checkpoint [${m.got.join(', ')}]`),
    );
    super(`the state dict does not fit the model; ${hint}:\n${lines.join('\n')}`);
    this.name = 'StateDictError';
  }
}

export interface LoadStateDictOptions {
  /** With strict (the default) any missing or unexpected key is an error; shape mismatches always are. */
  strict?: boolean;
}

export abstract class Module {
  training = true;
  readonly #parameters = new Map<string, Tensor>();
  readonly #buffers = new Map<string, BufferEntry>();
  readonly #children = new Map<string, Module>();

  /** Takes ownership of value as a trainable parameter: it outlives every tidy scope and records gradients. */
  protected registerParameter(name: string, value: Tensor): Tensor {
    this.#checkName(name);
    E.keep(value).requiresGrad_(true);
    this.#parameters.set(name, value);
    return value;
  }

  protected registerBuffer(name: string, value: Tensor, persistent = true): Tensor {
    this.#checkName(name);
    this.#buffers.set(name, { tensor: E.keep(value), persistent });
    return value;
  }

  protected registerModule<M extends Module>(name: string, module: M): M {
    this.#checkName(name);
    this.#children.set(name, module);
    return module;
  }

  /**
   * Puts module where the child registered under name was, keeping its place in the key order (PyTorch's attribute
   * assignment, as timm's reset_classifier does). Returns the old child, whose tensors the caller disposes.
   */
  protected replaceModule(name: string, module: Module): Module {
    const old = this.#children.get(name);
    if (!old) throw new Error(`${this.constructor.name} has no submodule '${name}' to replace`);
    this.#children.set(name, module);
    return old;
  }

  #checkName(name: string): void {
    if (!name || name.includes('.')) throw new Error(`${this.constructor.name}: '${name}' is not a valid member name (non-empty, no dots)`);
    if (this.#parameters.has(name) || this.#buffers.has(name) || this.#children.has(name)) {
      throw new Error(`${this.constructor.name}: '${name}' is already registered`);
    }
  }

  /** The parameter registered under name; getters in subclasses read through this so that to() can move it. */
  protected parameter(name: string): Tensor {
    const p = this.#parameters.get(name);
    if (!p) throw new Error(`${this.constructor.name} has no parameter '${name}'`);
    return p;
  }

  protected buffer(name: string): Tensor {
    const b = this.#buffers.get(name);
    if (!b) throw new Error(`${this.constructor.name} has no buffer '${name}'`);
    return b.tensor;
  }

  /** This module and every descendant, depth first, with dotted names ('' for this one). */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    for (const [name, child] of this.#children) out.push(...child.namedModules(prefix ? `${prefix}.${name}` : name));
    return out;
  }

  children(): Module[] {
    return [...this.#children.values()];
  }

  /** A descendant by dotted path, e.g. 'layers.0.blocks.1.attn'. */
  getSubmodule(path: string): Module {
    let module: Module = this;
    for (const part of path ? path.split('.') : []) {
      const child = module.#children.get(part);
      if (!child) throw new Error(`${this.constructor.name} has no submodule '${path}' (no '${part}' in ${module.constructor.name})`);
      module = child;
    }
    return module;
  }

  /** Parameters in registration order, each module's own before its children's, as PyTorch lists them. */
  namedParameters(): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [prefix, module] of this.namedModules()) {
      for (const [name, p] of module.#parameters) out.push([prefix ? `${prefix}.${name}` : name, p]);
    }
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }

  /** Every buffer, persistent or not. */
  namedBuffers(): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [prefix, module] of this.namedModules()) {
      for (const [name, b] of module.#buffers) out.push([prefix ? `${prefix}.${name}` : name, b.tensor]);
    }
    return out;
  }

  /** The number of trainable scalars. */
  numParameters(): number {
    return this.parameters().reduce((n, p) => n + p.numel, 0);
  }

  /**
   * Parameters and persistent buffers by key. The tensors are the module's own (not copies): read or save them,
   * but do not dispose them.
   */
  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [prefix, module] of this.namedModules()) {
      const key = (name: string) => (prefix ? `${prefix}.${name}` : name);
      for (const [name, p] of module.#parameters) out.set(key(name), p);
      for (const [name, b] of module.#buffers) if (b.persistent) out.set(key(name), b.tensor);
    }
    return out;
  }

  /**
   * Copies values into the module's tensors in place (so optimizers keep their references), converting dtype and
   * device as needed. Checks everything first and throws one StateDictError listing every key that does not fit.
   */
  loadStateDict(state: ReadonlyMap<string, Tensor>, options: LoadStateDictOptions = {}): void {
    const strict = options.strict ?? true;
    const own = this.stateDict();
    const missing = [...own.keys()].filter((k) => !state.has(k));
    const unexpected = [...state.keys()].filter((k) => !own.has(k));
    const mismatched: ShapeMismatch[] = [];
    for (const [key, target] of own) {
      const source = state.get(key);
      if (source && source.shape.join() !== target.shape.join()) mismatched.push({ key, expected: target.shape, got: source.shape });
    }
    if (mismatched.length > 0 || (strict && (missing.length > 0 || unexpected.length > 0))) {
      throw new StateDictError(strict ? missing : [], strict ? unexpected : [], mismatched);
    }
    E.noGrad(() => {
      for (const [key, target] of own) {
        const source = state.get(key);
        if (source) target.copy_(source);
      }
    });
  }

  /** Sets training mode here and below (dropout, drop path); returns this. */
  train(mode = true): this {
    for (const [, module] of this.namedModules()) module.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /**
   * Moves every parameter and buffer to a device; returns this. Parameters become new tensors, so create
   * optimizers after moving, as in PyTorch.
   */
  to(device: E.Device): this {
    for (const [, module] of this.namedModules()) {
      for (const [name, p] of module.#parameters) {
        if (sameDevice(p.device, device)) continue;
        const moved = E.keep(E.noGrad(() => p.to(device))).requiresGrad_(true);
        p.dispose();
        module.#parameters.set(name, moved);
      }
      for (const [name, b] of module.#buffers) {
        if (sameDevice(b.tensor.device, device)) continue;
        const moved = E.keep(b.tensor.to(device));
        b.tensor.dispose();
        module.#buffers.set(name, { tensor: moved, persistent: b.persistent });
      }
    }
    return this;
  }

  /** Frees every parameter and buffer; the module cannot be used afterwards. */
  dispose(): void {
    for (const [, module] of this.namedModules()) {
      for (const p of module.#parameters.values()) p.dispose();
      for (const b of module.#buffers.values()) b.tensor.dispose();
    }
  }
}

function sameDevice(actual: string, requested: string): boolean {
  return actual === requested || (requested === 'cuda' && actual === 'cuda:0');
}

/** A module with one input and one output, which Sequential can chain. */
export interface UnaryModule extends Module {
  forward(x: Tensor): Tensor;
}
