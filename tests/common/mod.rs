//! Shared test helpers: the GPU (or a skip / failure), random data, CPU references.
#![allow(dead_code)]

pub mod grad_case;

use std::sync::OnceLock;

use modelbatch::nn::Rng;
use modelbatch::Gpu;

/// The process-wide test GPU. `None` means "skip": no adapter and `MODELBATCH_REQUIRE_GPU`
/// is not `1`. With `MODELBATCH_REQUIRE_GPU=1` a missing adapter panics (the test fails).
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    let got = GPU.get_or_init(|| {
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            // Mesa warns on every adapter enumeration without one.
            let dir = std::env::temp_dir().join("modelbatch-xdg");
            let _ = std::fs::create_dir_all(&dir);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            }
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
        }
        if std::env::var_os("MODELBATCH_CACHE_DIR").is_none() {
            // Tests start from the built-in tunings, not from one `modelbatch tune --save`
            // left on this machine.
            std::env::set_var("MODELBATCH_CACHE_DIR", "");
        }
        Gpu::new_blocking().map_err(|e| e.to_string())
    });
    match got {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("MODELBATCH_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("MODELBATCH_REQUIRE_GPU=1 but no GPU adapter is available: {e}");
            }
            eprintln!("SKIPPED (no GPU adapter; set MODELBATCH_REQUIRE_GPU=1 to make this a failure): {e}");
            None
        }
    }
}

/// Returns early from a test when there is no GPU (and it is not required).
#[macro_export]
macro_rules! gpu_or_skip {
    () => {
        match common::gpu() {
            Some(g) => g,
            None => return,
        }
    };
}

/// `n` values uniform in [-1, 1) from `seed`.
pub fn randn(seed: u64, n: usize) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.symmetric(1.0)).collect()
}

/// `n` labels in `0..classes` from `seed`.
pub fn labels(seed: u64, n: usize, classes: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.below(classes) as u32).collect()
}

/// Asserts |a - b| <= atol + rtol |b| elementwise, naming the first offender.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(err <= atol + rtol * w.abs(), "{what}: element {i}: got {g}, want {w} (error {err:e})");
    }
}

/// `got` equals `want` within 1e-4 of the largest magnitude in `want` (at least 1e-3): two runs
/// of the same training that add some sums in another order (a split batch, another device).
pub fn assert_close_to_scale(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        assert!((x - y).abs() <= 1e-4 * scale, "{what}[{i}]: {x} vs {y}");
    }
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Logical element (i, j) of op(M) where M is stored `[rows, cols]`, or `[cols, rows]` if
/// `trans`.
fn at(m: &[f32], off: usize, rows: usize, cols: usize, i: usize, j: usize, trans: bool) -> f64 {
    if trans {
        m[off + j * rows + i] as f64
    } else {
        m[off + i * cols + j] as f64
    }
}

/// CPU reference of batched `op(A)·op(B) + bias`, f64 accumulation. Returns `[G, M, N]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ref(
    g: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    ta: bool,
    tb: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; g * m * n];
    for gi in 0..g {
        for i in 0..m {
            for j in 0..n {
                let mut acc = bias.map_or(0.0, |bb| bb[gi * n + j] as f64);
                for kk in 0..k {
                    acc += at(a, gi * m * k, m, k, i, kk, ta) * at(b, gi * k * n, k, n, kk, j, tb);
                }
                out[gi * m * n + i * n + j] = acc;
            }
        }
    }
    out
}

/// Per-row cross-entropy losses `[G*N]` of logits `[G, N, C]`, f64.
pub fn ce_rows_ref(logits: &[f32], labels: &[u32], c: usize) -> Vec<f64> {
    labels
        .iter()
        .enumerate()
        .map(|(r, &y)| {
            let row = &logits[r * c..(r + 1) * c];
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            lse - row[y as usize] as f64
        })
        .collect()
}

/// Gradient of per-row losses weighted by `up[row]` with respect to the logits, f64.
pub fn ce_grad_ref(logits: &[f32], labels: &[u32], c: usize, up: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; logits.len()];
    for (r, &y) in labels.iter().enumerate() {
        let row = &logits[r * c..(r + 1) * c];
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        for j in 0..c {
            let p = (row[j] as f64 - m).exp() / s;
            out[r * c + j] = (p - if j == y as usize { 1.0 } else { 0.0 }) * up[r];
        }
    }
    out
}

// ---- Gradient-check helpers (appended for tests/ops.rs) ----

