//! Fused conv → relu (relu in the convolution's epilogue) and max-pooling gradient with
//! relu's derivative give bit for bit the values and gradients of the separate ops, for the
//! direct (stride 1) and the general (strided) convolution kernels, and the plan runs fewer
//! dispatches.

mod common;

use modelbatch::{autograd, Conv2dGeom, DType, Graph, Plan, Pool2dGeom};

fn run(gpu: &modelbatch::Gpu, fused: bool, geom: Conv2dGeom) -> (Vec<Vec<u32>>, usize) {
    let g = 3;
    let mut graph = Graph::new(g);
    let x = graph.param("x", &[5, 3, 13, 13]).unwrap();
    let w = graph.param("w", &[4, 3, 3, 3]).unwrap();
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
    plan.write(x, &common::randn(1, g * 5 * 3 * 13 * 13)).unwrap();
    plan.write(w, &common::randn(2, g * 4 * 27)).unwrap();
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
    for (stride, padding) in [(1, 1), (2, 0)] {
        let geom =
            Conv2dGeom { kernel: [3, 3], stride: [stride; 2], padding: [padding; 2], dilation: [1, 1], groups: 1 };
        let (plain, n_plain) = run(gpu, false, geom);
        let (fused, n_fused) = run(gpu, true, geom);
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
