//! Conv2d (forward, gradient to the input, to the weight, to the bias) against a plain-Rust
//! CPU reference (f64 accumulation) and central finite differences, over LeNet's shapes,
//! strides, padding, dilation, channel groups, 1x1 and non-square kernels, odd batch sizes,
//! grids past 65,535 workgroups, and model isolation.
//!
//! Gradients are checked through a seeded backward pass: with leaves `p`, output `y` and a
//! random seed `r` shaped like `y`, `autograd::grad(y, Some(r), p)` is d sum(r*y) / dp.

mod common;

use common::{assert_close, check_fd, fd_leaves, randn};
use modelbatch::graph::Conv2dGeom;
use modelbatch::{autograd, DType, Graph, Plan, TensorId, Tuning};

const RTOL: f64 = 1e-4;
/// Absolute tolerance per multiply-add summed into one value (f32 accumulation).
const ATOL_PER_TERM: f64 = 2e-7;
const EPS: f32 = 1e-2;
const FD_RTOL: f64 = 2e-2;
const FD_ATOL: f64 = 1e-2;
const FD_COORDS: usize = 3;

/// One convolution: models, batch, channels in and out, input size, geometry, bias.
#[derive(Clone, Copy, Debug)]
struct Spec {
    g: usize,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    bias: bool,
}

impl Spec {
    /// A stride-1, unpadded, undilated, ungrouped convolution with bias.
    fn new(g: usize, n: usize, c: usize, o: usize, hw: [usize; 2], kernel: [usize; 2]) -> Spec {
        Spec {
            g,
            n,
            c,
            h: hw[0],
            w: hw[1],
            o,
            kernel,
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
        }
    }
    fn stride(self, s: [usize; 2]) -> Spec {
        Spec { stride: s, ..self }
    }
    fn padding(self, p: [usize; 2]) -> Spec {
        Spec { padding: p, ..self }
    }
    fn dilation(self, d: [usize; 2]) -> Spec {
        Spec { dilation: d, ..self }
    }
    fn groups(self, groups: usize) -> Spec {
        Spec { groups, ..self }
    }
    fn no_bias(self) -> Spec {
        Spec { bias: false, ..self }
    }

