// A perceptual hash per image, and all pairs of images whose hashes lie within a Hamming distance: re-encoded,
// resized, re-lit or slightly shifted copies that a content hash cannot see.
import type { RgbImage } from '../preprocess/image.js';

/** What `perceptualHash` computes; recorded beside every threshold on its distances. */
export const PHASH_METHOD = 'dct-256';

/** Bits in a hash, and hex digits in its string form. */
export const PHASH_BITS = 256;

/** The default threshold on the distance between two hashes, chosen on PBC (docs/data.md). */
export const DEFAULT_NEAR_THRESHOLD = 60;

const SIDE = 64;
const KEEP = 16;
const CORNER = 8;

/** cos((2x + 1)uπ / 128) for the 16 lowest frequencies u and the 64 positions x: one row per u. */
const COSINES = (() => {
  const table = new Float64Array(KEEP * SIDE);
  for (let u = 0; u < KEEP; u++) for (let x = 0; x < SIDE; x++) table[u * SIDE + x] = Math.cos(((2 * x + 1) * u * Math.PI) / (2 * SIDE));
  return table;
})();

/** The coefficients in bit order: the 8×8 lowest frequencies first (row by row), then the rest of the 16×16 block. */
const BIT_ORDER = (() => {
  const order: number[] = [];
  for (let u = 0; u < CORNER; u++) for (let v = 0; v < CORNER; v++) order.push(u * KEEP + v);
  for (let u = 0; u < KEEP; u++) for (let v = 0; v < KEEP; v++) if (u >= CORNER || v >= CORNER) order.push(u * KEEP + v);
  return order;
})();

/**
 * The DCT hash ("pHash": Zauner, Implementation and Benchmarking of Perceptual Image Hash Functions, 2010), at the
 * 16×16 size of the imagehash package's `phash(hash_size=16)`: BT.601 luma box-averaged to 64×64, a 2-D DCT-II, and
 * one bit per coefficient of its 16×16 lowest frequencies, set when the coefficient exceeds their median. Low
 * frequencies survive re-encoding, resizing and blur, and brightness or contrast changes move only the DC term or
 * scale all terms alike. The common 8×8 (64-bit) hash is too coarse for PBC, where every image is one stained cell
 * centred among red cells: it puts distinct cells as close as a shifted copy. The 16×16 block also sees the red cells
 * around the cell.
 * Returned as 64 hex digits, the 8×8 lowest frequencies first, so the first 16 digits are a coarse hash of their own.
 */
export function perceptualHash(image: RgbImage): string {
  const grey = boxAverageLuma(image);
  // Separable DCT: rows first (64 rows × 16 frequencies), then columns, keeping only the 16×16 block.
  const rows = new Float64Array(SIDE * KEEP);
  for (let y = 0; y < SIDE; y++)
    for (let v = 0; v < KEEP; v++) {
      let sum = 0;
      for (let x = 0; x < SIDE; x++) sum += grey[y * SIDE + x] * COSINES[v * SIDE + x];
      rows[y * KEEP + v] = sum;
    }
  const coefficients = new Float64Array(KEEP * KEEP);
  for (let u = 0; u < KEEP; u++)
    for (let v = 0; v < KEEP; v++) {
      let sum = 0;
      for (let y = 0; y < SIDE; y++) sum += rows[y * KEEP + v] * COSINES[u * SIDE + y];
      coefficients[u * KEEP + v] = sum;
    }
  const sorted = Float64Array.from(coefficients).sort();
  const median = (sorted[(KEEP * KEEP - 1) >> 1] + sorted[(KEEP * KEEP) >> 1]) / 2;
  let hex = '';
  for (let nibble = 0; nibble < PHASH_BITS / 4; nibble++) {
    let value = 0;
    for (let k = 0; k < 4; k++) value = (value << 1) | (coefficients[BIT_ORDER[nibble * 4 + k]] > median ? 1 : 0);
    hex += value.toString(16);
  }
  return hex;
}

