//! Compiled execution plan: a graph (forward, loss, backward) plus in-place updates,
//! turned once into buffers, pipelines and bind groups. [`Plan::run`] records every
//! dispatch into one compute pass and submits once; nothing is created per run.

mod alloc;
mod chunk;
mod lower;
mod readback;

pub use readback::Readback;

pub(crate) use chunk::one_model_fits;
use chunk::{pad16, record_copies, BufferCopy, Chunk, Layout, SlotKind};
use lower::{lower_node, lower_updates};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{DType, Graph, NormKind, Op, TensorId};
use crate::ops::{self, Lower};

/// What [`Plan::signature`] returns: per dispatch, its label, its kernel's identity and its grid.
pub type Signature = Vec<(&'static str, usize, [u32; 3])>;

/// An in-place update applied after the graph has run (optimizer steps).
#[derive(Clone, Debug)]
pub enum Update {
    /// PyTorch SGD on `param` from `grad`, with momentum buffer `momentum` (a state tensor
    /// shaped like `param`) and per-model hyper-parameters `hyper` (`[G, 8]`, see
    /// [`crate::optim::Sgd`]).
    Sgd {
        /// Parameter updated in place.
        param: TensorId,
        /// Its gradient.
        grad: TensorId,
        /// Momentum buffer.
        momentum: TensorId,
        /// Hyper-parameter rows.
        hyper: TensorId,
        /// Per-model freeze flags `[G, 1]` (state; non-zero: skip this model).
        dead: TensorId,
    },
    /// Freezes diverged models: `dead[g] = 1` once `loss[g]` (a `[G]` tensor) is NaN or
    /// infinite. Place it before the optimizer updates that read `dead`.
    Guard {
        /// Per-model loss of this step.
        loss: TensorId,
        /// Per-model freeze flags `[G, 1]` (state).
        dead: TensorId,
    },
    /// PyTorch Adam/AdamW on `param` from `grad` with moment buffers `exp_avg` and
    /// `exp_avg_sq` (state tensors shaped like `param`) and per-model rows `hyper`
    /// (`[G, 8]`, see [`crate::optim::Adam`]).
    Adam {
        /// Parameter updated in place.
        param: TensorId,
        /// Its gradient.
        grad: TensorId,
        /// First moment.
        exp_avg: TensorId,
        /// Second moment.
        exp_avg_sq: TensorId,
        /// Hyper-parameter rows.
        hyper: TensorId,
        /// Per-model freeze flags `[G, 1]` (state; non-zero: skip this model).
        dead: TensorId,
    },
    /// Gradient accumulation: `dst += src` (same shape), for training a batch in
    /// micro-batches.
    Accumulate {
        /// Accumulator (state), updated in place.
        dst: TensorId,
        /// What is added.
        src: TensorId,
    },
    /// `dst = 0` (clears an accumulator once it has been used).
    Zero {
        /// State tensor cleared in place.
        dst: TensorId,
    },
    /// BatchNorm2d's running estimates, updated from the batch statistics `stats` (a
    /// `norm_stats` node with batch kind) as PyTorch does in training mode: `mean` and `var`
    /// are `[G, C]` state, `count` is `[G, 1]` state (batches tracked).
    BatchNormRunning {
        /// The batch statistics node.
        stats: TensorId,
        /// Running mean.
        mean: TensorId,
        /// Running variance (unbiased estimates).
        var: TensorId,
        /// Batches tracked.
        count: TensorId,
        /// Update factor; `None` for a cumulative average (PyTorch's `momentum=None`).
        momentum: Option<f32>,
    },
}

impl Update {
    fn operands(&self) -> Vec<TensorId> {
        match self {
            Update::Sgd { param, grad, momentum, hyper, dead } => vec![*param, *grad, *momentum, *hyper, *dead],
            Update::Guard { loss, dead } => vec![*loss, *dead],
            Update::Accumulate { dst, src } => vec![*dst, *src],
            Update::Zero { dst } => vec![*dst],
            Update::BatchNormRunning { stats, mean, var, count, .. } => vec![*stats, *mean, *var, *count],
            Update::Adam { param, grad, exp_avg, exp_avg_sq, hyper, dead } => {
                vec![*param, *grad, *exp_avg, *exp_avg_sq, *hyper, *dead]
            }
        }
    }
}

/// Counts of GPU objects a plan created, to prove that runs create none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Tensors the plan materialises (reshapes count, though they share their operand's buffer).
    pub tensors: usize,
    /// Storage buffers holding tensors.
    pub buffers: usize,
    /// Total bytes of those buffers.
    pub bytes: u64,
    /// Dispatches recorded per run.
    pub dispatches: usize,
    /// Chunks of models the batch is split into (1: one pass over all G models).
    pub chunks: usize,
    /// Submits made by `run` so far.
    pub submits: u64,
    /// Staging buffers created for reads so far (one per tensor ever read).
    pub staging_buffers: usize,
    /// Bytes of the scratch buffers kernels use within one op (the convolution weight
    /// gradients' split-K partial sums: one buffer per distinct size, at most 64 MiB each),
    /// not counted in `bytes` nor in [`Plan::estimate`].
    pub scratch_bytes: u64,
    /// Bytes of the temporaries' buffers, which [`Plan::sharing_temporaries`] lends.
    pub temporary_bytes: u64,
    /// Of `temporary_bytes`, the bytes borrowed from another plan (its buffers, possibly
    /// larger than needed here, counted at their size).
    pub borrowed_bytes: u64,
}

