// Parity with timm 1.0.29: the fixtures hold timm's state dicts, inputs, features and logits (float32, eval mode).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import * as E from '../src/engine/index.js';
import { ConvNeXt, ConvNeXtBlock } from '../src/models/convnext.js';
import { SwinTransformer } from '../src/models/swin.js';
import type { ImageClassifier } from '../src/models/classifier.js';
import { SHARED, maxAbsDiff } from './helpers.js';

const FIXTURES = path.join(SHARED, 'fixtures/timm');
const TOLERANCE = 1e-4;

const cases: Record<string, () => ImageClassifier> = {
  convnext_d16_convmlp_128: () => new ConvNeXt({ depths: [1, 1, 2, 1], dims: [16, 32, 64, 128], convMlp: true, numClasses: 8, inputSize: 128 }),
  convnext_d16_linear_128: () => new ConvNeXt({ depths: [1, 1, 2, 1], dims: [16, 32, 64, 128], convMlp: false, numClasses: 8, inputSize: 128 }),
  swin_e16_w7_224: () => new SwinTransformer({ inputSize: 224, embedDim: 16, depths: [2, 2, 2, 2], numHeads: [1, 2, 4, 8], windowSize: 7, numClasses: 8 }),
  swin_e16_w8_128: () => new SwinTransformer({ inputSize: 128, embedDim: 16, depths: [2, 2, 2, 2], numHeads: [1, 2, 4, 8], windowSize: 8, numClasses: 8 }),
};

for (const [name, build] of Object.entries(cases)) {
  test(`timm parity: ${name} (features and logits within ${TOLERANCE})`, async () => {
    const weights = await E.loadSafetensors(path.join(FIXTURES, `${name}.safetensors`));
    const io = await E.loadSafetensors(path.join(FIXTURES, `${name}.io.safetensors`));
    const model = build().eval();
    try {
      model.loadStateDict(weights.tensors);
      const { features, logits } = E.noGrad(() =>
        E.tidy(() => {
          const f = model.forwardFeatures(io.tensors.get('input')!);
          return { features: f, logits: model.forwardHead(f) };
        }),
      );
      const expectedFeatures = io.tensors.get('features')!;
      assert.deepEqual(features.shape, expectedFeatures.shape);
      const featureError = maxAbsDiff(features.toArray(), expectedFeatures.toArray());
      const logitError = maxAbsDiff(logits.toArray(), io.tensors.get('logits')!.toArray());
      console.log(`${name}: features max abs error ${featureError.toExponential(2)}, logits ${logitError.toExponential(2)}`);
      assert.ok(featureError <= TOLERANCE, `features differ from timm by ${featureError}`);
      assert.ok(logitError <= TOLERANCE, `logits differ from timm by ${logitError}`);
      E.dispose([features, logits]);
    } finally {
      model.dispose();
      E.dispose([...weights.tensors.values(), ...io.tensors.values()]);
    }
  });
}

test('ConvNeXt MLP: the fp32 CPU path (1×1 convs on the channels-last view) equals the matmul over NHWC, gradients too', () => {
  E.manualSeed(0);
  for (const convMlp of [true, false]) {
    const block = new ConvNeXtBlock(24, { convMlp, dropPath: 0, layerScaleInit: 1 });
    const { fc1, fc2 } = block.mlp;
    // Biases start at zero: give them values, so that a path that dropped them would show.
    E.noGrad(() => [fc1.bias!, fc2.bias!].forEach((b) => b.normal_()));
    const x = E.randn([2, 5, 7, 24]);
    const weighting = E.randn([2, 5, 7, 24]);
    const matrix = (w: E.Tensor) => w.view([w.shape[0], w.shape[1]]);
    const asMatmul = (input: E.Tensor) => E.F.linear(E.F.gelu(E.F.linear(input, matrix(fc1.weight), fc1.bias)), matrix(fc2.weight), fc2.bias);
    // The output, and the gradients of a weighted sum of it for the input and fc1's weight.
    const run = (forward: (input: E.Tensor) => E.Tensor) => {
      const input = x.detach().requiresGrad_();
      const out = E.tidy(() => {
        const y = forward(input);
        y.mul(weighting).sum().backward();
        return y.detach();
      });
      const [inputGrad, weightGrad] = [input.grad!, fc1.weight.grad!];
      const arrays = [out, inputGrad, weightGrad].map((t) => t.toArray().flat(Infinity) as number[]);
      E.dispose([input, out, inputGrad, weightGrad]);
      for (const p of block.parameters()) p.grad = undefined;
      return arrays;
    };
    const actual = run((input) => block.mlp.forward(input));
    const expected = run(asMatmul);
    ['output', 'input gradient', 'fc1 weight gradient'].forEach((what, k) => {
      const error = maxAbsDiff(actual[k], expected[k]);
      assert.ok(error <= 1e-4, `convMlp ${convMlp}: the two paths' ${what} differ by ${error}`);
    });
    E.dispose([x, weighting]);
    block.dispose();
  }
});
