//! 2-D convolution as implicit GEMM (`shaders/conv.wgsl`): forward with fused bias,
//! gradient with respect to the input, gradient with respect to the weight.
//!
//! Each product is a batched GEMM over z = (model, channel group) with register-blocked 4x4
//! outputs per invocation; no im2col buffer is materialised. The weight gradient has a small
//! output and a long depth (every sample and output position), so it is split along the
//! depth (split-K) into partial sums that a second dispatch adds in a fixed order.
//!
//! Stride-1, undilated convolutions with kernels up to 8 wide (LeNet's) take direct kernels
//! instead (`conv2d_direct`, `conv2d_grad_weight_direct`), which reuse each loaded input across
//! the kernel's taps; the input gradient is then the forward kernel applied to dy with the
//! flipped weight. Measured on lavapipe at G=64, N=128 they run LeNet's convolutions 2.5-6x
//! faster than the implicit GEMM.
//!
//! On GPUs (the `conv_tile` and `grad_weight_tile` tunings) the same stride-1 correlations run
//! tiled (`conv2d_tile`, `conv2d_grad_weight_tile`): a workgroup stages a run of input rows,
//! the weights and (weight gradient) the output-gradient rows in workgroup memory and every
//! invocation computes from there. Measured on an H100 at G=64, N=128: a LeNet step in
//! 2.75 ms against 11.7 ms with the direct kernels at their best tuning. Layers whose rows do
//! not fit the tile fall back to the direct kernels. The tiled weight gradient also sums the
//! bias gradient from the dy rows it stages, and can compute those rows from a max-pooling
//! gradient instead of reading them (the plan's folds, `plan/alloc.rs`). The stride-1 input
//! gradient can instead take `conv2d_grad_input_col` (the `grad_input_col` tuning): per input
//! channel, every tap's product with whole images of dy in workgroup memory, then each input
//! position sums the taps that land inside dy, so dy's zero padding (56% of the tiled
//! kernel's taps in LeNet's conv2) costs nothing. The tiled forward kernel can also write
//! the 2x2 max pooling of its output (the plan's forward pooling fold, [`forward_pools`]):
//! its invocations then take one pooling window's 4 positions.

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
/// Workgroup size of the split-K reduction (`REDUCE_WG` in the shader).
const REDUCE_WG: u32 = 256;
/// Split-K aims for the adapter's `split_threads` invocations in a weight gradient, each split
/// at least `min_split_depth` multiply-adds per output long ([`crate::tuning::Tuning`]), and
/// keeps the partial sums under this many bytes.
const MAX_PARTIAL_BYTES: u64 = 64 << 20;

/// Loop iterations one invocation may run in total, over all its loops: lavapipe (llvmpipe)
/// gives each invocation a budget of 65,535 loop iterations and silently exits every loop
/// once it is spent. The weight gradient splits its depth to stay under it; the data kernels
/// refuse larger depths. A margin covers the short setup and store loops.
const LOOP_BUDGET: usize = 65_535 - 512;

/// Indices of the per-dispatch words in the uniform (`Params` in the shader).
const W_X0: usize = 20;
const W_Z0: usize = 21;
/// Words of `Direct` that `conv2d_direct` dispatches set: the epilogue flags, the input
/// channels they sum.
const W_FLAGS: usize = 15;
const W_C0: usize = 29;
const W_CN: usize = 30;
/// Epilogue flags: add the bias, apply relu; start the sums from y (`conv2d_direct`).
const FLAG_BIAS: u32 = 1;
const FLAG_RELU: u32 = 2;
const FLAG_CONTINUE: u32 = 8;

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
        total,
    ];
    w.map(|v| v as u32).to_vec()
}

/// Workgroup width for `blocks` invocations along the memory-contiguous axis of the output:
/// the widest (at most the adapter's `conv_lanes`) that keeps at least 3/4 of the lanes busy, measured faster on
/// lavapipe than wide, mostly idle workgroups for the weight gradient's short axis.
/// Workgroups are one-dimensional: every invocation of a workgroup shares its block along the
/// other axis, so that operand's loads are uniform (broadcast on GPUs, one load for all lanes
/// on lavapipe, measured 1.7x faster than 2-D workgroups there).
fn workgroup(ctx: &Lower, blocks: usize) -> usize {
    let mut wgx = ctx.gpu.tuning().conv_lanes as usize;
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

/// `out [y] = conv(x, w) + bias` (then relu with `relu`), and with `pool` also the 2x2 max
/// pooling (stride 2) of that output into `pool` (the plan's forward pooling fold), which only
/// the kernels [`forward_pools`] names can do: an error elsewhere.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_forward(
    ctx: &Lower,
    s: &Conv,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    relu: bool,
    out: &wgpu::Buffer,
    pool: Option<&wgpu::Buffer>,
) -> Result<Vec<Dispatch>> {
    const LABEL: &str = "conv2d";
    let d = dims(LABEL, s)?;
    let flags = if bias.is_some() { FLAG_BIAS } else { 0 } | if relu { FLAG_RELU } else { 0 };
    if pool.is_some() && !forward_pools(ctx, s) {
        return Err(Error::Gpu("internal error: a pooling fold into a convolution that cannot pool".into()));
    }
    if let Some(c) = Corr::forward(ctx, s, &d).filter(Corr::direct_fits) {
        return direct(ctx, LABEL, &c, &d, [x, w, bias.unwrap_or(ctx.dummy), out], flags, pool);
    }
    // One invocation per output position and block of 4 images.
    let threads = s.y.n.div_ceil(4) * s.y.h * s.y.w;
    let wgx = workgroup(ctx, threads);
    let kernel = gemm_kernel(ctx, LABEL, &[Binding::Read, Binding::Read, Binding::Read, Binding::ReadWrite], wgx);
    let words = words(s, &d, flags, 1, 0, 0);
    let grid = [threads.div_ceil(wgx), d.og.div_ceil(4), d.g * d.groups];
    tiled(ctx, &kernel, LABEL, &words, &[x, w, bias.unwrap_or(ctx.dummy), out], grid)
}

/// `dx [x] = d conv / d x` applied to `dy [y]`; with `pool`, dy is computed from a max
/// pooling's gradient (`conv2d_grad_input_col` only, where [`grad_input_folds_pool`]: an
/// error elsewhere).
pub(crate) fn lower_grad_input(
    ctx: &Lower,
    s: &Conv,
    dy: &wgpu::Buffer,
    w: &wgpu::Buffer,
    dx: &wgpu::Buffer,
    pool: Option<&PoolGrad>,
) -> Result<Vec<Dispatch>> {
    const LABEL: &str = "conv2d_grad_input";
    let d = dims(LABEL, s)?;
    if let Some(c) = Corr::grad_input(ctx, s, &d) {
        if let Some(out) = grad_input_col(ctx, &c, &d, [dy, w, dx], pool)? {
            return Ok(out);
        }
        if c.direct_fits() {
            return direct(ctx, LABEL, &c, &d, [dy, w, ctx.dummy, dx], 0, None);
        }
    }
    if pool.is_some() {
        return Err(Error::Gpu("internal error: a pooling fold into an input gradient that cannot pool".into()));
    }
    // One invocation per input position and block of 4 images.
    let threads = s.x.n.div_ceil(4) * s.x.h * s.x.w;
    let wgx = workgroup(ctx, threads);
    let kernel = gemm_kernel(ctx, LABEL, &[Binding::Read, Binding::Read, Binding::ReadWrite], wgx);
    let words = words(s, &d, 0, 1, 0, 0);
    let grid = [threads.div_ceil(wgx), d.cg.div_ceil(4), d.g * d.groups];
    tiled(ctx, &kernel, LABEL, &words, &[dy, w, dx], grid)
}

