//! Fused conv → relu (relu in the convolution's epilogue) and max-pooling gradient with
//! relu's derivative give bit for bit the values and gradients of the separate ops, for the
//! direct (stride 1) and the general (strided) convolution kernels, and the plan runs fewer
//! dispatches.

mod common;

use modelbatch::{autograd, Conv2dGeom, DType, Graph, Plan, Pool2dGeom};

fn run(gpu: &modelbatch::Gpu, fused: bool, geom: Conv2dGeom, c: usize, hw: usize) -> (Vec<Vec<u32>>, usize) {
    let g = 3;
    let mut graph = Graph::new(g);
    let x = graph.param("x", &[5, c, hw, hw]).unwrap();
    let w = graph.param("w", &[4, c, 3, 3]).unwrap();
    let b = graph.param("b", &[4]).unwrap();
    let y = if fused {
        graph.conv2d_relu(x, w, Some(b), geom).unwrap()
    } else {
        let c = graph.conv2d(x, w, Some(b), geom).unwrap();
        graph.unary(modelbatch::Unary::Relu, c).unwrap()
    };
    let pool =
        Pool2dGeom { kernel: [2, 2], stride: [2, 2], padding: [0, 0], dilation: [1, 1], count_include_pad: true };
    let p = graph.maxpool2d(y, pool).unwrap();
    let rs = graph.shape(p)[1..].to_vec();
    let r = graph.input("r", &rs, DType::F32).unwrap();
    let grads = autograd::grad(&mut graph, p, Some(r), &[x, w, b]).unwrap();
    let keep: Vec<_> = [p].into_iter().chain(grads.iter().map(|d| d.unwrap())).collect();
    let plan = Plan::new(gpu, &graph, &keep, &[]).unwrap();
    plan.write(x, &common::randn(1, g * 5 * c * hw * hw)).unwrap();
    plan.write(w, &common::randn(2, g * 4 * c * 9)).unwrap();
    plan.write(b, &common::randn(3, g * 4)).unwrap();
    let rn: usize = graph.shape(p).iter().product();
    plan.write(r, &common::randn(4, rn)).unwrap();
    plan.run().unwrap();
    let out = keep.iter().map(|&t| plan.read_blocking(t).unwrap().iter().map(|v| v.to_bits()).collect()).collect();
    (out, plan.stats().dispatches)
}

#[test]
fn fused_conv_relu_and_pool_gradient_equal_the_separate_ops() {
    let gpu = gpu_or_skip!();
    // (60 input channels: the direct kernel sums them in two dispatches, the second
    // continuing the first's sums in y and applying relu. 16x16: the pooling takes 4
    // windows per invocation, its gradient too.)
    for (stride, padding, c, hw) in [(1, 1, 3, 13), (2, 0, 3, 13), (1, 1, 60, 13), (1, 1, 3, 16)] {
        let geom =
            Conv2dGeom { kernel: [3, 3], stride: [stride; 2], padding: [padding; 2], dilation: [1, 1], groups: 1 };
        let (plain, n_plain) = run(gpu, false, geom, c, hw);
        let (fused, n_fused) = run(gpu, true, geom, c, hw);
        for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
            assert_eq!(a, b, "stride {stride}: output {i} differs");
        }
        assert!(n_fused + 2 <= n_plain, "stride {stride}: {n_fused} dispatches fused vs {n_plain}");
    }
}

fn run_linear(gpu: &modelbatch::Gpu, fused: bool) -> (Vec<Vec<u32>>, usize) {
    let g = 3;
    let mut graph = Graph::new(g);
    let x = graph.param("x", &[2, 7, 19]).unwrap();
    let w = graph.param("w", &[13, 19]).unwrap();
    let b = graph.param("b", &[13]).unwrap();
    let y = if fused {
        graph.linear_relu(x, w, Some(b)).unwrap()
    } else {
        let l = graph.linear(x, w, Some(b)).unwrap();
        graph.relu(l).unwrap()
    };
    let r = graph.input("r", &[2, 7, 13], DType::F32).unwrap();
    let grads = autograd::grad(&mut graph, y, Some(r), &[x, w, b]).unwrap();
    let keep: Vec<_> = [y].into_iter().chain(grads.iter().map(|d| d.unwrap())).collect();
    let plan = Plan::new(gpu, &graph, &keep, &[]).unwrap();
    plan.write(x, &common::randn(5, g * 2 * 7 * 19)).unwrap();
    plan.write(w, &common::randn(6, g * 13 * 19)).unwrap();
    plan.write(b, &common::randn(7, g * 13)).unwrap();
    plan.write(r, &common::randn(8, g * 2 * 7 * 13)).unwrap();
    plan.run().unwrap();
    let out = keep.iter().map(|&t| plan.read_blocking(t).unwrap().iter().map(|v| v.to_bits()).collect()).collect();
    (out, plan.stats().dispatches)
}

