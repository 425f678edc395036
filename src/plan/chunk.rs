//! Splitting a plan's batch into chunks of models when its tensors pass the adapter's
//! binding limit: what each buffer holds, how large it is per model, the largest chunk that
//! fits, and the copies that stage whole-batch slices that cannot be bound at an offset.

use super::alloc;
use super::{liveness, Update};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{Graph, Op, TensorId};
use crate::ops::Dispatch;

/// What a buffer holds, which decides how it is sized and bound when a plan splits its
/// batch into chunks of models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotKind {
    /// A dataset shared by all models: bound whole.
    Data,
    /// Temporaries: sized for one chunk and reused by every chunk.
    Temp,
    /// A constant: sized for one chunk.
    Fill,
    /// An input written by the host, all G models.
    Input,
    /// Parameters and state, all G models, updated by the run.
    Weights,
    /// A computed tensor the caller keeps, all G models.
    Kept,
}

impl SlotKind {
    /// Holds every model for the whole run (a chunk binds its slice).
    pub(super) fn whole(self) -> bool {
        matches!(self, SlotKind::Input | SlotKind::Weights | SlotKind::Kept)
    }
}

/// Bytes rounded up to whole vec4s (at least one).
pub(super) fn pad16(bytes: u64) -> u64 {
    bytes.max(1).div_ceil(16) * 16
}

/// Per buffer: what it holds, its bytes per model, and its largest tensor (for messages).
pub(super) struct Layout {
    pub kind: Vec<SlotKind>,
    pub per_model: Vec<u64>,
    pub tensor: Vec<(usize, String, Vec<usize>)>,
}

impl Layout {
    pub(super) fn new(graph: &Graph, a: &alloc::Assignment) -> Layout {
        let n = a.sizes.len();
        let mut l =
            Layout { kind: vec![SlotKind::Temp; n], per_model: vec![0; n], tensor: vec![Default::default(); n] };
        for (i, node) in graph.nodes().iter().enumerate() {
            let Some(s) = a.slot[i] else { continue };
            if node.op == Op::Reshape {
                continue;
            }
            l.kind[s] = match node.op {
                Op::Data { .. } => SlotKind::Data,
                Op::Fill { .. } => SlotKind::Fill,
                Op::Input { .. } => SlotKind::Input,
                Op::Param { .. } | Op::State { .. } => SlotKind::Weights,
                _ if a.owned[s] => SlotKind::Kept,
                _ => SlotKind::Temp,
            };
            let m = (node.numel() * 4 / node.shape[0].max(1)) as u64;
            if m > l.per_model[s] {
                l.per_model[s] = m;
                l.tensor[s] = (i, node.op.name().to_string(), node.shape.clone());
            }
        }
        l
    }

    /// Buffer sizes for chunks of `chunk` models (of `g`), and which whole-batch buffers are
    /// staged through a chunk-sized copy because their slices are not `align`ed (with the
    /// staging buffer's size).
    pub(super) fn buffers(
        &self,
        a: &alloc::Assignment,
        chunk: usize,
        g: usize,
        align: u64,
    ) -> (Vec<u64>, Vec<Option<u64>>) {
        let split = chunk < g;
        let sizes = (0..self.kind.len())
            .map(|s| match self.kind[s] {
                SlotKind::Temp | SlotKind::Fill if split => pad16(chunk as u64 * self.per_model[s]),
                _ => a.sizes[s],
            })
            .collect();
        let staged = (0..self.kind.len())
            .map(|s| {
                let slice = chunk as u64 * self.per_model[s];
                (split && self.kind[s].whole() && slice % align != 0).then(|| pad16(slice))
            })
            .collect();
        (sizes, staged)
    }

    /// The most models one pass can take within the adapter's limits: `g` when everything
    /// fits, else the largest chunk whose slices fit one binding each. Errors name the tensor
    /// that does not fit and what would.
    pub(super) fn chunk_size(&self, limits: &wgpu::Limits, g: usize) -> Result<usize> {
        let max_buffer = limits.max_buffer_size;
        let max_binding = limits.max_storage_buffer_binding_size.min(max_buffer);
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64);
        for s in 0..self.kind.len() {
            let (t, op, shape) = &self.tensor[s];
            let data = self.kind[s] == SlotKind::Data;
            let whole = if data { self.per_model[s] } else { g as u64 * self.per_model[s] };
            let limit = if data { max_binding } else { max_buffer };
            if (data || self.kind[s].whole()) && pad16(whole) > limit {
                return Err(Error::Usage(if data {
                    format!(
                        "plan: dataset tensor {t} needs {}, but this adapter binds at most {}: use a smaller dataset",
                        mib(whole),
                        mib(limit)
                    )
                } else {
                    format!(
                        "plan: tensor {t} ({op} {shape:?}) needs {} for all G={g} models, but this adapter allocates at most \
                         {} per buffer: use at most {} models at this batch size, or a smaller batch",
                        mib(whole),
                        mib(limit),
                        limit / self.per_model[s].max(1)
                    )
                }));
            }
        }
        let fits = |c: usize| {
            (0..self.kind.len()).all(|s| match self.kind[s] {
                SlotKind::Data => true,
                _ => pad16(c as u64 * self.per_model[s]) <= max_binding,
            })
        };
        if fits(g) {
            return Ok(g);
        }
        // `fits` is monotone in c: binary search the largest chunk that fits.
        let (mut lo, mut hi) = (0, g);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            let s = (0..self.kind.len())
                .filter(|&s| self.kind[s] != SlotKind::Data)
                .max_by_key(|&s| self.per_model[s])
                .expect("a slot passes the limit");
            let (t, op, shape) = &self.tensor[s];
            return Err(Error::Usage(format!(
                "plan: tensor {t} ({op} {shape:?}) needs {} for a single model, but this adapter binds at most {} per buffer: \
                 use a smaller batch",
                mib(self.per_model[s]),
                mib(max_binding)
            )));
        }
        Ok(lo)
    }
}

/// Whether one model of `graph` fits a pass on `gpu`: every per-model tensor within one
/// binding (more models are then split into chunks; fewer samples per model is the only
/// remedy otherwise).
pub(crate) fn one_model_fits(gpu: &Gpu, graph: &Graph, keep: &[TensorId], updates: &[Update]) -> bool {
    let (_, a) = liveness(graph, keep, updates, gpu.tuning().folds);
    let layout = Layout::new(graph, &a);
    let limits = gpu.limits();
    let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
    (0..layout.kind.len()).all(|s| layout.kind[s] == SlotKind::Data || pad16(layout.per_model[s]) <= max_binding)
}

pub(super) fn record_copies(encoder: &mut wgpu::CommandEncoder, copies: &[BufferCopy]) {
    for c in copies {
        encoder.copy_buffer_to_buffer(&c.src, c.src_offset, &c.dst, c.dst_offset, c.size);
    }
}

/// A buffer-to-buffer copy recorded between compute passes.
pub(super) struct BufferCopy {
    pub src: wgpu::Buffer,
    pub src_offset: u64,
    pub dst: wgpu::Buffer,
    pub dst_offset: u64,
    pub size: u64,
}

/// The dispatches of one chunk of models (all G when the batch is not split), with the
/// copies that stage its slice of whole-batch tensors that cannot be bound at an offset.
pub(super) struct Chunk {
    pub copy_in: Vec<BufferCopy>,
    pub dispatches: Vec<Dispatch>,
    pub copy_out: Vec<BufferCopy>,
}
