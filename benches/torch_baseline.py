#!/usr/bin/env python3
"""PyTorch baseline for modelbatch's LeNet training-step benchmark (issue 7).

Measures one full training step of G independent LeNets -- forward, per-model
mean cross-entropy, backward, SGD (lr 0.01, momentum 0.9) -- with N images per
model, four ways:

  torchmb        torchmb 0.2: BatchModule(LeNet(), G) + batch_loss, one
                 torch.optim.SGD over the batched parameters
  func           torch.func: stack_module_state + functional_call +
                 vmap(grad_and_value(loss)), SGD momentum on the stacked
                 tensors with torch._foreach ops (the per-model SGD rule)
  func_compiled  the same step under torch.compile (mode="reduce-overhead",
                 i.e. CUDA graphs, on CUDA; default mode on CPU)
  loop           a Python loop over G separate LeNets, each with its own
                 torch.optim.SGD

Prints one JSON line per (method, G), the same fields as `modelbatch bench`
plus "method", e.g.

  {"method": "func", "models": 64, "batch_size": 128, "steps_per_s": ...,
   "samples_per_s": ..., "step_ms": ..., "device": "cuda",
   "adapter": "NVIDIA H100 80GB HBM3", "torch": "2.x", "threads": 2, ...}

Lines for measurements that did not run carry "skipped" (memory cap, OOM,
time limit) or "error" (e.g. torch.compile unavailable) instead of timings.
Before benchmarking, a correctness check trains G=2 models from the same
weights on the same batch with every selected method and compares the
per-model losses of three consecutive steps (initial, after one step, after
two steps) against the loop; it prints {"check": "ok", ...} or exits with
status 1 after printing {"check": "failed", ...}.

Usage: python benches/torch_baseline.py --device cuda
       python benches/torch_baseline.py --device cpu --threads 2 --models 1,8,64
See benches/README.md.
"""

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from torch import nn

LR = 0.01
MOMENTUM = 0.9
ALL_METHODS = ("torchmb", "func", "func_compiled", "loop")


# --------------------------------------------------------------------------
# the model: torchmb's test LeNet (tests/lenet.py), unchanged


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(256, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x):
        x = self.layers(x)
        # x.view keeps torchmb's FX tracer happy (a call_method on the merged
        # (b g) batch; torch.flatten would be flagged as unsupported).
        x = x.view(x.shape[0], -1)
        return self.classifier(x)


LENET_PARAMS = sum(p.numel() for p in LeNet().parameters())  # 44,426


# --------------------------------------------------------------------------
# helpers


class Skip(Exception):
    """A measurement that cannot run (memory); not an error."""


def is_oom(exc):
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ("out of memory", "can't allocate memory", "cannot allocate memory")
    )


def cudagraph_skips():
    try:
        from torch._dynamo.utils import counters

        return int(counters["inductor"]["cudagraph_skips"])
    except Exception:  # noqa: BLE001
        return 0