    fn geom(&self) -> Conv2dGeom {
        Conv2dGeom {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }
    fn out(&self) -> [usize; 2] {
        let size = |a: usize, len: usize| {
            (len + 2 * self.padding[a] - self.dilation[a] * (self.kernel[a] - 1) - 1) / self.stride[a] + 1
        };
        [size(0, self.h), size(1, self.w)]
    }
    fn cg(&self) -> usize {
        self.c / self.groups
    }
    fn x_shape(&self) -> Vec<usize> {
        vec![self.n, self.c, self.h, self.w]
    }
    fn w_shape(&self) -> Vec<usize> {
        vec![self.o, self.cg(), self.kernel[0], self.kernel[1]]
    }
    fn y_numel(&self) -> usize {
        let [oh, ow] = self.out();
        self.g * self.n * self.o * oh * ow
    }

    /// Calls `f(y index, x index, w index, bias index)` for every tap of every output that
    /// lands inside the input (zero padding contributes nothing).
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let [oh, ow] = self.out();
        let (cg, og) = (self.cg(), self.o / self.groups);
        let [kh, kw] = self.kernel;
        for g in 0..self.g {
            for n in 0..self.n {
                for o in 0..self.o {
                    let grp = o / og;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let yi = (((g * self.n + n) * self.o + o) * oh + oy) * ow + ox;
                            for cl in 0..cg {
                                let c = grp * cg + cl;
                                for ky in 0..kh {
                                    let ih = (oy * self.stride[0] + ky * self.dilation[0]) as isize
                                        - self.padding[0] as isize;
                                    if ih < 0 || ih >= self.h as isize {
                                        continue;
                                    }
                                    for kx in 0..kw {
                                        let iw = (ox * self.stride[1] + kx * self.dilation[1]) as isize
                                            - self.padding[1] as isize;
                                        if iw < 0 || iw >= self.w as isize {
                                            continue;
                                        }
                                        let xi = (((g * self.n + n) * self.c + c) * self.h + ih as usize) * self.w
                                            + iw as usize;
                                        let wi = (((g * self.o + o) * cg + cl) * kh + ky) * kw + kx;
                                        f(yi, xi, wi, g * self.o + o);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// CPU reference forward.
    fn forward_ref(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
        let [oh, ow] = self.out();
        let mut y = vec![0.0f64; self.y_numel()];
        if let Some(b) = bias {
            for (i, v) in y.iter_mut().enumerate() {
                *v = b[(i / (oh * ow)) % self.o + i / (self.n * self.o * oh * ow) * self.o] as f64;
            }
        }
        self.for_each_tap(|yi, xi, wi, _| y[yi] += x[xi] as f64 * w[wi] as f64);
        y
    }

    /// CPU reference gradients of sum(r * y): (dx, dw, dbias).
    fn grads_ref(&self, x: &[f32], w: &[f32], r: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let [oh, ow] = self.out();
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        let mut db = vec![0.0f64; self.g * self.o];
        self.for_each_tap(|yi, xi, wi, _| {
            dx[xi] += r[yi] as f64 * w[wi] as f64;
            dw[wi] += r[yi] as f64 * x[xi] as f64;
        });
        for (i, &rv) in r.iter().enumerate() {
            db[i / (self.n * self.o * oh * ow) * self.o + (i / (oh * ow)) % self.o] += rv as f64;
        }
        (dx, dw, db)
    }

    /// Multiply-adds summed into one value of each result (for tolerances).
    fn depths(&self) -> [usize; 3] {
        let [oh, ow] = self.out();
        let kk = self.kernel[0] * self.kernel[1];
        [self.cg() * kk, (self.o / self.groups) * kk, self.n * oh * ow]
    }
}

/// A compiled `y = conv2d(x, w, bias)` with its seeded backward pass, leaves written.
struct Case {
    spec: Spec,
    plan: Plan,
    y: TensorId,
    r: Vec<f32>,
    leaves: Vec<(&'static str, TensorId, Vec<f32>)>,
    grads: Vec<TensorId>,
}

impl Case {
    fn new(gpu: &modelbatch::Gpu, spec: Spec, seed: u64) -> Case {
        let mut graph = Graph::new(spec.g);
        let x = graph.param("x", &spec.x_shape()).unwrap();
        let w = graph.param("w", &spec.w_shape()).unwrap();
        let b = if spec.bias { Some(graph.param("bias", &[spec.o]).unwrap()) } else { None };
        let y = graph.conv2d(x, w, b, spec.geom()).unwrap();
        let [oh, ow] = spec.out();
        assert_eq!(graph.shape(y), [spec.g, spec.n, spec.o, oh, ow], "{spec:?}: output shape");
        let r_id = graph.input("seed_r", &[spec.n, spec.o, oh, ow], DType::F32).unwrap();
        let mut params = vec![x, w];
        params.extend(b);
        let grads: Vec<TensorId> = autograd::grad(&mut graph, y, Some(r_id), &params)
            .unwrap()
            .into_iter()
            .map(|t| t.expect("every leaf gets a gradient"))
            .collect();
        let mut keep = vec![y];
        keep.extend_from_slice(&grads);
        let plan = Plan::new(gpu, &graph, &keep, &[]).unwrap();
        let r = randn(seed ^ 0x5EED, spec.y_numel());
        plan.write(r_id, &r).unwrap();
        let xv = randn(seed, spec.g * spec.x_shape().iter().product::<usize>());
        let wv = randn(seed + 1, spec.g * spec.w_shape().iter().product::<usize>());
        let mut leaves = vec![("x", x, xv), ("w", w, wv)];
        if let Some(b) = b {
            leaves.push(("bias", b, randn(seed + 2, spec.g * spec.o)));
        }
        for (_, id, v) in &leaves {
            plan.write(*id, v).unwrap();
        }
        Case { spec, plan, y, r, leaves, grads }
    }

    fn run(&self) -> (Vec<f32>, Vec<Vec<f32>>) {
        self.plan.run().unwrap();
        let y = self.plan.read_blocking(self.y).unwrap();
        (y, self.grads.iter().map(|&t| self.plan.read_blocking(t).unwrap()).collect())
    }

    /// Forward and every gradient against the CPU reference.
    fn check_reference(&self) -> Vec<Vec<f32>> {
        let s = &self.spec;
        let (y, grads) = self.run();
        let (x, w) = (&self.leaves[0].2, &self.leaves[1].2);
        let bias = self.leaves.get(2).map(|l| l.2.as_slice());
        let [dfwd, din, dwt] = s.depths();
        let atol = |depth: usize| (ATOL_PER_TERM * depth as f64).max(1e-6);
        assert_close(&format!("{s:?}: forward"), &y, &s.forward_ref(x, w, bias), RTOL, atol(dfwd));
        let (dx, dw, db) = s.grads_ref(x, w, &self.r);
        assert_close(&format!("{s:?}: dx"), &grads[0], &dx, RTOL, atol(din));
        assert_close(&format!("{s:?}: dw"), &grads[1], &dw, RTOL, atol(dwt));
        if s.bias {
            assert_close(&format!("{s:?}: dbias"), &grads[2], &db, RTOL, atol(dwt));
        }
        grads
    }

    /// Central finite differences of sum(r*y) for a few coordinates of every leaf.
    fn check_fd(&self, grads: &[Vec<f32>]) {
        let leaves = fd_leaves(&self.leaves, grads);
        let before = self.plan.read_blocking(self.y).unwrap();
        check_fd(&self.plan, self.y, &self.r, &leaves, FD_COORDS, EPS, FD_RTOL, FD_ATOL);
        let (after, _) = self.run();
        assert_eq!(before, after, "{:?}: output after the finite differences (leaves restored)", self.spec);
    }

    fn labels(&self) -> Vec<&'static str> {
        self.plan.dispatch_labels()
    }
}

/// Reference + finite differences + the kernels that ran; returns the dispatch labels.
fn check(gpu: &modelbatch::Gpu, spec: Spec) -> Vec<&'static str> {
    let seed = (spec.g * 7919 + spec.c * 131 + spec.o * 17 + spec.h * 3 + spec.w) as u64;
    let case = Case::new(gpu, spec, seed);
    let grads = case.check_reference();
    case.check_fd(&grads);
    let labels = case.labels();
    for l in ["conv2d", "conv2d_grad_input", "conv2d_grad_weight"] {
        let ran = |d: &&str| *d == l || (l == "conv2d_grad_input" && *d == "conv2d_grad_input_col");
        assert!(labels.iter().any(ran), "{spec:?}: {l} did not run ({labels:?})");
    }
    labels
}

#[test]
fn lenet_shapes() {
    // The split-K assertions below hold for the software tuning's split targets.
    let gpu = &gpu_or_skip!().with_tuning(Tuning::SOFTWARE).unwrap();
    // conv1: 1 -> 6 channels, 5x5 on 28x28; conv2: 6 -> 16, 5x5 on 12x12 (after pooling).
    let l1 = check(gpu, Spec::new(3, 5, 1, 6, [28, 28], [5, 5]));
    let l2 = check(gpu, Spec::new(2, 5, 6, 16, [12, 12], [5, 5]).no_bias());
    let l2_bias = check(gpu, Spec::new(2, 5, 6, 16, [12, 12], [5, 5]));
    // conv1's long depth (N * 24 * 24) takes the split-K weight gradient with its reduction
    // pass; conv2's (N * 8 * 8) is one split, written directly without a bias, through the
    // reduction (which writes the bias sums too) with one: all paths are checked.
    assert!(l1.contains(&"conv2d_grad_weight_reduce"), "{l1:?}");
    assert!(!l2.contains(&"conv2d_grad_weight_reduce"), "{l2:?}");
    assert!(l2_bias.contains(&"conv2d_grad_weight_reduce") && !l2_bias.contains(&"sum"), "{l2_bias:?}");
}

/// Every kernel shape a tuning may choose (the ends of each range, and odd channel blocks)
/// computes the same convolutions: forward and gradients against the reference and finite
/// differences, on LeNet's layers (direct kernels, split-K and not) and a padded, grouped,
/// strided one (the implicit GEMM kernels). Each layer's kernels or grids must change.
#[test]
fn every_tuning_computes_the_same_convolutions() {
    let gpu = gpu_or_skip!();
    let specs = [
        Spec::new(3, 5, 1, 6, [28, 28], [5, 5]),
        Spec::new(2, 5, 6, 16, [12, 12], [5, 5]),
        Spec::new(2, 3, 6, 4, [9, 11], [3, 3]).padding([1, 1]).groups(2),
        Spec::new(2, 3, 3, 5, [9, 8], [3, 3]).stride([2, 2]),
    ];
    let mut changed = [false; 4];
    for text in [
        "conv_lanes=8,conv_ob=1,grad_weight_ob=1,conv_strip=8,split_threads=1,min_split_depth=4096,split_lanes=0",
        "split_lanes=0,split_threads=65536,min_split_depth=16",
        "conv_lanes=256,conv_ob=3,grad_weight_ob=5,conv_strip=12,split_threads=1048576,min_split_depth=1,reduce_lanes=64,split_lanes=1",
        "conv_lanes=32,conv_ob=8,grad_weight_ob=8,conv_strip=12,split_threads=262144,min_split_depth=64,reduce_lanes=2",
        "conv_pixel=1,conv_lanes=128,conv_ob=3",
        "conv_pixel=1,conv_lanes=8,conv_ob=8,split_lanes=1,split_threads=65536",
    ] {
        let tuned = gpu.with_tuning(Tuning::SOFTWARE.apply(text).unwrap()).unwrap();
        for (i, spec) in specs.into_iter().enumerate() {
            let before = Case::new(gpu, spec, 1).plan.signature();
            let after = Case::new(&tuned, spec, 1).plan.signature();
            changed[i] |= before != after;
            check(&tuned, spec);
        }
    }
    // (A small layer may need no wider workgroup or further split than it has.)
    assert_eq!(changed, [true; 4], "some layer kept its kernels and grids under every tuning");
    // Both ways of adding the split-K partial sums ran.
    let tuned =
        gpu.with_tuning(Tuning::SOFTWARE.apply("split_threads=1048576,min_split_depth=1,reduce_lanes=64").unwrap());
    let wide = Case::new(&tuned.unwrap(), specs[0], 1).plan.signature();
    let serial = Case::new(&gpu.with_tuning(Tuning::SOFTWARE).unwrap(), specs[0], 1).plan.signature();
    let reduce = |s: &[(&str, usize, [u32; 3])]| s.iter().find(|d| d.0 == "conv2d_grad_weight_reduce").map(|d| d.1);
    assert!(reduce(&wide).is_some() && reduce(&serial).is_some() && reduce(&wide) != reduce(&serial));
}

/// The tiled kernels (`conv_tile`, `grad_weight_tile`) at both ends of their workgroup sizes,
/// positions per invocation and channel blocks compute the same convolutions as the
/// reference: LeNet's layers, padding (the tile's zero rows and columns), channel groups, tiles
/// whose rows cross many images (3x4 inputs), 1x1 and 7x7 kernels, a single image, rows wider
/// than a workgroup. Every
/// layer that fits must change its kernels; a row too wide for the tile falls back.
#[test]
fn tiled_kernels_compute_the_same_convolutions() {
    let gpu = gpu_or_skip!();
    let specs = [
        Spec::new(3, 5, 1, 6, [28, 28], [5, 5]),
        Spec::new(2, 5, 6, 16, [12, 12], [5, 5]),
        Spec::new(2, 3, 6, 4, [9, 11], [3, 3]).padding([1, 1]).groups(2),
        Spec::new(2, 9, 2, 3, [3, 4], [3, 3]).padding([1, 1]),
        Spec::new(2, 3, 5, 7, [6, 5], [1, 1]).no_bias(),
        Spec::new(2, 1, 2, 9, [9, 10], [7, 7]).padding([3, 2]),
        // Rows wider than a 32-lane workgroup: the copies' other path.
        Spec::new(2, 2, 1, 2, [4, 40], [3, 3]),
    ];
    let base = gpu.with_tuning(Tuning::SOFTWARE).unwrap();
    let mut changed = [false; 7];
    for text in [
        "conv_tile=256,grad_weight_tile=256,tile_px=4",
        "conv_tile=32,grad_weight_tile=32,tile_px=1,conv_ob=3,grad_weight_ob=5",
        "conv_tile=128,grad_weight_tile=64,tile_px=3,conv_ob=8,grad_weight_ob=8,split_threads=1,min_split_depth=4096",
        "conv_tile=64,grad_weight_tile=128,tile_px=2,conv_ob=1,grad_weight_ob=2,split_threads=1048576,min_split_depth=1",
        // Tiles of 30 KiB (lavapipe has 32) and of 4 KiB (fewer rows per tile, more fallbacks).
        "conv_tile=256,grad_weight_tile=256,tile_px=4,tile_kib=30",
        "conv_tile=128,grad_weight_tile=64,tile_px=2,tile_kib=4",
    ] {
        let tuned = gpu.with_tuning(Tuning::SOFTWARE.apply(text).unwrap()).unwrap();
        for (i, spec) in specs.into_iter().enumerate() {
            let before = Case::new(&base, spec, 1).plan.signature();
            let after = Case::new(&tuned, spec, 1).plan.signature();
            changed[i] |= before != after;
            check(&tuned, spec);
        }
    }
    assert_eq!(changed, [true; 7], "some layer kept its kernels under every tiled tuning");
    // Larger tiles: LeNet's weight gradients take more rows per tile (other grids).
    let tiles = |kib: u32| {
        let text = format!("grad_weight_tile=256,tile_kib={kib}");
        let gpu = gpu.with_tuning(Tuning::SOFTWARE.apply(&text).unwrap()).unwrap();
        [specs[0], specs[1]].map(|spec| Case::new(&gpu, spec, 1).plan.signature())
    };
    let (small, large) = (tiles(10), tiles(30));
    assert!(small[0] != large[0] && small[1] != large[1], "tile_kib=30 changed no weight gradient's grid");
    // The tiled and the direct weight gradients also sum the bias gradient: no separate pass
    // over dy; the implicit GEMM (strided) appends one.
    let tiled = gpu.with_tuning(Tuning::SOFTWARE.apply("grad_weight_tile=256").unwrap()).unwrap();
    let sums = |gpu: &modelbatch::Gpu, spec: Spec| {
        Case::new(gpu, spec, 1).plan.dispatch_labels().into_iter().filter(|l| *l == "sum").count()
    };
    for spec in &specs[..3] {
        assert_eq!((sums(&base, *spec), sums(&tiled, *spec)), (0, 0), "{spec:?}: bias-gradient sums");
    }
    assert_eq!(sums(&base, Spec::new(2, 3, 3, 5, [9, 8], [3, 3]).stride([2, 2])), 1);
    // A row of 1,300 columns passes the tile: the direct kernels run, and agree.
    let tuned = gpu.with_tuning(Tuning::SOFTWARE.apply("conv_tile=256,grad_weight_tile=256").unwrap()).unwrap();
    let wide = Spec::new(1, 2, 1, 2, [3, 1300], [3, 3]);
    assert_eq!(Case::new(&base, wide, 1).plan.signature(), Case::new(&tuned, wide, 1).plan.signature());
    check(&tuned, wide);
}

/// The input gradient through workgroup-memory products (`grad_input_col`) computes what the
/// reference does: LeNet's conv2 (16 dy channels, one chunk), 20 dy channels (two chunks, the
/// second summed in place), padding of every width up to the kernel's (the correlation's
/// padding is kernel - 1 - padding), channel groups, 1x1 and 3x5 kernels, 1 to 4 vec4 of
/// channels per position, one or two positions per invocation, one or several images per
/// workgroup with a short last one. A layer whose images pass the workgroup memory (conv1:
/// 24x24 positions x 25 taps), one too small for the GPU (a quarter of `split_threads`) and
/// one whose image passes two positions per invocation keep the other kernels.
#[test]
fn input_gradient_products_compute_the_same_convolutions() {
    let gpu = gpu_or_skip!();
    let specs = [
        Spec::new(2, 5, 6, 16, [12, 12], [5, 5]),
        Spec::new(2, 3, 3, 20, [7, 6], [3, 3]).padding([1, 2]),
        Spec::new(2, 3, 6, 4, [9, 11], [3, 3]).padding([1, 1]).groups(2),
        Spec::new(3, 7, 5, 7, [6, 5], [1, 1]).no_bias(),
        Spec::new(2, 5, 2, 11, [6, 9], [3, 5]).padding([2, 0]),
    ];
    let col = |gpu: &modelbatch::Gpu, spec: Spec| {
        let labels = Case::new(gpu, spec, 1).labels();
        labels.contains(&"conv2d_grad_input_col") && !labels.contains(&"conv2d_grad_input")
    };
    let mut grids = std::collections::HashSet::new();
    for text in [
        "grad_input_col=32,split_threads=1",
        "grad_input_col=64,split_threads=1",
        "grad_input_col=256,split_threads=1",
        "grad_input_col=64,split_threads=512",
        "grad_input_col=128,split_threads=1,conv_tile=64,grad_weight_tile=64",
    ] {
        let tuned = gpu.with_tuning(Tuning::SOFTWARE.apply(text).unwrap()).unwrap();
        for (i, spec) in specs.into_iter().enumerate() {
            // Groups of 9x11 dy positions pass 2 x 32 lanes.
            let want = !(i == 2 && text.starts_with("grad_input_col=32,"));
            assert_eq!(col(&tuned, spec), want, "{text}: {spec:?}");
            check(&tuned, spec);
            grids.insert((i, Case::new(&tuned, spec, 1).plan.signature()));
        }
    }
    // Images per workgroup and positions per invocation change with the lanes and the GPU's size.
    assert!(grids.iter().filter(|(i, _)| *i == 0).count() >= 3, "LeNet's conv2 took the same grid everywhere");
    let tuned = gpu.with_tuning(Tuning::SOFTWARE.apply("grad_input_col=64,split_threads=1").unwrap()).unwrap();
    let conv1 = Spec::new(2, 3, 1, 6, [28, 28], [5, 5]);
    assert!(!col(&tuned, conv1));
    check(&tuned, conv1);
    let small = gpu.with_tuning(Tuning::SOFTWARE.apply("grad_input_col=64").unwrap()).unwrap();
    assert!(!col(&small, specs[0]), "5 images x 2 models fill a quarter of split_threads=32768");
}

#[test]
fn stride_and_padding() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(3, 2, 5, 7, [9, 11], [3, 3]).stride([2, 2]).padding([1, 1]));
    check(gpu, Spec::new(2, 3, 3, 5, [7, 8], [5, 5]).padding([2, 2]).no_bias());
    check(gpu, Spec::new(2, 2, 4, 6, [10, 9], [5, 5]).stride([2, 2]).padding([2, 2]));
    check(gpu, Spec::new(2, 1, 2, 3, [8, 8], [3, 3]).stride([3, 3]).padding([1, 1]));
    // Padding wider than the kernel's reach: border outputs see no input at all.
    check(gpu, Spec::new(2, 8, 3, 4, [6, 5], [1, 1]).padding([1, 2]));
    check(gpu, Spec::new(2, 4, 2, 3, [5, 6], [3, 3]).padding([3, 2]).stride([2, 2]).dilation([2, 1]));
}

#[test]
fn dilation() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(3, 2, 4, 3, [10, 9], [3, 3]).dilation([2, 2]));
    check(gpu, Spec::new(2, 2, 3, 5, [11, 10], [3, 3]).dilation([2, 2]).padding([2, 2]).stride([2, 2]).no_bias());
}

#[test]
fn channel_groups() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(3, 2, 6, 4, [7, 7], [3, 3]).padding([1, 1]).groups(2));
    check(gpu, Spec::new(2, 3, 6, 9, [8, 9], [3, 3]).groups(3).stride([2, 2]).no_bias());
    // Depthwise with a channel multiplier of 2, and groups with several channels each side.
    check(gpu, Spec::new(2, 2, 5, 10, [6, 7], [3, 3]).groups(5).padding([1, 1]));
    check(gpu, Spec::new(2, 2, 12, 18, [6, 6], [3, 3]).groups(3).padding([1, 1]));
}