/// The max-pooling gradient a weight gradient computes its dy from (the plan's fold of
/// `maxpool2d_grad` into `conv2d_grad_weight`): dy = the gradient of a max pooling of `y` with
/// `window`-sized windows that tile y exactly, given the pooled gradient `dpool`, times relu's
/// derivative at y with `relu`.
pub(crate) struct PoolGrad<'a> {
    pub window: [usize; 2],
    pub relu: bool,
    pub dpool: &'a wgpu::Buffer,
    pub y: &'a wgpu::Buffer,
}

/// `dw [weight shape] = d conv / d w` applied to `dy [y]`, and with `bias` also the bias
/// gradient (dy summed over images and positions): the tiled and direct kernels add it up
/// from the dy they load anyway (no pass of its own over dy); the implicit GEMM appends that
/// sum. With `pool`, dy is computed from a max pooling's gradient (tiled kernel only).
pub(crate) fn lower_grad_weight(
    ctx: &Lower,
    s: &Conv,
    dy: &wgpu::Buffer,
    x: &wgpu::Buffer,
    dw: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    pool: Option<&PoolGrad>,
) -> Result<Vec<Dispatch>> {
    const LABEL: &str = "conv2d_grad_weight";
    let d = dims(LABEL, s)?;
    if let Some(c) = Corr::grad_weight(ctx, s, &d) {
        if let Some(out) = grad_weight_tile(ctx, LABEL, &c, &d, [dy, x, dw], bias, pool)? {
            return Ok(out);
        }
        if pool.is_none() {
            if let Some(out) = grad_weight_direct(ctx, LABEL, &c, &d, [dy, x, dw], bias)? {
                return Ok(out);
            }
        }
    }
    if pool.is_some() {
        // The plan skipped the pooling gradient only where grad_weight_folds_pool said so.
        return Err(Error::Gpu(format!(
            "{LABEL}: internal error: dy from a pooling gradient without the tiled kernel"
        )));
    }
    let mut out = grad_weight_gemm(ctx, LABEL, s, &d, [dy, x, dw])?;
    if let Some(db) = bias {
        let y = s.y;
        out.extend(super::reduce::lower_sum(ctx, &[y.g, y.n, y.c, y.h, y.w], &[1, 3, 4], 1.0, dy, db)?);
    }
    Ok(out)
}

/// The weight gradient through the general implicit GEMM (`conv2d_grad_weight`).
fn grad_weight_gemm(
    ctx: &Lower,
    label: &'static str,
    s: &Conv,
    d: &Dims,
    [dy, x, dw]: [&wgpu::Buffer; 3],
) -> Result<Vec<Dispatch>> {
    let cols = d.cg * d.kk;
    let total = d.g * s.y.c * cols;
    let out_rows = s.y.n * s.y.h;
    let wgx = workgroup(ctx, cols.div_ceil(4));
    let threads = d.g * d.groups * cols.div_ceil(4) * d.og.div_ceil(4);
    let max_rows = LOOP_BUDGET / (s.y.w + 1);
    let (splits, rows_per_split) = split_depth(ctx, out_rows, s.y.w, total, threads, max_rows).map_err(|splits| {
        Error::Usage(format!(
            "{label}: the partial sums of {splits} depth splits pass the adapter's binding size; split the batch"
        ))
    })?;
    let grid = [cols.div_ceil(4 * wgx), d.og.div_ceil(4), d.g * d.groups * splits];
    let words = words(s, d, 0, splits, rows_per_split, total);
    let kernel = gemm_kernel(ctx, label, &[Binding::Read, Binding::Read, Binding::ReadWrite], wgx);
    split_k(ctx, &kernel, label, &words, [dy, x], (dw, None), grid, splits, total, None)
}

/// Widest kernel of the direct kernels (`MAX_KW` in the shader).
const DIRECT_MAX_KW: usize = 8;
// Output channels per invocation of `conv2d_direct` and of `conv2d_grad_weight_direct` are
// the adapter's `conv_ob` and `grad_weight_ob` (at most `MAX_OB` = 8). Measured on lavapipe:
// 4 x 8 columns beat 8 x 4 columns by 1.3x in the forward pass (fewer weight loads per
// multiply-add, as many accumulators); the weight gradient is 1.25x faster with 8 than with 4.

/// Split-K for a weight gradient of `total` outputs whose depth is `out_rows` output rows of
/// `row_len` positions, computed by `threads` invocations per split that may each take at most
/// `max_rows` rows (their loop budget): `(splits, rows per split)`. Splits until the grid
/// reaches the adapter's `split_threads`, keeping each split at least `min_split_depth` long,
/// the partial sums under `MAX_PARTIAL_BYTES` and the splits within one reduction loop
/// (`LOOP_BUDGET`); `Err(splits)` where the partial sums would not fit a binding anyway.
fn split_depth(
    ctx: &Lower,
    out_rows: usize,
    row_len: usize,
    total: usize,
    threads: usize,
    max_rows: usize,
) -> std::result::Result<(usize, usize), usize> {
    let t = ctx.gpu.tuning();
    let max_binding = ctx.gpu.limits().max_storage_buffer_binding_size;
    let max_by_depth = (out_rows * row_len / t.min_split_depth as usize).max(1);
    let max_by_memory = ((MAX_PARTIAL_BYTES.min(max_binding) / (4 * total as u64)) as usize).max(1);
    let want = (t.split_threads as usize).div_ceil(threads).min(LOOP_BUDGET);
    let splits = want.min(max_by_depth).min(max_by_memory).max(out_rows.div_ceil(max_rows)).clamp(1, out_rows);
    let rows_per_split = out_rows.div_ceil(splits);
    let splits = out_rows.div_ceil(rows_per_split);
    let too_many = splits > LOOP_BUDGET || (splits > 1 && (4 * splits * total) as u64 > max_binding);
    if too_many {
        Err(splits)
    } else {
        Ok((splits, rows_per_split))
    }
}

