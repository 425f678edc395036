//! Optimizer update kernels (`shaders/optim.wgsl`), in place on parameter buffers.

use super::{grid_1d, Dispatch, Lower, OPTIM};
use crate::gpu::Binding;

const WG: u32 = 256;

/// Floats per model in an SGD hyper-parameter row (`SgdHyper` in the shader).
pub const SGD_HYPER_WIDTH: usize = 8;
/// Floats per model in an Adam hyper-parameter row (`AdamHyper` in the shader).
pub const ADAM_HYPER_WIDTH: usize = 8;

/// Most parameter tensors one update dispatch takes (the uniform holds 16 sizes).
pub(crate) const MAX_TENSORS: usize = 16;

/// The buffers of one parameter tensor's update: `[param, grad, state...]` (SGD: the momentum
/// buffer; Adam: both moments), each `numel` elements, `per_model` per model.
pub(crate) struct Slot<'a> {
    pub numel: usize,
    pub per_model: usize,
    pub buffers: Vec<&'a wgpu::Buffer>,
}

/// Which rule an update applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    Sgd,
    Adam,
}

impl Rule {
    /// The entry point (and dispatch label) of its update kernel.
    pub fn entry(self) -> &'static str {
        match self {
            Rule::Sgd => "sgd",
            Rule::Adam => "adam",
        }
    }

    /// Buffers per tensor: param, grad and the optimizer state.
    pub fn per_tensor(self) -> usize {
        match self {
            Rule::Sgd => 3,
            Rule::Adam => 4,
        }
    }

    /// Most tensors one dispatch may take on `ctx`'s device: its storage buffers per stage
    /// (and buffers of any kind, the uniform included; two storage buffers go to the
    /// hyper-parameter rows and the freeze flags), the tuning's `update_tensors` (0: no
    /// further cap), and [`MAX_TENSORS`].
    pub fn max_tensors(self, ctx: &Lower) -> usize {
        let limits = ctx.gpu.limits();
        let slots = (limits.max_storage_buffers_per_shader_stage as usize)
            .min((limits.max_buffers_and_acceleration_structures_per_shader_stage as usize).saturating_sub(1));
        let by_limit = slots.saturating_sub(2) / self.per_tensor();
        let tuned = match ctx.gpu.tuning().update_tensors as usize {
            0 => MAX_TENSORS,
            k => k,
        };
        by_limit.min(tuned).clamp(1, MAX_TENSORS)
    }
}

/// One dispatch of `rule` over every tensor of `slots` (at most [`Rule::max_tensors`]):
/// invocation i updates elements 4i .. 4i + 3 of a tensor (each tensor starts a workgroup),
/// each with its model's row of `hyper`, skipping models whose `dead` flag is set. The
/// kernel reads and writes vec4: every buffer a plan binds is a whole number of them.
pub(crate) fn lower_update(
    ctx: &Lower,
    rule: Rule,
    slots: &[Slot],
    hyper: &wgpu::Buffer,
    dead: &wgpu::Buffer,
) -> Dispatch {
    let k = slots.len();
    debug_assert!((1..=MAX_TENSORS).contains(&k));
    let entry = rule.entry();
    let mut storage = Vec::new();
    for _ in 0..k {
        storage.extend([Binding::ReadWrite, Binding::Read]);
        storage.extend(std::iter::repeat_n(Binding::ReadWrite, rule.per_tensor() - 2));
    }
    storage.extend([Binding::Read, Binding::Read]);
    let kernel = ctx.gpu.generated_kernel(
        format!("optim {entry} x{k}"),
        || update_source(rule, k),
        entry,
        &[[Binding::Uniform].as_slice(), &storage].concat(),
        &[("WG", WG as f64)],
    );
    // Uniform: the workgroups in all; per tensor the running end of its workgroups (each
    // tensor starts a workgroup of its own, so that the branch is uniform per workgroup), its
    // elements and its elements per model.
    let mut words = vec![0u32; 4 + 3 * MAX_TENSORS];
    let mut end = 0;
    for (t, s) in slots.iter().enumerate() {
        end += s.numel.div_ceil(4 * WG as usize);
        words[4 + t] = end as u32;
        words[4 + MAX_TENSORS + t] = s.numel as u32;
        words[4 + 2 * MAX_TENSORS + t] = s.per_model as u32;
    }
    words[0] = end as u32;
    let mut buffers: Vec<&wgpu::Buffer> = slots.iter().flat_map(|s| s.buffers.iter().copied()).collect();
    buffers.extend([hyper, dead]);
    debug_assert!(buffers.iter().all(|b| ctx.ranges.borrow().get(*b).map_or(b.size(), |r| r.1) % 16 == 0));
    ctx.dispatch(kernel, entry, &words, &buffers, super::grid_groups(end))
}

