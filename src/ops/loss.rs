//! Cross-entropy forward and backward, and top-k accuracy (`shaders/loss.wgsl`).

use super::{grid_1d, grid_groups, Dispatch, Lower, LOSS};
use crate::error::{Error, Result};
use crate::gpu::Binding;
use crate::graph::Reduction;

const WG: u32 = 256;
const BINDINGS: [Binding; 4] = [Binding::Read, Binding::Read, Binding::Read, Binding::ReadWrite];

fn mode(r: Reduction) -> u32 {
    match r {
        Reduction::None => 0,
        Reduction::Mean => 1,
        Reduction::Sum => 2,
    }
}

fn words(g: usize, n: usize, c: usize, mode: u32, ks: &[u32]) -> Vec<u32> {
    let mut w = vec![g as u32, n as u32, c as u32, mode, ks.len() as u32, 0, 0, 0];
    let mut packed = [0u32; 8];
    packed[..ks.len()].copy_from_slice(ks);
    w.extend_from_slice(&packed);
    w
}

/// `[G, N, C]` logits and `[G, N]` labels (dims `g, n, c`).
pub(crate) struct Rows<'a> {
    pub g: usize,
    pub n: usize,
    pub c: usize,
    pub logits: &'a wgpu::Buffer,
    pub labels: &'a wgpu::Buffer,
}

pub(crate) fn lower_forward(ctx: &Lower, r: &Rows, reduction: Reduction, out: &wgpu::Buffer) -> Dispatch {
    let (entry, groups) = match reduction {
        Reduction::None => ("ce_rows", grid_1d(r.g * r.n, WG)),
        _ => ("ce_reduce", grid_groups(r.g)),
    };
    let kernel = ctx.kernel(&LOSS, entry, &BINDINGS, &[]);
    let w = words(r.g, r.n, r.c, mode(reduction), &[]);
    ctx.dispatch(kernel, entry, &w, &[r.logits, r.labels, ctx.dummy, out], groups)
}

pub(crate) fn lower_grad(
    ctx: &Lower,
    r: &Rows,
    reduction: Reduction,
    dloss: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Dispatch {
    let kernel = ctx.kernel(&LOSS, "ce_grad", &BINDINGS, &[]);
    let w = words(r.g, r.n, r.c, mode(reduction), &[]);
    ctx.dispatch(kernel, "ce_grad", &w, &[r.logits, r.labels, dloss, out], grid_1d(r.g * r.n, WG))
}

pub(crate) fn lower_topk(ctx: &Lower, r: &Rows, ks: &[u32], counts: bool, out: &wgpu::Buffer) -> Result<Dispatch> {
    if ks.len() > 8 {
        return Err(Error::Usage(format!("topk_accuracy: at most 8 values of k, got {}", ks.len())));
    }
    let kernel = ctx.kernel(&LOSS, "topk", &BINDINGS, &[]);
    let w = words(r.g, r.n, r.c, u32::from(!counts), ks);
    Ok(ctx.dispatch(kernel, "topk", &w, &[r.logits, r.labels, ctx.dummy, out], grid_groups(r.g)))
}
