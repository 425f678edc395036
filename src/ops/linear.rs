//! Batched GEMM (`shaders/linear.wgsl`): linear forward with fused bias and relu, and both
//! backward products (the input gradient with relu's derivative where it follows one),
//! each with the register-blocked kernel that fits its layout, or, with the `gemm_tile`
//! tuning (GPUs), with `gemm_tile`: operands staged in workgroup memory, any layout; a
//! product with too few output blocks to fill a GPU (`gemm_split`) splits its depth over the
//! invocations of each workgroup instead (`gemm_split`).

use super::{Dispatch, Lower, LINEAR};
use crate::error::{Error, Result};
use crate::gpu::Binding;

/// Operands of one batched product `C = op(A)·op(B) (+ bias)`, all `[G, ...]`.
pub(crate) struct MatMul<'a> {
    pub g: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub a: &'a wgpu::Buffer,
    pub b: &'a wgpu::Buffer,
    pub epilogue: Epilogue<'a>,
    pub out: &'a wgpu::Buffer,
    /// Also writes the sums of op(A)'s rows over the depth here (`[G, M]`): with `trans_a`,
    /// A = dy `[G, K, M]` and the sums are a linear layer's bias gradient.
    pub a_sums: Option<&'a wgpu::Buffer>,
}

/// What the GEMM applies to each result before storing it.
pub(crate) struct Epilogue<'a> {
    /// Adds `bias [G, N]` to every row.
    pub bias: Option<&'a wgpu::Buffer>,
    /// Then relu.
    pub relu: bool,
    /// Multiplies by relu's derivative at this `[G, M, N]` tensor (a relu output: 1 where
    /// positive, else 0); bound where the bias would be, so never with a bias.
    pub relu_grad_at: Option<&'a wgpu::Buffer>,
}

/// Depths `gemm_tile` takes per step (`KC` in the shader).
const TILE_DEPTH: usize = 16;

/// Whether `gemm_tile` keeps a depth of `k` within the 65,535 loop iterations lavapipe allows
/// one invocation: per step of `TILE_DEPTH`, the two copies (at most 4 quads of each operand
/// per lane, on the smallest 4x4 workgroup) and the depths.
fn tile_fits(k: usize) -> bool {
    k.div_ceil(TILE_DEPTH) * (2 * 4 + TILE_DEPTH + 2) + 16 <= 65_535
}

/// Fewest depths one slice of `gemm_split` walks.
const MIN_SLICE_DEPTH: usize = 8;

/// Most slices of `gemm_split` (its workgroups are 4 x 4 x slices; workgroup memory holds
/// the partial blocks of half of them).
const MAX_SLICES: usize = 16;

/// Depth slices of `gemm_split` for a product of `blocks` 4x4 output blocks (all models)
/// over depth `k` with the tuning's `gemm_split` = `target` invocations: the fewest powers
/// of two that reach `target` invocations, at most [`MAX_SLICES`] (and `max_z`, the device's
/// workgroup depth), each slice at least [`MIN_SLICE_DEPTH`] deep; 1 (no split) with
/// `target` 0 or where the blocks alone reach it.
pub(crate) fn depth_slices(target: u32, blocks: usize, k: usize, max_z: u32) -> u32 {
    let mut slices = 1;
    while 2 * slices <= MAX_SLICES.min(max_z as usize)
        && blocks * slices < target as usize
        && k >= 2 * slices * MIN_SLICE_DEPTH
    {
        slices *= 2;
    }
    slices as u32
}