struct TensorMeta {
    shape: Vec<usize>,
    dtype: DType,
    op: Op,
}

/// A compiled graph ready to run on one device.
pub struct Plan {
    device: wgpu::Device,
    queue: wgpu::Queue,
    error: Arc<Mutex<Option<String>>>,
    lost: Arc<Mutex<Option<String>>>,
    meta: Vec<TensorMeta>,
    slot: Vec<Option<usize>>,
    buffers: Vec<wgpu::Buffer>,
    bytes: u64,
    steps: Vec<Chunk>,
    /// Per buffer: holds all G models (leaves, kept tensors), not one chunk's temporaries.
    whole: Vec<bool>,
    names: HashMap<String, TensorId>,
    staging: Mutex<HashMap<usize, wgpu::Buffer>>,
    staging_created: AtomicU64,
    /// [`Plan::copy_model`]'s buffer between a model's slices (made at its first use).
    copy_scratch: Mutex<Option<wgpu::Buffer>>,
    submits: AtomicU64,
    scratch_bytes: u64,
    /// Buffers of temporaries, which [`Plan::sharing_temporaries`] lends to later plans.
    temporaries: Vec<wgpu::Buffer>,
    /// Bytes of those borrowed from another plan.
    borrowed_bytes: u64,
}

impl Plan {
    /// Compiles `graph` for `gpu`. Tensors in `keep` stay readable after a run; `updates`
    /// run after the graph, in order. Only nodes that `keep` or `updates` depend on run.
    pub fn new(gpu: &Gpu, graph: &Graph, keep: &[TensorId], updates: &[Update]) -> Result<Plan> {
        Plan::build(gpu, graph, keep, updates, None, false)
    }

    /// Like [`Plan::new`], but parameters and state tensors whose name and shape match one of
    /// `other`'s use `other`'s buffers: an evaluation plan sees the training plan's weights
    /// without copies.
    pub fn sharing(gpu: &Gpu, graph: &Graph, keep: &[TensorId], updates: &[Update], other: &Plan) -> Result<Plan> {
        Plan::build(gpu, graph, keep, updates, Some(other), false)
    }

    /// Like [`Plan::sharing`], and the temporaries (computed tensors nobody keeps) take
    /// `other`'s temporary buffers where one is large enough: for plans that run one after
    /// the other on one queue and keep nothing between runs (micro-batch passes), which
    /// otherwise would each hold a whole step's temporaries.
    pub fn sharing_temporaries(
        gpu: &Gpu,
        graph: &Graph,
        keep: &[TensorId],
        updates: &[Update],
        other: &Plan,
    ) -> Result<Plan> {
        Plan::build(gpu, graph, keep, updates, Some(other), true)
    }

