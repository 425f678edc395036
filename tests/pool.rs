//! Max, average and adaptive average pooling, forward and backward, against plain-Rust CPU
//! references written the way PyTorch's CPU kernels compute them (f64 accumulation), with
//! finite differences, ties, NaN, odd shapes and model isolation.
//!
//! Gradients come from a seeded backward pass: with input `x` (a parameter), output `y` and a
//! random seed `r` shaped like `y`, `autograd::grad(y, Some(r), [x])` is d sum(r*y) / dx.

mod common;

use common::{assert_close, check_fd, randn, FdLeaf};
use modelbatch::graph::Pool2dGeom;
use modelbatch::nn::Rng;
use modelbatch::{autograd, DType, Error, Graph, Plan, TensorId};

/// GPU against the f64 references.
const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-6;
/// Finite differences: step, tolerances (see `common::check_fd`) and coordinates per leaf.
const EPS: f32 = 1e-2;
const FD_RTOL: f64 = 1e-2;
const FD_ATOL: f64 = 5e-3;
const FD_COORDS: usize = 7;

#[derive(Clone, Copy, Debug)]
struct Dims {
    g: usize,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl Dims {
    fn planes(&self) -> usize {
        self.g * self.n * self.c
    }

    fn numel(&self) -> usize {
        self.planes() * self.h * self.w
    }
}

fn geom(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], dilation: [usize; 2]) -> Pool2dGeom {
    Pool2dGeom { kernel, stride, padding, dilation, count_include_pad: true }
}

fn avg_geom(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], count_include_pad: bool) -> Pool2dGeom {
    Pool2dGeom { kernel, stride, padding, dilation: [1, 1], count_include_pad }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Max(Pool2dGeom),
    Avg(Pool2dGeom),
    Adaptive([usize; 2]),
}

impl Kind {
    fn out_hw(&self, d: Dims) -> [usize; 2] {
        match self {
            Kind::Max(g) | Kind::Avg(g) => [g.out_size(0, d.h).unwrap(), g.out_size(1, d.w).unwrap()],
            Kind::Adaptive(o) => *o,
        }
    }

    fn build(&self, graph: &mut Graph, x: TensorId) -> modelbatch::Result<TensorId> {
        match *self {
            Kind::Max(g) => graph.maxpool2d(x, g),
            Kind::Avg(g) => graph.avgpool2d(x, g),
            Kind::Adaptive(o) => graph.adaptive_avgpool2d(x, o),
        }
    }

    fn labels(&self) -> [&'static str; 2] {
        match self {
            Kind::Max(_) => ["maxpool2d", "maxpool2d_grad"],
            Kind::Avg(_) => ["avgpool2d", "avgpool2d_grad"],
            Kind::Adaptive(_) => ["adaptive_avgpool2d", "adaptive_avgpool2d_grad"],
        }
    }
}

// ---------------------------------------------------------------------------------------
// CPU references

/// Input positions of output `o`'s window taps along one axis, in window order, `None` for
/// padding.
fn taps(o: usize, size: usize, k: usize, s: usize, p: usize, d: usize) -> Vec<Option<usize>> {
    (0..k)
        .map(|j| {
            let pos = (o * s + j * d) as isize - p as isize;
            (pos >= 0 && (pos as usize) < size).then_some(pos as usize)
        })
        .collect()
}

/// Max pooling as PyTorch's CPU kernel computes it: `maxval = -inf`, `maxindex` = the first
/// in-bounds tap, and a tap replaces them when `val > maxval || isnan(val)`. Returns `y` and,
/// per output, the flat index of `x` its gradient goes to. `last_tie` (`>=`) is the rule the
/// tests must tell apart from PyTorch's.
fn maxpool_ref_rule(d: Dims, geo: &Pool2dGeom, x: &[f32], last_tie: bool) -> (Vec<f64>, Vec<Option<usize>>) {
    let (oh, ow) = (geo.out_size(0, d.h).unwrap(), geo.out_size(1, d.w).unwrap());
    let mut y = Vec::with_capacity(d.planes() * oh * ow);
    let mut arg = Vec::with_capacity(y.capacity());
    for plane in 0..d.planes() {
        let base = plane * d.h * d.w;
        for oy in 0..oh {
            let ty = taps(oy, d.h, geo.kernel[0], geo.stride[0], geo.padding[0], geo.dilation[0]);
            for ox in 0..ow {
                let tx = taps(ox, d.w, geo.kernel[1], geo.stride[1], geo.padding[1], geo.dilation[1]);
                let inside: Vec<usize> = ty
                    .iter()
                    .flatten()
                    .flat_map(|&iy| tx.iter().flatten().map(move |&ix| base + iy * d.w + ix))
                    .collect();
                let mut maxval = f64::NEG_INFINITY;
                let mut maxindex = inside.first().copied();
                for &i in &inside {
                    let v = x[i] as f64;
                    if v > maxval || (last_tie && v == maxval) || v.is_nan() {
                        maxval = v;
                        maxindex = Some(i);
                    }
                }
                y.push(maxval);
                arg.push(maxindex);
            }
        }
    }
    (y, arg)
}

