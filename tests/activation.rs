//! Activation functions, softmax / log-softmax and dropout, forward and backward, against
//! plain-Rust CPU references (f64), central finite differences, extreme inputs, and the
//! statistical and reproducibility properties of the dropout mask.
//!
//! Gradients are checked through a seeded backward pass: with leaves `p`, output `y` and a
//! random seed `r` shaped like `y`, `autograd::grad(y, Some(r), p)` is d sum(r*y) / dp.

mod common;

use common::grad_case::case_with_inputs as case;
use common::{assert_close, randn, randn_away};
use modelbatch::graph::Unary;
use modelbatch::{DType, Graph, Plan, TensorId};

const ALL_UNARY: [Unary; 6] =
    [Unary::Relu, Unary::LeakyRelu(0.1), Unary::Gelu, Unary::Silu, Unary::Tanh, Unary::Sigmoid];

// ---------------------------------------------------------------------------------------
// Harness

/// Runs a one-input, one-output graph `out = build(x)` on `xs` (`g` models) and returns `out`.
fn eval(
    gpu: &modelbatch::Gpu,
    g: usize,
    per_model: &[usize],
    xs: &[f32],
    build: impl FnOnce(&mut Graph, TensorId) -> modelbatch::Result<TensorId>,
) -> (Vec<f32>, Vec<&'static str>) {
    let mut graph = Graph::new(g);
    let x = graph.input("x", per_model, DType::F32).unwrap();
    let y = build(&mut graph, x).unwrap();
    let plan = Plan::new(gpu, &graph, &[y], &[]).unwrap();
    plan.write(x, xs).unwrap();
    plan.run().unwrap();
    (plan.read_blocking(y).unwrap(), plan.dispatch_labels())
}

/// Largest |got - want|.
fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------
// CPU references (f64)

/// erf in f64 for |z| < 2.5: the all-positive series
/// erf(z) = 2/sqrt(pi) e^(-z^2) sum_n 2^n z^(2n+1) / (1*3*...*(2n+1)) (no cancellation).
fn erf_series(z: f64) -> f64 {
    let z2 = z * z;
    let (mut term, mut sum) = (z, z);
    let mut n = 0.0;
    while term.abs() > 1e-18 * sum.abs() {
        n += 1.0;
        term *= 2.0 * z2 / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-z2).exp() * sum
}

/// erfc(z) for z >= 0 in f64 to ~1e-15 relative: the series below 2.5, above it the
/// continued fraction erfc(z) = e^(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...)))),
/// evaluated bottom-up.
fn erfc64(z: f64) -> f64 {
    assert!(z >= 0.0);
    if z < 2.5 {
        return 1.0 - erf_series(z);
    }
    let mut f = 0.0;
    for k in (1..=200).rev() {
        f = (k as f64 / 2.0) / (z + f);
    }
    (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f)
}

fn erf64(z: f64) -> f64 {
    if z.abs() < 2.5 {
        erf_series(z)
    } else {
        z.signum() * (1.0 - erfc64(z.abs()))
    }
}

/// Phi(x), accurate relative to its size in both tails.
fn normal_cdf64(x: f64) -> f64 {
    let q = 0.5 * erfc64(x.abs() / std::f64::consts::SQRT_2);
    if x < 0.0 {
        q
    } else {
        1.0 - q
    }
}