    fn build(
        gpu: &Gpu,
        graph: &Graph,
        keep: &[TensorId],
        updates: &[Update],
        share: Option<&Plan>,
        temporaries: bool,
    ) -> Result<Plan> {
        let nodes = graph.nodes();
        check_ids(graph, keep, updates)?;
        check_updates(graph, updates)?;

        let (live, assignment) = liveness(graph, keep, updates, gpu.tuning().folds);

        // Buffers borrowed from the plan we share parameters with.
        let mut shared: HashMap<usize, wgpu::Buffer> = HashMap::new();
        if let Some(other) = share {
            for (i, node) in nodes.iter().enumerate() {
                if let Op::Param { name } | Op::State { name } | Op::Data { name } = &node.op {
                    if let Some(t) = other.find(name) {
                        if other.shape(t) != node.shape.as_slice() {
                            return Err(Error::Shape(format!(
                                "plan: shared tensor {name:?} has shape {:?} here and {:?} in the other plan",
                                node.shape,
                                other.shape(t)
                            )));
                        }
                        let slot = assignment.slot[i].expect("leaves have buffers");
                        shared.insert(slot, other.buffer(t)?.clone());
                    }
                }
            }
        }
        let g = graph.models();
        let layout = Layout::new(graph, &assignment);
        // Check the limits before allocating anything, and split the batch into chunks of
        // models where one pass would bind more than the adapter allows.
        let chunk = layout.chunk_size(gpu.limits(), g)?;
        let split = chunk < g;
        let chunks: Vec<(usize, usize)> = (0..g).step_by(chunk).map(|g0| (g0, chunk.min(g - g0))).collect();
        let align = u64::from(gpu.limits().min_storage_buffer_offset_alignment).max(16);
        let (sizes, staged) = layout.buffers(&assignment, chunk, g, align);
        #[cfg(not(target_arch = "wasm32"))]
        let total: u64 = (0..sizes.len())
            .filter(|s| !shared.contains_key(s))
            .map(|s| sizes[s])
            .chain(staged.iter().flatten().copied())
            .sum();
        #[cfg(not(target_arch = "wasm32"))]
        let oom_scope = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let new_buffer = |label: String, size: u64| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(&label),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        // Another plan's temporaries, smallest first: each serves at most one slot here.
        let mut pool: Vec<wgpu::Buffer> = match share {
            Some(other) if temporaries => other.temporaries.clone(),
            _ => Vec::new(),
        };
        pool.sort_by_key(|b| b.size());
        let is_temp = |i: usize| layout.kind[i] == SlotKind::Temp && staged[i].is_none();
        let mut buffers = Vec::with_capacity(sizes.len());
        let mut borrowed_bytes = 0;
        for (i, &size) in sizes.iter().enumerate() {
            let borrowed = if is_temp(i) { pool.iter().position(|b| b.size() >= size) } else { None };
            match (shared.remove(&i), borrowed) {
                (Some(b), _) => buffers.push(b),
                (None, Some(k)) => {
                    borrowed_bytes += pool[k].size();
                    buffers.push(pool.remove(k));
                }
                (None, None) => buffers.push(new_buffer(format!("modelbatch tensor buffer {i}"), size)),
            }
        }
        let temporaries: Vec<wgpu::Buffer> =
            buffers.iter().enumerate().filter(|&(i, _)| is_temp(i)).map(|(_, b)| b.clone()).collect();
        let stage: Vec<Option<wgpu::Buffer>> = staged
            .iter()
            .enumerate()
            .map(|(s, size)| size.map(|size| new_buffer(format!("modelbatch chunk staging {s}"), size)))
            .collect();
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(oom_scope.pop()) {
            return Err(Error::Gpu(format!(
                "out of GPU memory: this plan needs {} MiB for G={g} models ({} KiB per model); use fewer models or a smaller batch ({e})",
                total >> 20,
                (total / g as u64) >> 10
            )));
        }
        // Bound where a kernel's optional operand (dummy) or output (sink) is absent: two, as
        // a buffer may not be bound read-only and writable in one dispatch.
        let unused = |label| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (dummy, sink) = (unused("modelbatch unused operand"), unused("modelbatch unused output"));
        let slot_of = |t: TensorId| assignment.slot[t.index()].expect("live tensor has a buffer");
        let buf = |t: TensorId| -> &wgpu::Buffer {
            let s = slot_of(t);
            stage[s].as_ref().unwrap_or(&buffers[s])
        };
        for (i, node) in nodes.iter().enumerate() {
            if let (true, Op::Fill { value }) = (live[i], &node.op) {
                let numel = if split { chunk * node.numel() / g } else { node.numel() };
                gpu.queue.write_buffer(buf(TensorId(i)), 0, bytemuck::cast_slice(&vec![*value; numel]));
            }
        }

        let ctx = Lower { gpu, dummy: &dummy, sink: &sink, ranges: Default::default(), scratch: Default::default() };
        // Bias-gradient sums the weight gradients' dispatches compute.
        let mut folded = vec![false; nodes.len()];
        for &j in assignment.bias_of.iter().flatten() {
            folded[j] = true;
        }
        let mut steps = Vec::with_capacity(chunks.len());
        for &(g0, gc) in &chunks {
            let chunk_graph;
            let lg = if split {
                chunk_graph = graph.with_models(gc);
                &chunk_graph
            } else {
                graph
            };
            let mut step = Chunk { copy_in: Vec::new(), dispatches: Vec::new(), copy_out: Vec::new() };
            // Buffers hash by identity, which their interior mutability does not change.
            #[allow(clippy::mutable_key_type)]
            let mut ranges = HashMap::new();
            for s in (0..sizes.len()).filter(|&s| split && layout.kind[s].whole()) {
                let (offset, size) = (g0 as u64 * layout.per_model[s], gc as u64 * layout.per_model[s]);
                match &stage[s] {
                    None => {
                        ranges.insert(buffers[s].clone(), (offset, pad16(size).min(buffers[s].size() - offset)));
                    }
                    Some(st) => {
                        let (whole, st) = (buffers[s].clone(), st.clone());
                        if layout.kind[s] != SlotKind::Kept {
                            step.copy_in.push(BufferCopy {
                                src: whole.clone(),
                                src_offset: offset,
                                dst: st.clone(),
                                dst_offset: 0,
                                size,
                            });
                        }
                        if layout.kind[s] != SlotKind::Input {
                            step.copy_out.push(BufferCopy {
                                src: st,
                                src_offset: 0,
                                dst: whole,
                                dst_offset: offset,
                                size,
                            });
                        }
                    }
                }
            }
            *ctx.ranges.borrow_mut() = ranges;
            // Pooling gradients the convolution gradients reading them compute themselves:
            // those whose every reader can.
            let mut folds_ok: HashMap<usize, bool> = HashMap::new();
            for (i, k) in (0..nodes.len()).filter_map(|i| Some((i, assignment.pool_of[i]?))) {
                let ok = lower::pool_folds(&ctx, lg, i, assignment.bias_of[i].is_some());
                *folds_ok.entry(k).or_insert(true) &= ok;
            }
            let pooled: Vec<usize> = folds_ok.into_iter().filter_map(|(k, ok)| ok.then_some(k)).collect();
            // Poolings a convolution computes in its epilogue.
            let pooled_fwd: Vec<usize> = (0..nodes.len())
                .filter_map(|i| assignment.pooled_by[i].filter(|_| lower::forward_pools(&ctx, lg, i)))
                .collect();
            for (i, node) in lg.nodes().iter().enumerate() {
                let skip = folded[i] || pooled.contains(&i) || pooled_fwd.contains(&i);
                if !live[i] || matches!(node.op, Op::Fill { .. }) || skip {
                    continue;
                }
                let folds = lower::Folds {
                    bias: assignment.bias_of[i].map(TensorId),
                    pool: assignment.pool_of[i].filter(|k| pooled.contains(k)).map(TensorId),
                    pooled: assignment.pooled_by[i].filter(|k| pooled_fwd.contains(k)).map(TensorId),
                };
                step.dispatches.extend(lower_node(&ctx, lg, node, TensorId(i), folds, &buf)?);
            }
            step.dispatches.extend(lower_updates(&ctx, lg, updates, &buf)?);
            steps.push(step);
        }
        let mut names = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            if let Op::Input { name } | Op::Param { name } | Op::State { name } | Op::Data { name } = &node.op {
                names.insert(name.clone(), TensorId(i));
            }
        }
        gpu.take_error()?;
        let scratch_bytes = ctx.scratch.borrow().keys().sum();
        Ok(Plan {
            device: gpu.device.clone(),
            queue: gpu.queue.clone(),
            error: gpu.error_slot(),
            lost: gpu.lost_slot(),
            meta: nodes
                .iter()
                .map(|n| TensorMeta { shape: n.shape.clone(), dtype: n.dtype, op: n.op.clone() })
                .collect(),
            slot: assignment.slot,
            bytes: sizes.iter().sum::<u64>() + stage.iter().flatten().map(|b| b.size()).sum::<u64>(),
            buffers: buffers.into_iter().chain(stage.into_iter().flatten()).collect(),
            steps,
            whole: (0..layout.kind.len())
                .map(|s| matches!(layout.kind[s], SlotKind::Data) || layout.kind[s].whole())
                .collect(),
            names,
            staging: Mutex::new(HashMap::new()),
            staging_created: AtomicU64::new(0),
            copy_scratch: Mutex::new(None),
            submits: AtomicU64::new(0),
            scratch_bytes,
            temporaries,
            borrowed_bytes,
        })
    }

    /// The input, parameter or state tensor called `name`.
    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.names.get(name).copied()
    }

    /// Every state tensor (optimizer buffers, BatchNorm estimates) by name.
    pub fn states(&self) -> Vec<(String, TensorId)> {
        let mut v: Vec<(String, TensorId)> = self
            .names
            .iter()
            .filter(|(_, t)| matches!(self.meta[t.index()].op, Op::State { .. }))
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        v.sort();
        v
    }

    /// Shape of `t`, G first.
    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.meta[t.index()].shape
    }

    /// What the plan allocated and records.
    pub fn stats(&self) -> PlanStats {
        PlanStats {
            tensors: self.slot.iter().filter(|s| s.is_some()).count(),
            buffers: self.buffers.len(),
            bytes: self.bytes,
            dispatches: self.steps.iter().map(|c| c.dispatches.len()).sum(),
            chunks: self.steps.len(),
            submits: self.submits.load(Ordering::Relaxed),
            staging_buffers: self.staging_created.load(Ordering::Relaxed) as usize,
            scratch_bytes: self.scratch_bytes,
            temporary_bytes: self.temporaries.iter().map(|b| b.size()).sum(),
            borrowed_bytes: self.borrowed_bytes,
        }
    }

    /// What the plan knows of `t`: an error for a tensor of another graph.
    fn meta(&self, t: TensorId) -> Result<&TensorMeta> {
        self.meta.get(t.index()).ok_or_else(|| Error::Usage(format!("tensor {} is not in this plan", t.index())))
    }

    fn buffer(&self, t: TensorId) -> Result<&wgpu::Buffer> {
        let meta = self.meta(t)?;
        match self.slot[t.index()] {
            Some(s) if self.steps.len() == 1 || self.whole[s] => Ok(&self.buffers[s]),
            _ => Err(Error::Usage(format!(
                "tensor {} ({} {:?}) is not kept by this plan; list it in `keep` when compiling",
                t.index(),
                meta.op.name(),
                meta.shape
            ))),
        }
    }

    fn check_write(&self, t: TensorId, len: usize, dtype: DType) -> Result<&wgpu::Buffer> {
        let buffer = self.buffer(t)?;
        let meta = &self.meta[t.index()];
        if !matches!(meta.op, Op::Input { .. } | Op::Param { .. } | Op::State { .. }) {
            return Err(Error::Usage(format!(
                "tensor {} ({}) is computed by the plan and cannot be written",
                t.index(),
                meta.op.name()
            )));
        }
        let numel: usize = meta.shape.iter().product();
        if meta.dtype != dtype || numel != len {
            return Err(Error::Usage(format!(
                "writing {}: expected {numel} {:?} values for shape {:?}, got {len} {dtype:?}",
                leaf_name(&meta.op),
                meta.dtype,
                meta.shape
            )));
        }
        Ok(buffer)
    }

    /// Writes f32 data into an input, parameter or state tensor (takes effect at the next run).
    pub fn write(&self, t: TensorId, data: &[f32]) -> Result<()> {
        let b = self.check_write(t, data.len(), DType::F32)?;
        self.queue.write_buffer(b, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Writes bytes into a dataset tensor (packed four to a u32, zero-padded).
    pub fn write_bytes(&self, t: TensorId, bytes: &[u8]) -> Result<()> {
        let meta = self.meta(t)?;
        if !matches!(meta.op, Op::Data { .. }) || bytes.len().div_ceil(4) != meta.shape[1] {
            return Err(Error::Usage(format!(
                "write_bytes: tensor {} ({}) is not a dataset of {} bytes",
                t.index(),
                meta.op.name(),
                bytes.len()
            )));
        }
        let mut padded = bytes.to_vec();
        padded.resize(meta.shape[1] * 4, 0);
        self.queue.write_buffer(self.buffer(t)?, 0, &padded);
        Ok(())
    }

    /// Writes u32 data (labels) into an input tensor.
    pub fn write_u32(&self, t: TensorId, data: &[u32]) -> Result<()> {
        let b = self.check_write(t, data.len(), DType::U32)?;
        self.queue.write_buffer(b, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Writes model `g`'s slice of a `[G, ...]` input, parameter or state tensor.
    pub fn write_model(&self, t: TensorId, g: usize, data: &[f32]) -> Result<()> {
        let meta = self.meta(t)?;
        let per: usize = meta.shape[1..].iter().product();
        let numel = per * meta.shape[0];
        let b = self.check_write(t, numel, DType::F32)?;
        if g >= meta.shape[0] || data.len() != per {
            return Err(Error::Usage(format!(
                "writing model {g} of {}: expected {per} values for a model of shape {:?} (G={}), got {}",
                leaf_name(&meta.op),
                &meta.shape[1..],
                meta.shape[0],
                data.len()
            )));
        }
        self.queue.write_buffer(b, (g * per * 4) as u64, bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copies model `src`'s slice of each `[G, ...]` tensor in `tensors` (parameters, states
    /// or inputs, f32 or u32) over model `dst`'s, on the GPU: one submit, ordered after the
    /// runs submitted before it. The slices pass through a scratch buffer (a WebGPU copy
    /// never reads and writes one buffer), made at the first call and kept while it is large
    /// enough.
    pub fn copy_model(&self, tensors: &[TensorId], dst: usize, src: usize) -> Result<()> {
        let mut parts = Vec::with_capacity(tensors.len());
        let mut total = 0u64;
        for &t in tensors {
            let meta = self.meta(t)?;
            let g = meta.shape[0];
            if dst >= g || src >= g {
                return Err(Error::Usage(format!(
                    "copying model {src} over model {dst} of {} (G={g}): no such model",
                    leaf_name(&meta.op)
                )));
            }
            if !matches!(meta.op, Op::Param { .. } | Op::State { .. } | Op::Input { .. }) {
                return Err(Error::Usage(format!(
                    "copy_model: tensor {} ({}) is not a parameter, state or input",
                    t.index(),
                    meta.op.name()
                )));
            }
            let per = (meta.shape[1..].iter().product::<usize>() * 4) as u64;
            parts.push((self.buffer(t)?, per, total));
            total += per;
        }
        if dst == src || total == 0 {
            return Ok(());
        }
        let mut cached = self.copy_scratch.lock().unwrap_or_else(|p| p.into_inner());
        if cached.as_ref().is_none_or(|b| b.size() < total) {
            *cached = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("modelbatch model copy"),
                size: total,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let Some(scratch) = cached.as_ref() else { return Ok(()) };
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("modelbatch model copy") });
        for &(b, per, at) in &parts {
            encoder.copy_buffer_to_buffer(b, src as u64 * per, scratch, at, per);
        }
        for &(b, per, at) in &parts {
            encoder.copy_buffer_to_buffer(scratch, at, b, dst as u64 * per, per);
        }
        self.queue.submit([encoder.finish()]);
        self.check_error()
    }

    /// Runs the graph and the updates: one compute pass, one submit. Returns the first GPU
    /// error reported so far, if any.
    pub fn run(&self) -> Result<()> {
        self.run_with(&[])
    }

    /// Like [`Plan::run`], then copies each `(tensor, buffer, byte offset)` in the same
    /// submit (metrics logs: per-step values gathered on the GPU, read back every K steps).
    pub fn run_with(&self, copies: &[(TensorId, &wgpu::Buffer, u64)]) -> Result<()> {
        self.check_lost()?;
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("modelbatch step") });
        for chunk in &self.steps {
            record_copies(&mut encoder, &chunk.copy_in);
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("modelbatch step"),
                    timestamp_writes: None,
                });
                for d in &chunk.dispatches {
                    d.record(&mut pass);
                }
            }
            record_copies(&mut encoder, &chunk.copy_out);
        }
        for &(t, dst, offset) in copies {
            let bytes = (self.meta[t.index()].shape.iter().product::<usize>() * 4) as u64;
            encoder.copy_buffer_to_buffer(self.buffer(t)?, 0, dst, offset, bytes);
        }
        self.queue.submit([encoder.finish()]);
        self.submits.fetch_add(1, Ordering::Relaxed);
        self.check_error()
    }

    /// An error once the device is lost: nothing can run on it any more.
    pub fn check_lost(&self) -> Result<()> {
        match self.lost.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(why) => Err(Error::Gpu(format!("{why}; create a new Gpu (resume from the last checkpoint)"))),
            None => Ok(()),
        }
    }

    fn check_error(&self) -> Result<()> {
        self.check_lost()?;
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(m) => Err(Error::Gpu(m)),
            None => Ok(()),
        }
    }

    /// The device (for buffers that live beside the plan, such as metric logs).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Per-dispatch times in seconds, in run order, with each dispatch's label. Where the
    /// device has timestamp queries, every dispatch runs in its own compute pass of one
    /// submit and its GPU time is measured between the pass's timestamps; elsewhere each
    /// dispatch runs alone (its own submit, waited for) and its wall time is taken, a coarse
    /// profile that includes the submit overhead. A split batch's staging copies are timed
    /// as `"chunk copies"` (wall time). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self) -> Result<Vec<(&'static str, f64)>> {
        /// Dispatches per query set (4,096 timestamps, wgpu's maximum).
        const PER_SET: usize = 2048;
        self.check_lost()?;
        let stamps = self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut out = Vec::new();
        for chunk in &self.steps {
            if !chunk.copy_in.is_empty() {
                out.push(self.timed("chunk copies", &|e| record_copies(e, &chunk.copy_in))?);
            }
            if stamps {
                for batch in chunk.dispatches.chunks(PER_SET) {
                    out.extend(self.timestamps(batch)?);
                }
            } else {
                for d in &chunk.dispatches {
                    out.push(self.timed(d.label, &|encoder| {
                        let desc = wgpu::ComputePassDescriptor { label: Some(d.label), timestamp_writes: None };
                        d.record(&mut encoder.begin_compute_pass(&desc));
                    })?);
                }
            }
            if !chunk.copy_out.is_empty() {
                out.push(self.timed("chunk copies", &|e| record_copies(e, &chunk.copy_out))?);
            }
        }
        self.check_error()?;
        Ok(out)
    }

    /// Wall time of what `record` records, submitted alone and waited for.
    #[cfg(not(target_arch = "wasm32"))]
    fn timed(&self, label: &'static str, record: &dyn Fn(&mut wgpu::CommandEncoder)) -> Result<(&'static str, f64)> {
        let start = std::time::Instant::now();
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("profile") });
        record(&mut encoder);
        self.queue.submit([encoder.finish()]);
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(format!("profiling: {e}")))?;
        Ok((label, start.elapsed().as_secs_f64()))
    }

    /// GPU times of `batch` from timestamp queries: one submit, each dispatch in its own
    /// pass with timestamps at its beginning and end.
    #[cfg(not(target_arch = "wasm32"))]
    fn timestamps(&self, batch: &[ops::Dispatch]) -> Result<Vec<(&'static str, f64)>> {
        let period = f64::from(self.queue.get_timestamp_period()) * 1e-9;
        let queries = 2 * batch.len() as u32;
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("modelbatch profile"),
            ty: wgpu::QueryType::Timestamp,
            count: queries,
        });
        let bytes = u64::from(queries) * 8;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("modelbatch profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("modelbatch profile readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("profile") });
        for (i, d) in batch.iter().enumerate() {
            d.record(&mut encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            }));
        }
        encoder.resolve_query_set(&set, 0..queries, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(format!("profiling: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Gpu("profiling: readback cancelled (device lost?)".into()))?
            .map_err(|e| Error::Gpu(format!("profiling: {e}")))?;
        let stamps: Vec<u64> = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("profiling: reading timestamps: {e}")))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        staging.unmap();
        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, d)| (d.label, stamps[2 * i + 1].saturating_sub(stamps[2 * i]) as f64 * period))
            .collect())
    }

    /// What shapes the recorded work: each dispatch's label, kernel (by identity: kernels
    /// are cached per device by source, entry point, layout and constants) and grid. Two plans
    /// of one graph with equal signatures run the same kernels on the same grids (how
    /// [`crate::bench::tune`] and the tests tell which kernel shapes a tuning changes).
    pub fn signature(&self) -> Signature {
        let dispatches = self.steps.iter().flat_map(|c| &c.dispatches);
        dispatches.map(|d| (d.label, Arc::as_ptr(&d.kernel) as usize, d.groups)).collect()
    }

    /// Each recorded dispatch in order: its label, its kernel's [`Kernel::name`](crate::gpu::Kernel::name)
    /// (entry point and override constants) and its grid of workgroups (for profiles).
    pub fn dispatch_kernels(&self) -> Vec<(&'static str, String, [u32; 3])> {
        let dispatches = self.steps.iter().flat_map(|c| &c.dispatches);
        dispatches.map(|d| (d.label, d.kernel.name.clone(), d.groups)).collect()
    }

    /// Labels of the recorded dispatches, in order (for profiling and tests).
    pub fn dispatch_labels(&self) -> Vec<&'static str> {
        self.steps.iter().flat_map(|c| &c.dispatches).map(|d| d.label).collect()
    }

    async fn read_bytes(&self, t: TensorId) -> Result<Vec<u8>> {
        self.check_lost()?;
        let src = self.buffer(t)?;
        let meta = &self.meta[t.index()];
        let size = (meta.shape.iter().product::<usize>() * 4) as u64;
        let slot = self.slot[t.index()].unwrap_or_default();
        // Staging buffers are cached per storage buffer and taken out while in use, so
        // repeated reads allocate nothing and concurrent reads never share one.
        let cached = self.staging.lock().unwrap_or_else(|p| p.into_inner()).remove(&slot);
        let staging = match cached {
            Some(b) => b,
            None => {
                self.staging_created.fetch_add(1, Ordering::Relaxed);
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("modelbatch readback"),
                    size: src.size(),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("modelbatch readback") });
        encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = futures::channel::oneshot::channel();
        staging.slice(..size).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for a readback: {e}")))?;
        let mapped = rx.await.map_err(|_| Error::Gpu("readback was cancelled (device lost?)".into()))?;
        mapped.map_err(|e| Error::Gpu(format!("mapping a readback buffer: {e}")))?;
        let data = {
            let view = staging
                .slice(..size)
                .get_mapped_range()
                .map_err(|e| Error::Gpu(format!("reading a mapped buffer: {e}")))?;
            view.to_vec()
        };
        staging.unmap();
        self.staging.lock().unwrap_or_else(|p| p.into_inner()).insert(slot, staging);
        self.check_error()?;
        Ok(data)
    }

    /// Reads an f32 tensor back (asynchronously; native callers may use [`Plan::read_blocking`]).
    pub async fn read(&self, t: TensorId) -> Result<Vec<f32>> {
        self.expect_dtype(t, DType::F32)?;
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(t).await?))
    }

    /// Reads a u32 tensor back.
    pub async fn read_u32(&self, t: TensorId) -> Result<Vec<u32>> {
        self.expect_dtype(t, DType::U32)?;
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(t).await?))
    }

    fn expect_dtype(&self, t: TensorId, dtype: DType) -> Result<()> {
        let meta = self.meta(t)?;
        if meta.dtype != dtype {
            return Err(Error::Usage(format!("tensor {} holds {:?}, not {dtype:?}", t.index(), meta.dtype)));
        }
        Ok(())
    }

    /// Native: [`Plan::read`] driven to completion on this thread.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&self, t: TensorId) -> Result<Vec<f32>> {
        pollster::block_on(self.read(t))
    }

    /// Reads a `[G, K]` top-k tensor as torchmb's `[k][G]` layout.
    pub async fn read_topk(&self, t: TensorId) -> Result<Vec<Vec<f32>>> {
        let shape = self.shape(t).to_vec();
        if !matches!(self.meta[t.index()].op, Op::TopK { .. }) {
            return Err(Error::Usage(format!("tensor {} is not a top-k accuracy", t.index())));
        }
        let flat = self.read(t).await?;
        let (g, k) = (shape[0], shape[1]);
        Ok((0..k).map(|j| (0..g).map(|m| flat[m * k + j]).collect()).collect())
    }
}

