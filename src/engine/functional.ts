// Neural-network functional operations (the `F` of torch.nn.functional), with shape checks that give clear errors.
import { call, checkIndex, findOp, normDim, stack, type Tensor } from './tensor.js';
import { isFloating } from './dtype.js';
import { tidy } from './scope.js';

type Pair = number | readonly [number, number];

function pair(value: Pair, what: string): [number, number] {
  const [a, b] = typeof value === 'number' ? [value, value] : value;
  if (![a, b].every(Number.isInteger)) throw new TypeError(`${what} must be an integer or a pair of integers`);
  return [a, b];
}

function shapeOf(t: Tensor): string {
  return `[${t.shape.join(', ')}]`;
}

export interface Conv2dOptions {
  stride?: Pair;
  padding?: Pair;
  dilation?: Pair;
  groups?: number;
}

/** 2-D convolution of an NCHW input with weight [out, in/groups, kh, kw]. */
export function conv2d(input: Tensor, weight: Tensor, bias?: Tensor, options: Conv2dOptions = {}): Tensor {
  const groups = options.groups ?? 1;
  if (input.ndim !== 4) throw new RangeError(`conv2d: input must be NCHW (4-D), got ${shapeOf(input)}`);
  if (weight.ndim !== 4) throw new RangeError(`conv2d: weight must be 4-D, got ${shapeOf(weight)}`);
  const [, channels] = input.shape;
  const [outChannels, perGroup] = weight.shape;
  if (!Number.isInteger(groups) || groups < 1 || channels % groups !== 0 || outChannels % groups !== 0) {
    throw new RangeError(`conv2d: groups=${groups} must divide input channels ${channels} and output channels ${outChannels}`);
  }
  if (channels / groups !== perGroup) {
    throw new RangeError(`conv2d: weight ${shapeOf(weight)} expects ${perGroup * groups} input channels, input ${shapeOf(input)} has ${channels}`);
  }
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== outChannels)) throw new RangeError(`conv2d: bias ${shapeOf(bias)} must be [${outChannels}]`);
  return call(
    'conv2d',
    '',
    input,
    weight,
    bias,
    pair(options.stride ?? 1, 'stride'),
    pair(options.padding ?? 0, 'padding'),
    pair(options.dilation ?? 1, 'dilation'),
    groups,
  );
}

/** 1-D convolution of an NCL input with weight [out, in/groups, k] (ECA's channel attention uses it). */
export function conv1d(input: Tensor, weight: Tensor, bias?: Tensor, options: { stride?: number; padding?: number; groups?: number } = {}): Tensor {
  if (input.ndim !== 3 || weight.ndim !== 3) throw new RangeError(`conv1d: input and weight must be 3-D, got ${shapeOf(input)} and ${shapeOf(weight)}`);
  const groups = options.groups ?? 1;
  if (input.shape[1] !== weight.shape[1] * groups) throw new RangeError(`conv1d: weight ${shapeOf(weight)} does not fit input ${shapeOf(input)}`);
  return call('conv1d', '', input, weight, bias, [options.stride ?? 1], [options.padding ?? 0], [1], groups);
}

/** y = x Wᵀ + b over the last dimension; weight is [out, in]. */
export function linear(input: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  const inFeatures = input.shape[input.ndim - 1];
  if (weight.ndim !== 2 || weight.shape[1] !== inFeatures) {
    throw new RangeError(`linear: weight ${shapeOf(weight)} does not fit input ${shapeOf(input)} (last dim ${inFeatures})`);
  }
  return call('linear', '', input, weight, bias);
}

/**
 * Layer norm over the trailing dims. Under autocast it computes in float32: libtorch 1.13's CPU autocast
 * rejects a bf16 input with fp32 weights, and norms want the range of fp32 anyway.
 */
export function layerNorm(input: Tensor, normalizedShape: readonly number[], weight?: Tensor, bias?: Tensor, eps = 1e-5): Tensor {
  const tail = input.shape.slice(input.ndim - normalizedShape.length);
  if (tail.join() !== normalizedShape.join()) throw new RangeError(`layerNorm: input ${shapeOf(input)} does not end in [${normalizedShape.join(', ')}]`);
  if (weight && weight.dtype !== input.dtype) {
    const asFloat = input.to(weight.dtype);
    try {
      return call('layer_norm', '', asFloat, [...normalizedShape], weight, bias, eps, false);
    } finally {
      asFloat.dispose();
    }
  }
  return call('layer_norm', '', input, [...normalizedShape], weight, bias, eps, false);
}

