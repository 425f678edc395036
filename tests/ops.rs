//! Every graph op, forward and backward, against plain-Rust CPU references (f64 accumulation)
//! and central finite differences, on odd sizes and on sizes that take the vec4 fast paths.
//!
//! Gradients are checked through a seeded backward pass: with leaves `p`, output `y` and a
//! random seed `r` shaped like `y`, `autograd::grad(y, Some(r), p)` is d sum(r*y) / dp.

mod common;

use common::grad_case::{case, EPS, FD_ATOL, FD_RTOL};
use common::{assert_close, labels, randn, randn_away};
use modelbatch::{autograd, DType, Error, Graph, Plan, Reduction};

/// Tolerances of GPU results against the f64 CPU references.
const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;
fn r64(v: &[f32]) -> Vec<f64> {
    common::to64(v)
}

// ---------------------------------------------------------------------------------------
// matmul

/// The GEMM entry point `src/ops/linear.rs` documents for a product of this layout over `g`
/// models.
fn gemm_entry(gpu: &modelbatch::Gpu, g: usize, ta: bool, tb: bool, m: usize, n: usize, k: usize) -> &'static str {
    let t = gpu.tuning();
    if depth_slices(t.gemm_split, g * m.div_ceil(4) * n.div_ceil(4), k) > 1 {
        return "gemm_split";
    }
    let side = 4 * t.gemm_wg as usize;
    if t.gemm_tile != 0 && n.div_ceil(side) * m.div_ceil(side) * g >= t.gemm_groups as usize {
        return "gemm_tile";
    }
    match (ta, tb) {
        (false, true) if k % 4 == 0 => "gemm_nt",
        (false, false) if n % 4 == 0 && k % 4 == 0 => "gemm_nn4",
        (false, false) if n % 4 == 0 => "gemm_nn",
        (true, false) if m % 4 == 0 && n % 4 == 0 => "gemm_tn",
        _ => "gemm",
    }
}

/// The depth slices of `gemm_split` for a product of `blocks` 4x4 output blocks over depth
/// `k`, as `src/ops/linear.rs` documents them: the fewest powers of two, up to 16, that give
/// `target` invocations, each slice at least 8 deep.
fn depth_slices(target: u32, blocks: usize, k: usize) -> usize {
    let mut slices = 1;
    while slices < 16 && blocks * slices < target as usize && k >= 16 * slices {
        slices *= 2;
    }
    slices
}

/// Forward, backward (A, B, bias) and finite differences of one batched product; returns
/// the plan's dispatch labels.
#[allow(clippy::too_many_arguments)]
fn check_matmul(
    gpu: &modelbatch::Gpu,
    g: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    bias: bool,
) -> Vec<&'static str> {
    let what = format!("matmul G={g} M={m} K={k} N={n} trans_a={ta} trans_b={tb} bias={bias}");
    let seed = (g * 1_000_003 + m * 10_007 + k * 101 + n) as u64 * 4 + u64::from(ta) * 2 + u64::from(tb);
    let a_shape = if ta { vec![k, m] } else { vec![m, k] };
    let b_shape = if tb { vec![n, k] } else { vec![k, n] };
    let mut leaves = vec![("a", a_shape, randn(seed, g * m * k)), ("b", b_shape, randn(seed + 1, g * k * n))];
    if bias {
        leaves.push(("bias", vec![n], randn(seed + 2, g * n)));
    }
    let c = case(gpu, g, leaves, seed, |gr, p| gr.matmul(p[0], p[1], p.get(2).copied(), ta, tb));
    let (y, grads) = c.run();
    let (a, b) = (c.values(0), c.values(1));
    let bias_v = if bias { Some(c.values(2)) } else { None };
    let atol = ATOL.max(1e-6 * k.max(m).max(n) as f64);
    assert_close(&format!("{what}: forward"), &y, &common::matmul_ref(g, m, n, k, a, b, bias_v, ta, tb), RTOL, atol);
    let (da, db, dbias) = common::matmul_grads_ref(g, m, n, k, a, b, &c.r, ta, tb);
    assert_close(&format!("{what}: dA"), &grads[0], &da, RTOL, atol);
    assert_close(&format!("{what}: dB"), &grads[1], &db, RTOL, atol);
    if bias {
        assert_close(&format!("{what}: dbias"), &grads[2], &dbias, RTOL, atol);
    }
    c.fd(&grads);
    let labels = c.labels();
    let want = gemm_entry(gpu, g, ta, tb, m, n, k);
    assert_eq!(labels.first().copied(), Some(want), "{what}: forward kernel (all dispatches: {labels:?})");
    labels
}

const COMBOS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

#[test]
fn matmul_odd_sizes_all_layouts() {
    let gpu = &register_kernels(gpu_or_skip!());
    for (ta, tb) in COMBOS {
        for bias in [false, true] {
            let labels = check_matmul(gpu, 17, 5, 7, 3, ta, tb, bias);
            // No dimension is a multiple of 4: every product must take the general kernel
            // (`gemm_sum` where it also sums a bias gradient).
            for l in labels.iter().filter(|l| l.starts_with("gemm")) {
                assert!(*l == "gemm" || *l == "gemm_sum", "odd sizes picked {l} ({labels:?})");
            }
        }
    }
}

/// The register-blocked kernels (`gemm_tile=0`, `gemm_split=0`), each layout's.
fn register_kernels(gpu: &modelbatch::Gpu) -> modelbatch::Gpu {
    gpu.with_tuning(gpu.tuning().apply("gemm_tile=0,gemm_split=0").unwrap()).unwrap()
}

#[test]
fn matmul_vec4_sizes_all_layouts() {
    let gpu = &register_kernels(gpu_or_skip!());
    let mut seen = std::collections::BTreeSet::new();
    for (ta, tb) in COMBOS {
        for bias in [false, true] {
            seen.extend(check_matmul(gpu, 3, 8, 12, 16, ta, tb, bias));
        }
    }
    for entry in ["gemm_nt", "gemm_nn4", "gemm_tn", "gemm"] {
        assert!(seen.contains(entry), "{entry} never ran (saw {seen:?})");
    }
}

