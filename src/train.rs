//! `Trainer`: the dataset lives on the GPU as bytes; each step gathers and normalises its
//! images in a kernel from an index buffer, runs forward, loss, backward and the optimizer
//! in one submit, and logs loss and accuracy on the GPU. Metrics come back every K steps
//! through an asynchronous readback that never stalls the queue. A model whose loss turns
//! NaN or infinite is frozen on the GPU in that very step and reported.

#[cfg(not(target_arch = "wasm32"))]
mod checkpoint;
mod ensemble;
mod eval;
mod micro;
mod population;
mod predict;
mod schedule;
mod shard;

use std::collections::VecDeque;

use crate::autograd;
use crate::data::MnistSplit;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{DType, Graph, Reduction, TensorId};
use crate::nn::{BatchModel, Built, Mode, ModelSpec, Rng};
use crate::optim::{Adam, AdamState, Sgd, SgdState};
use crate::plan::{Plan, Readback, Update};

#[cfg(not(target_arch = "wasm32"))]
pub use checkpoint::checkpoint_step;
pub use ensemble::{evaluate_ensemble, evaluate_ensemble_sharded, EnsembleEvaluation};
pub use eval::{evaluate, Evaluator};
pub use predict::Predictor;
pub use schedule::Schedule;
pub use shard::ShardedTrainer;

/// A labelled dataset of byte images (MNIST-like), uploaded to the GPU by the trainer.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// `n` images of `sample` shape, bytes, image after image.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Number of samples.
    pub n: usize,
    /// Per-sample shape, e.g. `[1, 28, 28]`.
    pub sample: Vec<usize>,
    /// Number of classes (labels are below it).
    pub classes: usize,
    /// Name used in errors.
    pub name: String,
}

impl Dataset {
    /// An MNIST split as a 10-class dataset of `[1, rows, cols]` images.
    pub fn from_mnist(split: &MnistSplit, name: &str) -> Dataset {
        Dataset {
            images: split.images.clone(),
            labels: split.labels.clone(),
            n: split.n,
            sample: vec![1, split.rows, split.cols],
            classes: 10,
            name: name.to_string(),
        }
    }

    /// The first `n` samples.
    pub fn head(&self, n: usize) -> Dataset {
        self.slice(0..n, &self.name)
    }

    /// Samples `range` (clipped to the set) as a data set called `name` (e.g. a validation
    /// split held out of the training set).
    pub fn slice(&self, range: std::ops::Range<usize>, name: &str) -> Dataset {
        let end = range.end.min(self.n);
        let start = range.start.min(end);
        let px: usize = self.sample.iter().product();
        Dataset {
            images: self.images[start * px..end * px].to_vec(),
            labels: self.labels[start..end].to_vec(),
            n: end - start,
            sample: self.sample.clone(),
            classes: self.classes,
            name: name.into(),
        }
    }

    fn check(&self, model: &BatchModel) -> Result<()> {
        let px: usize = self.sample.iter().product();
        let want: usize = model.spec().input.iter().product();
        if px != want || self.images.len() != self.n * px || self.labels.len() != self.n || self.n == 0 {
            return Err(Error::Usage(format!(
                "dataset {}: {} samples of shape {:?} ({} image bytes, {} labels) do not fit a model with input {:?}",
                self.name,
                self.n,
                self.sample,
                self.images.len(),
                self.labels.len(),
                model.spec().input
            )));
        }
        if let Some((i, &l)) = self.labels.iter().enumerate().find(|(_, &l)| l as usize >= self.classes) {
            return Err(Error::Usage(format!(
                "dataset {}: label {l} at index {i} is >= {} classes",
                self.name, self.classes
            )));
        }
        let outputs = model.spec().shapes()?.last().and_then(|s| s.last().copied()).unwrap_or(0);
        if outputs < self.classes {
            return Err(Error::Usage(format!(
                "dataset {}: {} classes, but the model has only {outputs} outputs",
                self.name, self.classes
            )));
        }
        Ok(())
    }
}

