//! `--ensemble` (eval and train): the batch's models as one classifier, each sample's class
//! probabilities averaged over the models whose loss is finite.

use modelbatch::nn::BatchModel;
use modelbatch::train::{evaluate_ensemble, Dataset, EnsembleEvaluation, Normalize};
use modelbatch::Gpu;
use serde_json::json;

use crate::cli::{CliError, Result};
use crate::report::group;

/// The ensemble of every model whose evaluation `loss` is finite (a diverged model's
/// probabilities would turn every mean into NaN).
pub fn of_finite(
    gpu: &Gpu,
    model: &BatchModel,
    data: &Dataset,
    batch: usize,
    norm: Normalize,
    loss: &[f64],
) -> Result<EnsembleEvaluation> {
    let members: Vec<usize> = (0..loss.len()).filter(|&m| loss[m].is_finite()).collect();
    if members.is_empty() {
        return Err(CliError::new("--ensemble: every model's loss is NaN or infinite; no ensemble to evaluate"));
    }
    Ok(pollster::block_on(evaluate_ensemble(gpu, model, data, batch, norm, &members))?)
}

fn excluded(e: &EnsembleEvaluation, g: usize) -> Vec<usize> {
    (0..g).filter(|m| !e.members.contains(m)).collect()
}

/// `ensemble of 16 models (mean probabilities): top-1 9,712/10,000 (97.12%), …`.
pub fn line(e: &EnsembleEvaluation, g: usize) -> String {
    let left_out = excluded(e, g);
    let note = if left_out.is_empty() { String::new() } else { format!(", without diverged {left_out:?}") };
    format!(
        "ensemble of {} models (mean probabilities{note}): top-1 {}/{} ({:.2}%), top-5 {:.2}%, loss {:.4}",
        e.members.len(),
        group(e.top1 as f64),
        group(e.samples as f64),
        100.0 * e.top1_frac(),
        100.0 * e.top5_frac(),
        e.loss
    )
}

/// `{"members": k, "excluded": [...], "top1_count": …, "top5_count": …, "top1": …, "top5": …,
/// "loss": …}`.
pub fn json(e: &EnsembleEvaluation, g: usize) -> serde_json::Value {
    json!({
        "members": e.members.len(),
        "excluded": excluded(e, g),
        "top1_count": e.top1,
        "top5_count": e.top5,
        "top1": e.top1_frac(),
        "top5": e.top5_frac(),
        "loss": if e.loss.is_finite() { json!(e.loss) } else { serde_json::Value::Null },
    })
}
