#!/usr/bin/env python3
"""Golden training runs from PyTorch for testing the `modelbatch train` CLI.

Trains G=2 LeNets (torchmb's test LeNet, as in gen.py) for K=6 steps on the first
K*N = 96 samples of the MNIST training set in data/mnist/ (file order, no shuffling,
N=16 per step, the same samples for both models), once with SGD and once with Adam.
Writes, for each run <run> in (sgd, adam), into --out (default: runs/ beside this file):

  <run>/init/model-{0,1}.safetensors    state dict at init (what `--init DIR` loads)
  <run>/final/model-{0,1}.safetensors   state dict after the K steps
  <run>/losses.csv                      step,model,loss (batch loss before each update)
  <run>/run.json                        hyper-parameters, data, versions, CLI command

then reloads what it wrote and replays both runs from the stored init files: every
loss and every final tensor must come out bit for bit equal. See README.md beside this
file ("Training runs").

How to run (from the repository root; the venv is the one gen.py describes):
    /work/venv-torch/bin/python tests/golden/gen_runs.py          # or --out DIR

Determinism: CPU, float32, one thread, deterministic algorithms; model m is made right
after `torch.manual_seed(200 + m)`; the optimizers' single-tensor (for-loop) path is
forced with foreach=False (it is also the CPU default). Regenerating with the same
versions gives byte-identical files (the safetensors files carry no metadata).
"""

import argparse
import csv
import gzip
import hashlib
import json
import os
import re
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
MNIST = os.path.join(REPO, "data", "mnist")

G = 2  # models
N = 16  # images per step (every model sees the same N)
K = 6  # steps
MODEL_SEED = 200  # model m: torch.manual_seed(MODEL_SEED + m), then LeNet()
MEAN, STD = 0.1307, 0.3081

RUNS = {
    "sgd": {
        "optimizer": "sgd",
        "lr": [0.05, 0.1],
        "momentum": 0.9,
        "dampening": 0.0,
        "nesterov": True,
        "weight_decay": 1e-3,
    },
    "adam": {
        "optimizer": "adam",
        "lr": [1e-3, 3e-3],
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 1e-4,  # L2 (added to the gradient): plain Adam, not AdamW
        "amsgrad": False,
    },
}


class LeNet(nn.Module):
    """torchmb's test LeNet (verbatim, as in gen.py)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.layers(x).flatten(1))


def num(v):
    """A float as a short CLI argument: 0.001, 0.0001, 1e-8."""
    s = repr(float(v))
    return re.sub(r"e-0*(\d)", r"e-\1", s)


def cli_command(run, init_dir, out="OUT"):
    h = RUNS[run]
    lr = ",".join(num(v) for v in h["lr"])
    cmd = (f"modelbatch train --model lenet --models {G} --init {init_dir} --no-shuffle "
           f"--steps {K} --batch-size {N} --optimizer {h['optimizer']} --lr {lr}")
    if h["optimizer"] == "sgd":
        cmd += f" --momentum {num(h['momentum'])}" + (" --nesterov" if h["nesterov"] else "")
    else:
        cmd += f" --betas {num(h['betas'][0])},{num(h['betas'][1])} --eps {num(h['eps'])}"
    cmd += f" --weight-decay {num(h['weight_decay'])} --out {out}"
    return cmd


# ---------------------------------------------------------------- data


def read_idx(path, want_dims):
    """Reads a gzipped IDX file of unsigned bytes; checks the uncompressed bytes against
    data/mnist/SHA256SUMS. Returns (uint8 array, sha256 hex)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    sums = {}
    with open(os.path.join(MNIST, "SHA256SUMS")) as f:
        for line in f:
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    digest = hashlib.sha256(raw).hexdigest()
    name = os.path.basename(path)[: -len(".gz")]
    assert sums[name] == digest, f"{path}: sha256 {digest} does not match SHA256SUMS"
    assert raw[0] == 0 and raw[1] == 0 and raw[2] == 0x08, f"{path}: not an unsigned-byte IDX file"
    ndim = raw[3]
    assert ndim == want_dims, (path, ndim)
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    assert data.size == int(np.prod(dims)), path
    return data.reshape(dims), digest