/** The mean luma (×1000) of each of 64×64 cells; a side shorter than 64 repeats pixels rather than leave a cell empty. */
function boxAverageLuma({ width, height, data }: RgbImage): Float64Array {
  if (!(width > 0 && height > 0) || data.length < width * height * 3) throw new Error(`perceptualHash needs an RGB image, got ${width}×${height}`);
  const bounds = (length: number) => {
    const start = new Int32Array(SIDE);
    const end = new Int32Array(SIDE);
    for (let i = 0; i < SIDE; i++) {
      start[i] = Math.floor((i * length) / SIDE);
      end[i] = Math.max(start[i] + 1, Math.floor(((i + 1) * length) / SIDE));
    }
    return { start, end };
  };
  const xs = bounds(width);
  const ys = bounds(height);
  // Integer luma (×1000), summed exactly per cell; a row or column shared by two cells (small images) counts in both.
  const grey = new Float64Array(SIDE * SIDE);
  for (let r = 0; r < SIDE; r++) {
    for (let y = ys.start[r]; y < ys.end[r]; y++) {
      const row = y * width * 3;
      for (let c = 0; c < SIDE; c++) {
        let sum = 0;
        for (let i = row + xs.start[c] * 3, stop = row + xs.end[c] * 3; i < stop; i += 3) sum += 299 * data[i] + 587 * data[i + 1] + 114 * data[i + 2];
        grey[r * SIDE + c] += sum;
      }
    }
    for (let c = 0; c < SIDE; c++) grey[r * SIDE + c] /= (ys.end[r] - ys.start[r]) * (xs.end[c] - xs.start[c]);
  }
  return grey;
}

function popcount32(x: number): number {
  x -= (x >>> 1) & 0x55555555;
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

const WORDS = PHASH_BITS / 32;

function toWords(hashes: readonly string[]): Int32Array {
  const words = new Int32Array(hashes.length * WORDS);
  hashes.forEach((hash, k) => {
    if (hash.length !== PHASH_BITS / 4 || !/^[0-9a-f]+$/.test(hash)) throw new Error(`not a ${PHASH_BITS}-bit hash in hex: "${hash}"`);
    for (let w = 0; w < WORDS; w++) words[k * WORDS + w] = parseInt(hash.slice(w * 8, w * 8 + 8), 16) | 0;
  });
  return words;
}

/** The number of bits in which two hashes from `perceptualHash` differ. */
export function hammingDistance(a: string, b: string): number {
  const words = toWords([a, b]);
  let distance = 0;
  for (let w = 0; w < WORDS; w++) distance += popcount32(words[w] ^ words[WORDS + w]);
  return distance;
}

export interface HashPair {
  /** Indices into the hashes given, i < j. */
  i: number;
  j: number;
  distance: number;
}

/**
 * The pairs of hashes at Hamming distance ≤ `threshold`, sorted by i, then j. A pass over all pairs compares the first
 * 64 bits (the 8×8 lowest frequencies) alone and keeps pairs within a quarter of the threshold there; only those are
 * compared in full. That pass could drop a pair whose differences lie mostly in the lowest frequencies, but edits
 * change those least: on PBC and on its edited copies it dropped none (docs/data.md). It costs 0.7 s of CPU for PBC's
 * 14.5k images, against 3.8 s comparing all 256 bits. Bands of bits looked up in tables (multi-index hashing) were
 * slower still: PBC's hashes crowd into few band values.
 */
export function hashPairs(hashes: readonly string[], threshold: number): HashPair[] {
  const pairs: HashPair[] = [];
  forEachHashPair(hashes, threshold, (pair) => pairs.push(pair));
  return pairs;
}

/** hashPairs() one pair at a time, for callers that keep only some of them. */
export function forEachHashPair(hashes: readonly string[], threshold: number, visit: (pair: HashPair) => void): void {
  if (!(Number.isInteger(threshold) && threshold >= 0 && threshold <= PHASH_BITS))
    throw new Error(`the threshold must be an integer from 0 to ${PHASH_BITS}, got ${threshold}`);
  const words = toWords(hashes);
  const n = hashes.length;
  const coarse = Math.ceil(threshold / 4);
  for (let i = 0; i < n; i++) {
    const a0 = words[i * WORDS];
    const a1 = words[i * WORDS + 1];
    for (let j = i + 1; j < n; j++) {
      const b = j * WORDS;
      if (popcount32(a0 ^ words[b]) + popcount32(a1 ^ words[b + 1]) > coarse) continue;
      let distance = 0;
      for (let w = 0; w < WORDS; w++) distance += popcount32(words[i * WORDS + w] ^ words[b + w]);
      if (distance <= threshold) visit({ i, j, distance });
    }
  }
}
