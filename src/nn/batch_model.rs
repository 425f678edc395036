//! `BatchModel`: G independent models of one [`ModelSpec`], their weights resident on the
//! GPU, with per-model state dicts in and out (safetensors, PyTorch names).

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{Graph, TensorId};
#[cfg(not(target_arch = "wasm32"))]
use crate::io::write_atomic;
use crate::io::{decode_state, encode_state};
use crate::nn::build::{StateEntry, TensorKind};
use crate::nn::spec::ModelSpec;
use crate::plan::Plan;
use crate::plan::Update;

/// G independent models: the weights and buffers live in GPU buffers owned by a store plan;
/// training and evaluation plans made with [`BatchModel::plan`] use those same buffers.
pub struct BatchModel {
    spec: ModelSpec,
    g: usize,
    first: usize,
    /// Models in the whole batch where known (`new`, `sharded`; not `new_slice`): the last
    /// slice's `load_dir` refuses a directory with more models.
    total: Option<usize>,
    entries: Vec<StateEntry>,
    tensors: Vec<TensorId>,
    store: Plan,
}

impl BatchModel {
    /// `g` models of `spec`, model m initialised PyTorch-style from the stream `seed + m`.
    pub fn new(gpu: &Gpu, spec: &ModelSpec, g: usize, seed: u64) -> Result<BatchModel> {
        let mut model = BatchModel::new_slice(gpu, spec, 0..g, seed)?;
        model.total = Some(g);
        Ok(model)
    }

    /// Models `models` of a larger batch (a shard): local model m is global model
    /// `models.start + m`, initialised from the stream `seed + models.start + m`, and a
    /// [`Trainer`](crate::train::Trainer) gives it that model's data order and dropout stream,
    /// so a sharded batch trains exactly as the whole batch would.
    pub fn new_slice(gpu: &Gpu, spec: &ModelSpec, models: std::ops::Range<usize>, seed: u64) -> Result<BatchModel> {
        let (first, g) = (models.start, models.len());
        if g == 0 {
            return Err(Error::Usage("a model batch needs at least one model".into()));
        }
        let entries = spec.state_entries()?;
        let mut graph = Graph::new(g);
        let tensors = entries
            .iter()
            .map(|e| match e.kind {
                TensorKind::Param => graph.param(&e.name, &e.graph_shape()),
                _ => graph.state(&e.name, &e.graph_shape()),
            })
            .collect::<Result<Vec<_>>>()?;
        let store = Plan::new(gpu, &graph, &[], &[])?;
        let model = BatchModel { spec: spec.clone(), g, first, total: None, entries, tensors, store };
        for m in 0..g {
            model.load_model_values(m, &spec.init_model(seed, first + m)?)?;
        }
        Ok(model)
    }

    /// The architecture.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Number of models G.
    pub fn models(&self) -> usize {
        self.g
    }

    /// Global index of this batch's model 0 (non-zero for a shard, see
    /// [`BatchModel::new_slice`]).
    pub fn first(&self) -> usize {
        self.first
    }

    /// `g` models split over `gpus` for a [`ShardedTrainer`](crate::train::ShardedTrainer):
    /// consecutive slices as even as possible (the first shards take the remainder).
    pub fn sharded(gpus: &[Gpu], spec: &ModelSpec, g: usize, seed: u64) -> Result<Vec<BatchModel>> {
        if gpus.is_empty() || g < gpus.len() {
            return Err(Error::Usage(format!("cannot shard {g} models over {} devices", gpus.len())));
        }
        let mut start = 0;
        gpus.iter()
            .enumerate()
            .map(|(i, gpu)| {
                let len = g / gpus.len() + usize::from(i < g % gpus.len());
                start += len;
                let mut model = BatchModel::new_slice(gpu, spec, start - len..start, seed)?;
                model.total = Some(g);
                Ok(model)
            })
            .collect()
    }

    /// The state-dict entries of one model, in order.
    pub fn entries(&self) -> &[StateEntry] {
        &self.entries
    }

    /// Compiles `graph` (built with [`ModelSpec::build`]) so that its parameters and buffers
    /// are this model's.
    pub fn plan(&self, gpu: &Gpu, graph: &Graph, keep: &[TensorId], updates: &[Update]) -> Result<Plan> {
        if graph.models() != self.g {
            return Err(Error::Usage(format!("graph has {} models, the model batch {}", graph.models(), self.g)));
        }
        Plan::sharing(gpu, graph, keep, updates, &self.store)
    }

    fn load_model_values(&self, m: usize, values: &[Vec<f32>]) -> Result<()> {
        for (t, v) in self.tensors.iter().zip(values) {
            self.store.write_model(*t, m, v)?;
        }
        Ok(())
    }