export interface BatchNormOptions {
  training?: boolean;
  momentum?: number;
  eps?: number;
}

/** Batch norm over dim 1; in training it updates the running statistics in place. */
export function batchNorm(
  input: Tensor,
  runningMean: Tensor | undefined,
  runningVar: Tensor | undefined,
  weight?: Tensor,
  bias?: Tensor,
  options: BatchNormOptions = {},
): Tensor {
  const training = options.training ?? false;
  if (input.ndim < 2) throw new RangeError(`batchNorm: input must have a channel dim, got ${shapeOf(input)}`);
  if (training && input.numel / input.shape[1] <= 1) throw new RangeError(`batchNorm: training needs more than one value per channel, got ${shapeOf(input)}`);
  return call('batch_norm', '', input, weight, bias, runningMean, runningVar, training, options.momentum ?? 0.1, options.eps ?? 1e-5, false);
}

export function groupNorm(input: Tensor, numGroups: number, weight?: Tensor, bias?: Tensor, eps = 1e-5): Tensor {
  if (input.ndim < 2 || input.shape[1] % numGroups !== 0) throw new RangeError(`groupNorm: ${numGroups} groups must divide the channels of ${shapeOf(input)}`);
  if (weight && weight.dtype !== input.dtype) {
    const asFloat = input.to(weight.dtype);
    try {
      return call('group_norm', '', asFloat, numGroups, weight, bias, eps, false);
    } finally {
      asFloat.dispose();
    }
  }
  return call('group_norm', '', input, numGroups, weight, bias, eps, false);
}

/** GELU, exact (erf) by default as in timm, or the tanh approximation. */
export function gelu(input: Tensor, approximate: 'none' | 'tanh' = 'none'): Tensor {
  const out = call<Tensor>('gelu', '', input, approximate);
  if (approximate !== 'none' || !out.requiresGrad || !out.isContiguous()) return out;
  // libtorch 1.13's CPU kernel for exact gelu_backward (float32 and bfloat16) returns garbage when its input is
  // contiguous and the incoming gradient is not, e.g. when a permute follows the GELU. Passing the output through
  // two reshapes costs nothing going forward (they are views) and makes the gradient contiguous going back.
  return tidy(() => out.reshape([-1]).reshape(out.shape));
}

export function relu(input: Tensor): Tensor {
  return call('relu', '', input);
}

export function sigmoid(input: Tensor): Tensor {
  return call('sigmoid', '', input);
}

/** Softmax along dim, computed in float32 for half-precision inputs. */
export function softmax(input: Tensor, dim: number): Tensor {
  return call('softmax', 'int', input, normDim(dim, input.ndim), isFloating(input.dtype) && input.dtype !== 'float64' ? 6 : undefined);
}

export function logSoftmax(input: Tensor, dim: number): Tensor {
  return call('log_softmax', 'int', input, normDim(dim, input.ndim), isFloating(input.dtype) && input.dtype !== 'float64' ? 6 : undefined);
}

export function dropout(input: Tensor, p: number, training: boolean): Tensor {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`dropout: p must be in [0, 1], got ${p}`);
  return call('dropout', '', input, p, training);
}

function check4d(input: Tensor, what: string): void {
  if (input.ndim !== 4) throw new RangeError(`${what}: input must be NCHW (4-D), got ${shapeOf(input)}`);
}

export function avgPool2d(input: Tensor, kernel: Pair, stride?: Pair, padding: Pair = 0): Tensor {
  check4d(input, 'avgPool2d');
  return call('avg_pool2d', '', input, pair(kernel, 'kernel'), pair(stride ?? kernel, 'stride'), pair(padding, 'padding'), false, true, undefined);
}

export function maxPool2d(input: Tensor, kernel: Pair, stride?: Pair, padding: Pair = 0): Tensor {
  check4d(input, 'maxPool2d');
  return call('max_pool2d', '', input, pair(kernel, 'kernel'), pair(stride ?? kernel, 'stride'), pair(padding, 'padding'), [1, 1], false);
}

export function adaptiveAvgPool2d(input: Tensor, outputSize: Pair): Tensor {
  if (input.ndim !== 4 && input.ndim !== 3) throw new RangeError(`adaptiveAvgPool2d: input must be 3-D or 4-D, got ${shapeOf(input)}`);
  return call('adaptive_avg_pool2d', '', input, pair(outputSize, 'outputSize'));
}

