//! Elementwise binary kernels (`shaders/elementwise.wgsl`): add.

use super::{grid_1d, Dispatch, Lower, ELEMENTWISE};
use crate::gpu::Binding;

const WG: u32 = 256;

/// `out = entry(x, y)` over `n` elements; `y` is ignored by unary entries.
pub(crate) fn lower(
    ctx: &Lower,
    entry: &'static str,
    n: usize,
    x: &wgpu::Buffer,
    y: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
) -> Dispatch {
    let kernel =
        ctx.kernel(&ELEMENTWISE, entry, &[Binding::Read, Binding::Read, Binding::ReadWrite], &[("WG", WG as f64)]);
    ctx.dispatch(kernel, entry, &[n as u32], &[x, y.unwrap_or(ctx.dummy), out], grid_1d(n, WG))
}
