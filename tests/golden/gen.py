#!/usr/bin/env python3
"""Golden values from PyTorch for modelbatch's tests.

Writes, into --out (default: this script's folder):
  lenet.safetensors, normnet.safetensors  (key layout: see README.md beside this file)
  normnet.json                            (normnet's ModelSpec)
then reloads what it wrote and checks that replaying every step from the stored
`m{m}.init.*` tensors reproduces every stored value bit for bit.

How to run (from the repository root):
    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch==2.15.0 safetensors numpy
    /work/venv-torch/bin/python tests/golden/gen.py            # or --out DIR

The committed files were made with torch 2.15.0 (the PyPI wheel, 2.15.0+cu132, run on
CPU only), safetensors 0.8.0, numpy 2.4.6, Python 3.11.7, x86_64 Linux.

Installing: `pip install torch --no-deps` (539 MB wheel) is NOT enough for the PyPI
Linux wheel: `import torch` then fails with "libcudart.so.13: cannot open shared object
file" because torch preloads its CUDA libraries even on CPU. The plain
`pip install torch` (pulling the nvidia-*/cuda-toolkit wheels, ~5.4 GB venv, about
4 minutes in all here) works and is what produced the committed files.

Determinism: one CPU thread, deterministic algorithms, fixed seeds. Model m of a net is
made right after `torch.manual_seed(100 + m)` (PyTorch default init); the data comes
from its own generator (seed 1 for lenet, 2 for normnet), so it does not depend on the
global seed.
"""

import argparse
import copy
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

G = 3  # models per net
N = 5  # samples per model
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 1e-3


