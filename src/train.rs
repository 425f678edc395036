//! A batched classifier trainer on host-side data (the GPU-resident Trainer of the roadmap
//! builds on it): one compiled training plan (forward, per-model mean cross-entropy,
//! backward, SGD) and one evaluation plan sharing its parameter buffers.

use crate::autograd;
use crate::data::MnistSplit;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{DType, Graph, Reduction, TensorId};
use crate::nn::{Mlp, Rng};
use crate::optim::{Sgd, SgdState};
use crate::plan::Plan;

/// Normalisation applied to pixels: `(p / 255 - mean) / std` (MNIST's usual values).
#[derive(Clone, Copy, Debug)]
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

impl Normalize {
    /// Appends images `idx` of `split`, normalised, to `x`, and their labels to `y`.
    pub fn gather(&self, split: &MnistSplit, idx: impl IntoIterator<Item = usize>, x: &mut Vec<f32>, y: &mut Vec<u32>) {
        for i in idx {
            x.extend(split.image(i).iter().map(|&p| (p as f32 / 255.0 - self.mean) / self.std));
            y.push(split.labels[i] as u32);
        }
    }
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

/// G batched MLP classifiers trained with SGD.
pub struct MlpClassifier {
    g: usize,
    batch: usize,
    eval_batch: usize,
    features: usize,
    mlp: Mlp,
    train: Plan,
    eval: Plan,
    x: TensorId,
    y: TensorId,
    loss: TensorId,
    ex: TensorId,
    ey: TensorId,
    eloss: TensorId,
    etop: TensorId,
    sgd: SgdState,
    xs: Vec<f32>,
    ys: Vec<u32>,
}

impl MlpClassifier {
    /// Compiles training (`batch` samples per model per step) and evaluation (`eval_batch`
    /// per run) plans for `g` MLPs of layer `sizes`, initialised from `seed` (model g from
    /// `seed + g`).
    pub fn new(
        gpu: &Gpu,
        g: usize,
        sizes: &[usize],
        batch: usize,
        eval_batch: usize,
        sgd: &Sgd,
        seed: u64,
    ) -> Result<Self> {
        let features = sizes[0];
        let mut graph = Graph::new(g);
        let x = graph.input("x", &[batch, features], DType::F32)?;
        let y = graph.input("y", &[batch], DType::U32)?;
        let (mlp, logits) = Mlp::build(&mut graph, sizes, x)?;
        let loss = graph.cross_entropy(logits, y, Reduction::Mean)?;
        let params: Vec<TensorId> = mlp.params().iter().map(|(_, t)| *t).collect();
        let grads = autograd::grad(&mut graph, loss, None, &params)?;
        let pairs: Vec<(TensorId, TensorId)> = params
            .iter()
            .zip(grads)
            .map(|(&p, d)| d.map(|d| (p, d)).ok_or_else(|| Error::Usage("a parameter has no gradient".into())))
            .collect::<Result<_>>()?;
        let sgd = sgd.attach(&mut graph, &pairs)?;
        let train = Plan::new(gpu, &graph, &[loss], sgd.updates())?;
        mlp.init(&train, seed)?;
        sgd.upload(&train)?;

        let mut eg = Graph::new(g);
        let ex = eg.input("x", &[eval_batch, features], DType::F32)?;
        let ey = eg.input("y", &[eval_batch], DType::U32)?;
        let (_, elogits) = Mlp::build(&mut eg, sizes, ex)?;
        let eloss = eg.cross_entropy(elogits, ey, Reduction::Sum)?;
        let etop = eg.topk_accuracy(elogits, ey, &[1, 5], true)?;
        let eval = Plan::sharing(gpu, &eg, &[eloss, etop], &[], &train)?;
        Ok(MlpClassifier {
            g,
            batch,
            eval_batch,
            features,
            mlp,
            train,
            eval,
            x,
            y,
            loss,
            ex,
            ey,
            eloss,
            etop,
            sgd,
            xs: Vec::with_capacity(g * batch * features),
            ys: Vec::with_capacity(g * batch),
        })
    }