/// Every GEMM workgroup side a tuning may choose (4, 8, 16: tiles of 16 to 64) computes the
/// same products, fast paths and general kernel, with ragged edges. With `gemm_cols=2` the
/// vec4 kernels take two 4x4 blocks side by side: the last pair's second block partly past
/// the edge (70 columns) and wholly past it (4 columns); with `gemm_rows=2` the linear
/// forward's, input gradient's and weight gradient's (`gemm_nt`, `gemm_nn4`, `gemm_tn(_sum)`)
/// two blocks stacked (a square of four with both): the second block partly past the last
/// row (37 and 5 rows) and wholly past it (3 rows; 12 and 28 for the weight gradient, whose
/// rows come in fours).
#[test]
fn matmul_under_every_gemm_tuning() {
    let gpu = gpu_or_skip!();
    let shapes = [(4, 1, 1), (16, 1, 1), (4, 2, 1), (8, 2, 1), (16, 2, 1), (4, 1, 2), (8, 2, 2), (16, 2, 2)];
    for (wg, cols, rows) in shapes {
        let t = modelbatch::Tuning {
            gemm_wg: wg,
            gemm_cols: cols,
            gemm_rows: rows,
            gemm_tile: 0,
            gemm_split: 0,
            ..gpu.tuning()
        };
        let tuned = gpu.with_tuning(t).unwrap();
        for (ta, tb) in COMBOS {
            check_matmul(&tuned, 3, 37, 12, 70, ta, tb, true);
            check_matmul(&tuned, 2, 8, 8, 4, ta, tb, true);
        }
        check_matmul(&tuned, 2, 17, 5, 3, false, false, true);
        for tb in [false, true] {
            check_matmul(&tuned, 2, 3, 12, 8, false, tb, true);
            check_matmul(&tuned, 2, 37, 12, 8, false, tb, true);
        }
        check_linear(&tuned, 3, &[5], 8, 12, true);
        // The weight gradient's blocks (gemm_tn_sum: A = dy [rows, out]) with the second row
        // block inside and, on the last rows, past the edge; gemm_tn on its own (A^T B).
        let labels = check_linear(&tuned, 2, &[3, 2], 20, 28, true);
        assert!(labels.contains(&"gemm_tn_sum"), "{labels:?}");
        let labels = check_matmul(&tuned, 2, 20, 6, 12, true, false, false);
        assert!(labels.contains(&"gemm_tn"), "{labels:?}");
    }
}

/// `gemm_tile` (rows of A and columns of B staged in workgroup memory, 16 depths a step):
/// every layout with ragged edges, depths shorter than a step, one step, and several with a
/// short last one, every workgroup side, the bias epilogue, and the A sums of a linear
/// layer's weight gradient (its bias gradient, no `sum` pass), forward and backward.
#[test]
fn matmul_through_workgroup_memory_tiles() {
    let gpu = gpu_or_skip!();
    for wg in [4, 8, 16] {
        let text = format!("gemm_tile=1,gemm_wg={wg},gemm_groups=0,gemm_split=0");
        let tuned = gpu.with_tuning(gpu.tuning().apply(&text).unwrap()).unwrap();
        let only_tiles = |labels: &[&str]| labels.iter().all(|l| !l.starts_with("gemm") || l.starts_with("gemm_tile"));
        for (ta, tb) in COMBOS {
            for (m, k, n) in [(37, 12, 70), (5, 16, 3), (33, 50, 36)] {
                let labels = check_matmul(&tuned, 2, m, k, n, ta, tb, true);
                assert!(only_tiles(&labels), "{text}: {labels:?}");
            }
        }
        let labels = check_linear(&tuned, 3, &[5], 8, 12, true);
        assert!(only_tiles(&labels) && labels.contains(&"gemm_tile_sum") && !labels.contains(&"sum"), "{labels:?}");
        check_linear(&tuned, 2, &[40], 7, 33, true);
    }
}

/// `gemm_split` (the depth split over a workgroup's slices, for products too small to fill a
/// GPU): every layout with ragged edges, 2 to 16 slices, depths that slices share unevenly,
/// the bias epilogue, and a linear layer's weight gradient with its A sums (the bias
/// gradient), forward and backward, against the CPU references. The slices follow the rule
/// (the fewest that reach `gemm_split` invocations, at most 16, each at least 8 deep), shown by
/// the workgroup counts: one 16x16 tile of C per workgroup.
#[test]
fn matmul_split_over_depth_slices() {
    let gpu = gpu_or_skip!();
    let tuned = gpu.with_tuning(gpu.tuning().apply("gemm_split=16777216").unwrap()).unwrap();
    let mut slices = std::collections::BTreeSet::new();
    for (ta, tb) in COMBOS {
        // Depths 20, 50, 100 and 300: 2, 4, 8 and 16 slices.
        for (m, k, n) in [(37usize, 20, 70usize), (5, 50, 3), (33, 100, 36), (9, 300, 12)] {
            slices.insert(depth_slices(tuned.tuning().gemm_split, 2 * m.div_ceil(4) * n.div_ceil(4), k));
            check_matmul(&tuned, 2, m, k, n, ta, tb, true);
        }
    }
    assert_eq!(slices.into_iter().collect::<Vec<_>>(), [2, 4, 8, 16]);
    // Weight gradients over 35 and 130 rows (2 and 16 slices) with the bias gradient's sums.
    for (lead, inp, out) in [(&[5, 7][..], 20, 12), (&[130][..], 33, 9)] {
        let labels = check_linear(&tuned, 3, lead, inp, out, true);
        assert!(labels.contains(&"gemm_split_sum") && !labels.contains(&"sum"), "{labels:?}");
    }
    // One workgroup per 16x16 tile of C and model, with the fewest slices that reach the
    // target; a product that fills it keeps the other kernels, as does one too shallow to
    // split.
    let kernels = |text: &str, rows: usize, depth: usize| {
        let tuned = gpu.with_tuning(gpu.tuning().apply(text).unwrap()).unwrap();
        let mut graph = modelbatch::Graph::new(3);
        let a = graph.param("a", &[rows, depth]).unwrap();
        let b = graph.param("b", &[depth, 40]).unwrap();
        let c = graph.matmul(a, b, None, false, false).unwrap();
        let plan = modelbatch::Plan::new(&tuned, &graph, &[c], &[]).unwrap();
        plan.dispatch_kernels()
    };
    // 37 x 40: 10 x 10 blocks per model, 300 over 3 models.
    for (target, depth, want) in [(301, 64, 2), (1201, 64, 8), (1201, 63, 4), (4801, 300, 16), (1 << 24, 16, 2)] {
        let ran = kernels(&format!("gemm_split={target}"), 37, depth);
        let (label, name, groups) = &ran[0];
        assert_eq!((ran.len(), *label, *groups), (1, "gemm_split", [3, 3, 3]), "{target} {depth}: {ran:?}");
        assert!(name.contains(&format!("SK={want}")), "{target} {depth}: {want} slices: {name}");
    }
    assert_eq!(kernels("gemm_split=300,gemm_tile=0", 37, 64)[0].0, "gemm_nn4");
    assert_eq!(kernels("gemm_split=16777216,gemm_tile=0", 37, 15)[0].0, "gemm_nn");
}

