//! BatchNorm2d (train and eval) and GroupNorm against plain-Rust CPU references (f64):
//! statistics, outputs, exact gradients of x, weight and bias, central finite differences
//! through the whole computation (batch statistics depend on x), PyTorch's running-estimate
//! rule, isolation between models, and variance accuracy for inputs with a large mean.
//!
//! Gradients come from a seeded backward pass: with output y and a random seed r shaped like
//! y, `autograd::grad(y, Some(r), leaves)` is d sum(r*y) / d leaf.

mod common;

use common::{check_fd, randn, randn_away, FdLeaf};
use modelbatch::graph::NormKind;
use modelbatch::{autograd, DType, Error, Gpu, Graph, Plan, TensorId, Update};

const EPS: f32 = 1e-5;
/// Finite differences: step and tolerances (see `common::check_fd`).
const FD_STEP: f32 = 1e-2;
const FD_RTOL: f64 = 2e-2;
const FD_ATOL: f64 = 1e-2;
const FD_COORDS: usize = 4;

#[derive(Clone, Copy, Debug)]
struct Shape {
    g: usize,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl Shape {
    fn hw(&self) -> usize {
        self.h * self.w
    }
    fn numel(&self) -> usize {
        self.g * self.n * self.c * self.hw()
    }
    fn per_model(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// Statistics per model.
    fn stat_count(&self, kind: NormKind) -> usize {
        match kind {
            NormKind::Batch => self.c,
            NormKind::Group(k) => self.n * k,
        }
    }
    /// Statistic (within its model) of sample n, channel c.
    fn stat_of(&self, kind: NormKind, n: usize, c: usize) -> usize {
        match kind {
            NormKind::Batch => c,
            NormKind::Group(k) => n * k + c / (self.c / k),
        }
    }
    /// (model, sample, channel) of flat element i.
    fn coords(&self, i: usize) -> (usize, usize, usize) {
        let plane = i / self.hw();
        (plane / (self.n * self.c), plane / self.c % self.n, plane % self.c)
    }
}

/// Mean and biased variance per (model, statistic), `[G * S]` each, two-pass in f64.
fn stats_ref(s: Shape, kind: NormKind, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let ns = s.stat_count(kind);
    let (mut sum, mut cnt) = (vec![0.0f64; s.g * ns], vec![0usize; s.g * ns]);
    let idx = |i: usize| {
        let (g, n, c) = s.coords(i);
        g * ns + s.stat_of(kind, n, c)
    };
    for (i, &v) in x.iter().enumerate() {
        sum[idx(i)] += v as f64;
        cnt[idx(i)] += 1;
    }
    let mean: Vec<f64> = sum.iter().zip(&cnt).map(|(a, &k)| a / k as f64).collect();
    let mut var = vec![0.0f64; s.g * ns];
    for (i, &v) in x.iter().enumerate() {
        var[idx(i)] += (v as f64 - mean[idx(i)]).powi(2);
    }
    let var = var.iter().zip(&cnt).map(|(a, &k)| a / k as f64).collect();
    (mean, var)
}

/// Where the statistics come from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Batch statistics of x (training-mode batch norm, group norm).
    Train,
    /// Running estimates (eval-mode batch norm): constants.
    Eval,
}

/// Values of one case: x, optional weight and bias, optional running mean and var, seed r.
struct Values {
    x: Vec<f32>,
    affine: Option<(Vec<f32>, Vec<f32>)>,
    running: Option<(Vec<f32>, Vec<f32>)>,
    r: Vec<f32>,
}

fn values(s: Shape, mode: Mode, affine: bool, seed: u64) -> Values {
    // Channel-dependent offsets and scales so the statistics differ from 0 and 1.
    let x = randn(seed, s.numel())
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (s.coords(i).2 % 5) as f32;
            v * (1.0 + 0.3 * c) + 0.5 - 0.2 * c
        })
        .collect();
    let gc = s.g * s.c;
    let affine = affine.then(|| (randn_away(seed + 1, gc, 0.3), randn(seed + 2, gc)));
    let running = (mode == Mode::Eval)
        .then(|| (randn(seed + 3, gc), randn(seed + 4, gc).iter().map(|v| 1.0 + 0.6 * v).collect()));
    Values { x, affine, running, r: randn(seed + 5, s.numel()) }
}

/// CPU reference: (stats `[G, 3, S]`, y, dx, dweight, dbias) of `sum(r * y)`.
struct Reference {
    stats: Vec<f64>,
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
    db: Vec<f64>,
}

