//! Max, average and adaptive average pooling with their gradients (`shaders/pool.wgsl`).
//!
//! One invocation per output element forward and per input element backward. The backward
//! kernels gather from the outputs whose windows hold each input (max pooling re-finds each
//! window's first maximum from `x`), so overlapping windows accumulate without atomics and
//! no argmax buffer is needed.

use super::{grid_1d, Dispatch, Image, Lower, POOL};
use crate::error::{Error, Result};
use crate::gpu::Binding;
use crate::graph::Pool2dGeom;

const WG: u32 = 256;
const BINDINGS: [Binding; 3] = [Binding::Read, Binding::Read, Binding::ReadWrite];

/// Average-pooling divisor modes of the shader's `mode` word.
const MODE_INCLUDE_PAD: u32 = 0;
const MODE_EXCLUDE_PAD: u32 = 1;
const MODE_ADAPTIVE: u32 = 2;

/// Shapes of one pooling: input `x`, output `y`; `geom` is `None` for adaptive pooling
/// (windows from PyTorch's adaptive rule).
pub(crate) struct Pool<'a> {
    pub x: Image,
    pub y: Image,
    pub geom: Option<&'a Pool2dGeom>,
}

/// The shader's uniform words for `total` invocations.
fn words(op: &str, s: &Pool, total: usize, mode: u32) -> Result<Vec<u32>> {
    if total > u32::MAX as usize {
        return Err(Error::Usage(format!("{op}: {total} elements exceed the u32 indexing of the pooling kernels")));
    }
    let (x, y) = (s.x, s.y);
    if (x.g, x.n, x.c) != (y.g, y.n, y.c) || y.h == 0 || y.w == 0 {
        return Err(Error::Shape(format!("{op}: input {x:?} and output {y:?} do not match")));
    }
    let geom = s.geom.copied().unwrap_or(Pool2dGeom {
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        count_include_pad: false,
    });
    if s.geom.is_some() && (geom.out_size(0, x.h) != Some(y.h) || geom.out_size(1, x.w) != Some(y.w)) {
        return Err(Error::Shape(format!(
            "{op}: output {}x{} is not what window {:?} (stride {:?}, padding {:?}, dilation {:?}) gives on {}x{}",
            y.h, y.w, geom.kernel, geom.stride, geom.padding, geom.dilation, x.h, x.w
        )));
    }
    let w = [
        total,
        x.h,
        x.w,
        y.h,
        y.w,
        geom.kernel[0],
        geom.kernel[1],
        geom.stride[0],
        geom.stride[1],
        geom.padding[0],
        geom.padding[1],
        geom.dilation[0].max(1),
        geom.dilation[1].max(1),
    ];
    let mut v: Vec<u32> = w.iter().map(|&a| a as u32).collect();
    v.push(mode);
    Ok(v)
}

fn max_geom<'a>(op: &str, s: &Pool<'a>) -> Result<&'a Pool2dGeom> {
    s.geom.ok_or_else(|| Error::Usage(format!("{op}: max pooling needs a window geometry")))
}

/// The divisor mode and the labels of an average pooling (fixed windows or adaptive).
fn avg_mode(s: &Pool, grad: bool) -> Result<(u32, &'static str)> {
    match s.geom {
        None => Ok((MODE_ADAPTIVE, if grad { "adaptive_avgpool2d_grad" } else { "adaptive_avgpool2d" })),
        Some(g) => {
            let label = if grad { "avgpool2d_grad" } else { "avgpool2d" };
            if g.dilation.iter().any(|&d| d > 1) {
                return Err(Error::Usage(format!(
                    "{label}: average pooling has no dilation (got {:?}; PyTorch's AvgPool2d has none)",
                    g.dilation
                )));
            }
            Ok((if g.count_include_pad { MODE_INCLUDE_PAD } else { MODE_EXCLUDE_PAD }, label))
        }
    }
}

fn pool_dispatch(
    ctx: &Lower,
    entry: &'static str,
    label: &'static str,
    words: &[u32],
    buffers: [&wgpu::Buffer; 3],
    total: usize,
) -> Dispatch {
    let kernel = ctx.kernel(&POOL, entry, &BINDINGS, &[("WG", WG as f64)]);
    ctx.dispatch(kernel, label, words, &buffers, grid_1d(total, WG))
}

/// Max pooling forward.
pub(crate) fn lower_max(ctx: &Lower, s: &Pool, x: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<Vec<Dispatch>> {
    max_geom("maxpool2d", s)?;
    let total = s.y.numel();
    let w = words("maxpool2d", s, total, 0)?;
    Ok(vec![pool_dispatch(ctx, "maxpool2d", "maxpool2d", &w, [x, ctx.dummy, out], total)])
}

/// Max pooling backward: `dx [x]` from `dy [y]` and the forward input `x`.
pub(crate) fn lower_max_grad(
    ctx: &Lower,
    s: &Pool,
    dy: &wgpu::Buffer,
    x: &wgpu::Buffer,
    dx: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    max_geom("maxpool2d_grad", s)?;
    let total = s.x.numel();
    let w = words("maxpool2d_grad", s, total, 0)?;
    Ok(vec![pool_dispatch(ctx, "maxpool2d_grad", "maxpool2d_grad", &w, [dy, x, dx], total)])
}

/// Average pooling forward (fixed windows when `s.geom` is set, adaptive otherwise).
pub(crate) fn lower_avg(ctx: &Lower, s: &Pool, x: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<Vec<Dispatch>> {
    let (mode, label) = avg_mode(s, false)?;
    let total = s.y.numel();
    let w = words(label, s, total, mode)?;
    Ok(vec![pool_dispatch(ctx, "avgpool2d", label, &w, [x, ctx.dummy, out], total)])
}

/// Average pooling backward: `dx [x]` from `dy [y]`.
pub(crate) fn lower_avg_grad(ctx: &Lower, s: &Pool, dy: &wgpu::Buffer, dx: &wgpu::Buffer) -> Result<Vec<Dispatch>> {
    let (mode, label) = avg_mode(s, true)?;
    let total = s.x.numel();
    let w = words(label, s, total, mode)?;
    Ok(vec![pool_dispatch(ctx, "avgpool2d_grad", label, &w, [dy, ctx.dummy, dx], total)])
}
