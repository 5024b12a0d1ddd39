// The Tensor class: a handle to a libtorch tensor with the operations models and preprocessing need.
// Every operation goes through one generic dispatcher call, so autograd and autocast behave as in PyTorch.
import { native, type NativeOp, type NativeTensor, ReturnKind } from './native.js';
import { type AnyTypedArray, type DType, dtypeCode, dtypeFromCode, dtypeOfArray, isFloating, typedArrayOf, type TypedArrayFor } from './dtype.js';
import { tidy, track } from './scope.js';

export type Device = 'cpu' | 'cuda' | `cuda:${number}`;
export type Shape = readonly number[];
export type TensorOrScalar = Tensor | number | boolean;

export interface CreateOptions {
  dtype?: DType;
  device?: Device;
  requiresGrad?: boolean;
}

const MEMORY_FORMAT = { contiguous: 0, preserve: 1, channelsLast: 2 } as const;

/** An ATen operator, how to read what it returns, and what call() must do around it. */
interface Op {
  id: NativeOp;
  returns: ReturnKind[];
  division: 'quotient' | 'remainder' | undefined;
  hostRead: boolean;
}

// Keyed by name, then overload: a lookup builds no string.
const opCache = new Map<string, Map<string, Op | null>>();

function lookupOp(name: string, overload: string): Op | undefined {
  let overloads = opCache.get(name);
  if (!overloads) opCache.set(name, (overloads = new Map()));
  let op = overloads.get(overload);
  if (op === undefined) {
    const found = native.findOp(`aten::${name}`, overload);
    op = found ? { id: found[0], returns: found.slice(1) as ReturnKind[], division: INTEGER_DIVISION.get(name), hostRead: HOST_READ_OPS.has(name) } : null;
    overloads.set(overload, op);
  }
  return op ?? undefined;
}

/** Looks up an ATen operator once; returns undefined when this libtorch does not have it. */
export function findOp(name: string, overload = ''): NativeOp | undefined {
  return lookupOp(name, overload)?.id;
}

/**
 * Replaces tensors in args (an array this module owns) by their handles, in place, and returns the mask of the
 * positions that hold one, so that the addon never takes a plain number for a tensor. A list holding a tensor
 * becomes a Float64Array of handles: NaN for none, -1 (never a handle) for anything else, which the addon rejects.
 */
function unwrapArgs(args: unknown[]): number {
  let mask = 0;
  for (let i = 0; i < args.length; i++) {
    const value = args[i];
    if (value instanceof Tensor) {
      args[i] = value.handle;
      mask += i < 31 ? 1 << i : 2 ** i;
    } else if (Array.isArray(value) && value.some((item) => item instanceof Tensor)) {
      args[i] = Float64Array.from(value, (item) => (item instanceof Tensor ? item.handle : item === undefined || item === null ? NaN : -1));
    }
  }
  return mask;
}

function wrapValue(value: unknown, kind: ReturnKind): unknown {
  if (kind === ReturnKind.Tensor) return value === undefined ? undefined : new Tensor(value as NativeTensor);
  if (kind === ReturnKind.TensorList) return (value as NativeTensor[]).map((handle) => new Tensor(handle));
  return value;
}

function wrapResult(value: unknown, returns: ReturnKind[]): unknown {
  if (returns.length === 1) return returns[0] === ReturnKind.Tensor && value !== undefined ? new Tensor(value as NativeTensor) : wrapValue(value, returns[0]);
  return (value as unknown[]).map((item, i) => wrapValue(item, returns[i]));
}

// Ops that hand JS a value computed from tensor data, so each call is a host read.
const HOST_READ_OPS = new Set(['item', '_local_scalar_dense', 'is_nonzero', 'equal', 'allclose']);
let hostReadCount = 0;

/**
 * How many times tensor data has reached the host so far, a count that only grows: each item(), data(), toArray()
 * and each call of an op that returns a value computed from tensor data (equal, allclose, is_nonzero). Each such
 * read waits for the device to finish its queued work, so a GPU pipeline stalls on it.
 */
export function hostReads(): number {
  return hostReadCount;
}

// V8 calls a native function fast only with a fixed argument count; a spread call takes its slow path.
function callNative(op: NativeOp, args: unknown[]): unknown {
  const mask = unwrapArgs(args);
  switch (args.length) {
    case 1:
      return native.callOp(op, mask, args[0]);
    case 2:
      return native.callOp(op, mask, args[0], args[1]);
    case 3:
      return native.callOp(op, mask, args[0], args[1], args[2]);
    case 4:
      return native.callOp(op, mask, args[0], args[1], args[2], args[3]);
    default:
      return native.callOp(op, mask, ...args);
  }
}

/** Calls `aten::name.overload` with positional arguments in schema order; undefined takes the default. */
export function call<T = Tensor>(name: string, overload: string, ...args: unknown[]): T {
  const op = lookupOp(name, overload);
  if (!op) throw new Error(`this libtorch has no operator aten::${name}${overload ? `.${overload}` : ''}`);
  if (!op.division) {
    const result = callNative(op.id, args);
    if (op.hostRead) hostReadCount++;
    return wrapResult(result, op.returns) as T;
  }
  const divisor = guardIntegerDivision(name, op.division, args);
  try {
    const operands = divisor ? [args[0], divisor, ...args.slice(2)] : args;
    return wrapResult(callNative(op.id, operands), op.returns) as T;
  } finally {
    if (divisor instanceof Tensor) divisor.dispose();
  }
}

