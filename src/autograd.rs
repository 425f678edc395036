//! Reverse-mode differentiation as a graph transform.
//!
//! [`grad`] walks the forward graph once, from the loss back to the leaves, and for each
//! node that received a gradient appends the nodes of its vector-Jacobian product (one
//! `match` over [`Op`], in the style of candle). Gradients only flow into tensors that
//! require them (that depend on a parameter), and contributions to one tensor are summed.

use crate::error::{Error, Result};
use crate::graph::{Graph, Op, TensorId, Unary};

/// Appends the backward pass of `loss` to `graph` and returns, for each tensor of `wrt`,
/// its gradient (`None` where `loss` does not depend on it).
///
/// `loss` may have any shape; its gradient seed is `seed` (same shape) or, if `None`, all
/// ones. With a `[G]` per-model loss and the default seed, model g receives the gradient of
/// its own loss: models never mix. Seeding with a one-hot vector backpropagates from one
/// model only (torchmb's independence test).
pub fn grad(
    graph: &mut Graph,
    loss: TensorId,
    seed: Option<TensorId>,
    wrt: &[TensorId],
) -> Result<Vec<Option<TensorId>>> {
    let loss_shape = graph.shape(loss).to_vec();
    let seed = match seed {
        Some(s) => {
            if graph.shape(s) != loss_shape.as_slice() {
                return Err(Error::Shape(format!(
                    "grad: seed has shape {:?}, loss has shape {:?}",
                    graph.shape(s),
                    loss_shape
                )));
            }
            s
        }
        None => graph.fill(&loss_shape[1..], 1.0)?,
    };
    let n_forward = loss.index() + 1;
    let mut grads: Vec<Option<TensorId>> = vec![None; n_forward];
    grads[loss.index()] = Some(seed);

    for i in (0..n_forward).rev() {
        let Some(dy) = grads[i] else { continue };
        let node = graph.nodes()[i].clone();
        if !node.requires_grad {
            continue;
        }
        let y = TensorId(i);
        let x = &node.inputs;
        let mut contributions: Vec<(TensorId, TensorId)> = Vec::new();
        match &node.op {
            Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Fill { .. } | Op::Data { .. } => {}
            Op::GatherImages { .. } | Op::GatherLabels => {}
            Op::MatMul { trans_a, trans_b, bias, relu } => {
                let (a, b, ta, tb) = (x[0], x[1], *trans_a, *trans_b);
                // Through the fused relu first (its derivative at the output), in the GEMM
                // that produced dy where it can.
                let dy = if *relu { relu_grad(graph, dy, y)? } else { dy };
                if graph.node(a).requires_grad {
                    let da = if ta {
                        graph.matmul(b, dy, None, tb, true)?
                    } else {
                        graph.matmul(dy, b, None, false, !tb)?
                    };
                    contributions.push((a, da));
                }
                if graph.node(b).requires_grad {
                    let db = if tb {
                        graph.matmul(dy, a, None, true, ta)?
                    } else {
                        graph.matmul(a, dy, None, !ta, false)?
                    };
                    contributions.push((b, db));
                }
                if *bias && graph.node(x[2]).requires_grad {
                    let dbias = graph.sum(dy, &[1])?;
                    contributions.push((x[2], dbias));
                }
            }
            Op::Unary(f) => contributions.push((x[0], graph.unary_grad(*f, dy, x[0])?)),
            Op::Softmax { log } => contributions.push((x[0], graph.softmax_grad(dy, y, *log)?)),
            Op::Dropout { p } => contributions.push((x[0], graph.dropout_grad(dy, x[1], *p)?)),
            Op::Conv2d { geom, bias, relu } => {
                let (xs, ws) = (graph.shape(x[0]).to_vec(), graph.shape(x[1]).to_vec());
                // Through the fused relu first: its derivative at the output (y > 0 exactly
                // where the pre-activation is). When y's gradient is a max-pooling gradient
                // over y, the mask joins that kernel instead (the plain node is then unused).
                let dy = if !*relu {
                    dy
                } else {
                    match graph.node(dy).op {
                        Op::MaxPool2dGrad { geom: pg, relu: false } if graph.node(dy).inputs[1] == y => {
                            let dpool = graph.node(dy).inputs[0];
                            graph.maxpool2d_relu_grad(dpool, y, pg)?
                        }
                        _ => graph.unary_grad(Unary::Relu, dy, y)?,
                    }
                };
                if graph.node(x[0]).requires_grad {
                    contributions.push((x[0], graph.conv2d_grad_input(dy, x[1], &xs, *geom)?));
                }
                if graph.node(x[1]).requires_grad {
                    contributions.push((x[1], graph.conv2d_grad_weight(dy, x[0], &ws, *geom)?));
                }
                if *bias && graph.node(x[2]).requires_grad {
                    contributions.push((x[2], graph.sum(dy, &[1, 3, 4])?));
                }
            }
            Op::MaxPool2d { geom } => contributions.push((x[0], graph.maxpool2d_grad(dy, x[0], *geom)?)),
            Op::AvgPool2d { geom } => {
                let xs = graph.shape(x[0]).to_vec();
                contributions.push((x[0], graph.avgpool2d_grad(dy, &xs, *geom)?));
            }
            Op::AdaptiveAvgPool2d => {
                let xs = graph.shape(x[0]).to_vec();
                contributions.push((x[0], graph.adaptive_avgpool2d_grad(dy, &xs)?));
            }
            // Statistics are differentiated through by the NormApply that uses them.
            Op::NormStats { .. } | Op::RunningStats { .. } | Op::SumsStats { .. } => {}
            Op::NormApply { kind, affine } => {
                let (xt, stats) = (x[0], x[1]);
                // Batch statistics of this very input make the gradient the full one;
                // running estimates are constants.
                let fixed = !matches!(graph.node(stats).op, Op::NormStats { .. } if graph.node(stats).inputs[0] == xt);
                let weight = if *affine { Some(x[2]) } else { None };
                if graph.node(xt).requires_grad {
                    let d = match graph.node(stats).op {
                        // Statistics of a batch summed in parts carry the batch's gradient sums.
                        Op::SumsStats { count, shift: false, .. } => {
                            let s = graph.node(stats).inputs.clone();
                            graph.norm_grad_sums(dy, xt, stats, s[3], s[4], weight, count)?
                        }
                        _ => graph.norm_grad(dy, xt, stats, weight, *kind, fixed)?,
                    };
                    contributions.push((xt, d));
                }
                if *affine {
                    if graph.node(x[2]).requires_grad {
                        contributions.push((x[2], graph.norm_weight_grad(dy, xt, stats, *kind)?));
                    }
                    if graph.node(x[3]).requires_grad {
                        contributions.push((x[3], graph.sum(dy, &[1, 3, 4])?));
                    }
                }
            }
            Op::Add => {
                contributions.push((x[0], dy));
                contributions.push((x[1], dy));
            }
            Op::Reshape => {
                let s = graph.shape(x[0]).to_vec();
                contributions.push((x[0], graph.reshape(dy, &s[1..])?));
            }
            Op::Sum { axes, scale } => {
                let s = graph.shape(x[0]).to_vec();
                contributions.push((x[0], graph.broadcast(dy, &s, axes, *scale)?));
            }
            Op::Broadcast { axes, scale } => {
                contributions.push((x[0], graph.sum_scaled(dy, axes, *scale)?));
            }
            Op::CrossEntropy { reduction } => {
                let d = graph.cross_entropy_grad(x[0], x[1], dy, *reduction)?;
                contributions.push((x[0], d));
            }
            Op::Custom(op) => {
                let d = op.backward(graph, x, y, dy)?;
                if d.len() != x.len() {
                    return Err(Error::Usage(format!(
                        "grad: custom op `{}` returned {} gradients for {} inputs",
                        op.name(),
                        d.len(),
                        x.len()
                    )));
                }
                for (i, (&xi, di)) in x.iter().zip(d).enumerate() {
                    let Some(di) = di else { continue };
                    if graph.shape(di) != graph.shape(xi) {
                        return Err(Error::Shape(format!(
                            "grad: custom op `{}`: the gradient of input {i} has shape {:?}, the input {:?}",
                            op.name(),
                            graph.shape(di),
                            graph.shape(xi)
                        )));
                    }
                    contributions.push((xi, di));
                }
            }
            op @ (Op::UnaryGrad(_)
            | Op::MatMulReluGrad { .. }
            | Op::SoftmaxGrad { .. }
            | Op::DropoutGrad { .. }
            | Op::Conv2dGradInput { .. }
            | Op::Conv2dGradWeight { .. }
            | Op::MaxPool2dGrad { .. }
            | Op::AvgPool2dGrad { .. }
            | Op::AdaptiveAvgPool2dGrad
            | Op::NormGrad { .. }
            | Op::NormWeightGrad { .. }
            | Op::NormGradSums { .. }
            | Op::CrossEntropyGrad { .. }
            | Op::TopK { .. }) => {
                return Err(Error::Usage(format!("grad: op {} is not differentiable", op.name())));
            }
        }
        for (target, d) in contributions {
            if !graph.node(target).requires_grad {
                continue;
            }
            grads[target.index()] = Some(match grads[target.index()] {
                None => d,
                Some(prev) => graph.add(prev, d)?,
            });
        }
    }
    Ok(wrt.iter().map(|t| if t.index() < n_forward { grads[t.index()] } else { None }).collect())
}

/// `relu'(y) * dy`: where `dy` is a plain product (seen through reshapes) shaped like `y`,
/// one GEMM with relu's derivative in its epilogue (the plain product is then left unused),
/// otherwise the elementwise gradient.
fn relu_grad(graph: &mut Graph, dy: TensorId, y: TensorId) -> Result<TensorId> {
    let mut src = dy;
    while graph.node(src).op == Op::Reshape {
        src = graph.node(src).inputs[0];
    }
    let node = graph.node(src);
    if let Op::MatMul { trans_a, trans_b, bias: false, relu: false } = node.op {
        if graph.shape(src) == graph.shape(y) {
            let (a, b) = (node.inputs[0], node.inputs[1]);
            return graph.matmul_relu_grad(a, b, trans_a, trans_b, y);
        }
    }
    graph.unary_grad(Unary::Relu, dy, y)
}
