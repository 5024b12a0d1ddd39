// An image's physical scale, read off the cells it shows. Red blood cells are close to 7.5 µm across on every
// smear, so the median diameter of the isolated ones gives µm per pixel; where none can be measured (a tight crop),
// the white cell's nucleus gives a rougher estimate. Plain typed-array passes: a few ms for a PBC-size image.
import type { RgbImage } from './image.js';
import { normaliseStain, type StainRange } from './stain.js';

/** The mean diameter of a normal red blood cell, in µm. */
export const RBC_DIAMETER_UM = 7.5;

/**
 * Where an image's scale came from: the user, its red cells, its white cell's nucleus, the network's features (a
 * classifier's second look at an image none of the others measures), or nowhere (the file's pixels as they are).
 */
export type ScaleSource = 'given' | 'red-cells' | 'white-cell' | 'appearance' | 'none';

export interface CellMeasures {
  /** Median diameter of isolated red cells, in source pixels; null when fewer than MIN_RED_CELLS were found. */
  rbcDiameter: number | null;
  redCells: number;
  /**
   * Where no red cell is measurable otherwise and none lies inside the frame: the median diameter of the circles
   * through short arcs of cells cut by the edge (down to a tenth of the outline); null otherwise.
   */
  arcDiameter: number | null;
  /** Extent of the central white cell's nucleus (its blobs centred in the middle half), in source pixels; null when there is none. */
  nucleusExtent: number | null;
  /** Separate nucleus-sized blobs: more than one suggests several cells, none an empty field. */
  nuclei: number;
  /** The nucleus spans 70 % of the image's shorter side or more: a tight crop, in which the white cell fills the frame. */
  tightCrop: boolean;
  /** The background colour (RGB): the median of the brightest quarter of the pixels. */
  background: [number, number, number];
}

const MIN_RED_CELLS = 2;
/** More separate nucleus groups than this is a montage or a clump: a white cell has at most three lobe groups. */
const MAX_NUCLEI = 3;

/**
 * Whether an image shows one white cell, as a classifier's input should: a stained nucleus near the centre, and not
 * more nucleus groups than one cell has. An empty field, red cells only (a field's corner), several cells (a
 * montage, a clump) or a cell cut off at the edge fail it.
 */
export function showsOneCell(measures: Pick<CellMeasures, 'nuclei' | 'nucleusExtent'>): boolean {
  return measures.nuclei >= 1 && measures.nuclei <= MAX_NUCLEI && measures.nucleusExtent !== null;
}
/**
 * Nucleus extent over the image's shorter side from which an image counts as a tight crop. PBC's large cells reach
 * 0.6 (promyelocytes, monocytes), where the nucleus would wrongly shrink them.
 */
const TIGHT_CROP = 0.7;
/** Images larger than this (on the longer side) are measured on a box-filtered copy, then scaled back. */
const MEASURE_SIDE = 256;

/**
 * Measures red cells, the white cell and the background of one image. With a stain range, the copy measured first
 * has its stain strengths brought into it: the nucleus is told by its darkness, which a much paler stain than the
 * training slides' hides. `redCells: false` leaves the red cells unmeasured (no diameter, a count of 0), for a caller
 * that needs no scale: they cost over half the time.
 */
export function measureCells(image: RgbImage, stain: StainRange | null = null, { redCells = true } = {}): CellMeasures {
  const measures = measureShrunk(image, stain, redCells);
  if (!redCells) return measures;
  const content = withoutFlatMargins(image);
  if (content === image) return measures;
  // Red cells cut by a flat margin (padding, letterboxing) are cut by the picture's true edge: measure them inside it.
  const inside = measureShrunk(content, stain, true);
  return { ...measures, rbcDiameter: inside.rbcDiameter, redCells: inside.redCells, arcDiameter: inside.arcDiameter };
}

