// What every image classifier here shares: timm's forward_features / forward_head split and a classifier head.
import * as E from '../engine/index.js';
import { Dropout, Identity, LayerNorm, Linear, Module, type UnaryModule } from '../nn/index.js';

type Tensor = E.Tensor;

/** How createModel() made a model, so that saveModel() can record it and loadModel() can rebuild it. */
export interface ModelSpec {
  architecture: string;
  options: Record<string, unknown>;
}

/**
 * What an architecture's checkpoint filter makes of a timm checkpoint (timm's checkpoint_filter_fn): the tensors to
 * load under this model's keys, and the keys it left out, with the reason.
 */
export interface FilteredCheckpoint {
  state: Map<string, Tensor>;
  skipped: { key: string; reason: string }[];
  /** Keys whose tensors the filter made anew (resized); the caller disposes them after loading. */
  resized: string[];
}

export abstract class ImageClassifier extends Module {
  /** Set by createModel(); absent for models built from their classes directly. */
  spec?: ModelSpec;
  /** The side length of square inputs the model was built for (Swin needs it; ConvNeXt takes any multiple of 32). */
  abstract readonly inputSize: number;
  /** Absent in backbones built with numClasses 0, such as the dual-path network's paths. */
  abstract readonly head: ClassifierHead | undefined;

  /** The classifier's outputs; 0 in a backbone without a head. */
  get numClasses(): number {
    return this.head?.numClasses ?? 0;
  }

  /** The backbone's output before pooling: NCHW for ConvNeXt, NHWC for Swin and the fused maps, as in timm. */
  forwardFeatures(x: Tensor): Tensor {
    return E.tidy(() => this.forwardIntermediates(x).features);
  }

  /**
   * forwardFeatures()'s output and each stage's map on the way to it, NCHW (timm's forward_intermediates): the
   * out-of-distribution detector reads the stages' statistics.
   */
  abstract forwardIntermediates(x: Tensor): { features: Tensor; intermediates: Tensor[] };

  /** The channels of each map forwardIntermediates() returns. */
  abstract readonly intermediateChannels: readonly number[];

  /** Pooling, optional norm, dropout and the classifier; preLogits stops before the classifier. */
  forwardHead(features: Tensor, preLogits = false): Tensor {
    if (!this.head) throw new Error(`this ${this.constructor.name} was built as a backbone (numClasses 0) and has no head; use forwardFeatures()`);
    return this.head.forward(features, preLogits);
  }

  /** Logits [N, numClasses] for images [N, 3, H, W]. */
  forward(x: Tensor): Tensor {
    return E.tidy(() => this.forwardHead(this.forwardFeatures(x)));
  }

  /**
   * A freshly initialised classifier for numClasses outputs in place of the old one (timm's reset_classifier); the
   * rest of the head and the backbone keep their weights. Create optimizers afterwards, as after to().
   */
  resetClassifier(numClasses: number): void {
    if (!this.head) throw new Error(`this ${this.constructor.name} was built as a backbone (numClasses 0) and has no classifier to reset`);
    this.head.resetClassifier(numClasses);
    if (this.spec) this.spec.options.numClasses = numClasses;
  }

  /** The classifier's state-dict keys (timm's pretrained_cfg 'classifier': head.fc.weight, head.fc.bias); none in a backbone. */
  classifierKeys(): string[] {
    const fc = this.head?.fc;
    const found = fc && this.namedModules().find(([, module]) => module === fc);
    return found ? [...fc.stateDict().keys()].map((key) => `${found[0]}.${key}`) : [];
  }

  /**
   * Brings a timm checkpoint to this model's keys and shapes, as timm's checkpoint_filter_fn does: here as it is;
   * architectures whose checkpoints need more (Swin's buffers and windows) override it.
   */
  filterCheckpoint(checkpoint: ReadonlyMap<string, Tensor>): FilteredCheckpoint {
    return { state: new Map(checkpoint), skipped: [], resized: [] };
  }
}

export interface ClassifierHeadOptions {
  /** Where the channels are in the features: dim 1 (NCHW) or last (NHWC). */
  inputFormat: 'NCHW' | 'NHWC';
  /** A LayerNorm after pooling (ConvNeXt and the dual-path head have one; Swin's norm comes before pooling). */
  norm?: boolean;
  normEps?: number;
  dropRate?: number;
}

/** Global average pooling, optional LayerNorm, dropout and a Linear classifier: keys head.norm.*, head.fc.*. */
export class ClassifierHead extends Module {
  readonly norm: UnaryModule;
  readonly drop: Dropout;
  #fc: Linear;

  constructor(
    readonly inFeatures: number,
    numClasses: number,
    readonly options: ClassifierHeadOptions,
  ) {
    super();
    this.norm = this.registerModule('norm', options.norm ? new LayerNorm(inFeatures, options.normEps ?? 1e-6) : new Identity());
    this.drop = this.registerModule('drop', new Dropout(options.dropRate ?? 0));
    this.#fc = this.registerModule('fc', this.#classifier(numClasses));
  }

  get fc(): Linear {
    return this.#fc;
  }

  get numClasses(): number {
    return this.#fc.outFeatures;
  }

  /** A new Linear classifier on the old one's device; see ImageClassifier.resetClassifier. */
  resetClassifier(numClasses: number): void {
    const fc = this.#classifier(numClasses).to(this.#fc.weight.device as E.Device);
    fc.training = this.training;
    this.replaceModule('fc', fc).dispose();
    this.#fc = fc;
  }

  #classifier(numClasses: number): Linear {
    if (!Number.isInteger(numClasses) || numClasses < 1) throw new RangeError(`a classifier needs at least one class, got numClasses=${numClasses}`);
    return new Linear(this.inFeatures, numClasses);
  }

  forward(features: Tensor, preLogits = false): Tensor {
    return E.tidy(() => {
      const pooled = features.mean(this.options.inputFormat === 'NCHW' ? [2, 3] : [1, 2]);
      const normed = this.drop.forward(this.norm.forward(pooled));
      return preLogits ? normed : this.#fc.forward(normed);
    });
  }
}