fn reference(s: Shape, kind: NormKind, v: &Values) -> Reference {
    let ns = s.stat_count(kind);
    let (mean, var) = match &v.running {
        None => stats_ref(s, kind, &v.x),
        Some((m, var)) => (common::to64(m), common::to64(var)),
    };
    let invstd: Vec<f64> = var.iter().map(|&q| 1.0 / (q + EPS as f64).sqrt()).collect();
    let mut stats = vec![0.0; s.g * 3 * ns];
    for g in 0..s.g {
        for k in 0..ns {
            stats[g * 3 * ns + k] = mean[g * ns + k];
            stats[g * 3 * ns + ns + k] = invstd[g * ns + k];
            stats[g * 3 * ns + 2 * ns + k] = var[g * ns + k];
        }
    }
    let at = |i: usize| {
        let (g, n, c) = s.coords(i);
        (g * ns + s.stat_of(kind, n, c), g * s.c + c)
    };
    let wb = |gc: usize| v.affine.as_ref().map_or((1.0, 0.0), |(w, b)| (w[gc] as f64, b[gc] as f64));
    let n = s.numel();
    let (mut y, mut xhat, mut dxh) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let (mut sum_dxh, mut sum_dxh_xhat, mut cnt) = (vec![0.0; s.g * ns], vec![0.0; s.g * ns], vec![0.0; s.g * ns]);
    let (mut dw, mut db) = (vec![0.0; s.g * s.c], vec![0.0; s.g * s.c]);
    for i in 0..n {
        let (st, gc) = at(i);
        let (w, b) = wb(gc);
        xhat[i] = (v.x[i] as f64 - mean[st]) * invstd[st];
        y[i] = xhat[i] * w + b;
        dxh[i] = v.r[i] as f64 * w;
        sum_dxh[st] += dxh[i];
        sum_dxh_xhat[st] += dxh[i] * xhat[i];
        cnt[st] += 1.0;
        dw[gc] += v.r[i] as f64 * xhat[i];
        db[gc] += v.r[i] as f64;
    }
    let dx = (0..n)
        .map(|i| {
            let (st, _) = at(i);
            match v.running {
                Some(_) => dxh[i] * invstd[st],
                None => invstd[st] * (dxh[i] - sum_dxh[st] / cnt[st] - xhat[i] * sum_dxh_xhat[st] / cnt[st]),
            }
        })
        .collect();
    Reference { stats, y, dx, dw, db }
}

/// |got - want| <= tol * (1 + max|want|) elementwise: f32 results against f64 references whose
/// rounding noise scales with the largest value.
fn assert_near(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(err <= tol * (1.0 + scale), "{what}: element {i}: got {g}, want {w} (error {err:e}, scale {scale:e})");
    }
}

/// A compiled normalisation with its seeded backward pass.
struct Case {
    plan: Plan,
    x: TensorId,
    affine: Option<(TensorId, TensorId)>,
    running: Option<(TensorId, TensorId)>,
    r: TensorId,
    stats: TensorId,
    y: TensorId,
    /// Gradients of x, then weight and bias if affine.
    grads: Vec<TensorId>,
}

fn build(gpu: &Gpu, s: Shape, kind: NormKind, mode: Mode, affine: bool) -> Case {
    let mut graph = Graph::new(s.g);
    let x = graph.param("x", &s.per_model()).unwrap();
    let affine = affine.then(|| (graph.param("weight", &[s.c]).unwrap(), graph.param("bias", &[s.c]).unwrap()));
    let (stats, running) = match mode {
        Mode::Train => (graph.norm_stats(x, kind, EPS).unwrap(), None),
        Mode::Eval => {
            let m = graph.state("running_mean", &[s.c]).unwrap();
            let v = graph.state("running_var", &[s.c]).unwrap();
            (graph.running_stats(m, v, EPS).unwrap(), Some((m, v)))
        }
    };
    let y = graph.norm_apply(x, stats, kind, affine).unwrap();
    let r = graph.input("seed_r", &s.per_model(), DType::F32).unwrap();
    let mut leaves = vec![x];
    if let Some((w, b)) = affine {
        leaves.extend([w, b]);
    }
    let grads: Vec<TensorId> =
        autograd::grad(&mut graph, y, Some(r), &leaves).unwrap().into_iter().map(|g| g.expect("a gradient")).collect();
    let mut keep = vec![y, stats];
    keep.extend(&grads);
    let plan = Plan::new(gpu, &graph, &keep, &[]).unwrap();
    Case { plan, x, affine, running, r, stats, y, grads }
}

