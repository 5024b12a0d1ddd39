// Optimizers with parameter groups, following PyTorch's update rules exactly so results can be compared.
import { noGrad } from './autograd.js';
import { dispose, keep, tidy } from './scope.js';
import { type Device, scalar, stack, type Tensor, where, zerosLike } from './tensor.js';

export interface ParamGroup {
  params: Tensor[];
  lr?: number;
  weightDecay?: number;
}

interface ResolvedGroup {
  params: Tensor[];
  lr: number;
  weightDecay: number;
}

/** Optimizer state as tensors plus JSON, ready for a checkpoint. */
export interface OptimizerState {
  tensors: Map<string, Tensor>;
  json: { step: number; lrs: number[] };
}

abstract class Optimizer {
  readonly groups: ResolvedGroup[];
  stepCount = 0;

  constructor(params: Tensor[] | ParamGroup[], defaults: { lr: number; weightDecay: number }) {
    const groups = params.length > 0 && !(params[0] as ParamGroup).params ? [{ params: params as Tensor[] }] : (params as ParamGroup[]);
    this.groups = groups.map((g) => ({ params: g.params, lr: g.lr ?? defaults.lr, weightDecay: g.weightDecay ?? defaults.weightDecay }));
    for (const g of this.groups) {
      if (!(g.lr >= 0)) throw new RangeError(`learning rate must be non-negative, got ${g.lr}`);
      if (!(g.weightDecay >= 0)) throw new RangeError(`weight decay must be non-negative, got ${g.weightDecay}`);
    }
  }

  /** Sets every group's learning rate, e.g. from a schedule before each step. */
  setLr(lr: number): void {
    for (const g of this.groups) g.lr = lr;
  }

  /** Drops the gradients (set to none, as PyTorch does by default). */
  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.grad = undefined;
  }

  step(): void {
    this.stepCount++;
    noGrad(() => {
      for (const group of this.groups) {
        group.params.forEach((param, index) => {
          const grad = param.grad;
          if (!grad) return;
          try {
            tidy(() => this.update(param, grad, group, `${this.groups.indexOf(group)}.${index}`));
          } finally {
            grad.dispose();
          }
        });
      }
    });
  }

  protected abstract update(param: Tensor, grad: Tensor, group: ResolvedGroup, key: string): void;
  protected abstract buffers(): Map<string, Tensor>;

  stateDict(): OptimizerState {
    return { tensors: new Map(this.buffers()), json: { step: this.stepCount, lrs: this.groups.map((g) => g.lr) } };
  }

  /**
   * Restores a state from stateDict(); the tensors are copied, so the caller still owns them. Each buffer goes to
   * its parameter's device (a checkpoint loads on the CPU; its model may train on CUDA).
   */
  loadStateDict(state: OptimizerState): void {
    const buffers = this.buffers();
    dispose([...buffers.values()]);
    buffers.clear();
    for (const [key, t] of state.tensors) {
      const [group, index] = key.split('.').map(Number);
      const device = this.groups[group]?.params[index]?.device ?? t.device;
      buffers.set(key, keep(device === t.device ? t.clone() : t.to(device as Device)));
    }
    this.stepCount = state.json.step;
    state.json.lrs.forEach((lr, i) => {
      if (this.groups[i]) this.groups[i].lr = lr;
    });
  }

  /** Frees the optimizer's state tensors. */
  dispose(): void {
    dispose([...this.buffers().values()]);
    this.buffers().clear();
  }
}

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/** AdamW (Loshchilov & Hutter): Adam with weight decay decoupled from the gradient, as torch.optim.AdamW. */
export class AdamW extends Optimizer {
  readonly betas: [number, number];
  readonly eps: number;
  readonly #state = new Map<string, Tensor>();

