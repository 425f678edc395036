//! BatchNorm2d and GroupNorm (`shaders/norm.wgsl`): statistics, normalisation, exact
//! gradients, running-estimate updates.
//!
//! Statistics are `[G, 3, S]` (mean, 1/sqrt(var + eps), biased var). Reductions run one
//! workgroup per (model, statistic) or (model, channel); elementwise kernels give each
//! workgroup a block of consecutive elements. See the shader for how positions are tracked.

use super::{f, grid_1d, grid_groups, Dispatch, Image, Lower, NORM};
use crate::error::{Error, Result};
use crate::gpu::Binding;
use crate::graph::NormKind;

/// Invocations per workgroup of the elementwise kernels (the shader's `WG`).
const WG: u32 = 256;
/// Elements per invocation in the elementwise kernels, `WG` apart (the shader's `VPT`).
const VPT: usize = 4;
/// Four read operands and the output.
const STANDARD: [Binding; 5] = [Binding::Read, Binding::Read, Binding::Read, Binding::Read, Binding::ReadWrite];
/// Batch stats, then running mean, var and count written in place.
const RUNNING: [Binding; 4] = [Binding::Read, Binding::ReadWrite, Binding::ReadWrite, Binding::ReadWrite];

/// How statistics map onto channels and samples.
#[derive(Clone, Copy)]
struct Layout {
    /// Statistics per model.
    s: usize,
    /// Statistic of (n, channel) is `n * n_mul + channel / cpg`.
    n_mul: usize,
    /// Channels per group (1 for batch norm).
    cpg: usize,
    /// First channel of statistic `s` is `(s % stat_mod) * cpg`.
    stat_mod: usize,
}

fn layout(op: &str, x: Image, kind: NormKind) -> Result<Layout> {
    match kind {
        NormKind::Batch => Ok(Layout { s: x.c, n_mul: 0, cpg: 1, stat_mod: x.c.max(1) }),
        NormKind::Group(k) if k > 0 && x.c % k == 0 => Ok(Layout { s: x.n * k, n_mul: k, cpg: x.c / k, stat_mod: k }),
        NormKind::Group(k) => Err(Error::Shape(format!("{op}: {} channels cannot be split into {k} groups", x.c))),
    }
}

/// The shader's `Params`, field by field.
#[derive(Default)]
struct Params {
    n_seg: usize,
    seg_stride: usize,
    item_stride: usize,
    c_step: usize,
    items: usize,
    affine: bool,
    /// `norm_sums_stats`: the shift only.
    shift: bool,
    eps: f32,
    momentum: f32,
    unbias: f32,
}

fn words(op: &str, x: Image, l: Layout, p: &Params) -> Result<Vec<u32>> {
    let numel = x.numel();
    // Flat indices, including those of the last elementwise workgroup's idle invocations,
    // must fit in u32.
    if numel.max(x.g * 3 * l.s) + VPT * WG as usize >= u32::MAX as usize {
        return Err(Error::Usage(format!("{op}: {numel} elements exceed the 32-bit index range; split the batch")));
    }
    let hw = (x.h * x.w).max(1);
    let wgr = reduction_wg(p.n_seg * hw) as usize;
    let u = [
        x.g,
        x.n,
        x.c,
        hw,
        l.s,
        l.n_mul,
        l.cpg,
        l.stat_mod,
        p.n_seg,
        p.seg_stride,
        wgr / hw,
        wgr % hw,
        p.item_stride,
        p.c_step,
        p.items,
        usize::from(p.affine) | usize::from(p.shift) << 1,
    ]
    .map(|v| v as u32);
    let mut w = u.to_vec();
    w.extend([f(p.eps), f(p.momentum), f((p.n_seg * hw) as f32), f(p.unbias), numel as u32]);
    // WG as digits in the radices (hw, cpg, groups, N) of an element's position, G last.
    let mut rest = WG as usize;
    for radix in [hw, l.cpg.max(1), l.stat_mod, x.n.max(1)] {
        w.push((rest % radix) as u32);
        rest /= radix;
    }
    w.extend([rest as u32, 0, 0]);
    Ok(w)
}

/// Invocations per reduction item of `count` values (the shader's `WGR`): a full workgroup
/// for long items, a quarter for short ones (group norm on small maps), whose barriers and
/// idle invocations would otherwise dominate.
fn reduction_wg(count: usize) -> u32 {
    if count >= 4096 {
        256
    } else {
        64
    }
}