export function adaptiveMaxPool2d(input: Tensor, outputSize: Pair): Tensor {
  if (input.ndim !== 4 && input.ndim !== 3) throw new RangeError(`adaptiveMaxPool2d: input must be 3-D or 4-D, got ${shapeOf(input)}`);
  return call<Tensor[]>('adaptive_max_pool2d', '', input, pair(outputSize, 'outputSize'))[0];
}

export type PadMode = 'constant' | 'reflect' | 'replicate';

/** Pads the trailing dims; pads is [left, right, top, bottom, …] as in torch.nn.functional.pad. */
export function pad(input: Tensor, pads: readonly number[], mode: PadMode = 'constant', value = 0): Tensor {
  if (pads.length % 2 !== 0 || pads.length / 2 > input.ndim) throw new RangeError(`pad: ${pads.length} pad values do not fit a tensor of rank ${input.ndim}`);
  if (mode === 'constant') return call('constant_pad_nd', '', input, [...pads], value);
  const dims = pads.length / 2;
  if (dims > 2 || input.ndim !== dims + 2)
    throw new RangeError(`pad: ${mode} padding supports 1 or 2 trailing dims of a batched input, got ${shapeOf(input)} with ${pads.length} pads`);
  if (mode === 'reflect') {
    const sizes = input.shape.slice(2).reverse();
    pads.forEach((p, i) => {
      if (p >= sizes[i >> 1]) throw new RangeError(`pad: reflect padding ${p} must be smaller than the dimension (${sizes[i >> 1]})`);
    });
  }
  const name = `${mode === 'reflect' ? 'reflection' : 'replication'}_pad${dims}d`;
  return call(name, '', input, [...pads]);
}

export interface InterpolateOptions {
  size: readonly [number, number];
  mode?: 'bilinear' | 'bicubic' | 'nearest';
  alignCorners?: boolean;
  /** Low-pass filtering when downsampling, as PIL and torchvision's antialias=True do. */
  antialias?: boolean;
}

export function interpolate(input: Tensor, options: InterpolateOptions): Tensor {
  check4d(input, 'interpolate');
  const size = pair(options.size, 'size');
  if (size.some((s) => s < 1)) throw new RangeError(`interpolate: size must be positive, got [${size.join(', ')}]`);
  const mode = options.mode ?? 'bilinear';
  if (mode === 'nearest') return call('upsample_nearest2d', '', input, size);
  const alignCorners = options.alignCorners ?? false;
  const name = `${options.antialias ? '_' : ''}upsample_${mode}2d${options.antialias ? '_aa' : ''}`;
  return call(name, '', input, size, alignCorners);
}

export interface CrossEntropyOptions {
  weight?: Tensor;
  labelSmoothing?: number;
  reduction?: 'mean' | 'sum' | 'none';
  ignoreIndex?: number;
  /**
   * Whether to check that every target is a class index or ignoreIndex before the loss runs (default true). The
   * check reads the targets' range on the host, which waits for the device. Callers that checked their labels before
   * they became a tensor can turn it off: a bad target is then still an error on the CPU (libtorch's own), but on
   * CUDA it trips a device-side assert that leaves the device unusable for the rest of the process.
   */
  checkTargets?: boolean;
}

const REDUCTION = { none: 0, mean: 1, sum: 2 } as const;

/** Cross-entropy of logits [N, C] against class indices [N], with optional label smoothing and class weights. */
export function crossEntropy(logits: Tensor, target: Tensor, options: CrossEntropyOptions = {}): Tensor {
  if (logits.ndim !== 2) throw new RangeError(`crossEntropy: logits must be [N, C], got ${shapeOf(logits)}`);
  const [n, classes] = logits.shape;
  if (target.ndim !== 1 || target.shape[0] !== n) throw new RangeError(`crossEntropy: target must be [${n}], got ${shapeOf(target)}`);
  const ignoreIndex = options.ignoreIndex ?? -100;
  if (target.dtype !== 'int64') throw new TypeError(`crossEntropy: target must be int64 class indices, got ${target.dtype}`);
  if (n > 0 && (options.checkTargets ?? true)) {
    const [lo, hi] = tidy(() => stack([target.amin(), target.amax()]).toArray());
    if ((lo < 0 && lo !== ignoreIndex) || hi >= classes) throw new RangeError(`crossEntropy: targets span [${lo}, ${hi}], outside the ${classes} classes`);
  }
  const smoothing = options.labelSmoothing ?? 0;
  if (!(smoothing >= 0 && smoothing <= 1)) throw new RangeError(`crossEntropy: labelSmoothing must be in [0, 1], got ${smoothing}`);
  if (options.weight && (options.weight.ndim !== 1 || options.weight.shape[0] !== classes)) {
    throw new RangeError(`crossEntropy: weight must be [${classes}], got ${shapeOf(options.weight)}`);
  }
  return call('cross_entropy_loss', '', logits, target, options.weight, REDUCTION[options.reduction ?? 'mean'], ignoreIndex, smoothing);
}