def load_batches():
    """The K step batches: x [K, N, 1, 28, 28] float32, y [K, N] int64; step s holds
    training samples [s*N, (s+1)*N)."""
    images, _ = read_idx(os.path.join(MNIST, "train-images-idx3-ubyte.gz"), 3)
    labels, _ = read_idx(os.path.join(MNIST, "train-labels-idx1-ubyte.gz"), 1)
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    px = images[: K * N].astype(np.float32)
    # Every operation in float32, as modelbatch does: (p / 255 - mean) / std.
    x = (px / np.float32(255.0) - np.float32(MEAN)) / np.float32(STD)
    assert x.dtype == np.float32
    x = torch.from_numpy(np.ascontiguousarray(x.reshape(K, N, 1, 28, 28)))
    y = torch.from_numpy(labels[: K * N].astype(np.int64).reshape(K, N))
    return x, y


# ---------------------------------------------------------------- training


def make_optimizer(run, m, params):
    h = RUNS[run]
    if h["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=h["lr"][m], momentum=h["momentum"], dampening=h["dampening"],
                               nesterov=h["nesterov"], weight_decay=h["weight_decay"], foreach=False)
    return torch.optim.Adam(params, lr=h["lr"][m], betas=tuple(h["betas"]), eps=h["eps"],
                            weight_decay=h["weight_decay"], amsgrad=h["amsgrad"], foreach=False)