impl Case {
    fn write(&self, v: &Values) {
        self.plan.write(self.x, &v.x).unwrap();
        self.plan.write(self.r, &v.r).unwrap();
        if let (Some((w, b)), Some((wv, bv))) = (self.affine, &v.affine) {
            self.plan.write(w, wv).unwrap();
            self.plan.write(b, bv).unwrap();
        }
        if let (Some((m, q)), Some((mv, qv))) = (self.running, &v.running) {
            self.plan.write(m, mv).unwrap();
            self.plan.write(q, qv).unwrap();
        }
    }

    /// Runs once: (stats, y, gradients).
    fn run(&self) -> (Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
        self.plan.run().unwrap();
        let read = |t| self.plan.read_blocking(t).unwrap();
        (read(self.stats), read(self.y), self.grads.iter().map(|&t| read(t)).collect())
    }
}

/// Forward, statistics, gradients of every leaf against the reference, then finite differences.
fn check(gpu: &Gpu, s: Shape, kind: NormKind, mode: Mode, affine: bool, seed: u64) {
    let what = format!("{kind:?} {mode:?} affine={affine} {s:?}");
    let case = build(gpu, s, kind, mode, affine);
    let v = values(s, mode, affine, seed);
    case.write(&v);
    let want = reference(s, kind, &v);
    let (stats, y, grads) = case.run();
    assert_near(&format!("{what}: stats"), &stats, &want.stats, 1e-5);
    assert_near(&format!("{what}: y"), &y, &want.y, 1e-5);
    assert_near(&format!("{what}: dx"), &grads[0], &want.dx, 1e-5);
    if affine {
        assert_near(&format!("{what}: dweight"), &grads[1], &want.dw, 1e-5);
        assert_near(&format!("{what}: dbias"), &grads[2], &want.db, 1e-5);
    }
    let mut leaves = vec![FdLeaf { name: "x", id: case.x, values: &v.x, grad: &grads[0] }];
    if let (Some((w, b)), Some((wv, bv))) = (case.affine, &v.affine) {
        leaves.push(FdLeaf { name: "weight", id: w, values: wv, grad: &grads[1] });
        leaves.push(FdLeaf { name: "bias", id: b, values: bv, grad: &grads[2] });
    }
    check_fd(&case.plan, case.y, &v.r, &leaves, FD_COORDS, FD_STEP, FD_RTOL, FD_ATOL);
    // The leaves are restored: the output comes back bit for bit (deterministic kernels).
    let (_, again, _) = case.run();
    assert_eq!(y, again, "{what}: output after the finite differences");
}

const S6: Shape = Shape { g: 3, n: 5, c: 6, h: 3, w: 5 };
const S7: Shape = Shape { g: 3, n: 5, c: 7, h: 5, w: 3 };

#[test]
fn batchnorm_train_forward_backward_and_finite_differences() {
    let gpu = gpu_or_skip!();
    check(gpu, S6, NormKind::Batch, Mode::Train, true, 1);
    check(gpu, S7, NormKind::Batch, Mode::Train, false, 2);
}

#[test]
fn batchnorm_train_with_17_models() {
    let gpu = gpu_or_skip!();
    check(gpu, Shape { g: 17, n: 5, c: 7, h: 3, w: 3 }, NormKind::Batch, Mode::Train, true, 3);
}

#[test]
fn batchnorm_eval_uses_running_estimates_as_constants() {
    let gpu = gpu_or_skip!();
    check(gpu, S6, NormKind::Batch, Mode::Eval, true, 4);
    check(gpu, S7, NormKind::Batch, Mode::Eval, false, 5);
}

#[test]
fn groupnorm_one_two_and_per_channel_groups() {
    let gpu = gpu_or_skip!();
    for (i, k) in [1, 2, 6].into_iter().enumerate() {
        check(gpu, S6, NormKind::Group(k), Mode::Train, i != 1, 10 + i as u64);
    }
    check(gpu, S7, NormKind::Group(7), Mode::Train, false, 13);
    check(gpu, S7, NormKind::Group(1), Mode::Train, true, 14);
}

