//! Lowering: each graph node and each in-place update to the dispatches of its op family.

use super::Update;
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, Op, TensorId};
use crate::ops::optim::{Rule, Slot};
use crate::ops::{self, Dispatch, Lower};

/// The in-place updates (optimizer steps, running estimates), lowered after the graph.
pub(super) fn lower_updates<'b>(
    ctx: &Lower,
    graph: &Graph,
    updates: &[Update],
    buf: &impl Fn(TensorId) -> &'b wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let mut out = Vec::new();
    let mut pending: Option<Group> = None;
    for u in updates {
        // Consecutive optimizer updates with the same rows and flags share one dispatch.
        if let Some((rule, slot, hyper, dead)) = optimizer_slot(graph, u, buf) {
            if let Some(group) = pending.as_mut().filter(|g| g.takes(ctx, rule, &slot, hyper, dead)) {
                group.slots.push(slot);
                continue;
            }
            if let Some(group) = pending.take() {
                out.push(group.lower(ctx));
            }
            pending = Some(Group { rule, slots: vec![slot], hyper, dead });
            continue;
        }
        if let Some(group) = pending.take() {
            out.push(group.lower(ctx));
        }
        match *u {
            Update::Sgd { .. } | Update::Adam { .. } => unreachable!("handled above"),
            Update::Guard { loss, dead } => {
                out.push(ops::optim::lower_guard(ctx, graph.shape(loss)[0], buf(loss), buf(dead)));
            }
            Update::Accumulate { dst, src } => {
                let numel = graph.node(dst).numel();
                out.push(ops::optim::lower_accumulate(ctx, numel, buf(dst), Some(buf(src))));
            }
            Update::Zero { dst } => {
                out.push(ops::optim::lower_accumulate(ctx, graph.node(dst).numel(), buf(dst), None));
            }
            Update::BatchNormRunning { stats, mean, var, count, momentum } => {
                // Values per channel: the normalised input's, or those the sums were taken over.
                let n = match graph.node(stats).op {
                    Op::SumsStats { count, .. } => count,
                    _ => {
                        let x = ops::Image::of(graph.shape(graph.node(stats).inputs[0]));
                        x.n * x.h * x.w
                    }
                };
                let s = graph.shape(stats);
                out.extend(ops::norm::lower_running_update(
                    ctx,
                    s[0],
                    s[2],
                    n,
                    momentum,
                    buf(stats),
                    buf(mean),
                    buf(var),
                    buf(count),
                )?);
            }
        }
    }
    if let Some(group) = pending.take() {
        out.push(group.lower(ctx));
    }
    Ok(out)
}

/// Optimizer updates lowered as one multi-tensor dispatch.
struct Group<'b> {
    rule: Rule,
    slots: Vec<Slot<'b>>,
    hyper: &'b wgpu::Buffer,
    dead: &'b wgpu::Buffer,
}

impl Group<'_> {
    /// Whether `slot` can join: the same rule, rows and flags, room under the adapter's
    /// limits, the element count within u32, and no buffer bound twice (a binding written
    /// may not alias another).
    fn takes(&self, ctx: &Lower, rule: Rule, slot: &Slot, hyper: &wgpu::Buffer, dead: &wgpu::Buffer) -> bool {
        let total: usize = self.slots.iter().map(|s| s.numel).sum::<usize>() + slot.numel;
        let bound = || self.slots.iter().flat_map(|s| s.buffers.iter());
        self.rule == rule
            && self.hyper == hyper
            && self.dead == dead
            && self.slots.len() < rule.max_tensors(ctx)
            && total < u32::MAX as usize
            && !slot.buffers.iter().any(|b| bound().any(|c| c == b) || *b == hyper || *b == dead)
    }

    fn lower(self, ctx: &Lower) -> Dispatch {
        ops::optim::lower_update(ctx, self.rule, &self.slots, self.hyper, self.dead)
    }
}

