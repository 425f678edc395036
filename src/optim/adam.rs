//! Adam and AdamW: PyTorch's `torch.optim.Adam` / `AdamW` update rules (bias correction
//! included), each hyper-parameter per model, run as in-place kernels inside the plan.

use super::{HyperParam, PerModel};
use crate::error::{Error, Result};
use crate::graph::{DType, Graph, TensorId};
use crate::ops::optim::ADAM_HYPER_WIDTH;
use crate::plan::{Plan, Update};

/// Adam / AdamW configuration (builder).
#[derive(Clone, Debug)]
pub struct Adam {
    lr: PerModel,
    beta1: PerModel,
    beta2: PerModel,
    eps: PerModel,
    weight_decay: PerModel,
    decoupled: bool,
}

impl Adam {
    /// The hyper-parameters of models `models` out of `g` (for a shard of the batch).
    pub fn slice(&self, models: std::ops::Range<usize>, g: usize) -> Result<Adam> {
        let r = || models.clone();
        Ok(Adam {
            lr: self.lr.slice(r(), g, "adam lr")?,
            beta1: self.beta1.slice(r(), g, "adam beta1")?,
            beta2: self.beta2.slice(r(), g, "adam beta2")?,
            eps: self.eps.slice(r(), g, "adam eps")?,
            weight_decay: self.weight_decay.slice(r(), g, "adam weight_decay")?,
            decoupled: self.decoupled,
        })
    }

    /// Adam (L2 weight decay added to the gradient) with PyTorch's defaults: betas
    /// (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn new(lr: impl Into<PerModel>) -> Adam {
        Adam {
            lr: lr.into(),
            beta1: PerModel::Same(0.9),
            beta2: PerModel::Same(0.999),
            eps: PerModel::Same(1e-8),
            weight_decay: PerModel::Same(0.0),
            decoupled: false,
        }
    }

    /// AdamW (decoupled weight decay) with PyTorch's defaults: weight decay 0.01.
    pub fn adamw(lr: impl Into<PerModel>) -> Adam {
        Adam { weight_decay: PerModel::Same(0.01), decoupled: true, ..Adam::new(lr) }
    }

    /// Exponential decay rates of the first and second moments.
    pub fn betas(mut self, beta1: impl Into<PerModel>, beta2: impl Into<PerModel>) -> Adam {
        self.beta1 = beta1.into();
        self.beta2 = beta2.into();
        self
    }

    /// Added to the denominator.
    pub fn eps(mut self, v: impl Into<PerModel>) -> Adam {
        self.eps = v.into();
        self
    }

    /// Weight decay (L2 for Adam, decoupled for AdamW).
    pub fn weight_decay(mut self, v: impl Into<PerModel>) -> Adam {
        self.weight_decay = v.into();
        self
    }

    /// Whether this is AdamW.
    pub fn is_adamw(&self) -> bool {
        self.decoupled
    }

    /// Per-model rows `[lr, beta1, beta2, eps, weight_decay, decoupled, 1, 1]` (the bias
    /// corrections are filled in per step), checked as PyTorch checks them.
    pub fn rows(&self, g: usize) -> Result<Vec<[f32; ADAM_HYPER_WIDTH]>> {
        let what = if self.decoupled { "adamw" } else { "adam" };
        let lr = self.lr.values(g, &format!("{what} lr"))?;
        let b1 = self.beta1.values(g, &format!("{what} beta1"))?;
        let b2 = self.beta2.values(g, &format!("{what} beta2"))?;
        let eps = self.eps.values(g, &format!("{what} eps"))?;
        let wd = self.weight_decay.values(g, &format!("{what} weight_decay"))?;
        (0..g)
            .map(|i| {
                let ok = lr[i].is_finite()
                    && lr[i] >= 0.0
                    && (0.0..1.0).contains(&b1[i])
                    && (0.0..1.0).contains(&b2[i])
                    && eps[i].is_finite()
                    && eps[i] >= 0.0
                    && wd[i].is_finite()
                    && wd[i] >= 0.0;
                if !ok {
                    return Err(Error::Usage(format!(
                        "{what} model {i}: need lr >= 0, betas in [0, 1), eps >= 0, weight_decay >= 0 (got lr {}, betas ({}, {}), eps {}, weight_decay {})",
                        lr[i], b1[i], b2[i], eps[i], wd[i]
                    )));
                }
                Ok([lr[i], b1[i], b2[i], eps[i], wd[i], if self.decoupled { 1.0 } else { 0.0 }, 1.0, 1.0])
            })
            .collect()
    }

    /// Appends the optimizer's tensors (two moment buffers per parameter, the hyper-parameter
    /// rows) to `graph`; pass `state.updates()` to [`Plan::new`].
    pub fn attach(&self, graph: &mut Graph, params_and_grads: &[(TensorId, TensorId)]) -> Result<AdamState> {
        let g = graph.models();
        let rows = self.rows(g)?;
        let hyper = graph.input("adam.hyper", &[ADAM_HYPER_WIDTH], DType::F32)?;
        let dead = graph.state("optim.dead", &[1])?;
        let mut updates = Vec::new();
        for (i, &(param, grad)) in params_and_grads.iter().enumerate() {
            let shape = graph.shape(param)[1..].to_vec();
            let exp_avg = graph.state(&format!("adam.exp_avg.{i}"), &shape)?;
            let exp_avg_sq = graph.state(&format!("adam.exp_avg_sq.{i}"), &shape)?;
            updates.push(Update::Adam { param, grad, exp_avg, exp_avg_sq, hyper, dead });
        }
        Ok(AdamState { hyper, dead, rows, steps: vec![0; g], updates })
    }
}