/// WGSL of the `k`-tensor update: `shaders/optim.wgsl` (the rules) and the bindings and
/// entry point for `k` tensors, each tensor's branch written out (WGSL cannot index bindings).
fn update_source(rule: Rule, k: usize) -> String {
    use std::fmt::Write;
    let mut s = String::from(OPTIM.source);
    let per = rule.per_tensor();
    let names: &[&str] = match rule {
        Rule::Sgd => &["w", "g", "m"],
        Rule::Adam => &["w", "g", "m", "v"],
    };
    let hyper_type = match rule {
        Rule::Sgd => "SgdHyper",
        Rule::Adam => "AdamHyper",
    };
    let q = MAX_TENSORS / 4;
    let _ = writeln!(s, "\n// Generated for {k} tensor(s) (src/ops/optim.rs).");
    let _ = writeln!(
        s,
        "struct Multi {{ groups: u32, _p0: u32, _p1: u32, _p2: u32, ends: array<vec4<u32>, {q}>, numel: array<vec4<u32>, {q}>, per: array<vec4<u32>, {q}> }}"
    );
    let _ = writeln!(s, "@group(0) @binding(0) var<uniform> mq: Multi;");
    for t in 0..k {
        for (j, name) in names.iter().enumerate() {
            let access = if j == 1 { "read" } else { "read_write" };
            let _ = writeln!(
                s,
                "@group(0) @binding({}) var<storage, {access}> {name}{t}: array<vec4<f32>>;",
                1 + per * t + j
            );
        }
    }
    let _ = writeln!(s, "@group(0) @binding({}) var<storage, read> mhyper: array<{hyper_type}>;", 1 + per * k);
    let _ = writeln!(s, "@group(0) @binding({}) var<storage, read> mdead: array<f32>;", 2 + per * k);
    let entry = rule.entry();
    let _ = writeln!(s, "@compute @workgroup_size(WG)");
    let _ = writeln!(
        s,
        "fn {entry}(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{"
    );
    // The tensor is chosen per workgroup (uniform control flow: one branch runs).
    let _ = writeln!(s, "    let wg = wid.x + wid.y * nwg.x;");
    let _ = writeln!(s, "    if (wg >= mq.groups) {{\n        return;\n    }}");
    let lane = |t: usize| format!("[{}].{}", t / 4, ["x", "y", "z", "w"][t % 4]);
    let call = |at: &dyn Fn(&str) -> String| {
        let args: Vec<String> = names.iter().map(|n| at(n)).collect();
        format!("{entry}_step({}, mhyper[model])", args.join(", "))
    };
    // (The rule's results are named like its buffers: w, m, v.)
    let written: Vec<&str> = names.iter().copied().filter(|n| *n != "g").collect();
    for t in 0..k {
        let start = if t == 0 { "0u".to_string() } else { format!("mq.ends{}", lane(t - 1)) };
        let open = if t == 0 { "    if" } else { " else if" };
        let _ = writeln!(s, "{open} (wg < mq.ends{}) {{", lane(t));
        let _ = writeln!(s, "        let j = (wg - {start}) * WG + lid.x;");
        let _ = writeln!(s, "        let e = 4u * j;");
        let _ = writeln!(s, "        let numel = mq.numel{};\n        let per = mq.per{};", lane(t), lane(t));
        let _ = writeln!(s, "        if (e < numel) {{");
        let _ = writeln!(s, "            let model = e / per;");
        // (`&&` short-circuits: no flag is read past the tensor's end.)
        let _ = writeln!(s, "            if (e + 3u < numel && (e + 3u) / per == model) {{");
        let _ = writeln!(s, "                if (mdead[model] == 0.0) {{");
        let _ = writeln!(s, "                    let r = {};", call(&|n| format!("{n}{t}[j]")));
        for n in &written {
            let _ = writeln!(s, "                    {n}{t}[j] = r.{n};");
        }
        let _ = writeln!(s, "                }}\n            }} else {{");
        // Elements of two models, or past the tensor's end (kept as they are): one at a time.
        for n in names {
            let _ = writeln!(s, "                var {n} = {n}{t}[j];");
        }
        let _ = writeln!(s, "                for (var c = 0u; c < 4u; c++) {{");
        let _ = writeln!(s, "                    let model = min(e + c, numel - 1u) / per;");
        let _ = writeln!(s, "                    if (e + c < numel && mdead[model] == 0.0) {{");
        let _ = writeln!(s, "                        let r = {};", call(&|n| format!("vec4<f32>({n}[c])")));
        for n in &written {
            let _ = writeln!(s, "                        {n}[c] = r.{n}.x;");
        }
        let _ = writeln!(s, "                    }}\n                }}");
        for n in &written {
            let _ = writeln!(s, "                {n}{t}[j] = {n};");
        }
        let _ = write!(s, "            }}\n        }}\n    }}");
    }
    let _ = writeln!(s, "\n}}");
    s
}

/// The generated update kernels for 1 and [`MAX_TENSORS`] tensors of each rule (for offline
/// validation, as [`super::ALL_SHADERS`]).
pub fn generated_sources() -> Vec<(String, String)> {
    [Rule::Sgd, Rule::Adam]
        .into_iter()
        .flat_map(|r| [1, 2, MAX_TENSORS].map(move |k| (format!("optim {} x{k}", r.entry()), update_source(r, k))))
        .collect()
}

/// Marks models whose `loss [G]` is not finite as dead in `dead [G]` (never revived).
pub(crate) fn lower_guard(ctx: &Lower, g: usize, loss: &wgpu::Buffer, dead: &wgpu::Buffer) -> Dispatch {
    let kernel = ctx.kernel(&OPTIM, "guard", &[Binding::Read, Binding::ReadWrite], &[("WG", WG as f64)]);
    ctx.dispatch(kernel, "guard", &[g as u32, 1], &[loss, dead], grid_1d(g, WG))
}

/// `dst += src` over `numel` elements, or `dst = 0` when `src` is `None` (gradient
/// accumulation over micro-batches).
pub(crate) fn lower_accumulate(ctx: &Lower, numel: usize, dst: &wgpu::Buffer, src: Option<&wgpu::Buffer>) -> Dispatch {
    let kernel = ctx.kernel(&OPTIM, "accumulate", &[Binding::ReadWrite, Binding::Read], &[("WG", WG as f64)]);
    let words = [numel as u32, u32::from(src.is_some())];
    ctx.dispatch(kernel, "accumulate", &words, &[dst, src.unwrap_or(ctx.dummy)], grid_1d(numel, WG))
}
