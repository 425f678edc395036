//! User-defined ops ([`crate::graph::CustomOp`]): the uniform, the bind layout and the grid of
//! a user's WGSL kernel, compiled through the pipeline cache like the crate's own.

use super::{grid_1d, Dispatch, Lower};
use crate::error::{Error, Result};
use crate::gpu::Binding;
use crate::graph::{CustomOp, CUSTOM_HEADER_WORDS};

/// One dispatch of `op`'s kernel over `inputs` (shape and buffer of each) into `out`.
pub(crate) fn lower(
    ctx: &Lower,
    op: &dyn CustomOp,
    inputs: &[(&[usize], &wgpu::Buffer)],
    out_shape: &[usize],
    out: &wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let name = op.name();
    let limits = ctx.gpu.limits();
    // Storage buffers: the inputs and the output; all buffers: those and the uniform.
    let max_inputs = (limits.max_storage_buffers_per_shader_stage.saturating_sub(1))
        .min(limits.max_buffers_and_acceleration_structures_per_shader_stage.saturating_sub(2))
        as usize;
    if inputs.len() > max_inputs {
        return Err(Error::Usage(format!(
            "custom op `{name}` has {} inputs, but this device binds at most {max_inputs} per kernel \
             ({} storage buffers per shader stage for the inputs and the output, {} buffers in all with the \
             uniform); split the op",
            inputs.len(),
            limits.max_storage_buffers_per_shader_stage,
            limits.max_buffers_and_acceleration_structures_per_shader_stage
        )));
    }
    let wg = op.workgroup_size();
    if wg == 0 || wg > limits.max_compute_invocations_per_workgroup || wg > limits.max_compute_workgroup_size_x {
        return Err(Error::Usage(format!(
            "custom op `{name}`: workgroup size {wg} must be in 1..={}",
            limits.max_compute_invocations_per_workgroup.min(limits.max_compute_workgroup_size_x)
        )));
    }
    let shapes: Vec<&[usize]> = inputs.iter().map(|(s, _)| *s).collect();
    let threads = op.invocations(&shapes, out_shape);
    let g = out_shape[0];
    let word = |what: &str, v: usize| -> Result<u32> {
        u32::try_from(v).map_err(|_| Error::Usage(format!("custom op `{name}`: {what} ({v}) does not fit 32 bits")))
    };
    let per_model = |s: &[usize]| s.iter().product::<usize>() / s[0].max(1);
    let groups = grid_1d(threads, wg);
    if groups[1] > limits.max_compute_workgroups_per_dimension {
        return Err(Error::Usage(format!("custom op `{name}`: {threads} invocations are too many for one dispatch")));
    }
    let mut words = vec![
        word("G", g)?,
        word("invocations", threads)?,
        groups[0] * wg,
        word("output length", per_model(out_shape))?,
    ];
    debug_assert_eq!(words.len(), CUSTOM_HEADER_WORDS);
    for s in &shapes {
        words.push(word("input length", per_model(s))?);
    }
    words.extend(op.uniform_words());
    if threads == 0 {
        return Ok(vec![]);
    }
    let mut storage = vec![Binding::Read; inputs.len()];
    storage.push(Binding::ReadWrite);
    let kernel = ctx.gpu.custom_kernel(
        name,
        &op.wgsl(),
        op.entry_point(),
        &storage,
        (words.len() * 4) as u64,
        &[("WG", wg as f64)],
    )?;
    let mut buffers: Vec<&wgpu::Buffer> = inputs.iter().map(|(_, b)| *b).collect();
    buffers.push(out);
    Ok(vec![ctx.dispatch(kernel, name, &words, &buffers, groups)])
}
