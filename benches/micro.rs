//! `cargo bench --bench micro`: single ops of LeNet's training step, each compiled alone into
//! a plan through the public API and timed on the GPU; one JSON line per case:
//! `{"bench", "shape", "ms", "gflop_s", "gb_s", ...}`.
//!
//! - batched GEMM: LeNet's three fully-connected layers at G=64, N=128 (forward
//!   `x·Wᵀ + b`, the input gradient `dy·W` and the weight gradient `dyᵀ·x`), and a square one;
//! - convolution forward, input gradient and weight gradient of LeNet's conv1 (1→6, 5x5 on
//!   28x28, no padding) and conv2 (6→16, 5x5 on 12x12) at G=8 and G=64, N=128;
//! - BatchNorm2d statistics, apply (affine), input gradient and weight gradient.
//!
//! `ms` is the median over 5 repetitions (after one warm-up run) of the time per run; each
//! repetition runs the plan enough times back to back to last about 0.2 s (at least once) and
//! ends when the GPU is idle. `gflop_s` counts the multiply-adds of GEMM and convolution as 2
//! flops; the BatchNorm passes use nominal counts (3, 4, 8 and 4 flops per element for
//! statistics, apply, input gradient, weight gradient). `gb_s` is the bytes of every operand
//! and the result, each counted once, per second: a lower bound on the memory traffic.
//!
//! `MODELBATCH_MICRO=conv1` runs only the cases whose name contains `conv1`.

use std::time::Instant;

use modelbatch::graph::DType;
use modelbatch::nn::Rng;
use modelbatch::{Conv2dGeom, Gpu, Graph, NormKind, Plan, TensorId};
use serde_json::json;