/// Normalisation applied to pixels: `(p / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    /// Mean subtracted after scaling to [0, 1].
    pub mean: f32,
    /// Standard deviation divided by.
    pub std: f32,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize { mean: 0.1307, std: 0.3081 }
    }
}

/// What a step graph computes from the model's output: the mode the model is built in, the
/// cross-entropy's reduction and the `k`s of the top-k counts.
pub(crate) struct Head<'a> {
    pub mode: Mode,
    pub reduction: Reduction,
    pub ks: &'a [u32],
}

/// The part every step graph shares (training, micro-batches, evaluation, benchmarks).
pub(crate) struct DataGraph {
    pub graph: Graph,
    /// The dataset resident on the GPU (`{prefix}.images`, `{prefix}.labels`).
    pub images: TensorId,
    pub labels: TensorId,
    /// `[G, size]` sample indices, written each run.
    pub indices: TensorId,
    pub built: Built,
    /// Per-model cross-entropy.
    pub loss: TensorId,
    /// Per-model top-k counts.
    pub top: TensorId,
}

/// No BatchNorm2d statistics given: for [`data_graph`]'s `bn_stats` where every layer
/// computes its own.
pub(crate) fn own_statistics(_: &mut Graph) -> Result<Vec<Option<TensorId>>> {
    Ok(Vec::new())
}

/// G models of `spec` on `size` samples each, gathered and normalised from a resident
/// dataset of `samples` samples, then `head`; the BatchNorm2d layers normalise with the
/// statistics `bn_stats` adds to the graph, where it gives them (see
/// [`ModelSpec::build_with`]; [`own_statistics`]: none).
#[allow(clippy::too_many_arguments)]
pub(crate) fn data_graph(
    spec: &ModelSpec,
    g: usize,
    prefix: &str,
    samples: usize,
    size: usize,
    norm: Normalize,
    head: Head,
    bn_stats: &mut dyn FnMut(&mut Graph) -> Result<Vec<Option<TensorId>>>,
) -> Result<DataGraph> {
    let px: usize = spec.input.iter().product();
    let mut graph = Graph::new(g);
    let images = graph.dataset(&format!("{prefix}.images"), samples * px)?;
    let labels = graph.dataset(&format!("{prefix}.labels"), samples)?;
    let indices = graph.input("indices", &[size], DType::U32)?;
    let x = graph.gather_images(images, indices, &spec.input, norm.mean, norm.std)?;
    let y = graph.gather_labels(labels, indices)?;
    let stats = bn_stats(&mut graph)?;
    let built = spec.build_with(&mut graph, x, head.mode, &stats)?;
    let loss = graph.cross_entropy(built.output, y, head.reduction)?;
    let top = graph.topk_accuracy(built.output, y, head.ks, true)?;
    Ok(DataGraph { graph, images, labels, indices, built, loss, top })
}

/// Which samples each step uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Each model shuffles each epoch with its own stream (seed + model index).
    PerModel,
    /// Every model uses one shuffled order per epoch (stream `seed`).
    Shared,
    /// Step s uses samples `[s*N, (s+1)*N)` modulo the set size, in file order, for every model.
    Sequential,
}

/// The optimizer and its per-model hyper-parameters.
#[derive(Clone, Debug)]
pub enum Optimizer {
    /// SGD (momentum, dampening, Nesterov, weight decay).
    Sgd(Sgd),
    /// Adam or AdamW.
    Adam(Adam),
}

pub(crate) enum OptState {
    Sgd(SgdState),
    Adam(AdamState),
}