def snapshot(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def train(run, m, init, x, y):
    """Trains model m of `run` from the state dict `init`. Returns (losses, final)."""
    model = LeNet()
    model.load_state_dict(init)
    model.train()
    opt = make_optimizer(run, m, model.parameters())
    losses = []
    for s in range(K):
        loss = F.cross_entropy(model(x[s]), y[s])  # mean over the N samples, before the update
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert loss.dtype == torch.float32
        losses.append(loss.detach().clone())
    return losses, snapshot(model)


def fresh_init(m):
    torch.manual_seed(MODEL_SEED + m)
    return snapshot(LeNet())


def save_state(state, path):
    for k, v in state.items():
        assert v.dtype == torch.float32, (path, k, v.dtype)
    save_file(state, path)  # no metadata: the bytes depend only on the tensors
    os.chmod(path, 0o644)  # safetensors writes 0600


def fmt(loss):
    """Shortest-safe decimal for an f32: 9 significant digits round-trip exactly."""
    v = float(loss)
    s = "%.9g" % v
    assert np.float32(float(s)) == np.float32(v)
    return s


def write_run(run, out_dir, x, y):
    d = os.path.join(out_dir, run)
    for sub in ("init", "final"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    rows = []
    for m in range(G):
        init = fresh_init(m)
        save_state(init, os.path.join(d, "init", f"model-{m}.safetensors"))
        losses, final = train(run, m, init, x, y)
        save_state(final, os.path.join(d, "final", f"model-{m}.safetensors"))
        rows += [(s, m, losses[s]) for s in range(K)]
    rows.sort(key=lambda r: (r[0], r[1]))  # step-major: step 0 model 0, step 0 model 1, ...
    with open(os.path.join(d, "losses.csv"), "w", newline="") as f:
        f.write("step,model,loss\n")
        for s, m, loss in rows:
            f.write(f"{s},{m},{fmt(loss)}\n")
    info = {
        "run": run,
        "net": "lenet (torchmb's test LeNet; names layers.0, layers.3, classifier.0/2/4)",
        "G": G,
        "N": N,
        "K": K,
        "hyper": RUNS[run],
        "pytorch_call": (
            f"torch.optim.SGD(params, lr=lr[m], momentum={RUNS[run].get('momentum')}, dampening={RUNS[run].get('dampening')}, "
            f"nesterov={RUNS[run].get('nesterov')}, weight_decay={RUNS[run]['weight_decay']!r}, foreach=False)"
            if run == "sgd" else
            f"torch.optim.Adam(params, lr=lr[m], betas={tuple(RUNS[run]['betas'])}, eps={RUNS[run]['eps']!r}, "
            f"weight_decay={RUNS[run]['weight_decay']!r}, amsgrad=False, foreach=False)"
        ),
        "step": "loss = cross_entropy(model(x_s), y_s) (mean, train mode); zero_grad(); backward(); step()",
        "data": {
            "files": ["data/mnist/train-images-idx3-ubyte.gz", "data/mnist/train-labels-idx1-ubyte.gz"],
            "order": "no shuffling: step s uses training samples [s*N, (s+1)*N) in file order, same for every model",
            "samples_used": [0, K * N],
            "normalize": {"mean": MEAN, "std": STD, "formula": "(pixel / 255 - mean) / std, in float32",
                          "shape": [N, 1, 28, 28]},
            "labels": "int64",
        },
        "model_seed": f"torch.manual_seed({MODEL_SEED} + m) then LeNet() (PyTorch default init)",
        "dtype": "float32",
        "device": "cpu, torch.set_num_threads(1), torch.use_deterministic_algorithms(True)",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "files": {
            "init": "init/model-{m}.safetensors: state_dict() at construction",
            "final": "final/model-{m}.safetensors: state_dict() after the K steps",
            "losses": "losses.csv: step,model,loss; loss of step s's batch before step s's update; %.9g",
        },
        # Fixed path (the committed location), so the file does not depend on --out.
        "cli": cli_command(run, f"tests/golden/runs/{run}/init"),
    }
    with open(os.path.join(d, "run.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    return d


# ---------------------------------------------------------------- check


def check(out_dir, x, y):
    """Reload every file; init must equal a fresh seeded model; replaying from the stored
    init must reproduce losses.csv and the final files bit for bit. Returns the number of
    tensors compared."""
    compared = 0
    names = list(LeNet().state_dict())
    for run in RUNS:
        d = os.path.join(out_dir, run)
        with open(os.path.join(d, "losses.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(int(r["step"]), int(r["model"])) for r in rows] == [(s, m) for s in range(K) for m in range(G)]
        stored_loss = {(int(r["step"]), int(r["model"])): np.float32(float(r["loss"])) for r in rows}
        with open(os.path.join(d, "run.json")) as f:
            info = json.load(f)
        assert info["hyper"] == RUNS[run] and info["N"] == N and info["K"] == K and info["G"] == G
        for m in range(G):
            init = load_file(os.path.join(d, "init", f"model-{m}.safetensors"))
            final = load_file(os.path.join(d, "final", f"model-{m}.safetensors"))
            assert sorted(init) == sorted(names) and sorted(final) == sorted(names), (run, m)
            fresh = fresh_init(m)
            for k in names:
                assert init[k].dtype == torch.float32 and torch.equal(init[k], fresh[k]), (run, m, k)
            torch.manual_seed(12345)  # any seed: everything comes from the files
            losses, replay = train(run, m, init, x, y)
            for s in range(K):
                assert np.float32(losses[s].item()) == stored_loss[(s, m)], (run, m, s)
            for k in names:
                assert torch.equal(replay[k], final[k]), f"{run} m{m} {k} differs"
                assert not torch.equal(final[k], init[k]), f"{run} m{m} {k} did not change"
                compared += 1
    return compared


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "runs"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    x, y = load_batches()
    for run in RUNS:
        write_run(run, args.out, x, y)
    compared = check(args.out, x, y)

    print(f"torch {torch.__version__}, numpy {np.__version__}, out {args.out}")
    print(f"data: train samples 0..{K * N}, labels of step 0: {y[0].tolist()}")
    for run in RUNS:
        d = os.path.join(args.out, run)
        with open(os.path.join(d, "losses.csv")) as f:
            rows = f.read().split()[1:]
        per_model = {m: [r.split(",")[2] for r in rows if r.split(",")[1] == str(m)] for m in range(G)}
        print(f"{run}:")
        for m in range(G):
            print(f"  model {m} losses: {' '.join(per_model[m])}")
        print(f"  {cli_command(run, os.path.relpath(os.path.join(d, 'init'), REPO))}")
    print(f"replay check: losses and {compared} final tensors equal bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
