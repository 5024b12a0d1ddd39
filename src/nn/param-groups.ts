// Weight decay belongs on weight matrices and kernels only; decaying norms, biases, layer scales or Swin's
// relative-position tables pulls them towards zero for no benefit (timm's param_groups_weight_decay does the same).
import type * as E from '../engine/index.js';
import type { Module } from './module.js';

/** Parameter names that never take weight decay, whatever their rank. */
const NO_DECAY_SUFFIXES = ['relative_position_bias_table'];

export function skipsWeightDecay(name: string, param: E.Tensor): boolean {
  return param.ndim <= 1 || name.endsWith('.bias') || NO_DECAY_SUFFIXES.some((suffix) => name.endsWith(suffix));
}

export interface WeightDecayGroups {
  decay: { names: string[]; params: E.Tensor[]; weightDecay: number };
  noDecay: { names: string[]; params: E.Tensor[]; weightDecay: 0 };
}

/** Splits a module's parameters into a group with weight decay and one without. */
export function weightDecayGroups(module: Module, weightDecay: number): WeightDecayGroups {
  const groups: WeightDecayGroups = {
    decay: { names: [], params: [], weightDecay },
    noDecay: { names: [], params: [], weightDecay: 0 },
  };
  for (const [name, param] of module.namedParameters()) {
    const group = skipsWeightDecay(name, param) ? groups.noDecay : groups.decay;
    group.names.push(name);
    group.params.push(param);
  }
  return groups;
}