  constructor(params: Tensor[] | ParamGroup[], options: AdamWOptions = {}) {
    super(params, { lr: options.lr ?? 1e-3, weightDecay: options.weightDecay ?? 1e-2 });
    this.betas = options.betas ?? [0.9, 0.999];
    this.eps = options.eps ?? 1e-8;
  }

  protected buffers(): Map<string, Tensor> {
    return this.#state;
  }

  protected update(param: Tensor, grad: Tensor, group: ResolvedGroup, key: string): void {
    const [beta1, beta2] = this.betas;
    const expAvg = this.#buffer(`${key}.exp_avg`, param);
    const expAvgSq = this.#buffer(`${key}.exp_avg_sq`, param);
    if (group.weightDecay !== 0) param.mul_(1 - group.lr * group.weightDecay);
    expAvg.lerp_(grad, 1 - beta1);
    expAvgSq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
    const biasCorrection1 = 1 - beta1 ** this.stepCount;
    const biasCorrection2Sqrt = Math.sqrt(1 - beta2 ** this.stepCount);
    const denom = expAvgSq.sqrt().div_(biasCorrection2Sqrt).add_(this.eps);
    param.addcdiv_(expAvg, denom, -group.lr / biasCorrection1);
  }

  #buffer(key: string, like: Tensor): Tensor {
    let t = this.#state.get(key);
    if (!t) this.#state.set(key, (t = keep(zerosLike(like))));
    return t;
  }
}

export interface SgdOptions {
  lr: number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  weightDecay?: number;
}

/** Stochastic gradient descent with optional (Nesterov) momentum, as torch.optim.SGD. */
export class SGD extends Optimizer {
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;
  readonly #state = new Map<string, Tensor>();

  constructor(params: Tensor[] | ParamGroup[], options: SgdOptions) {
    super(params, { lr: options.lr, weightDecay: options.weightDecay ?? 0 });
    this.momentum = options.momentum ?? 0;
    this.dampening = options.dampening ?? 0;
    this.nesterov = options.nesterov ?? false;
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0)) throw new RangeError('SGD: Nesterov momentum needs momentum > 0 and no dampening');
  }

  protected buffers(): Map<string, Tensor> {
    return this.#state;
  }

  protected update(param: Tensor, grad: Tensor, group: ResolvedGroup, key: string): void {
    let direction = group.weightDecay !== 0 ? grad.add(param, group.weightDecay) : grad;
    if (this.momentum !== 0) {
      let buffer = this.#state.get(`${key}.momentum_buffer`);
      if (!buffer) this.#state.set(`${key}.momentum_buffer`, (buffer = keep(direction.clone())));
      else buffer.mul_(this.momentum).add_(direction, 1 - this.dampening);
      direction = this.nesterov ? direction.add(buffer, this.momentum) : buffer;
    }
    param.add_(direction, -group.lr);
  }
}

/**
 * Scales all gradients so that their global L2 norm is at most maxNorm, as torch.nn.utils.clip_grad_norm_, on the
 * gradients' device: nothing is read back, so a GPU never waits for the host. Returns the norm before clipping as a
 * float32 scalar tensor (dispose it, or call this inside tidy()); reading it with item() is a host read. A
 * non-finite norm leaves the gradients alone, so the caller can react to it.
 */
export function clipGradNorm(params: Tensor[], maxNorm: number): Tensor {
  if (!(maxNorm > 0)) throw new RangeError(`clipGradNorm: maxNorm must be positive, got ${maxNorm}`);
  return noGrad(() =>
    tidy(() => {
      const grads = params.map((p) => p.grad).filter((g): g is Tensor => g !== undefined);
      if (grads.length === 0) return scalar(0);
      const total = stack(grads.map((g) => g.float().norm())).norm();
      const factor = where(
        total.isfinite(),
        scalar(maxNorm, { device: total.device as Device })
          .div(total.add(1e-6))
          .clamp(undefined, 1),
        1,
      );
      for (const g of grads) g.mul_(factor);
      return total;
    }),
  );
}
