// What every image classifier here shares: timm's forward_features / forward_head split and a classifier head.
import * as E from '../engine/index.js';
import { Dropout, Identity, LayerNorm, Linear, Module, type UnaryModule } from '../nn/index.js';

type Tensor = E.Tensor;

/** How createModel() made a model, so that saveModel() can record it and loadModel() can rebuild it. */
export interface ModelSpec {
  architecture: string;
  options: Record<string, unknown>;
}

export abstract class ImageClassifier extends Module {
  /** Set by createModel(); absent for models built from their classes directly. */
  spec?: ModelSpec;
  abstract readonly numClasses: number;
  /** The side length of square inputs the model was built for (Swin needs it; ConvNeXt takes any multiple of 32). */
  abstract readonly inputSize: number;
  /** Absent in backbones built with numClasses 0, such as the dual-path network's paths. */
  abstract readonly head: ClassifierHead | undefined;

  /** The backbone's output before pooling: NCHW for ConvNeXt, NHWC for Swin and the fused maps, as in timm. */
  abstract forwardFeatures(x: Tensor): Tensor;

  /** Pooling, optional norm, dropout and the classifier; preLogits stops before the classifier. */
  forwardHead(features: Tensor, preLogits = false): Tensor {
    if (!this.head) throw new Error(`this ${this.constructor.name} was built as a backbone (numClasses 0) and has no head; use forwardFeatures()`);
    return this.head.forward(features, preLogits);
  }

  /** Logits [N, numClasses] for images [N, 3, H, W]. */
  forward(x: Tensor): Tensor {
    return E.tidy(() => this.forwardHead(this.forwardFeatures(x)));
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
  readonly fc: Linear;

  constructor(readonly inFeatures: number, readonly numClasses: number, readonly options: ClassifierHeadOptions) {
    super();
    if (!Number.isInteger(numClasses) || numClasses < 1) throw new RangeError(`a classifier needs at least one class, got numClasses=${numClasses}`);
    this.norm = this.registerModule('norm', options.norm ? new LayerNorm(inFeatures, options.normEps ?? 1e-6) : new Identity());
    this.drop = this.registerModule('drop', new Dropout(options.dropRate ?? 0));
    this.fc = this.registerModule('fc', new Linear(inFeatures, numClasses));
  }

  forward(features: Tensor, preLogits = false): Tensor {
    return E.tidy(() => {
      const pooled = features.mean(this.options.inputFormat === 'NCHW' ? [2, 3] : [1, 2]);
      const normed = this.drop.forward(this.norm.forward(pooled));
      return preLogits ? normed : this.fc.forward(normed);
    });
  }
}