pub(crate) fn lower(ctx: &Lower, mm: &MatMul) -> Result<Dispatch> {
    let (m, n, k) = (mm.m, mm.n, mm.k);
    // Strides of A as (row m, depth k) and of B as (depth k, column n), in elements.
    let (a_sm, a_sk) = if mm.trans_a { (1, m) } else { (k, 1) };
    let (b_sk, b_sn) = if mm.trans_b { (1, k) } else { (n, 1) };
    let t = ctx.gpu.tuning();
    // Workgroups of a grid with `wg` x `wg` invocations.
    let grid = |wg: u32| n.div_ceil(4 * wg as usize) * m.div_ceil(4 * wg as usize) * mm.g;
    // Tiles where the product fills `gemm_groups` workgroups at the tuning's side: a smaller
    // one (few models) takes the register kernels on smaller workgroups below.
    let tiles = t.gemm_tile != 0 && tile_fits(k) && grid(t.gemm_wg) >= t.gemm_groups as usize;
    let limits = ctx.gpu.limits();
    let max_z = limits.max_compute_workgroup_size_z.min(limits.max_compute_invocations_per_workgroup / 16);
    let slices = depth_slices(t.gemm_split, m.div_ceil(4) * n.div_ceil(4) * mm.g, k, max_z);
    let entry = match (mm.trans_a, mm.trans_b, mm.a_sums.is_some()) {
        (_, _, sums) if slices > 1 => ["gemm_split", "gemm_split_sum"][usize::from(sums)],
        (_, _, sums) if tiles => ["gemm_tile", "gemm_tile_sum"][usize::from(sums)],
        (false, true, false) if k % 4 == 0 => "gemm_nt",
        (false, false, false) if n % 4 == 0 && k % 4 == 0 => "gemm_nn4",
        (false, false, false) if n % 4 == 0 => "gemm_nn",
        (true, false, sums) if m % 4 == 0 && n % 4 == 0 => ["gemm_tn", "gemm_tn_sum"][usize::from(sums)],
        (_, _, false) => "gemm",
        (_, _, true) => "gemm_sum",
    };
    if mm.g > 65_535 {
        return Err(Error::Usage(format!(
            "matmul: {} models exceed the 65,535 workgroups per dispatch dimension; split the batch",
            mm.g
        )));
    }
    let e = &mm.epilogue;
    if e.bias.is_some() && e.relu_grad_at.is_some() {
        return Err(Error::Usage("matmul: a bias and relu's derivative share one binding".into()));
    }
    let flags = u32::from(e.bias.is_some()) | (u32::from(e.relu) << 1) | (u32::from(e.relu_grad_at.is_some()) << 2);
    let words = [m, n, k, flags as usize, a_sm, a_sk, b_sk, b_sn].map(|v| v as u32);
    // Invocations per workgroup side (the adapter's tuning); each computes a 4x4 block.
    // Halved (down to 4) while the grid has fewer workgroups than the tuning's `gemm_groups`:
    // a small product spreads over more of a GPU's cores.
    let mut wg = t.gemm_wg;
    while wg > 4 && grid(wg) < t.gemm_groups as usize {
        wg /= 2;
    }
    let storage = [Binding::Read, Binding::Read, Binding::Read, Binding::ReadWrite, Binding::ReadWrite];
    let storage = &storage[..4 + usize::from(mm.a_sums.is_some())];
    // 4x4 blocks per invocation along the columns and stacked along the rows (the adapter's
    // `gemm_cols`, `gemm_rows`), where the kernel takes more than one.
    let blocks = matches!(entry, "gemm_nt" | "gemm_nn4" | "gemm_tn" | "gemm_tn_sum");
    let (bx, by) = if blocks { (t.gemm_cols, t.gemm_rows) } else { (1, 1) };
    let (kernel, groups) = if slices > 1 {
        // 16x16 tiles of C, one per workgroup of 4 x 4 x slices invocations.
        let kernel = ctx.kernel(&LINEAR, entry, storage, &[("SK", f64::from(slices))]);
        (kernel, [n.div_ceil(16) as u32, m.div_ceil(16) as u32, mm.g as u32])
    } else {
        let constants = [("WG", wg as f64), ("BX", f64::from(bx)), ("BY", f64::from(by))];
        let tile = (4 * wg) as usize;
        let groups = [n.div_ceil(tile * bx as usize) as u32, m.div_ceil(tile * by as usize) as u32, mm.g as u32];
        (ctx.kernel(&LINEAR, entry, storage, &constants), groups)
    };
    if groups[0] > 65_535 || groups[1] > 65_535 {
        return Err(Error::Usage(format!("matmul: a {m}x{n} output needs more than 65,535 workgroups per dimension")));
    }
    let third = e.bias.or(e.relu_grad_at).unwrap_or(ctx.dummy);
    let buffers = [mm.a, mm.b, third, mm.out, mm.a_sums.unwrap_or(ctx.dummy)];
    Ok(ctx.dispatch(kernel, entry, &words, &buffers[..storage.len()], groups))
}

#[cfg(test)]
mod tests {
    use super::depth_slices;

    #[test]
    fn slices_are_the_fewest_powers_of_two_that_reach_the_target() {
        // Off, or the blocks alone reach the target.
        assert_eq!(depth_slices(0, 1, 1000, 64), 1);
        assert_eq!(depth_slices(100, 100, 1000, 64), 1);
        // 60 blocks: 2 slices reach 100 invocations, 4 reach 200.
        assert_eq!(depth_slices(100, 60, 1000, 64), 2);
        assert_eq!(depth_slices(200, 60, 1000, 64), 4);
        // At most 16, and the device's workgroup depth.
        assert_eq!(depth_slices(1 << 24, 1, 1000, 64), 16);
        assert_eq!(depth_slices(1 << 24, 1, 1000, 4), 4);
        assert_eq!(depth_slices(1 << 24, 1, 1000, 6), 4);
        assert_eq!(depth_slices(1 << 24, 1, 1000, 1), 1);
        // Each slice at least 8 deep: depth 15 stays whole, 16 takes 2, 127 takes 8.
        assert_eq!(depth_slices(1 << 24, 1, 15, 64), 1);
        assert_eq!(depth_slices(1 << 24, 1, 16, 64), 2);
        assert_eq!(depth_slices(1 << 24, 1, 127, 64), 8);
        assert_eq!(depth_slices(1 << 24, 1, 128, 64), 16);
    }
}