// The minimum of a signed integer type divided by -1 overflows, and on x86 the CPU traps it (SIGFPE), which kills
// the process: libtorch's CPU kernels do not check for it. Quotients throw instead; remainders by -1 are 0 anyway,
// so the divisor -1 becomes 1, which gives the same result without the trap. The divisor is always argument 1.
const INTEGER_DIVISION = new Map<string, 'quotient' | 'remainder'>([
  ['div', 'quotient'],
  ['div_', 'quotient'],
  ['divide', 'quotient'],
  ['divide_', 'quotient'],
  ['floor_divide', 'quotient'],
  ['floor_divide_', 'quotient'],
  ['remainder', 'remainder'],
  ['remainder_', 'remainder'],
  ['fmod', 'remainder'],
  ['fmod_', 'remainder'],
]);

/** The minimum of each signed integer type, by libtorch's type code (int8, int16, int32, int64). */
const SIGNED_MINIMUM = new Map<number, { name: string; minimum: () => ArrayBufferView }>([
  [1, { name: 'int8', minimum: () => Int8Array.of(-128) }],
  [2, { name: 'int16', minimum: () => Int16Array.of(-32768) }],
  [3, { name: 'int32', minimum: () => Int32Array.of(-(2 ** 31)) }],
  [4, { name: 'int64', minimum: () => BigInt64Array.of(-(2n ** 63n)) }],
]);

/**
 * Checks a division before libtorch runs it. Only CPU divisions in a signed integer type need it, so floating-point
 * and CUDA tensors pass without any host read. Returns a replacement divisor for remainders, else undefined.
 */
function guardIntegerDivision(name: string, kind: 'quotient' | 'remainder', args: unknown[]): Tensor | number | undefined {
  const [dividend, divisor] = args;
  // div without a rounding mode is true division, which computes in floating point.
  if (kind === 'quotient' && name.startsWith('div') && typeof args[2] !== 'string') return undefined;
  const code = signedCpuDivisionType(dividend, divisor);
  if (code === undefined) return undefined;
  if (kind === 'remainder') {
    if (divisor instanceof Tensor)
      return tidy(() => {
        const d = asType(divisor, code);
        return d.maskedFill(d.eq(-1), 1);
      });
    return divisor === -1 ? 1 : undefined;
  }
  const mayOverflow = dividend instanceof Tensor && (divisor instanceof Tensor || divisor === -1);
  if (mayOverflow && dividesMinimumByMinusOne(dividend, divisor, code)) {
    const type = SIGNED_MINIMUM.get(code)!.name;
    throw new RangeError(
      `${name}: dividing the ${type} minimum by -1 overflows ${type} (the quotient is one past its maximum); convert to a wider type first, e.g. .to('float64')`,
    );
  }
  return undefined;
}

/** The type code a division computes in when all its tensors are on the CPU and that type is a signed integer. */
function signedCpuDivisionType(dividend: unknown, divisor: unknown): number | undefined {
  const operands = [dividend, divisor];
  if (!operands.every((x) => x instanceof Tensor || typeof x === 'number' || typeof x === 'boolean')) return undefined;
  const tensors = operands.filter((x): x is Tensor => x instanceof Tensor);
  // The device straight from libtorch: Tensor.device would also name the dtype, and int8 and int16 have no name here.
  if (tensors.length === 0 || tensors.some((t) => native.meta(t.handle)[1] !== 'cpu')) return undefined;
  const overload = !(dividend instanceof Tensor) ? 'Scalar_Tensor' : divisor instanceof Tensor ? 'Tensor' : 'Scalar';
  const code = call<number>('result_type', overload, dividend, divisor);
  return SIGNED_MINIMUM.has(code) ? code : undefined;
}

function dividesMinimumByMinusOne(dividend: Tensor, divisor: Tensor | number, code: number): boolean {
  try {
    return tidy(() => {
      const minimum = new Tensor(native.fromBuffer(SIGNED_MINIMUM.get(code)!.minimum(), [], code));
      const atMinimum = asType(dividend, code).eq(minimum);
      const hits = divisor instanceof Tensor ? atMinimum.logicalAnd(asType(divisor, code).eq(-1)) : atMinimum;
      return call<Tensor>('any', '', hits).item() !== 0;
    });
  } catch {
    // Operands that do not broadcast: the division itself reports that, under its own name, before any kernel runs.
    return false;
  }
}

function asType(t: Tensor, code: number): Tensor {
  return call('to', 'dtype', t, code);
}

/** Throws unless dim indexes a tensor of rank ndim; returns it as a non-negative index. */
export function normDim(dim: number, ndim: number, what = 'dim'): number {
  const max = Math.max(ndim, 1);
  if (!Number.isInteger(dim) || dim < -max || dim >= max) {
    throw new RangeError(`${what} ${dim} is out of range for a tensor of rank ${ndim} (valid: ${-max}..${max - 1})`);
  }
  return dim < 0 ? dim + max : dim;
}

function shapeString(shape: Shape): string {
  return `[${shape.join(', ')}]`;
}

function checkShape(shape: Shape, what = 'shape'): number[] {
  if (!Array.isArray(shape)) throw new TypeError(`${what} must be an array of non-negative integers`);
  for (const size of shape) {
    if (!Number.isInteger(size) || size < 0) throw new RangeError(`${what} ${shapeString(shape)} must hold non-negative integers`);
  }
  return [...shape];
}

// Frees the native tensor of a Tensor that was dropped without dispose(). Nothing is unregistered on dispose(): the
// handle of a freed tensor names nothing, so the late call is a no-op, and skipping unregister keeps dispose cheap.
const collected = new FinalizationRegistry<NativeTensor>((handle) => native.dispose(handle));

