// Swin Transformer v1 (Liu et al. 2021) with timm 1.0's semantics and parameter names. Maps stay NHWC throughout.
import * as E from '../engine/index.js';
import { Conv2d, DropPath, Identity, LayerNorm, Linear, Module, ModuleList, Sequential, dropPathRates, truncNormal_, type UnaryModule } from '../nn/index.js';
import { ClassifierHead, ImageClassifier, type FilteredCheckpoint } from './classifier.js';
import { registerModel } from './registry.js';

type Tensor = E.Tensor;
type Pair = [number, number];

export interface SwinConfig {
  /** Side of the square input. Swin's windows and masks are fixed by it, so other sizes are refused. */
  inputSize: number;
  patchSize?: number;
  inChannels?: number;
  embedDim: number;
  depths: readonly number[];
  numHeads: readonly number[];
  windowSize: number;
  mlpRatio?: number;
  /** 0 builds a backbone without a head (the dual-path network's Swin path). */
  numClasses: number;
  dropRate?: number;
  attnDropRate?: number;
  dropPathRate?: number;
}

/** timm's rule: a window no smaller than the map shrinks to it, and such a block does not shift. */
export function windowAndShift(resolution: Pair, window: number, shift: number): { window: Pair; shift: Pair } {
  const w = resolution.map((r) => (r <= window ? r : window)) as Pair;
  const s = resolution.map((r, i) => (r <= w[i] ? 0 : shift)) as Pair;
  return { window: w, shift: s };
}

/** For each pair of tokens in a window, the row of the bias table holding their relative offset. */
export function relativePositionIndex([wh, ww]: Pair): Tensor {
  const n = wh * ww;
  const index = new BigInt64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const dy = Math.floor(i / ww) - Math.floor(j / ww) + wh - 1;
      const dx = (i % ww) - (j % ww) + ww - 1;
      index[i * n + j] = BigInt(dy * (2 * ww - 1) + dx);
    }
  }
  return E.tensor(index, [n, n]);
}

/**
 * Throws unless index fits a window of this size: [N, N] rows of its bias table. The index is a constant, so it is
 * checked once, when built, and the forward pass indexes with it without reading it back from the device.
 */
export function checkRelativePositionIndex(index: Tensor, [wh, ww]: Pair): void {
  const n = wh * ww;
  if (index.ndim !== 2 || index.shape[0] !== n || index.shape[1] !== n) {
    throw new RangeError(`relative_position_index must be [${n}, ${n}] for a ${wh}×${ww} window, got [${index.shape.join(', ')}]`);
  }
  E.checkIndex(index, (2 * wh - 1) * (2 * ww - 1), 'relative_position_index');
}

/**
 * The additive mask [windows, N, N] for shifted windows: after the cyclic shift some windows hold pieces from
 * opposite edges of the map, which must not attend to each other (−100 between regions, as timm uses).
 */
export function shiftedWindowMask(padded: Pair, window: Pair, shift: Pair): Tensor {
  const [hp, wp] = padded;
  const regions = (size: number, w: number, s: number) => [[0, size - w], [size - w, size - s], [size - s, size]];
  const label = new Int32Array(hp * wp);
  let count = 0;
  for (const [h0, h1] of regions(hp, window[0], shift[0])) {
    for (const [w0, w1] of regions(wp, window[1], shift[1])) {
      for (let y = h0; y < h1; y++) for (let x = w0; x < w1; x++) label[y * wp + x] = count;
      count++;
    }
  }
  const rows = hp / window[0];
  const cols = wp / window[1];
  const n = window[0] * window[1];
  const mask = new Float32Array(rows * cols * n * n);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const labels = Array.from({ length: n }, (_, t) => label[(r * window[0] + Math.floor(t / window[1])) * wp + c * window[1] + (t % window[1])]);
      const base = (r * cols + c) * n * n;
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) mask[base + i * n + j] = labels[i] === labels[j] ? 0 : -100;
    }
  }
  return E.tensor(mask, [rows * cols, n, n]);
}