function measureShrunk(image: RgbImage, stain: StainRange | null, redCells: boolean): CellMeasures {
  // Never past the shorter side: a strip of an image must not shrink to nothing.
  const step = Math.max(1, Math.min(Math.ceil(Math.max(image.width, image.height) / MEASURE_SIDE), image.width, image.height));
  let small = step > 1 ? boxShrink(image, step) : image;
  if (stain) small = normaliseStain(small, backgroundColour(small), stain);
  const measures = measureAtFullSize(small, redCells);
  return step > 1
    ? {
        ...measures,
        rbcDiameter: measures.rbcDiameter && measures.rbcDiameter * step,
        arcDiameter: measures.arcDiameter && measures.arcDiameter * step,
        nucleusExtent: measures.nucleusExtent && measures.nucleusExtent * step,
      }
    : measures;
}

function measureAtFullSize(image: RgbImage, measureRedCells: boolean): CellMeasures {
  const { width, height, data } = image;
  const n = width * height;
  const background = backgroundColour(image);
  const bgLum = Math.max(1, LUMA_R[background[0]] + LUMA_G[background[1]] + LUMA_B[background[2]]);
  // Darkness relative to the background: 0 on the background, about 0.2–0.4 on red cells, over 0.45 on nuclei.
  const darkness = measureRedCells ? new Float32Array(n) : null;
  // Nuclei absorb most in green and are bluer than red cells: a purple/blue, dark pixel.
  const nucleus = new Uint8Array(n);
  const bgGreen = Math.max(1, background[1]);
  // Whether each green value is dark enough for a nucleus, decided once per value rather than once per pixel.
  const darkGreen = Uint8Array.from({ length: 256 }, (_, g) => (1 - g / bgGreen > 0.45 ? 1 : 0));
  for (let i = 0, p = 0; i < n; i++, p += 3) {
    const r = data[p];
    const g = data[p + 1];
    const b = data[p + 2];
    if (darkness) darkness[i] = 1 - (LUMA_R[r] + LUMA_G[g] + LUMA_B[b]) / bgLum;
    nucleus[i] = darkGreen[g] && b > r * 0.9 ? 1 : 0;
  }
  const { extent, blobs } = nucleusExtent(nucleus, width, height);
  return {
    ...(darkness ? redCellMeasures(darkness, nucleus, width, height) : { rbcDiameter: null, redCells: 0, arcDiameter: null }),
    nucleusExtent: extent,
    nuclei: blobs,
    tightCrop: extent !== null && extent >= TIGHT_CROP * Math.min(width, height),
    background,
  };
}

/** The red cells' diameter (whole cells first, then cells cut by the edge, then short arcs) and how many it rests on. */
function redCellMeasures(
  darkness: Float32Array,
  nucleus: Uint8Array,
  width: number,
  height: number,
): Pick<CellMeasures, 'rbcDiameter' | 'redCells' | 'arcDiameter'> {
  const threshold = otsu(darkness, 0, 0.35);
  const cellMask = new Uint8Array(darkness.length);
  for (let i = 0; i < darkness.length; i++) cellMask[i] = darkness[i] > threshold ? 1 : 0;
  fillHoles(cellMask, width, height);
  // Whole red cells measure best; cells cut by the edge count only where too few whole ones are in view.
  const { whole, cut, noneInside } = roundCellDiameters(cellMask, nucleus, width, height);
  const fitted = (maxMissingArc: number) => cut().flatMap((fit) => (fit.missingArc <= maxMissingArc ? [fit.diameter] : []));
  const wholeOnly = redCellEstimate(whole);
  const { diameter, count: redCells } = wholeOnly.count >= MIN_RED_CELLS ? wholeOnly : redCellEstimate([...whole, ...fitted(MAX_MISSING_ARC)]);
  const arcs = redCells < MIN_RED_CELLS && noneInside ? redCellEstimate(fitted(SHORT_ARC)) : null;
  return {
    rbcDiameter: redCells >= MIN_RED_CELLS ? diameter : null,
    redCells,
    arcDiameter: arcs && arcs.count >= MIN_RED_CELLS ? arcs.diameter : null,
  };
}

/** A margin row or column varies by at most this much per channel; a slide's own background, imaged, varies more. */
const FLAT_MARGIN = 2;