/// `gemm_groups`: a product with fewer workgroups than that halves their side (16 to 8 to 4)
/// and computes the same; a large one keeps `gemm_wg`. With `gemm_tile`, only products that
/// fill `gemm_groups` workgroups take the tiles.
#[test]
fn small_products_take_smaller_gemm_workgroups() {
    let gpu = gpu_or_skip!();
    let plan = |text: &str, g: usize, rows: usize| {
        let tuned = gpu.with_tuning(gpu.tuning().apply(text).unwrap()).unwrap();
        let mut graph = modelbatch::Graph::new(g);
        let a = graph.param("a", &[rows, 12]).unwrap();
        let b = graph.param("b", &[12, 40]).unwrap();
        let c = graph.matmul(a, b, None, false, false).unwrap();
        modelbatch::Plan::new(&tuned, &graph, &[c], &[]).unwrap()
    };
    let grids = |groups: u32, g: usize, rows: usize| {
        let text = format!("gemm_wg=16,gemm_groups={groups},gemm_cols=1,gemm_rows=1,gemm_split=0");
        plan(&text, g, rows).signature().iter().map(|d| d.2).collect::<Vec<_>>()
    };
    // 37 x 40 outputs: one 64x64 workgroup per model at gemm_wg=16, 2x2 of 32x32 at 8, 3x3
    // of 16x16 at 4 (3 models: 3, 12, 27 workgroups).
    assert_eq!(grids(0, 3, 37), vec![[1, 1, 3]]);
    assert_eq!(grids(10, 3, 37), vec![[2, 2, 3]]);
    assert_eq!(grids(1 << 20, 3, 37), vec![[3, 3, 3]]);
    // Enough models: the side stays.
    assert_eq!(grids(10, 10, 37), vec![[1, 1, 10]]);
    // Tiles for the 10 models' product (10 workgroups of 16x16 lanes), not for the 3 models'.
    let entry = |g: usize| plan("gemm_wg=16,gemm_groups=10,gemm_tile=1,gemm_split=0", g, 37).dispatch_labels();
    assert_eq!((entry(10), entry(3)), (vec!["gemm_tile"], vec!["gemm_nn4"]));
    let tuned = gpu.with_tuning(gpu.tuning().apply("gemm_wg=16,gemm_groups=1048576").unwrap()).unwrap();
    for (ta, tb) in COMBOS {
        check_matmul(&tuned, 3, 37, 12, 70, ta, tb, true);
    }
}

/// The fast paths with the other dimensions ragged and spanning several 32x32 tiles: rows
/// and columns past the edge are clamped on load and dropped on store.
#[test]
fn matmul_fast_paths_with_ragged_edges() {
    let gpu = gpu_or_skip!();
    // (trans_a, trans_b, m, k, n): gemm_nt needs K%4, gemm_nn N%4 (gemm_nn4 K%4 too),
    // gemm_tn M%4 and N%4.
    let cases = [
        (false, true, 37, 8, 35),   // gemm_nt
        (false, false, 37, 9, 36),  // gemm_nn
        (false, false, 37, 12, 36), // gemm_nn4
        (true, false, 36, 7, 40),   // gemm_tn
        (true, true, 36, 8, 40),    // gemm (no fast path transposes B and A)
        (false, true, 33, 7, 34),   // gemm: K ragged
        (true, false, 36, 5, 6),    // gemm: N ragged
    ];
    for (ta, tb, m, k, n) in cases {
        check_matmul(gpu, 2, m, k, n, ta, tb, true);
    }
}

// ---------------------------------------------------------------------------------------
// linear

/// `linear` on `x [G, lead..., in]`, `weight [G, out, in]`, optional bias; returns labels.
fn check_linear(
    gpu: &modelbatch::Gpu,
    g: usize,
    lead: &[usize],
    inp: usize,
    out: usize,
    bias: bool,
) -> Vec<&'static str> {
    let what = format!("linear G={g} lead={lead:?} in={inp} out={out} bias={bias}");
    let rows: usize = lead.iter().product();
    let seed = (g * 7919 + rows * 31 + inp * 7 + out) as u64;
    let mut x_shape = lead.to_vec();
    x_shape.push(inp);
    let mut leaves =
        vec![("x", x_shape, randn(seed, g * rows * inp)), ("weight", vec![out, inp], randn(seed + 1, g * out * inp))];
    if bias {
        leaves.push(("bias", vec![out], randn(seed + 2, g * out)));
    }
    let c = case(gpu, g, leaves, seed, |gr, p| {
        let y = gr.linear(p[0], p[1], p.get(2).copied())?;
        let mut want = vec![g];
        want.extend_from_slice(lead);
        want.push(out);
        assert_eq!(gr.shape(y), want.as_slice(), "{what}: output shape");
        Ok(y)
    });
    let (y, grads) = c.run();
    let (x, w) = (c.values(0), c.values(1));
    let bias_v = if bias { Some(c.values(2)) } else { None };
    let atol = ATOL.max(1e-6 * rows.max(inp).max(out) as f64);
    assert_close(
        &format!("{what}: forward"),
        &y,
        &common::matmul_ref(g, rows, out, inp, x, w, bias_v, false, true),
        RTOL,
        atol,
    );
    let (dx, dw, db) = common::matmul_grads_ref(g, rows, out, inp, x, w, &c.r, false, true);
    assert_close(&format!("{what}: dx"), &grads[0], &dx, RTOL, atol);
    assert_close(&format!("{what}: dweight"), &grads[1], &dw, RTOL, atol);
    if bias {
        assert_close(&format!("{what}: dbias"), &grads[2], &db, RTOL, atol);
    }
    c.fd(&grads);
    c.labels()
}

#[test]
fn linear_odd_sizes() {
    let gpu = gpu_or_skip!();
    for bias in [true, false] {
        check_linear(gpu, 17, &[5], 7, 3, bias);
    }
}

#[test]
fn linear_vec4_sizes_take_the_three_fast_paths() {
    let gpu = &register_kernels(gpu_or_skip!());
    // Forward x·Wᵀ (K = in), backward to x dy·W (N = in, K = out), backward to W dyᵀ·x (M =
    // out, N = in).
    // With a bias, the weight gradient's GEMM also sums its gradient (no `sum` dispatch).
    for (bias, entries) in [(true, ["gemm_nt", "gemm_nn4", "gemm_tn_sum"]), (false, ["gemm_nt", "gemm_nn4", "gemm_tn"])]
    {
        let labels = check_linear(gpu, 3, &[5], 8, 12, bias);
        for entry in entries {
            assert!(labels.contains(&entry), "linear with in=8, out=12 did not run {entry}: {labels:?}");
        }
        assert!(!labels.contains(&"sum"), "{labels:?}");
    }
}

#[test]
fn linear_rank4_input_is_reshaped() {
    let gpu = gpu_or_skip!();
    check_linear(gpu, 3, &[2, 3, 5], 6, 5, true);
    check_linear(gpu, 2, &[3, 2], 8, 4, false);
}

// ---------------------------------------------------------------------------------------
// elementwise