impl OptState {
    /// Attaches `optimizer` to `pairs` (parameter, gradient) of `graph`: the state and the
    /// step's updates, the divergence guard on `loss` first (it freezes diverged models
    /// before anything updates them), then the optimizer's, then `after`.
    pub(crate) fn attach(
        optimizer: &Optimizer,
        graph: &mut Graph,
        pairs: &[(TensorId, TensorId)],
        loss: TensorId,
        after: &[Update],
    ) -> Result<(OptState, Vec<Update>)> {
        let opt = match optimizer {
            Optimizer::Sgd(s) => OptState::Sgd(s.attach(graph, pairs)?),
            Optimizer::Adam(a) => OptState::Adam(a.attach(graph, pairs)?),
        };
        let mut updates = vec![Update::Guard { loss, dead: opt.dead() }];
        updates.extend(opt.updates().iter().cloned());
        updates.extend(after.iter().cloned());
        Ok((opt, updates))
    }

    fn updates(&self) -> &[Update] {
        match self {
            OptState::Sgd(s) => s.updates(),
            OptState::Adam(s) => s.updates(),
        }
    }
    fn dead(&self) -> TensorId {
        match self {
            OptState::Sgd(s) => s.dead(),
            OptState::Adam(s) => s.dead(),
        }
    }
    fn upload(&self, plan: &Plan) -> Result<()> {
        match self {
            OptState::Sgd(s) => s.upload(plan),
            OptState::Adam(s) => s.upload(plan),
        }
    }
    fn after_step(&mut self, plan: &Plan) -> Result<()> {
        match self {
            OptState::Sgd(s) => s.after_step(plan),
            OptState::Adam(s) => s.after_step(plan),
        }
    }
    fn set_lr(&mut self, g: usize, lr: f32) {
        match self {
            OptState::Sgd(s) => s.set_lr(g, lr),
            OptState::Adam(s) => s.set_lr(g, lr),
        }
    }
}

/// How the trainer runs.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Images per model per step.
    pub batch_size: usize,
    /// Images per model per evaluation pass.
    pub eval_batch: usize,
    /// Sample order.
    pub order: Order,
    /// Seed of the shuffles and dropout streams.
    pub seed: u64,
    /// Pixel normalisation.
    pub normalize: Normalize,
    /// Metrics are read back every this many steps.
    pub metrics_every: usize,
    /// Learning-rate schedule per model (one entry: all models).
    pub schedules: Vec<Schedule>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 64,
            eval_batch: 500,
            order: Order::PerModel,
            seed: 0,
            normalize: Normalize::default(),
            metrics_every: 50,
            schedules: vec![Schedule::Constant],
        }
    }
}

/// Metrics of one training step, per model.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMetrics {
    /// Step number (0-based).
    pub step: u64,
    /// Mean cross-entropy of the step's batch before its update, per model.
    pub loss: Vec<f32>,
    /// Correct top-1 predictions in the step's batch, per model.
    pub correct: Vec<u32>,
}

/// Per-model results of an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Samples evaluated per model.
    pub samples: usize,
    /// Correct top-1 predictions per model.
    pub top1: Vec<u64>,
    /// Correct top-5 predictions per model.
    pub top5: Vec<u64>,
    /// Mean cross-entropy per model.
    pub loss: Vec<f64>,
}

impl Evaluation {
    /// Top-1 accuracy of model m.
    pub fn top1_frac(&self, m: usize) -> f64 {
        self.top1[m] as f64 / self.samples as f64
    }

    /// Top-5 accuracy of model m.
    pub fn top5_frac(&self, m: usize) -> f64 {
        self.top5[m] as f64 / self.samples as f64
    }
}