/// `sum(r * y)` in f64: the scalar whose gradient a seeded backward pass computes.
pub fn dot64(r: &[f32], y: &[f32]) -> f64 {
    assert_eq!(r.len(), y.len(), "dot64: lengths differ");
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// `n` values uniform in `±[lo, 1)`: random signs, bounded away from 0 (for functions with a
/// kink at 0, so that finite differences never straddle it).
pub fn randn_away(seed: u64, n: usize, lo: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| {
            let mag = lo + (1.0 - lo) * r.uniform() as f32;
            if r.below(2) == 0 {
                mag
            } else {
                -mag
            }
        })
        .collect()
}

/// `count` coordinates spread over `0..n`, first and last included (all of them if `n` is small).
pub fn fd_coords(n: usize, count: usize) -> Vec<usize> {
    if count >= n {
        return (0..n).collect();
    }
    if count < 2 {
        return vec![n - 1];
    }
    let mut v: Vec<usize> = (0..count).map(|j| j * (n - 1) / (count - 1)).collect();
    v.dedup();
    v
}

/// One differentiable leaf for [`check_fd`]: its tensor, its current values and the analytic
/// gradient of `sum(r * y)` with respect to it.
pub struct FdLeaf<'a> {
    pub name: &'a str,
    pub id: modelbatch::TensorId,
    pub values: &'a [f32],
    pub grad: &'a [f32],
}

/// `leaves` as (name, tensor, values) paired with their analytic gradients, in order.
pub fn fd_leaves<'a, N: AsRef<str>>(
    leaves: &'a [(N, modelbatch::TensorId, Vec<f32>)],
    grads: &'a [Vec<f32>],
) -> Vec<FdLeaf<'a>> {
    leaves
        .iter()
        .zip(grads)
        .map(|((name, id, values), grad)| FdLeaf { name: name.as_ref(), id: *id, values, grad })
        .collect()
}

/// Central finite differences of `sum(r * y)` for `coords` coordinates of each leaf, computed
/// by re-running the same compiled `plan` with one coordinate perturbed by `±eps` at a time,
/// compared with the analytic gradient:
/// `|fd - analytic| <= atol * max|leaf gradient| + rtol * max(|fd|, |analytic|)`, i.e. `atol`
/// is relative to the leaf's largest gradient (f32 rounding noise scales with the values, not
/// with one small coordinate). Every leaf is restored to its values afterwards.
#[allow(clippy::too_many_arguments)]
pub fn check_fd(
    plan: &modelbatch::Plan,
    y: modelbatch::TensorId,
    r: &[f32],
    leaves: &[FdLeaf],
    coords: usize,
    eps: f32,
    rtol: f64,
    atol: f64,
) {
    let objective = |plan: &modelbatch::Plan| {
        plan.run().expect("running the plan for a finite difference");
        dot64(r, &plan.read_blocking(y).expect("reading the output for a finite difference"))
    };
    for leaf in leaves {
        assert_eq!(leaf.values.len(), leaf.grad.len(), "{}: gradient length", leaf.name);
        let scale = leaf.grad.iter().fold(0.0f64, |m, &g| m.max((g as f64).abs()));
        let mut v = leaf.values.to_vec();
        for idx in fd_coords(v.len(), coords) {
            let orig = v[idx];
            let (up, down) = (orig + eps, orig - eps);
            v[idx] = up;
            plan.write(leaf.id, &v).unwrap();
            let f_up = objective(plan);
            v[idx] = down;
            plan.write(leaf.id, &v).unwrap();
            let f_down = objective(plan);
            v[idx] = orig;
            // The step actually taken, after rounding to f32.
            let fd = (f_up - f_down) / (up as f64 - down as f64);
            let an = leaf.grad[idx] as f64;
            let err = (fd - an).abs();
            assert!(
                err <= 1e-7 + atol * scale + rtol * fd.abs().max(an.abs()),
                "{}: finite difference at element {idx}: analytic {an}, numeric {fd} (error {err:e}, largest gradient {scale:e})",
                leaf.name
            );
        }
        plan.write(leaf.id, leaf.values).unwrap();
    }
}

/// Row-major strides of `shape`.
pub fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// CPU reference of `scale * sum of x [shape] over axes` (axes removed), f64 accumulation.
pub fn sum_ref(shape: &[usize], x: &[f32], axes: &[usize], scale: f64) -> Vec<f64> {
    let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
    let kept_shape: Vec<usize> = kept.iter().map(|&a| shape[a]).collect();
    let out_strides = strides_of(&kept_shape);
    let in_strides = strides_of(shape);
    let mut out = vec![0.0f64; kept_shape.iter().product()];
    for (i, &v) in x.iter().enumerate() {
        let o: usize = kept.iter().zip(&out_strides).map(|(&a, &os)| (i / in_strides[a]) % shape[a] * os).sum();
        out[o] += v as f64;
    }
    out.iter().map(|v| v * scale).collect()
}

