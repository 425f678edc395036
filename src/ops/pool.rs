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

/// Average-pooling divisor modes (the shader's `MODE` constant).
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

/// The shader's pipeline constants (shapes, window, divisor mode) for one pooling layer.
/// Only the invocation count `total` goes in the uniform: N and G never recompile a kernel.
fn constants(op: &str, s: &Pool, mode: u32) -> Result<Vec<(&'static str, f64)>> {
    let (x, y) = (s.x, s.y);
    let most = x.numel().max(y.numel());
    if most > u32::MAX as usize {
        return Err(Error::Usage(format!("{op}: {most} elements exceed the u32 indexing of the pooling kernels")));
    }
    if (x.g, x.n, x.c) != (y.g, y.n, y.c) || [x.h, x.w, y.h, y.w].contains(&0) {
        return Err(Error::Shape(format!("{op}: input {x:?} and output {y:?} do not match or are empty")));
    }
    let geom = s.geom.copied().unwrap_or(Pool2dGeom {
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        count_include_pad: false,
    });
    if [geom.kernel, geom.stride, geom.dilation].iter().flatten().any(|&v| v == 0) {
        return Err(Error::Shape(format!(
            "{op}: window {:?}, stride {:?} and dilation {:?} must be positive",
            geom.kernel, geom.stride, geom.dilation
        )));
    }
    if s.geom.is_some() && (geom.out_size(0, x.h) != Some(y.h) || geom.out_size(1, x.w) != Some(y.w)) {
        return Err(Error::Shape(format!(
            "{op}: output {}x{} is not what window {:?} (stride {:?}, padding {:?}, dilation {:?}) gives on {}x{}",
            y.h, y.w, geom.kernel, geom.stride, geom.padding, geom.dilation, x.h, x.w
        )));
    }
    // Most outputs one input can feed along an axis: floor(span / stride) + 1 for fixed
    // windows, ceil(out / in) + 1 for adaptive ones.
    let reach = |a: usize, size: usize, out: usize| {
        match s.geom {
            Some(g) => (g.kernel[a] - 1) * g.dilation[a] / g.stride[a] + 1,
            None => out.div_ceil(size) + 1,
        }
        .min(out)
    };
    let c = [
        ("WG", WG as usize),
        ("H", x.h),
        ("W", x.w),
        ("OH", y.h),
        ("OW", y.w),
        ("KH", geom.kernel[0]),
        ("KW", geom.kernel[1]),
        ("SH", geom.stride[0]),
        ("SW", geom.stride[1]),
        ("PH", geom.padding[0]),
        ("PW", geom.padding[1]),
        ("DH", geom.dilation[0]),
        ("DW", geom.dilation[1]),
        ("MODE", mode as usize),
        ("NY", reach(0, x.h, y.h)),
        ("NX", reach(1, x.w, y.w)),
    ];
    Ok(c.iter().map(|&(k, v)| (k, v as f64)).collect())
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

/// One dispatch of `entry` over `total` invocations (the uniform holds only `total`).
fn pool_dispatch(
    ctx: &Lower,
    s: &Pool,
    entry: &'static str,
    label: &'static str,
    mode: u32,
    buffers: [&wgpu::Buffer; 3],
    total: usize,
) -> Result<Vec<Dispatch>> {
    let kernel = ctx.kernel(&POOL, entry, &BINDINGS, &constants(label, s, mode)?);
    Ok(vec![ctx.dispatch(kernel, label, &[total as u32], &buffers, grid_1d(total, WG))])
}

/// Max pooling forward.
pub(crate) fn lower_max(ctx: &Lower, s: &Pool, x: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<Vec<Dispatch>> {
    let g = max_geom("maxpool2d", s)?;
    let (entry, total) = if quads(s, g) { ("maxpool2d_2x2", s.y.numel() / 4) } else { ("maxpool2d", s.y.numel()) };
    pool_dispatch(ctx, s, entry, "maxpool2d", 0, [x, ctx.dummy, out], total)
}

/// Whether 2x2 windows of stride 2 tile the input exactly and output rows hold whole groups
/// of 4 windows: `maxpool2d_2x2` and its gradient then take 4 windows per invocation,
/// reading and writing vec4 (every buffer a plan binds is a whole number of them).
fn quads(s: &Pool, g: &Pool2dGeom) -> bool {
    g.kernel == [2, 2]
        && g.stride == [2, 2]
        && g.padding == [0, 0]
        && g.dilation == [1, 1]
        && s.x.h == 2 * s.y.h
        && s.x.w == 2 * s.y.w
        && s.y.w % 4 == 0
}

/// Max pooling backward: `dx [x]` from `dy [y]` and the forward input `x`.
/// With `relu`, `x` is a relu output and the result is also masked by `x > 0` (MODE 1).
pub(crate) fn lower_max_grad(
    ctx: &Lower,
    s: &Pool,
    relu: bool,
    dy: &wgpu::Buffer,
    x: &wgpu::Buffer,
    dx: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let g = max_geom("maxpool2d_grad", s)?;
    let tiles = g.stride == g.kernel
        && g.padding == [0, 0]
        && g.dilation == [1, 1]
        && s.x.h == s.y.h * g.kernel[0]
        && s.x.w == s.y.w * g.kernel[1];
    let (entry, total) = if quads(s, g) {
        ("maxpool2d_grad_2x2", s.y.numel() / 4)
    } else if tiles {
        ("maxpool2d_grad_window", s.y.numel())
    } else {
        ("maxpool2d_grad", s.x.numel())
    };
    pool_dispatch(ctx, s, entry, "maxpool2d_grad", u32::from(relu), [dy, x, dx], total)
}

/// Average pooling forward (fixed windows when `s.geom` is set, adaptive otherwise).
pub(crate) fn lower_avg(ctx: &Lower, s: &Pool, x: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<Vec<Dispatch>> {
    let (mode, label) = avg_mode(s, false)?;
    pool_dispatch(ctx, s, "avgpool2d", label, mode, [x, ctx.dummy, out], s.y.numel())
}

/// Average pooling backward: `dx [x]` from `dy [y]`.
pub(crate) fn lower_avg_grad(ctx: &Lower, s: &Pool, dy: &wgpu::Buffer, dx: &wgpu::Buffer) -> Result<Vec<Dispatch>> {
    let (mode, label) = avg_mode(s, true)?;
    pool_dispatch(ctx, s, "avgpool2d_grad", label, mode, [dy, ctx.dummy, dx], s.x.numel())
}
