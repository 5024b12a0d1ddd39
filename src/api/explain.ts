// Explanations: where in the image the evidence for a label lies, as a class activation map over one stage of the
// network, and that map blended over the image the model saw.
//
// The map is Grad-CAM (Selvaraju et al. 2017) with each position's channels weighted by their own gradient rather
// than by its spatial mean: cam = ReLU(Σ_k ∂y/∂A_k ⊙ A_k), the first-order share of the class logit y that each
// position of the map A carries (LayerCAM, Jiang et al. 2021, does the same with the gradients' negative parts cut;
// keeping them lets evidence against the class cancel evidence for it at the same place). At the last stage every
// head here pools globally first, so the gradient is the same at every position and the map is exactly Grad-CAM.
// It is taken by default at the second stage (stride 8), not the last: measured on PBC validation images, the last
// stage's 4×4 map of a 128 px input puts its weight around the white cell, not on it, while the stride-8 map
// puts most of its weight on the cell (docs/explanations.md has the figures).
//
// The gradients come from the engine's own autograd: the network runs to the chosen map without a graph, the map
// is detached into a leaf that requires gradients, and only the rest of the network runs with a graph behind it.
import sharp from 'sharp';
import * as E from '../engine/index.js';
import { makeBatch } from '../data/batches.js';
import type { RgbImage } from '../data/image.js';
import { softmaxRows } from '../eval/calibration.js';
import type { ImageClassifier } from '../models/classifier.js';
import { ConvNeXt } from '../models/convnext.js';
import { DualPathNet, type PathMaps } from '../models/dualpath.js';
import { SwinTransformer } from '../models/swin.js';
import type { Classifier, ImageInput, UncertainReason } from './classifier.js';

type Tensor = E.Tensor;

/**
 * Which part of the network to explain: one path of the dual-path network, or both together ('fused', the default:
 * at the last stage the fused map the head reads, at an earlier stage both paths' maps with their shares added).
 * A single-backbone model has one path, named by its family or 'fused'.
 */
export type ExplainPath = 'convnext' | 'swin' | 'fused';
export const EXPLAIN_PATHS: readonly ExplainPath[] = ['convnext', 'swin', 'fused'];

/** The stage whose output map is explained by default: the second (stride 8), where the sanity checks hold best. */
export const DEFAULT_EXPLAIN_STAGE = 1;

export interface ExplainOptions {
  /** The class to explain (default: the top predicted one). */
  label?: string;
  /** For the dual-path network, where the gradients are taken (default 'fused'). */
  path?: ExplainPath;
  /** The stage whose output map is explained, from 0; negative counts from the end (-1: the last). Default 1. */
  stage?: number;
}

export interface Explanation {
  label: string;
  /** The calibrated probability of that label. */
  score: number;
  /**
   * Whether the image's classification should not be trusted as it is, and why, as classify() flags it (from this
   * one view: an explanation takes no second look).
   */
  uncertain: boolean;
  reasons: UncertainReason[];
  /** The map's rows and columns (the input size over the stage's stride). */
  grid: [number, number];
  /** rows × cols values in [0, 1], row-major; 1 at the strongest evidence, all 0 where there is none. */
  cam: Float32Array;
  /** The model's prepared input, size × size: the image the map belongs to. */
  image: RgbImage;
  /** The stage explained (from 0) and the path. */
  stage: number;
  path: ExplainPath;
}

/** A map, the class it explains and the raw logits it was computed with. */
export interface ClassActivationMap {
  classIndex: number;
  logits: Float32Array;
  grid: [number, number];
  cam: Float32Array;
  stage: number;
}

/**
 * The class activation map of one normalised input x [1, 3, S, S] at one stage of a model. classIndex defaults to
 * the model's top class. The model's parameters are left as they were: they record no gradients while this runs.
 */