#[test]
fn fused_linear_relu_equals_the_separate_ops() {
    let gpu = gpu_or_skip!();
    let (plain, n_plain) = run_linear(gpu, false);
    let (fused, n_fused) = run_linear(gpu, true);
    for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
        assert_eq!(a, b, "output {i} differs");
    }
    assert_eq!(n_fused + 1, n_plain, "the relu pass is gone");
}

/// Two linear layers, the first with relu: `linear_relu` lets the second layer's input
/// gradient (a GEMM) apply relu's derivative in its epilogue. With `shared`, the relu output
/// also feeds a third product, so its gradient is a sum and stays a separate op.
fn run_mlp(gpu: &modelbatch::Gpu, fused: bool, shared: bool) -> (Vec<Vec<u32>>, usize, Vec<&'static str>) {
    let g = 3;
    let mut graph = Graph::new(g);
    let x = graph.param("x", &[2, 7, 19]).unwrap();
    let w1 = graph.param("w1", &[13, 19]).unwrap();
    let b1 = graph.param("b1", &[13]).unwrap();
    let w2 = graph.param("w2", &[16, 13]).unwrap();
    let b2 = graph.param("b2", &[16]).unwrap();
    let h = if fused {
        graph.linear_relu(x, w1, Some(b1)).unwrap()
    } else {
        let l = graph.linear(x, w1, Some(b1)).unwrap();
        graph.relu(l).unwrap()
    };
    let mut y = graph.linear(h, w2, Some(b2)).unwrap();
    if shared {
        let other = graph.linear(h, w2, None).unwrap();
        y = graph.add(y, other).unwrap();
    }
    let r = graph.input("r", &[2, 7, 16], DType::F32).unwrap();
    let params = [x, w1, b1, w2, b2];
    let grads = autograd::grad(&mut graph, y, Some(r), &params).unwrap();
    let keep: Vec<_> = [y].into_iter().chain(grads.iter().map(|d| d.unwrap())).collect();
    let plan = Plan::new(gpu, &graph, &keep, &[]).unwrap();
    for (i, &p) in params.iter().enumerate() {
        let n: usize = graph.shape(p).iter().product();
        // Some pre-activations exactly zero and negative: relu's derivative is 0 there.
        let v: Vec<f32> = common::randn(20 + i as u64, n).iter().map(|v| (v * 4.0).round() / 4.0).collect();
        plan.write(p, &v).unwrap();
    }
    plan.write(r, &common::randn(30, g * 2 * 7 * 16)).unwrap();
    plan.run().unwrap();
    let out = keep.iter().map(|&t| plan.read_blocking(t).unwrap().iter().map(|v| v.to_bits()).collect()).collect();
    (out, plan.stats().dispatches, plan.dispatch_labels())
}

#[test]
fn relu_gradient_joins_the_gemm_that_feeds_it() {
    let gpu = gpu_or_skip!();
    // The register or tiled kernels, and `gemm_split`: the input gradient with relu's
    // derivative (16 deep, over the second layer's outputs) in 2 slices.
    let split = gpu.with_tuning(gpu.tuning().apply("gemm_split=16777216").unwrap()).unwrap();
    for (gpu, shared) in [(gpu, false), (gpu, true), (&split, false)] {
        let (plain, n_plain, _) = run_mlp(gpu, false, shared);
        let (fused, n_fused, labels) = run_mlp(gpu, true, shared);
        for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
            assert_eq!(a, b, "shared {shared}: output {i} differs");
        }
        let split_ran = labels.contains(&"gemm_split");
        assert_eq!(split_ran, gpu.tuning().gemm_split > 0, "{labels:?}");
        let relu_grads = labels.iter().filter(|l| **l == "relu_grad").count();
        if shared {
            assert_eq!(relu_grads, 1, "a summed gradient keeps the separate op: {labels:?}");
            assert_eq!(n_fused + 1, n_plain, "only the forward relu pass is gone");
        } else {
            assert_eq!(relu_grads, 0, "{labels:?}");
            assert_eq!(n_fused + 2, n_plain, "the relu pass and its gradient pass are gone");
        }
    }
}

