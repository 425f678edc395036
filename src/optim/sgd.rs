//! SGD with momentum, dampening, Nesterov and weight decay: PyTorch's `torch.optim.SGD`
//! update rule, each hyper-parameter per model, run as in-place kernels inside the plan.

use super::{HyperParam, PerModel};
use crate::error::{Error, Result};
use crate::graph::{DType, Graph, TensorId};
use crate::ops::optim::SGD_HYPER_WIDTH;
use crate::plan::{Plan, Update};

/// SGD configuration (builder).
#[derive(Clone, Debug)]
pub struct Sgd {
    lr: PerModel,
    momentum: PerModel,
    dampening: PerModel,
    weight_decay: PerModel,
    nesterov: PerModel,
}

impl Sgd {
    /// The hyper-parameters of models `models` out of `g` (for a shard of the batch).
    pub fn slice(&self, models: std::ops::Range<usize>, g: usize) -> Result<Sgd> {
        let r = || models.clone();
        Ok(Sgd {
            lr: self.lr.slice(r(), g, "sgd lr")?,
            momentum: self.momentum.slice(r(), g, "sgd momentum")?,
            dampening: self.dampening.slice(r(), g, "sgd dampening")?,
            weight_decay: self.weight_decay.slice(r(), g, "sgd weight_decay")?,
            nesterov: self.nesterov.slice(r(), g, "sgd nesterov")?,
        })
    }

    /// Plain SGD with learning rate `lr` (one value or one per model).
    pub fn new(lr: impl Into<PerModel>) -> Sgd {
        Sgd {
            lr: lr.into(),
            momentum: PerModel::Same(0.0),
            dampening: PerModel::Same(0.0),
            weight_decay: PerModel::Same(0.0),
            nesterov: PerModel::Same(0.0),
        }
    }

    /// Momentum factor.
    pub fn momentum(mut self, v: impl Into<PerModel>) -> Sgd {
        self.momentum = v.into();
        self
    }

    /// Dampening of the momentum.
    pub fn dampening(mut self, v: impl Into<PerModel>) -> Sgd {
        self.dampening = v.into();
        self
    }

    /// L2 weight decay added to the gradient.
    pub fn weight_decay(mut self, v: impl Into<PerModel>) -> Sgd {
        self.weight_decay = v.into();
        self
    }

    /// Nesterov momentum for every model.
    pub fn nesterov(mut self, on: bool) -> Sgd {
        self.nesterov = PerModel::Same(if on { 1.0 } else { 0.0 });
        self
    }

    /// Nesterov momentum per model.
    pub fn nesterov_each(mut self, on: &[bool]) -> Sgd {
        self.nesterov = PerModel::Each(on.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect());
        self
    }

    /// Per-model hyper-parameter rows `[lr, momentum, dampening, weight_decay, nesterov,
    /// started, 0, 0]`, checked as PyTorch checks them.
    pub fn rows(&self, g: usize) -> Result<Vec<[f32; SGD_HYPER_WIDTH]>> {
        let lr = self.lr.values(g, "sgd lr")?;
        let mom = self.momentum.values(g, "sgd momentum")?;
        let damp = self.dampening.values(g, "sgd dampening")?;
        let wd = self.weight_decay.values(g, "sgd weight_decay")?;
        let nest = self.nesterov.values(g, "sgd nesterov")?;
        (0..g)
            .map(|i| {
                let valid = |v: f32| v.is_finite() && v >= 0.0;
                if !valid(lr[i]) || !valid(mom[i]) || !valid(wd[i]) || !valid(damp[i]) {
                    return Err(Error::Usage(format!(
                        "sgd model {i}: lr {}, momentum {}, dampening {} and weight_decay {} must be finite and >= 0",
                        lr[i], mom[i], damp[i], wd[i]
                    )));
                }
                if nest[i] != 0.0 && (mom[i] <= 0.0 || damp[i] != 0.0) {
                    return Err(Error::Usage(format!(
                        "sgd model {i}: Nesterov momentum requires a momentum > 0 and zero dampening (momentum {}, dampening {})",
                        mom[i], damp[i]
                    )));
                }
                Ok([lr[i], mom[i], damp[i], wd[i], nest[i], 0.0, 0.0, 0.0])
            })
            .collect()
    }

    /// Appends the optimizer's tensors to `graph` (a momentum buffer per parameter and the
    /// hyper-parameter rows) and returns its state; pass `state.updates()` to [`Plan::new`].
    pub fn attach(&self, graph: &mut Graph, params_and_grads: &[(TensorId, TensorId)]) -> Result<SgdState> {
        let g = graph.models();
        let rows = self.rows(g)?;
        let hyper = graph.input("sgd.hyper", &[SGD_HYPER_WIDTH], DType::F32)?;
        let dead = graph.state("optim.dead", &[1])?;
        let mut updates = Vec::new();
        for (i, &(param, grad)) in params_and_grads.iter().enumerate() {
            let shape = graph.shape(param)[1..].to_vec();
            let momentum = graph.state(&format!("sgd.momentum.{i}"), &shape)?;
            updates.push(Update::Sgd { param, grad, momentum, hyper, dead });
        }
        Ok(SgdState { hyper, dead, rows, updates, started: false })
    }
}