    /// The MLP description (parameter names and tensors).
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// The training plan (to read or write parameters).
    pub fn plan(&self) -> &Plan {
        &self.train
    }

    /// One SGD step; model g trains on `split` images `batches[g]` (`batch` indices each).
    pub fn step(&mut self, split: &MnistSplit, batches: &[&[usize]], norm: Normalize) -> Result<()> {
        if batches.len() != self.g || batches.iter().any(|b| b.len() != self.batch) {
            return Err(Error::Usage(format!("step: need {} index lists of {} samples", self.g, self.batch)));
        }
        if split.rows * split.cols != self.features {
            return Err(Error::Usage(format!(
                "step: images have {} pixels, the model expects {}",
                split.rows * split.cols,
                self.features
            )));
        }
        self.xs.clear();
        self.ys.clear();
        for b in batches {
            norm.gather(split, b.iter().copied(), &mut self.xs, &mut self.ys);
        }
        self.train.write(self.x, &self.xs)?;
        self.train.write_u32(self.y, &self.ys)?;
        self.train.run()?;
        self.sgd.after_step(&self.train)
    }

    /// Per-model mean loss of the last step's batch (a readback: call it every K steps).
    pub async fn last_loss(&self) -> Result<Vec<f32>> {
        self.train.read(self.loss).await
    }

    /// Top-1/top-5 counts and mean loss of every model on the first
    /// `⌊n / eval_batch⌋ * eval_batch` images of `split`.
    pub async fn evaluate(&mut self, split: &MnistSplit, norm: Normalize) -> Result<Evaluation> {
        let chunks = split.n / self.eval_batch;
        if chunks == 0 {
            return Err(Error::Usage(format!(
                "evaluate: {} images, fewer than one batch of {}",
                split.n, self.eval_batch
            )));
        }
        let g = self.g;
        let mut ev =
            Evaluation { samples: chunks * self.eval_batch, top1: vec![0; g], top5: vec![0; g], loss: vec![0.0; g] };
        for c in 0..chunks {
            self.xs.clear();
            self.ys.clear();
            for _ in 0..g {
                norm.gather(split, c * self.eval_batch..(c + 1) * self.eval_batch, &mut self.xs, &mut self.ys);
            }
            self.eval.write(self.ex, &self.xs)?;
            self.eval.write_u32(self.ey, &self.ys)?;
            self.eval.run()?;
            let top = self.eval.read(self.etop).await?;
            let loss = self.eval.read(self.eloss).await?;
            for m in 0..g {
                ev.top1[m] += top[2 * m] as u64;
                ev.top5[m] += top[2 * m + 1] as u64;
                ev.loss[m] += loss[m] as f64;
            }
        }
        for l in &mut ev.loss {
            *l /= ev.samples as f64;
        }
        Ok(ev)
    }
}

/// Per-model sample orders: each model shuffles `0..n` each epoch with its own stream
/// (seeded by `seed`, the epoch and the model index).
pub struct Shuffler {
    orders: Vec<Vec<usize>>,
    seed: u64,
}

impl Shuffler {
    /// Orders for `g` models over `n` samples.
    pub fn new(g: usize, n: usize, seed: u64) -> Shuffler {
        Shuffler { orders: vec![(0..n).collect(); g], seed }
    }

    /// Reshuffles every model's order for `epoch`.
    pub fn shuffle(&mut self, epoch: usize) {
        let g = self.orders.len();
        for (m, order) in self.orders.iter_mut().enumerate() {
            let mut rng = Rng::new(self.seed.wrapping_mul(1_000_003).wrapping_add((epoch * g + m) as u64));
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
        }
    }

    /// Model batches of step `s` within the epoch: `batch` indices per model.
    pub fn batches(&self, s: usize, batch: usize) -> Vec<&[usize]> {
        self.orders.iter().map(|o| &o[s * batch..(s + 1) * batch]).collect()
    }
}