/// One case: a graph holding one op, its inputs, and what it computes.
struct Case {
    name: String,
    shape: String,
    graph: Graph,
    inputs: Vec<TensorId>,
    output: TensorId,
    flops: f64,
    bytes: f64,
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// A fresh graph of `g` models and inputs of the given per-model shapes.
fn graph_with(g: usize, shapes: &[&[usize]]) -> (Graph, Vec<TensorId>) {
    let mut graph = Graph::new(g);
    let ids = shapes.iter().enumerate().map(|(i, s)| graph.input(&format!("in{i}"), s, DType::F32).unwrap()).collect();
    (graph, ids)
}

fn finish(name: String, shape: String, graph: Graph, inputs: Vec<TensorId>, output: TensorId, flops: f64) -> Case {
    let bytes = 4.0 * (inputs.iter().chain([&output]).map(|&t| numel(graph.shape(t))).sum::<usize>()) as f64;
    Case { name, shape, graph, inputs, output, flops, bytes }
}

/// `C[g] = op(A[g])·op(B[g]) (+ bias)`, C `[M, N]`, inner size K.
#[allow(clippy::too_many_arguments)]
fn gemm(name: &str, g: usize, m: usize, n: usize, k: usize, ta: bool, tb: bool, bias: bool) -> Case {
    let a: &[usize] = if ta { &[k, m] } else { &[m, k] };
    let b: &[usize] = if tb { &[n, k] } else { &[k, n] };
    let mut shapes = vec![a, b];
    let bias_shape = [n];
    if bias {
        shapes.push(&bias_shape);
    }
    let (mut graph, ins) = graph_with(g, &shapes);
    let out = graph.matmul(ins[0], ins[1], ins.get(2).copied(), ta, tb).unwrap();
    let t = |x: bool| if x { "ᵀ" } else { "" };
    let shape = format!("G={g} [{m}x{k}]{}·[{k}x{n}]{} M={m} N={n} K={k}", t(ta), t(tb));
    finish(format!("gemm.{name}"), shape, graph, ins, out, 2.0 * (g * m * n * k) as f64)
}

/// A pass of a 5x5 convolution (LeNet's kernels): `forward`, `grad_input` or `grad_weight`.
fn conv(layer: &str, pass: &str, g: usize, n: usize, cin: usize, cout: usize, hw: usize) -> Case {
    let kk = 5;
    let geom = Conv2dGeom { kernel: [kk, kk], stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1 };
    let o = hw - kk + 1;
    let (x, w, y) = ([n, cin, hw, hw], [cout, cin, kk, kk], [n, cout, o, o]);
    let (graph, ins, out) = match pass {
        "forward" => {
            let (mut graph, ins) = graph_with(g, &[&x, &w, &[cout]]);
            let out = graph.conv2d(ins[0], ins[1], Some(ins[2]), geom).unwrap();
            (graph, ins, out)
        }
        "grad_input" => {
            let (mut graph, ins) = graph_with(g, &[&y, &w]);
            let xs: Vec<usize> = [g].iter().chain(&x).copied().collect();
            let out = graph.conv2d_grad_input(ins[0], ins[1], &xs, geom).unwrap();
            (graph, ins, out)
        }
        _ => {
            let (mut graph, ins) = graph_with(g, &[&y, &x]);
            let ws: Vec<usize> = [g].iter().chain(&w).copied().collect();
            let out = graph.conv2d_grad_weight(ins[0], ins[1], &ws, geom).unwrap();
            (graph, ins, out)
        }
    };
    let shape = format!("G={g} N={n} {cin}x{hw}x{hw} -> {cout}x{o}x{o}, {kk}x{kk} kernel");
    let flops = 2.0 * (g * n * cout * o * o * cin * kk * kk) as f64;
    finish(format!("conv.{layer}.g{g}.{pass}"), shape, graph, ins, out, flops)
}

/// A BatchNorm2d pass on `[G, N, C, H, W]`: `stats`, `apply`, `grad` or `weight_grad`.
fn norm(pass: &str, g: usize, n: usize, c: usize, hw: usize) -> Case {
    let x = [n, c, hw, hw];
    let kind = NormKind::Batch;
    let (graph, ins, out, per_elt) = match pass {
        "stats" => {
            let (mut graph, ins) = graph_with(g, &[&x]);
            let out = graph.norm_stats(ins[0], kind, 1e-5).unwrap();
            (graph, ins, out, 3.0)
        }
        "apply" => {
            let (mut graph, ins) = graph_with(g, &[&x, &[3, c], &[c], &[c]]);
            let out = graph.norm_apply(ins[0], ins[1], kind, Some((ins[2], ins[3]))).unwrap();
            (graph, ins, out, 4.0)
        }
        "grad" => {
            let (mut graph, ins) = graph_with(g, &[&x, &x, &[3, c], &[c]]);
            let out = graph.norm_grad(ins[0], ins[1], ins[2], Some(ins[3]), kind, false).unwrap();
            (graph, ins, out, 8.0)
        }
        _ => {
            let (mut graph, ins) = graph_with(g, &[&x, &x, &[3, c]]);
            let out = graph.norm_weight_grad(ins[0], ins[1], ins[2], kind).unwrap();
            (graph, ins, out, 4.0)
        }
    };
    let shape = format!("G={g} N={n} C={c} {hw}x{hw}");
    let flops = per_elt * (g * numel(&x)) as f64;
    finish(format!("batchnorm2d.{pass}"), shape, graph, ins, out, flops)
}

fn cases() -> Vec<Case> {
    let (g, n) = (64, 128);
    let mut v = Vec::new();
    // LeNet's classifier: 256 -> 120 -> 84 -> 10.
    for (layer, fin, fout) in [("fc1", 256, 120), ("fc2", 120, 84), ("fc3", 84, 10)] {
        v.push(gemm(&format!("{layer}.forward"), g, n, fout, fin, false, true, true));
        v.push(gemm(&format!("{layer}.grad_input"), g, n, fin, fout, false, false, false));
        v.push(gemm(&format!("{layer}.grad_weight"), g, fout, fin, n, true, false, false));
    }
    v.push(gemm("square", g, 256, 256, 256, false, false, false));
    for gg in [8, 64] {
        for pass in ["forward", "grad_input", "grad_weight"] {
            v.push(conv("conv1", pass, gg, n, 1, 6, 28));
        }
        for pass in ["forward", "grad_input", "grad_weight"] {
            v.push(conv("conv2", pass, gg, n, 6, 16, 12));
        }
    }
    for pass in ["stats", "apply", "grad", "weight_grad"] {
        v.push(norm(pass, 64, n, 16, 8));
    }
    v
}

/// Median seconds per run of `plan` (see the module docs).
fn time(gpu: &Gpu, plan: &Plan) -> modelbatch::Result<(f64, usize, Vec<f64>)> {
    let start = Instant::now();
    plan.run()?;
    gpu.wait_idle()?;
    let warm = start.elapsed().as_secs_f64();
    let iters = ((0.2 / warm.max(1e-6)).ceil() as usize).clamp(1, 200);
    let mut runs = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..iters {
            plan.run()?;
        }
        gpu.wait_idle()?;
        runs.push(start.elapsed().as_secs_f64() / iters as f64);
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    Ok((sorted[sorted.len() / 2], iters, runs))
}

fn run_case(gpu: &Gpu, case: &Case) -> modelbatch::Result<serde_json::Value> {
    let plan = Plan::new(gpu, &case.graph, &[case.output], &[])?;
    let mut rng = Rng::new(7);
    for &t in &case.inputs {
        let data: Vec<f32> = (0..numel(case.graph.shape(t))).map(|_| rng.symmetric(1.0) + 1.5).collect();
        plan.write(t, &data)?;
    }
    let (secs, iters, runs) = time(gpu, &plan)?;
    Ok(json!({
        "bench": case.name,
        "shape": case.shape,
        "ms": secs * 1e3,
        "gflop_s": case.flops / secs / 1e9,
        "gb_s": case.bytes / secs / 1e9,
        "runs_ms": runs.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
        "iters": iters,
        "dispatches": plan.stats().dispatches,
        "adapter": gpu.report().name,
    }))
}

fn main() {
    let Some(gpu) = modelbatch::bench::bench_target_gpu("micro") else { return };
    let r = gpu.report();
    eprintln!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    let filter = std::env::var("MODELBATCH_MICRO").unwrap_or_default();
    for case in cases().iter().filter(|c| c.name.contains(&filter)) {
        match run_case(&gpu, case) {
            Ok(v) => println!("{v}"),
            Err(e) => println!("{}", json!({ "bench": case.name, "shape": case.shape, "skipped": e.to_string() })),
        }
    }
}