/// The SGD tensors of a compiled graph and the host copy of the hyper-parameter rows.
#[derive(Clone, Debug)]
pub struct SgdState {
    hyper: TensorId,
    dead: TensorId,
    rows: Vec<[f32; SGD_HYPER_WIDTH]>,
    updates: Vec<Update>,
    started: bool,
}

impl SgdState {
    /// The in-place updates to compile into the plan.
    pub fn updates(&self) -> &[Update] {
        &self.updates
    }

    /// Per-model freeze flags `[G, 1]`: a model whose flag is non-zero is not updated
    /// (see [`Update::Guard`]).
    pub fn dead(&self) -> TensorId {
        self.dead
    }

    /// Writes the hyper-parameters; call once after compiling, and after changing them.
    pub fn upload(&self, plan: &Plan) -> Result<()> {
        plan.write(self.hyper, bytemuck::cast_slice(&self.rows))
    }

    /// Marks the first step as taken: from now on momentum accumulates (PyTorch sets the
    /// buffer to the first gradient). Call after each run; it writes only once.
    pub fn after_step(&mut self, plan: &Plan) -> Result<()> {
        if !self.started {
            self.started = true;
            for r in &mut self.rows {
                r[5] = 1.0;
            }
            self.upload(plan)?;
        }
        Ok(())
    }

    /// Whether the first step has run (momentum buffers hold values).
    pub fn started(&self) -> bool {
        self.started
    }

    /// Restores the first-step flag (checkpoints); written by the next upload.
    pub fn set_started(&mut self, started: bool) {
        self.started = started;
        for r in &mut self.rows {
            r[5] = if started { 1.0 } else { 0.0 };
        }
    }

    /// Sets model g's learning rate (schedules); takes effect at the next [`SgdState::upload`].
    pub fn set_lr(&mut self, g: usize, lr: f32) {
        self.rows[g][0] = lr;
    }

    fn column(h: HyperParam) -> Result<usize> {
        match h {
            HyperParam::Lr => Ok(0),
            HyperParam::Momentum => Ok(1),
            HyperParam::Dampening => Ok(2),
            HyperParam::WeightDecay => Ok(3),
            _ => Err(Error::Usage(format!("sgd has no hyper-parameter {}", h.name()))),
        }
    }

    /// Model g's value of `h` (for the learning rate: the one the next step uses).
    pub fn hyper(&self, g: usize, h: HyperParam) -> Result<f32> {
        Ok(self.rows[g][Self::column(h)?])
    }

    /// Sets model g's `h`, checked as [`Sgd::rows`] checks it (Nesterov momentum needs a
    /// momentum > 0 and no dampening); takes effect at the next [`SgdState::upload`].
    pub fn set_hyper(&mut self, g: usize, h: HyperParam, v: f32) -> Result<()> {
        let c = Self::column(h)?;
        let mut row = self.rows[g];
        row[c] = v;
        if !v.is_finite() || v < 0.0 {
            return Err(Error::Usage(format!("sgd model {g}: {} {v} must be finite and >= 0", h.name())));
        }
        if row[4] != 0.0 && (row[1] <= 0.0 || row[2] != 0.0) {
            return Err(Error::Usage(format!(
                "sgd model {g}: Nesterov momentum requires a momentum > 0 and zero dampening (momentum {}, dampening {})",
                row[1], row[2]
            )));
        }
        self.rows[g] = row;
        Ok(())
    }

    /// Model `dst` takes model `src`'s hyper-parameters (Nesterov included).
    pub fn copy_hyper(&mut self, dst: usize, src: usize) {
        // lr, momentum, dampening, weight_decay, nesterov (the started flag is global).
        for c in 0..5 {
            self.rows[dst][c] = self.rows[src][c];
        }
    }

    /// The hyper-parameter rows as the next upload writes them (checkpoints).
    pub fn rows(&self) -> &[[f32; SGD_HYPER_WIDTH]] {
        &self.rows
    }

    /// Restores the hyper-parameter rows (checkpoints); written by the next upload.
    pub fn set_rows(&mut self, rows: Vec<[f32; SGD_HYPER_WIDTH]>) -> Result<()> {
        if rows.len() != self.rows.len() {
            return Err(Error::Usage(format!("{} sgd rows for {} models", rows.len(), self.rows.len())));
        }
        self.rows = rows;
        let started = self.started;
        self.set_started(started);
        Ok(())
    }
}
