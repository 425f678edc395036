//! Learning-rate schedules, evaluated per model from its base learning rate and the step.

use crate::error::{Error, Result};

/// A learning-rate schedule (the multiplier of a model's base learning rate over steps).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The base learning rate throughout.
    Constant,
    /// Multiply by `gamma` every `step_size` steps (PyTorch's `StepLR`).
    Step {
        /// Steps between decays.
        step_size: u64,
        /// Decay factor.
        gamma: f32,
    },
    /// Cosine annealing from the base rate to `eta_min` over `t_max` steps, then `eta_min`
    /// (PyTorch's `CosineAnnealingLR` without restarts).
    Cosine {
        /// Steps to reach `eta_min`.
        t_max: u64,
        /// Final learning rate.
        eta_min: f32,
    },
    /// Linear warm-up from `base / steps` to `base` over `steps` steps, then `then` (whose
    /// step count starts after the warm-up).
    Warmup {
        /// Warm-up length in steps.
        steps: u64,
        /// Schedule after the warm-up.
        then: Box<Schedule>,
    },
}

impl Schedule {
    /// The learning rate of step `step` (0-based) for base rate `base`.
    pub fn lr(&self, base: f32, step: u64) -> f32 {
        match self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => base * gamma.powi((step / (*step_size).max(1)) as i32),
            Schedule::Cosine { t_max, eta_min } => {
                let t = step.min(*t_max) as f64 / (*t_max).max(1) as f64;
                (*eta_min as f64 + (base as f64 - *eta_min as f64) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
                    as f32
            }
            Schedule::Warmup { steps, then } => {
                if step < *steps {
                    base * (step + 1) as f32 / *steps as f32
                } else {
                    then.lr(base, step - steps)
                }
            }
        }
    }

    /// Parses `constant`, `step:SIZE:GAMMA`, `cosine:T_MAX[:ETA_MIN]`, each optionally after
    /// a `warmup:STEPS,` prefix (`warmup:100,cosine:1000`).
    pub fn parse(text: &str) -> Result<Schedule> {
        let expected = "expected constant, step:SIZE:GAMMA or cosine:T_MAX[:ETA_MIN], optionally after warmup:STEPS,";
        let bad = |why: String| Error::Usage(format!("schedule {text:?}: {why}"));
        // A count of steps (at least 1) or a finite number, named for the message.
        let steps = |name: &str, v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|&s| s > 0)
                .ok_or_else(|| bad(format!("{name} must be a whole number of steps, at least 1 (got {v:?})")))
        };
        let number = |name: &str, v: &str| {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(format!("{name} must be a finite number (got {v:?})")))
        };
        if let Some(rest) = text.strip_prefix("warmup:") {
            let (n, then) = rest.split_once(',').unwrap_or((rest, "constant"));
            let steps = steps("warmup STEPS", n)?;
            return Ok(Schedule::Warmup { steps, then: Box::new(Schedule::parse(then)?) });
        }
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["constant"] => Ok(Schedule::Constant),
            ["step", size, gamma] => {
                Ok(Schedule::Step { step_size: steps("step SIZE", size)?, gamma: number("step GAMMA", gamma)? })
            }
            ["cosine", t] => Ok(Schedule::Cosine { t_max: steps("cosine T_MAX", t)?, eta_min: 0.0 }),
            ["cosine", t, eta] => {
                Ok(Schedule::Cosine { t_max: steps("cosine T_MAX", t)?, eta_min: number("cosine ETA_MIN", eta)? })
            }
            _ => Err(bad(expected.into())),
        }
    }
}
