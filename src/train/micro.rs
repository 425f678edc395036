//! Micro-batches: when one model's share of a training step would pass the adapter's
//! binding limit (plans already split the G models into chunks, so only the batch N can be
//! too large), the step runs as several micro-batches of the same samples. Each micro-batch
//! adds its gradients, summed loss and correct counts into accumulators (state tensors); an
//! apply plan then takes the mean, guards, updates with the accumulated gradients and clears
//! the accumulators. The gradient is the whole batch's (the per-sample losses are summed and
//! scaled by 1/N), dropout masks are the whole batch's (seed rows carry the micro-batch's
//! element offset), so the results equal the one-pass step up to summation order. BatchNorm
//! in training mode normalises with the statistics of the batch it sees, so a model with
//! BatchNorm cannot split its batch: that is an error naming the batch size that fits.

use super::{data_graph, DataGraph, Dataset, Head, Normalize};
use crate::autograd;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{Graph, Op, Reduction, TensorId};
use crate::nn::{BatchModel, Layer, Mode};
use crate::plan::{Plan, Update};

/// One micro-batch plan (one per distinct micro-batch size).
pub(super) struct MicroPlan {
    pub plan: Plan,
    pub indices: TensorId,
    pub dropout_seeds: Vec<TensorId>,
    pub dropout_elems: Vec<usize>,
    pub size: usize,
}

/// The micro-batch plans and the order they run in: `(plan index, first sample)`.
pub(super) struct Micro {
    pub plans: Vec<MicroPlan>,
    pub passes: Vec<(usize, usize)>,
}

/// Parameters of the model by name and per-model shape, in the order `params` lists them.
fn param_names(graph: &Graph, params: &[TensorId]) -> Vec<(String, Vec<usize>)> {
    params
        .iter()
        .map(|&p| match &graph.node(p).op {
            Op::Param { name } => (name.clone(), graph.shape(p)[1..].to_vec()),
            _ => unreachable!("built.params() lists parameters"),
        })
        .collect()
}

struct MicroGraph {
    graph: Graph,
    images: TensorId,
    labels: TensorId,
    indices: TensorId,
    updates: Vec<Update>,
    dropout_seeds: Vec<TensorId>,
    dropout_elems: Vec<usize>,
    params: Vec<(String, Vec<usize>)>,
    correct_shape: Vec<usize>,
}

/// Forward and backward over `size` samples per model, accumulating into `accum.*`.
fn micro_graph(model: &BatchModel, data: &Dataset, nb: usize, size: usize, norm: Normalize) -> Result<MicroGraph> {
    let head = Head { mode: Mode::Train, reduction: Reduction::Sum, ks: &[1] };
    let DataGraph { mut graph, images, labels, indices, built, loss, top: correct } =
        data_graph(model.spec(), model.models(), "train", data.n, size, norm, head)?;
    // d(mean loss of the whole batch) / d(this micro-batch's summed loss) = 1 / N.
    let seed = graph.fill(&[], 1.0 / nb as f32)?;
    let params = built.params();
    let grads = autograd::grad(&mut graph, loss, Some(seed), &params)?;
    let names = param_names(&graph, &params);
    let mut updates = Vec::new();
    for ((name, shape), d) in names.iter().zip(grads) {
        let d = d.ok_or_else(|| Error::Usage("a parameter does not affect the loss".into()))?;
        let acc = graph.state(&format!("accum.{name}"), shape)?;
        updates.push(Update::Accumulate { dst: acc, src: d });
    }
    let correct_shape = graph.shape(correct)[1..].to_vec();
    let loss_acc = graph.state("accum.loss", &[])?;
    let correct_acc = graph.state("accum.correct", &correct_shape)?;
    updates.push(Update::Accumulate { dst: loss_acc, src: loss });
    updates.push(Update::Accumulate { dst: correct_acc, src: correct });
    Ok(MicroGraph {
        graph,
        images,
        labels,
        indices,
        updates,
        dropout_seeds: built.dropout_seeds,
        dropout_elems: built.dropout_sample_elems,
        params: names,
        correct_shape,
    })
}

