// The project's seeded generator, apart from the engine, so that the data code that draws samples loads no tensors.

/** mulberry32: a small, well-distributed 32-bit generator; enough for augmentation draws and seeded samples. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
