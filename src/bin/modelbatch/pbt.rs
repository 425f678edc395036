//! `modelbatch train --pbt K`: population-based training (Jaderberg et al., 2017). Every K
//! steps the models are scored on images held out of the training set; each of the worst
//! fraction becomes a copy of one of the best as many (weights, optimizer state and
//! hyper-parameters, on the GPU: "exploit"), then each hyper-parameter the run varies across
//! the models is scaled by 0.8 or 1.25 ("explore"; for momentum and Adam's betas, their
//! distance to 1). The choices come from a stream seeded by --seed and the step, so a
//! resumed run makes the same ones.

use modelbatch::nn::Rng;
use modelbatch::train::{Dataset, ShardedTrainer};
use modelbatch::HyperParam;
use serde_json::{json, Value};

use crate::cli::{CliError, Result, TrainArgs};
use crate::hyper::Hyper;

/// What one round did.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    pub step: u64,
    pub best: usize,
    pub best_top1: f64,
    pub mean_top1: f64,
    /// (replaced model, the model it copied).
    pub copies: Vec<(usize, usize)>,
}

pub struct Pbt {
    pub every: u64,
    pub fraction: f64,
    /// The held-out images the models are scored on.
    pub valid: Dataset,
    /// The hyper-parameters explored (those the run varies; the learning rate if none).
    explore: Vec<HyperParam>,
    seed: u64,
    rounds: Vec<Round>,
}

/// Checks the PBT flags (before any data is read): (every, fraction, validation images).
pub fn flags(a: &TrainArgs) -> Result<Option<(u64, f64, Option<usize>)>> {
    let Some(every) = a.pbt else {
        for (flag, given) in [("--pbt-fraction", a.pbt_fraction.is_some()), ("--pbt-valid", a.pbt_valid.is_some())] {
            if given {
                return Err(CliError::new(format!("{flag}: give --pbt K too")));
            }
        }
        return Ok(None);
    };
    if every == 0 {
        return Err(CliError::new("--pbt must be at least 1 (steps between rounds)"));
    }
    if a.models < 2 {
        return Err(CliError::new("--pbt needs at least 2 models (--models)"));
    }
    let fraction = a.pbt_fraction.unwrap_or(0.25);
    if !(fraction > 0.0 && fraction <= 0.5) {
        return Err(CliError::new(format!("--pbt-fraction {fraction}: must be above 0 and at most 0.5")));
    }
    if a.pbt_valid == Some(0) {
        return Err(CliError::new("--pbt-valid must be at least 1"));
    }
    Ok(Some((every, fraction, a.pbt_valid)))
}

impl Pbt {
    /// Splits `train` into what the models train on and the last `valid` images (default: a
    /// tenth of the set, at most 5,000) that score them.
    pub fn new(
        (every, fraction, valid): (u64, f64, Option<usize>),
        train: Dataset,
        h: &Hyper,
        seed: u64,
    ) -> Result<(Pbt, Dataset)> {
        let n = valid.unwrap_or((train.n / 10).clamp(1, 5000));
        if n >= train.n {
            return Err(CliError::new(format!(
                "--pbt-valid {n}: the training set has only {} images (some must remain to train on)",
                train.n
            )));
        }
        let keep = train.n - n;
        let explore: Vec<HyperParam> =
            h.columns.iter().filter(|c| c.varies()).filter_map(|c| HyperParam::from_name(c.name).ok()).collect();
        let explore = if explore.is_empty() { vec![HyperParam::Lr] } else { explore };
        let pbt =
            Pbt { every, fraction, valid: train.slice(keep..train.n, "pbt validation"), explore, seed, rounds: vec![] };
        Ok((pbt, train.slice(0..keep, &train.name)))
    }

    pub fn due(&self, step: u64) -> bool {
        step % self.every == 0
    }

    /// One round after `step` steps (every metric delivered, so that the divergence flags
    /// are current); returns the line to show.
    pub fn round(&mut self, t: &mut ShardedTrainer, step: u64) -> Result<String> {
        let ev = pollster::block_on(t.evaluate(&self.valid))?;
        let dead = t.dead();
        let g = dead.len();
        // Best first; diverged models last whatever their counts.
        let mut rank: Vec<usize> = (0..g).collect();
        rank.sort_by(|&x, &y| dead[x].cmp(&dead[y]).then(ev.top1[y].cmp(&ev.top1[x])).then(x.cmp(&y)));
        let k = ((g as f64 * self.fraction).ceil() as usize).clamp(1, g / 2);
        let mut rng = Rng::new(self.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x7062_7400);
        let mut copies = Vec::with_capacity(k);
        for &dst in &rank[g - k..] {
            let src = rank[rng.below(k)];
            pollster::block_on(t.copy_model(dst, src))?;
            for &h in &self.explore {
                let f = if rng.below(2) == 0 { 0.8 } else { 1.25 };
                let v = t.hyper(dst, h)?;
                let v = match h {
                    // Decay rates: their distance to 1 is scaled, so they stay below 1.
                    HyperParam::Momentum | HyperParam::Beta1 | HyperParam::Beta2 => 1.0 - (1.0 - v) * f,
                    HyperParam::Dampening => (v * f).min(1.0),
                    _ => v * f,
                };
                t.set_hyper(dst, h, v)?;
            }
            copies.push((dst, src));
        }
        let best = rank[0];
        let mean = (0..g).map(|m| ev.top1_frac(m)).sum::<f64>() / g as f64;
        let round = Round { step, best, best_top1: ev.top1_frac(best), mean_top1: mean, copies };
        let shown: Vec<String> = round.copies.iter().take(8).map(|(d, s)| format!("{d}<-{s}")).collect();
        let more = if round.copies.len() > 8 { " …" } else { "" };
        let line = format!(
            "pbt at step {step}: validation top-1 best {:.2}% (model {best}), mean {:.2}%; copied {}{more}",
            100.0 * round.best_top1,
            100.0 * mean,
            shown.join(" ")
        );
        self.rounds.push(round);
        Ok(line)
    }

    /// The rounds so far (summary.json, checkpoints).
    pub fn rounds_json(&self) -> Value {
        Value::Array(
            self.rounds
                .iter()
                .map(|r| {
                    json!({
                        "step": r.step,
                        "best": r.best,
                        "best_top1": r.best_top1,
                        "mean_top1": r.mean_top1,
                        "copies": r.copies,
                    })
                })
                .collect(),
        )
    }

    /// Takes up the rounds of a saved run.
    pub fn restore(&mut self, rounds: &Value) -> Result<()> {
        let bad = || CliError::new("checkpoint: bad pbt rounds in run.json");
        let list = rounds.as_array().ok_or_else(bad)?;
        self.rounds = list
            .iter()
            .map(|r| {
                Ok(Round {
                    step: r["step"].as_u64().ok_or_else(bad)?,
                    best: r["best"].as_u64().ok_or_else(bad)? as usize,
                    best_top1: r["best_top1"].as_f64().ok_or_else(bad)?,
                    mean_top1: r["mean_top1"].as_f64().ok_or_else(bad)?,
                    copies: serde_json::from_value(r["copies"].clone()).map_err(|_| bad())?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// `"pbt"` in summary.json.
    pub fn summary(&self) -> Value {
        json!({
            "every": self.every,
            "fraction": self.fraction,
            "validation_images": self.valid.n,
            "explored": self.explore.iter().map(|h| h.name()).collect::<Vec<_>>(),
            "rounds": self.rounds_json(),
        })
    }
}
