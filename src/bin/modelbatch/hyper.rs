//! Per-model hyper-parameters from the command line: `V`, `V1,V2,…` (exactly G values),
//! `log:A:B` or `lin:A:B`, and the optimizer built from them.

use modelbatch::optim::Adam;
use modelbatch::train::Optimizer;
use modelbatch::{PerModel, Sgd};

use crate::cli::{CliError, OptKind, Result, TrainArgs};

const FORMS: &str = "one value, G comma-separated values, log:A:B or lin:A:B";

/// Parses one per-model value spec into exactly `g` values. `flag` names it in errors.
pub fn parse_per_model(flag: &str, text: &str, g: usize) -> Result<Vec<f32>> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("log:") {
        let (a, b) = spread_ends(flag, "log", rest)?;
        if a <= 0.0 || b <= 0.0 {
            return Err(CliError::new(format!("{flag} {text:?}: log:A:B needs A > 0 and B > 0")));
        }
        return Ok(each(PerModel::log_space(a, b, g)));
    }
    if let Some(rest) = text.strip_prefix("lin:") {
        let (a, b) = spread_ends(flag, "lin", rest)?;
        return Ok(each(PerModel::lin_space(a, b, g)));
    }
    let values: Vec<f32> = text.split(',').map(|v| number(flag, text, v)).collect::<Result<_>>()?;
    match values.len() {
        1 => Ok(vec![values[0]; g]),
        n if n == g => Ok(values),
        n => Err(CliError::new(format!(
            "{flag} {text:?}: {n} values given for {g} models (--models {g}); give {}",
            FORMS.replace('G', &g.to_string())
        ))),
    }
}

fn each(p: PerModel) -> Vec<f32> {
    match p {
        PerModel::Same(v) => vec![v],
        PerModel::Each(v) => v,
    }
}

fn number(flag: &str, text: &str, v: &str) -> Result<f32> {
    v.trim()
        .parse::<f32>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| CliError::new(format!("{flag} {text:?}: {:?} is not a finite number; give {FORMS}", v.trim())))
}

fn spread_ends(flag: &str, kind: &str, rest: &str) -> Result<(f32, f32)> {
    let bad =
        || CliError::new(format!("{flag} \"{kind}:{rest}\": expected {kind}:A:B with two finite numbers A and B"));
    let (a, b) = rest.split_once(':').ok_or_else(bad)?;
    let parse = |s: &str| s.trim().parse::<f32>().ok().filter(|x| x.is_finite()).ok_or_else(bad);
    Ok((parse(a)?, parse(b)?))
}

/// One hyper-parameter's name and its G values, as used.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: &'static str,
    pub values: Vec<f32>,
}

impl Column {
    /// Whether the models differ in this hyper-parameter.
    pub fn varies(&self) -> bool {
        self.values.iter().any(|v| v.to_bits() != self.values[0].to_bits())
    }
}

/// The optimizer and the hyper-parameters every model actually uses.
pub struct Hyper {
    pub kind: OptKind,
    pub optimizer: Optimizer,
    pub columns: Vec<Column>,
    /// SGD only: Nesterov momentum.
    pub nesterov: Option<bool>,
}