#[test]
fn matmul_relu_grad_checks_shapes() {
    let mut graph = Graph::new(2);
    let a = graph.param("a", &[3, 4]).unwrap();
    let b = graph.param("b", &[4, 5]).unwrap();
    let y = graph.param("y", &[3, 6]).unwrap();
    let err = graph.matmul_relu_grad(a, b, false, false, y).unwrap_err().to_string();
    assert!(err.contains("matmul_relu_grad") && err.contains("[2, 3, 6]") && err.contains("[2, 3, 5]"), "{err}");
    let bad = graph.param("bad", &[7, 5]).unwrap();
    let err = graph.matmul_relu_grad(a, bad, false, false, y).unwrap_err().to_string();
    assert!(err.contains("matmul_relu_grad") && err.contains("inner dimensions"), "{err}");
}

/// A weight gradient dy^T x followed by the bias gradient sum(dy, [1]) of the same dy: the
/// GEMM also writes the sums (no `sum` dispatch), bit for bit the separate sum's values (both
/// add the samples in order under `Tuning::SOFTWARE`). With the sum built first, nothing folds.
fn run_weight_and_bias(gpu: &modelbatch::Gpu, out: usize, fold: bool) -> (Vec<Vec<u32>>, Vec<&'static str>) {
    let (g, k, inp) = (3, 301, 20);
    let mut graph = Graph::new(g);
    let dy = graph.input("dy", &[k, out], DType::F32).unwrap();
    let x = graph.input("x", &[k, inp], DType::F32).unwrap();
    let (dw, db) = if fold {
        let dw = graph.matmul(dy, x, None, true, false).unwrap();
        (dw, graph.sum(dy, &[1]).unwrap())
    } else {
        let db = graph.sum(dy, &[1]).unwrap();
        (graph.matmul(dy, x, None, true, false).unwrap(), db)
    };
    let plan = Plan::new(gpu, &graph, &[dw, db], &[]).unwrap();
    plan.write(dy, &common::randn(40, g * k * out)).unwrap();
    plan.write(x, &common::randn(41, g * k * inp)).unwrap();
    plan.run().unwrap();
    let bits = [dw, db].map(|t| plan.read_blocking(t).unwrap().iter().map(|v| v.to_bits()).collect());
    (bits.to_vec(), plan.dispatch_labels())
}

#[test]
fn linear_bias_gradient_folds_into_the_weight_gradient() {
    let gpu = gpu_or_skip!();
    let software = modelbatch::Tuning::SOFTWARE;
    // 12 outputs: gemm_tn (vec4 rows); 13: the general kernel; then the tiled kernel.
    for tuning in [software, software.apply("gemm_tile=1").unwrap()] {
        let gpu = gpu.with_tuning(tuning).unwrap();
        for out in [12, 13] {
            let (plain, plain_labels) = run_weight_and_bias(&gpu, out, false);
            let (folded, labels) = run_weight_and_bias(&gpu, out, true);
            assert_eq!(plain, folded, "{tuning}: {out} outputs: the folded sums differ");
            assert!(plain_labels.contains(&"sum"), "{plain_labels:?}");
            assert!(!labels.contains(&"sum") && labels.len() + 1 == plain_labels.len(), "{labels:?}");
            let tiled = labels.contains(&"gemm_tile_sum");
            assert_eq!(tiled, tuning.gemm_tile == 1, "{labels:?}");
        }
    }
}