/// What runs and where each tensor lives: liveness from the kept tensors and the updates
/// back to the leaves, then buffer assignment with reuse.
/// `folds`: the adapter's `folds` tuning: bit 0, weight gradients compute their bias
/// gradients and pooled dy (`alloc::bias_folds`, `alloc::pool_folds`); bit 1, convolutions
/// pool their outputs (`alloc::forward_pool_folds`); bit 2 (with bit 0), input gradients
/// compute pooled dy too.
fn liveness(graph: &Graph, keep: &[TensorId], updates: &[Update], folds: u32) -> (Vec<bool>, alloc::Assignment) {
    let nodes = graph.nodes();
    let n = nodes.len();
    // Liveness: what runs, who reads what last.
    let mut live = vec![false; n];
    for t in keep {
        live[t.index()] = true;
    }
    for u in updates {
        for t in u.operands() {
            live[t.index()] = true;
        }
    }
    for i in (0..n).rev() {
        if live[i] {
            for x in &nodes[i].inputs {
                live[x.index()] = true;
            }
        }
    }
    // Leaves always get buffers so that callers can write them.
    for (i, node) in nodes.iter().enumerate() {
        if node.op.is_leaf() {
            live[i] = true;
        }
    }
    let mut last_use: Vec<usize> = (0..n).collect();
    for (i, node) in nodes.iter().enumerate() {
        if live[i] {
            for x in &node.inputs {
                last_use[x.index()] = last_use[x.index()].max(i);
            }
        }
    }
    for u in updates {
        for t in u.operands() {
            last_use[t.index()] = n;
        }
    }
    let mut keep_mask = vec![false; n];
    for t in keep {
        keep_mask[t.index()] = true;
    }
    let (bias_of, pool_of) = if folds & 1 != 0 {
        let bias_of = alloc::bias_folds(graph, &live);
        let pool_of = alloc::pool_folds(graph, &live, &keep_mask, &last_use, &bias_of, folds & 4 != 0);
        // A gradient that computes its dy from a pooling gradient reads that node's operands
        // (the pooled gradient and y) itself: they live until it has run.
        for (m, k) in (0..n).filter_map(|m| Some((m, pool_of[m]?))) {
            for x in &nodes[k].inputs {
                last_use[x.index()] = last_use[x.index()].max(m);
            }
        }
        (bias_of, pool_of)
    } else {
        (vec![None; n], vec![None; n])
    };
    let pooled_by = if folds & 2 != 0 { alloc::forward_pool_folds(graph, &live) } else { vec![None; n] };
    let assignment = alloc::assign(graph, &live, &keep_mask, &last_use, bias_of, pool_of, pooled_by);
    (live, assignment)
}