#[test]
fn kernel_sizes_1x1_3x3_5x5() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(3, 2, 7, 5, [6, 5], [1, 1]));
    check(gpu, Spec::new(2, 2, 7, 5, [7, 6], [1, 1]).stride([2, 2]).no_bias());
    check(gpu, Spec::new(2, 2, 3, 6, [9, 7], [3, 3]));
    check(gpu, Spec::new(2, 2, 3, 6, [9, 7], [5, 5]).padding([1, 2]));
}

/// The direct kernels slide a window of up to 8 columns per tap: kernel widths 1 to 8, odd
/// output widths, 1 to 17 output channels (blocks of up to 4 and 8); wider kernels take the
/// general kernels.
#[test]
fn direct_kernel_widths() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(2, 3, 3, 5, [6, 13], [2, 6]).padding([1, 2]));
    check(gpu, Spec::new(2, 2, 2, 17, [5, 11], [3, 7]).padding([0, 6]).no_bias());
    check(gpu, Spec::new(1, 3, 4, 1, [4, 9], [1, 8]).padding([0, 3]));
    check(gpu, Spec::new(2, 2, 4, 6, [3, 16], [2, 8]).groups(2));
    check(gpu, Spec::new(2, 2, 3, 4, [5, 12], [3, 9]).padding([1, 4]));
    check(gpu, Spec::new(3, 1, 1, 8, [9, 4], [4, 4]).padding([3, 3]));
}