/// A stride-1, undilated correlation as `conv2d_direct` computes it (`Direct` in the shader):
/// `y[n, o, oy, ox]` sums `x[n, c, oy + ky - p0, ox + kx - p1] w(o, c, ky, kx)` over the
/// group's channels and the taps. It is the forward pass, or the input gradient (dy correlated
/// with the flipped kernel).
struct Corr {
    n: usize,
    /// Input channels, rows, columns (all groups).
    ci: usize,
    ih: usize,
    iw: usize,
    /// Output channels, rows, columns.
    co: usize,
    oh: usize,
    ow: usize,
    cig: usize,
    cog: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
    /// Weight strides along output channel, input channel, ky, kx (negative: flipped), and
    /// the offset of tap (0, 0) within a group.
    strides: [i64; 4],
    w0: usize,
    /// Most output channels per invocation.
    max_ob: usize,
    /// Output columns per invocation (8 or 12), or 0 for [`strip_width`]'s choice.
    strip: usize,
    /// One output position per invocation (`conv2d_pixel`) instead of strips.
    pixel: bool,
}

/// Output columns per invocation of `conv2d_direct` (a strip, `SW` in the shader) for an output
/// `ow` wide and a kernel `kw` wide: 8 or 12, whichever covers the row in less work, counting
/// per strip its columns and the `kw + 3` of its window loads and setup. Measured on lavapipe
/// (G=64, N=128): 12-wide strips run LeNet's conv2 input gradient (ow = 12) 1.5x faster than 8-wide
/// ones, conv1's forward (ow = 24) 1.2x and input gradient (ow = 28) 1.1x; 4-wide strips
/// (with up to 8 output channels) were no faster than 8-wide ones anywhere (and the shader
/// handles 8 and 12 only).
fn strip_width(ow: usize, kw: usize) -> usize {
    let cost = |sw: usize| ow.div_ceil(sw) * (sw + kw + 3);
    if cost(12) <= cost(8) {
        12
    } else {
        8
    }
}

impl Corr {
    /// Whether the direct kernels handle this geometry: stride 1, dilation 1, a kernel at
    /// most `DIRECT_MAX_KW` wide, padding under the kernel size.
    fn fits(s: &Conv) -> bool {
        let g = s.geom;
        g.stride == [1, 1]
            && g.dilation == [1, 1]
            && g.kernel[1] <= DIRECT_MAX_KW
            && (0..2).all(|a| g.padding[a] < g.kernel[a])
    }

    /// The forward correlation as the weight gradient walks it (x against dy), with the
    /// adapter's `grad_weight_ob` output channels per invocation.
    fn grad_weight(ctx: &Lower, s: &Conv, d: &Dims) -> Option<Corr> {
        let c = Corr::forward(ctx, s, d)?;
        Some(Corr { max_ob: ctx.gpu.tuning().grad_weight_ob as usize, ..c })
    }

    fn forward(ctx: &Lower, s: &Conv, d: &Dims) -> Option<Corr> {
        let (x, y, [kh, kw]) = (s.x, s.y, s.geom.kernel);
        Corr::fits(s).then(|| Corr {
            n: x.n,
            ci: x.c,
            ih: x.h,
            iw: x.w,
            co: y.c,
            oh: y.h,
            ow: y.w,
            cig: d.cg,
            cog: d.og,
            kernel: s.geom.kernel,
            padding: s.geom.padding,
            strides: [(d.cg * kh * kw) as i64, (kh * kw) as i64, kw as i64, 1],
            w0: 0,
            max_ob: ctx.gpu.tuning().conv_ob as usize,
            strip: ctx.gpu.tuning().conv_strip as usize,
            pixel: ctx.gpu.tuning().conv_pixel != 0,
        })
    }

    /// dx is dy correlated with the kernel flipped in both axes, input and output channels
    /// swapped, padding `kernel - 1 - padding`.
    fn grad_input(ctx: &Lower, s: &Conv, d: &Dims) -> Option<Corr> {
        let (x, y, [kh, kw]) = (s.x, s.y, s.geom.kernel);
        let p = s.geom.padding;
        Corr::fits(s).then(|| Corr {
            n: x.n,
            ci: y.c,
            ih: y.h,
            iw: y.w,
            co: x.c,
            oh: x.h,
            ow: x.w,
            cig: d.og,
            cog: d.cg,
            kernel: s.geom.kernel,
            padding: [kh - 1 - p[0], kw - 1 - p[1]],
            strides: [(kh * kw) as i64, (d.cg * kh * kw) as i64, -(kw as i64), -1],
            w0: kh * kw - 1,
            max_ob: ctx.gpu.tuning().conv_ob as usize,
            strip: ctx.gpu.tuning().conv_strip as usize,
            pixel: ctx.gpu.tuning().conv_pixel != 0,
        })
    }

    /// Whether `conv2d_direct` can run this correlation: its loops (counted as if none were
    /// unrolled) within lavapipe's budget, its grid rows within the dispatch limit.
    fn direct_fits(&self) -> bool {
        let [kh, kw] = self.kernel;
        let ob = self.ob();
        if self.pixel {
            let iterations = 2 * ob + self.cig * (1 + kh * (1 + kw * (ob + 1)));
            return iterations <= LOOP_BUDGET && self.cog.div_ceil(ob) <= MAX_GROUPS;
        }
        // The stage must hold one input channel's weights; its loop runs up to DIRECT_W4 / 64
        // times (the smallest workgroup).
        if kh * kw * ob.div_ceil(4) > DIRECT_W4 {
            return false;
        }
        let per_row = 2 + kw * (ob + 1);
        let iterations = DIRECT_W4 / 64 + ob + self.direct_chunk() * (1 + kh * per_row) + ob * (1 + self.sw());
        iterations <= LOOP_BUDGET && self.oh * self.cog.div_ceil(ob) <= MAX_GROUPS
    }

    /// Columns of the padded input rows a tile holds (`conv2d_tile`).
    fn tile_cols(&self) -> usize {
        self.ow + self.kernel[1] - 1
    }

    /// Most padded input rows that a run of `ru` consecutive output rows (flattened over
    /// images) reads: `ru - 1 + kh`, plus `kh - 1` for each image boundary it crosses.
    fn tile_rows(&self, ru: usize) -> usize {
        let (oh, kh) = (self.oh, self.kernel[0]);
        ru - 1 + kh + (oh + ru - 2) / oh * (kh - 1)
    }

    /// Output columns per invocation.
    fn sw(&self) -> usize {
        match self.strip {
            0 => strip_width(self.ow, self.kernel[1]),
            sw => sw,
        }
    }

    /// Output channels per invocation: blocks of at most `max_ob`, balanced.
    fn ob(&self) -> usize {
        self.cog.div_ceil(self.cog.div_ceil(self.max_ob))
    }

