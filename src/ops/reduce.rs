//! Sum over axes and broadcast (`shaders/reduce.wgsl`).

use super::{f, grid_1d, grid_groups, Dispatch, Lower, REDUCE};
use crate::error::{Error, Result};
use crate::gpu::Binding;

const WG: u32 = 256;
const MAX_DIMS: usize = 8;

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Merges runs of adjacent axes that are all reduced or all kept, dropping size-1 axes.
/// Returns (kept sizes, kept strides, reduced sizes, reduced strides) in input elements.
type Dims = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>);

fn split_dims(shape: &[usize], reduced: &[usize]) -> Dims {
    let st = strides(shape);
    let (mut ks, mut kt, mut rs, mut rt) = (vec![], vec![], vec![], vec![]);
    let mut last: Option<bool> = None;
    for (axis, (&size, &stride)) in shape.iter().zip(&st).enumerate() {
        if size == 1 {
            continue;
        }
        let red = reduced.contains(&axis);
        let (sizes, strs) = if red { (&mut rs, &mut rt) } else { (&mut ks, &mut kt) };
        if last == Some(red) {
            // Adjacent axis of the same kind: merge with the previous (row-major contiguous).
            *sizes.last_mut().unwrap() *= size;
            *strs.last_mut().unwrap() = stride;
        } else {
            sizes.push(size);
            strs.push(stride);
        }
        last = Some(red);
    }
    (ks, kt, rs, rt)
}

fn pack(v: &[usize]) -> [u32; MAX_DIMS] {
    let mut out = [0u32; MAX_DIMS];
    for (o, x) in out.iter_mut().zip(v) {
        *o = *x as u32;
    }
    out
}

fn words(n_out: usize, n_red: usize, scale: f32, dims: &Dims) -> Result<Vec<u32>> {
    let (ks, kt, rs, rt) = dims;
    if ks.len() > MAX_DIMS || rs.len() > MAX_DIMS {
        return Err(Error::Usage(format!("sum/broadcast: more than {MAX_DIMS} separate axes")));
    }
    let mut w = vec![n_out as u32, ks.len() as u32, rs.len() as u32, n_red as u32, f(scale), 0, 0, 0];
    for v in [ks, kt, rs, rt] {
        w.extend_from_slice(&pack(v));
    }
    Ok(w)
}

/// Fewest reduced elements per output for which a sum into few outputs runs in two passes
/// (the adapter's `sum_split`).
const SPLIT_MIN_REDUCED: usize = 4096;

/// `out = scale * sum of x [shape] over axes`. A long sum over several axes into fewer
/// outputs than the adapter's `sum_split` (a convolution's bias gradient at small G: 6 outputs
/// of 128 x 576 elements, six workgroups on a GPU of thousands of lanes) runs in two passes:
/// the inner reduced axes into a scratch buffer (many outputs, short sums), then the
/// outermost one.
pub(crate) fn lower_sum(
    ctx: &Lower,
    shape: &[usize],
    axes: &[usize],
    scale: f32,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    // The reduced axes that are longer than 1, outermost first.
    let mut reduced: Vec<usize> = axes.iter().copied().filter(|&a| shape[a] > 1).collect();
    reduced.sort_unstable();
    let n_red: usize = reduced.iter().map(|&a| shape[a]).product();
    let n_out = shape.iter().product::<usize>() / n_red.max(1);
    if reduced.len() >= 2 && n_out < ctx.gpu.tuning().sum_split as usize && n_red >= SPLIT_MIN_REDUCED {
        let (outer, inner) = (reduced[0], &reduced[1..]);
        let mut mid = shape.to_vec();
        for &a in inner {
            mid[a] = 1;
        }
        let scratch = ctx.scratch(4 * mid.iter().product::<usize>() as u64);
        return Ok(vec![
            sum_pass(ctx, shape, inner, 1.0, x, &scratch)?,
            sum_pass(ctx, &mid, &[outer], scale, &scratch, out)?,
        ]);
    }
    Ok(vec![sum_pass(ctx, shape, axes, scale, x, out)?])
}

/// One dispatch of `out = scale * sum of x [shape] over axes`.
fn sum_pass(
    ctx: &Lower,
    shape: &[usize],
    axes: &[usize],
    scale: f32,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Dispatch> {
    let dims = split_dims(shape, axes);
    let n_red: usize = axes.iter().map(|&a| shape[a]).product();
    let n_out = shape.iter().product::<usize>() / n_red.max(1);
    let w = words(n_out, n_red, scale, &dims)?;
    // One axis with a stride, at most the adapter's `serial_sum` long: an invocation per
    // output (`sum_serial`); otherwise a workgroup per output (see the shader).
    let (_, _, rs, rt) = &dims;
    if rs.len() == 1 && rt[0] != 1 && n_red <= ctx.gpu.tuning().serial_sum as usize {
        let kernel = ctx.kernel(&REDUCE, "sum_serial", &[Binding::Read, Binding::ReadWrite], &[("WG", WG as f64)]);
        return Ok(ctx.dispatch(kernel, "sum", &w, &[x, out], grid_1d(n_out, WG)));
    }
    let kernel = ctx.kernel(&REDUCE, "sum", &[Binding::Read, Binding::ReadWrite], &[]);
    Ok(ctx.dispatch(kernel, "sum", &w, &[x, out], grid_groups(n_out)))
}

/// `out [shape] = scale * x` repeated along `axes` of the output.
pub(crate) fn lower_broadcast(
    ctx: &Lower,
    shape: &[usize],
    axes: &[usize],
    scale: f32,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Dispatch> {
    // Output coordinates map to input offsets through the input's strides, 0 on repeated axes.
    let kept: Vec<usize> = shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
    let kept_strides = strides(&kept);
    let mut sizes = vec![];
    let mut strs = vec![];
    let mut ki = 0;
    for (axis, &size) in shape.iter().enumerate() {
        let stride = if axes.contains(&axis) {
            0
        } else {
            ki += 1;
            kept_strides[ki - 1]
        };
        if size == 1 {
            continue;
        }
        // Merge with the previous axis when the mapping stays affine.
        if let (Some(ls), Some(lt)) = (sizes.last_mut(), strs.last_mut()) {
            if *lt == stride * size {
                *ls *= size;
                *lt = stride;
                continue;
            }
        }
        sizes.push(size);
        strs.push(stride);
    }
    let n_out: usize = shape.iter().product();
    let dims = (sizes, strs, vec![], vec![]);
    let kernel = ctx.kernel(&REDUCE, "broadcast", &[Binding::Read, Binding::ReadWrite], &[("WG", WG as f64)]);
    let w = words(n_out, 1, scale, &dims)?;
    Ok(ctx.dispatch(kernel, "broadcast", &w, &[x, out], grid_1d(n_out, WG)))
}
