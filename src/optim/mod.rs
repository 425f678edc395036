//! Optimizers whose every hyper-parameter is per model (a length-G vector).

mod adam;
mod sgd;

pub use adam::{Adam, AdamState};
pub use sgd::{Sgd, SgdState};

use crate::error::{Error, Result};

/// One per-model hyper-parameter of an optimizer, to read or change during training
/// ([`Trainer::set_hyper`](crate::train::Trainer::set_hyper): population-based training's
/// "explore").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HyperParam {
    /// Learning rate (SGD, Adam): the base rate that a schedule scales.
    Lr,
    /// SGD momentum.
    Momentum,
    /// SGD dampening.
    Dampening,
    /// Weight decay (SGD and Adam: L2; AdamW: decoupled).
    WeightDecay,
    /// Adam's first-moment decay rate.
    Beta1,
    /// Adam's second-moment decay rate.
    Beta2,
    /// Adam's denominator term.
    Eps,
}

impl HyperParam {
    /// Every hyper-parameter.
    pub const ALL: [HyperParam; 7] = [
        HyperParam::Lr,
        HyperParam::Momentum,
        HyperParam::Dampening,
        HyperParam::WeightDecay,
        HyperParam::Beta1,
        HyperParam::Beta2,
        HyperParam::Eps,
    ];

    /// PyTorch's name for it (`lr`, `momentum`, `dampening`, `weight_decay`, `beta1`,
    /// `beta2`, `eps`).
    pub fn name(self) -> &'static str {
        match self {
            HyperParam::Lr => "lr",
            HyperParam::Momentum => "momentum",
            HyperParam::Dampening => "dampening",
            HyperParam::WeightDecay => "weight_decay",
            HyperParam::Beta1 => "beta1",
            HyperParam::Beta2 => "beta2",
            HyperParam::Eps => "eps",
        }
    }

    /// The hyper-parameter called `name` (as [`HyperParam::name`] gives it).
    pub fn from_name(name: &str) -> Result<HyperParam> {
        HyperParam::ALL.into_iter().find(|h| h.name() == name).ok_or_else(|| {
            let names: Vec<&str> = HyperParam::ALL.iter().map(|h| h.name()).collect();
            Error::Usage(format!("unknown hyper-parameter {name:?} (one of {})", names.join(", ")))
        })
    }
}

/// A hyper-parameter: one value for all models, or one value per model.
#[derive(Clone, Debug, PartialEq)]
pub enum PerModel {
    /// The same value for every model.
    Same(f32),
    /// Model g uses element g; the length must equal G.
    Each(Vec<f32>),
}

impl PerModel {
    /// `g` values spread evenly on a log scale from `a` to `b` (both > 0), inclusive.
    pub fn log_space(a: f32, b: f32, g: usize) -> PerModel {
        let (la, lb) = ((a as f64).ln(), (b as f64).ln());
        PerModel::Each(
            (0..g)
                .map(|i| {
                    let t = if g == 1 { 0.0 } else { i as f64 / (g - 1) as f64 };
                    (la + t * (lb - la)).exp() as f32
                })
                .collect(),
        )
    }

    /// `g` values spread evenly from `a` to `b`, inclusive.
    pub fn lin_space(a: f32, b: f32, g: usize) -> PerModel {
        PerModel::Each(
            (0..g)
                .map(|i| {
                    let t = if g == 1 { 0.0 } else { i as f64 / (g - 1) as f64 };
                    (a as f64 + t * (b as f64 - a as f64)) as f32
                })
                .collect(),
        )
    }

    /// The G values, or an error naming `what` if a per-model list has the wrong length.
    pub fn values(&self, g: usize, what: &str) -> Result<Vec<f32>> {
        match self {
            PerModel::Same(v) => Ok(vec![*v; g]),
            PerModel::Each(v) if v.len() == g => Ok(v.clone()),
            PerModel::Each(v) => Err(Error::Usage(format!("{what}: {} values given for {g} models", v.len()))),
        }
    }
}

impl PerModel {
    /// The values of models `models` out of `g` (a shard's hyper-parameters).
    pub fn slice(&self, models: std::ops::Range<usize>, g: usize, what: &str) -> Result<PerModel> {
        match self {
            PerModel::Same(v) => Ok(PerModel::Same(*v)),
            PerModel::Each(_) => Ok(PerModel::Each(self.values(g, what)?[models].to_vec())),
        }
    }
}

impl From<f32> for PerModel {
    fn from(v: f32) -> Self {
        PerModel::Same(v)
    }
}

impl From<Vec<f32>> for PerModel {
    fn from(v: Vec<f32>) -> Self {
        PerModel::Each(v)
    }
}

impl From<&[f32]> for PerModel {
    fn from(v: &[f32]) -> Self {
        PerModel::Each(v.to_vec())
    }
}