    /// The uniform `Direct` of the shader, with the per-dispatch offsets zero.
    fn words(&self, d: &Dims, flags: u32, splits: usize, rows_per_split: usize, total: usize) -> Vec<u32> {
        let ob = self.ob();
        let w = [
            self.n as u32,
            self.ci as u32,
            self.ih as u32,
            self.iw as u32,
            self.co as u32,
            self.oh as u32,
            self.ow as u32,
            d.groups as u32,
            self.cig as u32,
            self.cog as u32,
            self.kernel[0] as u32,
            self.padding[0] as u32,
            self.padding[1] as u32,
            // `strips`: per image, strips per row, or output positions for conv2d_pixel.
            if self.pixel { (self.oh * self.ow) as u32 } else { self.ow.div_ceil(self.sw()) as u32 },
            self.cog.div_ceil(ob) as u32,
            flags,
            self.strides[0] as u32,
            self.strides[1] as u32,
            self.strides[2] as u32,
            self.strides[3] as u32,
            0,
            0,
            self.w0 as u32,
            (self.cig * self.cog * d.kk) as u32,
            splits as u32,
            rows_per_split as u32,
            total as u32,
            0,
            0,
            // `c0`, `cn`: conv2d_direct sums input channels c0 .. c0 + cn per dispatch.
            0,
            self.cig as u32,
        ];
        w.to_vec()
    }

    /// `entry` with this correlation's constants (`bias`: GB, the weight gradient's bias sums).
    fn kernel(&self, ctx: &Lower, entry: &'static str, storage: &[Binding], wgx: usize, bias: bool) -> Arc<Kernel> {
        let mut consts = vec![
            ("WGX", wgx as f64),
            ("KW", self.kernel[1] as f64),
            ("OB", self.ob() as f64),
            ("SW", self.sw() as f64),
            ("GB", f64::from(bias)),
        ];
        if entry.starts_with("conv2d_direct") {
            consts.push(("XA", f64::from(self.aligned())));
            consts.push(("XSKIP", f64::from(self.skipped_vec4())));
            if self.fixed_rows() > 0 {
                consts.push(("FIX_ROWS", f64::from(self.fixed_rows())));
            }
        }
        ctx.kernel(&CONV, entry, storage, &consts)
    }

    /// Whether every input row of `conv2d_direct` and every strip's window start at a
    /// multiple of 4 columns (`XA`: one vec4 load per 4 columns, no shifts).
    fn aligned(&self) -> bool {
        self.iw % 4 == 0 && self.padding[1] % 4 == 0 && self.sw() % 4 == 0
    }

    /// `conv2d_direct`'s `FIX_ROWS`: the kernel height where one input channel is summed
    /// (one dispatch) and every kernel row of every output row lands inside the input, so
    /// that the kernel writes its row loop out and every weight address is a constant; 0
    /// otherwise. (LeNet's conv1 forward on lavapipe, G=64: 120 -> 106 ms, three
    /// alternating pairs of `profile_step 64 128 3`.)
    fn fixed_rows(&self) -> u32 {
        let kh = self.kernel[0];
        let inside = self.padding[0] == 0 && self.oh + kh - 1 <= self.ih;
        if self.cig == 1 && inside && kh < DIRECT_MAX_KW {
            kh as u32
        } else {
            0
        }
    }

    /// With [`Corr::aligned`], the window vec4s (bit k: columns `col0 + 4k ..`) that lie
    /// outside the input row for every strip, which `conv2d_direct` then never loads
    /// (`XSKIP`): LeNet's conv2 input gradient (padding 4, 8 columns) needs 2 of its 5.
    fn skipped_vec4(&self) -> u32 {
        if !self.aligned() {
            return 0;
        }
        let (sw, kw, iw) = (self.sw() as i64, self.kernel[1] as i64, self.iw as i64);
        let vec4s = (sw + kw + 2) / 4;
        let strips = self.ow.div_ceil(self.sw()) as i64;
        (0..vec4s)
            .filter(|k| {
                (0..strips).all(|s| {
                    let first = s * sw - self.padding[1] as i64 + 4 * k;
                    first >= iw || first + 3 < 0
                })
            })
            .fold(0, |m, k| m | 1 << k)
    }

    /// Input channels of the group one `conv2d_direct` dispatch sums: as many as have their
    /// weights fit the workgroup's stage (`DIRECT_W4`).
    /// `conv2d_direct`'s strips as lavapipe runs them fastest, within the adapter's
    /// `conv_ob` and `conv_strip`: blocks of at most 4 output channels where wider ones would
    /// split the input channels into chunks (each a dispatch re-reading y) and 4 would not;
    /// with the strip width chosen per layer, 8 columns where 12 would hold more than 16 vec4
    /// accumulators (more live in memory). On lavapipe at G=64 (`conv_ob` 4 before; fastest
    /// of 5): LeNet's conv1 OB=3 x 12 columns 155 ms, OB=6 x 8 149 (x 12: 159); conv2 OB=4
    /// 147, OB=8 116; conv2's input gradient OB=3 x 12 168, OB=6 x 8 in two chunks 292.
    fn strip_shape(&self) -> Corr {
        let taps = self.kernel[0] * self.kernel[1];
        let mut c = Corr { ..*self };
        if self.cig * taps * self.ob().div_ceil(4) > DIRECT_W4 && self.cig * taps <= DIRECT_W4 {
            c.max_ob = c.max_ob.min(4);
        }
        if c.strip == 0 && c.ob() * strip_width(c.ow, c.kernel[1]) > 64 {
            c.strip = 8;
        }
        if c.direct_fits() {
            c
        } else {
            Corr { ..*self }
        }
    }

    fn direct_chunk(&self) -> usize {
        (DIRECT_W4 / (self.kernel[0] * self.kernel[1] * self.ob().div_ceil(4))).min(self.cig)
    }
}

/// Whether [`lower_forward`] can compute the 2x2 max pooling (stride 2) of this convolution's
/// output in its epilogue: the tiled kernel with 4 positions per invocation (a window's) can,
/// on even output sides; the other kernels cannot. (The direct kernel's strips could take
/// both rows of a window per invocation: on lavapipe that ran as slowly as the pooling's own
/// pass, so they do not.)
pub(crate) fn forward_pools(ctx: &Lower, s: &Conv) -> bool {
    let Ok(d) = dims("conv2d", s) else {
        return false;
    };
    let Some(c) = Corr::forward(ctx, s, &d).filter(Corr::direct_fits) else {
        return false;
    };
    tile_plan(ctx, &c, &d, true).is_some_and(|t| t.pool)
}