export function gradCam(model: ImageClassifier, x: Tensor, options: { classIndex?: number; path?: ExplainPath; stage?: number } = {}): ClassActivationMap {
  if (x.ndim !== 4 || x.shape[0] !== 1) throw new RangeError(`gradCam takes one image [1, 3, H, W], got [${x.shape}]`);
  const path = checkPath(options.path ?? 'fused');
  const stage = resolveStage(model, options.stage ?? DEFAULT_EXPLAIN_STAGE);
  return withFrozenParameters(model, () =>
    E.tidy(() => {
      // The forward pass to the map needs no graph: only the part after the map is differentiated.
      const split = E.noGrad(() => splitAt(model, x, path, stage));
      return E.enableGrad(() => {
        const leaves = split.maps.map(({ map }) => map.detach().requiresGrad_(true));
        const logits = split.toLogits(leaves).float();
        const values = logits.data() as Float32Array;
        const classIndex = options.classIndex ?? argmax(values);
        if (!Number.isInteger(classIndex) || classIndex < 0 || classIndex >= values.length)
          throw new RangeError(`classIndex ${classIndex} is outside 0..${values.length - 1}`);
        logits.select(1, classIndex).sum().backward();
        const cam = E.noGrad(() => {
          // Each position's share: its channels times their gradients, summed over channels (NHWC: the last dim).
          const shares = leaves.map((leaf, i) =>
            leaf
              .grad!.mul(leaf)
              .sum(split.maps[i].channelsLast ? 3 : 1)
              .squeeze(0),
          );
          const grids = shares.map((t) => t.shape.join('×'));
          if (new Set(grids).size > 1) throw new RangeError(`the paths' maps at stage ${stage} differ in size (${grids.join(' vs ')}); explain one path`);
          return shares
            .reduce((a, b) => a.add(b))
            .relu()
            .float();
        });
        const [rows, cols] = cam.shape;
        const peak = cam.max().item();
        const normalised = (peak > 0 && Number.isFinite(peak) ? cam.div(peak) : E.zerosLike(cam)).data() as Float32Array;
        return { classIndex, logits: values, grid: [rows, cols] as [number, number], cam: normalised, stage };
      });
    }),
  );
}

/** The maps to take gradients at, and the rest of the network from them to logits. */
interface Split {
  maps: { map: Tensor; channelsLast: boolean }[];
  toLogits: (leaves: Tensor[]) => Tensor;
}

/** A backbone cut after one stage: the map there (NCHW for ConvNeXt, NHWC for Swin) and the rest of the way. */
interface Cut {
  map: Tensor;
  channelsLast: boolean;
  /** From the map to the backbone's forwardFeatures() output. */
  rest: (map: Tensor) => Tensor;
}

type Backbone = ConvNeXt | SwinTransformer;

function stagesOf(backbone: Backbone): number {
  return backbone instanceof ConvNeXt ? backbone.stages.length : backbone.layers.length;
}

/** Runs a backbone's forwardFeatures() in two parts, split after `stage`; the parts follow forwardFeatures() exactly. */
function cutBackbone(backbone: Backbone, x: Tensor, stage: number): Cut {
  if (backbone instanceof ConvNeXt) {
    const stages = [...backbone.stages];
    let map = backbone.stem.forward(x.channelsLast());
    for (const s of stages.slice(0, stage + 1)) map = s.forward(map);
    return { map, channelsLast: false, rest: (m) => stages.slice(stage + 1).reduce((out, s) => s.forward(out), m) };
  }
  const layers = [...backbone.layers];
  let map = backbone.patch_embed.forward(x);
  for (const s of layers.slice(0, stage + 1)) map = s.forward(map);
  return { map, channelsLast: true, rest: (m) => backbone.norm.forward(layers.slice(stage + 1).reduce((out, s) => s.forward(out), m)) };
}

/** A path's map as DualPathNet.forwardPaths() gives it: NHWC. */
const asPathMap = (path: 'convnext' | 'swin', features: Tensor) => (path === 'convnext' ? features.permute([0, 2, 3, 1]) : features);

function backbonesOf(model: ImageClassifier): { convnext?: Backbone; swin?: Backbone } {
  if (model instanceof DualPathNet) return { convnext: model.convnext, swin: model.swin };
  if (model instanceof ConvNeXt) return { convnext: model };
  if (model instanceof SwinTransformer) return { swin: model };
  throw new TypeError(`explanations support ConvNeXt, Swin and the dual-path network, not ${model.constructor.name}`);
}

function resolveStage(model: ImageClassifier, stage: number): number {
  const backbones = Object.values(backbonesOf(model)).filter((b): b is Backbone => b !== undefined);
  const count = Math.min(...backbones.map(stagesOf));
  if (!Number.isInteger(stage) || stage < -count || stage >= count)
    throw new RangeError(`stage must be an integer in ${-count}..${count - 1} (this model has ${count} stages; -1 is the last), got ${String(stage)}`);
  return stage < 0 ? stage + count : stage;
}

function checkPath(path: ExplainPath): ExplainPath {
  if (!EXPLAIN_PATHS.includes(path)) throw new RangeError(`path must be one of ${EXPLAIN_PATHS.join(', ')}, got ${String(path)}`);
  return path;
}