/** The image without the flat margins that padding or letterboxing adds around it; one flat throughout stays whole. */
function withoutFlatMargins(image: RgbImage): RgbImage {
  const { width, height, data } = image;
  // Whether the run of n pixels from (x, y), stepping by (dx, dy), all lie within FLAT_MARGIN of its first.
  const flat = (x: number, y: number, dx: number, dy: number, n: number): boolean => {
    const first = (y * width + x) * 3;
    for (let k = 1, p = first; k < n; k++) {
      p += (dy * width + dx) * 3;
      for (let c = 0; c < 3; c++) if (Math.abs(data[p + c] - data[first + c]) > FLAT_MARGIN) return false;
    }
    return true;
  };
  let [top, bottom, left, right] = [0, height, 0, width];
  while (top < bottom && flat(0, top, 1, 0, width)) top++;
  while (bottom > top && flat(0, bottom - 1, 1, 0, width)) bottom--;
  while (left < right && flat(left, top, 0, 1, bottom - top)) left++;
  while (right > left && flat(right - 1, top, 0, 1, bottom - top)) right--;
  if (top === 0 && left === 0 && bottom === height && right === width) return image;
  if (bottom <= top || right <= left) return image;
  const out = new Uint8Array((right - left) * (bottom - top) * 3);
  for (let y = top; y < bottom; y++) out.set(data.subarray((y * width + left) * 3, (y * width + right) * 3), (y - top) * (right - left) * 3);
  return { width: right - left, height: bottom - top, data: out };
}

/** The robust median of the diameters, and how many red cells it rests on. */
function redCellEstimate(diameters: readonly number[]): { diameter: number | null; count: number } {
  const diameter = robustMedian(diameters);
  return { diameter, count: diameter === null ? 0 : countNear(diameters, diameter) };
}

/** How many diameters lie within 20 % of the median: the red cells the estimate rests on. */
function countNear(diameters: readonly number[], median: number): number {
  return diameters.filter((d) => Math.abs(d / median - 1) < 0.2).length;
}

/** Each channel's term of BT.601 luma (0.299 r + 0.587 g + 0.114 b) for every 8-bit value: LUMA_R[r] + LUMA_G[g] + LUMA_B[b]. */
const [LUMA_R, LUMA_G, LUMA_B] = [0.299, 0.587, 0.114].map((weight) => Float64Array.from({ length: 256 }, (_, v) => weight * v));

/** The median colour of the brightest quarter of the pixels: the slide's background wherever cells leave some. */
export function backgroundColour(image: RgbImage): [number, number, number] {
  const { data } = image;
  const n = image.width * image.height;
  const lumas = new Uint8Array(n);
  const histogram = new Uint32Array(256);
  for (let i = 0, p = 0; i < n; i++, p += 3) {
    // Rounded luma: adding 0.5 and truncating equals Math.round for every 8-bit RGB triple (checked exhaustively), faster.
    const rounded = (LUMA_R[data[p]] + LUMA_G[data[p + 1]] + LUMA_B[data[p + 2]] + 0.5) | 0;
    lumas[i] = rounded;
    histogram[rounded]++;
  }
  let cut = 255;
  for (let count = 0; cut > 0 && count + histogram[cut] < n / 4; cut--) count += histogram[cut];
  const [red, green, blue] = [new Uint32Array(256), new Uint32Array(256), new Uint32Array(256)];
  let kept = 0;
  for (let i = 0, p = 0; i < n; i++, p += 3) {
    if (lumas[i] < cut) continue;
    kept++;
    red[data[p]]++;
    green[data[p + 1]]++;
    blue[data[p + 2]]++;
  }
  return [red, green, blue].map((h) => {
    let count = 0;
    for (let v = 0; v < 256; v++) if ((count += h[v]) * 2 >= kept) return v;
    return 255;
  }) as [number, number, number];
}

/** Otsu's threshold over values clamped to [lo, hi]: the split between background and stained cells. */
function otsu(values: Float32Array, lo: number, hi: number): number {
  const bins = 64;
  const histogram = new Float64Array(bins);
  for (let i = 0; i < values.length; i++) {
    // The bin floor(b), clamped to the histogram: the values are finite, so truncating a positive b floors it.
    const b = ((values[i] - lo) / (hi - lo)) * bins;
    histogram[b >= bins - 1 ? bins - 1 : b > 0 ? b | 0 : 0]++;
  }
  let total = 0;
  let sum = 0;
  for (let b = 0; b < bins; b++) {
    total += histogram[b];
    sum += b * histogram[b];
  }
  let [best, bestScore, weight, partial] = [0, -1, 0, 0];
  for (let b = 0; b < bins - 1; b++) {
    weight += histogram[b];
    partial += b * histogram[b];
    if (weight === 0 || weight === total) continue;
    const meanLow = partial / weight;
    const meanHigh = (sum - partial) / (total - weight);
    const score = weight * (total - weight) * (meanLow - meanHigh) ** 2;
    if (score > bestScore) [best, bestScore] = [b, score];
  }
  return lo + ((best + 1) / bins) * (hi - lo);
}

