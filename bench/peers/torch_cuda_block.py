"""PyTorch side of the GPU check: the ConvNeXt block training step of bench/cuda-block.ts, op for op (depthwise conv,
layer norm, two linears with GELU, layer scale, residual, AdamW with foreach=False as hemato's per-parameter AdamW),
timed with torch.cuda.synchronize(). Prints one JSON document on stdout; progress on stderr.

    python3 bench/peers/torch_cuda_block.py [--device cuda|cpu] [--batch 128] [--size 56] [--channels 96] [--reps 10]
                                            [--fp32] [--channels-last]
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda")
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--size", type=int, default=56)
ap.add_argument("--channels", type=int, default=96)
ap.add_argument("--reps", type=int, default=10)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--fp32", action="store_true")
ap.add_argument("--channels-last", action="store_true")
args = ap.parse_args()

device = torch.device(args.device)
if device.type == "cuda" and not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
bf16 = not args.fp32
c, b, s = args.channels, args.batch, args.size
torch.manual_seed(0)


def param(*shape, scale=1.0, offset=0.0):
    return (torch.randn(*shape) * scale + offset).to(device).requires_grad_()


p = dict(dw=param(c, 1, 7, 7, scale=0.1), dwb=param(c, scale=0), nw=param(c, scale=0, offset=1), nb=param(c, scale=0),
         w1=param(4 * c, c, scale=0.05), b1=param(4 * c, scale=0), w2=param(c, 4 * c, scale=0.05), b2=param(c, scale=0),
         gamma=param(c, scale=0, offset=0.1))
x = torch.randn(b, c, s, s, device=device)
if args.channels_last:
    x = x.contiguous(memory_format=torch.channels_last)


def forward():
    y = F.conv2d(x, p["dw"], p["dwb"], 1, 3, 1, c).permute(0, 2, 3, 1)
    y = F.layer_norm(y.float() if y.dtype != p["nw"].dtype else y, [c], p["nw"], p["nb"], 1e-6)
    y = F.linear(F.gelu(F.linear(y, p["w1"], p["b1"])), p["w2"], p["b2"])
    y = y.mul(p["gamma"]).permute(0, 3, 1, 2)
    return x.add(y).float().pow(2).mean()


opt = torch.optim.AdamW(p.values(), lr=1e-4, foreach=False)
loss = float("nan")


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def step():
    global loss
    if bf16:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            l = forward()
    else:
        l = forward()
    l.backward()
    loss = l.item()
    opt.step()
    opt.zero_grad(set_to_none=True)


print(f"PyTorch {torch.__version__} ConvNeXt block step on {device}: batch {b}, {c}x{s}x{s}, "
      f"{'bf16 autocast' if bf16 else 'fp32'}{', channels_last' if args.channels_last else ''}", file=sys.stderr)
for _ in range(args.warmup):
    step()
sync()
times = []
for _ in range(args.reps):
    t0 = time.perf_counter()
    step()
    sync()
    times.append((time.perf_counter() - t0) * 1000)
ms = statistics.median(times)
memory = None
if device.type == "cuda":
    memory = dict(allocatedBytes=torch.cuda.memory_allocated(), reservedBytes=torch.cuda.memory_reserved(),
                  peakAllocatedBytes=torch.cuda.max_memory_allocated())
print(json.dumps(dict(impl="pytorch", torch=torch.__version__, device=str(device), batch=b, channels=c, size=s,
                      precision="bf16-autocast" if bf16 else "fp32", channels_last=args.channels_last,
                      step_ms=round(ms, 2), images_per_s=round(b / ms * 1000, 1), loss=loss, memory=memory,
                      gpu=torch.cuda.get_device_name(0) if device.type == "cuda" else None)))
