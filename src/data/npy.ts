// NumPy .npy reader (format versions 1–3, C order, little-endian or byte types): reference arrays from Python tools.

export type NpyArray =
  | { dtype: 'float32'; shape: number[]; data: Float32Array }
  | { dtype: 'float64'; shape: number[]; data: Float64Array }
  | { dtype: 'uint8'; shape: number[]; data: Uint8Array }
  | { dtype: 'int32'; shape: number[]; data: Int32Array };

export function parseNpy(bytes: Uint8Array): NpyArray {
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (!magic.every((b, i) => bytes[i] === b)) throw new Error('not a .npy file (bad magic)');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const header = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(bytes.subarray(headerStart, headerStart + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) throw new Error(`malformed .npy header: ${header}`);
  if (fortran === 'True') throw new Error('Fortran-order .npy arrays are not supported; save with C order');
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = headerStart + headerLength;
  // Copy into a fresh, aligned buffer: the payload offset need not be a multiple of the element size.
  const payload = (size: number) => {
    if (bytes.length < offset + count * size) throw new Error(`truncated .npy: expected ${count * size} data bytes`);
    return new Uint8Array(bytes.subarray(offset, offset + count * size)).buffer;
  };
  switch (descr) {
    case '<f4':
      return { dtype: 'float32', shape, data: new Float32Array(payload(4)) };
    case '<f8':
      return { dtype: 'float64', shape, data: new Float64Array(payload(8)) };
    case '|u1':
    case '|b1':
      return { dtype: 'uint8', shape, data: new Uint8Array(payload(1)) };
    case '<i4':
      return { dtype: 'int32', shape, data: new Int32Array(payload(4)) };
    default:
      throw new Error(`unsupported .npy dtype ${descr}`);
  }
}
