//! Sharding a model batch over several devices: each device trains a consecutive slice of
//! the G models with its own [`Trainer`]; the steps are submitted to every device before any
//! is waited for, so the devices run concurrently. Model m gets the initial weights, data
//! order, dropout stream and hyper-parameters it would get in the unsharded batch, so the
//! results equal the single-device run (up to the summation order of kernels whose work
//! split depends on G, e.g. the convolution weight gradient's split-K).

use std::collections::VecDeque;

use super::{Dataset, Evaluation, Optimizer, StepMetrics, TrainConfig, Trainer};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::BatchModel;

/// Checks that `models` are consecutive slices of one batch of one spec, starting at model 0
/// (as [`BatchModel::sharded`] makes them); returns the whole batch's size.
pub(crate) fn check_slices<'m>(models: impl Iterator<Item = &'m BatchModel>) -> Result<usize> {
    let mut next = 0;
    let mut spec = None;
    for (i, m) in models.enumerate() {
        if m.first() != next || *spec.get_or_insert(m.spec()) != m.spec() {
            return Err(Error::Usage(format!(
                "shard {i} holds models {}..{}; shards must be consecutive slices of one batch (one spec) starting at 0",
                m.first(),
                m.first() + m.models()
            )));
        }
        next += m.models();
    }
    Ok(next)
}

/// A [`Trainer`] per device over the shards of one model batch (see
/// [`BatchModel::sharded`]). Metrics, evaluations and freeze flags come back in global model
/// order, as from one trainer.
pub struct ShardedTrainer<'a> {
    pub(super) shards: Vec<Trainer<'a>>,
    /// Metrics delivered by each shard and not yet merged with the other shards'.
    pending: Vec<VecDeque<StepMetrics>>,
}

impl<'a> ShardedTrainer<'a> {
    /// One trainer per `(gpu, model)` pair. `models` must be consecutive slices of one batch
    /// (as [`BatchModel::sharded`] makes them); `optimizer` and per-model schedules in
    /// `config` are given for the whole batch and sliced per shard.
    pub fn new(
        gpus: &'a [Gpu],
        models: &'a [BatchModel],
        data: &Dataset,
        optimizer: Optimizer,
        config: TrainConfig,
    ) -> Result<Self> {
        if gpus.len() != models.len() || models.is_empty() {
            return Err(Error::Usage(format!("{} devices for {} model shards", gpus.len(), models.len())));
        }
        let g = check_slices(models.iter())?;
        let mut shards = Vec::with_capacity(models.len());
        for (gpu, model) in gpus.iter().zip(models) {
            let range = model.first()..model.first() + model.models();
            let opt = match &optimizer {
                Optimizer::Sgd(s) => Optimizer::Sgd(s.slice(range.clone(), g)?),
                Optimizer::Adam(a) => Optimizer::Adam(a.slice(range.clone(), g)?),
            };
            let mut cfg = config.clone();
            if cfg.schedules.len() == g && g > 1 {
                cfg.schedules = cfg.schedules[range].to_vec();
            } else if cfg.schedules.len() != 1 {
                return Err(Error::Usage(format!(
                    "{} schedules given for {g} models (give 1 or {g})",
                    cfg.schedules.len()
                )));
            }
            shards.push(Trainer::new(gpu, model, data, opt, cfg)?);
        }
        let pending = vec![VecDeque::new(); shards.len()];
        Ok(ShardedTrainer { shards, pending })
    }

