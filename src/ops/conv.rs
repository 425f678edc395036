//! 2-D convolution as implicit GEMM (`shaders/conv.wgsl`): forward with fused bias,
//! gradient with respect to the input, gradient with respect to the weight.
//!
//! Each product is a batched GEMM over z = (model, channel group) with register-blocked 4x4
//! outputs per invocation; no im2col buffer is materialised. The weight gradient has a small
//! output and a long depth (every sample and output position), so it is split along the
//! depth (split-K) into partial sums that a second dispatch adds in a fixed order.

use std::sync::Arc;

use super::{grid_1d, Dispatch, Image, Lower, CONV};
use crate::error::{Error, Result};
use crate::gpu::{Binding, Kernel};
use crate::graph::Conv2dGeom;

/// Shapes of one convolution: input `x`, output `y` (`[G, N, O, OH, OW]`), geometry.
/// The weight is `[G, y.c, x.c / groups, kernel[0], kernel[1]]`.
pub(crate) struct Conv<'a> {
    pub x: Image,
    pub y: Image,
    pub geom: &'a Conv2dGeom,
}

/// Most workgroups per dispatch dimension (WebGPU's portable limit).
const MAX_GROUPS: usize = 65_535;
/// Invocations per workgroup of the GEMM kernels (each owns a 4x4 output block).
const LANES: usize = 64;
/// Workgroup size of the split-K reduction (`REDUCE_WG` in the shader).
const REDUCE_WG: u32 = 256;
/// Split-K: aim for this many invocations in the weight-gradient GEMM ...
const TARGET_THREADS: usize = 1 << 15;
/// ... but give each split at least this many multiply-adds per output ...
const MIN_SPLIT_DEPTH: usize = 256;
/// ... and keep the partial sums under this many bytes.
const MAX_PARTIAL_BYTES: u64 = 64 << 20;

/// Loop iterations one invocation may run in total, over all its loops: lavapipe (llvmpipe)
/// gives each invocation a budget of 65,535 loop iterations and silently exits every loop
/// once it is spent. The weight gradient splits its depth to stay under it; the data kernels
/// refuse larger depths. A margin covers the short setup and store loops.
const LOOP_BUDGET: usize = 65_535 - 512;

/// Indices of the per-dispatch words in the uniform (`Params` in the shader).
const W_X0: usize = 20;
const W_Z0: usize = 21;

/// Checked dimensions of a convolution (all per model, `groups >= 1`).
struct Dims {
    g: usize,
    groups: usize,
    cg: usize,
    og: usize,
    kk: usize,
}

fn dims(op: &str, s: &Conv) -> Result<Dims> {
    let geom = s.geom;
    let groups = geom.groups.max(1);
    let (x, y) = (s.x, s.y);
    let fits = x.g == y.g
        && x.n == y.n
        && x.c % groups == 0
        && y.c % groups == 0
        && geom.kernel.iter().all(|&k| k > 0)
        && geom.dilation.iter().all(|&d| d > 0)
        && geom.out_size(0, x.h) == Some(y.h)
        && geom.out_size(1, x.w) == Some(y.w);
    if !fits {
        return Err(Error::Shape(format!(
            "{op}: input {:?} and output {:?} do not fit geometry {geom:?}",
            [x.g, x.n, x.c, x.h, x.w],
            [y.g, y.n, y.c, y.h, y.w]
        )));
    }
    let numel = [x.numel(), y.numel(), y.g * y.c * (x.c / groups) * geom.kernel[0] * geom.kernel[1]];
    if numel.iter().any(|&e| e > u32::MAX as usize / 2) {
        return Err(Error::Usage(format!("{op}: a tensor has more than 2^31 elements; split the batch")));
    }
    // Iterations of one invocation's loops: (ky, kx, channel) for the data kernels, one output
    // row (n, oh) of the weight gradient's depth.
    let [kh, kw] = geom.kernel;
    let depth = |ch: usize| kh * (kw * (ch + 1) + 1);
    if depth(x.c / groups).max(depth(y.c / groups)).max(y.w + 1) > LOOP_BUDGET {
        return Err(Error::Usage(format!(
            "{op}: a depth of (C/groups or O/groups) x {kh} x {kw} = {} or an output width of {} passes the {LOOP_BUDGET} loop iterations one invocation may run (lavapipe's limit)",
            (x.c.max(y.c) / groups) * kh * kw,
            y.w
        )));
    }
    Ok(Dims { g: x.g, groups, cg: x.c / groups, og: y.c / groups, kk: geom.kernel[0] * geom.kernel[1] })
}

