//! Evaluation compiled once and run many times: the evaluation set is uploaded once, every
//! chunk's per-model counts and loss are copied into a log on the GPU, and the log comes
//! back in one readback (per 256 chunks), so an evaluation costs one map, not two per chunk.

use std::collections::HashMap;

use super::{data_graph, micro, own_statistics, DataGraph, Dataset, Evaluation, Head, Normalize};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{Graph, Reduction, TensorId};
use crate::nn::{BatchModel, Mode};
use crate::plan::{Plan, Readback, Update};

/// Chunks whose results one readback carries at most.
const CHUNKS_PER_READBACK: usize = 256;

/// One compiled pass: `size` samples per model from the first sample its run gives.
struct Part {
    plan: Plan,
    /// `[G, size]` sample indices (none: a pass over no samples, clearing sums).
    indices: Option<TensorId>,
    /// Summed loss and top-k counts, logged per run (none: a pass that only sums statistics).
    out: Option<(TensorId, TensorId)>,
    size: usize,
}

/// A pass to run: the part and its first sample.
struct Run {
    part: usize,
    first: usize,
}

/// What an evaluation pass computes where a BatchNorm2d without running estimates must see
/// the statistics of a whole evaluation batch that does not fit one pass (the phases of
/// `micro`'s training, forward only).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    /// Zero the sums.
    Clear,
    /// BatchNorm2d layer j's sum(x), or (`true`) its deviations' sums.
    Sums(usize, bool),
    /// Loss and top-k counts.
    Output,
}

/// A compiled evaluation of a [`BatchModel`] on a fixed dataset (per-model top-1/top-5 and
/// mean loss over every sample, the same samples for all models).
pub struct Evaluator {
    g: usize,
    n: usize,
    k: usize,
    parts: Vec<Part>,
    runs: Vec<Run>,
    log: wgpu::Buffer,
    log_chunks: usize,
    readback: Readback,
}

impl Evaluator {
    /// Uploads `data` and compiles the evaluation of `model` in batches of `batch` samples
    /// per model (plus one plan for the remainder); fewer per pass where one model's batch
    /// would pass the adapter's binding limit (in phases that sum the whole evaluation
    /// batch's statistics first where a BatchNorm2d has no running estimates, so that the
    /// results do not depend on the adapter).
    pub fn new(gpu: &Gpu, model: &BatchModel, data: &Dataset, batch: usize, norm: Normalize) -> Result<Evaluator> {
        data.check(model)?;
        if batch == 0 {
            return Err(Error::Usage("evaluation batch must be at least 1".into()));
        }
        let g = model.models();
        let ks: Vec<u32> = if data.classes >= 5 { vec![1, 5] } else { vec![1, data.classes as u32] };
        // Build the evaluation graph for `size` samples per model.
        let make = |size: usize| {
            let head = Head { mode: Mode::Eval, reduction: Reduction::Sum, ks: &ks };
            data_graph(model.spec(), g, "eval", data.n, size, norm, head, &mut own_statistics)
        };
        // Plans split the models into chunks that fit the adapter's bindings; when even one
        // model's batch does not fit, evaluate fewer samples per pass (the results are the
        // same: evaluation uses running estimates, not batch statistics).
        let wanted = batch.min(data.n);
        let mut batch = wanted;
        while batch > 1 {
            let d = make(batch)?;
            if crate::plan::one_model_fits(gpu, &d.graph, &[d.loss, d.top], &[]) {
                break;
            }
            batch = batch.div_ceil(2);
        }
        let mut parts: Vec<Part> = Vec::new();
        let mut runs = Vec::new();
        // A BatchNorm2d without running estimates normalises with each evaluation batch's
        // statistics: such a batch that does not fit one pass runs in phases.
        if batch < wanted && model.spec().evaluates_with_batch_statistics() {
            // Every evaluation batch of `wanted` (and the remainder) in passes of `batch`.
            let spec = model.spec();
            // Plans by (evaluation batch, pass size, phase).
            let mut made: HashMap<(usize, usize, Phase), usize> = HashMap::new();
            let mut plan_for = |parts: &mut Vec<Part>, whole: usize, size: usize, phase: Phase| -> Result<usize> {
                if let Some(&p) = made.get(&(whole, size, phase)) {
                    return Ok(p);
                }
                let head = Head { mode: Mode::Eval, reduction: Reduction::Sum, ks: &ks };
                let mut sums = Vec::new();
                let mut bn = |graph: &mut Graph| -> Result<Vec<Option<TensorId>>> {
                    sums = micro::bn_sums_where(graph, spec, whole, |track| !track)?;
                    sums.iter().map(|s| s.as_ref().map(|s| s.stats(graph)).transpose()).collect()
                };
                let DataGraph { mut graph, images, labels, indices, built, loss, top } =
                    data_graph(spec, g, "eval", data.n, size.max(1), norm, head, &mut bn)?;
                let (indices, keep, updates) = match phase {
                    Phase::Clear => {
                        let zero = sums.iter().flatten().flat_map(|s| s.states()).map(|dst| Update::Zero { dst });
                        (None, vec![], zero.collect())
                    }
                    Phase::Sums(j, deviations) => {
                        let s = sums[j].as_ref().expect("a layer with batch statistics");
                        (Some(indices), vec![], s.forward_pass(&mut graph, built.batch_norms[j].0, deviations)?)
                    }
                    Phase::Output => (Some(indices), vec![loss, top], vec![]),
                };
                // The largest pass's plan, made first, lends the others its temporaries.
                let first = parts.first().map(|p| &p.plan);
                let plan = micro::pass_plan(gpu, model, data, first, &graph, (images, labels), &keep, &updates)?;
                let out = (phase == Phase::Output).then_some((loss, top));
                parts.push(Part { plan, indices, out, size });
                made.insert((whole, size, phase), parts.len() - 1);
                Ok(parts.len() - 1)
            };
            plan_for(&mut parts, wanted, batch, Phase::Output)?;
            let clear = plan_for(&mut parts, wanted, 0, Phase::Clear)?;
            // Two phases per BatchNorm2d without running estimates (the layers the sums are for).
            let mut phases: Vec<Phase> = micro::batch_norms(spec)
                .enumerate()
                .filter(|&(_, (_, _, _, track))| !track)
                .flat_map(|(j, _)| [Phase::Sums(j, false), Phase::Sums(j, true)])
                .collect();
            phases.push(Phase::Output);
            let (full, rest) = (data.n / wanted, data.n % wanted);
            for (whole, count, start) in [(wanted, full, 0), (rest, usize::from(rest > 0), full * wanted)] {
                if count == 0 {
                    continue;
                }
                // This evaluation batch's passes: `batch` samples, the last fewer.
                let last = whole - (whole.div_ceil(batch) - 1) * batch;
                let mut plans = Vec::new();
                for &phase in &phases {
                    let full_size = plan_for(&mut parts, whole, batch.min(whole), phase)?;
                    let last_size = plan_for(&mut parts, whole, last, phase)?;
                    plans.push((full_size, last_size));
                }
                for e in 0..count {
                    let first = start + e * whole;
                    runs.push(Run { part: clear, first });
                    for &(full_size, last_size) in &plans {
                        for i in 0..whole.div_ceil(batch) {
                            let part = if (i + 1) * batch > whole { last_size } else { full_size };
                            runs.push(Run { part, first: first + i * batch });
                        }
                    }
                }
            }
        } else {
            let (full, rest) = (data.n / batch, data.n % batch);
            for (size, chunks, start) in [(batch, full, 0), (rest, usize::from(rest > 0), full * batch)] {
                if chunks == 0 {
                    continue;
                }
                let DataGraph { graph, images, labels, indices, loss, top, .. } = make(size)?;
                let plan = match parts.first() {
                    // The remainder plan reads the dataset the first plan uploaded.
                    Some(first) => Plan::sharing(gpu, &graph, &[loss, top], &[], &first.plan)?,
                    None => {
                        let plan = model.plan(gpu, &graph, &[loss, top], &[])?;
                        plan.write_bytes(images, &data.images)?;
                        plan.write_bytes(labels, &data.labels)?;
                        plan
                    }
                };
                runs.extend((0..chunks).map(|c| Run { part: parts.len(), first: start + c * size }));
                parts.push(Part { plan, indices: Some(indices), out: Some((loss, top)), size });
            }
        }
        let k = ks.len();
        let total = runs.iter().filter(|r| parts[r.part].out.is_some()).count();
        let log_chunks = total.min(CHUNKS_PER_READBACK);
        let log_bytes = (log_chunks * g * (k + 1) * 4) as u64;
        let log = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("modelbatch evaluation log"),
            size: log_bytes,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = Readback::new(&gpu.device, &gpu.queue, log_bytes);
        Ok(Evaluator { g, n: data.n, k, parts, runs, log, log_chunks, readback })
    }