    /// The per-device trainers, in model order.
    pub fn shards(&self) -> &[Trainer<'a>] {
        &self.shards
    }

    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.shards[0].step()
    }

    /// Models frozen because their loss diverged (global order).
    pub fn dead(&self) -> Vec<bool> {
        self.shards.iter().flat_map(|t| t.dead().iter().copied()).collect()
    }

    /// Moves each shard's delivered metrics into `pending` and hands on the steps every shard
    /// has reported, merged into global model order.
    fn merge(&mut self, on_metrics: &mut impl FnMut(&[StepMetrics])) {
        let mut ready = Vec::new();
        while self.pending.iter().all(|q| !q.is_empty()) {
            let parts: Vec<StepMetrics> = self.pending.iter_mut().filter_map(VecDeque::pop_front).collect();
            let step = parts[0].step;
            debug_assert!(parts.iter().all(|p| p.step == step), "shards report steps in order");
            ready.push(StepMetrics {
                step,
                loss: parts.iter().flat_map(|p| p.loss.iter().copied()).collect(),
                correct: parts.iter().flat_map(|p| p.correct.iter().copied()).collect(),
            });
        }
        if !ready.is_empty() {
            on_metrics(&ready);
        }
    }

    /// Runs `steps` training steps on every shard, interleaved one step at a time so the
    /// devices work concurrently; merged metrics are delivered as every shard's readback
    /// arrives (every `metrics_every` steps). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn train(&mut self, steps: u64, mut on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        for _ in 0..steps {
            for (t, q) in self.shards.iter_mut().zip(&mut self.pending) {
                t.train(1, |m| q.extend(m.iter().cloned()))?;
            }
            self.merge(&mut on_metrics);
        }
        Ok(())
    }

    /// Reads back every step's metrics not yet delivered (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish(&mut self, mut on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        for (t, q) in self.shards.iter_mut().zip(&mut self.pending) {
            t.finish(|m| q.extend(m.iter().cloned()))?;
        }
        self.merge(&mut on_metrics);
        Ok(())
    }

    /// [`ShardedTrainer::train`] for any platform (awaits readbacks instead of blocking).
    pub async fn train_async(&mut self, steps: u64, mut on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        for _ in 0..steps {
            for (t, q) in self.shards.iter_mut().zip(&mut self.pending) {
                t.train_async(1, |m| q.extend(m.iter().cloned())).await?;
            }
            self.merge(&mut on_metrics);
        }
        Ok(())
    }

    /// [`ShardedTrainer::finish`] for any platform.
    pub async fn finish_async(&mut self, mut on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        for (t, q) in self.shards.iter_mut().zip(&mut self.pending) {
            t.finish_async(|m| q.extend(m.iter().cloned())).await?;
        }
        self.merge(&mut on_metrics);
        Ok(())
    }

    /// Models whose divergence was detected since the last call (global indices).
    pub fn take_newly_dead(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        for t in &mut self.shards {
            let first = t.model.first();
            out.extend(t.take_newly_dead().into_iter().map(|m| first + m));
        }
        out
    }

    /// Writes a checkpoint of every shard to `dir/shard-{i}`, all of them in one atomic
    /// step (replacing any previous checkpoint in `dir`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint(&mut self, dir: &std::path::Path) -> Result<()> {
        self.save_checkpoint_with(dir, &[])
    }

    /// [`ShardedTrainer::save_checkpoint`] with the caller's own `extra` files in `dir` (see
    /// [`Trainer::save_checkpoint_with`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint_with(&mut self, dir: &std::path::Path, extra: &[(&str, &[u8])]) -> Result<()> {
        let mut files = Vec::new();
        for (i, t) in self.shards.iter_mut().enumerate() {
            files.extend(t.checkpoint_files()?.into_iter().map(|(n, b)| (format!("shard-{i}/{n}"), b)));
        }
        super::checkpoint::add_extra(&mut files, extra)?;
        super::checkpoint::write_dir_atomic(dir, &files)
    }

    /// Resumes every shard from `dir/shard-{i}` (as [`ShardedTrainer::save_checkpoint`]
    /// writes them); the shards must split the batch as they did. The shards' steps and
    /// count are checked before any shard is changed.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn resume(&mut self, dir: &std::path::Path) -> Result<()> {
        let n = self.shards.len();
        let extra = dir.join(format!("shard-{n}"));
        if extra.exists() {
            return Err(Error::Io(format!(
                "{}: the checkpoint has more shards than the {n} devices of this run",
                extra.display()
            )));
        }
        let steps =
            (0..n).map(|i| super::checkpoint_step(&dir.join(format!("shard-{i}")))).collect::<Result<Vec<u64>>>()?;
        if steps.iter().any(|&s| s != steps[0]) {
            return Err(Error::Io(format!("{}: its shards are at different steps {steps:?}", dir.display())));
        }
        for (i, t) in self.shards.iter_mut().enumerate() {
            t.resume(&dir.join(format!("shard-{i}")))?;
        }
        Ok(())
    }

    /// Per-model results on every sample of `data`, in global model order.
    pub async fn evaluate(&self, data: &Dataset) -> Result<Evaluation> {
        let mut all = Evaluation { samples: data.n, top1: Vec::new(), top5: Vec::new(), loss: Vec::new() };
        for t in &self.shards {
            let e = t.evaluate(data).await?;
            all.top1.extend(e.top1);
            all.top5.extend(e.top5);
            all.loss.extend(e.loss);
        }
        Ok(all)
    }
}