/// The direct kernels read rows as vec4: unshifted where rows and windows start at multiples
/// of 4 columns, shifted into place elsewhere. Padding of 4 (the window's first vec4 all
/// outside the row, then not loaded), windows entering at a multiple of 4 or not, output
/// rows of 12 and 9.
#[test]
fn direct_vec4_row_alignments() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(2, 2, 3, 5, [6, 8], [3, 5]).padding([1, 4]));
    check(gpu, Spec::new(2, 2, 3, 4, [5, 8], [2, 8]).padding([0, 4]).no_bias());
    check(gpu, Spec::new(2, 3, 2, 3, [4, 16], [3, 5]));
    // The window's vec4s outside the row for every strip are not loaded: with a 12-column
    // strip and a 8-wide kernel padded by 4 over 8 columns, 3 of 5 (columns -4.., 8.., 12..).
    let sw = gpu.with_tuning(Tuning::SOFTWARE).unwrap();
    let kernels = Case::new(&sw, Spec::new(2, 2, 3, 4, [5, 8], [2, 8]).padding([0, 4]), 1).plan.dispatch_kernels();
    let forward = kernels.iter().find(|k| k.0 == "conv2d").unwrap();
    assert!(forward.1.contains("XA=1,XSKIP=25)"), "{forward:?}");
}