// Registering costs about a tenth of a small op, and most tensors are disposed, by a scope or by hand, in the task
// that made them. So a new tensor waits here and is registered only if it is still alive when the task ends or
// when the queue fills. The collector could not free it any sooner: its callbacks only run between tasks.
const REGISTER_BATCH = 4096;
const unregistered: { tensor: Tensor; handle: NativeTensor }[] = [];
let registerQueued = false;

function registerLater(tensor: Tensor, handle: NativeTensor): void {
  unregistered.push({ tensor, handle });
  if (unregistered.length >= REGISTER_BATCH) registerSurvivors();
  else if (!registerQueued) {
    registerQueued = true;
    queueMicrotask(() => {
      registerQueued = false;
      registerSurvivors();
    });
  }
}

function registerSurvivors(): void {
  for (const { tensor, handle } of unregistered) if (!tensor.isDisposed) collected.register(tensor, handle);
  unregistered.length = 0;
}

export class Tensor {
  #handle: NativeTensor | undefined;
  #dtype?: DType;
  #shape?: number[];
  #device?: string;

  constructor(handle: NativeTensor) {
    this.#handle = handle;
    registerLater(this, handle);
    track(this);
  }

  /** The native handle; using a disposed tensor is an error that says so. */
  get handle(): NativeTensor {
    if (this.#handle === undefined) throw new Error('this tensor was disposed; keep() it or return it from tidy() to use it later');
    return this.#handle;
  }

  get isDisposed(): boolean {
    return this.#handle === undefined;
  }

  dispose(): void {
    if (this.#handle !== undefined) native.dispose(this.#handle);
    this.#handle = undefined;
  }

  #readMeta(): void {
    const [dtype, device, , ...shape] = native.meta(this.handle);
    this.#dtype = dtypeFromCode(dtype);
    this.#device = device;
    this.#shape = shape;
  }

  get dtype(): DType {
    if (!this.#dtype) this.#readMeta();
    return this.#dtype!;
  }

  get shape(): number[] {
    if (!this.#shape) this.#readMeta();
    return [...this.#shape!];
  }

  get device(): string {
    if (!this.#device) this.#readMeta();
    return this.#device!;
  }

  get ndim(): number {
    if (!this.#shape) this.#readMeta();
    return this.#shape!.length;
  }

  get numel(): number {
    if (!this.#shape) this.#readMeta();
    return this.#shape!.reduce((a, b) => a * b, 1);
  }

  size(dim: number): number {
    return this.shape[normDim(dim, this.ndim)];
  }

  toString(): string {
    return this.isDisposed ? 'Tensor(disposed)' : `Tensor(${shapeString(this.shape)}, ${this.dtype}, ${this.device})`;
  }

  // ---- host data ----

  /** Copies the elements to a typed array of the tensor's dtype (row-major). */
  data<D extends DType = DType>(): TypedArrayFor[D] {
    const buffer = native.toBuffer(this.handle);
    hostReadCount++;
    return typedArrayOf(this.dtype as D, buffer);
  }

  /** The elements as plain numbers (float32 for half types), row-major. */
  toArray(): number[] {
    if (this.dtype === 'bfloat16' || this.dtype === 'float16') {
      const asFloat = this.to('float32');
      try {
        return Array.from(asFloat.data() as Float32Array);
      } finally {
        asFloat.dispose();
      }
    }
    const values = this.data();
    return values instanceof BigInt64Array ? Array.from(values, Number) : Array.from(values as ArrayLike<number>);
  }

  /** The single element of a one-element tensor, as a number. */
  item(): number {
    if (this.numel !== 1) throw new RangeError(`item() needs a tensor with one element, got shape ${shapeString(this.shape)}`);
    const value = call<number | boolean>('item', '', this);
    return typeof value === 'boolean' ? Number(value) : value;
  }

  // ---- autograd ----

  get requiresGrad(): boolean {
    return native.meta(this.handle)[2];
  }

  set requiresGrad(value: boolean) {
    native.setRequiresGrad(this.handle, value);
  }

  /** Marks the tensor as a leaf that accumulates gradients; returns this. */
  requiresGrad_(value = true): this {
    native.setRequiresGrad(this.handle, value);
    return this;
  }

  /** The accumulated gradient as a new handle (dispose it), or undefined before any backward pass. */
  get grad(): Tensor | undefined {
    const grad = native.grad(this.handle);
    return grad ? new Tensor(grad) : undefined;
  }

  set grad(value: Tensor | undefined) {
    native.setGrad(this.handle, value?.handle);
  }

  backward(gradient?: Tensor, options: { retainGraph?: boolean } = {}): void {
    if (!gradient && this.numel !== 1) {
      throw new RangeError(`backward() without a gradient needs a scalar, got shape ${shapeString(this.shape)}`);
    }
    native.backward(this.handle, gradient?.handle, options.retainGraph ?? false);
  }

  detach(): Tensor {
    return call('detach', '', this);
  }

  // ---- conversion and layout ----

  /** Converts to a dtype, or moves to a device. Returns a new handle even when nothing changes. */
  to(target: DType | Device, options: { nonBlocking?: boolean } = {}): Tensor {
    if (target === 'cpu' || target.startsWith('cuda')) return call('to', 'device', this, target, dtypeCode(this.dtype), options.nonBlocking ?? false);
    return call('to', 'dtype', this, dtypeCode(target as DType));
  }
  float(): Tensor {
    return this.to('float32');
  }
  cpu(): Tensor {
    return this.to('cpu');
  }
  clone(): Tensor {
    return call('clone', '', this);
  }
  contiguous(): Tensor {
    return call('contiguous', '', this, MEMORY_FORMAT.contiguous);
  }
  /** NHWC memory layout for a 4-D tensor; the shape stays NCHW, as in PyTorch. */
  channelsLast(): Tensor {
    if (this.ndim !== 4) throw new RangeError(`channelsLast() needs a 4-D tensor, got shape ${shapeString(this.shape)}`);
    return call('contiguous', '', this, MEMORY_FORMAT.channelsLast);
  }
  isContiguous(layout: 'contiguous' | 'channelsLast' = 'contiguous'): boolean {
    return native.isContiguous(this.handle, MEMORY_FORMAT[layout]);
  }

  // ---- views and shape ----

  reshape(shape: Shape): Tensor {
    const target = [...shape];
    const known = target.filter((s) => s !== -1).reduce((a, b) => a * b, 1);
    const inferred = target.filter((s) => s === -1).length;
    if (inferred > 1 || (inferred === 0 && known !== this.numel) || (inferred === 1 && (known === 0 || this.numel % known !== 0))) {
      throw new RangeError(`cannot reshape ${shapeString(this.shape)} (${this.numel} elements) to ${shapeString(target)}`);
    }
    return call('reshape', '', this, target);
  }
  view(shape: Shape): Tensor {
    return call('view', '', this, [...shape]);
  }
  flatten(startDim = 0, endDim = -1): Tensor {
    return call('flatten', 'using_ints', this, normDim(startDim, this.ndim), normDim(endDim, this.ndim));
  }
  squeeze(dim?: number): Tensor {
    return dim === undefined ? call('squeeze', '', this) : call('squeeze', 'dim', this, normDim(dim, this.ndim));
  }
  unsqueeze(dim: number): Tensor {
    return call('unsqueeze', '', this, normDim(dim, this.ndim + 1));
  }
  permute(dims: readonly number[]): Tensor {
    if (dims.length !== this.ndim) throw new RangeError(`permute: ${dims.length} dims given for a tensor of rank ${this.ndim}`);
    const normalised = dims.map((d) => normDim(d, this.ndim));
    if (new Set(normalised).size !== normalised.length) throw new RangeError(`permute: repeated dim in [${dims.join(', ')}]`);
    return call('permute', '', this, normalised);
  }
  transpose(dim0: number, dim1: number): Tensor {
    return call('transpose', 'int', this, normDim(dim0, this.ndim), normDim(dim1, this.ndim));
  }
  /** The transpose of a 2-D tensor. */
  t(): Tensor {
    return call('t', '', this);
  }
  expand(shape: Shape): Tensor {
    return call('expand', '', this, [...shape], false);
  }
  repeat(repeats: readonly number[]): Tensor {
    return call('repeat', '', this, [...repeats]);
  }
  /** Elements start..end (exclusive) along dim, every step-th; negative bounds count from the end. */
  slice(dim: number, start = 0, end?: number, step = 1): Tensor {
    if (!Number.isInteger(step) || step < 1) throw new RangeError(`slice: step must be a positive integer, got ${step}`);
    return call('slice', 'Tensor', this, normDim(dim, this.ndim), start, end, step);
  }
  narrow(dim: number, start: number, length: number): Tensor {
    const d = normDim(dim, this.ndim);
    const size = this.shape[d];
    if (start < 0 || length < 0 || start + length > size) throw new RangeError(`narrow: [${start}, ${start + length}) is outside dim ${dim} of size ${size}`);
    return call('narrow', '', this, d, start, length);
  }
  select(dim: number, index: number): Tensor {
    const d = normDim(dim, this.ndim);
    const size = this.shape[d];
    if (!Number.isInteger(index) || index < -size || index >= size)
      throw new RangeError(`select: index ${index} is out of range for dim ${dim} of size ${size}`);
    return call('select', 'int', this, d, index);
  }
  /**
   * The slices at index along dim. `boundsChecked` says index is a constant whose values were checked once with
   * checkIndex(), which spares a host read per call on CUDA.
   */
  indexSelect(dim: number, index: Tensor, options: { boundsChecked?: boolean } = {}): Tensor {
    const d = normDim(dim, this.ndim);
    return guardIndex(this, index, this.shape[d], 'indexSelect', options.boundsChecked ?? false, () => call('index_select', '', this, d, index));
  }
  gather(dim: number, index: Tensor): Tensor {
    const d = normDim(dim, this.ndim);
    if (index.ndim !== this.ndim) throw new RangeError(`gather: index has rank ${index.ndim}, input has rank ${this.ndim}`);
    return guardIndex(this, index, this.shape[d], 'gather', false, () => call('gather', '', this, d, index, false));
  }
  split(sizeOrSizes: number | readonly number[], dim = 0): Tensor[] {
    const d = normDim(dim, this.ndim);
    if (typeof sizeOrSizes === 'number') return call('split', 'Tensor', this, sizeOrSizes, d);
    const total = sizeOrSizes.reduce((a, b) => a + b, 0);
    if (total !== this.shape[d]) throw new RangeError(`split: sizes [${sizeOrSizes.join(', ')}] sum to ${total}, dim ${dim} has ${this.shape[d]}`);
    return call('split_with_sizes', '', this, [...sizeOrSizes], d);
  }
  chunk(chunks: number, dim = 0): Tensor[] {
    return call('chunk', '', this, chunks, normDim(dim, this.ndim));
  }
  flip(dims: readonly number[]): Tensor {
    return call(
      'flip',
      '',
      this,
      dims.map((d) => normDim(d, this.ndim)),
    );
  }
  roll(shifts: readonly number[], dims: readonly number[]): Tensor {
    return call(
      'roll',
      '',
      this,
      [...shifts],
      dims.map((d) => normDim(d, this.ndim)),
    );
  }
  /** Rotates by 90° k times in the plane of dims (default: the last two). */
  rot90(k = 1, dims: readonly [number, number] = [-2, -1]): Tensor {
    return call(
      'rot90',
      '',
      this,
      k,
      dims.map((d) => normDim(d, this.ndim)),
    );
  }

  // ---- elementwise ----

  add(other: TensorOrScalar, alpha = 1): Tensor {
    return binary('add', this, other, alpha);
  }
  sub(other: TensorOrScalar, alpha = 1): Tensor {
    return binary('sub', this, other, alpha);
  }
  mul(other: TensorOrScalar): Tensor {
    return binary('mul', this, other);
  }
  div(other: TensorOrScalar): Tensor {
    return binary('div', this, other);
  }
  pow(exponent: TensorOrScalar): Tensor {
    return exponent instanceof Tensor ? call('pow', 'Tensor_Tensor', this, exponent) : call('pow', 'Tensor_Scalar', this, exponent);
  }
  remainder(other: TensorOrScalar): Tensor {
    return binary('remainder', this, other);
  }
  maximum(other: Tensor): Tensor {
    return call('maximum', '', this, other);
  }
  minimum(other: Tensor): Tensor {
    return call('minimum', '', this, other);
  }
  neg(): Tensor {
    return call('neg', '', this);
  }
  abs(): Tensor {
    return call('abs', '', this);
  }
  exp(): Tensor {
    return call('exp', '', this);
  }
  log(): Tensor {
    return call('log', '', this);
  }
  sqrt(): Tensor {
    return call('sqrt', '', this);
  }
  rsqrt(): Tensor {
    return call('rsqrt', '', this);
  }
  reciprocal(): Tensor {
    return call('reciprocal', '', this);
  }
  sin(): Tensor {
    return call('sin', '', this);
  }
  cos(): Tensor {
    return call('cos', '', this);
  }
  tanh(): Tensor {
    return call('tanh', '', this);
  }
  sigmoid(): Tensor {
    return call('sigmoid', '', this);
  }
  relu(): Tensor {
    return call('relu', '', this);
  }
  floor(): Tensor {
    return call('floor', '', this);
  }
  ceil(): Tensor {
    return call('ceil', '', this);
  }
  round(): Tensor {
    return call('round', '', this);
  }
  sign(): Tensor {
    return call('sign', '', this);
  }
  isnan(): Tensor {
    return call('isnan', '', this);
  }
  isfinite(): Tensor {
    return call('isfinite', '', this);
  }
  clamp(min?: number, max?: number): Tensor {
    if (min === undefined && max === undefined) throw new TypeError('clamp: give min, max or both');
    return call('clamp', '', this, min, max);
  }
  lerp(end: Tensor, weight: number): Tensor {
    return call('lerp', 'Scalar', this, end, weight);
  }

  // ---- comparison and logic ----

  eq(other: TensorOrScalar): Tensor {
    return compare('eq', this, other);
  }
  ne(other: TensorOrScalar): Tensor {
    return compare('ne', this, other);
  }
  lt(other: TensorOrScalar): Tensor {
    return compare('lt', this, other);
  }
  le(other: TensorOrScalar): Tensor {
    return compare('le', this, other);
  }
  gt(other: TensorOrScalar): Tensor {
    return compare('gt', this, other);
  }
  ge(other: TensorOrScalar): Tensor {
    return compare('ge', this, other);
  }
  logicalNot(): Tensor {
    return call('logical_not', '', this);
  }
  logicalAnd(other: Tensor): Tensor {
    return call('logical_and', '', this, other);
  }
  logicalOr(other: Tensor): Tensor {
    return call('logical_or', '', this, other);
  }
  maskedFill(mask: Tensor, value: number): Tensor {
    if (mask.dtype !== 'bool') throw new TypeError(`maskedFill: mask must be bool, got ${mask.dtype}`);
    return call('masked_fill', 'Scalar', this, mask, value);
  }

  // ---- reductions ----

  sum(dims?: number | readonly number[], keepdim = false): Tensor {
    return reduce('sum', this, dims, keepdim);
  }
  mean(dims?: number | readonly number[], keepdim = false): Tensor {
    return reduce('mean', this, dims, keepdim);
  }
  amax(dims: number | readonly number[] = [], keepdim = false): Tensor {
    return call('amax', '', this, dimList(this, dims), keepdim);
  }
  amin(dims: number | readonly number[] = [], keepdim = false): Tensor {
    return call('amin', '', this, dimList(this, dims), keepdim);
  }
  /** The largest element, or along dim the largest values (use argmax for their indices). */
  max(dim?: number, keepdim = false): Tensor {
    return dim === undefined ? call('max', '', this) : call<Tensor[]>('max', 'dim', this, normDim(dim, this.ndim), keepdim)[0];
  }
  min(dim?: number, keepdim = false): Tensor {
    return dim === undefined ? call('min', '', this) : call<Tensor[]>('min', 'dim', this, normDim(dim, this.ndim), keepdim)[0];
  }
  argmax(dim?: number, keepdim = false): Tensor {
    return call('argmax', '', this, dim === undefined ? undefined : normDim(dim, this.ndim), keepdim);
  }
  argmin(dim?: number, keepdim = false): Tensor {
    return call('argmin', '', this, dim === undefined ? undefined : normDim(dim, this.ndim), keepdim);
  }
  /** Variance with Bessel's correction unless unbiased is false. */
  var(dims?: number | readonly number[], options: { unbiased?: boolean; keepdim?: boolean } = {}): Tensor {
    return call('var', 'dim', this, dims === undefined ? undefined : dimList(this, dims), options.unbiased ?? true, options.keepdim ?? false);
  }
  std(dims?: number | readonly number[], options: { unbiased?: boolean; keepdim?: boolean } = {}): Tensor {
    return call('std', 'dim', this, dims === undefined ? undefined : dimList(this, dims), options.unbiased ?? true, options.keepdim ?? false);
  }
  prod(): Tensor {
    return call('prod', '', this);
  }
  norm(p = 2): Tensor {
    return call('norm', 'Scalar', this, p);
  }
  logsumexp(dims: number | readonly number[], keepdim = false): Tensor {
    return call('logsumexp', '', this, dimList(this, dims), keepdim);
  }
  cumsum(dim: number): Tensor {
    return call('cumsum', '', this, normDim(dim, this.ndim));
  }
  topk(k: number, dim = -1, largest = true, sorted = true): { values: Tensor; indices: Tensor } {
    const d = normDim(dim, this.ndim);
    if (!Number.isInteger(k) || k < 0 || k > this.shape[d]) throw new RangeError(`topk: k=${k} is out of range for dim ${dim} of size ${this.shape[d]}`);
    const [values, indices] = call<Tensor[]>('topk', '', this, k, d, largest, sorted);
    return { values, indices };
  }
  sort(dim = -1, descending = false): { values: Tensor; indices: Tensor } {
    const [values, indices] = call<Tensor[]>('sort', '', this, normDim(dim, this.ndim), descending);
    return { values, indices };
  }

  // ---- linear algebra ----

  matmul(other: Tensor): Tensor {
    const a = this.shape;
    const b = other.shape;
    if (a.length === 0 || b.length === 0) throw new RangeError('matmul: both operands need at least one dimension');
    const inner = b.length === 1 ? b[0] : b[b.length - 2];
    if (a[a.length - 1] !== inner) throw new RangeError(`matmul: shapes ${shapeString(a)} and ${shapeString(b)} do not fit (${a[a.length - 1]} ≠ ${inner})`);
    return call('matmul', '', this, other);
  }
  mm(other: Tensor): Tensor {
    if (this.ndim !== 2 || other.ndim !== 2 || this.shape[1] !== other.shape[0])
      throw new RangeError(`mm: shapes ${shapeString(this.shape)} and ${shapeString(other.shape)} do not fit`);
    return call('mm', '', this, other);
  }
  bmm(other: Tensor): Tensor {
    const a = this.shape;
    const b = other.shape;
    if (a.length !== 3 || b.length !== 3 || a[0] !== b[0] || a[2] !== b[1])
      throw new RangeError(`bmm: shapes ${shapeString(a)} and ${shapeString(b)} do not fit`);
    return call('bmm', '', this, other);
  }

  // ---- in place (optimizers and initialisation); each returns this ----

  add_(other: TensorOrScalar, alpha = 1): this {
    return inPlace(this, other instanceof Tensor ? call('add_', 'Tensor', this, other, alpha) : call('add_', 'Scalar', this, other, alpha));
  }
  sub_(other: TensorOrScalar, alpha = 1): this {
    return inPlace(this, other instanceof Tensor ? call('sub_', 'Tensor', this, other, alpha) : call('sub_', 'Scalar', this, other, alpha));
  }
  mul_(other: TensorOrScalar): this {
    return inPlace(this, other instanceof Tensor ? call('mul_', 'Tensor', this, other) : call('mul_', 'Scalar', this, other));
  }
  div_(other: TensorOrScalar): this {
    return inPlace(this, other instanceof Tensor ? call('div_', 'Tensor', this, other) : call('div_', 'Scalar', this, other));
  }
  addcmul_(a: Tensor, b: Tensor, value = 1): this {
    return inPlace(this, call('addcmul_', '', this, a, b, value));
  }
  addcdiv_(a: Tensor, b: Tensor, value = 1): this {
    return inPlace(this, call('addcdiv_', '', this, a, b, value));
  }
  lerp_(end: Tensor, weight: number): this {
    return inPlace(this, call('lerp_', 'Scalar', this, end, weight));
  }
  clamp_(min?: number, max?: number): this {
    return inPlace(this, call('clamp_', '', this, min, max));
  }
  copy_(source: Tensor): this {
    if (source.numel !== this.numel && source.numel !== 1)
      throw new RangeError(`copy_: source ${shapeString(source.shape)} does not fit ${shapeString(this.shape)}`);
    return inPlace(this, call('copy_', '', this, source, false));
  }
  fill_(value: number): this {
    return inPlace(this, call('fill_', 'Scalar', this, value));
  }
  zero_(): this {
    return inPlace(this, call('zero_', '', this));
  }
  uniform_(low = 0, high = 1): this {
    return inPlace(this, call('uniform_', '', this, low, high));
  }
  normal_(mean = 0, std = 1): this {
    return inPlace(this, call('normal_', '', this, mean, std));
  }
}

/** In-place ops return a second handle to the same tensor; free it at once and hand back the original. */
function inPlace<T extends Tensor>(self: T, alias: Tensor): T {
  alias.dispose();
  return self;
}

function binary(name: string, a: Tensor, b: TensorOrScalar, alpha?: number): Tensor {
  if (b instanceof Tensor) return alpha === undefined ? call(name, 'Tensor', a, b) : call(name, 'Tensor', a, b, alpha);
  return alpha === undefined ? call(name, 'Scalar', a, b) : call(name, 'Scalar', a, b, alpha);
}

function compare(name: string, a: Tensor, b: TensorOrScalar): Tensor {
  return b instanceof Tensor ? call(name, 'Tensor', a, b) : call(name, 'Scalar', a, b);
}

function dimList(t: Tensor, dims: number | readonly number[]): number[] {
  return (typeof dims === 'number' ? [dims] : [...dims]).map((d) => normDim(d, t.ndim));
}

function reduce(name: 'sum' | 'mean', t: Tensor, dims: number | readonly number[] | undefined, keepdim: boolean): Tensor {
  if (name === 'mean' && !isFloating(t.dtype)) throw new TypeError(`mean needs a floating-point tensor, got ${t.dtype}; convert with .float()`);
  if (dims === undefined) return call(name, '', t);
  return call(name, name === 'sum' ? 'dim_IntList' : 'dim', t, dimList(t, dims), keepdim);
}

/** Throws unless index is int64 or int32 with every value in [0, size). Reads the values' range: one host read. */
export function checkIndex(index: Tensor, size: number, what: string): void {
  checkIndexType(index, what);
  if (index.numel === 0) return;
  const [lo, hi] = tidy(() => stack([index.amin(), index.amax()]).toArray());
  if (lo < 0 || hi >= size) throw new RangeError(`${what}: index values span [${lo}, ${hi}], outside a dimension of size ${size}`);
}

function checkIndexType(index: Tensor, what: string): void {
  if (index.dtype !== 'int64' && index.dtype !== 'int32') throw new TypeError(`${what}: index must be int64 or int32, got ${index.dtype}`);
}

/**
 * Runs an op that indexes source with index. On the CPU libtorch's kernels check the values themselves and raise an
 * error, which becomes a JS exception; only then is the index read, to say what was wrong. A CUDA kernel would
 * stop on a device-side assert that leaves the device unusable for the rest of the process, so there the values
 * are checked first, unless boundsChecked says that was done once for a constant index.
 */
function guardIndex(source: Tensor, index: Tensor, size: number, what: string, boundsChecked: boolean, run: () => Tensor): Tensor {
  checkIndexType(index, what);
  // The device straight from libtorch: the meta getters would also name the dtype, and int8 and int16 have no name here.
  const onCpu = native.meta(source.handle)[1] === 'cpu' && native.meta(index.handle)[1] === 'cpu';
  if (!onCpu) {
    if (!boundsChecked) checkIndex(index, size, what);
    return run();
  }
  try {
    return run();
  } catch (error) {
    checkIndex(index, size, what);
    throw error;
  }
}

// ---- creation ----

function creationArgs(options: CreateOptions, fallback: DType = 'float32'): [number, undefined, string | undefined] {
  return [dtypeCode(options.dtype ?? fallback), undefined, options.device];
}

function finish(t: Tensor, options: CreateOptions): Tensor {
  if (options.requiresGrad) t.requiresGrad_(true);
  return t;
}

/** A tensor from a typed array or nested-free number array, with an explicit shape (defaults to 1-D). */
export function tensor(values: AnyTypedArray | readonly number[], shape?: Shape, options: CreateOptions = {}): Tensor {
  const array = Array.isArray(values) ? toTypedArray(values as number[], options.dtype ?? 'float32') : (values as AnyTypedArray);
  const dtype = options.dtype ?? dtypeOfArray(array);
  const dims = checkShape(shape ?? [array.length]);
  const expected = dims.reduce((a, b) => a * b, 1);
  if (expected !== array.length) throw new RangeError(`tensor: ${array.length} values do not fill shape ${shapeString(dims)} (${expected})`);
  // The bytes are copied as they are, so the array must be the kind that holds this dtype (a Float32Array
  // read as int32 would give bit patterns, not values).
  const holder = typedArrayOf(dtype, new ArrayBuffer(0)).constructor as new () => ArrayBufferView;
  if (!(array instanceof holder || (holder === Uint8Array && array instanceof Uint8ClampedArray))) {
    throw new TypeError(`tensor: a ${array.constructor.name} cannot hold ${dtype} values`);
  }
  let t: Tensor;
  if (dtype === 'bool') {
    // libtorch assumes bool bytes are 0 or 1; any other byte would make comparisons and sums wrong.
    const bytes = new Tensor(native.fromBuffer(array, dims, dtypeCode('uint8')));
    t = bytes.ne(0);
    bytes.dispose();
  } else {
    t = new Tensor(native.fromBuffer(array, dims, dtypeCode(dtype)));
  }
  if (options.device && options.device !== 'cpu') {
    const moved = t.to(options.device);
    t.dispose();
    t = moved;
  }
  return finish(t, options);
}

const INTEGER_RANGES: Partial<Record<DType, [number, number]>> = {
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  int32: [-(2 ** 31), 2 ** 31 - 1],
  uint8: [0, 255],
};

function toTypedArray(values: number[], dtype: DType): AnyTypedArray {
  const range = INTEGER_RANGES[dtype];
  if (range) {
    // Fractions truncate toward zero, as in PyTorch; typed arrays would also wrap 256 to 0 and turn NaN into 0.
    for (const v of values) {
      const whole = Math.trunc(v);
      if (!Number.isFinite(v) || whole < range[0] || whole > range[1]) throw new RangeError(`tensor: ${v} cannot be converted to ${dtype}`);
    }
  }
  switch (dtype) {
    case 'float64':
      return Float64Array.from(values);
    case 'int64':
      return BigInt64Array.from(values, (v) => BigInt(Math.trunc(v)));
    case 'int32':
      return Int32Array.from(values);
    case 'uint8':
      return Uint8Array.from(values);
    case 'bool':
      return Uint8Array.from(values, (v) => (v ? 1 : 0));
    case 'float32':
      return Float32Array.from(values);
    default:
      throw new TypeError(`tensor: build ${dtype} tensors from float32 values and convert with .to('${dtype}')`);
  }
}

export function scalar(value: number, options: CreateOptions = {}): Tensor {
  return full([], value, options);
}

export function zeros(shape: Shape, options: CreateOptions = {}): Tensor {
  return finish(call('zeros', '', checkShape(shape), ...creationArgs(options)), options);
}

export function ones(shape: Shape, options: CreateOptions = {}): Tensor {
  return finish(call('ones', '', checkShape(shape), ...creationArgs(options)), options);
}

export function empty(shape: Shape, options: CreateOptions = {}): Tensor {
  return finish(call('empty', 'memory_format', checkShape(shape), ...creationArgs(options)), options);
}

export function full(shape: Shape, value: number, options: CreateOptions = {}): Tensor {
  return finish(call('full', '', checkShape(shape), value, ...creationArgs(options)), options);
}

export function zerosLike(t: Tensor, options: CreateOptions = {}): Tensor {
  return zeros(t.shape, { dtype: t.dtype, device: t.device as Device, ...options });
}

export function onesLike(t: Tensor, options: CreateOptions = {}): Tensor {
  return ones(t.shape, { dtype: t.dtype, device: t.device as Device, ...options });
}

/** Values start, start+step, … below end; int64 unless a dtype is given or a bound is fractional. */
export function arange(start: number, end?: number, step = 1, options: CreateOptions = {}): Tensor {
  const [lo, hi] = end === undefined ? [0, start] : [start, end];
  if (step === 0) throw new RangeError('arange: step must not be zero');
  const integral = [lo, hi, step].every(Number.isInteger);
  return finish(call('arange', 'start_step', lo, hi, step, ...creationArgs(options, integral ? 'int64' : 'float32')), options);
}

export function linspace(start: number, end: number, steps: number, options: CreateOptions = {}): Tensor {
  return finish(call('linspace', '', start, end, steps, ...creationArgs(options)), options);
}

/** Uniform [0, 1) samples; with a seed they come from a private generator and are repeatable. */
export function rand(shape: Shape, options: CreateOptions & { seed?: number } = {}): Tensor {
  return random('rand', shape, options);
}

/** Standard normal samples; with a seed they come from a private generator and are repeatable. */
export function randn(shape: Shape, options: CreateOptions & { seed?: number } = {}): Tensor {
  return random('randn', shape, options);
}

function random(kind: 'rand' | 'randn', shape: Shape, options: CreateOptions & { seed?: number }): Tensor {
  const dtype = options.dtype ?? 'float32';
  if (!isFloating(dtype)) throw new TypeError(`${kind}: dtype must be floating point, got ${dtype}`);
  if (options.seed !== undefined && !(Number.isSafeInteger(options.seed) && options.seed >= 0)) {
    throw new RangeError(`${kind}: seed must be a non-negative integer, got ${options.seed}`);
  }
  let t =
    options.seed === undefined
      ? call(kind, '', checkShape(shape), ...creationArgs(options))
      : new Tensor(native.randomSeeded(kind, checkShape(shape), dtypeCode(dtype), options.seed));
  if (options.seed !== undefined && options.device && options.device !== 'cpu') {
    const moved = t.to(options.device);
    t.dispose();
    t = moved;
  }
  return finish(t, options);
}

/** Random integers in [low, high). */
export function randint(low: number, high: number, shape: Shape, options: CreateOptions = {}): Tensor {
  return finish(call('randint', 'low', low, high, checkShape(shape), ...creationArgs(options, 'int64')), options);
}

export function randperm(n: number, options: CreateOptions = {}): Tensor {
  return call('randperm', '', n, ...creationArgs(options, 'int64'));
}

// ---- combining ----

export function cat(tensors: readonly Tensor[], dim = 0): Tensor {
  if (tensors.length === 0) throw new RangeError('cat: needs at least one tensor');
  const first = tensors[0].shape;
  const d = normDim(dim, first.length);
  for (const t of tensors) {
    const shape = t.shape;
    if (shape.length !== first.length || shape.some((s, i) => i !== d && s !== first[i])) {
      throw new RangeError(`cat: shapes ${tensors.map((x) => shapeString(x.shape)).join(', ')} differ outside dim ${dim}`);
    }
  }
  return call('cat', '', [...tensors], d);
}

export function stack(tensors: readonly Tensor[], dim = 0): Tensor {
  if (tensors.length === 0) throw new RangeError('stack: needs at least one tensor');
  const first = shapeString(tensors[0].shape);
  for (const t of tensors) if (shapeString(t.shape) !== first) throw new RangeError(`stack: shapes differ (${first} vs ${shapeString(t.shape)})`);
  return call('stack', '', [...tensors], normDim(dim, tensors[0].ndim + 1));
}

/** Elementwise choice: condition ? a : b. */
export function where(condition: Tensor, a: TensorOrScalar, b: TensorOrScalar): Tensor {
  if (condition.dtype !== 'bool') throw new TypeError(`where: condition must be bool, got ${condition.dtype}`);
  if (a instanceof Tensor && b instanceof Tensor) return call('where', 'self', condition, a, b);
  if (a instanceof Tensor) return call('where', 'ScalarOther', condition, a, b);
  if (b instanceof Tensor) return call('where', 'ScalarSelf', condition, a, b);
  return call('where', 'Scalar', condition, a, b);
}