    /// Model `m`'s state dict (values in [`BatchModel::entries`] order).
    pub async fn state_dict(&self, m: usize) -> Result<Vec<Vec<f32>>> {
        self.check_model(m)?;
        let all = self.state_dicts_batched().await?;
        Ok(all
            .into_iter()
            .zip(&self.entries)
            .map(|(v, e)| v[m * e.numel().max(1)..(m + 1) * e.numel().max(1)].to_vec())
            .collect())
    }

    /// Every model's state at once: per entry, `G * numel` values (model-major).
    pub async fn state_dicts_batched(&self) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            out.push(self.store.read(*t).await?);
        }
        Ok(out)
    }

    /// Makes model `dst` a copy of model `src` (every parameter and buffer), on the GPU
    /// without a readback.
    pub fn copy_model(&self, dst: usize, src: usize) -> Result<()> {
        self.check_model(dst)?;
        self.check_model(src)?;
        self.store.copy_model(&self.tensors, dst, src)
    }

    /// Replaces model `m`'s state (values in entry order, each of the entry's size).
    pub fn load_state_dict(&self, m: usize, values: &[Vec<f32>]) -> Result<()> {
        self.check_model(m)?;
        if values.len() != self.entries.len() {
            return Err(Error::Usage(format!(
                "state dict has {} tensors, the model {}",
                values.len(),
                self.entries.len()
            )));
        }
        for (e, v) in self.entries.iter().zip(values) {
            if v.len() != e.numel().max(1) {
                return Err(Error::Usage(format!(
                    "{}: {} values given, shape {:?} holds {}",
                    e.name,
                    v.len(),
                    e.shape,
                    e.numel()
                )));
            }
        }
        self.load_model_values(m, values)
    }

    fn check_model(&self, m: usize) -> Result<()> {
        if m >= self.g {
            return Err(Error::Usage(format!("model {m} does not exist: the batch has {} models", self.g)));
        }
        Ok(())
    }

    /// Model `m` as safetensors bytes (PyTorch names and dtypes).
    pub async fn to_safetensors(&self, m: usize) -> Result<Vec<u8>> {
        encode_state(&self.entries, &self.state_dict(m).await?, None)
    }

    /// Loads model `m` from safetensors bytes; `what` names the source in errors.
    pub fn load_safetensors(&self, m: usize, bytes: &[u8], what: &str) -> Result<()> {
        self.check_model(m)?;
        let values = decode_state(bytes, what, &self.entries, None)?;
        self.load_model_values(m, &values)
    }

    /// All models in one safetensors file with a leading G dimension.
    pub async fn to_safetensors_batched(&self) -> Result<Vec<u8>> {
        encode_state(&self.entries, &self.state_dicts_batched().await?, Some(self.g))
    }

    /// Loads all models from one batched safetensors file.
    pub fn load_safetensors_batched(&self, bytes: &[u8], what: &str) -> Result<()> {
        let values = decode_state(bytes, what, &self.entries, Some(self.g))?;
        for (t, v) in self.tensors.iter().zip(values) {
            self.store.write(*t, &v)?;
        }
        Ok(())
    }

    /// Writes `dir/model-{m}.safetensors` for every model (each written atomically); `m` is
    /// the global index (`first() + local`), so the shards of a batch fill one directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("{}: cannot create directory: {e}", dir.display())))?;
        let all = pollster::block_on(self.state_dicts_batched())?;
        for m in 0..self.g {
            let values: Vec<Vec<f32>> = all
                .iter()
                .zip(&self.entries)
                .map(|(v, e)| v[m * e.numel().max(1)..(m + 1) * e.numel().max(1)].to_vec())
                .collect();
            let path = dir.join(format!("model-{}.safetensors", self.first + m));
            write_atomic(&path, &encode_state(&self.entries, &values, None)?)?;
        }
        Ok(())
    }

    /// Loads `dir/model-{m}.safetensors` for every model (global indices, as
    /// [`BatchModel::save_dir`] writes them); checks the files first, so on any error nothing
    /// is loaded. A whole batch, or the last shard of [`BatchModel::sharded`], also refuses a
    /// directory that holds a model past the batch's last (the next index's file).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dir(&self, dir: &Path) -> Result<()> {
        let mut all = Vec::with_capacity(self.g);
        for m in self.first..self.first + self.g {
            let path = dir.join(format!("model-{m}.safetensors"));
            let bytes = std::fs::read(&path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
            all.push(decode_state(&bytes, &path.display().to_string(), &self.entries, None)?);
        }
        if let Some(total) = self.total.filter(|&t| t == self.first + self.g) {
            let extra = dir.join(format!("model-{total}.safetensors"));
            if extra.exists() {
                return Err(Error::Io(format!(
                    "{}: found {} but the batch has {total} models (model-0 … model-{})",
                    dir.display(),
                    extra.display(),
                    total - 1
                )));
            }
        }
        for (m, values) in all.iter().enumerate() {
            self.load_model_values(m, values)?;
        }
        Ok(())
    }
}