/// CPU reference of `scale * x` repeated along `axes` of `out_shape`.
pub fn broadcast_ref(out_shape: &[usize], x: &[f32], axes: &[usize], scale: f64) -> Vec<f64> {
    let kept: Vec<usize> = (0..out_shape.len()).filter(|a| !axes.contains(a)).collect();
    let kept_shape: Vec<usize> = kept.iter().map(|&a| out_shape[a]).collect();
    let in_strides = strides_of(&kept_shape);
    let out_strides = strides_of(out_shape);
    let numel: usize = out_shape.iter().product();
    (0..numel)
        .map(|i| {
            let src: usize =
                kept.iter().zip(&in_strides).map(|(&a, &is)| (i / out_strides[a]) % out_shape[a] * is).sum();
            x[src] as f64 * scale
        })
        .collect()
}

/// CPU reference of the gradients of `sum(r * (op(A)·op(B) + bias))` with respect to A and
/// B in their stored layouts and to the bias: `(dA, dB, dbias)`, f64 accumulation.
#[allow(clippy::too_many_arguments)]
pub fn matmul_grads_ref(
    g: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    r: &[f32],
    ta: bool,
    tb: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let ai = |gi: usize, i: usize, kk: usize| gi * m * k + if ta { kk * m + i } else { i * k + kk };
    let bi = |gi: usize, kk: usize, j: usize| gi * k * n + if tb { j * k + kk } else { kk * n + j };
    let (mut da, mut db, mut dbias) = (vec![0.0; g * m * k], vec![0.0; g * k * n], vec![0.0; g * n]);
    for gi in 0..g {
        for i in 0..m {
            for j in 0..n {
                let rv = r[gi * m * n + i * n + j] as f64;
                dbias[gi * n + j] += rv;
                for kk in 0..k {
                    da[ai(gi, i, kk)] += rv * b[bi(gi, kk, j)] as f64;
                    db[bi(gi, kk, j)] += rv * a[ai(gi, i, kk)] as f64;
                }
            }
        }
    }
    (da, db, dbias)
}

/// `n` 1x12x12 byte images of 10 classes, each image's pattern set by its label (so there is
/// something to learn), from `seed`.
pub fn small_images(n: usize, seed: u64) -> modelbatch::train::Dataset {
    let mut rng = Rng::new(seed);
    let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
    let images =
        labels.iter().flat_map(|&l| (0..144).map(move |p| if p % 10 == l as usize { 200u8 } else { 20 })).collect();
    modelbatch::train::Dataset { images, labels, n, sample: vec![1, 12, 12], classes: 10, name: "synthetic".into() }
}

/// A small convnet for 1x12x12 inputs: conv (3x3, padding 1, `channels` outputs), optional
/// BatchNorm, relu, 2x2 max pooling, flatten, dropout 0.2, linear to 10 classes.
pub fn small_convnet(channels: usize, batchnorm: bool) -> modelbatch::nn::ModelSpec {
    let bn = if batchnorm { r#"{"type": "batchnorm2d"},"# } else { "" };
    modelbatch::nn::ModelSpec::from_json(&format!(
        r#"{{"input": [1, 12, 12], "layers": [
            {{"type": "conv2d", "out_channels": {channels}, "kernel_size": 3, "padding": 1}},
            {bn}
            {{"type": "relu"}},
            {{"type": "maxpool2d", "kernel_size": 2}},
            {{"type": "flatten"}},
            {{"type": "dropout", "p": 0.2}},
            {{"type": "linear", "out_features": 10}}
        ]}}"#
    ))
    .unwrap()
}

/// conv (3x3, padding 1, 3 outputs), BatchNorm (running estimates), relu, 2x2 max pooling,
/// flatten, linear to 10 classes, for 1x12x12 inputs: no dropout, so that two models with
/// the same weights on the same samples compute the same.
pub fn bn_convnet() -> modelbatch::nn::ModelSpec {
    modelbatch::nn::ModelSpec::from_json(
        r#"{"input": [1, 12, 12], "layers": [
            {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1},
            {"type": "batchnorm2d"}, {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
            {"type": "flatten"}, {"type": "linear", "out_features": 10}
        ]}"#,
    )
    .unwrap()
}