/// Trains a [`BatchModel`] on a [`Dataset`] resident on the GPU.
pub struct Trainer<'a> {
    gpu: &'a Gpu,
    model: &'a BatchModel,
    config: TrainConfig,
    plan: Plan,
    indices: TensorId,
    loss: TensorId,
    correct: TensorId,
    dropout_seeds: Vec<TensorId>,
    /// Micro-batch plans when one model's batch does not fit one pass (`plan` then applies
    /// the accumulated gradients).
    micro: Option<micro::Micro>,
    opt: OptState,
    base_lr: Vec<f32>,
    n: usize,
    step: u64,
    order: Vec<Vec<u32>>,
    order_epoch: Option<u64>,
    log: wgpu::Buffer,
    log_rows: usize,
    readbacks: [Readback; 2],
    next_readback: usize,
    /// Readbacks in flight, oldest first: (step after the last logged step, rows, slot).
    pending: VecDeque<(u64, usize, usize)>,
    flushed: u64,
    metrics: Vec<StepMetrics>,
    dead: Vec<bool>,
    newly_dead: Vec<usize>,
    idx_host: Vec<u32>,
}

fn lr_of(o: &Optimizer, g: usize) -> Result<Vec<f32>> {
    Ok(match o {
        Optimizer::Sgd(s) => s.rows(g)?.iter().map(|r| r[0]).collect(),
        Optimizer::Adam(a) => a.rows(g)?.iter().map(|r| r[0]).collect(),
    })
}

impl<'a> Trainer<'a> {
    /// Compiles the training step of `model` on `data` with `optimizer`: the dataset is
    /// uploaded once; nothing is allocated afterwards.
    pub fn new(
        gpu: &'a Gpu,
        model: &'a BatchModel,
        data: &Dataset,
        optimizer: Optimizer,
        config: TrainConfig,
    ) -> Result<Self> {
        data.check(model)?;
        let g = model.models();
        let nb = config.batch_size;
        if config.order != Order::Sequential && nb > data.n {
            return Err(Error::Usage(format!(
                "batch size {nb} is larger than the {} samples of {} (shuffled batches are drawn without replacement)",
                data.n, data.name
            )));
        }
        if nb == 0 || config.eval_batch == 0 || config.metrics_every == 0 {
            return Err(Error::Usage("batch size, evaluation batch and metrics interval must be at least 1".into()));
        }
        if config.schedules.len() != 1 && config.schedules.len() != g {
            return Err(Error::Usage(format!(
                "{} schedules given for {g} models (give 1 or {g})",
                config.schedules.len()
            )));
        }
        let head = Head { mode: Mode::Train, reduction: Reduction::Mean, ks: &[1] };
        let DataGraph { mut graph, images, labels, indices, built, loss, top: correct } =
            data_graph(model.spec(), g, "train", data.n, nb, config.normalize, head, &mut own_statistics)?;
        let params = built.params();
        let grads = autograd::grad(&mut graph, loss, None, &params)?;
        let pairs: Vec<(TensorId, TensorId)> = params
            .iter()
            .zip(grads)
            .map(|(&p, d)| d.map(|d| (p, d)).ok_or_else(|| Error::Usage("a parameter does not affect the loss".into())))
            .collect::<Result<_>>()?;
        let (opt, updates) = OptState::attach(&optimizer, &mut graph, &pairs, loss, &built.updates)?;
        // One pass per step, or micro-batches where one model's batch passes the binding limit.
        let (plan, loss, correct, opt, micro) = if crate::plan::one_model_fits(gpu, &graph, &[loss, correct], &updates)
        {
            let plan = model.plan(gpu, &graph, &[loss, correct], &updates)?;
            plan.write_bytes(images, &data.images)?;
            plan.write_bytes(labels, &data.labels)?;
            (plan, loss, correct, opt, None)
        } else {
            let (micro, mut apply) = micro::plan(gpu, model, data, nb, config.normalize)?;
            let (opt, updates) =
                OptState::attach(&optimizer, &mut apply.graph, &apply.params, apply.loss, &apply.clear)?;
            let keep = [apply.loss, apply.correct];
            let plan = Plan::sharing(gpu, &apply.graph, &keep, &updates, &micro.plans[0].plan)?;
            (plan, apply.loss, apply.correct, opt, Some(micro))
        };
        opt.upload(&plan)?;
        let log_rows = config.metrics_every;
        let log_bytes = (2 * log_rows * g * 4) as u64;
        let log = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("modelbatch metrics log"),
            size: log_bytes,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readbacks =
            [Readback::new(&gpu.device, &gpu.queue, log_bytes), Readback::new(&gpu.device, &gpu.queue, log_bytes)];
        let base_lr = lr_of(&optimizer, g)?;
        let mut t = Trainer {
            gpu,
            model,
            config,
            plan,
            indices,
            loss,
            correct,
            dropout_seeds: built.dropout_seeds,
            micro,
            opt,
            base_lr,
            n: data.n,
            step: 0,
            order: Vec::new(),
            order_epoch: None,
            log,
            log_rows,
            readbacks,
            next_readback: 0,
            pending: VecDeque::new(),
            flushed: 0,
            metrics: Vec::new(),
            dead: vec![false; g],
            newly_dead: Vec::new(),
            idx_host: vec![0; g * nb],
        };
        t.apply_schedule()?;
        Ok(t)
    }