    /// Samples evaluated per model.
    pub fn samples(&self) -> usize {
        self.n
    }

    /// Evaluates the model's current weights.
    pub async fn run(&mut self) -> Result<Evaluation> {
        let (g, k) = (self.g, self.k);
        let mut ev = Evaluation { samples: self.n, top1: vec![0; g], top5: vec![0; g], loss: vec![0.0; g] };
        let stride = g * (k + 1);
        let mut in_log = 0;
        let last_logged = self.runs.iter().rposition(|r| self.parts[r.part].out.is_some());
        for (j, run) in self.runs.iter().enumerate() {
            let part = &self.parts[run.part];
            if let Some(indices) = part.indices {
                let idx: Vec<u32> = (0..g).flat_map(|_| (0..part.size).map(|i| (run.first + i) as u32)).collect();
                part.plan.write_u32(indices, &idx)?;
            }
            let Some((loss, top)) = part.out else {
                part.plan.run()?;
                continue;
            };
            let off = (in_log * stride * 4) as u64;
            part.plan.run_with(&[(top, &self.log, off), (loss, &self.log, off + (g * k * 4) as u64)])?;
            in_log += 1;
            if in_log == self.log_chunks || Some(j) == last_logged {
                self.readback.start(&self.log, (in_log * stride * 4) as u64)?;
                let bytes = self.readback.finish().await?.unwrap_or_default();
                let data: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
                for chunk in data.chunks_exact(stride) {
                    for m in 0..g {
                        ev.top1[m] += chunk[k * m] as u64;
                        ev.top5[m] += chunk[k * m + 1] as u64;
                        ev.loss[m] += chunk[g * k + m] as f64;
                    }
                }
                in_log = 0;
            }
        }
        for l in &mut ev.loss {
            *l /= self.n as f64;
        }
        Ok(ev)
    }
}

/// Evaluates every model of `model` on all of `data` in batches of `batch` (compiles an
/// [`Evaluator`] and runs it once).
pub async fn evaluate(
    gpu: &Gpu,
    model: &BatchModel,
    data: &Dataset,
    batch: usize,
    norm: Normalize,
) -> Result<Evaluation> {
    Evaluator::new(gpu, model, data, batch, norm)?.run().await
}