fn normal_pdf64(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn sigmoid64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn unary_ref(f: Unary, x: f64) -> f64 {
    match f {
        Unary::Relu => x.max(0.0),
        Unary::LeakyRelu(a) => {
            if x > 0.0 {
                x
            } else {
                a as f64 * x
            }
        }
        Unary::Gelu => x * normal_cdf64(x),
        Unary::Silu => x * sigmoid64(x),
        Unary::Tanh => x.tanh(),
        Unary::Sigmoid => sigmoid64(x),
    }
}

fn unary_grad_ref(f: Unary, x: f64) -> f64 {
    match f {
        Unary::Relu => f64::from(u8::from(x > 0.0)),
        Unary::LeakyRelu(a) => {
            if x > 0.0 {
                1.0
            } else {
                a as f64
            }
        }
        Unary::Gelu => {
            let pdf = if x.abs() > 40.0 { 0.0 } else { normal_pdf64(x) };
            normal_cdf64(x) + x * pdf
        }
        Unary::Silu => {
            let s = sigmoid64(x);
            s * (1.0 + x * (1.0 - s))
        }
        Unary::Tanh => 1.0 - x.tanh().powi(2),
        Unary::Sigmoid => {
            let s = sigmoid64(x);
            s * (1.0 - s)
        }
    }
}

/// Softmax or log-softmax of each row of `cols` values, f64.
fn softmax_ref(x: &[f32], cols: usize, log: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        for &v in row {
            let d = v as f64 - m;
            out.push(if log { d - s.ln() } else { d.exp() / s });
        }
    }
    out
}

/// Gradient of sum(r * softmax(x)) (or log-softmax) with respect to x, f64.
fn softmax_grad_ref(x: &[f32], r: &[f32], cols: usize, log: bool) -> Vec<f64> {
    let sm = softmax_ref(x, cols, false);
    let mut out = Vec::with_capacity(x.len());
    for (srow, rrow) in sm.chunks(cols).zip(r.chunks(cols)) {
        if log {
            let total: f64 = rrow.iter().map(|&v| v as f64).sum();
            out.extend(srow.iter().zip(rrow).map(|(&s, &rv)| rv as f64 - s * total));
        } else {
            let total: f64 = srow.iter().zip(rrow).map(|(&s, &rv)| s * rv as f64).sum();
            out.extend(srow.iter().zip(rrow).map(|(&s, &rv)| s * (rv as f64 - total)));
        }
    }
    out
}

