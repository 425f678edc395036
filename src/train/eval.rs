//! Evaluation compiled once and run many times: the evaluation set is uploaded once, every
//! chunk's per-model counts and loss are copied into a log on the GPU, and the log comes
//! back in one readback (per 256 chunks), so an evaluation costs one map, not two per chunk.

use super::{data_graph, DataGraph, Dataset, Evaluation, Head, Normalize};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{Reduction, TensorId};
use crate::nn::{BatchModel, Mode};
use crate::plan::{Plan, Readback};

/// Chunks whose results one readback carries at most.
const CHUNKS_PER_READBACK: usize = 256;

struct Part {
    plan: Plan,
    indices: TensorId,
    loss: TensorId,
    top: TensorId,
    /// Samples per model per chunk.
    size: usize,
    /// Chunks of this size, starting at sample `start`.
    chunks: usize,
    start: usize,
}

/// A compiled evaluation of a [`BatchModel`] on a fixed dataset (per-model top-1/top-5 and
/// mean loss over every sample, the same samples for all models).
pub struct Evaluator {
    g: usize,
    n: usize,
    k: usize,
    parts: Vec<Part>,
    log: wgpu::Buffer,
    log_chunks: usize,
    readback: Readback,
}

impl Evaluator {
    /// Uploads `data` and compiles the evaluation of `model` in batches of `batch` samples
    /// per model (plus one plan for the remainder); fewer where one model's batch would pass
    /// the adapter's binding limit.
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
            data_graph(model.spec(), g, "eval", data.n, size, norm, head)
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
        // Except where a BatchNorm2d has no running estimates: in evaluation it normalises
        // with each batch's statistics, which a smaller batch would change.
        let batch_statistics = model
            .spec()
            .layers
            .iter()
            .any(|l| matches!(l.layer, crate::nn::Layer::BatchNorm2d { track_running_stats: false, .. }));
        if batch < wanted && batch_statistics {
            return Err(Error::Usage(format!(
                "evaluation: the model's BatchNorm2d without running estimates normalises with each evaluation \
                 batch's statistics, and {wanted} samples per model pass this adapter's binding limit: evaluate in \
                 batches of at most {batch}"
            )));
        }
        let full = data.n / batch;
        let rest = data.n % batch;
        let mut parts: Vec<Part> = Vec::new();
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
            parts.push(Part { plan, indices, loss, top, size, chunks, start });
        }
        let k = ks.len();
        let total: usize = parts.iter().map(|p| p.chunks).sum();
        let log_chunks = total.min(CHUNKS_PER_READBACK);
        let log_bytes = (log_chunks * g * (k + 1) * 4) as u64;
        let log = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("modelbatch evaluation log"),
            size: log_bytes,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = Readback::new(&gpu.device, &gpu.queue, log_bytes);
        Ok(Evaluator { g, n: data.n, k, parts, log, log_chunks, readback })
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
        let jobs: Vec<(usize, usize)> =
            self.parts.iter().enumerate().flat_map(|(p, part)| (0..part.chunks).map(move |c| (p, c))).collect();
        for (j, &(p, c)) in jobs.iter().enumerate() {
            let part = &self.parts[p];
            let first = part.start + c * part.size;
            let idx: Vec<u32> = (0..g).flat_map(|_| (0..part.size).map(|i| (first + i) as u32)).collect();
            part.plan.write_u32(part.indices, &idx)?;
            let off = (in_log * stride * 4) as u64;
            part.plan.run_with(&[(part.top, &self.log, off), (part.loss, &self.log, off + (g * k * 4) as u64)])?;
            in_log += 1;
            if in_log == self.log_chunks || j + 1 == jobs.len() {
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