/// The uniform `Params` of the shader, with the per-dispatch offsets zero.
fn words(s: &Conv, d: &Dims, flags: u32, splits: usize, rows_per_split: usize, total: usize) -> Vec<u32> {
    let (x, y, geom) = (s.x, s.y, s.geom);
    let w = [
        x.n,
        x.c,
        x.h,
        x.w,
        y.c,
        y.h,
        y.w,
        d.groups,
        d.cg,
        d.og,
        geom.kernel[0],
        geom.kernel[1],
        geom.stride[0],
        geom.stride[1],
        geom.padding[0],
        geom.padding[1],
        geom.dilation[0],
        geom.dilation[1],
        flags as usize,
        splits,
        0,
        0,
        rows_per_split,
        total,
        geom.dilation[0] / geom.stride[0],
        geom.dilation[0] % geom.stride[0],
        geom.dilation[1] / geom.stride[1],
        geom.dilation[1] % geom.stride[1],
    ];
    w.map(|v| v as u32).to_vec()
}

/// Workgroup width for `blocks` invocations along the memory-contiguous axis of the output:
/// the widest (at most `LANES`) that keeps at least 3/4 of the lanes busy, measured faster on
/// lavapipe than wide, mostly idle workgroups for the weight gradient's short axis.
/// Workgroups are one-dimensional: every invocation of a workgroup shares its block along the
/// other axis, so that operand's loads are uniform (broadcast on GPUs, one load for all lanes
/// on lavapipe, measured 1.7x faster than 2-D workgroups there).
fn workgroup(blocks: usize) -> usize {
    let mut wgx = LANES;
    while wgx > 8 && 4 * blocks < 3 * blocks.div_ceil(wgx) * wgx {
        wgx /= 2;
    }
    wgx
}

fn gemm_kernel(ctx: &Lower, entry: &'static str, storage: &[Binding], wgx: usize) -> Arc<Kernel> {
    ctx.kernel(&CONV, entry, storage, &[("WGX", wgx as f64)])
}

/// Dispatches `tiles_x * tiles_y * zs` workgroups, splitting x and z into several dispatches
/// (offsets in the uniform) where they pass the per-dimension limit.
fn tiled(
    ctx: &Lower,
    kernel: &Arc<Kernel>,
    label: &'static str,
    words: &[u32],
    buffers: &[&wgpu::Buffer],
    [tiles_x, tiles_y, zs]: [usize; 3],
) -> Result<Vec<Dispatch>> {
    if tiles_y > MAX_GROUPS {
        return Err(Error::Usage(format!(
            "{label}: {tiles_y} column tiles exceed the 65,535 workgroups per dispatch dimension"
        )));
    }
    let mut out = Vec::new();
    let mut words = words.to_vec();
    for z0 in (0..zs).step_by(MAX_GROUPS) {
        for x0 in (0..tiles_x).step_by(MAX_GROUPS) {
            words[W_X0] = x0 as u32;
            words[W_Z0] = z0 as u32;
            let groups = [(tiles_x - x0).min(MAX_GROUPS), tiles_y, (zs - z0).min(MAX_GROUPS)];
            out.push(ctx.dispatch(kernel.clone(), label, &words, buffers, groups.map(|v| v as u32)));
        }
    }
    Ok(out)
}

/// `out [y] = conv(x, w) + bias`.
pub(crate) fn lower_forward(
    ctx: &Lower,
    s: &Conv,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    const LABEL: &str = "conv2d";
    let d = dims(LABEL, s)?;
    // One invocation per output position and block of 4 images.
    let threads = s.y.n.div_ceil(4) * s.y.h * s.y.w;
    let wgx = workgroup(threads);
    let kernel = gemm_kernel(ctx, LABEL, &[Binding::Read, Binding::Read, Binding::Read, Binding::ReadWrite], wgx);
    let words = words(s, &d, u32::from(bias.is_some()), 1, 0, 0);
    let grid = [threads.div_ceil(wgx), d.og.div_ceil(4), d.g * d.groups];
    tiled(ctx, &kernel, LABEL, &words, &[x, w, bias.unwrap_or(ctx.dummy), out], grid)
}