def emit(obj):
    print(json.dumps(obj), flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def cpu_model_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def mem_available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def set_fp32_precision(device, tf32):
    """Strict IEEE fp32 by default (modelbatch computes in f32; PyTorch's own
    default lets cuDNN convolutions use TF32). --tf32 allows TF32 for cuDNN
    and cuBLAS. The legacy allow_tf32 flags are used on purpose: inductor
    reads them, and mixing them with the newer fp32_precision API raises."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def estimate_bytes(method, G, N):
    """Rough peak memory of one training step (fp32), to skip sizes that
    cannot fit before trying them. Per sample LeNet keeps ~12.5k activation
    values for backward (conv1/relu 2x3456, pool 864 + int64 indices, conv2/relu
    2x1024, pool 256 + indices, fc 2x(120+84)+10, input 784); backward
    temporaries roughly double it."""
    f = 4
    act = 25_000 * f * G * N
    data = (784 * f + 8) * G * N
    params = 3 * LENET_PARAMS * f * G  # weights, grads, momentum
    if method == "torchmb":
        # BatchLinear materialises einops.repeat(weight, 'g o i -> (b g) o i'):
        # a copy of every Linear weight per sample, kept for backward, plus the
        # gradient of that copy (fc1 alone: 30720 floats per sample).
        fc = 30720 + 10080 + 840
        return act + data + params + (fc + 30720) * f * G * N
    if method in ("func", "func_compiled"):
        return act + data + params
    if method == "loop":
        return 25_000 * f * N + data + params
    raise ValueError(method)


# --------------------------------------------------------------------------
# the four methods: each runner is built from G CPU LeNets (same weights for
# every method), data x [G, N, 1, 28, 28] and labels y [G, N] on the device.
# step() runs one full training step and returns the per-model losses [G]
# computed in its forward pass (i.e. before that step's update).


class TorchmbRunner:
    def __init__(self, models, x, y, device):
        from torchmb import BatchModule, batch_loss

        self.batch_loss = batch_loss
        self.G = len(models)
        # torchmb's FX pass prints notes (e.g. on x.shape[0]) to stdout, which
        # would break the JSON-lines output: send them to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            bm = BatchModule(LeNet(), self.G, inplace=False)
        bm.load_state_dicts([m.state_dict() for m in models])
        self.model = bm.to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.x, self.y = x, y

    def step(self):
        out = self.model(self.x)  # [G, N, 10]
        losses = self.batch_loss(out, self.y, self.G, F.cross_entropy, "mean")  # [G]
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.opt.step()
        return losses.detach()


def make_func_step(base):
    from torch.func import functional_call, grad_and_value, vmap

    def loss_fn(params, buffers, x, y):
        out = functional_call(base, (params, buffers), (x,))
        return F.cross_entropy(out, y)

    per_model = vmap(grad_and_value(loss_fn), in_dims=(0, 0, 0, 0))

    def step(params, buffers, moms, x, y):
        grads, losses = per_model(params, buffers, x, y)
        keys = list(params.keys())
        p = [params[k] for k in keys]
        m = [moms[k] for k in keys]
        g = [grads[k] for k in keys]
        # torch.optim.SGD(momentum=0.9, dampening=0): buf = 0.9*buf + grad
        # (buf starts at zero, so the first step gives buf = grad exactly);
        # p -= lr * buf. Elementwise, so each model's slice follows its own rule.
        torch._foreach_mul_(m, MOMENTUM)
        torch._foreach_add_(m, g)
        torch._foreach_add_(p, m, alpha=-LR)
        return losses

    return step


class FuncRunner:
    compiled = False

    def __init__(self, models, x, y, device, compile_mode=None, fullgraph=True):
        from torch.func import stack_module_state

        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().to(device).contiguous() for k, v in params.items()}
        self.buffers = {k: v.detach().to(device) for k, v in buffers.items()}
        self.moms = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.x, self.y = x, y
        self.device = device
        base = copy.deepcopy(models[0]).to("meta")
        step = make_func_step(base)
        if compile_mode is not None:
            self.compiled = True
            torch._dynamo.reset()
            if device.type == "cuda":
                # Parameters, momentum and the resident data keep their
                # addresses, so CUDA graphs can mutate/read them in place
                # instead of copying them in and out on every replay.
                for t in [*self.params.values(), *self.moms.values(), x, y]:
                    torch._dynamo.mark_static_address(t)
            kw = {"dynamic": False, "fullgraph": fullgraph}
            if compile_mode != "default":
                kw["mode"] = compile_mode
            step = torch.compile(step, **kw)
        self._step = step

    def step(self):
        if self.compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        losses = self._step(self.params, self.buffers, self.moms, self.x, self.y)
        return losses


class LoopRunner:
    def __init__(self, models, x, y, device):
        self.models = [copy.deepcopy(m).to(device) for m in models]
        self.opts = [
            torch.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM) for m in self.models
        ]
        self.x, self.y = x, y

    def step(self):
        losses = []
        for g, (m, opt) in enumerate(zip(self.models, self.opts)):
            loss = F.cross_entropy(m(self.x[g]), self.y[g])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses)


def compile_mode_for(device):
    return "reduce-overhead" if device.type == "cuda" else "default"


def make_runner(method, models, x, y, device, fullgraph=True):
    if method == "torchmb":
        return TorchmbRunner(models, x, y, device)
    if method == "func":
        return FuncRunner(models, x, y, device)
    if method == "func_compiled":
        return FuncRunner(models, x, y, device, compile_mode_for(device), fullgraph)
    if method == "loop":
        return LoopRunner(models, x, y, device)
    raise ValueError(method)


# --------------------------------------------------------------------------
# data and weights


def make_models(G, seed):
    torch.manual_seed(seed)
    return [LeNet() for _ in range(G)]  # independent default (PyTorch) inits


def make_data(G, N, device, seed):
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    # created chunk-wise on the CPU and copied, so the values do not depend on
    # the device; then resident on the device for the whole measurement
    x = torch.empty(G, N, 1, 28, 28, device=device)
    y = torch.empty(G, N, dtype=torch.long, device=device)
    chunk = max(1, (1 << 24) // (N * 784))
    for s in range(0, G, chunk):
        e = min(G, s + chunk)
        x[s:e].copy_(torch.randn(e - s, N, 1, 28, 28, generator=gen))
        y[s:e].copy_(torch.randint(0, 10, (e - s, N), generator=gen))
    return x, y


# --------------------------------------------------------------------------
# correctness check


def check(methods, N, device, tol, seed, fullgraph, base_info):
    """G=2, same weights, same batch: per-model losses of three consecutive
    steps (initial, after 1 step, after 2 steps -- the latter exercises the
    momentum buffer) must agree with the loop within tol."""
    G = 2
    models = make_models(G, seed + 1000)
    x, y = make_data(G, N, device, seed + 1000)
    results, errors = {}, {}
    for method in ["loop"] + [m for m in methods if m != "loop"]:
        try:
            r = make_runner(method, models, x, y, device, fullgraph)
            results[method] = torch.stack([r.step().clone() for _ in range(3)]).cpu()
            del r
        except Exception as exc:  # noqa: BLE001
            if method == "func_compiled":
                traceback.print_exc(file=sys.stderr)
                errors[method] = f"{type(exc).__name__}: {exc}".strip()[:2000]
                emit({**base_info, "method": method, "models": G, "batch_size": N,
                      "error": "check: " + errors[method]})
                continue
            raise
        finally:
            free_memory(device)
    if "func_compiled" in methods:
        torch._dynamo.reset()
    ref = results["loop"]
    diffs = {m: float((v - ref).abs().max()) for m, v in results.items() if m != "loop"}
    ok = all(d <= tol for d in diffs.values()) and torch.isfinite(ref).all().item()
    out = {
        "check": "ok" if ok else "failed",
        "models": G,
        "batch_size": N,
        "tol": tol,
        "max_abs_diff_vs_loop": diffs,
        "loop_losses": [[round(float(v), 6) for v in row] for row in ref],
        **base_info,
    }
    emit(out)
    if not ok:
        for m, v in results.items():
            print(f"# {m}: {v.tolist()}", file=sys.stderr)
        sys.exit(1)
    return errors


# --------------------------------------------------------------------------
# measurement


def measure(runner, device, warmup, steps, repeats):
    for _ in range(warmup):
        runner.step()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.step()
        sync(device)
        times.append((time.perf_counter() - t0) / steps)
    return times


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch LeNet training-step baseline for modelbatch (JSON lines)."
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--models", default="1,8,64,256,1024",
                   help="comma list of G (number of models)")
    p.add_argument("--batch-size", type=int, default=128, help="images per model N")
    p.add_argument("--steps", type=int, default=10, help="timed steps per repetition")
    p.add_argument("--repeats", type=int, default=5, help="repetitions (median reported)")
    p.add_argument("--warmup", type=int, default=3,
                   help="warm-up steps (func_compiled: 3 more, the first of which compiles)")
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help="comma list of " + ",".join(ALL_METHODS))
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default 2 on cpu, untouched on cuda)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds: once one measurement (warm-up + timed) of a method "
                        "takes longer, skip that method's larger G")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="skip (method, G) whose estimated peak exceeds this; default "
                        "60%% of available RAM on cpu, 95%% of GPU memory on cuda")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 on CUDA (default: strict fp32, like modelbatch)")
    p.add_argument("--no-fullgraph", action="store_true",
                   help="torch.compile without fullgraph=True")
    p.add_argument("--skip-check", action="store_true", help="skip the G=2 check")
    p.add_argument("--check-tol", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.models = [int(g) for g in args.models.split(",") if g.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in args.methods:
        if m not in ALL_METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(ALL_METHODS)}")
    if any(g < 1 for g in args.models) or args.batch_size < 1:
        p.error("--models and --batch-size must be positive")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--steps and --repeats must be >= 1, --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available to this PyTorch")
    device = torch.device(args.device)
    threads = args.threads if args.threads is not None else (2 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    set_fp32_precision(device, args.tf32)
    fullgraph = not args.no_fullgraph

    if device.type == "cuda":
        adapter = torch.cuda.get_device_name(device)
        cap = torch.cuda.get_device_properties(device).total_memory * 0.95
    else:
        adapter = cpu_model_name()
        avail = mem_available_bytes()
        cap = avail * 0.6 if avail else float("inf")
    if args.max_memory_gb is not None:
        cap = args.max_memory_gb * 2**30

    base_info = {"device": device.type, "adapter": adapter, "torch": torch.__version__,
                 "threads": torch.get_num_threads()}
    if device.type == "cpu":
        # OpenMP's spin-waiting (the default, ACTIVE) collapses on a machine
        # shared with other work; OMP_WAIT_POLICY=PASSIVE avoids that.
        base_info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "default")

    broken = {}  # method -> reason (compile failure): later G get an error line
    if not args.skip_check:
        broken.update(check(args.methods, args.batch_size, device, args.check_tol,
                            args.seed, fullgraph, base_info))

    over_limit = {}  # method -> reason: later (larger) G are skipped
    N = args.batch_size
    for G in args.models:
        todo = [m for m in args.methods if m not in over_limit and m not in broken]
        for m in args.methods:
            line = {"method": m, "models": G, "batch_size": N, **base_info}
            if m in broken:
                emit({**line, "error": broken[m]})
            elif m in over_limit:
                emit({**line, "skipped": over_limit[m]})
        if not todo:
            continue
        models = make_models(G, args.seed)
        x = y = None
        try:
            x, y = make_data(G, N, device, args.seed)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            for m in todo:
                emit({"method": m, "models": G, "batch_size": N, **base_info,
                      "skipped": f"out of memory creating the data: {exc}"[:500]})
            free_memory(device)
            continue
        for m in todo:
            line = {"method": m, "models": G, "batch_size": N, **base_info}
            est = estimate_bytes(m, G, N)
            if est > cap:
                reason = (f"estimated peak {est / 2**30:.1f} GiB > cap "
                          f"{cap / 2**30:.1f} GiB (--max-memory-gb)")
                emit({**line, "skipped": reason})
                over_limit[m] = f"a smaller G was skipped: {reason}"
                continue
            runner = None
            failure = None
            t_start = time.perf_counter()
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                skips0 = cudagraph_skips()
                runner = make_runner(m, models, x, y, device, fullgraph)
                warmup = args.warmup
                extra = {}
                if m == "func_compiled":
                    # first call compiles; CUDA graphs record on a later one
                    t0 = time.perf_counter()
                    runner.step()
                    sync(device)
                    extra["compile_s"] = round(time.perf_counter() - t0, 3)
                    extra["compile_mode"] = compile_mode_for(device)
                    extra["fullgraph"] = fullgraph
                    warmup += 2
                times = measure(runner, device, warmup, args.steps, args.repeats)
                if m == "func_compiled" and device.type == "cuda":
                    # > 0: inductor fell back from CUDA graphs (see stderr)
                    extra["cudagraph_skips"] = cudagraph_skips() - skips0
            except Exception as exc:  # noqa: BLE001
                if is_oom(exc):
                    failure = ("skipped", f"out of memory: {str(exc).splitlines()[0][:300]}")
                elif m == "func_compiled":
                    traceback.print_exc(file=sys.stderr)
                    failure = ("error", f"{type(exc).__name__}: {exc}".strip()[:2000])
                else:
                    raise
            if failure is not None:
                # outside the except block, so the traceback's frames (and the
                # tensors they hold) are gone before memory is released
                runner = None
                free_memory(device)
                emit({**line, failure[0]: failure[1]})
                if failure[0] == "skipped":
                    over_limit[m] = f"a smaller G ran out of memory (G={G})"
                continue
            elapsed = time.perf_counter() - t_start
            step_s = statistics.median(times)
            res = {
                **line,
                "steps_per_s": round(1.0 / step_s, 3),
                "samples_per_s": round(G * N / step_s, 1),
                "step_ms": round(step_s * 1e3, 4),
                "step_ms_min": round(min(times) * 1e3, 4),
                "steps": args.steps,
                "repeats": args.repeats,
                "warmup": warmup + (1 if m == "func_compiled" else 0),
                "tf32": bool(args.tf32) if device.type == "cuda" else False,
                **extra,
            }
            if device.type == "cuda":
                res["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            res["wall_s"] = round(elapsed, 2)
            emit(res)
            del runner
            free_memory(device)
            if args.time_limit is not None and elapsed > args.time_limit:
                over_limit[m] = (f"time limit: G={G} took {elapsed:.1f} s > "
                                 f"--time-limit {args.time_limit:g} s")
        del models, x, y
        if "func_compiled" in todo:
            torch._dynamo.reset()  # also frees the CUDA-graph memory pool
        free_memory(device)


if __name__ == "__main__":
    main()
