//! Micro-batches: when one model's share of a training step would pass the adapter's
//! binding limit (plans already split the G models into chunks, so only the batch N can be
//! too large), the step runs as several micro-batches of the same samples. Each micro-batch
//! adds its gradients, summed loss and correct counts into accumulators (state tensors); an
//! apply plan then takes the mean, guards, updates with the accumulated gradients and clears
//! the accumulators. The gradient is the whole batch's (the per-sample losses are summed and
//! scaled by 1/N), dropout masks are the whole batch's (seed rows carry the micro-batch's
//! element offset), so the results equal the one-pass step up to summation order.
//!
//! BatchNorm in training mode normalises with the statistics of the whole batch, and its
//! gradient needs the whole batch's sums of `dy` and `dy * x_hat`: every micro-batch depends
//! on all the others. Such a model's step runs the micro-batches in phases, each phase over
//! every micro-batch, recomputing what it needs (layer by layer, nothing of one micro-batch
//! has to stay resident for the next):
//! - per BatchNorm2d layer j, in order, two forward phases up to its input: the sum of x per
//!   channel (the mean), then the sums of the deviations `d = x - mean` and `d * d` (the
//!   variance, as `norm_stats` takes it in two passes). Layers before j normalise with the
//!   whole batch's statistics, which the phases before have summed.
//! - backward phases, from the last BatchNorm2d down to the input: phase q runs the whole
//!   forward and the backward down to BatchNorm2d layer q-1's output, summing there `dy`
//!   and `dy * x_hat` (the gradient through layer q-1 needs them) and accumulating the
//!   gradients of the parameters between layers q-1 and q, which are final: every
//!   BatchNorm2d after them has its sums already. The loss and correct counts come from
//!   the first backward phase.
//!
//! The apply plan then also updates the running estimates once from the whole batch's
//! statistics. With L BatchNorm2d layers a step costs 2L partial forward passes and L+1
//! full ones with partial backward passes over the batch: exact (the one-pass results up to
//! summation order) rather than fast.

use super::{DataGraph, Dataset, Head, Normalize};
use crate::autograd;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{Graph, NormKind, Op, Reduction, TensorId};
use crate::nn::{BatchModel, Layer, Mode, ModelSpec};
use crate::plan::{Plan, Update};

/// What a micro-batch pass computes (BatchNorm models; see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Everything: gradients, loss and correct counts (a model without BatchNorm2d).
    Whole,
    /// The sum of BatchNorm2d layer j's input per channel.
    Mean(usize),
    /// The sums of layer j's deviations from that mean and of their squares.
    Deviations(usize),
    /// Forward, and backward down to layer q-1's output (q = 0: to the input).
    Backward(usize),
}

/// A BatchNorm2d layer's whole-batch sums (state tensors `[G, C]`) in one graph.
pub(super) struct BnSums {
    xsum: TensorId,
    dsum: TensorId,
    dsq: TensorId,
    gsum: TensorId,
    gdot: TensorId,
    eps: f32,
    /// Values per channel over the whole batch.
    count: usize,
    /// The layer's name, running-estimate factor and whether it tracks running estimates.
    name: String,
    momentum: Option<f32>,
    track: bool,
}

/// Each BatchNorm2d layer of `spec`, in order: its name, eps, running-estimate factor and
/// whether it tracks running estimates.
pub(super) fn batch_norms(spec: &ModelSpec) -> impl Iterator<Item = (&String, f32, Option<f32>, bool)> {
    spec.layers.iter().filter_map(|l| match l.layer {
        Layer::BatchNorm2d { eps, momentum, track_running_stats, .. } => {
            Some((&l.name, eps, momentum, track_running_stats))
        }
        _ => None,
    })
}

/// The sums of every BatchNorm2d layer of `spec` for a whole batch of `nb` samples.
fn bn_sums(graph: &mut Graph, spec: &ModelSpec, nb: usize) -> Result<Vec<BnSums>> {
    Ok(bn_sums_where(graph, spec, nb, |_| true)?.into_iter().flatten().collect())
}