/// conv (relu or not) → max pooling, gradients to the weight and bias (x is data), or with
/// `dx` to x too (x a parameter: the input gradient reads dy as well; kept last): the tiled
/// weight gradient computes dy from the pooled gradient itself, so the pooling gradient's
/// pass disappears, with the values of the plan that keeps dy (and so runs that pass): bit
/// for bit where both tile the rows alike. Windows 2x2 and 3x2 that tile the 12x10 output,
/// with one or two channel groups; with a 5x5 window that does not (floor mode drops rows),
/// nothing folds.
fn run_pool_fold(
    gpu: &modelbatch::Gpu,
    relu: bool,
    window: [usize; 2],
    groups: usize,
    keep_dy: bool,
    dx: bool,
) -> (Vec<Vec<u32>>, Vec<&'static str>) {
    let g = 2;
    let mut graph = Graph::new(g);
    let x = if dx { graph.param("x", &[3, 2, 12, 10]) } else { graph.input("x", &[3, 2, 12, 10], DType::F32) };
    let x = x.unwrap();
    let w = graph.param("w", &[4, 2 / groups, 3, 3]).unwrap();
    let b = graph.param("b", &[4]).unwrap();
    let geom = Conv2dGeom { kernel: [3, 3], stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups };
    let y = if relu { graph.conv2d_relu(x, w, Some(b), geom) } else { graph.conv2d(x, w, Some(b), geom) }.unwrap();
    let pool =
        Pool2dGeom { kernel: window, stride: window, padding: [0, 0], dilation: [1, 1], count_include_pad: true };
    let p = graph.maxpool2d(y, pool).unwrap();
    let rs = graph.shape(p)[1..].to_vec();
    let r = graph.input("r", &rs, DType::F32).unwrap();
    let wrt = if dx { vec![w, b, x] } else { vec![w, b] };
    let grads = autograd::grad(&mut graph, p, Some(r), &wrt).unwrap();
    let mut keep: Vec<_> = grads.iter().map(|d| d.unwrap()).collect();
    if keep_dy {
        // dy: the weight gradient's first operand, the pooling gradient.
        let gw = graph.nodes().iter().find(|n| n.op.name() == "conv2d_grad_weight").expect("a weight gradient");
        assert_eq!(graph.node(gw.inputs[0]).op.name(), "maxpool2d_grad");
        keep.push(gw.inputs[0]);
    }
    let plan = Plan::new(gpu, &graph, &keep, &[]).unwrap();
    // Quarter steps: ties inside windows and exact zeros (relu's derivative 0).
    let q = |seed, n| common::randn(seed, n).iter().map(|v| (v * 4.0).round() / 4.0).collect::<Vec<f32>>();
    plan.write(x, &q(50, g * 3 * 2 * 12 * 10)).unwrap();
    plan.write(w, &q(51, g * 4 * 2 / groups * 9)).unwrap();
    plan.write(b, &q(52, g * 4)).unwrap();
    let rn: usize = graph.shape(p).iter().product();
    plan.write(r, &common::randn(53, rn)).unwrap();
    plan.run().unwrap();
    let out = keep[..wrt.len()].iter().map(|&t| plan.read_blocking(t).unwrap().iter().map(|v| v.to_bits()).collect());
    (out.collect(), plan.dispatch_labels())
}

/// With the gradient to x too and `folds` bit 2, the input gradient's products
/// (`conv2d_grad_input_col`) compute dy from the pooled gradient as well, and the pooling
/// gradient's pass disappears only where both readers of dy can (tiled weight gradient and
/// products): dx, dw and db bit for bit those of the plan that keeps dy. Without bit 2 the
/// pass stays.
#[test]
fn pooling_gradient_folds_into_the_input_gradients_products() {
    let gpu = gpu_or_skip!();
    let with = |text: &str| gpu.with_tuning(modelbatch::Tuning::SOFTWARE.apply(text).unwrap()).unwrap();
    let both = with("grad_weight_tile=64,grad_input_col=64,split_threads=1,folds=5");
    let col_only = with("grad_weight_tile=0,grad_input_col=64,split_threads=1,folds=5");
    for (relu, groups) in [(true, 1), (false, 1), (true, 2)] {
        for (window, folds) in [([2, 2], true), ([3, 2], true), ([5, 5], false)] {
            let what = format!("relu {relu}, groups {groups}, window {window:?}");
            let (kept, kept_labels) = run_pool_fold(&both, relu, window, groups, true, true);
            let (folded, labels) = run_pool_fold(&both, relu, window, groups, false, true);
            assert_eq!(kept.len(), 3);
            assert!(kept == folded, "{what}: gradients differ");
            assert!(kept_labels.contains(&"conv2d_grad_input_col"), "{kept_labels:?}");
            assert!(labels.contains(&"conv2d_grad_input_col"), "{labels:?}");
            assert_eq!(!labels.contains(&"maxpool2d_grad"), folds, "{what}: {labels:?}");
            // The direct weight gradient cannot: the pass stays for both readers (dx as before;
            // dw and db add in another order).
            let (alone, labels) = run_pool_fold(&col_only, relu, window, groups, false, true);
            assert!(kept[2] == alone[2], "{what}: dx differs without the tiled weight gradient");
            assert!(labels.contains(&"maxpool2d_grad"), "{what}: {labels:?}");
            let without = gpu.with_tuning(both.tuning().apply("folds=1").unwrap()).unwrap();
            let (_, labels) = run_pool_fold(&without, relu, window, groups, false, true);
            assert!(labels.contains(&"maxpool2d_grad"), "{what}: {labels:?}");
        }
    }
}