class LeNet(nn.Module):
    """torchmb's test LeNet (verbatim)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.layers(x).flatten(1))


def normnet():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2),
        nn.GroupNorm(3, 12),
        nn.GELU(),
        nn.MaxPool2d(2),
        nn.Conv2d(12, 12, 1, bias=False),
        nn.LeakyReLU(0.1),
        nn.AdaptiveAvgPool2d((2, 2)),
        nn.Flatten(),
        nn.Linear(48, 10),
    )


NORMNET_SPEC = {
    "input": [3, 10, 10],
    "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "conv2d", "out_channels": 12, "kernel_size": 3, "stride": 2, "padding": 1, "groups": 2},
        {"type": "groupnorm", "num_groups": 3},
        {"type": "gelu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 12, "kernel_size": 1, "bias": False},
        {"type": "leaky_relu", "negative_slope": 0.1},
        {"type": "adaptive_avgpool2d", "output_size": 2},
        {"type": "flatten"},
        {"type": "linear", "out_features": 10},
    ],
}

NETS = {
    # name: (constructor, per-sample input shape, data seed)
    "lenet": (LeNet, [1, 28, 28], 1),
    "normnet": (normnet, [3, 10, 10], 2),
}


def make_data(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn([G, N] + shape, generator=gen, dtype=torch.float32)
    y = torch.randint(0, 10, (G, N), generator=gen, dtype=torch.int64)
    return x, y


def snapshot(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def run_model(model, x, y):
    """Everything recorded for one model, starting from its current state. Returns a dict
    of tensors keyed without the `m{m}.` prefix."""
    out = {}
    model.train()
    out.update({f"init.{k}": v for k, v in snapshot(model).items()})
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)

    # Step 1: forward, backward (with the input gradient), update.
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    loss = F.cross_entropy(logits, y)  # mean over the N samples
    opt.zero_grad()
    loss.backward()
    out["logits"] = logits.detach().clone()
    out["loss"] = loss.detach().clone()
    for k, p in model.named_parameters():
        out[f"grad.{k}"] = p.grad.detach().clone()
    out["grad.x"] = xg.grad.detach().clone()
    opt.step()
    out.update({f"step1.{k}": v for k, v in snapshot(model).items()})

    # Step 2: same batch, momentum buffers now in use.
    logits2 = model(x)
    loss2 = F.cross_entropy(logits2, y)
    opt.zero_grad()
    loss2.backward()
    out["logits2"] = logits2.detach().clone()
    out["loss2"] = loss2.detach().clone()
    opt.step()
    out.update({f"step2.{k}": v for k, v in snapshot(model).items()})

    # Eval mode (running statistics) after the two steps.
    model.eval()
    with torch.no_grad():
        out["eval_logits"] = model(x).detach().clone()
    model.train()
    return out


def pool_tie_report(model, x):
    """Counts MaxPool windows whose maximum is attained more than once, split by whether
    that maximum is > 0 (a tie the gradient could see) or <= 0."""
    ties = []

    def hook(mod, inp, _out):
        t = inp[0].detach()
        k = mod.kernel_size if isinstance(mod.kernel_size, int) else mod.kernel_size[0]
        h, w = (t.shape[-2] // k) * k, (t.shape[-1] // k) * k
        win = t[..., :h, :w].unfold(-2, k, k).unfold(-2, k, k).flatten(-2)
        mx = win.max(-1, keepdim=True).values
        count = (win == mx).sum(-1)
        tied = count > 1
        ties.append((int((tied & (mx.squeeze(-1) > 0)).sum()), int((tied & (mx.squeeze(-1) <= 0)).sum()), win.shape[:-1].numel()))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return ties


def generate(out_dir):
    summary = {}
    for net, (ctor, shape, data_seed) in NETS.items():
        x, y = make_data(shape, data_seed)
        tensors = {"x": x.contiguous(), "y": y.contiguous()}
        ties = []
        for m in range(G):
            torch.manual_seed(100 + m)
            model = ctor()
            ties.append(pool_tie_report(copy.deepcopy(model), x[m]))  # a copy: its forward moves BN stats
            rec = run_model(model, x[m], y[m])
            tensors.update({f"m{m}.{k}": v.contiguous() for k, v in rec.items()})
        for k, v in tensors.items():
            assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
            assert v.dtype == torch.float32 or k == "y" or k.endswith("num_batches_tracked"), k
        meta = {
            "net": net,
            "torch": torch.__version__,
            "G": str(G),
            "N": str(N),
            "input": json.dumps(shape),
            "sgd": json.dumps({"lr": LR, "momentum": MOMENTUM, "nesterov": True, "weight_decay": WEIGHT_DECAY}),
            "model_seed": "torch.manual_seed(100 + m) before constructing model m",
            "data_seed": str(data_seed),
        }
        path = os.path.join(out_dir, f"{net}.safetensors")
        # One metadata key: safetensors writes the metadata map in hash order, so several
        # keys would make the bytes differ from run to run.
        save_file(tensors, path, metadata={"golden": json.dumps(meta, sort_keys=True)})
        os.chmod(path, 0o644)  # safetensors writes 0600
        summary[net] = (path, len(tensors), ties)
    with open(os.path.join(out_dir, "normnet.json"), "w") as f:
        json.dump(NORMNET_SPEC, f)
        f.write("\n")
    return summary


def check(out_dir):
    """Reload each file and replay from the stored init tensors: every value must match
    bit for bit. Returns the number of tensors compared."""
    compared = 0
    for net, (ctor, shape, _) in NETS.items():
        t = load_file(os.path.join(out_dir, f"{net}.safetensors"))
        x, y = t["x"], t["y"]
        assert list(x.shape) == [G, N] + shape and x.dtype == torch.float32
        assert list(y.shape) == [G, N] and y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 10
        for m in range(G):
            torch.manual_seed(12345)  # any seed: everything comes from the file
            model = ctor()
            init = {k[len(f"m{m}.init."):]: v for k, v in t.items() if k.startswith(f"m{m}.init.")}
            assert set(init) == set(model.state_dict()), net
            for k, v in init.items():  # a fresh default-initialised state, with counters 0, 1, 2
                if k.endswith("num_batches_tracked"):
                    assert int(v) == 0 and int(t[f"m{m}.step1.{k}"]) == 1 and int(t[f"m{m}.step2.{k}"]) == 2, k
                elif k.endswith("running_mean"):
                    assert torch.equal(v, torch.zeros_like(v)), k
                elif k.endswith("running_var"):
                    assert torch.equal(v, torch.ones_like(v)), k
            model.load_state_dict(init)
            # The plain check asked for: a train-mode forward reproduces the logits.
            with torch.no_grad():
                logits = model.train()(x[m])
            assert torch.equal(logits, t[f"m{m}.logits"]), f"{net} m{m} logits differ"
            # The full replay (fresh model, since that forward moved the BN running stats).
            model = ctor()
            model.load_state_dict(init)
            rec = run_model(model, x[m], y[m])
            stored = {k[len(f"m{m}."):]: v for k, v in t.items() if k.startswith(f"m{m}.")}
            assert set(rec) == set(stored), (net, m, set(rec) ^ set(stored))
            for k, v in rec.items():
                s = stored[k]
                assert s.dtype == v.dtype and s.shape == v.shape, (net, m, k)
                assert torch.equal(s, v), f"{net} m{m} {k} differs"
                compared += 1
    return compared


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    summary = generate(args.out)
    compared = check(args.out)

    print(f"torch {torch.__version__}, out {args.out}")
    for net, (path, count, ties) in summary.items():
        t = load_file(path)
        print(f"{net}: {os.path.getsize(path)} bytes, {count} tensors")
        for m in range(G):
            print(f"  m{m}: loss {t[f'm{m}.loss'].item():.6f} -> {t[f'm{m}.loss2'].item():.6f}; "
                  f"maxpool tied windows (max>0, max<=0, total) per pool: {ties[m]}")
        print(f"  keys for m0: {sorted({k.split('.')[1] if '.' in k[3:] else k[3:] for k in t if k.startswith('m0.')})}")
    print(f"normnet.json: {os.path.getsize(os.path.join(args.out, 'normnet.json'))} bytes")
    print(f"replay check: {compared} tensors equal bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