/// MurmurHash3_x86_32 of little-endian 32-bit words (the key length is a multiple of 4).
fn murmur3(words: &[u32], seed: u32) -> u32 {
    let mut h = seed;
    for &w in words {
        let k = w.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
        h = (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    h ^= 4 * words.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Whether dropout keeps element `i` of a model with seed row `(seed, step)`: the hash of
/// the three words against round(p * 2^32) (the rule `shaders/activation.wgsl` documents).
fn keeps(seed: u32, step: u32, i: usize, p: f32) -> bool {
    let threshold = (p as f64 * 4_294_967_296.0).round() as u64;
    murmur3(&[seed, step, i as u32], 0) as u64 >= threshold
}

/// Dropout's scale 1 / (1 - p), rounded once to f32.
fn dropout_scale(p: f32) -> f32 {
    (1.0 / (1.0 - p as f64)) as f32
}

// ---------------------------------------------------------------------------------------
// Elementwise activations

#[test]
fn cpu_references_are_accurate() {
    // erf against published values (Abramowitz & Stegun / mpmath), and MurmurHash3 against
    // its reference vectors: the tests below rely on both.
    let known = [
        (0.0, 0.0),
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (2.0, 0.9953222650189527),
        (3.0, 0.9999779095030014),
        (4.0, 0.9999999845827421),
        (-1.5, -0.9661051464753108),
    ];
    for (z, want) in known {
        assert!((erf64(z) - want).abs() < 1e-15, "erf64({z}) = {}, want {want}", erf64(z));
    }
    // The tails, relative to their size (erfc from mpmath).
    for (z, want) in [
        (1.0, 0.15729920705028513),
        (2.5, 4.06952017444959e-4),
        (5.0, 1.537459794428035e-12),
        (10.0, 2.088487583762545e-45),
    ] {
        assert!((erfc64(z) / want - 1.0).abs() < 1e-13, "erfc64({z}) = {:e}, want {want:e}", erfc64(z));
    }
    assert_eq!(murmur3(&[], 0), 0);
    assert_eq!(murmur3(&[], 1), 0x514e_28b7);
    assert_eq!(murmur3(&[u32::from_le_bytes(*b"test")], 0), 0xba6b_d213);
}

/// Forward, backward and finite differences of every activation on random inputs.
#[test]
fn unary_forward_backward_and_finite_differences() {
    let gpu = gpu_or_skip!();
    for (k, f) in ALL_UNARY.into_iter().enumerate() {
        let (g, shape) = if k % 2 == 0 { (17, vec![5, 7]) } else { (3, vec![5, 3, 11]) };
        let numel = g * shape.iter().product::<usize>();
        // In ±[0.12, 4): away from relu's kink so finite differences never straddle it.
        let x: Vec<f32> = randn_away(100 + k as u64, numel, 0.03).iter().map(|v| 4.0 * v).collect();
        let c = case(gpu, g, vec![("x", shape, x)], 100 + k as u64, Box::new(move |gr, p, _| gr.unary(f, p[0])));
        let (y, grads) = c.run();
        let x = c.values(0);
        let what = f.name();
        let want: Vec<f64> = x.iter().map(|&v| unary_ref(f, v as f64)).collect();
        assert_close(&format!("{what} forward"), &y, &want, 2e-6, 1e-6);
        let dx: Vec<f64> = x.iter().zip(&c.r).map(|(&v, &r)| r as f64 * unary_grad_ref(f, v as f64)).collect();
        assert_close(&format!("{what} backward"), &grads[0], &dx, 2e-6, 1e-6);
        c.fd(&grads);
        let labels = c.plan.dispatch_labels();
        assert!(labels.contains(&f.name()) && labels.contains(&f.grad_name()), "{what}: {labels:?}");
    }
}

/// Every activation and its derivative on a dense grid over [-8, 8]; GELU within 1e-6
/// absolute of the exact x * (1 + erf(x / sqrt 2)) / 2, its derivative likewise.
#[test]
fn unary_on_a_dense_grid_match_the_exact_formulas() {
    let gpu = gpu_or_skip!();
    // x = k / 1024 for k in -8192..=8192, plus some values between grid points.
    let mut xs: Vec<f32> = (-8192..=8192).map(|k| k as f32 / 1024.0).collect();
    xs.extend(randn(7, 4000).iter().map(|v| 8.0 * v));
    xs.extend([1e-3, -1e-3, 1e-6, -1e-6, 0.0, -0.0]);
    let n = xs.len();
    let ones = vec![1.0f32; n];
    for f in ALL_UNARY {
        let mut graph = Graph::new(1);
        let x = graph.input("x", &[n], DType::F32).unwrap();
        let dy = graph.input("dy", &[n], DType::F32).unwrap();
        let y = graph.unary(f, x).unwrap();
        let dx = graph.unary_grad(f, dy, x).unwrap();
        let plan = Plan::new(gpu, &graph, &[y, dx], &[]).unwrap();
        plan.write(x, &xs).unwrap();
        plan.write(dy, &ones).unwrap();
        plan.run().unwrap();
        let (got_y, got_dx) = (plan.read_blocking(y).unwrap(), plan.read_blocking(dx).unwrap());
        let want_y: Vec<f64> = xs.iter().map(|&v| unary_ref(f, v as f64)).collect();
        let want_dx: Vec<f64> = xs.iter().map(|&v| unary_grad_ref(f, v as f64)).collect();
        let (ey, edx) = (max_abs_err(&got_y, &want_y), max_abs_err(&got_dx, &want_dx));
        eprintln!("{}: max |error| on [-8, 8]: value {ey:.2e}, derivative {edx:.2e}", f.name());
        if f == Unary::Gelu {
            assert_close("gelu vs exact erf formula", &got_y, &want_y, 0.0, 1e-6);
            assert_close("gelu derivative vs exact formula", &got_dx, &want_dx, 0.0, 1e-6);
            // The negative tail is computed directly, not as 1 + erf: relative accuracy too.
            let tail: Vec<usize> = (0..n).filter(|&i| xs[i] <= -3.0).collect();
            let got: Vec<f32> = tail.iter().map(|&i| got_y[i]).collect();
            let want: Vec<f64> = tail.iter().map(|&i| want_y[i]).collect();
            assert_close("gelu tail x <= -3 (relative)", &got, &want, 1e-5, 0.0);
        } else {
            // Values up to 8: one f32 ulp there is 9.5e-7.
            assert_close(&format!("{} on [-8, 8]", f.name()), &got_y, &want_y, 2e-6, 1e-6);
            assert_close(&format!("{} derivative on [-8, 8]", f.name()), &got_dx, &want_dx, 2e-6, 1e-6);
        }
    }
}

/// Huge and extreme inputs give finite values equal to the mathematical limits.
#[test]
fn unary_is_stable_for_huge_inputs() {
    let gpu = gpu_or_skip!();
    let xs: Vec<f32> = vec![
        100.0,
        -100.0,
        1e30,
        -1e30,
        30.0,
        -30.0,
        1e10,
        -1e10,
        f32::MAX,
        -f32::MAX,
        0.0,
        -0.0,
        20.5,
        -20.5,
        14.0,
        -14.0,
    ];
    let n = xs.len();
    let dys: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 0.5 } else { 1.0 }).collect();
    for f in ALL_UNARY {
        let mut graph = Graph::new(1);
        let x = graph.input("x", &[n], DType::F32).unwrap();
        let dy = graph.input("dy", &[n], DType::F32).unwrap();
        let y = graph.unary(f, x).unwrap();
        let dx = graph.unary_grad(f, dy, x).unwrap();
        let plan = Plan::new(gpu, &graph, &[y, dx], &[]).unwrap();
        plan.write(x, &xs).unwrap();
        plan.write(dy, &dys).unwrap();
        plan.run().unwrap();
        let (got_y, got_dx) = (plan.read_blocking(y).unwrap(), plan.read_blocking(dx).unwrap());
        for i in 0..n {
            let v = xs[i] as f64;
            let what = format!("{} at x = {:e}", f.name(), xs[i]);
            assert!(
                got_y[i].is_finite() && got_dx[i].is_finite(),
                "{what}: value {} derivative {}",
                got_y[i],
                got_dx[i]
            );
            let (wy, wdx) = (unary_ref(f, v), dys[i] as f64 * unary_grad_ref(f, v));
            assert!((got_y[i] as f64 - wy).abs() <= 1e-6 + 1e-6 * wy.abs(), "{what}: value {} want {wy}", got_y[i]);
            assert!(
                (got_dx[i] as f64 - wdx).abs() <= 1e-6 + 1e-6 * wdx.abs(),
                "{what}: derivative {} want {wdx}",
                got_dx[i]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Softmax

/// Forward, backward and finite differences of softmax / log-softmax on `[G, lead..., cols]`;
/// `offset` is added to the random inputs (large offsets test stability).
fn check_softmax(gpu: &modelbatch::Gpu, g: usize, shape: &[usize], log: bool, offset: f32, fd: bool) {
    let what = format!("{} G={g} shape={shape:?} offset={offset}", if log { "log_softmax" } else { "softmax" });
    let cols = *shape.last().unwrap();
    let numel = g * shape.iter().product::<usize>();
    let seed = (numel * 31 + cols) as u64 + u64::from(log);
    let x: Vec<f32> = randn(seed, numel).iter().map(|v| 3.0 * v + offset).collect();
    let c = case(gpu, g, vec![("x", shape.to_vec(), x)], seed, Box::new(move |gr, p, _| gr.softmax(p[0], log)));
    let (y, grads) = c.run();
    let x = c.values(0);
    assert_close(&format!("{what}: forward"), &y, &softmax_ref(x, cols, log), 1e-5, 1e-6);
    let atol = 2e-6 * (cols as f64).sqrt();
    assert_close(&format!("{what}: backward"), &grads[0], &softmax_grad_ref(x, &c.r, cols, log), 1e-4, atol);
    if fd {
        c.fd(&grads);
    }
    let labels = c.plan.dispatch_labels();
    let fwd = if log { "log_softmax" } else { "softmax" };
    assert_eq!(labels.iter().filter(|&&l| l == fwd).count(), 1, "{what}: {labels:?}");
    assert_eq!(labels.iter().filter(|&&l| l == "softmax_grad").count(), 1, "{what}: {labels:?}");
}

#[test]
fn softmax_forward_backward_and_finite_differences() {
    let gpu = gpu_or_skip!();
    for log in [false, true] {
        // One invocation per row (short rows).
        check_softmax(gpu, 17, &[5, 7], log, 0.0, true);
        check_softmax(gpu, 4, &[9], log, 0.0, true);
        check_softmax(gpu, 3, &[2, 5, 1], log, 0.0, true);
        // One workgroup per row: 64 and 256 invocations.
        check_softmax(gpu, 3, &[5, 100], log, 0.0, true);
        check_softmax(gpu, 2, &[3, 1500], log, 0.0, true);
        check_softmax(gpu, 3, &[2, 3, 33], log, 0.0, true);
    }
}

#[test]
fn softmax_is_stable_for_large_values() {
    let gpu = gpu_or_skip!();
    for log in [false, true] {
        for offset in [1000.0, -1000.0, 3e4] {
            check_softmax(gpu, 3, &[5, 7], log, offset, false);
            check_softmax(gpu, 3, &[4, 70], log, offset, false);
        }
    }
    // Rows with a huge value, equal values and -1e30: exact one-hot / uniform results.
    for cols in [7usize, 70] {
        let rows = 4;
        let mut x = vec![0.0f32; rows * cols];
        x[..cols].fill(1000.0); // uniform
        x[cols..2 * cols].copy_from_slice(&randn(3, cols));
        x[cols + 2] = 1e30; // one-hot
        x[2 * cols..3 * cols].fill(-1e30); // uniform at the bottom of the range
        x[3 * cols..].copy_from_slice(&randn(4, cols));
        x[3 * cols + 1] = -1e30; // one exact zero
        for log in [false, true] {
            let (y, _) = eval(gpu, 1, &[rows, cols], &x, |gr, t| gr.softmax(t, log));
            let want = softmax_ref(&x, cols, log);
            assert!(y.iter().all(|v| v.is_finite()), "non-finite output for log={log}, cols={cols}: {y:?}");
            assert_close(&format!("extreme rows, log={log}, cols={cols}"), &y, &want, 1e-5, 1e-6);
        }
    }
}

/// More rows than one grid dimension holds, on both kernels: every row is written.
#[test]
fn softmax_many_rows_fold_the_grid() {
    let gpu = gpu_or_skip!();
    // One workgroup per row: 66,000 rows > 65,535.
    let (rows, cols) = (66_000, 33);
    let x = randn(5, rows * cols);
    let (y, labels) = eval(gpu, 2, &[rows / 2, cols], &x, |gr, t| gr.softmax(t, true));
    assert_eq!(labels, ["log_softmax"]);
    assert_close("log_softmax over 66,000 rows", &y, &softmax_ref(&x, cols, true), 1e-5, 1e-6);
    // One invocation per row: 4,200,000 rows > 65,535 workgroups of 64.
    let (rows, cols) = (4_200_000, 2);
    let x = randn(6, rows * cols);
    let (y, _) = eval(gpu, 1, &[rows, cols], &x, |gr, t| gr.softmax(t, false));
    assert_close("softmax over 4.2M rows", &y, &softmax_ref(&x, cols, false), 1e-5, 1e-6);
}

// ---------------------------------------------------------------------------------------
// Dropout

/// Runs dropout over `xs` (`g` models of `per_model` values) with seed rows `seeds`
/// (`[G, 3]`: seed, step, element offset; flattened); returns the output.
fn run_dropout(gpu: &modelbatch::Gpu, g: usize, per_model: &[usize], xs: &[f32], seeds: &[u32], p: f32) -> Vec<f32> {
    let mut graph = Graph::new(g);
    let x = graph.input("x", per_model, DType::F32).unwrap();
    let seed = graph.input("seed", &[3], DType::U32).unwrap();
    let y = graph.dropout(x, seed, p).unwrap();
    let plan = Plan::new(gpu, &graph, &[y], &[]).unwrap();
    plan.write(x, xs).unwrap();
    plan.write_u32(seed, seeds).unwrap();
    plan.run().unwrap();
    plan.read_blocking(y).unwrap()
}

/// The keep mask of a dropout output whose input had no zeros.
fn mask_of(y: &[f32]) -> Vec<bool> {
    y.iter().map(|&v| v != 0.0).collect()
}

#[test]
fn dropout_drops_a_fraction_p_and_scales_the_rest_exactly() {
    let gpu = gpu_or_skip!();
    let (g, per) = (2, 50_000);
    let x = randn_away(21, g * per, 0.01);
    let seeds = [12_345u32, 7, 0, 999, 7, 0];
    for p in [0.1f32, 0.5, 0.9] {
        let y = run_dropout(gpu, g, &[per], &x, &seeds, p);
        let scale = dropout_scale(p);
        let (n, pf) = ((g * per) as f64, p as f64);
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64;
        let sigma = (n * pf * (1.0 - pf)).sqrt();
        assert!((zeros - n * pf).abs() <= 4.0 * sigma, "p={p}: {zeros} zeros of {n}, expected {} ± {sigma:.1}", n * pf);
        for m in 0..g {
            let zm = y[m * per..(m + 1) * per].iter().filter(|&&v| v == 0.0).count() as f64;
            let (nm, sm) = (per as f64, (per as f64 * pf * (1.0 - pf)).sqrt());
            assert!((zm - nm * pf).abs() <= 4.0 * sm, "p={p}, model {m}: {zm} zeros of {nm}");
        }
        for (i, (&yi, &xi)) in y.iter().zip(&x).enumerate() {
            let (m, j) = (i / per, i % per);
            let keep = keeps(seeds[3 * m], seeds[3 * m + 1], j, p);
            let want = if keep { xi * scale } else { 0.0 };
            assert_eq!(yi.to_bits(), want.to_bits(), "p={p}: element {i} (model {m}): got {yi}, want {want} (x {xi})");
        }
    }
}

#[test]
fn dropout_offset_continues_one_mask() {
    // A row's third word offsets the element index: running elements [o, o + n) with offset
    // o gives the same mask as elements o.. of one longer run (micro-batches of one batch).
    let gpu = gpu_or_skip!();
    let (g, per, p) = (2, 600, 0.5f32);
    let x = randn_away(24, g * per, 0.01);
    let whole = run_dropout(gpu, g, &[per], &x, &[5, 3, 0, 6, 3, 0], p);
    for (o, n) in [(0, 200), (200, 250), (450, 150)] {
        let xs: Vec<f32> = (0..g).flat_map(|m| x[m * per + o..m * per + o + n].to_vec()).collect();
        let part = run_dropout(gpu, g, &[n], &xs, &[5, 3, o as u32, 6, 3, o as u32], p);
        for m in 0..g {
            assert_eq!(&part[m * n..(m + 1) * n], &whole[m * per + o..m * per + o + n], "model {m}, offset {o}");
        }
    }
}

#[test]
fn dropout_with_p_zero_is_the_identity() {
    let gpu = gpu_or_skip!();
    let mut x = randn(22, 3 * 37);
    x[0] = -0.0;
    x[1] = f32::INFINITY;
    x[2] = -1e30;
    x[3] = f32::MAX;
    let y = run_dropout(gpu, 3, &[37], &x, &[1, 2, 0, 3, 4, 9, 5, 6, 0], 0.0);
    let (yb, xb): (Vec<u32>, Vec<u32>) =
        (y.iter().map(|v| v.to_bits()).collect(), x.iter().map(|v| v.to_bits()).collect());
    assert_eq!(yb, xb);
}

#[test]
fn dropout_backward_uses_the_forward_mask() {
    let gpu = gpu_or_skip!();
    let (g, shape, p) = (3, vec![5, 7, 13], 0.5f32);
    let numel = g * 5 * 7 * 13;
    let c = case(
        gpu,
        g,
        vec![("x", shape, randn_away(23, numel, 0.01))],
        23,
        Box::new(move |gr, t, extra| {
            let seed = gr.input("seed", &[3], DType::U32)?;
            extra.push(("seed".into(), seed));
            gr.dropout(t[0], seed, p)
        }),
    );
    let seed = c.input("seed");
    let scale = dropout_scale(p);
    for step in [0u32, 1, 2] {
        c.plan.write_u32(seed, &[77, step, 0, 78, step, 0, 79, step, 0]).unwrap();
        let (y, grads) = c.run();
        let x = c.values(0);
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        assert!(kept > 0 && kept < numel, "step {step}: {kept} of {numel} kept");
        for i in 0..numel {
            let keep = y[i] != 0.0;
            let want_y = if keep { x[i] * scale } else { 0.0 };
            let want_dx = if keep { c.r[i] * scale } else { 0.0 };
            assert_eq!(y[i], want_y, "step {step}: y[{i}]");
            assert_eq!(grads[0][i], want_dx, "step {step}: dx[{i}] does not use the forward mask");
        }
        c.fd(&grads);
    }
    let labels = c.plan.dispatch_labels();
    assert_eq!(labels.iter().filter(|&&l| l == "dropout").count(), 1, "forward: {labels:?}");
    assert_eq!(labels.iter().filter(|&&l| l == "dropout_grad").count(), 1, "backward: {labels:?}");
}

#[test]
fn dropout_masks_change_with_the_step_and_repeat_with_the_seed() {
    let gpu = gpu_or_skip!();
    let (g, per, p) = (3, 4096, 0.5f32);
    let x = randn_away(24, g * per, 0.01);
    let build = || {
        let mut graph = Graph::new(g);
        let x = graph.input("x", &[per], DType::F32).unwrap();
        let seed = graph.input("seed", &[3], DType::U32).unwrap();
        let y = graph.dropout(x, seed, p).unwrap();
        (Plan::new(gpu, &graph, &[y], &[]).unwrap(), x, seed, y)
    };
    let (plan, xi, si, yi) = build();
    plan.write(xi, &x).unwrap();
    let mask = |plan: &Plan, seeds: &[u32]| {
        plan.write_u32(si, seeds).unwrap();
        plan.run().unwrap();
        mask_of(&plan.read_blocking(yi).unwrap())
    };
    let step0 = [11, 0, 0, 12, 0, 0, 13, 0, 0];
    let step1 = [11, 1, 0, 12, 1, 0, 13, 1, 0];
    let a = mask(&plan, &step0);
    let b = mask(&plan, &step1);
    assert_eq!(mask(&plan, &step0), a, "the same (seed, step) gave a different mask on a second run");
    // A separately compiled plan regenerates the same masks.
    let (plan2, xi2, _, _) = build();
    plan2.write(xi2, &x).unwrap();
    assert_eq!(mask(&plan2, &step1), b, "a second plan gave a different mask for the same (seed, step)");
    // A new step gives an independent mask: agreement ≈ p² + (1-p)² = 1/2 per element.
    let sigma = (per as f64 * 0.25).sqrt();
    for m in 0..g {
        let agree = (0..per).filter(|&i| a[m * per + i] == b[m * per + i]).count() as f64;
        assert!((agree - per as f64 / 2.0).abs() <= 4.0 * sigma, "model {m}: steps 0 and 1 agree on {agree} of {per}");
    }
    // The step goes through a hash: consecutive steps and seeds are not shifted copies.
    let c = mask(&plan, &[11, 2, 0, 12, 2, 0, 13, 2, 0]);
    assert!(c != a && c != b);
}

#[test]
fn dropout_mask_of_a_model_does_not_depend_on_the_batch() {
    let gpu = gpu_or_skip!();
    let (g, shape, p) = (17, [5usize, 7, 13], 0.3f32);
    let per: usize = shape.iter().product();
    let x = randn_away(25, g * per, 0.01);
    let mut seeds: Vec<u32> = (0..g as u32).flat_map(|m| [1000 + 7919 * m, 5 + m % 3, 0]).collect();
    // Model 16 shares model 3's seed row: it must get model 3's mask.
    seeds[48] = seeds[9];
    seeds[49] = seeds[10];
    let batch = run_dropout(gpu, g, &shape, &x, &seeds, p);
    let masks: Vec<Vec<bool>> = batch.chunks(per).map(mask_of).collect();
    // A batch of one model with the same seed row and data gives the same output, bit for bit.
    let mut graph = Graph::new(1);
    let xi = graph.input("x", &shape, DType::F32).unwrap();
    let si = graph.input("seed", &[3], DType::U32).unwrap();
    let yi = graph.dropout(xi, si, p).unwrap();
    let single = Plan::new(gpu, &graph, &[yi], &[]).unwrap();
    for m in 0..g {
        single.write(xi, &x[m * per..(m + 1) * per]).unwrap();
        single.write_u32(si, &seeds[3 * m..3 * m + 3]).unwrap();
        single.run().unwrap();
        assert_eq!(single.read_blocking(yi).unwrap(), &batch[m * per..(m + 1) * per], "model {m} of 17 vs alone");
    }
    for a in 0..g {
        for b in a + 1..g {
            if (a, b) == (3, 16) {
                assert_eq!(masks[a], masks[b], "models with the same seed row have different masks");
            } else {
                assert_ne!(masks[a], masks[b], "models {a} and {b} have the same mask");
            }
        }
    }
}

/// More models than one dispatch's z dimension holds: every model uses its own seed row.
#[test]
fn dropout_many_models_are_dispatched_in_chunks() {
    let gpu = gpu_or_skip!();
    let (g, per, p) = (70_000, 3, 0.5f32);
    let x = randn_away(26, g * per, 0.01);
    let seeds: Vec<u32> = (0..g as u32).flat_map(|m| [m.wrapping_mul(2_654_435_761), m / 1000, 0]).collect();
    let y = run_dropout(gpu, g, &[per], &x, &seeds, p);
    let scale = dropout_scale(p);
    for (i, (&yi, &xi)) in y.iter().zip(&x).enumerate() {
        let m = i / per;
        let want = if keeps(seeds[3 * m], seeds[3 * m + 1], i % per, p) { xi * scale } else { 0.0 };
        assert_eq!(yi, want, "element {i} (model {m})");
    }
}

// ---------------------------------------------------------------------------------------
// Isolation

/// x -> gelu -> softmax (or log-softmax) -> dropout, with its gradient: changing model 0's
/// input and seed row leaves every other model's output and gradient bit for bit the same.
#[test]
fn models_are_isolated() {
    let gpu = gpu_or_skip!();
    for (cols, log) in [(7usize, false), (100, true)] {
        let (g, shape) = (5, vec![3, cols]);
        let per = 3 * cols;
        let c = case(
            gpu,
            g,
            vec![("x", shape, randn(27, g * per))],
            27,
            Box::new(move |gr, t, extra| {
                let seed = gr.input("seed", &[3], DType::U32)?;
                extra.push(("seed".into(), seed));
                let h = gr.unary(Unary::Gelu, t[0])?;
                let s = gr.softmax(h, log)?;
                gr.dropout(s, seed, 0.25)
            }),
        );
        let seed = c.input("seed");
        let seeds: Vec<u32> = (0..g as u32).flat_map(|m| [2 * m, 2 * m + 1, 0]).collect();
        c.plan.write_u32(seed, &seeds).unwrap();
        let (y0, d0) = c.run();
        let mut x = c.values(0).to_vec();
        for v in &mut x[..per] {
            *v = *v * 3.0 + 1.0;
        }
        c.plan.write(c.leaves[0].1, &x).unwrap();
        let mut seeds2 = seeds.clone();
        seeds2[0] = 1234;
        c.plan.write_u32(seed, &seeds2).unwrap();
        let (y1, d1) = c.run();
        assert_ne!(y0[..per], y1[..per], "model 0's output did not change");
        assert_ne!(d0[0][..per], d1[0][..per], "model 0's gradient did not change");
        assert_eq!(y0[per..], y1[per..], "cols={cols}: other models' outputs changed");
        assert_eq!(d0[0][per..], d1[0][per..], "cols={cols}: other models' gradients changed");
    }
}