/// One input channel whose kernel rows all land inside the input (LeNet's conv1): the direct
/// forward kernel writes its row loop out (`FIX_ROWS`, constant weight addresses), for
/// kernel heights 1 to 7, strips of 8 and 12, 3 to 9 output channels; with rows padded the
/// loop stays.
#[test]
fn direct_rows_written_out() {
    let gpu = gpu_or_skip!();
    let sw = gpu.with_tuning(Tuning::SOFTWARE).unwrap();
    let forward = |spec: Spec| -> String {
        let kernels = Case::new(&sw, spec, 1).plan.dispatch_kernels();
        kernels.iter().find(|k| k.0 == "conv2d").unwrap().1.clone()
    };
    for (hw, k, o) in [([9, 16], [3, 3], 5), ([12, 24], [5, 5], 6), ([10, 13], [7, 4], 9), ([4, 8], [1, 2], 3)] {
        check(&sw, Spec::new(2, 3, 1, o, hw, k));
        let f = forward(Spec::new(2, 3, 1, o, hw, k));
        assert!(f.starts_with("conv::conv2d_direct") && f.contains(&format!("FIX_ROWS={})", k[0])), "{f}");
    }
    check(&sw, Spec::new(2, 3, 1, 4, [9, 16], [3, 3]).padding([1, 0]));
    let f = forward(Spec::new(2, 3, 1, 4, [9, 16], [3, 3]).padding([1, 0]));
    assert!(f.starts_with("conv::conv2d_direct") && !f.contains("FIX_ROWS"), "{f}");
}

/// The direct kernels take 12-column strips (three vec4) where they cover a row in less work
/// than 8-column ones (widths 9-12, 23-24, 33-36 here): exact and ragged last strips, padding
/// on both sides, channel blocks of 3 and 4 with a clamped last block, groups, one model,
/// one image. Both the forward pass (output width) and the input gradient (input width).
#[test]
fn direct_twelve_column_strips() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(1, 1, 5, 6, [7, 9], [5, 5]).padding([2, 2]));
    check(gpu, Spec::new(3, 2, 4, 7, [6, 35], [3, 3]));
    check(gpu, Spec::new(2, 3, 6, 9, [5, 24], [3, 5]).padding([1, 2]).groups(3));
    check(gpu, Spec::new(2, 1, 16, 6, [8, 11], [5, 5]).padding([4, 4]).no_bias());
    check(gpu, Spec::new(5, 3, 2, 5, [4, 10], [2, 1]).padding([1, 0]));
}

/// `conv2d_direct` stages its workgroup's weights (512 vec4 of output channels per tap): a
/// layer whose input channels' weights pass that is summed over chunks of channels by
/// further dispatches that continue the sums in y (the last one adds the bias). 60 -> 60 channels of 3x3
/// taps: 2 chunks with 4 output channels per invocation, 3 with 8 (two vec4 per tap), for the
/// forward pass and the input gradient; rows not starting at a multiple of 4 columns and
/// ones that do (the vec4 row loads' shifted and aligned forms), output rows of whole vec4s
/// (`conv2d_direct_y4`: continued and stored a vec4 at a time).
#[test]
fn direct_channel_chunks() {
    let gpu = gpu_or_skip!();
    for (tuning, chunks) in [("conv_ob=4", 2), ("conv_ob=8", 3)] {
        let tuned = gpu.with_tuning(Tuning::SOFTWARE.apply(tuning).unwrap()).unwrap();
        for spec in [
            Spec::new(2, 2, 60, 60, [5, 7], [3, 3]).padding([1, 1]),
            Spec::new(1, 3, 60, 60, [4, 8], [3, 3]).padding([2, 0]),
            // Output rows of 20 (vec4 stores, the last strip's second vec4 past the row).
            Spec::new(2, 2, 60, 60, [5, 22], [3, 3]),
        ] {
            let labels = check(&tuned, spec);
            for l in ["conv2d", "conv2d_grad_input"] {
                let n = labels.iter().filter(|d| **d == l).count();
                assert_eq!(n, chunks, "{tuning} {spec:?}: {l} in {n} dispatches ({labels:?})");
            }
        }
    }
}