#[test]
fn pooling_gradient_folds_into_the_tiled_weight_gradient() {
    let gpu = gpu_or_skip!();
    // Default tiles: both plans tile the rows alike, so they add in the same order (bit for
    // bit). Tiles of 4 KiB: the folded plan's tiles are whole windows of rows, the kept
    // plan's need not be (another order: equal to rounding).
    for (text, exact) in [("grad_weight_tile=64", true), ("grad_weight_tile=64,tile_kib=4", false)] {
        pool_folds(&gpu.with_tuning(modelbatch::Tuning::SOFTWARE.apply(text).unwrap()).unwrap(), exact);
    }
}

fn pool_folds(tiled: &modelbatch::Gpu, exact: bool) {
    for (relu, groups) in [(true, 1), (false, 1), (true, 2)] {
        for (window, folds) in [([2, 2], true), ([3, 2], true), ([5, 5], false)] {
            let what = format!("relu {relu}, groups {groups}, window {window:?}");
            let (kept, kept_labels) = run_pool_fold(tiled, relu, window, groups, true, false);
            let (folded, labels) = run_pool_fold(tiled, relu, window, groups, false, false);
            if exact {
                assert_eq!(kept, folded, "{what}: gradients differ");
            } else {
                for (k, f) in kept.iter().flatten().zip(folded.iter().flatten()) {
                    let (k, f) = (f32::from_bits(*k), f32::from_bits(*f));
                    assert!((k - f).abs() <= 1e-5 * k.abs().max(1.0), "{what}: {k} vs {f}");
                }
            }
            assert!(kept_labels.contains(&"maxpool2d_grad"), "{kept_labels:?}");
            assert_eq!(!labels.contains(&"maxpool2d_grad"), folds, "{what}: {labels:?}");
        }
    }
}

/// conv (relu or not, bias or not, one or two channel groups) → 2x2 max pooling, with the
/// pooling's input y and output kept: y and the pooled values under `tuning`, with the label
/// list.
fn run_forward_pool(gpu: &modelbatch::Gpu, tuning: &str, case: ForwardPoolCase) -> (Vec<Vec<u32>>, Vec<&'static str>) {
    let gpu = gpu.with_tuning(gpu.tuning().apply(tuning).unwrap()).unwrap();
    let ForwardPoolCase { relu, bias, groups, hw: [h, w], kernel, padding } = case;
    let (g, n, c, o) = (2, 3, 2, 6);
    let mut graph = Graph::new(g);
    let x = graph.input("x", &[n, c, h, w], DType::F32).unwrap();
    let wt = graph.param("w", &[o, c / groups, kernel, kernel]).unwrap();
    let b = graph.param("b", &[o]).unwrap();
    let geom = Conv2dGeom { kernel: [kernel; 2], stride: [1, 1], padding: [padding; 2], dilation: [1, 1], groups };
    let bias = bias.then_some(b);
    let y = if relu { graph.conv2d_relu(x, wt, bias, geom) } else { graph.conv2d(x, wt, bias, geom) }.unwrap();
    let pool =
        Pool2dGeom { kernel: [2, 2], stride: [2, 2], padding: [0, 0], dilation: [1, 1], count_include_pad: true };
    let p = graph.maxpool2d(y, pool).unwrap();
    let plan = Plan::new(&gpu, &graph, &[y, p], &[]).unwrap();
    // Quarter steps (ties inside windows, zeros of both signs after relu), and NaNs in x:
    // the windows they reach pool to NaN.
    let q = |seed, len| common::randn(seed, len).iter().map(|v| (v * 4.0).round() / 4.0).collect::<Vec<f32>>();
    let mut xs = q(60, g * n * c * h * w);
    for i in (0..xs.len()).step_by(97) {
        xs[i] = f32::NAN;
    }
    plan.write(x, &xs).unwrap();
    plan.write(wt, &q(61, g * o * c / groups * kernel * kernel)).unwrap();
    plan.write(b, &q(62, g * o)).unwrap();
    plan.run().unwrap();
    let out = [y, p].map(|t| plan.read_blocking(t).unwrap().iter().map(|v| v.to_bits()).collect());
    (out.to_vec(), plan.dispatch_labels())
}