interface Component {
  area: number;
  minX: number;
  maxX: number;
  minY: number;
  maxY: number;
  touchesBorder: boolean;
  pixels: Int32Array;
}

/**
 * The flood fills' work arrays, kept between calls (each thread has its own): allocating and collecting them for
 * every mask cost more than the fills themselves. `marks` comes back zeroed.
 */
const fillScratch = { marks: new Uint8Array(0), stack: new Int32Array(0), stackX: new Int32Array(0), stackY: new Int32Array(0) };
function scratchFor(n: number): typeof fillScratch {
  if (fillScratch.stack.length < n)
    Object.assign(fillScratch, { marks: new Uint8Array(n), stack: new Int32Array(n), stackX: new Int32Array(n), stackY: new Int32Array(n) });
  else fillScratch.marks.fill(0, 0, n);
  return fillScratch;
}

/**
 * 4-connected components of a binary mask, by a stack-based flood fill. A pixel is marked when it is stacked, so
 * the stack never holds more than the mask's pixels.
 */
function components(mask: Uint8Array, width: number, height: number): Component[] {
  const { marks: seen, stack, stackX, stackY } = scratchFor(mask.length);
  // Every component's pixels, one after another: each component keeps a view of its own run.
  const order = new Int32Array(mask.length);
  let filled = 0;
  let top = 0;
  const push = (j: number, x: number, y: number) => {
    if (!mask[j] || seen[j]) return;
    seen[j] = 1;
    stack[top] = j;
    stackX[top] = x;
    stackY[top++] = y;
  };
  const found: Component[] = [];
  for (let seed = 0, seedX = 0, seedY = 0; seed < mask.length; seed++) {
    if (mask[seed] && !seen[seed]) {
      const start = filled;
      push(seed, seedX, seedY);
      let minX = width;
      let maxX = 0;
      let minY = height;
      let maxY = 0;
      let touchesBorder = false;
      while (top > 0) {
        top--;
        const i = stack[top];
        const x = stackX[top];
        const y = stackY[top];
        order[filled++] = i;
        if (x < minX) minX = x;
        if (x > maxX) maxX = x;
        if (y < minY) minY = y;
        if (y > maxY) maxY = y;
        if (x === 0 || y === 0 || x === width - 1 || y === height - 1) touchesBorder = true;
        if (x > 0) push(i - 1, x - 1, y);
        if (x < width - 1) push(i + 1, x + 1, y);
        if (y > 0) push(i - width, x, y - 1);
        if (y < height - 1) push(i + width, x, y + 1);
      }
      found.push({ area: filled - start, minX, maxX, minY, maxY, touchesBorder, pixels: order.subarray(start, filled) });
    }
    if (++seedX === width) ((seedX = 0), seedY++);
  }
  return found;
}

/**
 * The median of the diameters near the upper part of the distribution: what passes the shape test by mistake
 * (specks, fragments of a ring-shaped cell) is smaller than a whole red cell, and a few merged cells larger.
 */