/// An optimizer update's rule, tensor buffers, rows and flags (`None` for other updates).
fn optimizer_slot<'b>(
    graph: &Graph,
    u: &Update,
    buf: &impl Fn(TensorId) -> &'b wgpu::Buffer,
) -> Option<(Rule, Slot<'b>, &'b wgpu::Buffer, &'b wgpu::Buffer)> {
    let (rule, param, state, hyper, dead) = match *u {
        Update::Sgd { param, grad, momentum, hyper, dead } => (Rule::Sgd, param, vec![grad, momentum], hyper, dead),
        Update::Adam { param, grad, exp_avg, exp_avg_sq, hyper, dead } => {
            (Rule::Adam, param, vec![grad, exp_avg, exp_avg_sq], hyper, dead)
        }
        _ => return None,
    };
    let shape = graph.shape(param);
    let numel: usize = shape.iter().product();
    let mut buffers = vec![buf(param)];
    buffers.extend(state.into_iter().map(buf));
    Some((rule, Slot { numel, per_model: numel / shape[0], buffers }, buf(hyper), buf(dead)))
}

/// Nodes another node's dispatches compute (see `alloc::bias_folds`, `alloc::pool_folds` and
/// `alloc::forward_pool_folds`).
#[derive(Clone, Copy)]
pub(super) struct Folds {
    /// A weight gradient's bias gradient, which its dispatches also write.
    pub bias: Option<TensorId>,
    /// A convolution weight or input gradient's dy, a max-pooling gradient its kernel computes.
    pub pool: Option<TensorId>,
    /// A convolution's output's max pooling, which its kernel computes.
    pub pooled: Option<TensorId>,
}

/// Whether the convolution node `i` pools its output in its kernel (the pooling
/// `alloc::forward_pool_folds` paired it with).
pub(super) fn forward_pools(ctx: &Lower, graph: &Graph, i: usize) -> bool {
    let node = &graph.nodes()[i];
    let Op::Conv2d { geom, .. } = &node.op else {
        return false;
    };
    let s = ops::conv::Conv { x: ops::Image::of(graph.shape(node.inputs[0])), y: ops::Image::of(&node.shape), geom };
    ops::conv::forward_pools(ctx, &s)
}

/// Whether the weight gradient node `i` (with its bias gradient where `bias`) or input
/// gradient node `i` can compute its dy, the max-pooling gradient `alloc::pool_folds` paired
/// it with, in its kernel (the tiled weight gradient, the input gradient's products).
pub(super) fn pool_folds(ctx: &Lower, graph: &Graph, i: usize, bias: bool) -> bool {
    let node = &graph.nodes()[i];
    let Op::MaxPool2dGrad { geom: pool, .. } = &graph.node(node.inputs[0]).op else {
        return false;
    };
    let y = ops::Image::of(graph.shape(node.inputs[0]));
    match &node.op {
        Op::Conv2dGradWeight { geom } => {
            let s = ops::conv::Conv { x: ops::Image::of(graph.shape(node.inputs[1])), y, geom };
            ops::conv::grad_weight_folds_pool(ctx, &s, bias, pool.kernel)
        }
        Op::Conv2dGradInput { geom } => {
            let s = ops::conv::Conv { x: ops::Image::of(&node.shape), y, geom };
            ops::conv::grad_input_folds_pool(ctx, &s, pool.kernel)
        }
        _ => false,
    }
}

/// The max-pooling gradient a convolution gradient computes its dy from (`folds.pool`).
fn pool_grad<'b>(
    graph: &Graph,
    pool: Option<TensorId>,
    buf: &impl Fn(TensorId) -> &'b wgpu::Buffer,
) -> Result<Option<ops::conv::PoolGrad<'b>>> {
    match pool.map(|k| graph.node(k)) {
        Some(Node { op: Op::MaxPool2dGrad { geom, relu }, inputs, .. }) => {
            Ok(Some(ops::conv::PoolGrad { window: geom.kernel, relu: *relu, dpool: buf(inputs[0]), y: buf(inputs[1]) }))
        }
        Some(other) => Err(Error::Gpu(format!("internal error: a pooling fold pairs a {}", other.op.name()))),
        None => Ok(None),
    }
}