export function nllLoss(logProbs: Tensor, target: Tensor, reduction: 'mean' | 'sum' | 'none' = 'mean'): Tensor {
  if (logProbs.ndim !== 2) throw new RangeError(`nllLoss: input must be [N, C], got ${shapeOf(logProbs)}`);
  checkIndex(target, logProbs.shape[1], 'nllLoss target');
  return call('nll_loss', '', logProbs, target, undefined, REDUCTION[reduction], -100);
}

export function mseLoss(input: Tensor, target: Tensor, reduction: 'mean' | 'sum' | 'none' = 'mean'): Tensor {
  return call('mse_loss', '', input, target, REDUCTION[reduction]);
}

export interface AttentionOptions {
  /** Added to the attention logits (float), or a bool mask where true means "may attend". */
  attnMask?: Tensor;
  dropoutP?: number;
  scale?: number;
}

/** Whether this libtorch has a fused scaled_dot_product_attention (2.x); 1.13 falls back to matmul + softmax. */
export function hasFusedAttention(): boolean {
  return findOp('scaled_dot_product_attention') !== undefined;
}

/** softmax(q kᵀ · scale + mask) v over [..., L, D] tensors. */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions = {}): Tensor {
  const d = q.shape[q.ndim - 1];
  if (k.shape[k.ndim - 1] !== d) throw new RangeError(`attention: query ${shapeOf(q)} and key ${shapeOf(k)} differ in their last dim`);
  const scale = options.scale ?? 1 / Math.sqrt(d);
  if (hasFusedAttention()) {
    return call('scaled_dot_product_attention', '', q, k, v, options.attnMask, options.dropoutP ?? 0, false, scale);
  }
  return tidy(() => {
    let logits = q.mul(scale).matmul(k.transpose(-2, -1));
    if (options.attnMask) {
      logits = options.attnMask.dtype === 'bool' ? logits.maskedFill(options.attnMask.logicalNot(), -Infinity) : logits.add(options.attnMask);
    }
    let weights = softmax(logits, -1);
    if (options.dropoutP) weights = dropout(weights, options.dropoutP, true);
    return weights.to(v.dtype).matmul(v);
  });
}

/** Sampling grid [N, H, W, 2] for the affine maps theta [N, 2, 3] (normalised coordinates, as F.affine_grid). */
export function affineGrid(theta: Tensor, size: readonly [number, number, number, number], alignCorners = false): Tensor {
  if (theta.ndim !== 3 || theta.shape[1] !== 2 || theta.shape[2] !== 3) throw new RangeError(`affineGrid: theta must be [N, 2, 3], got ${shapeOf(theta)}`);
  if (size[0] !== theta.shape[0]) throw new RangeError(`affineGrid: size batch ${size[0]} differs from theta's ${theta.shape[0]}`);
  return call('affine_grid_generator', '', theta, [...size], alignCorners);
}

const GRID_INTERPOLATION = { bilinear: 0, nearest: 1, bicubic: 2 } as const;
const GRID_PADDING = { zeros: 0, border: 1, reflection: 2 } as const;

/** Samples input [N, C, H, W] at grid [N, h, w, 2] (normalised coordinates), as F.grid_sample. */
export function gridSample(
  input: Tensor,
  grid: Tensor,
  options: { mode?: keyof typeof GRID_INTERPOLATION; padding?: keyof typeof GRID_PADDING; alignCorners?: boolean } = {},
): Tensor {
  check4d(input, 'gridSample');
  if (grid.ndim !== 4 || grid.shape[3] !== 2 || grid.shape[0] !== input.shape[0])
    throw new RangeError(`gridSample: grid must be [${input.shape[0]}, h, w, 2], got ${shapeOf(grid)}`);
  return call(
    'grid_sampler',
    '',
    input,
    grid,
    GRID_INTERPOLATION[options.mode ?? 'bilinear'],
    GRID_PADDING[options.padding ?? 'zeros'],
    options.alignCorners ?? false,
  );
}