/// GPU memory a plan would allocate, known before allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Total bytes of the plan's buffers (not the scratch of split-K partial sums, which
    /// lowering sizes: at most 64 MiB per distinct size, see [`PlanStats::scratch_bytes`]).
    pub bytes: u64,
    /// Bytes of its largest buffer (the binding-size limit applies to it).
    pub largest: u64,
    /// Number of buffers.
    pub buffers: usize,
    /// Chunks of models the batch is split into.
    pub chunks: usize,
}

impl Plan {
    /// The memory [`Plan::new`] would allocate for this graph in one pass over all G models,
    /// without allocating (the binding-size limit applies to `largest`), with the default
    /// `folds` tuning.
    pub fn estimate(graph: &Graph, keep: &[TensorId], updates: &[Update]) -> Result<MemoryEstimate> {
        check_ids(graph, keep, updates)?;
        let (_, a) = liveness(graph, keep, updates, crate::Tuning::GPU.folds);
        Ok(MemoryEstimate {
            bytes: a.sizes.iter().sum(),
            largest: a.sizes.iter().copied().max().unwrap_or(0),
            buffers: a.sizes.len(),
            chunks: 1,
        })
    }

    /// The memory [`Plan::new`] would allocate on `gpu`, without allocating: split into
    /// chunks of models where the adapter's binding limit asks for it (temporaries then hold
    /// one chunk). Errors as `Plan::new` does when nothing fits.
    pub fn estimate_on(gpu: &Gpu, graph: &Graph, keep: &[TensorId], updates: &[Update]) -> Result<MemoryEstimate> {
        check_ids(graph, keep, updates)?;
        check_updates(graph, updates)?;
        let (_, a) = liveness(graph, keep, updates, gpu.tuning().folds);
        let g = graph.models();
        let layout = Layout::new(graph, &a);
        let chunk = layout.chunk_size(gpu.limits(), g)?;
        let align = u64::from(gpu.limits().min_storage_buffer_offset_alignment).max(16);
        let (mut sizes, staged) = layout.buffers(&a, chunk, g, align);
        sizes.extend(staged.iter().flatten());
        Ok(MemoryEstimate {
            bytes: sizes.iter().sum(),
            largest: sizes.iter().copied().max().unwrap_or(0),
            buffers: sizes.len(),
            chunks: g.div_ceil(chunk),
        })
    }
}