/// `dx [x] = d conv / d x` applied to `dy [y]`.
pub(crate) fn lower_grad_input(
    ctx: &Lower,
    s: &Conv,
    dy: &wgpu::Buffer,
    w: &wgpu::Buffer,
    dx: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    const LABEL: &str = "conv2d_grad_input";
    let d = dims(LABEL, s)?;
    // One invocation per input position and block of 4 images.
    let threads = s.x.n.div_ceil(4) * s.x.h * s.x.w;
    let wgx = workgroup(threads);
    let kernel = gemm_kernel(ctx, LABEL, &[Binding::Read, Binding::Read, Binding::ReadWrite], wgx);
    let words = words(s, &d, 0, 1, 0, 0);
    let grid = [threads.div_ceil(wgx), d.cg.div_ceil(4), d.g * d.groups];
    tiled(ctx, &kernel, LABEL, &words, &[dy, w, dx], grid)
}

/// `dw [weight shape] = d conv / d w` applied to `dy [y]`.
pub(crate) fn lower_grad_weight(
    ctx: &Lower,
    s: &Conv,
    dy: &wgpu::Buffer,
    x: &wgpu::Buffer,
    dw: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    const LABEL: &str = "conv2d_grad_weight";
    let d = dims(LABEL, s)?;
    let cols = d.cg * d.kk;
    let total = d.g * s.y.c * cols;
    let out_rows = s.y.n * s.y.h;
    let wgx = workgroup(cols.div_ceil(4));
    let threads = d.g * d.groups * cols.div_ceil(4) * d.og.div_ceil(4);
    // Split the depth (output rows (n, oh)) until the grid is large enough, keeping each
    // split long and the partials small.
    let max_by_depth = (out_rows * s.y.w / MIN_SPLIT_DEPTH).max(1);
    let max_by_memory = ((MAX_PARTIAL_BYTES.min(ctx.gpu.limits().max_storage_buffer_binding_size) / (4 * total as u64))
        as usize)
        .max(1);
    let want = TARGET_THREADS.div_ceil(threads);
    let splits =
        want.min(max_by_depth).min(max_by_memory).max(out_rows.div_ceil(LOOP_BUDGET / (s.y.w + 1))).clamp(1, out_rows);
    let rows_per_split = out_rows.div_ceil(splits);
    let splits = out_rows.div_ceil(rows_per_split);
    if splits > LOOP_BUDGET
        || (splits > 1 && (4 * splits * total) as u64 > ctx.gpu.limits().max_storage_buffer_binding_size)
    {
        return Err(Error::Usage(format!(
            "{LABEL}: the partial sums of {splits} depth splits pass the adapter's binding size; split the batch"
        )));
    }
    let grid = [cols.div_ceil(4 * wgx), d.og.div_ceil(4), d.g * d.groups * splits];
    let words = words(s, &d, 0, splits, rows_per_split, total);
    let kernel = gemm_kernel(ctx, LABEL, &[Binding::Read, Binding::Read, Binding::ReadWrite], wgx);
    if splits == 1 {
        return tiled(ctx, &kernel, LABEL, &words, &[dy, x, dw], grid);
    }
    // Shared scratch, created at plan compile time; the bind groups keep it alive.
    let partial = ctx.scratch((4 * splits * total) as u64);
    let mut out = tiled(ctx, &kernel, LABEL, &words, &[dy, x, &partial], grid)?;
    let reduce = ctx.kernel(&CONV, "conv2d_grad_weight_reduce", &[Binding::Read, Binding::ReadWrite], &[]);
    out.push(ctx.dispatch(reduce, "conv2d_grad_weight_reduce", &words, &[&partial, dw], grid_1d(total, REDUCE_WG)));
    Ok(out)
}
