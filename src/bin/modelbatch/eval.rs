//! `modelbatch eval`: per-model top-1/top-5 (counts and fractions) and mean loss of saved
//! models on a split, as a table or as JSON.

use modelbatch::nn::BatchModel;
use modelbatch::train::{evaluate, Dataset, Evaluation};
use modelbatch::Gpu;

use crate::cli::{parse_normalize, CliError, EvalArgs, Result, Split};
use crate::inputs;
use crate::report::table;

pub fn run(a: &EvalArgs) -> Result<()> {
    if a.batch_size == Some(0) {
        return Err(CliError::new("--batch-size must be at least 1"));
    }
    let normalize = parse_normalize("--normalize", &a.normalize)?;
    let (spec, spec_name) = inputs::load_spec(&a.model)?;
    let g = match a.models {
        Some(0) => return Err(CliError::new("--models must be at least 1")),
        Some(g) => g,
        None => inputs::count_models(&a.weights, "--weights")?,
    };
    inputs::check_weights(&a.weights, "--weights", &spec, g)?;
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
    model.load_dir(&a.weights)?;
    let batch = match a.batch_size {
        Some(n) => n,
        None => inputs::fit_eval_batch(&gpu, &spec, 500)?,
    };
    let ev = pollster::block_on(evaluate(&gpu, &model, &data, batch, normalize))?;
    if a.json {
        println!("{}", to_json(&ev));
    } else {
        let r = gpu.report();
        println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
        println!(
            "{g} × {spec_name} from {} on the {name} split ({} images of {})",
            a.weights.display(),
            ev.samples,
            dir.display()
        );
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
    }
    Ok(())
}

/// `{"samples": n, "models": [{"model": i, "top1_count": c1, "top5_count": c5, "top1": f1,
/// "top5": f5, "loss": l}, ...]}`, keys in this order (a non-finite loss is `null`).
fn to_json(ev: &Evaluation) -> String {
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
    format!("{{\"samples\": {}, \"models\": [{}]}}", ev.samples, models.join(", "))
}