/// The dispatches of `node` (output `out`), computing the `folds` too.
pub(super) fn lower_node<'b>(
    ctx: &Lower,
    graph: &Graph,
    node: &Node,
    out: TensorId,
    folds: Folds,
    buf: &impl Fn(TensorId) -> &'b wgpu::Buffer,
) -> Result<Vec<Dispatch>> {
    let x = &node.inputs;
    let shape = |t: TensorId| graph.shape(t);
    let rows = || ops::loss::Rows {
        g: shape(x[0])[0],
        n: shape(x[0])[1],
        c: shape(x[0])[2],
        logits: buf(x[0]),
        labels: buf(x[1]),
    };
    let last = *node.shape.last().unwrap_or(&1);
    let img = |t: TensorId| ops::Image::of(shape(t));
    let one = |d: Dispatch| Ok(vec![d]);
    match &node.op {
        Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Fill { .. } | Op::Data { .. } | Op::Reshape => {
            Ok(vec![])
        }
        Op::GatherImages { mean, std } => {
            let pixels = node.numel() / (node.shape[0] * node.shape[1]);
            one(ops::data::lower_images(ctx, node.numel(), pixels, *mean, *std, buf(x[0]), buf(x[1]), buf(out)))
        }
        Op::GatherLabels => one(ops::data::lower_labels(ctx, node.numel(), buf(x[0]), buf(x[1]), buf(out))),
        Op::MatMul { trans_a, trans_b, .. } | Op::MatMulReluGrad { trans_a, trans_b } => {
            let (sa, so) = (shape(x[0]), &node.shape);
            let k = if *trans_a { sa[1] } else { sa[2] };
            let epilogue = match node.op {
                Op::MatMul { bias, relu, .. } => {
                    ops::linear::Epilogue { bias: bias.then(|| buf(x[2])), relu, relu_grad_at: None }
                }
                _ => ops::linear::Epilogue { bias: None, relu: false, relu_grad_at: Some(buf(x[2])) },
            };
            one(ops::linear::lower(
                ctx,
                &ops::linear::MatMul {
                    g: so[0],
                    m: so[1],
                    n: so[2],
                    k,
                    trans_a: *trans_a,
                    trans_b: *trans_b,
                    a: buf(x[0]),
                    b: buf(x[1]),
                    epilogue,
                    out: buf(out),
                    a_sums: folds.bias.map(buf),
                },
            )?)
        }
        Op::Unary(f) => ops::activation::lower_unary(ctx, *f, node.numel(), buf(x[0]), buf(out)),
        Op::UnaryGrad(f) => ops::activation::lower_unary_grad(ctx, *f, node.numel(), buf(x[0]), buf(x[1]), buf(out)),
        Op::Softmax { log } => {
            ops::activation::lower_softmax(ctx, node.numel() / last, last, *log, buf(x[0]), buf(out))
        }
        Op::SoftmaxGrad { log } => {
            ops::activation::lower_softmax_grad(ctx, node.numel() / last, last, *log, buf(x[0]), buf(x[1]), buf(out))
        }
        Op::Dropout { p } | Op::DropoutGrad { p } => {
            let g = node.shape[0];
            let label = node.op.name();
            ops::activation::lower_dropout(ctx, label, g, node.numel() / g, *p, buf(x[0]), buf(x[1]), buf(out))
        }
        Op::Add => one(ops::elementwise::lower(ctx, "add", node.numel(), buf(x[0]), Some(buf(x[1])), buf(out))),
        Op::Sum { axes, scale } => ops::reduce::lower_sum(ctx, shape(x[0]), axes, *scale, buf(x[0]), buf(out)),
        Op::Broadcast { axes, scale } => {
            one(ops::reduce::lower_broadcast(ctx, &node.shape, axes, *scale, buf(x[0]), buf(out))?)
        }
        Op::Conv2d { geom, bias, relu } => {
            let s = ops::conv::Conv { x: img(x[0]), y: ops::Image::of(&node.shape), geom };
            let b = if *bias { Some(buf(x[2])) } else { None };
            ops::conv::lower_forward(ctx, &s, buf(x[0]), buf(x[1]), b, *relu, buf(out), folds.pooled.map(&buf))
        }
        Op::Conv2dGradInput { geom } => {
            let s = ops::conv::Conv { x: ops::Image::of(&node.shape), y: img(x[0]), geom };
            let pool = pool_grad(graph, folds.pool, buf)?;
            ops::conv::lower_grad_input(ctx, &s, buf(x[0]), buf(x[1]), buf(out), pool.as_ref())
        }
        Op::Conv2dGradWeight { geom } => {
            let s = ops::conv::Conv { x: img(x[1]), y: img(x[0]), geom };
            let pool = pool_grad(graph, folds.pool, buf)?;
            let bias = folds.bias.map(&buf);
            ops::conv::lower_grad_weight(ctx, &s, buf(x[0]), buf(x[1]), buf(out), bias, pool.as_ref())
        }
        Op::MaxPool2d { geom } => {
            let s = ops::pool::Pool { x: img(x[0]), y: ops::Image::of(&node.shape), geom: Some(geom) };
            ops::pool::lower_max(ctx, &s, buf(x[0]), buf(out))
        }
        Op::MaxPool2dGrad { geom, relu } => {
            let s = ops::pool::Pool { x: img(x[1]), y: img(x[0]), geom: Some(geom) };
            ops::pool::lower_max_grad(ctx, &s, *relu, buf(x[0]), buf(x[1]), buf(out))
        }
        Op::AvgPool2d { geom } => {
            let s = ops::pool::Pool { x: img(x[0]), y: ops::Image::of(&node.shape), geom: Some(geom) };
            ops::pool::lower_avg(ctx, &s, buf(x[0]), buf(out))
        }
        Op::AdaptiveAvgPool2d => {
            let s = ops::pool::Pool { x: img(x[0]), y: ops::Image::of(&node.shape), geom: None };
            ops::pool::lower_avg(ctx, &s, buf(x[0]), buf(out))
        }
        Op::AvgPool2dGrad { geom } => {
            let s = ops::pool::Pool { x: ops::Image::of(&node.shape), y: img(x[0]), geom: Some(geom) };
            ops::pool::lower_avg_grad(ctx, &s, buf(x[0]), buf(out))
        }
        Op::AdaptiveAvgPool2dGrad => {
            let s = ops::pool::Pool { x: ops::Image::of(&node.shape), y: img(x[0]), geom: None };
            ops::pool::lower_avg_grad(ctx, &s, buf(x[0]), buf(out))
        }
        Op::NormStats { kind, eps } => ops::norm::lower_stats(ctx, img(x[0]), *kind, *eps, buf(x[0]), buf(out)),
        Op::RunningStats { eps } => {
            let s = shape(x[0]);
            ops::norm::lower_running_stats(ctx, s[0], s[1], *eps, buf(x[0]), buf(x[1]), buf(out))
        }
        Op::NormApply { kind, affine } => {
            let a = if *affine { Some((buf(x[2]), buf(x[3]))) } else { None };
            ops::norm::lower_apply(ctx, img(x[0]), *kind, buf(x[0]), buf(x[1]), a, buf(out))
        }
        Op::NormGrad { kind, affine, fixed } => {
            let w = if *affine { Some(buf(x[3])) } else { None };
            ops::norm::lower_grad(ctx, img(x[1]), *kind, *fixed, buf(x[0]), buf(x[1]), buf(x[2]), w, buf(out))
        }
        Op::SumsStats { eps, count, shift } => {
            let s = shape(x[0]);
            let (dsum, dsq) = if *shift { (None, None) } else { (Some(buf(x[1])), Some(buf(x[2]))) };
            ops::norm::lower_sums_stats(ctx, s[0], s[1], *count, *eps, buf(x[0]), dsum.zip(dsq), buf(out))
        }
        Op::NormGradSums { count, affine } => {
            let w = if *affine { Some(buf(x[5])) } else { None };
            let (dy, xb, stats, gsum, gdot) = (buf(x[0]), buf(x[1]), buf(x[2]), buf(x[3]), buf(x[4]));
            ops::norm::lower_grad_sums(ctx, img(x[1]), *count, dy, xb, stats, (gsum, gdot), w, buf(out))
        }
        Op::NormWeightGrad { kind } => {
            ops::norm::lower_weight_grad(ctx, img(x[1]), *kind, buf(x[0]), buf(x[1]), buf(x[2]), buf(out))
        }
        Op::CrossEntropy { reduction } => one(ops::loss::lower_forward(ctx, &rows(), *reduction, buf(out))),
        Op::CrossEntropyGrad { reduction } => one(ops::loss::lower_grad(ctx, &rows(), *reduction, buf(x[2]), buf(out))),
        Op::TopK { ks, counts } => one(ops::loss::lower_topk(ctx, &rows(), ks, *counts, buf(out))?),
        Op::Custom(op) => {
            let operands: Vec<(&[usize], &wgpu::Buffer)> = x.iter().map(|&t| (shape(t), buf(t))).collect();
            ops::custom::lower(ctx, op.as_ref(), &operands, &node.shape, buf(out))
        }
    }
}
