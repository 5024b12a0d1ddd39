"""PyTorch side of `npm run bench:engine`: the same block steps, GEMM/conv rates and per-call overhead as
bench/engine.ts, op for op, on Debian's PyTorch (the same libtorch 1.13). Reads a JSON config as argv[1] and
prints one JSON object. Progress goes to stderr."""
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)


def timed(fn, warmup, reps, min_seconds=0.0):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def param(*shape, scale=1.0, offset=0.0):
    return (torch.randn(*shape) * scale + offset).requires_grad_()


def layer_norm(x, w, b, eps):
    # Norms in fp32, as hemato's F.layerNorm does: 1.13's CPU autocast rejects bf16 input with fp32 weights.
    return F.layer_norm(x.float() if x.dtype != w.dtype else x, [x.shape[-1]], w, b, eps)


def convnext_block(s):
    c = s["channels"]
    p = dict(dw=param(c, 1, 7, 7, scale=0.1), dwb=param(c, scale=0), nw=param(c, scale=0, offset=1), nb=param(c, scale=0),
             w1=param(4 * c, c, scale=0.05), b1=param(4 * c, scale=0), w2=param(c, 4 * c, scale=0.05), b2=param(c, scale=0),
             gamma=param(c, scale=0, offset=0.1))
    x = torch.randn(s["batch"], c, s["size"], s["size"])

    def forward():
        y = F.conv2d(x, p["dw"], p["dwb"], 1, 3, 1, c).permute(0, 2, 3, 1)
        y = layer_norm(y, p["nw"], p["nb"], 1e-6)
        y = F.linear(F.gelu(F.linear(y, p["w1"], p["b1"])), p["w2"], p["b2"])
        y = y.mul(p["gamma"]).permute(0, 3, 1, 2)
        return x.add(y).float().pow(2).mean()
    return p, forward


def swin_block(s):
    c, heads, ws, size = s["channels"], s["heads"], s["window"], s["size"]
    n = ws * ws
    p = dict(n1w=param(c, scale=0, offset=1), n1b=param(c, scale=0), wqkv=param(3 * c, c, scale=0.05), bqkv=param(3 * c, scale=0),
             bias=param(1, heads, n, n, scale=0.02), wproj=param(c, c, scale=0.05), bproj=param(c, scale=0),
             n2w=param(c, scale=0, offset=1), n2b=param(c, scale=0), w1=param(4 * c, c, scale=0.05), b1=param(4 * c, scale=0),
             w2=param(c, 4 * c, scale=0.05), b2=param(c, scale=0))
    b = s["batch"]
    x = torch.randn(b, size * size, c)
    g = size // ws

    def forward():
        y = layer_norm(x, p["n1w"], p["n1b"], 1e-5)
        y = y.reshape(b, g, ws, g, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        qkv = F.linear(y, p["wqkv"], p["bqkv"]).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.select(0, 0), qkv.select(0, 1), qkv.select(0, 2)
        logits = q.mul(1 / math.sqrt(c // heads)).matmul(k.transpose(-2, -1)).add(p["bias"])
        y = F.softmax(logits, -1, dtype=torch.float32).to(v.dtype).matmul(v)
        y = F.linear(y.transpose(1, 2).reshape(-1, n, c), p["wproj"], p["bproj"])
        y = y.reshape(b, g, g, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, size * size, c)
        y = x.add(y)
        z = F.linear(F.gelu(F.linear(layer_norm(y, p["n2w"], p["n2b"], 1e-5), p["w1"], p["b1"])), p["w2"], p["b2"])
        return y.add(z).float().pow(2).mean()
    return p, forward


def step_time(make, shape, bf16, warmup, reps):
    params, forward = make(shape)
    opt = torch.optim.AdamW(params.values(), lr=1e-4, foreach=False)

    def step():
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = forward()
        else:
            loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return timed(step, warmup, reps)


out = {"version": torch.__version__, "threads": torch.get_num_threads(), "steps": {}}
for name, spec in cfg["steps"].items():
    make = convnext_block if spec["block"] == "convnext" else swin_block
    out["steps"][name] = step_time(make, spec["shape"], spec["bf16"], cfg["warmup"], cfg["reps"])
    print(f"torch {name}: {out['steps'][name]:.1f} ms", file=sys.stderr)

calls = cfg["calls"]
if calls:
    x, y = torch.ones(1), torch.ones(1)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.add(x, y)
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    out["call_us"] = best

if cfg.get("steps_only"):
    print(json.dumps(out))
    sys.exit(0)

m = cfg["matmul"]
a, b = torch.randn(m, m), torch.randn(m, m)
out["matmul_ms"] = timed(lambda: a.matmul(b), 1, cfg["reps"])
cv = cfg["conv"]
image, kernel = torch.randn(*cv["input"]), torch.randn(*cv["weight"])
out["conv_ms"] = timed(lambda: F.conv2d(image, kernel, None, 1, 1), 1, cfg["reps"])

print(json.dumps(out))