#[derive(Clone, Copy, Debug)]
struct ForwardPoolCase {
    relu: bool,
    bias: bool,
    groups: usize,
    hw: [usize; 2],
    kernel: usize,
    padding: usize,
}

/// `folds` bit 1: the tiled convolution with 4 positions per invocation pools its output in
/// its epilogue (small and default tiles, 4 or 8 channels per invocation), bit for bit the
/// values of the pooling's own pass (NaN included), which disappears; where the kernel cannot
/// (fewer positions per invocation, the direct kernel's strips or one position per
/// invocation, an odd output side) the pass stays.
#[test]
fn convolutions_pool_their_outputs_in_the_epilogue() {
    let gpu = gpu_or_skip!();
    let kernels = [
        ("conv_tile=0,conv_pixel=0", false),
        ("conv_tile=64,tile_px=4,split_threads=1", true),
        ("conv_tile=256,tile_px=4,split_threads=1,conv_ob=3", true),
        ("conv_tile=128,tile_px=4,split_threads=1,tile_kib=4,conv_ob=8", true),
        ("conv_tile=64,tile_px=3,split_threads=1", false),
        ("conv_tile=0,conv_pixel=1", false),
    ];
    let cases = [
        // 12x10 outputs.
        ForwardPoolCase { relu: true, bias: true, groups: 1, hw: [12, 10], kernel: 3, padding: 1 },
        ForwardPoolCase { relu: false, bias: false, groups: 2, hw: [12, 10], kernel: 3, padding: 1 },
        // LeNet's conv2 shape (12x12 → 8x8) and 20-wide rows.
        ForwardPoolCase { relu: true, bias: true, groups: 1, hw: [12, 12], kernel: 5, padding: 0 },
        ForwardPoolCase { relu: true, bias: false, groups: 1, hw: [6, 20], kernel: 1, padding: 0 },
    ];
    for (kernel, pools) in kernels {
        for case in cases {
            let what = format!("{kernel}, {case:?}");
            let (separate, separate_labels) = run_forward_pool(gpu, &format!("{kernel},folds=0"), case);
            let (folded, labels) = run_forward_pool(gpu, &format!("{kernel},folds=2"), case);
            same_bits(&separate, &folded, &what);
            assert!(separate_labels.contains(&"maxpool2d"), "{separate_labels:?}");
            assert_eq!(!labels.contains(&"maxpool2d"), pools, "{what}: {labels:?}");
        }
    }
    // An odd output side: the pooling keeps its pass (and its values).
    let odd = ForwardPoolCase { relu: true, bias: true, groups: 1, hw: [11, 10], kernel: 3, padding: 1 };
    let (separate, _) = run_forward_pool(gpu, "conv_tile=64,tile_px=4,split_threads=1,folds=0", odd);
    let (folded, labels) = run_forward_pool(gpu, "conv_tile=64,tile_px=4,split_threads=1,folds=2", odd);
    same_bits(&separate, &folded, &format!("odd side, {odd:?}"));
    assert!(labels.contains(&"maxpool2d"), "{labels:?}");
}

/// y and the pooled values bit for bit (the first difference named).
fn same_bits(a: &[Vec<u32>], b: &[Vec<u32>], what: &str) {
    for (t, (a, b)) in ["y", "pooled"].iter().zip(a.iter().zip(b)) {
        assert_eq!(a.len(), b.len(), "{what}: {t} lengths");
        if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
            let (x, y) = (f32::from_bits(a[i]), f32::from_bits(b[i]));
            panic!("{what}: {t}[{i}] is {x} in its own pass, {y} folded");
        }
        // The NaNs reach the pooled values (without relu, which may map NaN to 0).
        assert!(
            *t == "y" || a.iter().any(|v| f32::from_bits(*v).is_nan()) || what.contains("relu: true"),
            "{what}: no NaN"
        );
    }
}
