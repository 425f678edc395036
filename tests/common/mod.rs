//! Shared test helpers: the GPU (or a skip / failure), random data, CPU references.
#![allow(dead_code)]

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
