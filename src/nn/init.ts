// Parameter initialisation in place, as timm initialises ConvNeXt and Swin (truncated normal, std 0.02).
import * as E from '../engine/index.js';

/** The standard normal CDF, via the Abramowitz–Stegun erf approximation (error below 1.5e-7). */
function normalCdf(x: number): number {
  const z = Math.abs(x) / Math.SQRT2;
  const t = 1 / (1 + 0.3275911 * z);
  const poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  const erf = 1 - poly * Math.exp(-z * z);
  return 0.5 * (1 + (x < 0 ? -erf : erf));
}

/**
 * Fills t with a normal(mean, std) truncated to the absolute bounds [a, b]. The defaults are timm's: with std 0.02
 * the bounds ±2 lie 100 standard deviations out, where a plain normal sample (clamped for form) has the same law
 * to within 1e-9 and costs a tenth of the inverse-CDF method, which libtorch's slow erfinv dominates.
 */
export function truncNormal_(t: E.Tensor, std = 0.02, mean = 0, a = -2, b = 2): E.Tensor {
  if (!(std > 0) || !(a < b)) throw new RangeError(`truncNormal_: need std > 0 and a < b, got std=${std}, [${a}, ${b}]`);
  const lower = normalCdf((a - mean) / std);
  const upper = normalCdf((b - mean) / std);
  return E.noGrad(() => {
    if ((a - mean) / std <= -6 && (b - mean) / std >= 6) return t.normal_(mean, std).clamp_(a, b);
    t.uniform_(2 * lower - 1, 2 * upper - 1);
    E.call<E.Tensor>('erfinv_', '', t).dispose(); // the in-place op returns a second handle to t
    return t
      .mul_(std * Math.SQRT2)
      .add_(mean)
      .clamp_(a, b);
  });
}

/** PyTorch's default for Linear and Conv weights and biases: uniform in ±1/√fanIn (kaiming_uniform with a=√5). */
export function fanInUniform_(t: E.Tensor, fanIn: number): E.Tensor {
  const bound = 1 / Math.sqrt(fanIn);
  return E.noGrad(() => t.uniform_(-bound, bound));
}

export function zeros_(t: E.Tensor): E.Tensor {
  return E.noGrad(() => t.zero_());
}

export function ones_(t: E.Tensor): E.Tensor {
  return E.noGrad(() => t.fill_(1));
}
