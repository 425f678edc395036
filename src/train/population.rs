//! Population-based training's two moves, between steps: "exploit" ([`Trainer::copy_model`]:
//! a model becomes a clone of a better one, weights and optimizer state copied on the GPU)
//! and "explore" ([`Trainer::set_hyper`]: a model's hyper-parameter changes from the next
//! step on). Both keep every other model bitwise as it was.

use super::{OptState, ShardedTrainer, Trainer};
use crate::error::{Error, Result};
use crate::graph::TensorId;
use crate::optim::HyperParam;

impl OptState {
    pub(crate) fn hyper(&self, m: usize, h: HyperParam) -> Result<f32> {
        match self {
            OptState::Sgd(s) => s.hyper(m, h),
            OptState::Adam(a) => a.hyper(m, h),
        }
    }

    fn set_hyper(&mut self, m: usize, h: HyperParam, v: f32) -> Result<()> {
        match self {
            OptState::Sgd(s) => s.set_hyper(m, h, v),
            OptState::Adam(a) => a.set_hyper(m, h, v),
        }
    }

    fn copy_hyper(&mut self, dst: usize, src: usize) {
        match self {
            OptState::Sgd(s) => s.copy_hyper(dst, src),
            OptState::Adam(a) => a.copy_hyper(dst, src),
        }
    }
}

impl Trainer<'_> {
    fn check_model(&self, m: usize) -> Result<()> {
        let g = self.model.models();
        if m >= g {
            return Err(Error::Usage(format!("model {m} does not exist: the batch has {g} models")));
        }
        Ok(())
    }

    /// The optimizer's per-model state tensors (momentum buffers or Adam moments, freeze
    /// flags).
    pub(crate) fn optimizer_tensors(&self) -> Vec<(String, TensorId)> {
        self.plan
            .states()
            .into_iter()
            .filter(|(n, _)| n.starts_with("sgd.") || n.starts_with("adam.") || n.starts_with("optim."))
            .collect()
    }

    /// Model `dst` becomes a clone of model `src`: parameters, BatchNorm estimates, optimizer
    /// state (momentum buffers, or Adam's moments and step count), hyper-parameters (the
    /// base learning rate included) and divergence flag, copied on the GPU after the steps
    /// already submitted, without a readback. `dst` keeps its own data order, dropout stream,
    /// schedule and metrics; from the next step on it trains as `src` would on its data.
    pub fn copy_model(&mut self, dst: usize, src: usize) -> Result<()> {
        self.check_model(dst)?;
        self.check_model(src)?;
        if dst == src {
            return Ok(());
        }
        self.model.copy_model(dst, src)?;
        let tensors: Vec<TensorId> = self.optimizer_tensors().into_iter().map(|(_, t)| t).collect();
        self.plan.copy_model(&tensors, dst, src)?;
        self.opt.copy_hyper(dst, src);
        self.base_lr[dst] = self.base_lr[src];
        self.dead[dst] = self.dead[src];
        self.apply_schedule()
    }

    /// Model `m`'s value of `h`: for [`HyperParam::Lr`] the base rate (before a schedule
    /// scales it). An error for a hyper-parameter the optimizer does not have.
    pub fn hyper(&self, m: usize, h: HyperParam) -> Result<f32> {
        self.check_model(m)?;
        match h {
            HyperParam::Lr => Ok(self.base_lr[m]),
            _ => self.opt.hyper(m, h),
        }
    }

    /// Sets model `m`'s `h` from the next step on (for [`HyperParam::Lr`] the base rate,
    /// which the model's schedule scales), checked as the optimizer's constructor checks
    /// it. Checkpoints keep it.
    pub fn set_hyper(&mut self, m: usize, h: HyperParam, v: f32) -> Result<()> {
        self.check_model(m)?;
        // Checked (and for the other hyper-parameters set) through the optimizer's rule.
        self.opt.set_hyper(m, h, v)?;
        if h == HyperParam::Lr {
            self.base_lr[m] = v;
        }
        self.apply_schedule()
    }
}

impl ShardedTrainer<'_> {
    /// The shard holding global model `m`, and `m`'s index in it.
    fn locate(&self, m: usize) -> Result<(usize, usize)> {
        for (i, t) in self.shards.iter().enumerate() {
            let first = t.model.first();
            if (first..first + t.model.models()).contains(&m) {
                return Ok((i, m - first));
            }
        }
        let g: usize = self.shards.iter().map(|t| t.model.models()).sum();
        Err(Error::Usage(format!("model {m} does not exist: the batch has {g} models")))
    }

    /// [`Trainer::copy_model`] with global indices. Between shards on different devices
    /// the model's tensors are read back from one and written to the other.
    pub async fn copy_model(&mut self, dst: usize, src: usize) -> Result<()> {
        let (di, dl) = self.locate(dst)?;
        let (si, sl) = self.locate(src)?;
        if di == si {
            return self.shards[di].copy_model(dl, sl);
        }
        let from = &self.shards[si];
        let weights = from.model.state_dict(sl).await?;
        let mut opt = Vec::new();
        for (name, t) in from.optimizer_tensors() {
            let all = from.plan.read(t).await?;
            let per = all.len() / from.model.models();
            opt.push((name, all[sl * per..(sl + 1) * per].to_vec()));
        }
        let hyper: Vec<(HyperParam, f32)> =
            HyperParam::ALL.into_iter().filter_map(|h| from.hyper(sl, h).ok().map(|v| (h, v))).collect();
        let (dead, steps) = (from.dead[sl], adam_steps(from, sl));
        let to = &mut self.shards[di];
        to.model.load_state_dict(dl, &weights)?;
        for (name, values) in opt {
            let t = to.plan.find(&name).ok_or_else(|| Error::Usage(format!("shard {di} has no {name}")))?;
            to.plan.write_model(t, dl, &values)?;
        }
        for (h, v) in hyper {
            to.set_hyper(dl, h, v)?;
        }
        if let (OptState::Adam(a), Some(s)) = (&mut to.opt, steps) {
            let mut all = a.steps().to_vec();
            all[dl] = s;
            a.set_steps(all);
        }
        to.dead[dl] = dead;
        to.apply_schedule()
    }

    /// [`Trainer::hyper`] with a global model index.
    pub fn hyper(&self, m: usize, h: HyperParam) -> Result<f32> {
        let (i, l) = self.locate(m)?;
        self.shards[i].hyper(l, h)
    }

    /// [`Trainer::set_hyper`] with a global model index.
    pub fn set_hyper(&mut self, m: usize, h: HyperParam, v: f32) -> Result<()> {
        let (i, l) = self.locate(m)?;
        self.shards[i].set_hyper(l, h, v)
    }
}

fn adam_steps(t: &Trainer, m: usize) -> Option<u64> {
    match &t.opt {
        OptState::Adam(a) => Some(a.steps()[m]),
        OptState::Sgd(_) => None,
    }
}
