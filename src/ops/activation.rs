//! Activation functions, softmax and dropout (`shaders/activation.wgsl`).

use super::{grid_1d, grid_groups, Dispatch, Lower, ACTIVATION};
use crate::error::{Error, Result};
use crate::gpu::Binding;
use crate::graph::Unary;

const WG: u32 = 256;

fn func(f: Unary) -> [u32; 2] {
    match f {
        Unary::Relu => [0, 0],
        Unary::LeakyRelu(alpha) => [1, alpha.to_bits()],
        Unary::Gelu => [2, 0],
        Unary::Silu => [3, 0],
        Unary::Tanh => [4, 0],
        Unary::Sigmoid => [5, 0],
    }
}

#[allow(clippy::too_many_arguments)]
fn elementwise(
    ctx: &Lower,
    entry: &'static str,
    label: &'static str,
    f: Unary,
    n: usize,
    x: &wgpu::Buffer,
    dy: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
) -> Dispatch {
    let kernel =
        ctx.kernel(&ACTIVATION, entry, &[Binding::Read, Binding::Read, Binding::ReadWrite], &[("WG", WG as f64)]);
    let [code, alpha] = func(f);
    ctx.dispatch(kernel, label, &[n as u32, code, alpha, 0], &[x, dy.unwrap_or(ctx.dummy), out], grid_1d(n, WG))
}

/// `out = f(x)` over `n` elements.
pub(crate) fn lower_unary(
    ctx: &Lower,
    f: Unary,
    n: usize,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    Ok(vec![elementwise(ctx, "unary", f.name(), f, n, x, None, out)])
}

/// `out = dy * f'(x)` over `n` elements.
pub(crate) fn lower_unary_grad(
    ctx: &Lower,
    f: Unary,
    n: usize,
    dy: &wgpu::Buffer,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    Ok(vec![elementwise(ctx, "unary_grad", f.grad_name(), f, n, x, Some(dy), out)])
}

/// Rows up to this long take one invocation per row; longer rows one workgroup per row.
const ROW_PER_INVOCATION_MAX: usize = 32;
/// Invocations per workgroup for the one-row-per-invocation kernels.
const ROW_WG: u32 = 64;

/// Entry point, workgroup-size constants and grid for the softmax (or its gradient's) kernel over
/// `rows` rows of `cols` values.
fn row_geometry(grad: bool, rows: usize, cols: usize) -> (&'static str, Vec<(&'static str, f64)>, [u32; 3]) {
    if cols <= ROW_PER_INVOCATION_MAX {
        let entry = if grad { "softmax_grad_row" } else { "softmax_row" };
        (entry, vec![("WG", ROW_WG as f64)], grid_1d(rows, ROW_WG))
    } else {
        let entry = if grad { "softmax_grad_wg" } else { "softmax_wg" };
        let rwg = if cols <= 1024 { 64.0 } else { 256.0 };
        (entry, vec![("RWG", rwg)], grid_groups(rows))
    }
}

fn check_rows(op: &str, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols).is_none_or(|n| n > u32::MAX as usize) {
        return Err(Error::Usage(format!("{op}: {rows} x {cols} elements do not fit 32-bit indices")));
    }
    Ok(())
}

/// Softmax / log-softmax over rows of length `cols` (`rows` rows, all models).
pub(crate) fn lower_softmax(
    ctx: &Lower,
    rows: usize,
    cols: usize,
    log: bool,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let label = if log { "log_softmax" } else { "softmax" };
    check_rows(label, rows, cols)?;
    if rows * cols == 0 {
        return Ok(vec![]);
    }
    let (entry, constants, groups) = row_geometry(false, rows, cols);
    let kernel = ctx.kernel(&ACTIVATION, entry, &[Binding::Read, Binding::Read, Binding::ReadWrite], &constants);
    let words = [rows as u32, cols as u32, u32::from(log), 0];
    Ok(vec![ctx.dispatch(kernel, label, &words, &[x, ctx.dummy, out], groups)])
}

/// Gradient of softmax / log-softmax from `dy` and the forward output `y`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_softmax_grad(
    ctx: &Lower,
    rows: usize,
    cols: usize,
    log: bool,
    dy: &wgpu::Buffer,
    y: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    check_rows("softmax_grad", rows, cols)?;
    if rows * cols == 0 {
        return Ok(vec![]);
    }
    let (entry, constants, groups) = row_geometry(true, rows, cols);
    let kernel = ctx.kernel(&ACTIVATION, entry, &[Binding::Read, Binding::Read, Binding::ReadWrite], &constants);
    let words = [rows as u32, cols as u32, u32::from(log), 0];
    Ok(vec![ctx.dispatch(kernel, "softmax_grad", &words, &[y, dy, out], groups)])
}

/// Most models per dropout dispatch (the models are the grid's z dimension).
const MODELS_PER_DISPATCH: usize = 65_535;

/// The keep threshold of dropout with probability `p`: an element is dropped when its
/// 32-bit hash is below `round(p * 2^32)`.
fn drop_threshold(p: f32) -> u32 {
    (p as f64 * 4_294_967_296.0).round().clamp(0.0, u32::MAX as f64) as u32
}

/// Dropout (or its gradient: the same mask) over `g` models of `per_model` elements each;
/// `seed` is `[G, 2]` u32 (seed, step). `label` names the dispatches (forward or gradient).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_dropout(
    ctx: &Lower,
    label: &'static str,
    g: usize,
    per_model: usize,
    p: f32,
    x: &wgpu::Buffer,
    seed: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Usage(format!("dropout: p = {p} must be in [0, 1)")));
    }
    check_rows("dropout", g, per_model)?;
    if g * per_model == 0 {
        return Ok(vec![]);
    }
    let kernel = ctx.kernel(
        &ACTIVATION,
        "dropout",
        &[Binding::Read, Binding::Read, Binding::ReadWrite, Binding::Read],
        &[("WG", WG as f64)],
    );
    let scale = (1.0 / (1.0 - p as f64)) as f32;
    let [gx, gy, _] = grid_1d(per_model, WG);
    let mut dispatches = Vec::new();
    for first in (0..g).step_by(MODELS_PER_DISPATCH) {
        let models = (g - first).min(MODELS_PER_DISPATCH);
        let words = [per_model as u32, first as u32, drop_threshold(p), super::f(scale)];
        dispatches.push(ctx.dispatch(
            kernel.clone(),
            label,
            &words,
            &[x, ctx.dummy, out, seed],
            [gx, gy, models as u32],
        ));
    }
    Ok(dispatches)
}