/** Multi-head self-attention inside windows, with a learned bias per relative offset and head. */
export class WindowAttention extends Module {
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly headDim: number;

  constructor(readonly dim: number, readonly numHeads: number, readonly window: Pair, readonly attnDrop = 0) {
    super();
    if (dim % numHeads !== 0) throw new RangeError(`WindowAttention: ${numHeads} heads must divide dim ${dim}`);
    this.headDim = dim / numHeads;
    truncNormal_(this.registerParameter('relative_position_bias_table', E.empty([(2 * window[0] - 1) * (2 * window[1] - 1), numHeads])));
    const index = relativePositionIndex(window);
    checkRelativePositionIndex(index, window);
    this.registerBuffer('relative_position_index', index, false);
    this.qkv = this.registerModule('qkv', new Linear(dim, 3 * dim));
    this.proj = this.registerModule('proj', new Linear(dim, dim));
  }

  /** The bias [heads, N, N] from the table. */
  relativePositionBias(): Tensor {
    const n = this.window[0] * this.window[1];
    return E.tidy(() => this.parameter('relative_position_bias_table')
      .indexSelect(0, this.buffer('relative_position_index').view([-1]), { boundsChecked: true })
      .view([n, n, this.numHeads])
      .permute([2, 0, 1]));
  }

  /** windows [B, nW, N, C] → [B, nW, N, C]; mask [nW, N, N] for shifted windows. */
  forward(windows: Tensor, mask: Tensor | undefined): Tensor {
    return E.tidy(() => {
      const [b, nw, n] = windows.shape;
      const qkv = this.qkv.forward(windows).view([b, nw, n, 3, this.numHeads, this.headDim]).permute([3, 0, 1, 4, 2, 5]);
      const bias = this.relativePositionBias();
      // [heads, N, N] broadcasts over batch and windows; with a shift, [nW, heads, N, N] broadcasts over batch.
      const attnMask = mask ? bias.unsqueeze(0).add(mask.unsqueeze(1)) : bias;
      const out = E.F.scaledDotProductAttention(qkv.select(0, 0), qkv.select(0, 1), qkv.select(0, 2), {
        attnMask,
        scale: this.headDim ** -0.5,
        dropoutP: this.training ? this.attnDrop : 0,
      });
      return this.proj.forward(out.transpose(2, 3).reshape([b, nw, n, this.dim]));
    });
  }
}

class SwinMlp extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(dim: number, hidden: number) {
    super();
    this.fc1 = this.registerModule('fc1', new Linear(dim, hidden));
    this.fc2 = this.registerModule('fc2', new Linear(hidden, dim));
  }

  forward(x: Tensor): Tensor {
    return E.tidy(() => this.fc2.forward(E.F.gelu(this.fc1.forward(x))));
  }
}

export interface SwinBlockOptions {
  dim: number;
  /** The map this block sees (timm's input_resolution); it fixes the window, the shift and the mask. */
  resolution: Pair;
  numHeads: number;
  windowSize: number;
  shifted: boolean;
  mlpRatio: number;
  attnDrop: number;
  dropPath: number;
}

export class SwinTransformerBlock extends Module implements UnaryModule {
  readonly window: Pair;
  readonly shift: Pair;
  readonly norm1: LayerNorm;
  readonly attn: WindowAttention;
  readonly norm2: LayerNorm;
  readonly mlp: SwinMlp;
  readonly dropPath: UnaryModule;
  readonly #paddedSize: Pair;

