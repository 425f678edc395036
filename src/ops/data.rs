//! Batches gathered from a dataset resident on the GPU (`shaders/data.wgsl`).

use super::{f, grid_1d, Dispatch, Lower, DATA};
use crate::gpu::Binding;

const WG: u32 = 256;

#[allow(clippy::too_many_arguments)]
/// `out [G, N, pixels] = (data[indices[g, n]] / 255 - mean) / std`, bytes packed in u32.
pub(crate) fn lower_images(
    ctx: &Lower,
    count: usize,
    pixels: usize,
    mean: f32,
    std: f32,
    data: &wgpu::Buffer,
    indices: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Dispatch {
    // Whole u32 words per image: 4 pixels per invocation, written as one vec4 (every buffer
    // a plan binds is a whole number of them).
    let (entry, count) = if pixels % 4 == 0 { ("gather_images4", count / 4) } else { ("gather_images", count) };
    let kernel = ctx.kernel(&DATA, entry, &[Binding::Read, Binding::Read, Binding::ReadWrite], &[("WG", WG as f64)]);
    let words = [count as u32, pixels as u32, f(mean), f(1.0 / std)];
    ctx.dispatch(kernel, "gather_images", &words, &[data, indices, out], grid_1d(count, WG))
}

/// `out [G, N] = labels[indices[g, n]]`, label bytes packed in u32.
pub(crate) fn lower_labels(
    ctx: &Lower,
    count: usize,
    labels: &wgpu::Buffer,
    indices: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Dispatch {
    let kernel =
        ctx.kernel(&DATA, "gather_labels", &[Binding::Read, Binding::Read, Binding::ReadWrite], &[("WG", WG as f64)]);
    ctx.dispatch(kernel, "gather_labels", &[count as u32, 1, 0, 0], &[labels, indices, out], grid_1d(count, WG))
}