#[test]
fn relu_forward_and_backward() {
    let gpu = gpu_or_skip!();
    let (g, shape) = (17, vec![5, 7]);
    let numel = g * 35;
    // Away from the kink so that finite differences never straddle 0.
    let x = randn_away(11, numel, 3.0 * EPS);
    let c = case(gpu, g, vec![("x", shape, x)], 11, |gr, p| gr.relu(p[0]));
    let (y, grads) = c.run();
    let x = c.values(0);
    let want: Vec<f64> = x.iter().map(|&v| (v as f64).max(0.0)).collect();
    assert_close("relu forward", &y, &want, 0.0, 0.0);
    let dx: Vec<f64> = x.iter().zip(&c.r).map(|(&v, &r)| if v > 0.0 { r as f64 } else { 0.0 }).collect();
    assert_close("relu backward", &grads[0], &dx, 0.0, 0.0);
    assert!(x.iter().any(|&v| v > 0.0) && x.iter().any(|&v| v < 0.0), "test data needs both signs");
    c.fd(&grads);
    let labels = c.labels();
    assert!(labels.contains(&"relu") && labels.contains(&"relu_grad"), "{labels:?}");
}

#[test]
fn relu_grad_masks_where_output_is_not_positive() {
    let gpu = gpu_or_skip!();
    let (g, per) = (3, 13);
    let mut graph = Graph::new(g);
    let dy = graph.input("dy", &[per], DType::F32).unwrap();
    let y = graph.input("y", &[per], DType::F32).unwrap();
    let out = graph.relu_grad(dy, y).unwrap();
    let plan = Plan::new(gpu, &graph, &[out], &[]).unwrap();
    let dyv = randn(5, g * per);
    // y as relu leaves it: zeros (from negative inputs) and positives, plus a negative and -0.
    let mut yv: Vec<f32> = randn(6, g * per).iter().map(|v| v.max(0.0)).collect();
    yv[1] = 0.0;
    yv[2] = -0.0;
    yv[3] = -1.0;
    yv[4] = 1e-30;
    plan.write(dy, &dyv).unwrap();
    plan.write(y, &yv).unwrap();
    plan.run().unwrap();
    let got = plan.read_blocking(out).unwrap();
    let want: Vec<f64> = dyv.iter().zip(&yv).map(|(&d, &yy)| if yy > 0.0 { d as f64 } else { 0.0 }).collect();
    assert_close("relu_grad", &got, &want, 0.0, 0.0);
}

#[test]
fn add_forward_and_backward() {
    let gpu = gpu_or_skip!();
    let (g, shape) = (5, vec![3, 7]);
    let n = g * 21;
    let c = case(gpu, g, vec![("a", shape.clone(), randn(21, n)), ("b", shape, randn(22, n))], 21, |gr, p| {
        gr.add(p[0], p[1])
    });
    let (y, grads) = c.run();
    let want: Vec<f64> = c.values(0).iter().zip(c.values(1)).map(|(&a, &b)| a as f64 + b as f64).collect();
    assert_close("add forward", &y, &want, 1e-7, 0.0);
    assert_close("add da", &grads[0], &r64(&c.r), 0.0, 0.0);
    assert_close("add db", &grads[1], &r64(&c.r), 0.0, 0.0);
    c.fd(&grads);
}

#[test]
fn add_with_shared_operand_accumulates_gradients() {
    let gpu = gpu_or_skip!();
    // y = relu(a) + a: two paths into a; autograd must sum them.
    let (g, shape) = (4, vec![9]);
    let a = randn_away(31, g * 9, 3.0 * EPS);
    let c = case(gpu, g, vec![("a", shape, a)], 31, |gr, p| {
        let r = gr.relu(p[0])?;
        let twice = gr.add(p[0], p[0])?;
        gr.add(r, twice)
    });
    let (y, grads) = c.run();
    let a = c.values(0);
    let want: Vec<f64> = a.iter().map(|&v| (v as f64).max(0.0) + 2.0 * v as f64).collect();
    assert_close("relu(a) + (a + a)", &y, &want, 1e-6, 0.0);
    let da: Vec<f64> = a.iter().zip(&c.r).map(|(&v, &r)| r as f64 * if v > 0.0 { 3.0 } else { 2.0 }).collect();
    assert_close("d(relu(a) + a + a)/da", &grads[0], &da, 1e-6, 0.0);
    c.fd(&grads);
}

// ---------------------------------------------------------------------------------------
// reshape / flatten

#[test]
fn reshape_and_flatten_forward_and_backward() {
    let gpu = gpu_or_skip!();
    let g = 3;
    // flatten [G, 5, 2, 3] -> [G, 5, 6], plus q; then a reshape feeding a matmul.
    let p = randn(41, g * 30);
    let q = randn(42, g * 30);
    let w = randn(43, g * 6 * 4);
    let c = case(gpu, g, vec![("p", vec![5, 2, 3], p), ("q", vec![5, 6], q), ("w", vec![6, 4], w)], 41, |gr, t| {
        let f = gr.flatten(t[0])?;
        assert_eq!(gr.shape(f), &[g, 5, 6]);
        let s = gr.add(f, t[1])?;
        let s2 = gr.reshape(s, &[10, 3])?; // a view that is not the original one
        let s3 = gr.reshape(s2, &[5, 6])?;
        let y = gr.matmul(s3, t[2], None, false, false)?; // [G, 5, 4]
        gr.reshape(y, &[20])
    });
    let (y, grads) = c.run();
    let (p, q, w) = (c.values(0), c.values(1), c.values(2));
    let s: Vec<f32> = p.iter().zip(q).map(|(a, b)| a + b).collect();
    assert_close("reshape forward", &y, &common::matmul_ref(g, 5, 4, 6, &s, w, None, false, false), RTOL, ATOL);
    let (ds, dw, _) = common::matmul_grads_ref(g, 5, 4, 6, &s, w, &c.r, false, false);
    assert_close("reshape dp", &grads[0], &ds, RTOL, ATOL);
    assert_close("reshape dq", &grads[1], &ds, RTOL, ATOL);
    assert_close("reshape dw", &grads[2], &dw, RTOL, ATOL);
    c.fd(&grads);
}

#[test]
fn flatten_keeps_the_data() {
    let gpu = gpu_or_skip!();
    let g = 2;
    let mut graph = Graph::new(g);
    let x = graph.input("x", &[3, 2, 5, 1], DType::F32).unwrap();
    let f = graph.flatten(x).unwrap();
    assert_eq!(graph.shape(f), &[g, 3, 10]);
    let back = graph.reshape(f, &[30]).unwrap();
    let plan = Plan::new(gpu, &graph, &[f, back], &[]).unwrap();
    let xv = randn(51, g * 30);
    plan.write(x, &xv).unwrap();
    plan.run().unwrap();
    assert_eq!(plan.read_blocking(f).unwrap(), xv);
    assert_eq!(plan.read_blocking(back).unwrap(), xv);
    let err = graph.reshape(x, &[7]).unwrap_err();
    assert!(matches!(err, Error::Shape(_)) && err.to_string().contains("reshape"), "{err}");
}