/// `conv2d_grad_weight_direct` takes three kernel rows (c, ky) per invocation where that pads
/// them no more than two would (9, 30, 27 per group, 12, 5 here: triples within a channel and
/// across two, a masked third row with 5), two elsewhere (25 and 14: a masked second row with
/// 25); at most 12 rows of accumulators (OB 4 with three, 6 with two), in groups too.
#[test]
fn direct_weight_gradient_kernel_row_triples() {
    let gpu = &gpu_or_skip!().with_tuning(Tuning::SOFTWARE).unwrap();
    for (spec, gr, ob) in [
        (Spec::new(2, 2, 3, 5, [7, 9], [3, 5]).padding([1, 2]), 3, 3),
        (Spec::new(2, 3, 5, 9, [6, 8], [5, 5]), 2, 5),
        (Spec::new(1, 2, 6, 16, [12, 12], [5, 5]), 3, 4),
        (Spec::new(2, 2, 18, 8, [5, 6], [3, 3]).groups(2).padding([1, 1]).no_bias(), 3, 4),
        (Spec::new(2, 2, 4, 7, [6, 6], [3, 3]), 3, 4),
        (Spec::new(1, 2, 7, 13, [5, 8], [2, 4]).padding([0, 1]), 2, 5),
        (Spec::new(2, 2, 1, 6, [8, 8], [5, 5]), 3, 3),
        (Spec::new(2, 1, 1, 5, [6, 7], [1, 1]), 1, 5),
    ] {
        check(gpu, spec);
        let kernels = Case::new(gpu, spec, 1).plan.dispatch_kernels();
        let wgrad = kernels.iter().find(|k| k.0 == "conv2d_grad_weight").unwrap();
        assert!(
            wgrad.1.contains(&format!("OB={ob},GB=")) && wgrad.1.contains(&format!("GR={gr},")),
            "{spec:?}: {wgrad:?}"
        );
    }
}

/// The software tuning's strips for LeNet (`conv_ob` 8): conv1 (one input channel) 6 output
/// channels by 8 columns (12 would hold 18 vec4 accumulators), conv2 8 by 8, conv2's input
/// gradient 3 by 12 (6 would need its 16 input channels' weights in two stages); a tuning
/// that fixes the strip width keeps it.
#[test]
fn direct_strip_shapes() {
    let gpu = &gpu_or_skip!().with_tuning(Tuning::SOFTWARE).unwrap();
    let shape = |gpu: &modelbatch::Gpu, spec: Spec, label: &str| {
        let kernels = Case::new(gpu, spec, 1).plan.dispatch_kernels();
        let k = &kernels.iter().find(|k| k.0 == label).unwrap().1;
        let at = k.find("OB=").unwrap();
        k[at..].split(",GB").next().unwrap().to_string()
    };
    let conv1 = Spec::new(2, 4, 1, 6, [28, 28], [5, 5]);
    let conv2 = Spec::new(2, 4, 6, 16, [12, 12], [5, 5]);
    assert_eq!(shape(gpu, conv1, "conv2d"), "OB=6,SW=8");
    assert_eq!(shape(gpu, conv2, "conv2d"), "OB=8,SW=8");
    assert_eq!(shape(gpu, conv2, "conv2d_grad_input"), "OB=3,SW=12");
    let wide = gpu.with_tuning(Tuning::SOFTWARE.apply("conv_strip=12").unwrap()).unwrap();
    assert_eq!(shape(&wide, conv1, "conv2d"), "OB=6,SW=12");
    for spec in [conv1, conv2] {
        check(gpu, spec);
    }
}

#[test]
fn non_square_kernels_and_inputs() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(2, 3, 9, 6, [7, 10], [3, 2]).stride([2, 1]).padding([1, 0]).dilation([1, 2]).groups(3));
    check(gpu, Spec::new(3, 2, 2, 3, [5, 12], [1, 4]).stride([1, 3]).padding([0, 2]).no_bias());
    check(gpu, Spec::new(2, 2, 3, 4, [13, 4], [5, 2]).dilation([2, 1]).padding([1, 1]));
}

#[test]
fn seventeen_models_odd_sizes() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(17, 5, 3, 5, [8, 6], [3, 3]).padding([1, 1]));
}

/// Rows not a multiple of the 4x64 tile and several tiles per model, columns past 4.
#[test]
fn ragged_tiles() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(2, 3, 5, 13, [19, 17], [3, 3]).padding([1, 1]));
    // 1x1 with a single output position: rows = N, every block mostly clamped.
    check(gpu, Spec::new(3, 5, 5, 3, [1, 1], [1, 1]));
}

/// More than 65,535 (model, group) pairs: the z axis is split over several dispatches.
#[test]
fn z_axis_past_the_dispatch_limit() {
    let gpu = gpu_or_skip!();
    let spec = Spec::new(32_768, 1, 2, 2, [2, 1], [1, 1]).groups(2);
    let case = Case::new(gpu, spec, 99);
    case.check_reference();
    let labels = case.labels();
    for l in ["conv2d", "conv2d_grad_input", "conv2d_grad_weight"] {
        // (The input gradient may take its products, `grad_input_col`, on the GPU tuning.)
        let count = labels.iter().filter(|&&x| x == l || (x == "conv2d_grad_input_col" && l == "conv2d_grad_input"));
        assert_eq!(count.count(), 2, "{l} should take two dispatches: {labels:?}");
    }
}

/// More than 65,535 workgroups of positions in one model: the x axis is split over several
/// dispatches.
#[test]
fn x_axis_past_the_dispatch_limit() {
    let gpu = gpu_or_skip!();
    // The general kernels (dilation 2 keeps stride-1 convolutions off the direct kernels; a
    // 1x1 kernel ignores it): 64 invocations per workgroup, one per position (and block of 4
    // images): 65,535 workgroups hold 4,194,240 positions; 2100 x 2100 has more. No bias: its
    // gradient, a `sum` over 4.4M positions, is blocked (see below).
    let spec = Spec::new(1, 1, 1, 1, [2100, 2100], [1, 1]).dilation([2, 2]).no_bias();
    let case = Case::new(gpu, spec, 7);
    case.check_reference();
    let labels = case.labels();
    for l in ["conv2d", "conv2d_grad_input"] {
        assert_eq!(labels.iter().filter(|&&x| x == l).count(), 2, "{l} should take two dispatches: {labels:?}");
    }
}

/// The direct (stride-1) kernels: one invocation per image and strip of 8 output columns, 64
/// per workgroup, so 65,535 workgroups hold 4,194,240 strips; 4,200,000 one-pixel images have
/// more. (Not the tiled kernels, whose workgroups take up to 1,024 positions.)
#[test]
fn direct_x_axis_past_the_dispatch_limit() {
    let gpu = gpu_or_skip!();
    let gpu = &gpu.with_tuning(gpu.tuning().apply("conv_tile=0,grad_weight_tile=0,grad_input_col=0").unwrap()).unwrap();
    let spec = Spec::new(1, 4_200_000, 1, 1, [1, 1], [1, 1]).no_bias();
    let case = Case::new(gpu, spec, 8);
    case.check_reference();
    let labels = case.labels();
    for l in ["conv2d", "conv2d_grad_input"] {
        assert_eq!(labels.iter().filter(|&&x| x == l).count(), 2, "{l} should take two dispatches: {labels:?}");
    }
    // The input gradient's products (`grad_input_col`) take 64 one-pixel images per
    // workgroup of 32 lanes: 65,625 workgroups.
    let gpu = &gpu.with_tuning(gpu.tuning().apply("grad_input_col=32,split_threads=1").unwrap()).unwrap();
    let case = Case::new(gpu, spec, 8);
    case.check_reference();
    let labels = case.labels();
    assert_eq!(labels.iter().filter(|&&x| x == "conv2d_grad_input_col").count(), 2, "{labels:?}");
}