function splitAt(model: ImageClassifier, x: Tensor, path: ExplainPath, stage: number): Split {
  const backbones = backbonesOf(model);
  const present = (['convnext', 'swin'] as const).filter((p) => backbones[p]);
  if (path !== 'fused' && !backbones[path]) {
    throw new RangeError(`this ${model.spec?.architecture ?? model.constructor.name} model has no ${path} path; choose ${[...present, 'fused'].join(' or ')}`);
  }
  const explained = path === 'fused' ? present : [path];
  if (!(model instanceof DualPathNet)) {
    const cut = cutBackbone(backbones[explained[0]]!, x, stage);
    return { maps: [cut], toLogits: ([leaf]) => model.forwardHead(cut.rest(leaf)) };
  }
  const last = stage === stagesOf(backbones[explained[0]]!) - 1;
  if (path === 'fused' && last) {
    return { maps: [{ map: model.forwardFeatures(x), channelsLast: true }], toLogits: ([leaf]) => model.forwardHead(leaf) };
  }
  // The paths not explained are constants: the gradient reaches the explained ones through the fusion.
  const cuts = explained.map((p) => cutBackbone(backbones[p]!, x, stage));
  const constants: PathMaps = path === 'fused' ? {} : model.forwardPaths(x);
  return {
    maps: cuts,
    toLogits: (leaves) => {
      const maps: PathMaps = { ...constants };
      explained.forEach((p, i) => {
        maps[p] = asPathMap(p, cuts[i].rest(leaves[i]));
      });
      return model.forwardHead(model.fusePaths(maps));
    },
  };
}

/** Runs fn with every parameter's requiresGrad off, so that backward() fills only the maps' gradients. */
function withFrozenParameters<T>(model: ImageClassifier, fn: () => T): T {
  const parameters = model.parameters();
  const before = parameters.map((p) => p.requiresGrad);
  for (const p of parameters) p.requiresGrad = false;
  try {
    return fn();
  } finally {
    parameters.forEach((p, i) => {
      p.requiresGrad = before[i];
    });
  }
}

function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * Explains one image for a classifier: prepares it as classification does, and computes the map for the label
 * asked for (default: the top one). It runs in fp32 whatever the classifier's precision: gradients through a bf16
 * graph keep 8 bits of mantissa, and the map sums hundreds of gradient-weighted channels at each position.
 */
export async function explainImage(classifier: Classifier, input: ImageInput, options: ExplainOptions = {}): Promise<Explanation> {
  const { classIndex, path, stage } = checkExplainOptions(classifier, options);
  const prepared = await classifier.prepare(input);
  const { image } = prepared;
  const size = classifier.metadata.inputSize;
  const set = { images: image.data, size, labels: new Int32Array(1), classes: classifier.classes };
  const result = E.tidy(() => {
    const { x } = E.noGrad(() => makeBatch(set, [0], { normalization: classifier.metadata.normalization, device: classifier.device }));
    return E.withPrecision('fp32', classifier.device, () => gradCam(classifier.model, x, { classIndex, path, stage }));
  });
  if (!result.logits.every(Number.isFinite)) {
    const where = typeof input === 'string' ? `${input}: ` : '';
    throw Object.assign(
      new Error(`${where}the model gave scores that are not finite numbers (NaN or infinity), so there is nothing to explain; its weights may be damaged`),
      { code: 'non-finite-output' },
    );
  }
  // One view, so the single-view calibration applies even where the classifier averages TTA views.
  const probabilities = softmaxRows(result.logits, 1, classifier.classes.length, classifier.metadata.temperature ?? 1);
  // The flags rest on the top class, whichever label is explained, and on the detector's distance, where there is one.
  const distance = classifier.ood ? classifier.score([image]).distances![0] : undefined;
  const reasons = classifier.reasonsFor(prepared, Math.max(...probabilities), distance);
  return {
    label: classifier.classes[result.classIndex],
    score: probabilities[result.classIndex],
    uncertain: reasons.length > 0,
    reasons,
    grid: result.grid,
    cam: result.cam,
    image,
    stage,
    path,
  };
}

/**
 * Checks explain options against a classifier before any image is read: a TypeError for options of the wrong kind,
 * a RangeError naming the choices for an unknown label, a path the model lacks or a stage it does not have.
 */