/// The sums of the BatchNorm2d layers of `spec` whose `track_running_stats` `pick` takes
/// (`None` for the others, one entry per layer), for a whole batch of `nb` samples.
pub(super) fn bn_sums_where(
    graph: &mut Graph,
    spec: &ModelSpec,
    nb: usize,
    pick: fn(bool) -> bool,
) -> Result<Vec<Option<BnSums>>> {
    let mut out = Vec::new();
    for ((name, eps, momentum, track), shape) in batch_norms(spec).zip(spec.batch_norm_inputs()?) {
        if !pick(track) {
            out.push(None);
            continue;
        }
        let c = [shape[0]];
        let mut state = |s: &str| graph.state(&format!("accum.{name}.{s}"), &c);
        let (xsum, dsum, dsq, gsum, gdot) =
            (state("xsum")?, state("dsum")?, state("dsq")?, state("gsum")?, state("gdot")?);
        let count = nb * shape[1..].iter().product::<usize>();
        out.push(Some(BnSums { xsum, dsum, dsq, gsum, gdot, eps, count, name: name.clone(), momentum, track }));
    }
    Ok(out)
}

impl BnSums {
    /// The whole batch's statistics from these sums.
    pub(super) fn stats(&self, graph: &mut Graph) -> Result<TensorId> {
        graph.sums_stats(&self.states(), self.eps, self.count)
    }

    /// The sums' states, in order.
    pub(super) fn states(&self) -> [TensorId; 5] {
        [self.xsum, self.dsum, self.dsq, self.gsum, self.gdot]
    }

    /// Updates that add the sums of the first pass (`deviations` false: sum(x)) or the
    /// second (sum(d), sum(d * d) from the first pass's mean) over `x`, this layer's input.
    pub(super) fn forward_pass(&self, graph: &mut Graph, x: TensorId, deviations: bool) -> Result<Vec<Update>> {
        let acc = |dst, src| Update::Accumulate { dst, src };
        if !deviations {
            return Ok(vec![acc(self.xsum, graph.sum(x, &[1, 3, 4])?)]);
        }
        let shift = graph.sums_stats(&[self.xsum], self.eps, self.count)?;
        let d = graph.norm_apply(x, shift, NormKind::Batch, None)?;
        let dsum = graph.sum(d, &[1, 3, 4])?;
        let dsq = graph.norm_weight_grad(d, x, shift, NormKind::Batch)?;
        Ok(vec![acc(self.dsum, dsum), acc(self.dsq, dsq)])
    }
}

/// The plan of one of several passes that run one after another on one queue: the first
/// (`first` none) is `model`'s, with `data` uploaded into the graph's `(images, labels)`;
/// the others read the dataset and weights from `first` and borrow its temporaries'
/// buffers (so the first should be the largest).
#[allow(clippy::too_many_arguments)]
pub(super) fn pass_plan(
    gpu: &Gpu,
    model: &BatchModel,
    data: &Dataset,
    first: Option<&Plan>,
    graph: &Graph,
    (images, labels): (TensorId, TensorId),
    keep: &[TensorId],
    updates: &[Update],
) -> Result<Plan> {
    let Some(first) = first else {
        let plan = model.plan(gpu, graph, keep, updates)?;
        plan.write_bytes(images, &data.images)?;
        plan.write_bytes(labels, &data.labels)?;
        return Ok(plan);
    };
    Plan::sharing_temporaries(gpu, graph, keep, updates, first)
}

/// The phases of a step for `spec`, in order.
fn phases(spec: &ModelSpec) -> Vec<Phase> {
    let l = batch_norms(spec).count();
    if l == 0 {
        return vec![Phase::Whole];
    }
    let forward = (0..l).flat_map(|j| [Phase::Mean(j), Phase::Deviations(j)]);
    forward.chain((0..=l).rev().map(Phase::Backward)).collect()
}