// ---------------------------------------------------------------------------------------
// sum / mean / broadcast

fn check_reduce(gpu: &modelbatch::Gpu, shape: &[usize], axes: &[usize], mean: bool) {
    let what = format!("{} over {axes:?} of {shape:?}", if mean { "mean" } else { "sum" });
    let g = shape[0];
    let numel: usize = shape.iter().product();
    let seed = numel as u64 * 13 + axes.iter().sum::<usize>() as u64 + u64::from(mean);
    let c = case(gpu, g, vec![("x", shape[1..].to_vec(), randn(seed, numel))], seed, |gr, p| {
        if mean {
            gr.mean(p[0], axes)
        } else {
            gr.sum(p[0], axes)
        }
    });
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let scale = if mean { 1.0 / count as f64 } else { 1.0 };
    let (y, grads) = c.run();
    assert_close(&format!("{what}: forward"), &y, &common::sum_ref(shape, c.values(0), axes, scale), RTOL, ATOL);
    let dx = common::broadcast_ref(shape, &c.r, axes, scale);
    assert_close(&format!("{what}: backward"), &grads[0], &dx, RTOL, 1e-7);
    c.fd(&grads);
    let labels = c.labels();
    assert!(labels.contains(&"sum") && labels.contains(&"broadcast"), "{what}: {labels:?}");
}

#[test]
fn sum_and_mean_over_axis_sets() {
    let gpu = gpu_or_skip!();
    let shape = [3, 5, 3, 7, 2];
    let axis_sets: [&[usize]; 8] = [&[1], &[2], &[4], &[1, 3], &[2, 4], &[1, 2], &[1, 3, 4], &[1, 2, 3, 4]];
    for axes in axis_sets {
        for mean in [false, true] {
            check_reduce(gpu, &shape, axes, mean);
        }
    }
}

#[test]
fn sum_and_mean_with_size_one_axes() {
    let gpu = gpu_or_skip!();
    // Size-1 axes are dropped by the lowering: reduce only them, around them, and everything.
    let shape = [2, 1, 5, 1, 3];
    let axis_sets: [&[usize]; 5] = [&[1], &[1, 3], &[2], &[2, 4], &[1, 2, 3, 4]];
    for axes in axis_sets {
        for mean in [false, true] {
            check_reduce(gpu, &shape, axes, mean);
        }
    }
    // G = 1: nothing kept at all after dropping size-1 axes.
    check_reduce(gpu, &[1, 4, 3], &[1, 2], true);
}

#[test]
fn sum_over_many_rows_and_unsorted_axes() {
    let gpu = gpu_or_skip!();
    check_reduce(gpu, &[2, 300, 3], &[1], false);
    // Each kernel path: one strided axis past the serial kernel's 4,096 (a workgroup per
    // output), images x positions of a conv bias with at least 64 positions (row by row),
    // and with fewer (flat).
    check_reduce(gpu, &[2, 4100, 3], &[1], false);
    check_reduce(gpu, &[2, 3, 2, 9, 10], &[1, 3, 4], false);
    check_reduce(gpu, &[2, 3, 2, 5, 6], &[1, 3, 4], true);
    // A strided axis summed serially or by a workgroup per output (the adapter's `serial_sum`).
    for serial in [0, 4096] {
        let tuned = gpu.with_tuning(gpu.tuning().with("serial_sum", serial).unwrap()).unwrap();
        check_reduce(&tuned, &[2, 300, 3], &[1], false);
    }
    // Few long sums over several axes in two passes (the adapter's `sum_split`), and in one.
    for split in [0, 64] {
        let tuned = gpu.with_tuning(gpu.tuning().with("sum_split", split).unwrap()).unwrap();
        check_reduce(&tuned, &[2, 40, 3, 120], &[1, 3], false);
        check_reduce(&tuned, &[1, 3, 2, 40, 50], &[1, 3, 4], true);
    }
    // Axes in any order name the same reduction.
    let mut graph = Graph::new(2);
    let x = graph.input("x", &[3, 4, 5], DType::F32).unwrap();
    let a = graph.sum(x, &[3, 1]).unwrap();
    assert_eq!(graph.shape(a), &[2, 4]);
    let plan = Plan::new(gpu, &graph, &[a], &[]).unwrap();
    let xv = randn(61, 2 * 60);
    plan.write(x, &xv).unwrap();
    plan.run().unwrap();
    assert_close(
        "sum over [3, 1]",
        &plan.read_blocking(a).unwrap(),
        &common::sum_ref(&[2, 3, 4, 5], &xv, &[1, 3], 1.0),
        RTOL,
        ATOL,
    );
    for bad in [&[0usize][..], &[4], &[1, 1], &[]] {
        let err = graph.sum(x, bad).unwrap_err();
        assert!(err.to_string().contains("sum") && err.to_string().contains("[2, 3, 4, 5]"), "{err}");
    }
}

fn check_broadcast(gpu: &modelbatch::Gpu, out_shape: &[usize], axes: &[usize], scale: f32) {
    let what = format!("broadcast to {out_shape:?} along {axes:?} times {scale}");
    let g = out_shape[0];
    let in_shape: Vec<usize> =
        out_shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
    let numel: usize = in_shape.iter().product();
    let seed = numel as u64 * 17 + axes.iter().sum::<usize>() as u64;
    let c = case(gpu, g, vec![("x", in_shape[1..].to_vec(), randn(seed, numel))], seed, |gr, p| {
        gr.broadcast(p[0], out_shape, axes, scale)
    });
    let (y, grads) = c.run();
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    assert_close(
        &format!("{what}: forward"),
        &y,
        &common::broadcast_ref(out_shape, c.values(0), &sorted, scale as f64),
        1e-6,
        0.0,
    );
    let dx = common::sum_ref(out_shape, &c.r, &sorted, scale as f64);
    assert_close(&format!("{what}: backward"), &grads[0], &dx, RTOL, ATOL);
    c.fd(&grads);
}