fn check_ids(graph: &Graph, keep: &[TensorId], updates: &[Update]) -> Result<()> {
    let n = graph.nodes().len();
    for t in keep.iter().copied().chain(updates.iter().flat_map(|u| u.operands())) {
        if t.index() >= n {
            return Err(Error::Usage(format!("plan: tensor {} is not in this graph", t.index())));
        }
    }
    Ok(())
}

fn leaf_name(op: &Op) -> String {
    match op {
        Op::Input { name } | Op::Param { name } | Op::State { name } => format!("{:?}", name),
        other => other.name().to_string(),
    }
}

/// `dead` is a `[G, 1]` state tensor; `rows` (a guarded loss `[G]` or hyper rows `[G, k]`)
/// has G first.
fn check_dead(graph: &Graph, rows: TensorId, dead: TensorId) -> bool {
    let g = graph.models();
    matches!(graph.node(dead).op, Op::State { .. })
        && graph.shape(dead) == [g, 1]
        && graph.shape(rows).first() == Some(&g)
}

fn check_updates(graph: &Graph, updates: &[Update]) -> Result<()> {
    for u in updates {
        match *u {
            Update::Guard { loss, dead }
            | Update::Sgd { dead, hyper: loss, .. }
            | Update::Adam { dead, hyper: loss, .. }
                if !check_dead(graph, loss, dead) =>
            {
                return Err(Error::Usage(format!(
                    "update: freeze flags must be a [G, 1] state tensor and the guarded loss a [G] tensor, got {:?} and {:?}",
                    graph.shape(dead),
                    graph.shape(loss)
                )));
            }
            Update::Guard { .. } => {}
            Update::Accumulate { dst, src } => {
                if !matches!(graph.node(dst).op, Op::State { .. })
                    || graph.shape(dst) != graph.shape(src)
                    || graph.node(src).dtype != DType::F32
                {
                    return Err(Error::Usage(format!(
                        "accumulate update: the accumulator must be an f32 state tensor shaped like the addend, got {:?} and {:?}",
                        graph.shape(dst),
                        graph.shape(src)
                    )));
                }
            }
            Update::Zero { dst } => {
                if !matches!(graph.node(dst).op, Op::State { .. }) {
                    return Err(Error::Usage("zero update: only state tensors can be cleared".into()));
                }
            }
            Update::Sgd { param, grad, momentum, hyper, .. } => {
                let ps = graph.shape(param);
                if !matches!(graph.node(param).op, Op::Param { .. })
                    || !matches!(graph.node(momentum).op, Op::State { .. })
                {
                    return Err(Error::Usage(
                        "sgd update: `param` must be a parameter and `momentum` a state tensor".into(),
                    ));
                }
                if graph.shape(grad) != ps || graph.shape(momentum) != ps {
                    return Err(Error::Shape(format!(
                        "sgd update: parameter {:?}, gradient {:?} and momentum {:?} must have one shape",
                        ps,
                        graph.shape(grad),
                        graph.shape(momentum)
                    )));
                }
                let hs = graph.shape(hyper);
                if hs != [ps[0], ops::optim::SGD_HYPER_WIDTH] {
                    return Err(Error::Shape(format!(
                        "sgd update: hyper-parameters must be [G, {}], got {:?}",
                        ops::optim::SGD_HYPER_WIDTH,
                        hs
                    )));
                }
            }
            Update::Adam { param, grad, exp_avg, exp_avg_sq, hyper, .. } => {
                let ps = graph.shape(param);
                let ok = matches!(graph.node(param).op, Op::Param { .. })
                    && [exp_avg, exp_avg_sq].iter().all(|t| matches!(graph.node(*t).op, Op::State { .. }))
                    && graph.shape(grad) == ps
                    && graph.shape(exp_avg) == ps
                    && graph.shape(exp_avg_sq) == ps
                    && graph.shape(hyper) == [ps[0], ops::optim::ADAM_HYPER_WIDTH];
                if !ok {
                    return Err(Error::Usage(format!(
                        "adam update: parameter {ps:?} needs a gradient and two state moments of its shape and [G, {}] rows",
                        ops::optim::ADAM_HYPER_WIDTH
                    )));
                }
            }
            Update::BatchNormRunning { stats, mean, var, count, momentum } => {
                let ok = matches!(
                    graph.node(stats).op,
                    Op::NormStats { kind: NormKind::Batch, .. } | Op::SumsStats { shift: false, .. }
                ) && [mean, var, count].iter().all(|t| matches!(graph.node(*t).op, Op::State { .. }))
                    && graph.shape(mean) == [graph.shape(stats)[0], graph.shape(stats)[2]]
                    && graph.shape(var) == graph.shape(mean)
                    && graph.shape(count) == [graph.shape(stats)[0], 1]
                    && momentum.is_none_or(|m| (0.0..=1.0).contains(&m));
                if !ok {
                    return Err(Error::Usage(
                        "batchnorm running update: needs batch norm_stats, [G, C] state mean and var, [G, 1] state count, momentum in [0, 1]".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}