fn maxpool_ref(d: Dims, geo: &Pool2dGeom, x: &[f32]) -> (Vec<f64>, Vec<Option<usize>>) {
    maxpool_ref_rule(d, geo, x, false)
}

/// Gradient of max pooling: each seed value scattered onto its window's chosen input.
fn maxpool_grad_ref(numel: usize, arg: &[Option<usize>], r: &[f32]) -> Vec<f64> {
    let mut dx = vec![0.0; numel];
    for (a, &rv) in arg.iter().zip(r) {
        if let Some(i) = a {
            dx[*i] += rv as f64;
        }
    }
    dx
}

/// Every output's window (flat input indices) and divisor, for average or adaptive pooling.
fn avg_windows(d: Dims, kind: &Kind) -> Vec<(Vec<usize>, f64)> {
    let [oh, ow] = kind.out_hw(d);
    // Along one axis: the in-bounds positions and the window's full length (padding included).
    let axis = |o: usize, size: usize, out: usize, a: usize| -> (Vec<usize>, usize) {
        match kind {
            Kind::Avg(g) => {
                let t = taps(o, size, g.kernel[a], g.stride[a], g.padding[a], 1);
                (t.iter().flatten().copied().collect(), g.kernel[a])
            }
            Kind::Adaptive(_) => {
                // PyTorch: start = floor(o * size / out), end = ceil((o + 1) * size / out).
                let start = (o as f64 * size as f64 / out as f64).floor() as usize;
                let end = ((o + 1) as f64 * size as f64 / out as f64).ceil() as usize;
                ((start..end).collect(), end - start)
            }
            Kind::Max(_) => unreachable!(),
        }
    };
    let include_pad = matches!(kind, Kind::Avg(g) if g.count_include_pad);
    let mut out = Vec::new();
    for plane in 0..d.planes() {
        for oy in 0..oh {
            let (ys, fy) = axis(oy, d.h, oh, 0);
            for ox in 0..ow {
                let (xs, fx) = axis(ox, d.w, ow, 1);
                let idx: Vec<usize> =
                    ys.iter().flat_map(|&iy| xs.iter().map(move |&ix| plane * d.h * d.w + iy * d.w + ix)).collect();
                let div = if include_pad { (fy * fx) as f64 } else { idx.len() as f64 };
                out.push((idx, div));
            }
        }
    }
    out
}

fn avg_ref(d: Dims, kind: &Kind, x: &[f32]) -> Vec<f64> {
    avg_windows(d, kind).iter().map(|(idx, div)| idx.iter().map(|&i| x[i] as f64).sum::<f64>() / div).collect()
}

fn avg_grad_ref(d: Dims, kind: &Kind, r: &[f32]) -> Vec<f64> {
    let mut dx = vec![0.0; d.numel()];
    for ((idx, div), &rv) in avg_windows(d, kind).iter().zip(r) {
        for &i in idx {
            dx[i] += rv as f64 / div;
        }
    }
    dx
}

/// Forward and gradient references of any pooling.
fn reference(d: Dims, kind: &Kind, x: &[f32], r: &[f32]) -> (Vec<f64>, Vec<f64>) {
    match kind {
        Kind::Max(g) => {
            let (y, arg) = maxpool_ref(d, g, x);
            (y, maxpool_grad_ref(d.numel(), &arg, r))
        }
        _ => (avg_ref(d, kind, x), avg_grad_ref(d, kind, r)),
    }
}

// ---------------------------------------------------------------------------------------
// Inputs

/// Per plane, a shuffled ramp of distinct values `spacing` apart: no ties, so finite
/// differences of max pooling (step < spacing / 2) never move an argmax.
fn distinct(seed: u64, d: Dims, spacing: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let hw = d.h * d.w;
    let mut out = Vec::with_capacity(d.numel());
    for _ in 0..d.planes() {
        let mut perm: Vec<usize> = (0..hw).collect();
        for i in (1..hw).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        out.extend(perm.iter().map(|&k| (k as f32 - hw as f32 / 2.0) * spacing));
    }
    out
}