/// Items with more positions than a workgroup has invocations (17x17 = 289 > 256), and one
/// value per position (H = W = 1: a workgroup steps over many samples at once), with both
/// reduction workgroup sizes; and models smaller than a workgroup.
#[test]
fn statistics_walk_long_and_short_rows() {
    let gpu = gpu_or_skip!();
    // Batch norm over these takes full workgroups (4,096 values or more), group norm short ones.
    let big = Shape { g: 2, n: 15, c: 5, h: 17, w: 17 };
    let dot = Shape { g: 3, n: 4200, c: 6, h: 1, w: 1 };
    // Models of 24 values: an elementwise workgroup spans many models.
    let tiny = Shape { g: 40, n: 2, c: 4, h: 1, w: 3 };
    for (s, kind, seed) in [
        (big, NormKind::Batch, 20),
        (big, NormKind::Group(5), 21),
        (dot, NormKind::Batch, 22),
        (dot, NormKind::Group(3), 23),
        (tiny, NormKind::Batch, 24),
        (tiny, NormKind::Group(2), 25),
    ] {
        let case = build(gpu, s, kind, Mode::Train, true);
        let v = values(s, Mode::Train, true, seed);
        case.write(&v);
        let want = reference(s, kind, &v);
        let (stats, y, grads) = case.run();
        let what = format!("{kind:?} {s:?}");
        assert_near(&format!("{what}: stats"), &stats, &want.stats, 1e-5);
        assert_near(&format!("{what}: y"), &y, &want.y, 1e-5);
        assert_near(&format!("{what}: dx"), &grads[0], &want.dx, 1e-5);
        assert_near(&format!("{what}: dweight"), &grads[1], &want.dw, 1e-5);
    }
}

/// More than 65,535 statistics: the reduction grids fold into two dimensions.
#[test]
fn groupnorm_with_more_statistics_than_a_grid_dimension() {
    let gpu = gpu_or_skip!();
    let s = Shape { g: 3, n: 110, c: 200, h: 3, w: 3 };
    let kind = NormKind::Group(200);
    assert!(s.g * s.stat_count(kind) > 65_535);
    let case = build(gpu, s, kind, Mode::Train, true);
    let v = values(s, Mode::Train, true, 30);
    case.write(&v);
    let want = reference(s, kind, &v);
    let (stats, y, grads) = case.run();
    assert_near("stats", &stats, &want.stats, 1e-5);
    assert_near("y", &y, &want.y, 1e-5);
    assert_near("dx", &grads[0], &want.dx, 1e-5);
    assert_near("dweight", &grads[1], &want.dw, 1e-5);
}

#[test]
fn train_mode_uses_the_exact_gradient_and_eval_mode_the_fixed_one() {
    let gpu = gpu_or_skip!();
    let labels = |mode| build(gpu, S6, NormKind::Batch, mode, true).plan.dispatch_labels();
    let train = labels(Mode::Train);
    for l in ["norm_stats", "norm_apply", "norm_grad_reduce", "norm_grad", "norm_weight_grad"] {
        assert!(train.contains(&l), "train-mode plan lacks {l}: {train:?}");
    }
    let eval = labels(Mode::Eval);
    for l in ["running_stats", "norm_apply", "norm_grad", "norm_weight_grad"] {
        assert!(eval.contains(&l), "eval-mode plan lacks {l}: {eval:?}");
    }
    for l in ["norm_stats", "norm_grad_reduce"] {
        assert!(!eval.contains(&l), "eval-mode plan runs {l}: {eval:?}");
    }
}

// ---------------------------------------------------------------------------------------
// running estimates

/// Training-mode batch norm with PyTorch's running-estimate update.
struct Running {
    plan: Plan,
    x: TensorId,
    y: TensorId,
    mean: TensorId,
    var: TensorId,
    count: TensorId,
}

fn build_running(gpu: &Gpu, s: Shape, momentum: Option<f32>) -> Running {
    let mut graph = Graph::new(s.g);
    let x = graph.input("x", &s.per_model(), DType::F32).unwrap();
    let w = graph.param("weight", &[s.c]).unwrap();
    let b = graph.param("bias", &[s.c]).unwrap();
    let mean = graph.state("running_mean", &[s.c]).unwrap();
    let var = graph.state("running_var", &[s.c]).unwrap();
    let count = graph.state("num_batches_tracked", &[1]).unwrap();
    let st = graph.norm_stats(x, NormKind::Batch, EPS).unwrap();
    let y = graph.norm_apply(x, st, NormKind::Batch, Some((w, b))).unwrap();
    let update = Update::BatchNormRunning { stats: st, mean, var, count, momentum };
    let plan = Plan::new(gpu, &graph, &[y], &[update]).unwrap();
    plan.write(w, &vec![1.0; s.g * s.c]).unwrap();
    plan.write(b, &vec![0.0; s.g * s.c]).unwrap();
    // PyTorch's initial estimates: mean 0 (state tensors start at 0), variance 1.
    plan.write(var, &vec![1.0; s.g * s.c]).unwrap();
    Running { plan, x, y, mean, var, count }
}

