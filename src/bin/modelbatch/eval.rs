//! `modelbatch eval`: per-model top-1/top-5 (counts and fractions) and mean loss of saved
//! models on a split, as a table or as JSON.

use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{evaluate, Dataset, EnsembleEvaluation, Evaluation};
use modelbatch::Gpu;

use crate::cli::{parse_normalize, CliError, Context, EvalArgs, Result, Split};
use crate::inputs;
use crate::report::{table, Spread};
use crate::{checkpoint, ensemble};

pub fn run(a: &EvalArgs) -> Result<()> {
    if a.batch_size == Some(0) {
        return Err(CliError::new("--batch-size must be at least 1"));
    }
    let normalize = parse_normalize("--normalize", &a.normalize)?;
    // `--weights` may be a `train --checkpoint` folder (or one of its saves).
    let saved = checkpoint::saved_models(&a.weights, "--weights")?;
    let (spec, spec_name) = match &saved {
        // A spec saved with the run is the default (`--model` names another one).
        Some(s) if a.model == "lenet" && s.model.is_object() => {
            let spec = ModelSpec::from_value(&s.model).context(s.path.join("run.json").display())?;
            (spec, format!("the model spec of {}", s.path.display()))
        }
        _ => inputs::load_spec(&a.model)?,
    };
    let g = match (a.models, &saved) {
        (Some(0), _) => return Err(CliError::new("--models must be at least 1")),
        (Some(g), Some(s)) if g != s.models() => {
            return Err(CliError::new(format!(
                "--models {g}: the checkpoint {} holds {} models",
                s.path.display(),
                s.models()
            )))
        }
        (Some(g), _) => g,
        (None, Some(s)) => s.models(),
        (None, None) => inputs::count_models(&a.weights, "--weights")?,
    };
    // Every file is read and checked before the GPU is touched.
    let entries = spec.state_entries()?;
    let mut shard_states = Vec::new();
    match &saved {
        Some(s) => {
            for (path, n) in &s.shards {
                let bytes = std::fs::read(path).context(format!("--weights {}", path.display()))?;
                let what = path.display().to_string();
                shard_states.push(modelbatch::io::decode_state(&bytes, &what, &entries, Some(*n))?);
            }
        }
        None => inputs::check_weights(&a.weights, "--weights", &spec, g)?,
    }
    let dir = inputs::data_dir(&a.data);
    let split = inputs::load_split(&dir, a.split)?;
    let name = match a.split {
        Split::Test => "test",
        Split::Train => "train",
    };
    let mut data = Dataset::from_mnist(&split, name);
    drop(split);
    match a.samples {
        Some(0) => return Err(CliError::new("--samples: must be at least 1")),
        Some(n) => data = data.head(n),
        None => {}
    }
    let want: usize = spec.input.iter().product();
    if data.sample.iter().product::<usize>() != want {
        return Err(CliError::new(format!(
            "{}: the {name} images are {:?} but the model takes input {:?}",
            dir.display(),
            data.sample,
            spec.input
        )));
    }

    let gpu = Gpu::new_blocking()?;
    let model = BatchModel::new(&gpu, &spec, g, 0)?;
    match &saved {
        Some(s) => {
            let mut first = 0;
            for ((_, n), values) in s.shards.iter().zip(&shard_states) {
                for m in 0..*n {
                    let one: Vec<Vec<f32>> = values
                        .iter()
                        .zip(&entries)
                        .map(|(v, e)| v[m * e.numel().max(1)..(m + 1) * e.numel().max(1)].to_vec())
                        .collect();
                    model.load_state_dict(first + m, &one)?;
                }
                first += n;
            }
        }
        None => model.load_dir(&a.weights)?,
    }
    let batch = match a.batch_size {
        Some(n) => n,
        None => inputs::fit_eval_batch(&gpu, &spec, 500)?,
    };
    let ev = pollster::block_on(evaluate(&gpu, &model, &data, batch, normalize))?;
    let ensemble = match a.ensemble {
        true => Some(ensemble::of_finite(&gpu, &model, &data, batch, normalize, &ev.loss)?),
        false => None,
    };
    if a.json {
        println!("{}", to_json(&ev, ensemble.as_ref()));
    } else {
        let r = gpu.report();
        println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
        let from = match &saved {
            Some(s) => format!("{} (the save after step {})", s.path.display(), s.step),
            None => a.weights.display().to_string(),
        };
        println!("{g} × {spec_name} from {from} on the {name} split ({} images of {})", ev.samples, dir.display());
        let header = ["model", "top-1", "top-1 %", "top-5", "top-5 %", "loss"].map(String::from);
        let rows: Vec<Vec<String>> = (0..g)
            .map(|m| {
                vec![
                    m.to_string(),
                    ev.top1[m].to_string(),
                    format!("{:.2}", 100.0 * ev.top1_frac(m)),
                    ev.top5[m].to_string(),
                    format!("{:.2}", 100.0 * ev.top5_frac(m)),
                    format!("{:.4}", ev.loss[m]),
                ]
            })
            .collect();
        println!("{}", table(&header, &rows));
        let live: Vec<f64> = (0..g).filter(|&m| ev.loss[m].is_finite()).map(|m| ev.top1_frac(m)).collect();
        if let Some(s) = Spread::of(&live) {
            println!("{}", s.line());
        }
        if let Some(e) = &ensemble {
            println!("{}", ensemble::line(e, g));
        }
    }
    Ok(())
}

/// `{"samples": n, "models": [{"model": i, "top1_count": c1, "top5_count": c5, "top1": f1,
/// "top5": f5, "loss": l}, ...]}`, keys in this order (a non-finite loss is `null`), then
/// with --ensemble `"ensemble": {"members": k, "excluded": [...], "top1_count": …, …}`.
fn to_json(ev: &Evaluation, ensemble: Option<&EnsembleEvaluation>) -> String {
    let num = |v: f64| serde_json::to_string(&v).unwrap_or_else(|_| "null".into());
    let models: Vec<String> = (0..ev.top1.len())
        .map(|m| {
            format!(
                "{{\"model\": {m}, \"top1_count\": {}, \"top5_count\": {}, \"top1\": {}, \"top5\": {}, \"loss\": {}}}",
                ev.top1[m],
                ev.top5[m],
                num(ev.top1_frac(m)),
                num(ev.top5_frac(m)),
                num(ev.loss[m])
            )
        })
        .collect();
    let ensemble = match ensemble {
        Some(e) => format!(", \"ensemble\": {}", ensemble::json(e, ev.top1.len())),
        None => String::new(),
    };
    format!("{{\"samples\": {}, \"models\": [{}]{ensemble}}}", ev.samples, models.join(", "))
}