/// The forward pass or the input gradient through `conv2d_direct` (where `Corr::direct_fits`),
/// `conv2d_tile` or `conv2d_pixel`; with `pooled` (forward only, where [`forward_pools`]: the
/// tiles) the output's 2x2 max pooling too, into it.
fn direct(
    ctx: &Lower,
    label: &'static str,
    c: &Corr,
    d: &Dims,
    [a, w, bias, out]: [&wgpu::Buffer; 4],
    flags: u32,
    pooled: Option<&wgpu::Buffer>,
) -> Result<Vec<Dispatch>> {
    let storage = [Binding::Read, Binding::Read, Binding::Read, Binding::ReadWrite];
    if let Some(t) = tile_plan(ctx, c, d, pooled.is_some()) {
        return corr_tile(ctx, label, c, d, &t, [a, w, bias, out, pooled.unwrap_or(ctx.sink)], flags);
    }
    if c.pixel {
        let (ob, oblocks) = (c.ob(), c.cog.div_ceil(c.ob()));
        let words = c.words(d, flags, 1, 0, 0);
        // One invocation per output position; one workgroup row per channel block.
        let threads = c.n * c.oh * c.ow;
        let wgx = workgroup(ctx, threads);
        let consts = [("WGX", wgx as f64), ("KW", c.kernel[1] as f64), ("OB", ob as f64)];
        let kernel = ctx.kernel(&CONV, "conv2d_pixel", &storage, &consts);
        let grid = [threads.div_ceil(wgx), oblocks, d.g * d.groups];
        return tiled(ctx, &kernel, label, &words, &[a, w, bias, out], grid);
    }
    // One invocation per (image, strip of `sw` columns); one workgroup row per (oy, block).
    // The kernel reads `a` as vec4: every buffer a plan binds is a whole number of them
    // (`alloc::bytes_for`, `chunk::pad16`), and so is `out` for conv2d_direct_y4.
    debug_assert!([a, out].iter().all(|b| ctx.ranges.borrow().get(*b).map_or(b.size(), |r| r.1) % 16 == 0));
    let c = &c.strip_shape();
    let oblocks = c.cog.div_ceil(c.ob());
    let words = c.words(d, flags, 1, 0, 0);
    let threads = c.n * c.ow.div_ceil(c.sw());
    let wgx = workgroup(ctx, threads);
    // Output rows of whole vec4s: y read and written a vec4 at a time.
    let entry = if c.ow % 4 == 0 { "conv2d_direct_y4" } else { "conv2d_direct" };
    let kernel = c.kernel(ctx, entry, &storage, wgx, false);
    let grid = [threads.div_ceil(wgx), c.oh * oblocks, d.g * d.groups];
    // Input channels in chunks whose weights fit the workgroup's stage: a dispatch after the
    // first continues the sums in y, the last adds the bias and applies relu (each sum adds
    // its terms in one order however many chunks there are).
    let chunk = c.direct_chunk();
    let mut out_dispatches = Vec::new();
    for c0 in (0..c.cig).step_by(chunk) {
        let (first, last) = (c0 == 0, c0 + chunk >= c.cig);
        let mut words = words.clone();
        words[W_C0] = c0 as u32;
        words[W_CN] = chunk.min(c.cig - c0) as u32;
        words[W_FLAGS] = if first { 0 } else { FLAG_CONTINUE } | if last { flags } else { 0 };
        out_dispatches.extend(tiled(ctx, &kernel, label, &words, &[a, w, bias, out], grid)?);
    }
    Ok(out_dispatches)
}

/// vec4 of weights a `conv2d_direct` workgroup stages (`DIRECT_W4` in the shader: 8 KiB).
const DIRECT_W4: usize = 512;

/// Workgroup memory of the tiled kernels' weights, in vec4 (`TILE_W4` in the shader); their
/// rows take the adapter's `tile_kib` ([`tile_f32`]).
const TILE_W4: usize = 128;
/// The same in bytes: [`Tuning::check_limits`](crate::Tuning::check_limits) keeps `tile_kib`
/// KiB plus these within the device's workgroup memory, so every device has the tiles'.
pub(crate) const TILE_WEIGHT_BYTES: u32 = 16 * TILE_W4 as u32;
/// Uniform words the tiled kernels reuse: `strips` (output rows per tile), `ps`.
const W_TILE_ROWS: usize = 13;
const W_PS: usize = 27;
const W_BIAS_AT: usize = 28;

/// f32 of input (and output-gradient) rows a tile holds (`TILE_F32` in the shader): the
/// adapter's `tile_kib`.
fn tile_f32(ctx: &Lower) -> usize {
    ctx.gpu.tuning().tile_kib as usize * 256
}

/// How `conv2d_tile` runs a correlation.
struct TilePlan {
    /// Invocations per workgroup (the adapter's `conv_tile`).
    lanes: usize,
    /// Output positions per invocation.
    px: usize,
    /// Output channels per invocation, at most this.
    max_ob: usize,
    /// Output rows per tile (flattened over images).
    ru: usize,
    /// Whether the kernel also pools the output (forward pooling fold).
    pool: bool,
}

/// The plan of `conv2d_tile` for a correlation with the adapter's `conv_tile` invocations per
/// workgroup, or `None` where that is 0, one output row's input rows pass the tile, the
/// weights of one input channel pass theirs, or the loops pass lavapipe's budget. With `pool`
/// it pools where it can: 4 positions per invocation (a 2x2 window's), even output sides,
/// tiles of whole row pairs. (The device has the tile's memory: see [`TILE_WEIGHT_BYTES`].)
fn tile_plan(ctx: &Lower, c: &Corr, d: &Dims, pool: bool) -> Option<TilePlan> {
    let lanes = ctx.gpu.tuning().conv_tile as usize;
    if lanes == 0 {
        return None;
    }
    let [kh, kw] = c.kernel;
    let out_rows = c.n * c.oh;
    // A small layer (few models) takes fewer positions per invocation, then blocks of at most
    // 4 channels, until its grid holds the adapter's `split_threads` invocations (an H100 at
    // G=1: 1.2x faster steps with one position and 4 channels than with 4 and 8; at G=64 the
    // larger blocks are faster).
    let t = ctx.gpu.tuning();
    let (mut px, mut max_ob) = (t.tile_px as usize, c.max_ob);
    let invocations = |px: usize, max_ob: usize| {
        let ob = Corr { max_ob, ..*c }.ob();
        (out_rows * c.ow).div_ceil(px) * c.cog.div_ceil(ob) * d.g * d.groups
    };
    while invocations(px, max_ob) < t.split_threads as usize && (px > 1 || max_ob > 4) {
        if px > 1 {
            px -= 1;
        } else {
            max_ob = 4;
        }
    }
    let c = &Corr { max_ob, ..*c };
    let ob = c.ob();
    let ob4 = ob.div_ceil(4);
    if kh * kw * ob4 > TILE_W4 || c.cog.div_ceil(ob) > MAX_GROUPS {
        return None;
    }
    // The most output rows whose positions the workgroup's invocations cover and whose
    // input rows fit the tile.
    let tile = tile_f32(ctx);
    let mut ru = (lanes * px / c.ow).min(out_rows);
    while ru > 0 && c.tile_rows(ru) * c.tile_cols() > tile {
        ru -= 1;
    }
    let pool = pool && px == 4 && c.oh % 2 == 0 && c.ow % 2 == 0 && ru >= 2;
    if pool {
        ru -= ru % 2;
    }
    // Loop iterations per invocation (none counted as unrolled): setup, per input channel
    // the two copies and the taps, the stores.
    let per_channel = tile.div_ceil(lanes) + (kh * kw * ob4).div_ceil(lanes) + 2 + kh * (1 + kw);
    let iterations = c.cig * per_channel + (px + usize::from(pool)) * (ob + 1);
    if ru == 0 || iterations > LOOP_BUDGET {
        return None;
    }
    Some(TilePlan { lanes, px, max_ob, ru, pool })
}