/// CPU replica of PyTorch's update (`torch.nn.functional.batch_norm`, training mode).
fn running_ref(s: Shape, momentum: Option<f32>, batches: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut rm, mut rv, mut count) = (vec![0.0; s.g * s.c], vec![1.0; s.g * s.c], vec![0.0; s.g]);
    let n = (s.n * s.hw()) as f64;
    for x in batches {
        let (mean, var) = stats_ref(s, NormKind::Batch, x);
        for (g, tracked) in count.iter_mut().enumerate() {
            *tracked += 1.0;
            let m = momentum.map_or(1.0 / *tracked, |m| m as f64);
            for c in 0..s.c {
                let i = g * s.c + c;
                rm[i] = (1.0 - m) * rm[i] + m * mean[i];
                rv[i] = (1.0 - m) * rv[i] + m * var[i] * n / (n - 1.0);
            }
        }
    }
    (rm, rv, count)
}

#[test]
fn running_estimates_follow_pytorch_after_one_and_three_steps() {
    let gpu = gpu_or_skip!();
    for (s, momentum) in [(S6, Some(0.1)), (S7, Some(0.1)), (S6, None), (S7, None)] {
        let run = build_running(gpu, s, momentum);
        let batches: Vec<Vec<f32>> = (0..3).map(|k| values(s, Mode::Train, false, 40 + k).x).collect();
        for steps in 1..=3 {
            run.plan.write(run.x, &batches[steps - 1]).unwrap();
            run.plan.run().unwrap();
            if steps == 2 {
                continue;
            }
            let (rm, rv, count) = running_ref(s, momentum, &batches[..steps]);
            let what = format!("{s:?} momentum {momentum:?} after {steps} step(s)");
            let read = |t| run.plan.read_blocking(t).unwrap();
            assert_near(&format!("{what}: running mean"), &read(run.mean), &rm, 1e-5);
            assert_near(&format!("{what}: running var"), &read(run.var), &rv, 1e-5);
            assert_eq!(read(run.count), count.iter().map(|&c| c as f32).collect::<Vec<_>>(), "{what}: count");
        }
    }
}