/// What the trainer needs from the apply plan.
pub(super) struct Apply {
    pub graph: Graph,
    pub params: Vec<(TensorId, TensorId)>,
    pub loss: TensorId,
    pub correct: TensorId,
    pub clear: Vec<Update>,
}

/// The step's micro-batch plans for `nb` samples per model (one pass does not fit), with the
/// graph of the apply step (parameters paired with their accumulated gradients).
pub(super) fn plan(
    gpu: &Gpu,
    model: &BatchModel,
    data: &Dataset,
    nb: usize,
    norm: Normalize,
) -> Result<(Micro, Apply)> {
    if model.spec().layers.iter().any(|l| matches!(l.layer, Layer::BatchNorm2d { .. })) {
        return Err(Error::Usage(format!(
            "a batch of {nb} samples per model passes this adapter's binding limit, and a model with BatchNorm cannot \
             split its batch (the batch statistics would change): use a smaller batch"
        )));
    }
    // The fewest micro-batches whose size fits (graphs only: nothing is allocated).
    let mut found = None;
    for k in 2..=nb {
        let size = nb.div_ceil(k);
        if k > 2 && size == nb.div_ceil(k - 1) {
            continue;
        }
        let m = micro_graph(model, data, nb, size, norm)?;
        if crate::plan::one_model_fits(gpu, &m.graph, &[], &m.updates) {
            found = Some((size, m));
            break;
        }
    }
    let Some((mb, first)) = found else {
        return Err(Error::Usage(
            "a single sample per model passes this adapter's binding limit: this model does not fit the adapter".into(),
        ));
    };
    let last = nb - (nb.div_ceil(mb) - 1) * mb;
    let plan = model.plan(gpu, &first.graph, &[], &first.updates)?;
    plan.write_bytes(first.images, &data.images)?;
    plan.write_bytes(first.labels, &data.labels)?;
    let mut plans = vec![MicroPlan {
        plan,
        indices: first.indices,
        dropout_seeds: first.dropout_seeds,
        dropout_elems: first.dropout_elems,
        size: mb,
    }];
    if last != mb {
        let m = micro_graph(model, data, nb, last, norm)?;
        let plan = Plan::sharing(gpu, &m.graph, &[], &m.updates, &plans[0].plan)?;
        plans.push(MicroPlan {
            plan,
            indices: m.indices,
            dropout_seeds: m.dropout_seeds,
            dropout_elems: m.dropout_elems,
            size: last,
        });
    }
    let passes = (0..nb.div_ceil(mb)).map(|i| (usize::from(i * mb + mb > nb), i * mb)).collect();

    // The apply step: parameters and accumulators under the micro plans' names.
    let mut graph = Graph::new(model.models());
    let mut params = Vec::new();
    let mut clear = Vec::new();
    for (name, shape) in &first.params {
        let p = graph.param(name, shape)?;
        let acc = graph.state(&format!("accum.{name}"), shape)?;
        params.push((p, acc));
        clear.push(Update::Zero { dst: acc });
    }
    let loss_acc = graph.state("accum.loss", &[])?;
    let correct_acc = graph.state("accum.correct", &first.correct_shape)?;
    let g = model.models();
    let loss = graph.broadcast(loss_acc, &[g], &[], 1.0 / nb as f32)?;
    let mut shape = vec![g];
    shape.extend_from_slice(&first.correct_shape);
    let correct = graph.broadcast(correct_acc, &shape, &[], 1.0)?;
    clear.push(Update::Zero { dst: loss_acc });
    clear.push(Update::Zero { dst: correct_acc });
    Ok((Micro { plans, passes }, Apply { graph, params, loss, correct, clear }))
}