/// A GPU's wide split-K on a very long depth (4.2 million one-pixel images) stays within the
/// splits one invocation's loop may add (lavapipe's budget), instead of refusing the plan.
#[test]
fn wide_split_k_on_a_long_depth_stays_within_the_loop_budget() {
    let gpu = gpu_or_skip!().with_tuning(Tuning::GPU).unwrap();
    let spec = Spec::new(1, 4_200_000, 1, 1, [1, 1], [1, 1]).no_bias();
    Case::new(&gpu, spec, 9).check_reference();
}

/// The direct kernels give each output row its own workgroup row (times the blocks of up to
/// 4 output channels): past 65,535 rows the forward pass and the input gradient fall back to
/// the general kernels; the direct weight gradient splits its 70,000 rows.
#[test]
fn direct_rows_past_the_dispatch_limit() {
    let gpu = gpu_or_skip!();
    check(gpu, Spec::new(1, 1, 1, 2, [70_000, 1], [1, 1]));
    // 9 output channels: 3 blocks of 3, 33,000 rows: 99,000 workgroup rows.
    check(gpu, Spec::new(1, 1, 2, 9, [33_000, 3], [3, 3]).padding([1, 1]));
}

/// lavapipe stops every loop of an invocation once 65,535 iterations (all loops together)
/// have run. A weight gradient over more positions than that must split its depth, and the
/// forward pass may use nearly the whole budget.
#[test]
fn long_reductions_within_the_loop_budget() {
    let gpu = gpu_or_skip!();
    // dw sums over N * OH * OW = 2 * 200 * 200 = 80,000 positions.
    let case = Case::new(gpu, Spec::new(2, 2, 1, 2, [200, 200], [1, 1]).no_bias(), 21);
    case.check_reference();
    // The forward depth C * 3 * 3 = 63,000 taps per output, one invocation each.
    let case = Case::new(gpu, Spec::new(1, 1, 7000, 2, [3, 3], [3, 3]), 22);
    case.check_reference();
    // The input gradient's depth O * 3 * 3 = 63,000 at the centre of a padded 3x3 input.
    let case = Case::new(gpu, Spec::new(1, 1, 2, 7000, [3, 3], [3, 3]).padding([1, 1]), 24);
    case.check_reference();
}

#[test]
fn depth_past_the_loop_budget_is_refused() {
    let gpu = gpu_or_skip!();
    let spec = Spec::new(1, 1, 8192, 1, [3, 3], [3, 3]);
    let mut graph = Graph::new(1);
    let x = graph.input("x", &spec.x_shape(), DType::F32).unwrap();
    let w = graph.input("w", &spec.w_shape(), DType::F32).unwrap();
    let y = graph.conv2d(x, w, None, spec.geom()).unwrap();
    let err = Plan::new(gpu, &graph, &[y], &[]).err().expect("a 73,728-tap depth compiled");
    assert!(err.to_string().contains("loop iterations"), "{err}");
}

/// Regression: the bias gradient is autograd's `sum` of dy over (N, OH, OW), 36,864
/// positions for LeNet's first layer at N=64. lavapipe cuts an invocation's loops off after
/// 65,535 iterations, which broke a sum with one invocation per output; the sum now spreads
/// each output over a workgroup.
#[test]
fn bias_gradient_of_lenet_conv1_at_batch_64() {
    let gpu = gpu_or_skip!();
    let case = Case::new(gpu, Spec::new(1, 64, 1, 6, [28, 28], [5, 5]), 23);
    case.check_reference();
}

fn per_model(v: &[f32], g: usize, m: usize) -> &[f32] {
    let per = v.len() / g;
    &v[m * per..(m + 1) * per]
}

#[test]
fn models_are_isolated() {
    let gpu = gpu_or_skip!();
    let spec = Spec::new(5, 3, 6, 9, [9, 8], [3, 3]).stride([2, 1]).padding([1, 2]).groups(3);
    let case = Case::new(gpu, spec, 5);
    let (y0, grads0) = case.run();
    // Forward: perturb model 0's input, weight and bias; every other model is bitwise equal.
    for (name, id, values) in &case.leaves {
        let mut v = values.clone();
        let per = v.len() / spec.g;
        for e in &mut v[..per] {
            *e = *e * 1.5 + 0.25;
        }
        case.plan.write(*id, &v).unwrap();
        let (y1, _) = case.run();
        assert_ne!(per_model(&y0, spec.g, 0), per_model(&y1, spec.g, 0), "perturbing model 0's {name}");
        for m in 1..spec.g {
            assert_eq!(per_model(&y0, spec.g, m), per_model(&y1, spec.g, m), "model {m} after model 0's {name}");
        }
        case.plan.write(*id, values).unwrap();
    }
    // Backward: a seed nonzero only in model 2 leaves exact zeros in every other model's
    // gradients, and model 2's gradients as they were.
    let r_id = case.plan.find("seed_r").unwrap();
    let mut r = vec![0.0f32; case.r.len()];
    let per = r.len() / spec.g;
    r[2 * per..3 * per].copy_from_slice(&case.r[2 * per..3 * per]);
    case.plan.write(r_id, &r).unwrap();
    let (_, grads1) = case.run();
    for (k, (g0, g1)) in grads0.iter().zip(&grads1).enumerate() {
        let name = case.leaves[k].0;
        for m in 0..spec.g {
            if m == 2 {
                assert_eq!(per_model(g0, spec.g, m), per_model(g1, spec.g, m), "model 2's d{name}");
                assert!(per_model(g1, spec.g, m).iter().any(|&v| v != 0.0), "model 2's d{name} is all zero");
            } else {
                assert!(per_model(g1, spec.g, m).iter().all(|&v| v == 0.0), "model {m}'s d{name} is not zero");
            }
        }
    }
}