#[test]
fn running_update_needs_more_than_one_value_per_channel() {
    let gpu = gpu_or_skip!();
    let s = Shape { g: 2, n: 1, c: 3, h: 1, w: 1 };
    let mut graph = Graph::new(s.g);
    let x = graph.input("x", &s.per_model(), DType::F32).unwrap();
    let mean = graph.state("running_mean", &[s.c]).unwrap();
    let var = graph.state("running_var", &[s.c]).unwrap();
    let count = graph.state("num_batches_tracked", &[1]).unwrap();
    let st = graph.norm_stats(x, NormKind::Batch, EPS).unwrap();
    let update = Update::BatchNormRunning { stats: st, mean, var, count, momentum: Some(0.1) };
    match Plan::new(gpu, &graph, &[st], &[update]) {
        Err(Error::Usage(m)) => assert!(m.contains("more than 1 value per channel"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a running update over one value per channel compiled"),
    }
}

// ---------------------------------------------------------------------------------------
// isolation and accuracy

/// Changing model 0's input changes model 0 and leaves every other model's statistics,
/// output, gradients and running estimates bitwise identical.
#[test]
fn models_are_isolated() {
    let gpu = gpu_or_skip!();
    let s = Shape { g: 4, n: 5, c: 6, h: 3, w: 3 };
    let per = s.numel() / s.g;
    for (kind, mode) in
        [(NormKind::Batch, Mode::Train), (NormKind::Group(2), Mode::Train), (NormKind::Batch, Mode::Eval)]
    {
        let case = build(gpu, s, kind, mode, true);
        let v = values(s, mode, true, 50);
        case.write(&v);
        let before = case.run();
        let mut x0: Vec<f32> = v.x[..per].to_vec();
        x0.iter_mut().for_each(|a| *a = *a * 3.0 + 1.0);
        case.plan.write_model(case.x, 0, &x0).unwrap();
        let after = case.run();
        let mut tensors = vec![("stats", &before.0, &after.0), ("y", &before.1, &after.1)];
        for (name, (b, a)) in ["dx", "dweight", "dbias"].iter().zip(before.2.iter().zip(&after.2)) {
            tensors.push((name, b, a));
        }
        for (name, b, a) in tensors {
            let m = b.len() / s.g;
            assert_eq!(b[m..], a[m..], "{kind:?} {mode:?}: {name} of models 1.. changed");
            // Fixed statistics and dbias = sum(r) do not depend on x, nor does dx in eval mode.
            let depends_on_x = match name {
                "stats" | "dx" => mode == Mode::Train,
                "dbias" => false,
                _ => true,
            };
            if depends_on_x {
                assert_ne!(b[..m], a[..m], "{kind:?} {mode:?}: {name} of model 0 did not change");
            }
        }
    }
    // Running estimates.
    let run = build_running(gpu, s, Some(0.1));
    let x = values(s, Mode::Train, false, 51).x;
    let read_all = |x: &[f32]| {
        run.plan.write(run.mean, &vec![0.0; s.g * s.c]).unwrap();
        run.plan.write(run.var, &vec![1.0; s.g * s.c]).unwrap();
        run.plan.write(run.count, &vec![0.0; s.g]).unwrap();
        run.plan.write(run.x, x).unwrap();
        run.plan.run().unwrap();
        [run.y, run.mean, run.var, run.count].map(|t| run.plan.read_blocking(t).unwrap())
    };
    let before = read_all(&x);
    let mut x2 = x.clone();
    x2[..per].iter_mut().for_each(|a| *a = *a * 3.0 + 1.0);
    let after = read_all(&x2);
    for (name, (b, a)) in ["y", "running mean", "running var", "count"].iter().zip(before.iter().zip(&after)) {
        let m = b.len() / s.g;
        assert_eq!(b[m..], a[m..], "running: {name} of models 1.. changed");
    }
    assert_ne!(before[1][..s.c], after[1][..s.c], "running mean of model 0 did not change");
}

/// Inputs with a large mean (1000 + noise of amplitude 0.05): the variance keeps rtol 1e-3
/// (a one-pass E[x^2] - E[x]^2 in f32 would lose every digit).
#[test]
fn variance_is_accurate_for_a_large_mean() {
    let gpu = gpu_or_skip!();
    let s = Shape { g: 2, n: 20, c: 3, h: 15, w: 15 };
    // 4,500 values per batch statistic, 675 per group statistic.
    for kind in [NormKind::Batch, NormKind::Group(1)] {
        let mut graph = Graph::new(s.g);
        let x = graph.input("x", &s.per_model(), DType::F32).unwrap();
        let st = graph.norm_stats(x, kind, EPS).unwrap();
        let y = graph.norm_apply(x, st, kind, None).unwrap();
        let plan = Plan::new(gpu, &graph, &[st, y], &[]).unwrap();
        let xv: Vec<f32> = randn(60, s.numel()).iter().map(|v| 1000.0 + 0.05 * v).collect();
        plan.write(x, &xv).unwrap();
        plan.run().unwrap();
        let stats = plan.read_blocking(st).unwrap();
        let (mean, var) = stats_ref(s, kind, &xv);
        let ns = s.stat_count(kind);
        for g in 0..s.g {
            for k in 0..ns {
                let (gm, gv) = (stats[g * 3 * ns + k] as f64, stats[g * 3 * ns + 2 * ns + k] as f64);
                let (wm, wv) = (mean[g * ns + k], var[g * ns + k]);
                assert!((gm - wm).abs() <= 1e-6 * wm, "{kind:?}: mean {gm} vs {wm}");
                assert!((gv - wv).abs() <= 1e-3 * wv, "{kind:?}: variance {gv} vs {wv}");
            }
        }
        // y from the GPU's own (f32) statistics: x - mean is exact here, so only roundings
        // of the product remain (the f32 mean alone is 0.5 ulp(1000) = 3e-5 from the exact
        // one, i.e. 1e-3 in y).
        let want: Vec<f64> = xv
            .iter()
            .enumerate()
            .map(|(i, &xi)| {
                let (g, n, c) = s.coords(i);
                let o = g * 3 * ns + s.stat_of(kind, n, c);
                (xi as f64 - stats[o] as f64) * stats[o + ns] as f64
            })
            .collect();
        assert_near(&format!("{kind:?}: y"), &plan.read_blocking(y).unwrap(), &want, 1e-6);
    }
}

/// The samples `[a, b)` of every model of `v` (`[G, N, ...]` with `per` values per sample).
fn samples(v: &[f32], s: Shape, per: usize, (a, b): (usize, usize)) -> Vec<f32> {
    (0..s.g).flat_map(|g| v[(g * s.n + a) * per..(g * s.n + b) * per].to_vec()).collect()
}

/// Batch norm over a batch summed in parts (micro-batches; see `Graph::sums_stats`): the
/// passes over the parts give the whole batch's statistics, output and exact gradient.
/// Part plans share the sums (state tensors) by name.
fn parts_check(gpu: &Gpu, s: Shape, v: &Values, parts: &[(usize, usize)]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let per = s.c * s.hw();
    let count = s.n * s.hw();
    let names = ["xsum", "dsum", "dsq", "gsum", "gdot"];
    // Pass 0: sum(x); 1: deviations; 2: sum(dy), sum(dy * x_hat); 3: y and dx.
    let mut first: Option<Plan> = None;
    let (mut stats, mut y, mut dx) = (vec![0.0; s.g * 3 * s.c], Vec::new(), Vec::new());
    for pass in 0..4 {
        for &(a, b) in parts {
            let mut graph = Graph::new(s.g);
            // A parameter (it needs a gradient), one per part: shared tensors keep one shape.
            let x = graph.param(&format!("x{a}"), &[b - a, s.c, s.h, s.w]).unwrap();
            let r = graph.input("r", &[b - a, s.c, s.h, s.w], DType::F32).unwrap();
            let sums: Vec<TensorId> = names.iter().map(|n| graph.state(n, &[s.c]).unwrap()).collect();
            let affine = v
                .affine
                .as_ref()
                .map(|_| (graph.param("weight", &[s.c]).unwrap(), graph.param("bias", &[s.c]).unwrap()));
            let acc = |dst, src| Update::Accumulate { dst, src };
            let mut keep = Vec::new();
            let mut updates = Vec::new();
            match pass {
                0 => updates.push(acc(sums[0], graph.sum(x, &[1, 3, 4]).unwrap())),
                1 => {
                    let shift = graph.sums_stats(&sums[..1], EPS, count).unwrap();
                    let d = graph.norm_apply(x, shift, NormKind::Batch, None).unwrap();
                    updates.push(acc(sums[1], graph.sum(d, &[1, 3, 4]).unwrap()));
                    updates.push(acc(sums[2], graph.norm_weight_grad(d, x, shift, NormKind::Batch).unwrap()));
                }
                2 => {
                    // dy = r: the gradient of sum(r * y) at the output.
                    let st = graph.sums_stats(&sums, EPS, count).unwrap();
                    updates.push(acc(sums[3], graph.sum(r, &[1, 3, 4]).unwrap()));
                    updates.push(acc(sums[4], graph.norm_weight_grad(r, x, st, NormKind::Batch).unwrap()));
                }
                _ => {
                    let st = graph.sums_stats(&sums, EPS, count).unwrap();
                    let out = graph.norm_apply(x, st, NormKind::Batch, affine).unwrap();
                    let d = autograd::grad(&mut graph, out, Some(r), &[x]).unwrap()[0].expect("dx");
                    keep.extend([st, out, d]);
                }
            }
            let plan = match &first {
                None => Plan::new(gpu, &graph, &keep, &updates).unwrap(),
                Some(p) => Plan::sharing(gpu, &graph, &keep, &updates, p).unwrap(),
            };
            plan.write(x, &samples(&v.x, s, per, (a, b))).unwrap();
            plan.write(r, &samples(&v.r, s, per, (a, b))).unwrap();
            if let (Some((w, bias)), Some((wv, bv))) = (affine, &v.affine) {
                plan.write(w, wv).unwrap();
                plan.write(bias, bv).unwrap();
            }
            plan.run().unwrap();
            if pass == 3 {
                stats = plan.read_blocking(keep[0]).unwrap();
                y.push(plan.read_blocking(keep[1]).unwrap());
                dx.push(plan.read_blocking(keep[2]).unwrap());
            }
            first.get_or_insert(plan);
        }
    }
    // Back to [G, N, ...] order.
    let whole = |parts_out: &[Vec<f32>]| -> Vec<f32> {
        let mut out = vec![0.0; s.numel()];
        for (&(a, b), p) in parts.iter().zip(parts_out) {
            for g in 0..s.g {
                let n = (b - a) * per;
                out[(g * s.n + a) * per..(g * s.n + b) * per].copy_from_slice(&p[g * n..(g + 1) * n]);
            }
        }
        out
    };
    (stats, whole(&y), whole(&dx))
}

#[test]
fn batch_statistics_and_gradients_summed_in_parts_equal_the_whole_batchs() {
    let gpu = gpu_or_skip!();
    let s = S6;
    for affine in [true, false] {
        let v = values(s, Mode::Train, affine, 70 + affine as u64);
        let want = reference(s, NormKind::Batch, &v);
        for parts in [&[(0, 5)][..], &[(0, 2), (2, 5)], &[(0, 1), (1, 3), (3, 4), (4, 5)]] {
            let what = format!("affine={affine}, parts {parts:?}");
            let (stats, y, dx) = parts_check(gpu, s, &v, parts);
            assert_near(&format!("{what}: stats"), &stats, &want.stats, 1e-5);
            assert_near(&format!("{what}: y"), &y, &want.y, 1e-5);
            assert_near(&format!("{what}: dx"), &dx, &want.dx, 1e-5);
        }
    }
    // The statistics from given sums: the deviations' sum corrects the first pass's mean (in
    // the mean and, as sum(d)^2 / count, in the squared deviations).
    let (g, c, count) = (2, 3, 40);
    let mut graph = Graph::new(g);
    let sums: Vec<TensorId> = ["a", "b", "c", "d", "e"].iter().map(|n| graph.state(n, &[c]).unwrap()).collect();
    let full = graph.sums_stats(&sums, EPS, count).unwrap();
    let shift = graph.sums_stats(&sums[..1], EPS, count).unwrap();
    let plan = Plan::new(gpu, &graph, &[full, shift], &[]).unwrap();
    let (xsum, dsum, dsq) = (randn(63, g * c), randn(64, g * c), randn(65, g * c).iter().map(|v| 30.0 + v).collect());
    for (&t, v) in sums.iter().zip([&xsum, &dsum, &dsq]) {
        plan.write(t, v).unwrap();
    }
    plan.run().unwrap();
    let (mut want_full, mut want_shift) = (vec![0.0; g * 3 * c], vec![0.0; g * 3 * c]);
    let n = count as f64;
    for m in 0..g {
        for k in 0..c {
            let (i, o) = (m * c + k, m * 3 * c + k);
            let (sx, sd, sq) = (xsum[i] as f64, dsum[i] as f64, dsq[i] as f64);
            let var = (sq - sd * sd / n) / n;
            want_full[o] = sx / n + sd / n;
            want_full[o + c] = 1.0 / (var + EPS as f64).sqrt();
            want_full[o + 2 * c] = var;
            want_shift[o] = sx / n;
            want_shift[o + c] = 1.0;
        }
    }
    assert_near("stats from sums", &plan.read_blocking(full).unwrap(), &want_full, 1e-6);
    assert_near("shift from sums", &plan.read_blocking(shift).unwrap(), &want_shift, 1e-6);

    // A large mean (1000 + noise of amplitude 0.05), as in `variance_is_accurate_for_a_large_mean`:
    // the deviations' sum corrects the first pass's mean.
    let s = Shape { g: 2, n: 20, c: 3, h: 15, w: 15 };
    let x: Vec<f32> = randn(61, s.numel()).iter().map(|v| 1000.0 + 0.05 * v).collect();
    let v = Values { x, affine: None, running: None, r: randn(62, s.numel()) };
    let (mean, var) = stats_ref(s, NormKind::Batch, &v.x);
    let (stats, _, _) = parts_check(gpu, s, &v, &[(0, 7), (7, 14), (14, 20)]);
    for g in 0..s.g {
        for k in 0..s.c {
            let (gm, gv) = (stats[g * 3 * s.c + k] as f64, stats[g * 3 * s.c + 2 * s.c + k] as f64);
            let (wm, wv) = (mean[g * s.c + k], var[g * s.c + k]);
            assert!((gm - wm).abs() <= 1e-6 * wm, "mean {gm} vs {wm}");
            assert!((gv - wv).abs() <= 1e-3 * wv, "variance {gv} vs {wv}");
        }
    }
}