/// Builds the optimizer from the flags, checking every value before any GPU work.
pub fn from_args(a: &TrainArgs, g: usize) -> Result<Hyper> {
    let kind = a.optimizer;
    let only = |flag: &str, given: bool, for_what: &str| -> Result<()> {
        if given {
            return Err(CliError::new(format!(
                "{flag} applies to --optimizer {for_what} only (this run uses --optimizer {})",
                kind.name()
            )));
        }
        Ok(())
    };
    let per = |flag: &str, v: &Option<String>, default: f32, min: f32| -> Result<Vec<f32>> {
        let values = match v {
            Some(t) => parse_per_model(flag, t, g)?,
            None => vec![default; g],
        };
        if let Some((m, x)) = values.iter().enumerate().find(|(_, &x)| x < min) {
            return Err(CliError::new(format!("{flag}: value {x} for model {m} must be >= {min}")));
        }
        Ok(values)
    };
    match kind {
        OptKind::Sgd => {
            only("--betas", a.betas.is_some(), "adam or adamw")?;
            only("--eps", a.eps.is_some(), "adam or adamw")?;
            let lr = per("--lr", &a.lr, 0.01, 0.0)?;
            let momentum = per("--momentum", &a.momentum, 0.0, 0.0)?;
            let dampening = per("--dampening", &a.dampening, 0.0, 0.0)?;
            let wd = per("--weight-decay", &a.weight_decay, 0.0, 0.0)?;
            let sgd = Sgd::new(lr.clone())
                .momentum(momentum.clone())
                .dampening(dampening.clone())
                .weight_decay(wd.clone())
                .nesterov(a.nesterov);
            sgd.rows(g).map_err(|e| {
                CliError::new(if a.nesterov { format!("--nesterov: {e}") } else { format!("optimizer: {e}") })
            })?;
            Ok(Hyper {
                kind,
                optimizer: Optimizer::Sgd(sgd),
                columns: vec![
                    Column { name: "lr", values: lr },
                    Column { name: "momentum", values: momentum },
                    Column { name: "dampening", values: dampening },
                    Column { name: "weight_decay", values: wd },
                ],
                nesterov: Some(a.nesterov),
            })
        }
        OptKind::Adam | OptKind::Adamw => {
            only("--momentum", a.momentum.is_some(), "sgd")?;
            only("--dampening", a.dampening.is_some(), "sgd")?;
            only("--nesterov", a.nesterov, "sgd")?;
            let lr = per("--lr", &a.lr, 0.001, 0.0)?;
            let (beta1, beta2) = betas(a.betas.as_deref(), g)?;
            let eps = per("--eps", &a.eps, 1e-8, 0.0)?;
            let wd = per("--weight-decay", &a.weight_decay, if kind == OptKind::Adamw { 0.01 } else { 0.0 }, 0.0)?;
            let base = if kind == OptKind::Adamw { Adam::adamw(lr.clone()) } else { Adam::new(lr.clone()) };
            let adam = base.betas(beta1.clone(), beta2.clone()).eps(eps.clone()).weight_decay(wd.clone());
            adam.rows(g).map_err(|e| CliError::new(format!("optimizer: {e}")))?;
            Ok(Hyper {
                kind,
                optimizer: Optimizer::Adam(adam),
                columns: vec![
                    Column { name: "lr", values: lr },
                    Column { name: "beta1", values: beta1 },
                    Column { name: "beta2", values: beta2 },
                    Column { name: "eps", values: eps },
                    Column { name: "weight_decay", values: wd },
                ],
                nesterov: None,
            })
        }
    }
}

/// `--betas B1,B2`, each one value or `log:A:B` / `lin:A:B`; both in [0, 1).
fn betas(text: Option<&str>, g: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let Some(text) = text else { return Ok((vec![0.9; g], vec![0.999; g])) };
    let (b1, b2) = text
        .split_once(',')
        .filter(|(_, b2)| !b2.contains(','))
        .ok_or_else(|| CliError::new(format!("--betas {text:?}: expected B1,B2 (two values)")))?;
    let b1 = parse_per_model("--betas (B1)", b1, g)?;
    let b2 = parse_per_model("--betas (B2)", b2, g)?;
    for (which, v) in [("B1", &b1), ("B2", &b2)] {
        if let Some((m, x)) = v.iter().enumerate().find(|(_, x)| !(0.0..1.0).contains(*x)) {
            return Err(CliError::new(format!("--betas {text:?}: {which} = {x} for model {m} must be in [0, 1)")));
        }
    }
    Ok((b1, b2))
}

/// An f32 as the shortest decimal that reads back to it, as an f64 (0.1f32 → 0.1).
pub fn tidy(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse_per_model("--lr", "0.5", 3).unwrap(), vec![0.5; 3]);
        assert_eq!(parse_per_model("--lr", "1,2,3", 3).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(parse_per_model("--lr", "lin:0:1", 3).unwrap(), vec![0.0, 0.5, 1.0]);
        let l = parse_per_model("--lr", "log:0.01:1", 3).unwrap();
        assert!((l[1] - 0.1).abs() < 1e-6, "{l:?}");
        for bad in ["1,2", "log:0:1", "log:1", "lin:a:b", "", "x", "1,,2", "inf"] {
            let e = parse_per_model("--lr", bad, 3).unwrap_err().to_string();
            assert!(e.starts_with("--lr"), "{bad}: {e}");
        }
    }
}