    /// The compiled training step (for profiling and inspection).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Steps in one epoch (full batches).
    pub fn steps_per_epoch(&self) -> u64 {
        (self.n / self.config.batch_size).max(1) as u64
    }

    /// Models frozen because their loss diverged.
    pub fn dead(&self) -> &[bool] {
        &self.dead
    }

    /// The optimizer's base (unscheduled) learning rate per model.
    pub fn base_lr(&self) -> &[f32] {
        &self.base_lr
    }

    fn apply_schedule(&mut self) -> Result<()> {
        let g = self.model.models();
        for m in 0..g {
            let s = &self.config.schedules[if self.config.schedules.len() == 1 { 0 } else { m }];
            self.opt.set_lr(m, s.lr(self.base_lr[m], self.step));
        }
        self.opt.upload(&self.plan)
    }

    fn fill_indices(&mut self) {
        let (g, nb, n) = (self.model.models(), self.config.batch_size, self.n);
        let first = self.model.first();
        let spe = self.steps_per_epoch();
        let (epoch, s) = (self.step / spe, (self.step % spe) as usize);
        match self.config.order {
            Order::Sequential => {
                for m in 0..g {
                    for i in 0..nb {
                        self.idx_host[m * nb + i] = ((self.step as usize * nb + i) % n) as u32;
                    }
                }
            }
            Order::PerModel | Order::Shared => {
                if self.order_epoch != Some(epoch) {
                    // Stream of global model index m (PerModel), or stream 0 (Shared).
                    let streams = if self.config.order == Order::Shared { 0..1 } else { first..first + g };
                    self.order = streams
                        .map(|m| {
                            let mut rng = Rng::new(
                                self.config
                                    .seed
                                    .wrapping_add(m as u64)
                                    .wrapping_mul(0x2545_F491_4F6C_DD1D)
                                    .wrapping_add(epoch),
                            );
                            let mut o: Vec<u32> = (0..n as u32).collect();
                            for i in (1..n).rev() {
                                o.swap(i, rng.below(i + 1));
                            }
                            o
                        })
                        .collect();
                    self.order_epoch = Some(epoch);
                }
                for m in 0..g {
                    let o = &self.order[if self.order.len() == 1 { 0 } else { m }];
                    self.idx_host[m * nb..(m + 1) * nb].copy_from_slice(&o[s * nb..(s + 1) * nb]);
                }
            }
        }
    }

