// Data types: names users write, the codes libtorch uses (c10::ScalarType), and the typed arrays that hold them.

export type DType = 'float32' | 'float64' | 'bfloat16' | 'float16' | 'int64' | 'int32' | 'uint8' | 'bool';

export const DTYPES: readonly DType[] = ['float32', 'float64', 'bfloat16', 'float16', 'int64', 'int32', 'uint8', 'bool'];

const CODES: Record<DType, number> = {
  uint8: 0,
  int32: 3,
  int64: 4,
  float16: 5,
  float32: 6,
  float64: 7,
  bool: 11,
  bfloat16: 15,
};
const BY_CODE = new Map<number, DType>(Object.entries(CODES).map(([name, code]) => [code, name as DType]));

/** Typed arrays by dtype. Half-precision types travel as their raw 16-bit patterns. */
export interface TypedArrayFor {
  float32: Float32Array;
  float64: Float64Array;
  bfloat16: Uint16Array;
  float16: Uint16Array;
  int64: BigInt64Array;
  int32: Int32Array;
  uint8: Uint8Array;
  bool: Uint8Array;
}
export type AnyTypedArray = TypedArrayFor[DType];

const ARRAY_TYPES = {
  float32: Float32Array,
  float64: Float64Array,
  bfloat16: Uint16Array,
  float16: Uint16Array,
  int64: BigInt64Array,
  int32: Int32Array,
  uint8: Uint8Array,
  bool: Uint8Array,
} as const;

export function dtypeCode(dtype: DType): number {
  const code = CODES[dtype];
  if (code === undefined) throw new TypeError(`unknown dtype '${dtype}'; expected one of ${DTYPES.join(', ')}`);
  return code;
}

export function dtypeFromCode(code: number): DType {
  const dtype = BY_CODE.get(code);
  if (!dtype) throw new TypeError(`libtorch returned scalar type ${code}, which hemato does not expose`);
  return dtype;
}

export function isFloating(dtype: DType): boolean {
  return dtype === 'float32' || dtype === 'float64' || dtype === 'bfloat16' || dtype === 'float16';
}

export function itemSize(dtype: DType): number {
  return ARRAY_TYPES[dtype].BYTES_PER_ELEMENT;
}

export function typedArrayOf<D extends DType>(dtype: D, buffer: ArrayBuffer): TypedArrayFor[D] {
  return new ARRAY_TYPES[dtype](buffer) as TypedArrayFor[D];
}

/** The dtype a typed array holds by default; Uint16Array is ambiguous, so it needs an explicit dtype. */
export function dtypeOfArray(array: ArrayBufferView): DType {
  if (array instanceof Float32Array) return 'float32';
  if (array instanceof Float64Array) return 'float64';
  if (array instanceof BigInt64Array) return 'int64';
  if (array instanceof Int32Array) return 'int32';
  if (array instanceof Uint8Array) return 'uint8';
  throw new TypeError(`cannot infer a dtype from ${array.constructor.name}; pass { dtype } explicitly`);
}
