//! Optimizer update kernels (`shaders/optim.wgsl`), in place on parameter buffers.

use super::{grid_1d, Dispatch, Lower, OPTIM};
use crate::gpu::Binding;

const WG: u32 = 256;

/// Floats per model in an SGD hyper-parameter row (`SgdHyper` in the shader).
pub const SGD_HYPER_WIDTH: usize = 8;
/// Floats per model in an Adam hyper-parameter row (`AdamHyper` in the shader).
pub const ADAM_HYPER_WIDTH: usize = 8;

#[allow(clippy::too_many_arguments)]
/// One SGD update of a `[G, per_model]` parameter.
pub(crate) fn lower_sgd(
    ctx: &Lower,
    numel: usize,
    per_model: usize,
    param: &wgpu::Buffer,
    grad: &wgpu::Buffer,
    momentum: &wgpu::Buffer,
    hyper: &wgpu::Buffer,
    dead: &wgpu::Buffer,
) -> Dispatch {
    let kernel = ctx.kernel(
        &OPTIM,
        "sgd",
        &[Binding::ReadWrite, Binding::Read, Binding::ReadWrite, Binding::Read, Binding::Read],
        &[("WG", WG as f64)],
    );
    ctx.dispatch(
        kernel,
        "sgd",
        &[numel as u32, per_model as u32],
        &[param, grad, momentum, hyper, dead],
        grid_1d(numel, WG),
    )
}

/// One Adam/AdamW update of a `[G, per_model]` parameter.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_adam(
    ctx: &Lower,
    numel: usize,
    per_model: usize,
    param: &wgpu::Buffer,
    grad: &wgpu::Buffer,
    exp_avg: &wgpu::Buffer,
    exp_avg_sq: &wgpu::Buffer,
    hyper: &wgpu::Buffer,
    dead: &wgpu::Buffer,
) -> Dispatch {
    let kernel = ctx.kernel(
        &OPTIM,
        "adam",
        &[Binding::ReadWrite, Binding::Read, Binding::ReadWrite, Binding::ReadWrite, Binding::Read, Binding::Read],
        &[("WG", WG as f64)],
    );
    ctx.dispatch(
        kernel,
        "adam",
        &[numel as u32, per_model as u32],
        &[param, grad, exp_avg, exp_avg_sq, hyper, dead],
        grid_1d(numel, WG),
    )
}

/// Marks models whose `loss [G]` is not finite as dead in `dead [G]` (never revived).
pub(crate) fn lower_guard(ctx: &Lower, g: usize, loss: &wgpu::Buffer, dead: &wgpu::Buffer) -> Dispatch {
    let kernel = ctx.kernel(&OPTIM, "guard", &[Binding::Read, Binding::ReadWrite], &[("WG", WG as f64)]);
    ctx.dispatch(kernel, "guard", &[g as u32, 1], &[loss, dead], grid_1d(g, WG))
}

/// `dst += src` over `numel` elements, or `dst = 0` when `src` is `None` (gradient
/// accumulation over micro-batches).
pub(crate) fn lower_accumulate(ctx: &Lower, numel: usize, dst: &wgpu::Buffer, src: Option<&wgpu::Buffer>) -> Dispatch {
    let kernel = ctx.kernel(&OPTIM, "accumulate", &[Binding::ReadWrite, Binding::Read], &[("WG", WG as f64)]);
    let words = [numel as u32, u32::from(src.is_some())];
    ctx.dispatch(kernel, "accumulate", &words, &[dst, src.unwrap_or(ctx.dummy)], grid_1d(numel, WG))
}