/// The forward pass or the input gradient through `conv2d_tile` as `t` plans it.
fn corr_tile(
    ctx: &Lower,
    label: &'static str,
    c: &Corr,
    d: &Dims,
    t: &TilePlan,
    buffers: [&wgpu::Buffer; 5],
    flags: u32,
) -> Result<Vec<Dispatch>> {
    let c = &Corr { max_ob: t.max_ob, ..*c };
    let mut words = c.words(d, flags, 1, 0, 0);
    words[W_TILE_ROWS] = t.ru as u32;
    let consts = [
        ("WGX", t.lanes as f64),
        ("KW", c.kernel[1] as f64),
        ("OB", c.ob() as f64),
        ("PX", t.px as f64),
        ("TILE_F32", tile_f32(ctx) as f64),
        ("FP", f64::from(t.pool)),
    ];
    let storage = [Binding::Read, Binding::Read, Binding::Read, Binding::ReadWrite, Binding::ReadWrite];
    let kernel = ctx.kernel(&CONV, "conv2d_tile", &storage, &consts);
    let grid = [(c.n * c.oh).div_ceil(t.ru), c.cog.div_ceil(c.ob()), d.g * d.groups];
    tiled(ctx, &kernel, label, &words, &buffers, grid)
}

/// Workgroup memory of `conv2d_grad_input_col`'s products, in f32 (`COL_F32` in the shader;
/// with the weights' `TILE_W4` vec4, WebGPU's default 16 KiB).
const COL_F32: usize = 3584;

/// How `conv2d_grad_input_col` runs one input gradient: invocations per workgroup, images
/// per workgroup, positions per invocation, vec4 of dy channels per chunk.
struct ColPlan {
    lanes: usize,
    ni: usize,
    px: usize,
    cb4: usize,
}

/// The plan of `conv2d_grad_input_col` for the input gradient (the correlation `c` of dy with
/// the flipped kernel) with the adapter's `grad_input_col` invocations per workgroup, or
/// `None` where that is 0, the device lacks the workgroup memory, one image's products pass
/// it, a tap's weights pass theirs, a grid of one image per workgroup would leave a GPU idle
/// (fewer invocations than a quarter of `split_threads`: the tiled kernel spreads a small
/// batch wider), the loops pass lavapipe's budget, or (with `pool`, dy computed from a max
/// pooling's gradient with that window) the windows do not tile dy.
fn grad_input_col_plan(ctx: &Lower, c: &Corr, d: &Dims, pool: Option<[usize; 2]>) -> Option<ColPlan> {
    let t = ctx.gpu.tuning();
    let lanes = t.grad_input_col as usize;
    let memory = ctx.gpu.limits().max_compute_workgroup_storage_size as usize;
    if lanes == 0 || memory < 4 * COL_F32 + 16 * TILE_W4 {
        return None;
    }
    let [wh, ww] = pool.unwrap_or([1, 1]);
    let [kh, kw] = c.kernel;
    let taps = kh * kw;
    let plane = c.ih * c.iw;
    // dy channels per position and chunk, in vec4.
    let cb4 = c.cig.div_ceil(4).min(4);
    let zs = d.g * d.groups;
    if taps * cb4 > TILE_W4
        || taps * plane > COL_F32
        || plane > 2 * lanes
        || c.n * zs * lanes < t.split_threads as usize / 4
        || c.ih % wh != 0
        || c.iw % ww != 0
    {
        return None;
    }
    // Images per workgroup: as many as the memory and two positions per invocation allow,
    // fewer where the grid would have fewer than `split_threads` invocations.
    let mut ni = (COL_F32 / (taps * plane)).min(2 * lanes / plane).min(c.n);
    while ni > 1 && c.n.div_ceil(ni) * zs * lanes < t.split_threads as usize {
        ni -= 1;
    }
    let px = (ni * plane).div_ceil(lanes);
    // Loop iterations per invocation (none counted as unrolled): per output channel and chunk
    // the weights' copy and the taps, per output channel the sums over the valid taps; the
    // loads of dy (from a pooling: per value its window).
    let chunks = c.cig.div_ceil(4 * cb4);
    let per_channel = chunks * ((taps * cb4).div_ceil(lanes) + 1 + taps + 1)
        + (ni * c.oh * c.ow).div_ceil(lanes) * (1 + kh * (1 + kw))
        + 2;
    let loads = if pool.is_some() { px * chunks * 16 * (1 + wh * (1 + ww)) } else { 0 };
    if c.cog * per_channel + loads + 8 > LOOP_BUDGET {
        return None;
    }
    Some(ColPlan { lanes, ni, px, cb4 })
}

/// The input gradient through `conv2d_grad_input_col` as [`grad_input_col_plan`] plans it
/// (`None` where it has no plan), dy computed from `pool`'s gradient with `pool`. Its
/// dispatches have a label of their own (profiles tell the two ways apart).
fn grad_input_col(
    ctx: &Lower,
    c: &Corr,
    d: &Dims,
    [dy, w, dx]: [&wgpu::Buffer; 3],
    pool: Option<&PoolGrad>,
) -> Result<Option<Vec<Dispatch>>> {
    let Some(p) = grad_input_col_plan(ctx, c, d, pool.map(|p| p.window)) else {
        return Ok(None);
    };
    let mut words = c.words(d, 0, 1, 0, 0);
    words[W_TILE_ROWS] = p.ni as u32;
    let [wh, ww] = pool.map_or([0, 1], |p| p.window);
    let consts = [
        ("WGX", p.lanes as f64),
        ("KW", c.kernel[1] as f64),
        ("PX", p.px as f64),
        ("CB4", p.cb4 as f64),
        ("PKH", wh as f64),
        ("PKW", ww as f64),
        ("PR", f64::from(pool.is_some_and(|p| p.relu))),
    ];
    // dy (or the pooled gradient), the weight, dx, y (or nothing).
    let storage = [Binding::Read, Binding::Read, Binding::ReadWrite, Binding::Read];
    let kernel = ctx.kernel(&CONV, "conv2d_grad_input_col", &storage, &consts);
    let buffers = match pool {
        Some(p) => [p.dpool, w, dx, p.y],
        None => [dy, w, dx, ctx.dummy],
    };
    let grid = [c.n.div_ceil(p.ni), 1, d.g * d.groups];
    tiled(ctx, &kernel, "conv2d_grad_input_col", &words, &buffers, grid).map(Some)
}

/// Whether the input gradient of `s` takes `conv2d_grad_input_col` with dy computed from a
/// max pooling's gradient of that `window` (the plan may then skip the pooling gradient's own
/// dispatch).
pub(crate) fn grad_input_folds_pool(ctx: &Lower, s: &Conv, window: [usize; 2]) -> bool {
    let Ok(d) = dims("conv2d_grad_input", s) else {
        return false;
    };
    Corr::grad_input(ctx, s, &d).is_some_and(|c| grad_input_col_plan(ctx, &c, &d, Some(window)).is_some())
}