export function checkExplainOptions(
  classifier: Classifier,
  options: ExplainOptions = {},
): { classIndex: number | undefined; path: ExplainPath; stage: number } {
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw new TypeError('explain options must be an object');
  const unknown = Object.keys(options).find((key) => !['label', 'path', 'stage'].includes(key));
  if (unknown !== undefined) throw new TypeError(`unknown explain option '${unknown}'; the options are label, path and stage`);
  const path = checkPath(options.path ?? 'fused');
  const backbones = backbonesOf(classifier.model);
  if (path !== 'fused' && !backbones[path]) {
    const present = (['convnext', 'swin'] as const).filter((p) => backbones[p]);
    throw new RangeError(`this ${classifier.metadata.architecture} model has no ${path} path; choose ${[...present, 'fused'].join(' or ')}`);
  }
  const stage = resolveStage(classifier.model, options.stage ?? DEFAULT_EXPLAIN_STAGE);
  if (options.label === undefined) return { classIndex: undefined, path, stage };
  const classIndex = classifier.classes.indexOf(options.label);
  if (classIndex < 0) throw new RangeError(`unknown label ${JSON.stringify(options.label)}; the classes are ${classifier.classes.join(', ')}`);
  return { classIndex, path, stage };
}

/**
 * The map upsampled bilinearly to width × height (default: the image's size), as a framework's bilinear resize with
 * half-pixel centres does it: each map value sits at the centre of its cell.
 */
export function camValues(
  explanation: Pick<Explanation, 'cam' | 'grid' | 'image'>,
  width = explanation.image.width,
  height = explanation.image.height,
): Float32Array {
  const [rows, cols] = explanation.grid;
  if (explanation.cam.length !== rows * cols) throw new RangeError(`cam has ${explanation.cam.length} values for a ${rows}×${cols} grid`);
  if (!(Number.isInteger(width) && width > 0 && Number.isInteger(height) && height > 0))
    throw new RangeError(`camValues: width and height must be positive integers, got ${width} × ${height}`);
  const out = new Float32Array(width * height);
  const axis = (n: number, cells: number) =>
    Array.from({ length: n }, (_, i) => {
      const at = Math.min(cells - 1, Math.max(0, ((i + 0.5) * cells) / n - 0.5));
      const lo = Math.floor(at);
      return { lo, hi: Math.min(cells - 1, lo + 1), t: at - lo };
    });
  const xs = axis(width, cols);
  const ys = axis(height, rows);
  const cam = explanation.cam;
  for (let y = 0; y < height; y++) {
    const { lo: r0, hi: r1, t: ty } = ys[y];
    for (let x = 0; x < width; x++) {
      const { lo: c0, hi: c1, t: tx } = xs[x];
      const top = cam[r0 * cols + c0] * (1 - tx) + cam[r0 * cols + c1] * tx;
      const bottom = cam[r1 * cols + c0] * (1 - tx) + cam[r1 * cols + c1] * tx;
      out[y * width + x] = top * (1 - ty) + bottom * ty;
    }
  }
  return out;
}

/** A turbo-like ramp from dark blue through cyan, green and yellow to dark red: RGB in 0..255 for v in [0, 1]. */
export function colourRamp(v: number): [number, number, number] {
  const stops: [number, number, number, number][] = [
    [0, 48, 18, 59],
    [0.15, 65, 105, 225],
    [0.35, 27, 208, 213],
    [0.5, 97, 252, 108],
    [0.65, 210, 233, 53],
    [0.8, 254, 155, 45],
    [0.92, 218, 57, 7],
    [1, 122, 4, 3],
  ];
  const t = Math.min(1, Math.max(0, Number.isFinite(v) ? v : 0));
  let i = 1;
  while (i < stops.length - 1 && stops[i][0] < t) i++;
  const [a, b] = [stops[i - 1], stops[i]];
  const f = (t - a[0]) / (b[0] - a[0]);
  return [1, 2, 3].map((c) => Math.round(a[c] + f * (b[c] - a[c]))) as [number, number, number];
}

export interface OverlayOptions {
  /** The colour's opacity where the map is 1, in [0, 1] (default 0.7); it falls with the map, to 0 where it is 0. */
  alpha?: number;
}

/**
 * The map upsampled to the prepared image and blended over it in a colour ramp, as PNG bytes. The colour's opacity
 * follows the map's value, so that where there is no evidence the image shows as the model saw it.
 */
export async function overlayPng(explanation: Explanation, options: OverlayOptions = {}): Promise<Buffer> {
  const alpha = options.alpha ?? 0.7;
  if (!(typeof alpha === 'number' && alpha >= 0 && alpha <= 1)) throw new RangeError(`alpha must be a number in [0, 1], got ${String(alpha)}`);
  const { width, height, data } = explanation.image;
  const values = camValues(explanation, width, height);
  const out = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    const colour = colourRamp(values[i]);
    const opacity = alpha * Math.min(1, Math.max(0, values[i]));
    for (let c = 0; c < 3; c++) out[i * 3 + c] = Math.round((1 - opacity) * data[i * 3 + c] + opacity * colour[c]);
  }
  return sharp(out, { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
}