/// The Adam tensors of a compiled graph, the host copy of the rows and each model's step.
#[derive(Clone, Debug)]
pub struct AdamState {
    hyper: TensorId,
    dead: TensorId,
    rows: Vec<[f32; ADAM_HYPER_WIDTH]>,
    steps: Vec<u64>,
    updates: Vec<Update>,
}

impl AdamState {
    /// The in-place updates to compile into the plan.
    pub fn updates(&self) -> &[Update] {
        &self.updates
    }

    /// Per-model freeze flags `[G, 1]`: a model whose flag is non-zero is not updated
    /// (see [`Update::Guard`]).
    pub fn dead(&self) -> TensorId {
        self.dead
    }

    /// Writes the rows for the next step (bias corrections of step t = steps + 1).
    pub fn upload(&self, plan: &Plan) -> Result<()> {
        let rows: Vec<[f32; ADAM_HYPER_WIDTH]> = self
            .rows
            .iter()
            .zip(&self.steps)
            .map(|(r, &s)| {
                let t = (s + 1) as i32;
                let mut r = *r;
                r[6] = (1.0 - (r[1] as f64).powi(t)) as f32;
                r[7] = (1.0 - (r[2] as f64).powi(t)).sqrt() as f32;
                r
            })
            .collect();
        plan.write(self.hyper, bytemuck::cast_slice(&rows))
    }

    /// Counts the step that just ran and writes the next step's bias corrections.
    pub fn after_step(&mut self, plan: &Plan) -> Result<()> {
        for s in &mut self.steps {
            *s += 1;
        }
        self.upload(plan)
    }

    /// Sets model g's learning rate (schedules); written by the next [`AdamState::upload`].
    pub fn set_lr(&mut self, g: usize, lr: f32) {
        self.rows[g][0] = lr;
    }

    fn column(h: HyperParam) -> Result<usize> {
        match h {
            HyperParam::Lr => Ok(0),
            HyperParam::Beta1 => Ok(1),
            HyperParam::Beta2 => Ok(2),
            HyperParam::Eps => Ok(3),
            HyperParam::WeightDecay => Ok(4),
            _ => Err(Error::Usage(format!("adam has no hyper-parameter {}", h.name()))),
        }
    }

    /// Model g's value of `h` (for the learning rate: the one the next step uses).
    pub fn hyper(&self, g: usize, h: HyperParam) -> Result<f32> {
        Ok(self.rows[g][Self::column(h)?])
    }

    /// Sets model g's `h`, checked as [`Adam::rows`] checks it (betas in [0, 1), the others
    /// finite and >= 0); written by the next [`AdamState::upload`].
    pub fn set_hyper(&mut self, g: usize, h: HyperParam, v: f32) -> Result<()> {
        let c = Self::column(h)?;
        let ok = match h {
            HyperParam::Beta1 | HyperParam::Beta2 => (0.0..1.0).contains(&v),
            _ => v.is_finite() && v >= 0.0,
        };
        if !ok {
            let want = if c == 1 || c == 2 { "in [0, 1)" } else { "finite and >= 0" };
            return Err(Error::Usage(format!("adam model {g}: {} {v} must be {want}", h.name())));
        }
        self.rows[g][c] = v;
        Ok(())
    }

    /// Model `dst` takes model `src`'s hyper-parameters and step count (its bias
    /// corrections follow the copied moments).
    pub fn copy_hyper(&mut self, dst: usize, src: usize) {
        for c in 0..5 {
            self.rows[dst][c] = self.rows[src][c];
        }
        self.steps[dst] = self.steps[src];
    }

    /// The hyper-parameter rows (bias corrections not filled in; checkpoints).
    pub fn rows(&self) -> &[[f32; ADAM_HYPER_WIDTH]] {
        &self.rows
    }

    /// Restores the hyper-parameter rows (checkpoints); written by the next upload.
    pub fn set_rows(&mut self, rows: Vec<[f32; ADAM_HYPER_WIDTH]>) -> Result<()> {
        if rows.len() != self.rows.len() {
            return Err(Error::Usage(format!("{} adam rows for {} models", rows.len(), self.rows.len())));
        }
        self.rows = rows;
        Ok(())
    }

    /// Restores the per-model step counters (checkpoints); written by the next upload.
    pub fn set_steps(&mut self, steps: Vec<u64>) {
        self.steps = steps;
    }

    /// Steps taken per model (for checkpoints).
    pub fn steps(&self) -> &[u64] {
        &self.steps
    }
}
