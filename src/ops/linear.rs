//! Batched GEMM (`shaders/linear.wgsl`): linear forward with fused bias, and both
//! backward products, each with the register-blocked kernel that fits its layout.

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
    pub bias: Option<&'a wgpu::Buffer>,
    pub relu: bool,
    pub out: &'a wgpu::Buffer,
}

pub(crate) fn lower(ctx: &Lower, mm: &MatMul) -> Result<Dispatch> {
    let (m, n, k) = (mm.m, mm.n, mm.k);
    // Strides of A as (row m, depth k) and of B as (depth k, column n), in elements.
    let (a_sm, a_sk) = if mm.trans_a { (1, m) } else { (k, 1) };
    let (b_sk, b_sn) = if mm.trans_b { (1, k) } else { (n, 1) };
    let entry = match (mm.trans_a, mm.trans_b) {
        (false, true) if k % 4 == 0 => "gemm_nt",
        (false, false) if n % 4 == 0 => "gemm_nn",
        (true, false) if m % 4 == 0 && n % 4 == 0 => "gemm_tn",
        _ => "gemm",
    };
    if mm.g > 65_535 {
        return Err(Error::Usage(format!(
            "matmul: {} models exceed the 65,535 workgroups per dispatch dimension; split the batch",
            mm.g
        )));
    }
    let flags = u32::from(mm.bias.is_some()) | (u32::from(mm.relu) << 1);
    let words = [m, n, k, flags as usize, a_sm, a_sk, b_sk, b_sn].map(|v| v as u32);
    // Invocations per workgroup side (the adapter's tuning); each computes a 4x4 block.
    let wg = ctx.gpu.tuning().gemm_wg;
    let kernel = ctx.kernel(
        &LINEAR,
        entry,
        &[Binding::Read, Binding::Read, Binding::Read, Binding::ReadWrite],
        &[("WG", wg as f64)],
    );
    let tile = (4 * wg) as usize;
    let groups = [n.div_ceil(tile) as u32, m.div_ceil(tile) as u32, mm.g as u32];
    if groups[0] > 65_535 || groups[1] > 65_535 {
        return Err(Error::Usage(format!("matmul: a {m}x{n} output needs more than 65,535 workgroups per dimension")));
    }
    Ok(ctx.dispatch(kernel, entry, &words, &[mm.a, mm.b, mm.bias.unwrap_or(ctx.dummy), mm.out], groups))
}