/// The `WGR` override of a reduction kernel for `p`.
fn wgr(x: Image, p: &Params) -> [(&'static str, f64); 1] {
    [("WGR", reduction_wg(p.n_seg * x.h * x.w) as f64)]
}

/// Reduction items per statistic: batch norm, a channel's N runs of H*W values C*H*W apart;
/// group norm, a (sample, group)'s cpg channels back to back.
fn per_statistic(x: Image, kind: NormKind, l: Layout) -> Params {
    let hw = x.h * x.w;
    match kind {
        NormKind::Batch => {
            Params { n_seg: x.n, seg_stride: x.c * hw, item_stride: hw, c_step: 0, items: l.s, ..Default::default() }
        }
        NormKind::Group(_) => Params {
            n_seg: l.cpg,
            seg_stride: hw,
            item_stride: l.cpg * hw,
            c_step: 1,
            items: l.s,
            ..Default::default()
        },
    }
}

/// Reduction items per channel: N runs of H*W values C*H*W apart.
fn per_channel(x: Image) -> Params {
    let hw = x.h * x.w;
    Params { n_seg: x.n, seg_stride: x.c * hw, item_stride: hw, c_step: 0, items: x.c, ..Default::default() }
}

/// One workgroup per `WG * VPT` consecutive elements.
fn elementwise_grid(x: Image) -> [u32; 3] {
    grid_groups(x.numel().div_ceil(VPT * WG as usize))
}

/// `stats [G, 3, S]` = (mean, 1/sqrt(var + eps), biased var) of `x`.
pub(crate) fn lower_stats(
    ctx: &Lower,
    x: Image,
    kind: NormKind,
    eps: f32,
    xb: &wgpu::Buffer,
    stats: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let l = layout("norm_stats", x, kind)?;
    let p = Params { eps, ..per_statistic(x, kind, l) };
    let w = words("norm_stats", x, l, &p)?;
    let kernel = ctx.kernel(&NORM, "norm_stats", &STANDARD, &wgr(x, &p));
    let d = ctx.dummy;
    Ok(vec![ctx.dispatch(kernel, "norm_stats", &w, &[xb, d, d, d, stats], grid_groups(x.g * l.s))])
}

/// `stats [G, 3, C]` from running mean and variance `[G, C]`.
pub(crate) fn lower_running_stats(
    ctx: &Lower,
    g: usize,
    c: usize,
    eps: f32,
    mean: &wgpu::Buffer,
    var: &wgpu::Buffer,
    stats: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let d = ctx.dummy;
    let p = Params { eps, ..Default::default() };
    Ok(vec![channel_dispatch(ctx, "running_stats", "norm_running_stats", g, c, &p, &[mean, var, d, d, stats])?])
}

/// `entry` with one invocation per (model, channel) of `[G, C]`, operands `ops` (bindings 1-5).
fn channel_dispatch(
    ctx: &Lower,
    op: &'static str,
    entry: &'static str,
    g: usize,
    c: usize,
    p: &Params,
    ops: &[&wgpu::Buffer; 5],
) -> Result<Dispatch> {
    let x = Image { g, n: 1, c, h: 1, w: 1 };
    let w = words(op, x, layout(op, x, NormKind::Batch)?, p)?;
    Ok(ctx.dispatch(ctx.kernel(&NORM, entry, &STANDARD, &[]), op, &w, ops, grid_1d(g * c, WG)))
}

/// `stats [G, 3, C]` of a batch summed in parts: `xsum [G, C]` and, unless only the shift
/// is wanted, the deviations' sums `(dsum, dsq)`; `count` values per channel in all.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_sums_stats(
    ctx: &Lower,
    g: usize,
    c: usize,
    count: usize,
    eps: f32,
    xsum: &wgpu::Buffer,
    deviations: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
    stats: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let p = Params { eps, n_seg: count, shift: deviations.is_none(), ..Default::default() };
    let d = ctx.dummy;
    let (dsum, dsq) = deviations.unwrap_or((d, d));
    Ok(vec![channel_dispatch(ctx, "sums_stats", "norm_sums_stats", g, c, &p, &[xsum, dsum, dsq, d, stats])?])
}

/// `out = (x - mean) * invstd (* w + b)`.
pub(crate) fn lower_apply(
    ctx: &Lower,
    x: Image,
    kind: NormKind,
    xb: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    affine: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let l = layout("norm_apply", x, kind)?;
    let w = words("norm_apply", x, l, &Params { affine: affine.is_some(), ..Default::default() })?;
    let kernel = ctx.kernel(&NORM, "norm_apply", &STANDARD, &[]);
    let (wb, bb) = affine.unwrap_or((ctx.dummy, ctx.dummy));
    Ok(vec![ctx.dispatch(kernel, "norm_apply", &w, &[xb, bb, stats, wb, out], elementwise_grid(x))])
}