/// Values from {-1, 0, 1}: windows full of ties.
fn ties(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(3) as f32 - 1.0).collect()
}

// ---------------------------------------------------------------------------------------
// A compiled pooling with its seeded backward pass

struct Case {
    plan: Plan,
    d: Dims,
    kind: Kind,
    x_id: TensorId,
    r_id: TensorId,
    y: TensorId,
    dx: TensorId,
    x: Vec<f32>,
    r: Vec<f32>,
}

fn case(gpu: &modelbatch::Gpu, kind: Kind, d: Dims, x: Vec<f32>, seed: u64) -> Case {
    assert_eq!(x.len(), d.numel());
    let mut graph = Graph::new(d.g);
    let x_id = graph.param("x", &[d.n, d.c, d.h, d.w]).unwrap();
    let y = kind.build(&mut graph, x_id).unwrap();
    let [oh, ow] = kind.out_hw(d);
    assert_eq!(graph.shape(y), [d.g, d.n, d.c, oh, ow], "{kind:?}: output shape");
    let r_id = graph.input("r", &[d.n, d.c, oh, ow], DType::F32).unwrap();
    let dx = autograd::grad(&mut graph, y, Some(r_id), &[x_id]).unwrap()[0].expect("a gradient for x");
    let plan = Plan::new(gpu, &graph, &[y, dx], &[]).unwrap();
    let r = randn(seed ^ 0x5EED, d.planes() * oh * ow);
    plan.write(x_id, &x).unwrap();
    plan.write(r_id, &r).unwrap();
    Case { plan, d, kind, x_id, r_id, y, dx, x, r }
}

impl Case {
    fn run(&self) -> (Vec<f32>, Vec<f32>) {
        self.plan.run().unwrap();
        (self.plan.read_blocking(self.y).unwrap(), self.plan.read_blocking(self.dx).unwrap())
    }

    /// Forward and backward against the references, the dispatches that ran, and (unless the
    /// input has ties) finite differences.
    fn check(&self, what: &str, fd: bool) {
        let (y, dx) = self.run();
        let (y_ref, dx_ref) = reference(self.d, &self.kind, &self.x, &self.r);
        assert_close(&format!("{what}: forward"), &y, &y_ref, RTOL, ATOL);
        assert_close(&format!("{what}: gradient"), &dx, &dx_ref, RTOL, ATOL);
        assert_eq!(self.plan.dispatch_labels(), self.kind.labels(), "{what}: dispatches");
        if fd {
            let leaf = FdLeaf { name: what, id: self.x_id, values: &self.x, grad: &dx };
            check_fd(&self.plan, self.y, &self.r, &[leaf], FD_COORDS, EPS, FD_RTOL, FD_ATOL);
            let (y_after, _) = self.run();
            assert_eq!(y, y_after, "{what}: output after the finite differences");
        }
    }
}

fn check_case(gpu: &modelbatch::Gpu, what: &str, kind: Kind, d: Dims, seed: u64) {
    let x = match kind {
        Kind::Max(_) => distinct(seed, d, 0.03),
        _ => randn(seed, d.numel()),
    };
    case(gpu, kind, d, x, seed).check(what, true);
}

// ---------------------------------------------------------------------------------------
// max pooling