    /// Records and submits one training step (no readback).
    fn run_step(&mut self) -> Result<()> {
        let g = self.model.models();
        self.fill_indices();
        let seeds = |l: usize, offset: usize| -> Vec<u32> {
            (self.model.first()..self.model.first() + g)
                .flat_map(|m| {
                    let s = Rng::new(self.config.seed ^ ((l as u64 + 1) << 40) ^ m as u64).next_u64() as u32;
                    [s, self.step as u32, offset as u32]
                })
                .collect()
        };
        if let Some(micro) = &self.micro {
            // Each micro-batch: its slice of every model's indices and its part of the masks.
            let nb = self.config.batch_size;
            for &(i, first) in &micro.passes {
                let mp = &micro.plans[i];
                let idx: Vec<u32> =
                    (0..g).flat_map(|m| self.idx_host[m * nb + first..m * nb + first + mp.size].to_vec()).collect();
                mp.plan.write_u32(mp.indices, &idx)?;
                for (l, (&t, &elems)) in mp.dropout_seeds.iter().zip(&mp.dropout_elems).enumerate() {
                    mp.plan.write_u32(t, &seeds(l, first * elems))?;
                }
                mp.plan.run()?;
            }
        } else {
            self.plan.write_u32(self.indices, &self.idx_host)?;
            for (l, &t) in self.dropout_seeds.iter().enumerate() {
                self.plan.write_u32(t, &seeds(l, 0))?;
            }
        }
        let row = (self.step as usize) % self.log_rows;
        let loss_off = (row * g * 4) as u64;
        let acc_off = ((self.log_rows + row) * g * 4) as u64;
        self.plan.run_with(&[(self.loss, &self.log, loss_off), (self.correct, &self.log, acc_off)])?;
        self.opt.after_step(&self.plan)?;
        self.step += 1;
        if self.config.schedules.iter().any(|s| *s != Schedule::Constant) {
            self.apply_schedule()?;
        }
        Ok(())
    }

    /// Micro-batches per step: 1, or the number of parts a batch that does not fit the
    /// adapter's binding limit in one pass is split into.
    pub fn micro_batches(&self) -> usize {
        self.micro.as_ref().map_or(1, |m| m.micro_batches)
    }

    /// Passes over the batch per step: the micro-batches, times the phases a model with
    /// BatchNorm2d needs for them (two per BatchNorm2d layer, then one more than there are
    /// layers; see the `micro` module).
    pub fn passes(&self) -> usize {
        self.micro.as_ref().map_or(1, |m| m.passes.len())
    }