/// `dx` of `norm_apply`; `fixed`: the statistics are constants.
///
/// Batch statistics of `x` itself (not fixed) give the exact gradient in two dispatches:
/// per-statistic means of `dxh = dy * weight` and `dxh * x_hat` into a scratch buffer the
/// plan owns through the bind groups, then
/// `dx = invstd * (dxh - mean(dxh) - x_hat * mean(dxh * x_hat))` elementwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_grad(
    ctx: &Lower,
    x: Image,
    kind: NormKind,
    fixed: bool,
    dy: &wgpu::Buffer,
    xb: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    weight: Option<&wgpu::Buffer>,
    dx: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let l = layout("norm_grad", x, kind)?;
    let wb = weight.unwrap_or(ctx.dummy);
    let d = ctx.dummy;
    if fixed {
        let w = words("norm_grad", x, l, &Params { affine: weight.is_some(), ..Default::default() })?;
        let kernel = ctx.kernel(&NORM, "norm_grad_fixed", &STANDARD, &[]);
        return Ok(vec![ctx.dispatch(kernel, "norm_grad", &w, &[d, dy, stats, wb, dx], elementwise_grid(x))]);
    }
    let p = Params { affine: weight.is_some(), ..per_statistic(x, kind, l) };
    let w = words("norm_grad", x, l, &p)?;
    // Shared scratch, created at compile time; the two bind groups keep it alive.
    let scratch = ctx.scratch((x.g * l.s * 16).max(16) as u64);
    let reduce = ctx.kernel(&NORM, "norm_grad_reduce", &STANDARD, &wgr(x, &p));
    let apply = ctx.kernel(&NORM, "norm_grad_apply", &STANDARD, &[]);
    Ok(vec![
        ctx.dispatch(reduce, "norm_grad_reduce", &w, &[xb, dy, stats, wb, &scratch], grid_groups(x.g * l.s)),
        ctx.dispatch(apply, "norm_grad", &w, &[xb, dy, &scratch, wb, dx], elementwise_grid(x)),
    ])
}

/// `dx` of batch norm's `norm_apply` on statistics of a batch summed in parts, given that
/// batch's `(sum(dy), sum(dy * x_hat))` per channel: the scratch of [`lower_grad`]'s second
/// dispatch from those sums (one invocation per channel), then that dispatch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_grad_sums(
    ctx: &Lower,
    x: Image,
    count: usize,
    dy: &wgpu::Buffer,
    xb: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    (gsum, gdot): (&wgpu::Buffer, &wgpu::Buffer),
    weight: Option<&wgpu::Buffer>,
    dx: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let l = layout("norm_grad_sums", x, NormKind::Batch)?;
    let hw = (x.h * x.w).max(1);
    if count % hw != 0 {
        return Err(Error::Shape(format!("norm_grad_sums: {count} values per channel is not a multiple of {hw}")));
    }
    // `count` is read as n_seg * hw.
    let p = Params { affine: weight.is_some(), n_seg: count / hw, ..Default::default() };
    let w = words("norm_grad_sums", x, l, &p)?;
    let wb = weight.unwrap_or(ctx.dummy);
    let scratch = ctx.scratch((x.g * x.c * 16).max(16) as u64);
    let sums = ctx.kernel(&NORM, "norm_grad_sums", &STANDARD, &[]);
    let apply = ctx.kernel(&NORM, "norm_grad_apply", &STANDARD, &[]);
    Ok(vec![
        ctx.dispatch(sums, "norm_grad_sums", &w, &[gsum, gdot, stats, wb, &scratch], grid_1d(x.g * x.c, WG)),
        ctx.dispatch(apply, "norm_grad", &w, &[xb, dy, &scratch, wb, dx], elementwise_grid(x)),
    ])
}

/// `dw [G, C] = sum(dy * x_hat)`.
pub(crate) fn lower_weight_grad(
    ctx: &Lower,
    x: Image,
    kind: NormKind,
    dy: &wgpu::Buffer,
    xb: &wgpu::Buffer,
    stats: &wgpu::Buffer,
    dw: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let l = layout("norm_weight_grad", x, kind)?;
    let p = per_channel(x);
    let w = words("norm_weight_grad", x, l, &p)?;
    let kernel = ctx.kernel(&NORM, "norm_weight_grad", &STANDARD, &wgr(x, &p));
    Ok(vec![ctx.dispatch(kernel, "norm_weight_grad", &w, &[xb, dy, stats, ctx.dummy, dw], grid_groups(x.g * x.c))])
}

/// In place: running mean/var `[G, C]` and `count [G]` (batches tracked, as f32) from batch
/// `stats [G, 3, C]` over `n` values per channel. `momentum = None`: cumulative average.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lower_running_update(
    ctx: &Lower,
    g: usize,
    c: usize,
    n: usize,
    momentum: Option<f32>,
    stats: &wgpu::Buffer,
    mean: &wgpu::Buffer,
    var: &wgpu::Buffer,
    count: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    if n < 2 {
        // PyTorch refuses to train batch norm on one value per channel: no unbiased variance.
        return Err(Error::Usage(format!("batchnorm running update: expected more than 1 value per channel, got {n}")));
    }
    let x = Image { g, n: 1, c, h: 1, w: 1 };
    let l = layout("batchnorm running update", x, NormKind::Batch)?;
    let p = Params {
        momentum: momentum.unwrap_or(-1.0),
        unbias: (n as f64 / (n as f64 - 1.0)) as f32,
        ..Default::default()
    };
    let w = words("batchnorm running update", x, l, &p)?;
    let kernel = ctx.kernel(&NORM, "norm_running_update", &RUNNING, &[]);
    Ok(vec![ctx.dispatch(kernel, "batchnorm_running_update", &w, &[stats, mean, var, count], grid_groups(g))])
}