function robustMedian(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const reference = sorted[Math.floor(0.8 * (sorted.length - 1))];
  return median(sorted.filter((v) => v >= 0.65 * reference && v <= 1.35 * reference));
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * The central white cell's nucleus: the bounding extent of nucleus-coloured blobs of meaningful size whose centre
 * lies in the middle half of the image (lobes of one neutrophil count together). `blobs` counts the separate
 * nucleus groups over the whole image, after joining pieces that lie within a nucleus's reach of each other.
 */
function nucleusExtent(nucleus: Uint8Array, width: number, height: number): { extent: number | null; blobs: number } {
  const minArea = 0.0015 * width * height;
  const blobs = components(nucleus, width, height).filter((c) => c.area >= minArea);
  if (blobs.length === 0) return { extent: null, blobs: 0 };
  const centre = (c: Component) => [(c.minX + c.maxX) / 2, (c.minY + c.maxY) / 2];
  const central = blobs.filter((c) => {
    const [x, y] = centre(c);
    return Math.abs(x - width / 2) < width / 4 && Math.abs(y - height / 2) < height / 4;
  });
  let extent: number | null = null;
  if (central.length) {
    const minX = Math.min(...central.map((c) => c.minX));
    const maxX = Math.max(...central.map((c) => c.maxX));
    const minY = Math.min(...central.map((c) => c.minY));
    const maxY = Math.max(...central.map((c) => c.maxY));
    extent = Math.max(maxX - minX + 1, maxY - minY + 1);
  }
  // Group blobs whose centres are closer than the typical nucleus extent: one cell's lobes form one group.
  const reach = extent ?? Math.max(...blobs.map((c) => Math.max(c.maxX - c.minX, c.maxY - c.minY)));
  const group = blobs.map((_, i) => i);
  const find = (i: number): number => (group[i] === i ? i : (group[i] = find(group[i])));
  for (let i = 0; i < blobs.length; i++) {
    for (let j = i + 1; j < blobs.length; j++) {
      const [xi, yi] = centre(blobs[i]);
      const [xj, yj] = centre(blobs[j]);
      if (Math.hypot(xi - xj, yi - yj) < reach) group[find(i)] = find(j);
    }
  }
  return { extent, blobs: new Set(blobs.map((_, i) => find(i))).size };
}

/** A box-filtered copy, step × smaller on each side. */
export function boxShrink(image: RgbImage, step: number): RgbImage {
  if (step === 2) return halve(image);
  const width = Math.floor(image.width / step);
  const height = Math.floor(image.height / step);
  const { data } = image;
  const out = new Uint8Array(width * height * 3);
  // One output row at a time: the step × step boxes' sums, accumulated along the source rows.
  const sums = new Uint32Array(width * 3);
  const area = step * step;
  for (let y = 0; y < height; y++) {
    sums.fill(0);
    for (let dy = 0; dy < step; dy++) {
      let p = (y * step + dy) * image.width * 3;
      for (let q = 0; q < sums.length; q += 3) {
        for (let dx = 0; dx < step; dx++, p += 3) {
          sums[q] += data[p];
          sums[q + 1] += data[p + 1];
          sums[q + 2] += data[p + 2];
        }
      }
    }
    for (let q = 0, o = y * width * 3; q < sums.length; q++, o++) out[o] = Math.round(sums[q] / area);
  }
  return { width, height, data: out };
}

/**
 * boxShrink by 2, the step of every image up to 512 px (PBC's among them), three times faster written out: each
 * output value is the rounded mean of a 2 × 2 box, as boxShrink computes it.
 */
function halve(image: RgbImage): RgbImage {
  const width = image.width >> 1;
  const height = image.height >> 1;
  const { data } = image;
  const stride = image.width * 3;
  const out = new Uint8Array(width * height * 3);
  for (let y = 0, o = 0; y < height; y++) {
    let p = 2 * y * stride;
    for (let x = 0; x < width; x++, p += 6, o += 3) {
      const q = p + stride;
      out[o] = (data[p] + data[p + 3] + data[q] + data[q + 3] + 2) >> 2;
      out[o + 1] = (data[p + 1] + data[p + 4] + data[q + 1] + data[q + 4] + 2) >> 2;
      out[o + 2] = (data[p + 2] + data[p + 5] + data[q + 2] + data[q + 5] + 2) >> 2;
    }
  }
  return { width, height, data: out };
}

/**
 * Diameters of the round, isolated cells without nucleus pixels: red cells. A whole cell gives its equivalent
 * diameter; touching or overlapping cells make elongated or hollow-cornered blobs and are left out. A cell cut by
 * the image's edge gives the circle through its visible outline (how much of it must be visible is for the caller
 * to judge): in an enlarged field few red cells lie whole inside the frame. Those fits cost the most, so they run
 * only when asked, and once. `noneInside`: no red cell, alone or in a clump, lies inside the frame.
 */
function roundCellDiameters(
  mask: Uint8Array,
  nucleus: Uint8Array,
  width: number,
  height: number,
): { whole: number[]; cut: () => CutFit[]; noneInside: boolean } {
  const whole: number[] = [];
  let noneInside = true;
  const cutCells: Component[] = [];
  for (const c of components(mask, width, height)) {
    const w = c.maxX - c.minX + 1;
    const h = c.maxY - c.minY + 1;
    if (w < 8 || h < 8) continue;
    let nucleusPixels = 0;
    for (const i of c.pixels) nucleusPixels += nucleus[i];
    if (nucleusPixels > 0.02 * c.area) continue;
    if (c.touchesBorder) {
      cutCells.push(c);
      continue;
    }
    noneInside = false;
    if (w / h < 0.8 || w / h > 1.25 || Math.max(w, h) > 0.6 * Math.min(width, height)) continue;
    if (c.area < 0.85 * (Math.PI / 4) * w * h) continue;
    whole.push(2 * Math.sqrt(c.area / Math.PI));
  }
  let fits: CutFit[] | undefined;
  const cut = () => (fits ??= cutCells.map((c) => cutCircleFit(c, width, height)).filter((fit): fit is CutFit => fit !== null));
  return { whole, cut, noneInside };
}

/**
 * Largest angle (radians) between neighbouring outline points seen from the circle's centre: the missing arc. At
 * 1.1 π (45 % of the outline in view) enlarged fields find their scale more often than at π, with no unaltered PBC
 * validation image of the select half lost; beyond it, arcs of other round shapes pass for red cells.
 */
const MAX_MISSING_ARC = 1.1 * Math.PI;
/**
 * The most a short arc may miss: a tenth of the outline in view. In a field enlarged three times a red cell is over
 * half the frame wide and shows only such arcs, in the corners; so do cells crowded into clumps and the corners of
 * a tight crop, where the arcs misjudge the scale. `arcDiameter` is therefore measured apart, for chooseScale.
 */
const SHORT_ARC = 1.8 * Math.PI;
/** Root-mean-square distance of the outline from the fitted circle, relative to its radius, for a round cell. */
const MAX_FIT_ERROR = 0.06;
/** Share of the fitted circle's in-frame area the blob must cover: a cut cell's pale centre may open to the edge. */
const MIN_FILL = 0.6;

interface CutFit {
  diameter: number;
  /** The largest gap between outline points, seen from the circle's centre (radians). */
  missingArc: number;
}

/**
 * The circle fitted (least squares, Kåsa) to the convex outline of a blob cut by the image's edge, leaving out the
 * outline along the edge itself; null unless the outline is round and covers a tenth of the circle or more. The
 * convex hull ignores the pale centre and small dents; two overlapping cells fit no circle.
 */
function cutCircleFit(c: Component, width: number, height: number): CutFit | null {
  // Each row's and column's outermost pixels hold the blob's convex hull.
  const rows = new Map<number, [number, number]>();
  const columns = new Map<number, [number, number]>();
  for (const i of c.pixels) {
    const x = i % width;
    const y = (i - x) / width;
    const row = rows.get(y);
    if (!row) rows.set(y, [x, x]);
    else ((row[0] = Math.min(row[0], x)), (row[1] = Math.max(row[1], x)));
    const column = columns.get(x);
    if (!column) columns.set(x, [y, y]);
    else ((column[0] = Math.min(column[0], y)), (column[1] = Math.max(column[1], y)));
  }
  const points: [number, number][] = [];
  for (const [y, [a, b]] of rows) points.push([a, y], [b, y]);
  for (const [x, [a, b]] of columns) points.push([x, a], [x, b]);
  const outline = convexHull(points).filter(([x, y]) => x > 0 && y > 0 && x < width - 1 && y < height - 1);
  if (outline.length < 6) return null;
  const circle = fitCircle(outline);
  if (!circle || circle.r < 4) return null;
  let squares = 0;
  for (const [x, y] of outline) squares += (Math.hypot(x - circle.cx, y - circle.cy) - circle.r) ** 2;
  if (Math.sqrt(squares / outline.length) > MAX_FIT_ERROR * circle.r) return null;
  const angles = outline.map(([x, y]) => Math.atan2(y - circle.cy, x - circle.cx)).sort((a, b) => a - b);
  let missingArc = angles[0] + 2 * Math.PI - angles[angles.length - 1];
  for (let k = 1; k < angles.length; k++) missingArc = Math.max(missingArc, angles[k] - angles[k - 1]);
  if (missingArc > SHORT_ARC) return null;
  // A clump of cells along the edge can have a round hull, but leaves much of it empty.
  if (c.area < MIN_FILL * circleAreaInFrame(circle, width, height)) return null;
  // The hull runs through the outermost pixel centres, which matches the whole cells' area-equivalent diameter.
  return { diameter: 2 * circle.r, missingArc };
}

/** Pixels of the circle that lie inside the image. */
function circleAreaInFrame({ cx, cy, r }: { cx: number; cy: number; r: number }, width: number, height: number): number {
  let area = 0;
  for (let y = Math.max(0, Math.ceil(cy - r)); y <= Math.min(height - 1, Math.floor(cy + r)); y++) {
    const half = Math.sqrt(Math.max(0, r * r - (y - cy) ** 2));
    area += Math.max(0, Math.min(width - 1, Math.floor(cx + half)) - Math.max(0, Math.ceil(cx - half)) + 1);
  }
  return area;
}

/** Andrew's monotone chain: the convex hull's vertices, in order. */
function convexHull(points: [number, number][]): [number, number][] {
  const sorted = [...points].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const cross = (o: number[], a: number[], b: number[]) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const half = (list: [number, number][]) => {
    const chain: [number, number][] = [];
    for (const p of list) {
      while (chain.length >= 2 && cross(chain[chain.length - 2], chain[chain.length - 1], p) <= 0) chain.pop();
      chain.push(p);
    }
    chain.pop();
    return chain;
  };
  return [...half(sorted), ...half([...sorted].reverse())];
}

/** The least-squares circle x² + y² + Dx + Ey + F = 0 through the points (Kåsa), centred on their mean for accuracy. */
function fitCircle(points: readonly [number, number][]): { cx: number; cy: number; r: number } | null {
  const n = points.length;
  const mx = points.reduce((s, p) => s + p[0], 0) / n;
  const my = points.reduce((s, p) => s + p[1], 0) / n;
  let [sxx, sxy, syy, sxz, syz, sz] = [0, 0, 0, 0, 0, 0];
  for (const [px, py] of points) {
    const [x, y] = [px - mx, py - my];
    const z = x * x + y * y;
    sxx += x * x;
    sxy += x * y;
    syy += y * y;
    sxz += x * z;
    syz += y * z;
    sz += z;
  }
  // With centred coordinates Σx = Σy = 0, so D and E solve a 2 × 2 system and F = −Σz / n.
  const det = sxx * syy - sxy * sxy;
  if (Math.abs(det) < 1e-9) return null;
  const d = -(sxz * syy - syz * sxy) / det;
  const e = -(syz * sxx - sxz * sxy) / det;
  const f = -sz / n;
  const r2 = (d * d + e * e) / 4 - f;
  return r2 > 0 ? { cx: mx - d / 2, cy: my - e / 2, r: Math.sqrt(r2) } : null;
}

/** Fills the background pockets that do not reach the image's edge: a red cell's pale centre belongs to the cell. */
function fillHoles(mask: Uint8Array, width: number, height: number): void {
  // Background reachable from the edge stays background; every other background pixel is a pocket.
  const { marks: reached, stack } = scratchFor(mask.length);
  let top = 0;
  const visit = (i: number) => {
    if (!mask[i] && !reached[i]) ((reached[i] = 1), (stack[top++] = i));
  };
  for (let x = 0; x < width; x++) (visit(x), visit((height - 1) * width + x));
  for (let y = 0; y < height; y++) (visit(y * width), visit(y * width + width - 1));
  while (top > 0) {
    const i = stack[--top];
    const x = i % width;
    if (x > 0) visit(i - 1);
    if (x < width - 1) visit(i + 1);
    if (i >= width) visit(i - width);
    if (i < mask.length - width) visit(i + width);
  }
  for (let i = 0; i < mask.length; i++) if (!reached[i]) mask[i] = 1;
}