/// The backward phase whose gradient of parameter `name` is final: the number of
/// BatchNorm2d layers up to and including the parameter's layer.
fn segment(spec: &ModelSpec, name: &str) -> Result<usize> {
    let layer = name.rsplit_once('.').map_or(name, |(l, _)| l);
    let at = spec
        .layers
        .iter()
        .position(|l| l.name == layer)
        .ok_or_else(|| Error::Usage(format!("parameter {name:?} belongs to no layer of the model")))?;
    Ok(spec.layers[..=at].iter().filter(|l| matches!(l.layer, Layer::BatchNorm2d { .. })).count())
}

/// One micro-batch plan (one per phase and distinct micro-batch size).
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
    /// Micro-batches per phase.
    pub micro_batches: usize,
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

/// Phase `phase` over `size` samples per model of a batch of `nb`, accumulating into
/// `accum.*`. Every phase's graph holds every accumulator, so that all plans share them.
fn micro_graph(
    model: &BatchModel,
    data: &Dataset,
    nb: usize,
    size: usize,
    norm: Normalize,
    phase: Phase,
) -> Result<MicroGraph> {
    let spec = model.spec();
    let head = Head { mode: Mode::Train, reduction: Reduction::Sum, ks: &[1] };
    let mut sums = Vec::new();
    let mut bn_stats = |graph: &mut Graph| -> Result<Vec<Option<TensorId>>> {
        if phase == Phase::Whole {
            return Ok(Vec::new());
        }
        sums = bn_sums(graph, spec, nb)?;
        sums.iter().map(|b| b.stats(graph).map(Some)).collect()
    };
    let DataGraph { mut graph, images, labels, indices, built, loss, top: correct } =
        super::data_graph(spec, model.models(), "train", data.n, size, norm, head, &mut bn_stats)?;
    let params = built.params();
    let names = param_names(&graph, &params);
    let mut accums = Vec::new();
    for (name, shape) in &names {
        accums.push(graph.state(&format!("accum.{name}"), shape)?);
    }
    let correct_shape = graph.shape(correct)[1..].to_vec();
    let loss_acc = graph.state("accum.loss", &[])?;
    let correct_acc = graph.state("accum.correct", &correct_shape)?;
    let mut updates = Vec::new();
    let acc = |dst, src| Update::Accumulate { dst, src };
    match phase {
        Phase::Mean(j) => updates.extend(sums[j].forward_pass(&mut graph, built.batch_norms[j].0, false)?),
        Phase::Deviations(j) => updates.extend(sums[j].forward_pass(&mut graph, built.batch_norms[j].0, true)?),
        Phase::Whole | Phase::Backward(_) => {
            // d(mean loss of the whole batch) / d(this micro-batch's summed loss) = 1 / N.
            let seed = graph.fill(&[], 1.0 / nb as f32)?;
            let mut wrt = params.clone();
            // The BatchNorm2d layer whose output's gradient sums this phase takes.
            let below = match phase {
                Phase::Backward(q) if q > 0 => Some(q - 1),
                _ => None,
            };
            wrt.extend(below.map(|j| built.batch_norms[j].2));
            let grads = autograd::grad(&mut graph, loss, Some(seed), &wrt)?;
            for (((name, _), &a), d) in names.iter().zip(&accums).zip(&grads) {
                let d = d.ok_or_else(|| Error::Usage("a parameter does not affect the loss".into()))?;
                let final_here = match phase {
                    Phase::Backward(q) => segment(spec, name)? == q,
                    _ => true,
                };
                if final_here {
                    updates.push(acc(a, d));
                }
            }
            if let Some(j) = below {
                let (x, stats, _) = built.batch_norms[j];
                let dy =
                    grads[params.len()].ok_or_else(|| Error::Usage("a BatchNorm2d does not affect the loss".into()))?;
                let b = &sums[j];
                let gsum = graph.sum(dy, &[1, 3, 4])?;
                let gdot = graph.norm_weight_grad(dy, x, stats, NormKind::Batch)?;
                updates.extend([acc(b.gsum, gsum), acc(b.gdot, gdot)]);
            }
            if matches!(phase, Phase::Whole) || phase == Phase::Backward(sums.len()) {
                updates.extend([acc(loss_acc, loss), acc(correct_acc, correct)]);
            }
        }
    }
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
    let phases = phases(model.spec());
    // The fewest micro-batches whose size fits (graphs only: nothing is allocated); the last
    // phase's graph (the whole forward and backward) is the largest.
    let last_phase = *phases.last().expect("at least one phase");
    let mut found = None;
    for k in 2..=nb {
        let size = nb.div_ceil(k);
        if k > 2 && size == nb.div_ceil(k - 1) {
            continue;
        }
        let m = micro_graph(model, data, nb, size, norm, last_phase)?;
        if crate::plan::one_model_fits(gpu, &m.graph, &[], &m.updates) {
            found = Some(size);
            break;
        }
    }
    let Some(mb) = found else {
        return Err(Error::Usage(
            "a single sample per model passes this adapter's binding limit: this model does not fit the adapter".into(),
        ));
    };
    let last = nb - (nb.div_ceil(mb) - 1) * mb;
    let sizes: Vec<usize> = if last == mb { vec![mb] } else { vec![mb, last] };
    let mut plans: Vec<MicroPlan> = Vec::new();
    // Each phase's first plan; the last phase's (the largest) is made first so that the
    // others can borrow its temporaries.
    let mut at = vec![0; phases.len()];
    let mut first = None;
    for (p, &phase) in phases.iter().enumerate().rev() {
        at[p] = plans.len();
        for &size in &sizes {
            let m = micro_graph(model, data, nb, size, norm, phase)?;
            let largest = plans.first().map(|p| &p.plan);
            let plan = pass_plan(gpu, model, data, largest, &m.graph, (m.images, m.labels), &[], &m.updates)?;
            plans.push(MicroPlan {
                plan,
                indices: m.indices,
                dropout_seeds: m.dropout_seeds,
                dropout_elems: m.dropout_elems,
                size,
            });
            first.get_or_insert((m.params, m.correct_shape));
        }
    }
    let micro_batches = nb.div_ceil(mb);
    let passes =
        at.iter().flat_map(|&a| (0..micro_batches).map(move |i| (a + usize::from(i * mb + mb > nb), i * mb))).collect();
    let (params, correct_shape) = first.expect("at least one phase");

    // The apply step: parameters and accumulators under the micro plans' names.
    let mut graph = Graph::new(model.models());
    let mut pairs = Vec::new();
    let mut clear = Vec::new();
    // BatchNorm2d: the running estimates from the whole batch's statistics, once per step.
    let sums = if phases[0] == Phase::Whole { Vec::new() } else { bn_sums(&mut graph, model.spec(), nb)? };
    for b in &sums {
        if b.track {
            let stats = b.stats(&mut graph)?;
            let c = graph.shape(b.xsum)[1];
            let name = &b.name;
            let mean = graph.state(&format!("{name}.running_mean"), &[c])?;
            let var = graph.state(&format!("{name}.running_var"), &[c])?;
            let count = graph.state(&format!("{name}.num_batches_tracked"), &[1])?;
            clear.push(Update::BatchNormRunning { stats, mean, var, count, momentum: b.momentum });
        }
        clear.extend(b.states().map(|dst| Update::Zero { dst }));
    }
    for (name, shape) in &params {
        let p = graph.param(name, shape)?;
        let acc = graph.state(&format!("accum.{name}"), shape)?;
        pairs.push((p, acc));
        clear.push(Update::Zero { dst: acc });
    }
    let loss_acc = graph.state("accum.loss", &[])?;
    let correct_acc = graph.state("accum.correct", &correct_shape)?;
    let g = model.models();
    let loss = graph.broadcast(loss_acc, &[g], &[], 1.0 / nb as f32)?;
    let mut shape = vec![g];
    shape.extend_from_slice(&correct_shape);
    let correct = graph.broadcast(correct_acc, &shape, &[], 1.0)?;
    clear.push(Update::Zero { dst: loss_acc });
    clear.push(Update::Zero { dst: correct_acc });
    Ok((Micro { plans, passes, micro_batches }, Apply { graph, params: pairs, loss, correct, clear }))
}