#[test]
fn broadcast_forward_and_backward() {
    let gpu = gpu_or_skip!();
    check_broadcast(gpu, &[3, 5, 3, 7], &[2], 0.5);
    check_broadcast(gpu, &[2, 4, 7], &[1], 1.0);
    check_broadcast(gpu, &[2, 5, 4, 3], &[2, 3], -2.0);
    check_broadcast(gpu, &[3, 2, 3, 4], &[1, 3], 1.5);
    check_broadcast(gpu, &[3, 2, 3, 4], &[3, 1], 0.25); // unsorted
    check_broadcast(gpu, &[2, 1, 3, 1, 5], &[1, 2, 4], 1.0); // size-1 axes
    check_broadcast(gpu, &[17, 3, 5], &[1, 2], 1.0); // everything but G
    let mut graph = Graph::new(2);
    let x = graph.input("x", &[3], DType::F32).unwrap();
    let err = graph.broadcast(x, &[2, 4, 5], &[1], 1.0).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("broadcast") && msg.contains("[2, 3]") && msg.contains("[2, 4, 5]"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// cross-entropy

fn check_cross_entropy(gpu: &modelbatch::Gpu, g: usize, n: usize, classes: usize, reduction: Reduction) {
    let what = format!("cross_entropy {reduction:?} G={g} N={n} C={classes}");
    let seed = (g * 1000 + n * 10 + classes) as u64;
    let logits: Vec<f32> = randn(seed, g * n * classes).iter().map(|v| 3.0 * v).collect();
    let lab = labels(seed + 1, g * n, classes);
    let c = case(gpu, g, vec![("logits", vec![n, classes], logits)], seed, |gr, p| {
        let y = gr.input("labels", &[n], DType::U32)?;
        gr.cross_entropy(p[0], y, reduction)
    });
    c.plan.write_u32(c.plan.find("labels").unwrap(), &lab).unwrap();
    let (y, grads) = c.run();
    let rows = common::ce_rows_ref(c.values(0), &lab, classes);
    let (want, up): (Vec<f64>, Vec<f64>) = match reduction {
        Reduction::None => (rows.clone(), r64(&c.r)),
        Reduction::Sum | Reduction::Mean => {
            let div = if reduction == Reduction::Mean { n as f64 } else { 1.0 };
            let per_model = (0..g).map(|m| rows[m * n..(m + 1) * n].iter().sum::<f64>() / div).collect();
            (per_model, (0..g * n).map(|row| c.r[row / n] as f64 / div).collect())
        }
    };
    assert_close(&format!("{what}: forward"), &y, &want, RTOL, ATOL);
    let d = common::ce_grad_ref(c.values(0), &lab, classes, &up);
    assert_close(&format!("{what}: d logits"), &grads[0], &d, RTOL, ATOL);
    // Per-model sums over many samples round at a larger magnitude than one logit moves
    // them: a larger step keeps that noise small (the loss is smooth, truncation is O(eps²)).
    let eps = if n > 100 { 5e-2 } else { EPS };
    c.fd_with(&grads, eps, FD_RTOL, FD_ATOL);
    let labels = c.labels();
    assert!(labels.contains(&"ce_grad"), "{what}: {labels:?}");
}

#[test]
fn cross_entropy_all_reductions() {
    let gpu = gpu_or_skip!();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        check_cross_entropy(gpu, 17, 5, 7, reduction);
        check_cross_entropy(gpu, 2, 3, 12, reduction);
    }
}

#[test]
fn cross_entropy_more_samples_than_a_workgroup() {
    let gpu = gpu_or_skip!();
    // N > 256: each invocation of the per-model workgroup sums several samples.
    check_cross_entropy(gpu, 3, 300, 10, Reduction::Mean);
    check_cross_entropy(gpu, 2, 517, 3, Reduction::Sum);
}

#[test]
fn cross_entropy_invalid_label_is_nan_for_its_model_only() {
    let gpu = gpu_or_skip!();
    let (g, n, classes) = (3, 4, 5);
    let mut graph = Graph::new(g);
    let logits = graph.input("logits", &[n, classes], DType::F32).unwrap();
    let lab = graph.input("labels", &[n], DType::U32).unwrap();
    let none = graph.cross_entropy(logits, lab, Reduction::None).unwrap();
    let mean = graph.cross_entropy(logits, lab, Reduction::Mean).unwrap();
    let sum = graph.cross_entropy(logits, lab, Reduction::Sum).unwrap();
    let plan = Plan::new(gpu, &graph, &[none, mean, sum], &[]).unwrap();
    let lv = randn(71, g * n * classes);
    let mut yv = labels(72, g * n, classes);
    yv[n + 2] = classes as u32; // model 1, sample 2: out of range
    plan.write(logits, &lv).unwrap();
    plan.write_u32(lab, &yv).unwrap();
    plan.run().unwrap();
    let rows = plan.read_blocking(none).unwrap();
    for (i, v) in rows.iter().enumerate() {
        assert_eq!(v.is_nan(), i == n + 2, "row {i}: {v}");
    }
    for t in [mean, sum] {
        let per_model = plan.read_blocking(t).unwrap();
        assert!(per_model[0].is_finite() && per_model[1].is_nan() && per_model[2].is_finite(), "{per_model:?}");
    }
}

/// The default seed (all ones, a `fill` constant) through a linear layer and a per-model mean
/// loss: each model gets the gradient of its own loss. A parameter the loss does not depend
/// on gets no gradient.
#[test]
fn default_seed_backpropagates_each_models_own_loss() {
    let gpu = gpu_or_skip!();
    let (g, n, inp, classes) = (5, 3, 6, 4);
    let mut graph = Graph::new(g);
    let x = graph.input("x", &[n, inp], DType::F32).unwrap();
    let w = graph.param("w", &[classes, inp]).unwrap();
    let unused = graph.param("unused", &[2]).unwrap();
    let lab = graph.input("labels", &[n], DType::U32).unwrap();
    let logits = graph.linear(x, w, None).unwrap();
    let loss = graph.cross_entropy(logits, lab, Reduction::Mean).unwrap();
    let grads = autograd::grad(&mut graph, loss, None, &[w, unused]).unwrap();
    assert!(grads[1].is_none(), "a parameter the loss does not read got a gradient");
    let dw = grads[0].expect("gradient of w");
    let plan = Plan::new(gpu, &graph, &[loss, logits, dw], &[]).unwrap();
    let (xv, wv, yv) = (randn(81, g * n * inp), randn(82, g * classes * inp), labels(83, g * n, classes));
    plan.write(x, &xv).unwrap();
    plan.write(w, &wv).unwrap();
    plan.write_u32(lab, &yv).unwrap();
    plan.run().unwrap();
    let lv = plan.read_blocking(logits).unwrap();
    let rows = common::ce_rows_ref(&lv, &yv, classes);
    let want: Vec<f64> = (0..g).map(|m| rows[m * n..(m + 1) * n].iter().sum::<f64>() / n as f64).collect();
    assert_close("mean loss", &plan.read_blocking(loss).unwrap(), &want, RTOL, ATOL);
    let dlogits = common::ce_grad_ref(&lv, &yv, classes, &vec![1.0 / n as f64; g * n]);
    let dlogits: Vec<f32> = dlogits.iter().map(|&v| v as f32).collect();
    let (_, want_dw, _) = common::matmul_grads_ref(g, n, classes, inp, &xv, &wv, &dlogits, false, true);
    assert_close("dw with the default seed", &plan.read_blocking(dw).unwrap(), &want_dw, 1e-4, 1e-6);
}

// ---------------------------------------------------------------------------------------
// top-k accuracy

/// Rank of each sample's label as the shader documents it: the number of other logits that
/// beat it (larger, or NaN; ties do not beat). `None`: never counted correct (label out of
/// range, or a NaN label logit).
fn label_rank(row: &[f32], label: u32) -> Option<usize> {
    let l = label as usize;
    if l >= row.len() || row[l].is_nan() {
        return None;
    }
    Some(row.iter().enumerate().filter(|&(j, &v)| j != l && (v.is_nan() || v > row[l])).count())
}

/// CPU reference `[G, K]` of top-k accuracy.
fn topk_ref(g: usize, n: usize, c: usize, logits: &[f32], lab: &[u32], ks: &[u32], counts: bool) -> Vec<f64> {
    let mut out = vec![0.0; g * ks.len()];
    for m in 0..g {
        for i in 0..n {
            let row = m * n + i;
            if let Some(rank) = label_rank(&logits[row * c..(row + 1) * c], lab[row]) {
                for (t, &k) in ks.iter().enumerate() {
                    if rank < k as usize {
                        out[m * ks.len() + t] += 1.0;
                    }
                }
            }
        }
    }
    if !counts {
        out.iter_mut().for_each(|v| *v /= n as f64);
    }
    out
}

/// Runs `topk_accuracy` on given logits/labels; returns the flat `[G, K]` result and the
/// `[k][G]` view from `read_topk`.
#[allow(clippy::too_many_arguments)]
fn run_topk(
    gpu: &modelbatch::Gpu,
    g: usize,
    n: usize,
    c: usize,
    logits: &[f32],
    lab: &[u32],
    ks: &[u32],
    counts: bool,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut graph = Graph::new(g);
    let lt = graph.input("logits", &[n, c], DType::F32).unwrap();
    let yt = graph.input("labels", &[n], DType::U32).unwrap();
    let acc = graph.topk_accuracy(lt, yt, ks, counts).unwrap();
    assert_eq!(graph.shape(acc), &[g, ks.len()]);
    let plan = Plan::new(gpu, &graph, &[acc], &[]).unwrap();
    plan.write(lt, logits).unwrap();
    plan.write_u32(yt, lab).unwrap();
    plan.run().unwrap();
    let flat = plan.read_blocking(acc).unwrap();
    let by_k = pollster::block_on(plan.read_topk(acc)).unwrap();
    (flat, by_k)
}

fn check_topk_random(gpu: &modelbatch::Gpu, g: usize, n: usize, c: usize, ks: &[u32]) {
    let seed = (g * 100 + n * 10 + c) as u64;
    // Coarse values so that ties happen.
    let logits: Vec<f32> = randn(seed, g * n * c).iter().map(|v| (v * 4.0).round()).collect();
    let lab = labels(seed + 1, g * n, c);
    for counts in [false, true] {
        let what = format!("topk G={g} N={n} C={c} ks={ks:?} counts={counts}");
        let (flat, by_k) = run_topk(gpu, g, n, c, &logits, &lab, ks, counts);
        let want = topk_ref(g, n, c, &logits, &lab, ks, counts);
        assert_close(&what, &flat, &want, 1e-6, 0.0);
        assert_eq!(by_k.len(), ks.len(), "{what}: read_topk gives [k][G]");
        for (t, row) in by_k.iter().enumerate() {
            let col: Vec<f32> = (0..g).map(|m| flat[m * ks.len() + t]).collect();
            assert_eq!(row, &col, "{what}: read_topk row for k={}", ks[t]);
        }
        // k = C: every valid sample is correct.
        if let Some(t) = ks.iter().position(|&k| k as usize == c) {
            for m in 0..g {
                let v = flat[m * ks.len() + t];
                assert_eq!(v, if counts { n as f32 } else { 1.0 }, "{what}: k=C, model {m}");
            }
        }
    }
}

#[test]
fn topk_accuracy_fractions_and_counts() {
    let gpu = gpu_or_skip!();
    check_topk_random(gpu, 17, 5, 7, &[1, 3, 7]);
    check_topk_random(gpu, 2, 300, 10, &[1, 2, 5, 10]);
    check_topk_random(gpu, 3, 4, 4, &[4, 1]);
    check_topk_random(gpu, 2, 6, 9, &[1, 2, 3, 4, 5, 6, 7, 9]); // eight ks: the most one op takes
}

#[test]
fn topk_accuracy_ties_nan_and_bad_labels() {
    let gpu = gpu_or_skip!();
    let nan = f32::NAN;
    let (g, n, c) = (2, 6, 4);
    #[rustfmt::skip]
    let model0: [[f32; 4]; 6] = [
        [1.0, 1.0, 1.0, 1.0], // label 2: all tied, nothing beats it -> rank 0
        [0.0, 5.0, 5.0, 1.0], // label 1: tie with class 2 -> rank 0
        [nan, 0.0, 1.0, 2.0], // label 3: NaN beats it -> rank 1
        [0.0, nan, 1.0, 2.0], // label 1 is NaN: never correct, not even for k = C
        [0.0, 1.0, 2.0, 3.0], // label 4 >= C: never correct
        [3.0, 2.0, 1.0, 0.0], // label 3: rank 3
    ];
    let lab0 = [2, 1, 3, 1, 4, 3];
    #[rustfmt::skip]
    let model1: [[f32; 4]; 6] = [
        [0.0, 1.0, 2.0, 3.0],
        [0.0, 1.0, 2.0, 3.0],
        [0.0, 1.0, 2.0, 3.0],
        [nan, nan, nan, nan],  // NaN label logit among NaNs
        [9.0, nan, 1.0, 9.0],  // label 0: ties with class 3, NaN beats -> rank 1
        [-1.0, 2.0, 2.0, 2.0], // label 2: ties -> rank 0
    ];
    let lab1 = [3, 2, 0, 0, 0, 2];
    let logits: Vec<f32> = model0.iter().chain(&model1).flatten().copied().collect();
    let lab: Vec<u32> = lab0.iter().chain(&lab1).copied().collect();
    let ks = [1, 2, 3, 4];
    // Expected counts per model and k, worked by hand.
    let want_counts = [[2.0, 3.0, 3.0, 4.0], [2.0, 4.0, 4.0, 5.0]];
    let reference = topk_ref(g, n, c, &logits, &lab, &ks, true);
    assert_eq!(reference, want_counts.concat(), "the CPU reference disagrees with the hand count");
    let (counts, by_k) = run_topk(gpu, g, n, c, &logits, &lab, &ks, true);
    assert_close("topk counts with ties/NaN", &counts, &want_counts.concat(), 0.0, 0.0);
    assert_eq!(by_k[3], vec![4.0, 5.0]);
    let (fractions, _) = run_topk(gpu, g, n, c, &logits, &lab, &ks, false);
    let want: Vec<f64> = want_counts.concat().iter().map(|v| v / n as f64).collect();
    assert_close("topk fractions with ties/NaN", &fractions, &want, 1e-6, 0.0);
}

// ---------------------------------------------------------------------------------------
// shape errors

fn shape_error(e: Error) -> String {
    assert!(matches!(e, Error::Shape(_)), "expected a shape error, got {e:?}");
    e.to_string()
}

#[test]
fn shape_errors_name_the_op_and_both_shapes() {
    let mut graph = Graph::new(2);
    let a = graph.input("a", &[3, 4], DType::F32).unwrap();
    let b = graph.input("b", &[5, 6], DType::F32).unwrap();
    let msg = shape_error(graph.matmul(a, b, None, false, false).unwrap_err());
    assert!(msg.contains("matmul") && msg.contains("[2, 3, 4]") && msg.contains("[2, 5, 6]"), "{msg}");
    // Transposed B [N, K] = [5, 6]: K = 6 still differs from A's K = 4.
    let msg = shape_error(graph.matmul(a, b, None, false, true).unwrap_err());
    assert!(msg.contains("matmul") && msg.contains("[2, 3, 4]") && msg.contains("[2, 5, 6]"), "{msg}");

    let x = graph.input("x", &[5, 7], DType::F32).unwrap();
    let w = graph.input("w", &[3, 6], DType::F32).unwrap();
    let msg = shape_error(graph.linear(x, w, None).unwrap_err());
    assert!(msg.contains("linear") && msg.contains("[2, 5, 7]") && msg.contains("[2, 3, 6]"), "{msg}");

    let w_ok = graph.input("w_ok", &[3, 7], DType::F32).unwrap();
    let bad_bias = graph.input("bias", &[4], DType::F32).unwrap();
    let msg = shape_error(graph.linear(x, w_ok, Some(bad_bias)).unwrap_err());
    assert!(
        msg.contains("matmul") && msg.contains("bias") && msg.contains("[2, 4]") && msg.contains("[2, 3]"),
        "{msg}"
    );

    let msg = shape_error(graph.add(a, x).unwrap_err());
    assert!(msg.contains("add") && msg.contains("[2, 3, 4]") && msg.contains("[2, 5, 7]"), "{msg}");

    let lab = graph.input("labels", &[4], DType::U32).unwrap();
    let msg = shape_error(graph.cross_entropy(x, lab, Reduction::Mean).unwrap_err());
    assert!(msg.contains("cross_entropy") && msg.contains("[2, 5, 7]") && msg.contains("[2, 4]"), "{msg}");
    let lab5 = graph.input("labels5", &[5], DType::U32).unwrap();
    for ks in [&[0u32][..], &[8], &[]] {
        let msg = shape_error(graph.topk_accuracy(x, lab5, ks, false).unwrap_err());
        assert!(msg.contains("topk_accuracy"), "{msg}");
    }
    // Labels must be u32, logits f32.
    let msg = shape_error(graph.cross_entropy(x, x, Reduction::None).unwrap_err());
    assert!(msg.contains("cross_entropy") && msg.contains("F32"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// dispatch grid

/// An elementwise op over more than 65,535 x 256 elements: the 1-D grid would pass the
/// workgroup-per-dimension limit, so the lowering folds it into 2-D and the kernel rebuilds the
/// flat index. Every element is checked, including the tail past the first grid row.
#[test]
fn relu_over_a_grid_folded_into_two_dimensions() {
    let gpu = gpu_or_skip!();
    let (g, per): (usize, usize) = (2, 8_400_003);
    let numel = g * per;
    assert!(numel.div_ceil(256) > 65_535, "the tensor must need more than 65,535 workgroups of 256");
    let mut graph = Graph::new(g);
    let x = graph.input("x", &[per], DType::F32).unwrap();
    let y = graph.relu(x).unwrap();
    let plan = Plan::new(gpu, &graph, &[y], &[]).unwrap();
    // A hash of the index, exact in f32 and about half negative: a wrong index mapping or an
    // unwritten element (buffers start at zero) shows up as a wrong value.
    let xv: Vec<f32> = (0..numel as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 8) as f32 - 8_388_608.0).collect();
    plan.write(x, &xv).unwrap();
    plan.run().unwrap();
    let got = plan.read_blocking(y).unwrap();
    assert_eq!(got.len(), numel);
    let bad: Vec<usize> = (0..numel).filter(|&i| got[i] != xv[i].max(0.0)).take(5).collect();
    assert!(bad.is_empty(), "relu wrong at elements {bad:?} (of {numel}; first grid row holds {})", 65_535 * 256);
    let positive_tail = xv[65_535 * 256..].iter().filter(|&&v| v > 0.0).count();
    assert!(positive_tail > 1000, "the tail past the first grid row must hold positive values");
}

/// `matmul_relu_grad` (relu's derivative in the GEMM's epilogue) equals the product followed
/// by the elementwise relu gradient, bit for bit, for every layout on odd and vec4 sizes, with
/// the register-blocked kernels, the workgroup-memory tiles and the depth split (40 deep: 4
/// slices).
#[test]
fn matmul_relu_grad_equals_the_two_ops() {
    let gpu = gpu_or_skip!();
    let tiles = gpu.with_tuning(gpu.tuning().apply("gemm_tile=1,gemm_groups=0,gemm_split=0").unwrap()).unwrap();
    let split = gpu.with_tuning(gpu.tuning().apply("gemm_split=16777216").unwrap()).unwrap();
    for gpu in [&register_kernels(gpu), &tiles, &split] {
        relu_grad_products(gpu);
    }
}

fn relu_grad_products(gpu: &modelbatch::Gpu) {
    for (m, k, n) in [(5, 7, 3), (36, 12, 40), (37, 8, 35), (9, 40, 13)] {
        for (ta, tb) in COMBOS {
            let g = 2;
            let mut graph = Graph::new(g);
            let a = graph.param("a", &if ta { [k, m] } else { [m, k] }).unwrap();
            let b = graph.param("b", &if tb { [n, k] } else { [k, n] }).unwrap();
            let y = graph.param("y", &[m, n]).unwrap();
            let fused = graph.matmul_relu_grad(a, b, ta, tb, y).unwrap();
            let product = graph.matmul(a, b, None, ta, tb).unwrap();
            let plain = graph.unary_grad(modelbatch::Unary::Relu, product, y).unwrap();
            let plan = Plan::new(gpu, &graph, &[fused, plain], &[]).unwrap();
            plan.write(a, &randn(1, g * m * k)).unwrap();
            plan.write(b, &randn(2, g * k * n)).unwrap();
            // Zeros, negatives and positives in y.
            let yv: Vec<f32> = randn(3, g * m * n).iter().map(|v| v.round()).collect();
            assert!(yv.contains(&0.0) && yv.iter().any(|v| *v > 0.0));
            plan.write(y, &yv).unwrap();
            plan.run().unwrap();
            let bits = |t| plan.read_blocking(t).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(fused), bits(plain), "M={m} K={k} N={n} trans_a={ta} trans_b={tb}");
            let labels = plan.dispatch_labels();
            assert_eq!(labels[0], gemm_entry(gpu, g, ta, tb, m, n, k), "{labels:?}");
        }
    }
}