#[test]
fn mismatched_weight_is_a_shape_error() {
    let mut graph = Graph::new(2);
    let x = graph.param("x", &[1, 6, 8, 8]).unwrap();
    let w = graph.param("w", &[4, 6, 3, 3]).unwrap();
    let geom = Conv2dGeom { kernel: [3, 3], stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 2 };
    assert!(graph.conv2d(x, w, None, geom).is_err(), "weight [4, 6, 3, 3] accepted with groups=2 and 6 channels");
}

/// Median seconds of 5 runs of `plan.run()` followed by a readback of `out`, after a warm-up.
fn median_run(plan: &Plan, out: TensorId) -> f64 {
    plan.run().unwrap();
    plan.read_blocking(out).unwrap();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            plan.run().unwrap();
            plan.read_blocking(out).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

/// Model `m`'s slice of a `[G, ...]` tensor.
fn model_slice(v: &[f32], g: usize, m: usize) -> Vec<f32> {
    per_model(v, g, m).to_vec()
}

/// LeNet-sized convolutions at G=64, N=64: forward and both backward products of both
/// layers, timed around `plan.run()` and a readback (median of 5 runs), all products
/// together (with the bias gradient's `sum`) and each product alone, next to the crate's
/// batched GEMM on the forward product's im2col sizes. Model 5's results are checked
/// against the CPU reference. Run with
/// `cargo test --release --test conv -- --ignored --nocapture bench`.
#[test]
#[ignore = "benchmark"]
fn bench_lenet_g64_n64() {
    let gpu = gpu_or_skip!();
    let (g, n, m) = (64, 64, 5);
    let layers = [Spec::new(g, n, 1, 6, [28, 28], [5, 5]), Spec::new(g, n, 6, 16, [12, 12], [5, 5])];
    let (mut all_flops, mut all_s) = (0.0, 0.0);
    for spec in layers {
        let [oh, ow] = spec.out();
        let what = format!("conv {}->{} 5x5 on {}x{}, G={g} N={n}", spec.c, spec.o, spec.h, spec.w);
        let flops = 2.0 * (g * n * spec.o * oh * ow * spec.cg() * 25) as f64;
        // Everything at once, as a training step runs it.
        let case = Case::new(gpu, spec, 3);
        let (y, grads) = case.run();
        let one = Spec { g: 1, ..spec };
        let (x, w, b) = (&case.leaves[0].2, &case.leaves[1].2, &case.leaves[2].2);
        let (xm, wm, bm, rm) =
            (model_slice(x, g, m), model_slice(w, g, m), model_slice(b, g, m), model_slice(&case.r, g, m));
        let [dfwd, din, dwt] = spec.depths();
        let atol = |depth: usize| (ATOL_PER_TERM * depth as f64).max(1e-6);
        assert_close(
            &format!("{what}: forward"),
            per_model(&y, g, m),
            &one.forward_ref(&xm, &wm, Some(&bm)),
            RTOL,
            atol(dfwd),
        );
        let (dx, dw, db) = one.grads_ref(&xm, &wm, &rm);
        assert_close(&format!("{what}: dx"), per_model(&grads[0], g, m), &dx, RTOL, atol(din));
        assert_close(&format!("{what}: dw"), per_model(&grads[1], g, m), &dw, RTOL, atol(dwt));
        // Not dbias: autograd's `sum` is wrong on lavapipe at these sizes (see
        // bias_gradient_of_lenet_conv1_at_batch_64).
        let _ = db;
        let t = median_run(&case.plan, case.grads[1]);
        println!(
            "{what}: forward + grad input + grad weight (+ bias sum): {:.1} ms, {:.2} GFLOP/s ({:?})",
            t * 1e3,
            3.0 * flops / t / 1e9,
            case.labels()
        );
        all_flops += 3.0 * flops;
        all_s += t;
        // Each product alone, on the same data (model m checked again).
        let mut graph = Graph::new(g);
        let xt = graph.input("x", &spec.x_shape(), DType::F32).unwrap();
        let wt = graph.input("w", &spec.w_shape(), DType::F32).unwrap();
        let dyt = graph.input("dy", &[n, spec.o, oh, ow], DType::F32).unwrap();
        let products = [
            ("forward", graph.conv2d(xt, wt, None, spec.geom()).unwrap()),
            ("grad_input", graph.conv2d_grad_input(dyt, wt, &[g, n, spec.c, spec.h, spec.w], spec.geom()).unwrap()),
            ("grad_weight", graph.conv2d_grad_weight(dyt, xt, &[g, spec.o, spec.c, 5, 5], spec.geom()).unwrap()),
        ];
        let want = [one.forward_ref(&xm, &wm, None), dx, dw];
        for ((name, out), want) in products.into_iter().zip(&want) {
            let plan = Plan::new(gpu, &graph, &[out], &[]).unwrap();
            for (t, v) in [(xt, x), (wt, w), (dyt, &case.r)] {
                plan.write(t, v).unwrap();
            }
            let t = median_run(&plan, out);
            let got = plan.read_blocking(out).unwrap();
            assert_close(
                &format!("{what}: {name} alone"),
                per_model(&got, g, m),
                want,
                RTOL,
                atol(dfwd.max(din).max(dwt)),
            );
            println!("    {name}: {:.1} ms, {:.2} GFLOP/s", t * 1e3, flops / t / 1e9);
        }
        // The crate's batched GEMM on the forward product's sizes (explicit im2col), G=8.
        let (gm, rows, k) = (8, n * oh * ow, spec.c * 25);
        let mut graph = Graph::new(gm);
        let a = graph.input("a", &[rows, k], DType::F32).unwrap();
        let bt = graph.input("b", &[spec.o, k], DType::F32).unwrap();
        let c = graph.matmul(a, bt, None, false, true).unwrap();
        let plan = Plan::new(gpu, &graph, &[c], &[]).unwrap();
        plan.write(a, &randn(1, gm * rows * k)).unwrap();
        plan.write(bt, &randn(2, gm * spec.o * k)).unwrap();
        let t = median_run(&plan, c);
        println!(
            "    reference: matmul G={gm} [{rows}x{k}]x[{k}x{}]: {:.1} ms, {:.2} GFLOP/s",
            spec.o,
            t * 1e3,
            2.0 * (gm * rows * k * spec.o) as f64 / t / 1e9
        );
    }
    println!("LeNet's two convolutions, all three products, G={g} N={n}: {:.2} GFLOP/s", all_flops / all_s / 1e9);
}