#[test]
fn maxpool_2x2_stride_2_lenet_g17() {
    let gpu = gpu_or_skip!();
    let d = Dims { g: 17, n: 5, c: 3, h: 12, w: 9 };
    check_case(gpu, "maxpool 2x2/2", Kind::Max(geom([2, 2], [2, 2], [0, 0], [1, 1])), d, 1);
    // Windows that tile the input exactly take the one-invocation-per-window gradient kernel:
    // distinct values, then ties (the first maximum of each window gets the gradient).
    let d = Dims { g: 17, n: 5, c: 3, h: 12, w: 10 };
    check_case(gpu, "maxpool 2x2/2 tiling", Kind::Max(geom([2, 2], [2, 2], [0, 0], [1, 1])), d, 5);
    // Output rows of 4k windows take 4 windows per invocation (vec4 in and out): LeNet's
    // two layers' sizes, and ties.
    let two = geom([2, 2], [2, 2], [0, 0], [1, 1]);
    for (h, w) in [(24, 24), (8, 8), (6, 16)] {
        let d = Dims { g: 3, n: 2, c: 3, h, w };
        check_case(gpu, &format!("maxpool 2x2/2 {h}x{w}"), Kind::Max(two), d, 7 + w as u64);
        let c = case(gpu, Kind::Max(two), d, ties(8 + w as u64, d.numel()), 9);
        c.check(&format!("maxpool 2x2/2 {h}x{w}, ties"), false);
        let (_, arg) = maxpool_ref(d, &two, &c.x);
        assert_ne!(arg, maxpool_ref_rule(d, &two, &c.x, true).1, "{h}x{w}: no window holds a tie");
        let kernels: Vec<String> = c.plan.dispatch_kernels().into_iter().map(|k| k.1).collect();
        assert!(kernels[0].contains("maxpool2d_2x2(") && kernels[1].contains("maxpool2d_grad_2x2("), "{kernels:?}");
    }
    let geo = geom([3, 2], [3, 2], [0, 0], [1, 1]);
    let d = Dims { g: 3, n: 2, c: 3, h: 9, w: 8 };
    let c = case(gpu, Kind::Max(geo), d, ties(6, d.numel()), 6);
    c.check("maxpool 3x2/3x2 tiling, ties", false);
    let (_, arg) = maxpool_ref(d, &geo, &c.x);
    let (_, arg_last) = maxpool_ref_rule(d, &geo, &c.x, true);
    assert_ne!(arg, arg_last, "no window holds a tie");
}

#[test]
fn maxpool_3x3_stride_2_padding_1() {
    let gpu = gpu_or_skip!();
    let d = Dims { g: 3, n: 5, c: 5, h: 9, w: 8 };
    check_case(gpu, "maxpool 3x3/2 pad 1", Kind::Max(geom([3, 3], [2, 2], [1, 1], [1, 1])), d, 2);
}

#[test]
fn maxpool_dilation_and_rectangular_windows() {
    let gpu = gpu_or_skip!();
    let d = Dims { g: 3, n: 5, c: 3, h: 10, w: 11 };
    check_case(gpu, "maxpool 3x3 dilation 2", Kind::Max(geom([3, 3], [2, 2], [1, 1], [2, 2])), d, 3);
    check_case(gpu, "maxpool 3x2 dilation 2x3", Kind::Max(geom([3, 2], [1, 2], [1, 1], [2, 3])), d, 4);
}