/// How `conv2d_grad_weight_tile` runs one weight gradient.
struct GradWeightTile {
    /// Invocations per workgroup, output rows per tile, invocations per task.
    lanes: usize,
    ru: usize,
    ps: usize,
    rows_per_split: usize,
    splits: usize,
    /// dw's sums per partial, and all of them (the bias gradient's after dw's).
    dw_len: usize,
    total: usize,
}

/// The tiled weight gradient's plan with the adapter's `grad_weight_tile` invocations per
/// workgroup (`None` where that is 0, a task's rows pass the tile, or the loops pass
/// lavapipe's budget); with `bias`, also the bias gradient; with
/// `pool`, dy computed from a max pooling's gradient with that window (tiles of whole windows).
fn grad_weight_tile_plan(
    ctx: &Lower,
    c: &Corr,
    d: &Dims,
    bias: bool,
    pool: Option<[usize; 2]>,
) -> Option<GradWeightTile> {
    let lanes = ctx.gpu.tuning().grad_weight_tile as usize;
    if lanes == 0 {
        return None;
    }
    let [kh, kw] = c.kernel;
    let [wh, ww] = pool.unwrap_or([1, 1]);
    if c.oh % wh != 0 || c.ow % ww != 0 {
        return None;
    }
    let ob = c.ob();
    let tasks = c.cig * c.cog.div_ceil(ob) * kh;
    if tasks > lanes {
        return None;
    }
    let out_rows = c.n * c.oh;
    let tile = tile_f32(ctx);
    let fits = |ru: usize| c.cig * c.tile_rows(ru) * c.tile_cols() + c.cog * ru * c.ow <= tile;
    let mut ru = (tile / (c.cog * c.ow).max(1)).min(out_rows);
    while ru > 0 && !fits(ru) {
        ru -= 1;
    }
    ru -= ru % wh;
    if ru == 0 {
        return None;
    }
    // Invocations per task: as many as the lanes allow, at most one per row of a tile; the
    // workgroup shrinks to whole warps of 32 around them.
    let ps = (lanes / tasks).min(ru);
    let lanes = (tasks * ps).next_multiple_of(32).min(lanes);
    // Loop iterations per invocation (none counted as unrolled): per tile the copies (dy's
    // from a pooling: per window its argmax and its values), per own output row one per
    // padded column; the store.
    let fixed = ob * (kw + 1) + 8;
    let per_row = 2 + c.tile_cols();
    let copy = tile.div_ceil(lanes) + 1;
    let dy_copy = match pool {
        Some(_) => (tile.div_ceil(wh * ww).div_ceil(lanes) + 1) * (1 + 2 * wh * ww),
        None => copy,
    };
    let per_tile = c.cig * copy + dy_copy + 2 + ru.div_ceil(ps) * per_row;
    if fixed + per_tile > LOOP_BUDGET {
        return None;
    }
    let max_rows = (LOOP_BUDGET - fixed) / per_tile * ru;
    let dw_len = d.g * c.co * c.cig * d.kk;
    let total = dw_len + if bias { d.g * c.co } else { 0 };
    let threads = d.g * d.groups * lanes;
    let (_, rows_per_split) = split_depth(ctx, out_rows, c.ow, total * ps, threads, max_rows).ok()?;
    // At least a full tile per split (a shorter one copies a tile's rows for fewer uses):
    // fewer, longer splits where a small batch would otherwise cut the depth finer; whole
    // pooling windows (max_rows is a multiple of ru, itself of wh).
    let rows_per_split = rows_per_split.max(ru.min(max_rows)).next_multiple_of(wh);
    let splits = out_rows.div_ceil(rows_per_split);
    if splits * ps > LOOP_BUDGET {
        return None;
    }
    Some(GradWeightTile { lanes, ru, ps, rows_per_split, splits, dw_len, total })
}

/// Whether the weight gradient of `s` (with its bias gradient where `bias`) takes the tiled
/// kernel with dy computed from a max pooling's gradient of that `window` (the plan then skips
/// the pooling gradient's own dispatch).
pub(crate) fn grad_weight_folds_pool(ctx: &Lower, s: &Conv, bias: bool, window: [usize; 2]) -> bool {
    let Ok(d) = dims("conv2d_grad_weight", s) else {
        return false;
    };
    let Some(c) = Corr::grad_weight(ctx, s, &d) else {
        return false;
    };
    grad_weight_tile_plan(ctx, &c, &d, bias, Some(window)).is_some()
}

/// The weight gradient (and the bias gradient with `bias`, dy from `pool`'s gradient with
/// `pool`) through `conv2d_grad_weight_tile`, or `None` where [`grad_weight_tile_plan`] has no
/// plan.
fn grad_weight_tile(
    ctx: &Lower,
    label: &'static str,
    c: &Corr,
    d: &Dims,
    [dy, x, dw]: [&wgpu::Buffer; 3],
    bias: Option<&wgpu::Buffer>,
    pool: Option<&PoolGrad>,
) -> Result<Option<Vec<Dispatch>>> {
    let Some(t) = grad_weight_tile_plan(ctx, c, d, bias.is_some(), pool.map(|p| p.window)) else {
        return Ok(None);
    };
    let [_, kw] = c.kernel;
    let mut words = c.words(d, 0, t.splits, t.rows_per_split, t.total);
    words[W_TILE_ROWS] = t.ru as u32;
    words[W_PS] = t.ps as u32;
    words[W_BIAS_AT] = t.dw_len as u32;
    let [wh, ww] = pool.map_or([0, 1], |p| p.window);
    let consts = [
        ("WGX", t.lanes as f64),
        ("KW", kw as f64),
        ("OB", c.ob() as f64),
        ("GB", f64::from(bias.is_some())),
        ("PKH", wh as f64),
        ("PKW", ww as f64),
        ("PR", f64::from(pool.is_some_and(|p| p.relu))),
        ("TILE_F32", tile_f32(ctx) as f64),
    ];
    let storage = [Binding::Read, Binding::Read, Binding::ReadWrite, Binding::Read];
    let kernel = ctx.kernel(&CONV, "conv2d_grad_weight_tile", &storage, &consts);
    let grid = [t.splits, 1, d.g * d.groups];
    let outs = (dw, bias.map(|db| (db, t.dw_len)));
    let (dy, y) = pool.map_or((dy, ctx.dummy), |p| (p.dpool, p.y));
    split_k(ctx, &kernel, label, &words, [x, dy], outs, grid, t.splits * t.ps, t.total, Some(y)).map(Some)
}