  constructor(readonly options: SwinBlockOptions) {
    super();
    const { dim, resolution } = options;
    ({ window: this.window, shift: this.shift } = windowAndShift(resolution, options.windowSize, options.shifted ? Math.floor(options.windowSize / 2) : 0));
    this.#paddedSize = resolution.map((r, i) => Math.ceil(r / this.window[i]) * this.window[i]) as Pair;
    this.norm1 = this.registerModule('norm1', new LayerNorm(dim));
    this.attn = this.registerModule('attn', new WindowAttention(dim, options.numHeads, this.window, options.attnDrop));
    this.norm2 = this.registerModule('norm2', new LayerNorm(dim));
    this.mlp = this.registerModule('mlp', new SwinMlp(dim, Math.floor(dim * options.mlpRatio)));
    // One DropPath serves both branches: it has no state, and timm's drop_path1/drop_path2 hold no parameters.
    this.dropPath = options.dropPath > 0 ? new DropPath(options.dropPath) : new Identity();
    this.registerModule('drop_path', this.dropPath);
    if (this.shift[0] > 0 || this.shift[1] > 0) this.registerBuffer('attn_mask', shiftedWindowMask(this.#paddedSize, this.window, this.shift), false);
  }

  get hasShift(): boolean {
    return this.shift[0] > 0 || this.shift[1] > 0;
  }

  /** Shift, pad bottom/right to whole windows, attend within windows, and undo both (timm's order). */
  #attention(x: Tensor): Tensor {
    const [b, h, w, c] = x.shape;
    const [wh, ww] = this.window;
    const [hp, wp] = [Math.ceil(h / wh) * wh, Math.ceil(w / ww) * ww];
    if (this.hasShift && (hp !== this.#paddedSize[0] || wp !== this.#paddedSize[1])) {
      throw new RangeError(`Swin block built for a ${this.options.resolution.join('×')} map got ${h}×${w}`);
    }
    let shifted = this.hasShift ? x.roll([-this.shift[0], -this.shift[1]], [1, 2]) : x;
    if (hp !== h || wp !== w) shifted = E.F.pad(shifted, [0, 0, 0, wp - w, 0, hp - h]);
    const windows = shifted.view([b, hp / wh, wh, wp / ww, ww, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b, (hp / wh) * (wp / ww), wh * ww, c]);
    const attended = this.attn.forward(windows, this.hasShift ? this.buffer('attn_mask') : undefined);
    let merged = attended.view([b, hp / wh, wp / ww, wh, ww, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b, hp, wp, c]);
    if (hp !== h || wp !== w) merged = merged.slice(1, 0, h).slice(2, 0, w);
    return this.hasShift ? merged.roll(this.shift, [1, 2]) : merged;
  }

  /** x: [B, H, W, C]. */
  forward(x: Tensor): Tensor {
    return E.tidy(() => {
      const afterAttention = x.add(this.dropPath.forward(this.#attention(this.norm1.forward(x))));
      return afterAttention.add(this.dropPath.forward(this.mlp.forward(this.norm2.forward(afterAttention))));
    });
  }
}

/** Halves the map by stacking each 2×2 neighbourhood into channels (padding odd sizes), then LayerNorm and Linear. */
export class PatchMerging extends Module implements UnaryModule {
  readonly norm: LayerNorm;
  readonly reduction: Linear;

  constructor(readonly dim: number, readonly outDim = 2 * dim) {
    super();
    this.norm = this.registerModule('norm', new LayerNorm(4 * dim));
    this.reduction = this.registerModule('reduction', new Linear(4 * dim, outDim, { bias: false }));
  }

  forward(x: Tensor): Tensor {
    return E.tidy(() => {
      const [b, h, w, c] = x.shape;
      const padded = h % 2 || w % 2 ? E.F.pad(x, [0, 0, 0, w % 2, 0, h % 2]) : x;
      const [hp, wp] = [h + (h % 2), w + (w % 2)];
      // Channel order (column offset, row offset, channel) is timm's; checkpoints depend on it.
      const stacked = padded.view([b, hp / 2, 2, wp / 2, 2, c]).permute([0, 1, 3, 4, 2, 5]).reshape([b, hp / 2, wp / 2, 4 * c]);
      return this.reduction.forward(this.norm.forward(stacked));
    });
  }
}

class SwinStage extends Module implements UnaryModule {
  readonly downsample: UnaryModule;
  readonly blocks: Sequential<SwinTransformerBlock>;

  constructor(inDim: number, outDim: number, downsample: boolean, blocks: SwinTransformerBlock[]) {
    super();
    this.downsample = this.registerModule('downsample', downsample ? new PatchMerging(inDim, outDim) : new Identity());
    this.blocks = this.registerModule('blocks', new Sequential(blocks));
  }

  forward(x: Tensor): Tensor {
    return E.tidy(() => this.blocks.forward(this.downsample.forward(x)));
  }
}

/** Non-overlapping patches → NHWC embeddings, then LayerNorm. */
class PatchEmbed extends Module implements UnaryModule {
  readonly proj: Conv2d;
  readonly norm: LayerNorm;

  constructor(inChannels: number, embedDim: number, readonly patchSize: number, readonly inputSize: number) {
    super();
    // timm leaves this conv at PyTorch's default init; only Linear layers get the truncated normal.
    this.proj = this.registerModule('proj', new Conv2d(inChannels, embedDim, patchSize, { stride: patchSize, init: 'fanInUniform' }));
    this.norm = this.registerModule('norm', new LayerNorm(embedDim));
  }

  forward(x: Tensor): Tensor {
    const [, , h, w] = x.shape;
    if (h !== this.inputSize || w !== this.inputSize) {
      throw new RangeError(`this Swin Transformer was built for ${this.inputSize}×${this.inputSize} inputs and got ${h}×${w}; create the model with inputSize ${h === w ? h : 'equal to the input side'}`);
    }
    return E.tidy(() => this.norm.forward(this.proj.forward(x).permute([0, 2, 3, 1])));
  }
}

export class SwinTransformer extends ImageClassifier {
  readonly patch_embed: PatchEmbed;
  readonly layers: ModuleList<SwinStage>;
  readonly norm: LayerNorm;
  readonly head: ClassifierHead | undefined;
  readonly numFeatures: number;
  readonly inputSize: number;

  constructor(readonly config: SwinConfig) {
    super();
    const { depths, numHeads, embedDim } = config;
    const patchSize = config.patchSize ?? 4;
    if (depths.length !== numHeads.length || depths.length === 0) throw new RangeError(`Swin: depths [${depths}] and numHeads [${numHeads}] must have the same, non-zero length`);
    if (config.inputSize % patchSize !== 0) throw new RangeError(`Swin: inputSize ${config.inputSize} must be a multiple of the patch size ${patchSize}`);
    this.inputSize = config.inputSize;
    this.numFeatures = embedDim * 2 ** (depths.length - 1);
    this.patch_embed = this.registerModule('patch_embed', new PatchEmbed(config.inChannels ?? 3, embedDim, patchSize, config.inputSize));
    const rates = dropPathRates(depths, config.dropPathRate ?? 0);
    let resolution = config.inputSize / patchSize;
    const stages = depths.map((depth, i) => {
      const inDim = embedDim * 2 ** Math.max(i - 1, 0);
      const outDim = embedDim * 2 ** i;
      if (i > 0) resolution = Math.floor(resolution / 2);  // timm's output_resolution (i // 2)
      const blocks = rates[i].map((rate, j) => new SwinTransformerBlock({
        dim: outDim, resolution: [resolution, resolution], numHeads: numHeads[i], windowSize: config.windowSize,
        shifted: j % 2 === 1, mlpRatio: config.mlpRatio ?? 4, attnDrop: config.attnDropRate ?? 0, dropPath: rate,
      }));
      return new SwinStage(inDim, outDim, i > 0, blocks);
    });
    this.layers = this.registerModule('layers', new ModuleList(stages));
    this.norm = this.registerModule('norm', new LayerNorm(this.numFeatures));
    this.head = config.numClasses > 0
      ? this.registerModule('head', new ClassifierHead(this.numFeatures, config.numClasses, { inputFormat: 'NHWC', dropRate: config.dropRate }))
      : undefined;
  }

  /** NHWC features [B, H/32, W/32, C] after the final norm, as timm returns them, and each stage's map. */
  forwardIntermediates(x: Tensor): { features: Tensor; intermediates: Tensor[] } {
    return E.tidy(() => {
      let out = this.patch_embed.forward(x);
      const intermediates = [...this.layers].map((stage) => (out = stage.forward(out)).permute([0, 3, 1, 2]));
      return { features: this.norm.forward(out), intermediates };
    });
  }

  get intermediateChannels(): readonly number[] {
    return this.config.depths.map((_, i) => this.config.embedDim * 2 ** i);
  }

  /**
   * timm's checkpoint filter for Swin: the buffers timm recomputes (relative_position_index, attn_mask), which older
   * hub files still carry, are left out, and relative-position tables made for another window are resized to this
   * model's.
   */
  override filterCheckpoint(checkpoint: ReadonlyMap<string, Tensor>): FilteredCheckpoint {
    const own = this.stateDict();
    const filtered: FilteredCheckpoint = { state: new Map(), skipped: [], resized: [] };
    try {
      for (const [key, value] of checkpoint) {
        const leaf = key.slice(key.lastIndexOf('.') + 1);
        const mine = own.get(key);
        if (NON_PERSISTENT.includes(leaf)) {
          filtered.skipped.push({ key, reason: 'non-persistent buffer, recomputed by the model' });
        } else if (leaf === BIAS_TABLE && mine && mine.shape.join() !== value.shape.join() && mine.shape[1] === value.shape[1]) {
          const window = windowOfTable(mine.shape[0], key);
          filtered.state.set(key, resizeRelativePositionBiasTable(value, [window, window]));
          filtered.resized.push(key);
        } else {
          filtered.state.set(key, value);
        }
      }
    } catch (error) {
      E.dispose(filtered.resized.map((key) => filtered.state.get(key)!));
      throw error;
    }
    return filtered;
  }
}

/** Buffers timm recomputes and no longer saves, though older hub files carry them. */
const NON_PERSISTENT = ['relative_position_index', 'attn_mask'];
const BIAS_TABLE = 'relative_position_bias_table';

function windowOfTable(rows: number, key: string): number {
  const side = Math.round(Math.sqrt(rows));
  if (side * side !== rows || side % 2 === 0) throw new Error(`${key}: a table of ${rows} rows is not a (2w−1)² grid of a square window`);
  return (side + 1) / 2;
}

/**
 * Where the source table's rows sit when stretched or squeezed to dst positions: spacing grows geometrically from
 * the centre so that near offsets keep their values (the BEiT/timm scheme; q is found by bisection as timm does).
 */
function sourcePositions(src: number, dst: number): number[] {
  const half = Math.floor(src / 2);
  let left = 1.01;
  let right = 1.5;
  let q = left;
  while (right - left > 1e-6) {
    q = (left + right) / 2;
    const sum = (1 - q ** half) / (1 - q);
    if (sum > Math.floor(dst / 2)) right = q;
    else left = q;
  }
  const distances: number[] = [];
  let current = 1;
  for (let i = 0; i < half; i++) {
    distances.push(current);
    current += q ** (i + 1);
  }
  return [...distances.map((d) => -d).reverse(), 0, ...distances];
}

/** Linear interpolation weights on an uneven grid, clamping outside it (timm's RegularGridInterpolator). */
function bracket(grid: number[], x: number): { lo: number; hi: number; wLo: number; wHi: number } {
  let hi = grid.findIndex((p) => p >= x);
  if (hi < 0) hi = grid.length - 1;
  const lo = Math.max(hi - 1, 0);
  let dLo = Math.max(x - grid[lo], 0);
  let dHi = Math.max(grid[hi] - x, 0);
  if (dLo === 0 && dHi === 0) dLo = dHi = 1;
  // The value at lo is weighted by the distance to hi, and vice versa.
  return { lo, hi, wLo: dHi / (dLo + dHi), wHi: dLo / (dLo + dHi) };
}

/**
 * Resizes a Swin relative-position bias table [(2w−1)², heads] to another window, as timm does when a checkpoint's
 * window differs from the model's: geometric source positions, bilinear interpolation per head.
 */
export function resizeRelativePositionBiasTable(table: Tensor, window: [number, number]): Tensor {
  const [rows, heads] = table.shape;
  const src = Math.round(Math.sqrt(rows));
  if (table.ndim !== 2 || src * src !== rows) throw new RangeError(`relative-position table must be [(2w−1)², heads], got [${table.shape}]`);
  const dst: [number, number] = [2 * window[0] - 1, 2 * window[1] - 1];
  if (dst[0] === src && dst[1] === src) return table.clone();
  const values = E.tidy(() => table.float().contiguous().data() as Float32Array);
  const ys = sourcePositions(src, dst[0]);
  const xs = sourcePositions(src, dst[1]);
  const out = new Float32Array(dst[0] * dst[1] * heads);
  for (let a = 0; a < dst[0]; a++) {
    const by = bracket(ys, a - Math.floor(dst[0] / 2));
    for (let b = 0; b < dst[1]; b++) {
      const bx = bracket(xs, b - Math.floor(dst[1] / 2));
      for (let h = 0; h < heads; h++) {
        const at = (i: number, j: number) => values[(i * src + j) * heads + h];
        out[(a * dst[1] + b) * heads + h] =
          by.wLo * (bx.wLo * at(by.lo, bx.lo) + bx.wHi * at(by.lo, bx.hi)) + by.wHi * (bx.wLo * at(by.hi, bx.lo) + bx.wHi * at(by.hi, bx.hi));
      }
    }
  }
  return E.tidy(() => E.tensor(out, [dst[0] * dst[1], heads]).to(table.dtype));
}

/**
 * Swin variants: timm's, and swin_atto, the small Swin of the dual-path network (embed 32, depths 2-2-2-2, heads
 * 1-2-4-8), whose window follows the input: 7 where the stride-32 map is a multiple of 7 (224 px), else 8 (128 px).
 */
export const SWIN_VARIANTS = {
  swin_atto: { embedDim: 32, depths: [2, 2, 2, 2], numHeads: [1, 2, 4, 8] },
  swin_tiny_patch4_window7_224: { embedDim: 96, depths: [2, 2, 6, 2], numHeads: [3, 6, 12, 24], windowSize: 7 },
  swin_small_patch4_window7_224: { embedDim: 96, depths: [2, 2, 18, 2], numHeads: [3, 6, 12, 24], windowSize: 7 },
} satisfies Record<string, SwinVariant>;

/** A variant's shape; one without a window takes it from the input size (variantWindow). */
export type SwinVariant = Pick<SwinConfig, 'embedDim' | 'depths' | 'numHeads'> & { windowSize?: number };

/** A variant's window at an input size, unless windowSize overrides it. */
export function variantWindow(variant: SwinVariant, inputSize: number, windowSize?: number): number {
  return windowSize ?? variant.windowSize ?? ((inputSize / 32) % 7 === 0 ? 7 : 8);
}

for (const [name, variant] of Object.entries(SWIN_VARIANTS)) {
  registerModel(
    name,
    (o) =>
      new SwinTransformer({
        ...variant,
        windowSize: variantWindow(variant, o.inputSize, o.windowSize),
        numClasses: o.numClasses,
        inputSize: o.inputSize,
        dropRate: o.dropRate,
        dropPathRate: o.dropPathRate,
      }),
  );
}