    /// Runs `steps` training steps. Metrics of completed readbacks are delivered to
    /// `on_metrics` as they arrive (read back every `metrics_every` steps, never stalling).
    /// Natively only: in the browser use [`Trainer::train_async`], which can wait for a
    /// staging buffer without blocking.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn train(&mut self, steps: u64, on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        let r = self.train_inner(steps, on_metrics);
        self.lost_context(r)
    }

    /// A failure caused by a lost device says so (the readback or submit that noticed it
    /// may report something vaguer).
    fn lost_context<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| match self.plan.check_lost() {
            Err(lost) if !e.to_string().contains("device lost") => {
                Error::Gpu(format!("training stopped after step {}: {lost}", self.step))
            }
            _ => e,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn train_inner(&mut self, steps: u64, mut on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        for _ in 0..steps {
            self.run_step()?;
            if self.step % self.log_rows as u64 == 0 {
                while self.readbacks[self.next_readback].busy() {
                    // Both staging buffers in flight: the older one finished long ago in practice.
                    self.collect_front(true)?;
                }
                self.flush_log()?;
            }
            self.collect(&mut on_metrics)?;
        }
        Ok(())
    }

    /// [`Trainer::train`] for any platform: where both staging buffers are still in flight
    /// it awaits the older one (in the browser the event loop completes it) instead of
    /// blocking. The same steps, metrics and weights as [`Trainer::train`].
    pub async fn train_async(&mut self, steps: u64, on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        let r = self.train_async_inner(steps, on_metrics).await;
        self.lost_context(r)
    }

    async fn train_async_inner(&mut self, steps: u64, mut on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        for _ in 0..steps {
            self.run_step()?;
            if self.step % self.log_rows as u64 == 0 {
                while self.readbacks[self.next_readback].busy() {
                    self.collect_front_async().await?;
                }
                self.flush_log()?;
            }
            self.collect(&mut on_metrics)?;
        }
        Ok(())
    }

    /// Starts reading back the log rows written since the last flush (the next staging
    /// buffer must be idle).
    fn flush_log(&mut self) -> Result<()> {
        if self.step == self.flushed {
            return Ok(());
        }
        let rows = (self.step - self.flushed) as usize;
        let rb = self.next_readback;
        self.readbacks[rb].start(&self.log, self.log.size())?;
        self.pending.push_back((self.step, rows, rb));
        self.flushed = self.step;
        self.next_readback = 1 - rb;
        Ok(())
    }

    /// Parses the oldest readback if it has completed (or, with `wait`, once it has; native).
    fn collect_front(&mut self, wait: bool) -> Result<bool> {
        let Some(&(_, _, rb)) = self.pending.front() else { return Ok(false) };
        let Some(bytes) = self.readbacks[rb].try_finish(wait)? else { return Ok(false) };
        self.parse_front(&bytes);
        Ok(true)
    }

    /// Waits for the oldest readback and parses it.
    async fn collect_front_async(&mut self) -> Result<bool> {
        let Some(&(_, _, rb)) = self.pending.front() else { return Ok(false) };
        let Some(bytes) = self.readbacks[rb].finish().await? else { return Ok(false) };
        self.parse_front(&bytes);
        Ok(true)
    }

    fn parse_front(&mut self, bytes: &[u8]) {
        let Some((end, rows, _)) = self.pending.pop_front() else { return };
        let g = self.model.models();
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(bytes);
        for step in end - rows as u64..end {
            let row = step as usize % self.log_rows;
            let loss = data[row * g..(row + 1) * g].to_vec();
            let acc = (self.log_rows + row) * g;
            let correct = data[acc..acc + g].iter().map(|&c| c as u32).collect();
            for (m, l) in loss.iter().enumerate() {
                if !l.is_finite() && !self.dead[m] {
                    self.dead[m] = true;
                    self.newly_dead.push(m);
                }
            }
            self.metrics.push(StepMetrics { step, loss, correct });
        }
    }

    /// Parses every readback that has completed, without waiting, and delivers the metrics.
    fn collect(&mut self, on_metrics: &mut impl FnMut(&[StepMetrics])) -> Result<()> {
        while self.collect_front(false)? {}
        self.deliver(on_metrics);
        Ok(())
    }

    fn deliver(&mut self, on_metrics: &mut impl FnMut(&[StepMetrics])) {
        if !self.metrics.is_empty() {
            on_metrics(&self.metrics);
            self.metrics.clear();
        }
    }

    /// Reads back every step's metrics not yet delivered (blocking; native only, see
    /// [`Trainer::finish_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn finish(&mut self, on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        let r = self.finish_inner(on_metrics);
        self.lost_context(r)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn finish_inner(&mut self, mut on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        while self.readbacks[self.next_readback].busy() {
            self.collect_front(true)?;
        }
        self.flush_log()?;
        while self.collect_front(true)? {}
        self.deliver(&mut on_metrics);
        Ok(())
    }

    /// Reads back every step's metrics not yet delivered, awaiting the readbacks (one map
    /// per `metrics_every` steps, at most two in flight); never blocks the browser's page.
    pub async fn finish_async(&mut self, mut on_metrics: impl FnMut(&[StepMetrics])) -> Result<()> {
        while self.readbacks[self.next_readback].busy() {
            self.collect_front_async().await?;
        }
        self.flush_log()?;
        while self.collect_front_async().await? {}
        self.deliver(&mut on_metrics);
        Ok(())
    }

    /// Models whose divergence was detected since the last call.
    pub fn take_newly_dead(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.newly_dead)
    }

    /// Per-model top-1/top-5 counts and mean loss on every sample of `data` (the same
    /// samples for all models).
    pub async fn evaluate(&self, data: &Dataset) -> Result<Evaluation> {
        data.check(self.model)?;
        evaluate(self.gpu, self.model, data, self.config.eval_batch, self.config.normalize).await
    }
}