#[test]
fn maxpool_ties_go_to_the_first_maximum_and_overlaps_accumulate() {
    let gpu = gpu_or_skip!();
    // Hand-checked: a constant plane under 2x2 windows of stride 1. Every window's first
    // maximum is its top-left element, which is window (iy, ix)'s own position.
    let d = Dims { g: 2, n: 1, c: 1, h: 3, w: 4 };
    let c = case(gpu, Kind::Max(geom([2, 2], [1, 1], [0, 0], [1, 1])), d, vec![0.5; 24], 7);
    let (y, dx) = c.run();
    assert!(y.iter().all(|&v| v == 0.5), "forward of a constant plane: {y:?}");
    for m in 0..2 {
        for iy in 0..3 {
            for ix in 0..4 {
                let want = if iy < 2 && ix < 3 { c.r[m * 6 + iy * 3 + ix] } else { 0.0 };
                assert_eq!(dx[m * 12 + iy * 4 + ix], want, "model {m} dx[{iy}][{ix}]");
            }
        }
    }
    // Random ties under overlapping windows: values of {-1, 0, 1}, so several windows share
    // one first maximum and its gradient is a sum.
    let d = Dims { g: 3, n: 5, c: 3, h: 7, w: 9 };
    for (i, geo) in [
        geom([3, 3], [1, 1], [1, 1], [1, 1]),
        geom([3, 2], [2, 1], [1, 0], [1, 1]),
        geom([2, 3], [1, 2], [1, 1], [2, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let c = case(gpu, Kind::Max(geo), d, ties(10 + i as u64, d.numel()), 20 + i as u64);
        let what = format!("maxpool ties {geo:?}");
        c.check(&what, false);
        // The data must tell the rules apart: a last-maximum rule routes differently, and some
        // inputs are the chosen maximum of several windows.
        let (_, arg) = maxpool_ref(d, &geo, &c.x);
        let (_, arg_last) = maxpool_ref_rule(d, &geo, &c.x, true);
        assert_ne!(arg, arg_last, "{what}: no window holds a tie");
        let chosen = arg.iter().flatten().collect::<std::collections::HashSet<_>>().len();
        assert!(chosen < arg.len(), "{what}: no input is the maximum of two windows");
    }
}

#[test]
fn maxpool_nan_propagates_and_padding_is_minus_infinity() {
    let gpu = gpu_or_skip!();
    // (Width 8: the 2x2 windows take 4 per invocation; width 7, the general kernels.)
    for w in [7, 8] {
        nan_and_infinity(gpu, Dims { g: 3, n: 2, c: 3, h: 6, w });
    }
}

fn nan_and_infinity(gpu: &modelbatch::Gpu, d: Dims) {
    let mut x = distinct(30, d, 0.03);
    // Model 0, plane 0: NaN at (2, 3) and (3, 3); model 1, plane 1: NaN at (0, 0).
    let hw = d.h * d.w;
    for i in [2 * d.w + 3, 3 * d.w + 3, (d.n * d.c + 1) * hw] {
        x[i] = f32::NAN;
    }
    // Model 2, plane 2: a window of -inf (top-left 2x2) and a plane of negatives, so padding
    // (-inf for max pooling, never zero) must lose against every real value.
    let p2 = (2 * d.n * d.c + 2) * hw;
    for i in [0, 1, d.w, d.w + 1] {
        x[p2 + i] = f32::NEG_INFINITY;
    }
    let p3 = (2 * d.n * d.c + 3) * hw;
    for v in &mut x[p3..p3 + hw] {
        *v = -1.0 - v.abs();
    }
    for geo in [geom([2, 2], [2, 2], [0, 0], [1, 1]), geom([3, 3], [1, 1], [1, 1], [1, 1])] {
        let c = case(gpu, Kind::Max(geo), d, x.clone(), 31);
        let (y, dx) = c.run();
        let (y_ref, arg) = maxpool_ref(d, &geo, &x);
        let nans = y_ref.iter().filter(|v| v.is_nan()).count();
        assert!(nans > 0, "{geo:?}: no NaN window");
        for (i, (&g, &w)) in y.iter().zip(&y_ref).enumerate() {
            assert!(g.is_nan() == w.is_nan() && (w.is_nan() || g as f64 == w), "{geo:?}: y[{i}] = {g}, want {w}");
        }
        assert!(y_ref.contains(&f64::NEG_INFINITY), "{geo:?}: no window of -inf");
        // Gradients: a NaN window routes to its last NaN (PyTorch's `val > max || isnan(val)`).
        assert_close(&format!("{geo:?}: gradient"), &dx, &maxpool_grad_ref(d.numel(), &arg, &c.r), RTOL, ATOL);
    }
}

// ---------------------------------------------------------------------------------------
// average pooling

#[test]
fn avgpool_count_include_pad_true_and_false() {
    let gpu = gpu_or_skip!();
    let d = Dims { g: 3, n: 5, c: 3, h: 9, w: 8 };
    for include in [true, false] {
        let what = format!("avgpool 3x3/2 pad 1 count_include_pad={include}");
        check_case(gpu, &what, Kind::Avg(avg_geom([3, 3], [2, 2], [1, 1], include)), d, 40 + include as u64);
        let what = format!("avgpool 2x3/(1,2) pad (1,1) count_include_pad={include}");
        check_case(gpu, &what, Kind::Avg(avg_geom([2, 3], [1, 2], [1, 1], include)), d, 42 + include as u64);
    }
}

#[test]
fn avgpool_2x2_stride_2_g17() {
    let gpu = gpu_or_skip!();
    let d = Dims { g: 17, n: 5, c: 3, h: 11, w: 10 };
    check_case(gpu, "avgpool 2x2/2", Kind::Avg(avg_geom([2, 2], [2, 2], [0, 0], true)), d, 50);
}

#[test]
fn adaptive_avgpool_dividing_and_non_dividing_sizes() {
    let gpu = gpu_or_skip!();
    for (i, (h, w, out)) in
        [(7, 7, [1, 1]), (7, 7, [3, 3]), (5, 5, [2, 3]), (6, 9, [3, 3]), (3, 2, [4, 5])].into_iter().enumerate()
    {
        let d = Dims { g: 3, n: 5, c: 3, h, w };
        check_case(gpu, &format!("adaptive {h}x{w} -> {out:?}"), Kind::Adaptive(out), d, 60 + i as u64);
    }
}

#[test]
fn adaptive_avgpool_windows_overlap_on_non_dividing_sizes() {
    let gpu = gpu_or_skip!();
    // 5 -> 3 along both axes: windows [0,2), [1,4), [3,5) overlap at 1 and 3. Checked by hand
    // on one plane of ones: the forward is 1 everywhere and each input's gradient (seed 1)
    // is the sum of 1/size over the windows holding it.
    let d = Dims { g: 1, n: 1, c: 1, h: 5, w: 5 };
    let c = case(gpu, Kind::Adaptive([3, 3]), d, vec![1.0; 25], 70);
    c.plan.write(c.r_id, &[1.0; 9]).unwrap();
    let (y, dx) = c.run();
    assert_close("adaptive ones forward", &y, &[1.0; 9], RTOL, ATOL);
    let per_axis = [1.0 / 2.0, 1.0 / 2.0 + 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0 + 1.0 / 2.0, 1.0 / 2.0];
    let want: Vec<f64> = (0..25).map(|i| per_axis[i / 5] * per_axis[i % 5]).collect();
    assert_close("adaptive ones gradient", &dx, &want, RTOL, ATOL);
}

#[test]
fn geometries_pytorch_rejects_do_not_compile() {
    let gpu = gpu_or_skip!();
    let compile = |kind: Kind| {
        let mut graph = Graph::new(2);
        let x = graph.param("x", &[1, 3, 8, 8]).unwrap();
        match kind.build(&mut graph, x) {
            Ok(y) => Plan::new(gpu, &graph, &[y], &[]).err(),
            Err(e) => Some(e),
        }
    };
    // Average pooling has no dilation.
    let mut geo = avg_geom([2, 2], [2, 2], [0, 0], true);
    geo.dilation = [2, 1];
    match compile(Kind::Avg(geo)) {
        Some(Error::Usage(m)) => assert!(m.contains("dilation"), "{m}"),
        other => panic!("a dilated average pooling: {other:?}"),
    }
    // A zero dilation or kernel is no window: the graph builder refuses it.
    match compile(Kind::Max(geom([2, 2], [2, 2], [0, 0], [0, 1]))) {
        Some(Error::Shape(m)) => assert!(m.contains("dilation [0, 1]") && m.contains("does not fit"), "{m}"),
        other => panic!("a zero dilation: {other:?}"),
    }
    match compile(Kind::Max(geom([0, 2], [2, 2], [0, 0], [1, 1]))) {
        Some(Error::Shape(m)) => assert!(m.contains("window [0, 2]"), "{m}"),
        other => panic!("a zero kernel: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// isolation

#[test]
fn models_never_mix() {
    let gpu = gpu_or_skip!();
    let d = Dims { g: 5, n: 5, c: 3, h: 7, w: 6 };
    let per_x = d.n * d.c * d.h * d.w;
    for kind in [
        Kind::Max(geom([3, 3], [2, 2], [1, 1], [1, 1])),
        Kind::Max(geom([3, 2], [1, 1], [1, 1], [2, 1])),
        Kind::Avg(avg_geom([3, 3], [1, 2], [1, 1], false)),
        Kind::Adaptive([3, 4]),
    ] {
        let c = case(gpu, kind, d, randn(80, d.numel()), 81);
        let (y0, dx0) = c.run();
        let (per_y, g) = (y0.len() / d.g, d.g);
        // Forward: perturb model 0's input; every other model's output and gradient stay
        // bitwise identical.
        let mut x = c.x.clone();
        for v in &mut x[..per_x] {
            *v = -*v * 1.5 + 0.25;
        }
        c.plan.write(c.x_id, &x).unwrap();
        let (y1, dx1) = c.run();
        assert_ne!(y0[..per_y], y1[..per_y], "{kind:?}: model 0's output did not change");
        assert_eq!(y0[per_y..], y1[per_y..], "{kind:?}: model 0's input changed another model's output");
        assert_eq!(dx0[per_x..], dx1[per_x..], "{kind:?}: model 0's input changed another model's gradient");
        // Backward: a seed on model 2 only leaves exact zeros in every other model's gradient.
        let mut r = vec![0.0; c.r.len()];
        r[2 * per_y..3 * per_y].copy_from_slice(&c.r[2 * per_y..3 * per_y]);
        c.plan.write(c.r_id, &r).unwrap();
        let (_, dx) = c.run();
        for m in 0..g {
            let s = &dx[m * per_x..(m + 1) * per_x];
            assert_eq!(s.iter().any(|&v| v != 0.0), m == 2, "{kind:?}: model {m}'s gradient from model 2's seed");
        }
    }
}
