//! Ensembles: per sample the mean of the members' class probabilities (the softmax of each
//! model's output), scored as one classifier. Every kernel stays within its model; the
//! members' probabilities come back chunk by chunk and are averaged on the host, the one
//! computation that mixes models.

use super::{data_graph, own_statistics, DataGraph, Dataset, Head, Normalize};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{Reduction, TensorId};
use crate::nn::{BatchModel, Mode};
use crate::plan::Plan;

/// How an ensemble of some of a batch's models classifies a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct EnsembleEvaluation {
    /// Samples evaluated.
    pub samples: usize,
    /// The models averaged (indices into the batch, ascending).
    pub members: Vec<usize>,
    /// Samples whose label has the ensemble's highest mean probability.
    pub top1: u64,
    /// Samples whose label is among the ensemble's five highest (ties counted in the label's
    /// favour).
    pub top5: u64,
    /// Mean negative log of the ensemble's probability of the label.
    pub loss: f64,
}

impl EnsembleEvaluation {
    /// Top-1 accuracy.
    pub fn top1_frac(&self) -> f64 {
        self.top1 as f64 / self.samples.max(1) as f64
    }

    /// Top-5 accuracy.
    pub fn top5_frac(&self) -> f64 {
        self.top5 as f64 / self.samples.max(1) as f64
    }
}

/// Scores the ensemble of `members` (model indices of `model`) on every sample of `data`, in
/// chunks of up to `batch` samples per model (fewer where one model's chunk would pass the
/// adapter's binding limit). A BatchNorm2d without running estimates normalises with each
/// chunk's statistics, as in [`evaluate`](super::evaluate) with the same `batch`; such a net
/// whose chunk does not fit is an error (give a smaller `batch`).
pub async fn evaluate_ensemble(
    gpu: &Gpu,
    model: &BatchModel,
    data: &Dataset,
    batch: usize,
    norm: Normalize,
    members: &[usize],
) -> Result<EnsembleEvaluation> {
    evaluate_ensemble_sharded(&[(gpu, model)], data, batch, norm, members).await
}

/// [`evaluate_ensemble`] over the shards of one batch (as [`BatchModel::sharded`] makes
/// them, each on its device); `members` are global model indices.
pub async fn evaluate_ensemble_sharded(
    shards: &[(&Gpu, &BatchModel)],
    data: &Dataset,
    batch: usize,
    norm: Normalize,
    members: &[usize],
) -> Result<EnsembleEvaluation> {
    let Some(&(_, first_model)) = shards.first() else {
        return Err(Error::Usage("an ensemble needs at least one model batch".into()));
    };
    let spec = first_model.spec();
    let g = super::shard::check_slices(shards.iter().map(|&(_, m)| m))?;
    let mut members = members.to_vec();
    members.sort_unstable();
    members.dedup();
    if members.is_empty() {
        return Err(Error::Usage("an ensemble needs at least one member".into()));
    }
    if let Some(&m) = members.iter().find(|&&m| m >= g) {
        return Err(Error::Usage(format!("ensemble member {m} does not exist: the batch has {g} models")));
    }
    if batch == 0 {
        return Err(Error::Usage("evaluation batch must be at least 1".into()));
    }
    data.check(first_model)?;
    let make = |model: &BatchModel, size: usize| -> Result<(DataGraph, TensorId)> {
        let head = Head { mode: Mode::Eval, reduction: Reduction::Sum, ks: &[1] };
        let mut d = data_graph(spec, model.models(), "ensemble", data.n, size, norm, head, &mut own_statistics)?;
        let probs = d.graph.softmax(d.built.output, false)?;
        Ok((d, probs))
    };
    // One chunk size for every shard, so that their chunks hold the same samples.
    let wanted = batch.min(data.n);
    let mut size = wanted;
    'fit: while size > 1 {
        for &(gpu, model) in shards {
            let (d, probs) = make(model, size)?;
            if !crate::plan::one_model_fits(gpu, &d.graph, &[probs], &[]) {
                size = size.div_ceil(2);
                continue 'fit;
            }
        }
        break;
    }
    if size < wanted && spec.evaluates_with_batch_statistics() {
        return Err(Error::Usage(format!(
            "ensemble evaluation: a chunk of {wanted} samples does not fit the adapter's bindings and the model \
             normalises with each chunk's statistics; give an evaluation batch of at most {size}"
        )));
    }
    let (full, rest) = (data.n / size, data.n % size);
    let chunks: Vec<(usize, usize, usize)> =
        [(size, full, 0), (rest, usize::from(rest > 0), full * size)].into_iter().filter(|c| c.1 > 0).collect();
    // Per shard, per chunk size: (plan, indices, probs).
    let mut plans: Vec<Vec<(Plan, TensorId, TensorId)>> = Vec::new();
    for &(gpu, model) in shards {
        let mut own: Vec<(Plan, TensorId, TensorId)> = Vec::new();
        for &(chunk, _, _) in &chunks {
            let (d, probs) = make(model, chunk)?;
            let plan = match own.first() {
                // The remainder's plan reads the dataset the first plan uploaded.
                Some((first, ..)) => Plan::sharing(gpu, &d.graph, &[probs], &[], first)?,
                None => {
                    let plan = model.plan(gpu, &d.graph, &[probs], &[])?;
                    plan.write_bytes(d.images, &data.images)?;
                    plan.write_bytes(d.labels, &data.labels)?;
                    plan
                }
            };
            own.push((plan, d.indices, probs));
        }
        plans.push(own);
    }
    let classes = spec.shapes()?.last().and_then(|s| s.last().copied()).unwrap_or(0);
    let mut ev = EnsembleEvaluation { samples: data.n, members, top1: 0, top5: 0, loss: 0.0 };
    for (k, &(chunk, count, start)) in chunks.iter().enumerate() {
        for c in 0..count {
            let first = start + c * chunk;
            // Every shard's chunk is submitted before any is read back.
            for (&(_, model), own) in shards.iter().zip(&plans) {
                let (plan, indices, _) = &own[k];
                let idx: Vec<u32> =
                    (0..model.models()).flat_map(|_| (first..first + chunk).map(|i| i as u32)).collect();
                plan.write_u32(*indices, &idx)?;
                plan.run()?;
            }
            let mut sum = vec![0f64; chunk * classes];
            for (&(_, model), own) in shards.iter().zip(&plans) {
                let p = own[k].0.read(own[k].2).await?;
                let local =
                    ev.members.iter().filter_map(|&m| m.checked_sub(model.first())).filter(|&m| m < model.models());
                for m in local {
                    for (v, &x) in sum.iter_mut().zip(&p[m * chunk * classes..(m + 1) * chunk * classes]) {
                        *v += x as f64;
                    }
                }
            }
            for (i, mean) in sum.chunks_exact(classes).enumerate() {
                let label = data.labels[first + i] as usize;
                let own = mean[label];
                let above = mean.iter().filter(|&&v| v > own).count();
                ev.top1 += u64::from(above == 0);
                ev.top5 += u64::from(above < 5);
                ev.loss -= (own / ev.members.len() as f64).max(f64::MIN_POSITIVE).ln();
            }
        }
    }
    ev.loss /= data.n.max(1) as f64;
    Ok(ev)
}