/// The weight gradient through `conv2d_grad_weight_direct`, or `None` where its loop budget
/// does not allow it.
fn grad_weight_direct(
    ctx: &Lower,
    label: &'static str,
    c: &Corr,
    d: &Dims,
    [dy, x, dw]: [&wgpu::Buffer; 3],
    bias: Option<&wgpu::Buffer>,
) -> Result<Option<Vec<Dispatch>>> {
    let [kh, kw] = c.kernel;
    // Kernel rows (c, ky) per invocation, of one input channel or of two: three unless that
    // pads them more than two do (each dy load then serves more multiply-adds; lavapipe loads
    // lane by lane: LeNet's conv2 weight gradient 245 -> 165 ms at G=64 with two channels).
    let gr = match c.cig * kh {
        1 => 1,
        rows if 3 * rows.div_ceil(3) <= 2 * rows.div_ceil(2) => 3,
        _ => 2,
    };
    // At most GR x OB = 12 rows of accumulators (60 floats with KW = 5): more live in
    // memory on lavapipe. Its conv2 weight gradient (16 x 6 channels) at G=64: OB=8 x GR=2
    // 203 ms, 6 x 2 175, 4 x 2 180, 8 x 3 184, 4 x 3 159.
    let c = &Corr { max_ob: c.max_ob.min(12 / gr), ..*c };
    let ob = c.ob();
    let oblocks = c.cog.div_ceil(ob);
    let lanes = (c.cig * kh).div_ceil(gr);
    // With the bias gradient, each partial holds dw's sums and then the bias's.
    let dw_len = d.g * c.co * c.cig * d.kk;
    let total = dw_len + if bias.is_some() { d.g * c.co } else { 0 };
    let out_rows = c.n * c.oh;
    // Loop iterations (none counted as unrolled): setup and store, then per output row the
    // window fill and per column the shift, the load and OB x KW multiply-adds.
    let fixed = 2 * ob + ob * (kw + 1) + 8;
    let per_row = 2 + gr * kw + c.ow * (gr * kw + 2 + ob * (gr * kw + 1));
    if fixed + per_row > LOOP_BUDGET || oblocks > MAX_GROUPS {
        return Ok(None);
    }
    let max_rows = (LOOP_BUDGET - fixed) / per_row;
    let threads = d.g * d.groups * oblocks * lanes;
    let Ok((splits, rows_per_split)) = split_depth(ctx, out_rows, c.ow, total, threads, max_rows) else {
        return Ok(None);
    };
    // With the adapter's `split_lanes`, splits share workgroups along x (flag bit 2).
    let flat = ctx.gpu.tuning().split_lanes != 0;
    let (wgx, grid) = if flat {
        let wgx = workgroup(ctx, splits * lanes);
        (wgx, [(splits * lanes).div_ceil(wgx), oblocks, d.g * d.groups])
    } else {
        let wgx = workgroup(ctx, lanes);
        (wgx, [lanes.div_ceil(wgx), oblocks, d.g * d.groups * splits])
    };
    let mut words = c.words(d, u32::from(flat) << 2, splits, rows_per_split, total);
    words[W_BIAS_AT] = dw_len as u32;
    let storage = [Binding::Read, Binding::Read, Binding::ReadWrite];
    let consts = [
        ("WGX", wgx as f64),
        ("KW", kw as f64),
        ("OB", ob as f64),
        ("GB", f64::from(bias.is_some())),
        ("GR", gr as f64),
        // Rows at multiples of 4 columns, and where the window's columns enter (bit 0) and
        // start (bit 1): unshifted vec4 loads.
        (
            "GA",
            f64::from(
                u8::from(c.ow % 4 == 0 && c.iw % 4 == 0 && (kw - 1 - c.padding[1]) % 4 == 0)
                    | u8::from(c.iw % 4 == 0 && c.padding[1] % 4 == 0) << 1,
            ),
        ),
    ];
    // The kernel reads dy and x as vec4: every buffer a plan binds is a whole number of them.
    debug_assert!([dy, x].iter().all(|b| ctx.ranges.borrow().get(*b).map_or(b.size(), |r| r.1) % 16 == 0));
    let kernel = ctx.kernel(&CONV, "conv2d_grad_weight_direct", &storage, &consts);
    let outs = (dw, bias.map(|db| (db, dw_len)));
    split_k(ctx, &kernel, label, &words, [dy, x], outs, grid, splits, total, None).map(Some)
}

/// A weight gradient's kernel over `grid` reading `inputs`: with one split (`parts == 1`) it
/// writes `dw` directly; otherwise each of the `parts` splits writes its partial sums of the
/// `total` outputs to a scratch buffer (shared, created at plan compile time; the bind groups
/// keep it alive) and [`reduce_partials`] adds them into `dw`. With a bias gradient
/// `(db, dw_len)` the partials always go through the scratch buffer: their first `dw_len`
/// sums are dw's, the rest db's. `extra` is bound after the output (binding 4).
#[allow(clippy::too_many_arguments)]
fn split_k(
    ctx: &Lower,
    kernel: &Arc<Kernel>,
    label: &'static str,
    words: &[u32],
    [a, b]: [&wgpu::Buffer; 2],
    (dw, bias): (&wgpu::Buffer, Option<(&wgpu::Buffer, usize)>),
    grid: [usize; 3],
    parts: usize,
    total: usize,
    extra: Option<&wgpu::Buffer>,
) -> Result<Vec<Dispatch>> {
    if parts == 1 && bias.is_none() {
        let buffers: Vec<&wgpu::Buffer> = [a, b, dw].into_iter().chain(extra).collect();
        return tiled(ctx, kernel, label, words, &buffers, grid);
    }
    let partial = ctx.scratch((4 * parts * total) as u64);
    let buffers: Vec<&wgpu::Buffer> = [a, b, &partial].into_iter().chain(extra).collect();
    let mut out = tiled(ctx, kernel, label, words, &buffers, grid)?;
    out.push(reduce_partials(ctx, parts, total, &partial, dw, bias));
    Ok(out)
}

/// `dw[i]` = the sum over the `splits` partial sums `partial[s * total + i]`, in a fixed order:
/// one invocation per output adding them in turn, or, with the adapter's `reduce_lanes` set
/// and more splits than that, a workgroup per output adding them in a fixed tree. With
/// `(db, dw_len)`, sums from `dw_len` on go to `db`.
fn reduce_partials(
    ctx: &Lower,
    splits: usize,
    total: usize,
    partial: &wgpu::Buffer,
    dw: &wgpu::Buffer,
    bias: Option<(&wgpu::Buffer, usize)>,
) -> Dispatch {
    const LABEL: &str = "conv2d_grad_weight_reduce";
    let (db, dw_len) = bias.unwrap_or((ctx.dummy, total));
    // The reduction reads `splits`, `total` and `dw_len` from the general kernel's uniform layout.
    let mut words = vec![0u32; 29];
    words[19] = splits as u32;
    words[23] = total as u32;
    words[28] = dw_len as u32;
    let lanes = ctx.gpu.tuning().reduce_lanes as usize;
    let storage = [Binding::Read, Binding::ReadWrite, Binding::ReadWrite];
    if lanes > 0 && splits > lanes {
        let kernel = ctx.kernel(&CONV, "conv2d_grad_weight_reduce_wide", &storage, &[("RL", lanes as f64)]);
        return ctx.dispatch(kernel, LABEL, &words, &[partial, dw, db], super::grid_groups(total));
    }
    let kernel = ctx.kernel(&CONV, "conv2d_grad_weight_reduce", &storage, &[]);
    ctx.dispatch(kernel, LABEL, &words, &[partial, dw, db], grid_1d(total, REDUCE_WG))
}
