"""PyTorch side of `npm run bench:model`'s whole-model peer: hemato's convnext-only network (timm's convnext_atto
under the keys convnext.*, with the dual-path head) written in plain PyTorch, op for op as src/models/convnext.ts
and src/models/classifier.ts run it: norms in fp32, the 1x1-conv MLP applied on NHWC (as Linear under autocast, as
1x1 convs on the channels-last view in fp32), channels-last input. Debian's PyTorch 1.13 runs on the same libtorch as
hemato's addon.

argv[1] is a JSON config: threads, batch, input_size, num_classes, weights (a .safetensors file, or null for random
initialisation), params (hemato's parameter count, which this network must match). It prints one JSON line when
ready, then answers each command on stdin ("forward fp32 hemato", "train bf16 nchw", "quit") with one line: the
milliseconds that one forward pass or training step took. The last word picks how the same weights run: "hemato"
op for op as hemato, or "nchw" as timm writes convnext_atto (NCHW memory, LayerNorm2d, the MLP as 1x1 convs), the
form a PyTorch user would run. Progress goes to stderr."""
import json
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6
NCHW = False  # set per command: run the network as timm writes it rather than as hemato does


def layer_norm(x, norm):
    # In fp32, as hemato's F.layerNorm: 1.13's CPU autocast rejects bf16 input with fp32 weights.
    return F.layer_norm(x.float() if x.dtype != norm.weight.dtype else x, [x.shape[-1]], norm.weight, norm.bias, norm.eps)


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return layer_norm(x.permute(0, 2, 3, 1), self).permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):  # NHWC, or NCHW as 1x1 convs
        if NCHW:
            return self.fc2(F.gelu(self.fc1(x)))
        if x.dtype == torch.float32 and not torch.is_autocast_cpu_enabled():
            # As hemato in fp32 on the CPU: 1x1 convs on the channels-last view (oneDNN beats the BLAS matmul here).
            y = F.conv2d(x.permute(0, 3, 1, 2), self.fc1.weight, self.fc1.bias)
            return F.conv2d(F.gelu(y), self.fc2.weight, self.fc2.bias).permute(0, 2, 3, 1)
        x = F.linear(x, self.fc1.weight.view(self.fc1.out_channels, self.fc1.in_channels), self.fc1.bias)
        x = F.gelu(x)
        return F.linear(x, self.fc2.weight.view(self.fc2.out_channels, self.fc2.in_channels), self.fc2.bias)


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.full([dim], 1e-6))
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=EPS)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x):
        if NCHW:
            y = self.mlp(self.norm(self.conv_dw(x)))
            return y.mul(self.gamma.reshape(1, -1, 1, 1)).add(x)
        y = layer_norm(self.conv_dw(x).permute(0, 2, 3, 1), self.norm)
        y = self.mlp(y).mul(self.gamma).permute(0, 3, 1, 2)
        return y.add(x)


class Stage(nn.Module):
    def __init__(self, in_dim, out_dim, depth, downsample):
        super().__init__()
        self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=EPS), nn.Conv2d(in_dim, out_dim, 2, stride=2)) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[Block(out_dim) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class ConvNeXt(nn.Module):
    def __init__(self, depths, dims):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0], eps=EPS))
        self.stages = nn.ModuleList(Stage(dims[max(i - 1, 0)], dims[i], d, i > 0) for i, d in enumerate(depths))

    def forward(self, x):
        x = self.stem(x if NCHW else x.contiguous(memory_format=torch.channels_last))
        for stage in self.stages:
            x = stage(x)
        return x


class Head(nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.norm = nn.LayerNorm(features, eps=EPS)
        self.fc = nn.Linear(features, classes)

    def forward(self, x):  # NHWC
        return self.fc(layer_norm(x.mean([1, 2]), self.norm))


class ConvNeXtOnly(nn.Module):
    def __init__(self, classes, depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)):
        super().__init__()
        self.convnext = ConvNeXt(depths, dims)
        self.head = Head(dims[-1], classes)

    def forward(self, x):
        return self.head(self.convnext(x).permute(0, 2, 3, 1))


DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2)}


def read_safetensors(path):
    """The network's tensors from a safetensors file, as float32 (the file's extra arrays, hemato.*, left out)."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = bytearray(f.read())
    out = {}
    for name, entry in header.items():
        if name == "__metadata__" or name.startswith("hemato."):
            continue
        begin, end = entry["data_offsets"]
        dtype, width = DTYPES[entry["dtype"]]
        tensor = torch.frombuffer(data, dtype=dtype, count=(end - begin) // width, offset=begin)
        out[name] = tensor.reshape(entry["shape"]).float()
    return out


def weight_decay_groups(model, weight_decay):
    # As hemato's weightDecayGroups: no decay on vectors and biases.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def main():
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = ConvNeXtOnly(cfg["num_classes"])
    if cfg.get("weights"):
        model.load_state_dict(read_safetensors(cfg["weights"]), strict=True)  # names and shapes must all match
    count = sum(p.numel() for p in model.parameters())
    if count != cfg["params"]:
        raise SystemExit(f"the PyTorch network has {count} parameters, hemato's {cfg['params']}")
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=1e-4, foreach=False)
    b, size = cfg["batch"], cfg["input_size"]
    x = torch.randn(b, 3, size, size)
    target = torch.arange(b) % cfg["num_classes"]

    def forward(bf16):
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    def train(bf16):
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), target, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    print(json.dumps({"ready": True, "version": torch.__version__, "threads": torch.get_num_threads(), "params": count}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        run = forward if command[0] == "forward" else train
        global NCHW
        NCHW = command[2] == "nchw"
        start = time.perf_counter()
        run(command[1] == "bf16")
        print(json.dumps({"ms": (time.perf_counter() - start) * 1000}), flush=True)


main()
