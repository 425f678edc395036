//! `modelbatch bench`: full training steps timed for each G, one JSON line per G on stdout
//! (see [`modelbatch::bench::sweep`]), progress on stderr; `modelbatch tune`: the kernel
//! shapes that make a step fastest on this adapter ([`modelbatch::bench::tune`]).

use std::io::Write;

use modelbatch::bench::{default_memory_cap, Sweep, Tune};
use modelbatch::nn::ModelSpec;
use modelbatch::Gpu;

use crate::cli::{BenchArgs, CliError, Context, Result, TuneArgs};
use crate::inputs;

/// `--model mlp`: a two-hidden-layer MLP on flattened 28x28 images.
const MLP_SIZES: [usize; 4] = [784, 256, 128, 10];

pub fn run(a: &BenchArgs) -> Result<()> {
    let models = parse_models(&a.models)?;
    for (flag, v) in [("--batch-size", a.batch_size as u64), ("--steps", a.steps), ("--repeats", a.repeats as u64)] {
        if v == 0 {
            return Err(CliError::new(format!("{flag} must be at least 1")));
        }
    }
    if let Some(s) = a.time_limit {
        if !(s.is_finite() && s > 0.0) {
            return Err(CliError::new(format!("--time-limit {s}: must be a positive number of seconds")));
        }
    }
    let (spec, model) = classifier(&a.model)?;
    let gpu = open_gpu()?;
    let max_memory = a.max_memory_mib.map(|m| m << 20).or_else(|| default_memory_cap(&gpu));
    let sweep = Sweep {
        spec,
        model,
        models,
        batch_size: a.batch_size,
        steps: a.steps,
        warmup: a.warmup,
        repeats: a.repeats,
        max_memory,
        time_limit: a.time_limit,
    };
    let mut out = JsonLines::stdout();
    modelbatch::bench::sweep(&gpu, &sweep, |p| eprintln!("bench: {p}"), |v| out.write(&v));
    out.finish()
}

/// JSON lines on stdout, each flushed (a long run is watched, or piped, while it runs); the
/// first write error is kept for [`JsonLines::finish`].
struct JsonLines {
    stdout: std::io::StdoutLock<'static>,
    failed: Option<std::io::Error>,
}

impl JsonLines {
    fn stdout() -> JsonLines {
        JsonLines { stdout: std::io::stdout().lock(), failed: None }
    }

    fn write(&mut self, v: &serde_json::Value) {
        if self.failed.is_none() {
            if let Err(e) = writeln!(self.stdout, "{v}").and_then(|_| self.stdout.flush()) {
                self.failed = Some(e);
            }
        }
    }

    fn finish(self) -> Result<()> {
        match self.failed {
            Some(e) => Err(CliError::new(format!("writing to stdout: {e}"))),
            None => Ok(()),
        }
    }
}

pub fn tune(a: &TuneArgs) -> Result<()> {
    for (flag, v) in [
        ("--models", a.models as u64),
        ("--batch-size", a.batch_size as u64),
        ("--steps", a.steps),
        ("--repeats", a.repeats as u64),
    ] {
        if v == 0 {
            return Err(CliError::new(format!("{flag} must be at least 1")));
        }
    }
    if !(a.margin.is_finite() && (0.0..1.0).contains(&a.margin)) {
        return Err(CliError::new(format!("--margin {}: must be a fraction from 0 to 1", a.margin)));
    }
    if let Some(keys) = &a.keys {
        modelbatch::Tuning::key_list(keys).map_err(|e| CliError::new(format!("--keys: {e}")))?;
    }
    let (spec, model) = classifier(&a.model)?;
    let gpu = open_gpu()?;
    eprintln!("tune: starting from {}", gpu.tuning());
    let t = Tune {
        spec,
        model,
        models: a.models,
        batch_size: a.batch_size,
        steps: a.steps,
        warmup: a.warmup,
        repeats: a.repeats,
        margin: a.margin,
        keys: a.keys.clone(),
    };
    let mut out = JsonLines::stdout();
    let best = modelbatch::bench::tune(&gpu, &t, |p| eprintln!("tune: {p}"), |v| out.write(&v))?;
    out.finish()?;
    eprintln!("tune: best: {best}");
    if a.save {
        let note = format!("{} models of {}, {} images each", a.models, t.model, a.batch_size);
        let path = gpu.save_tuning(&best, &note)?;
        eprintln!("tune: saved to {}: later runs on this adapter start from it", path.display());
    } else {
        eprintln!(
            "tune: use it with `modelbatch --tuning {best} ...`, MODELBATCH_TUNING={best}, or save it with --save"
        );
    }
    Ok(())
}

/// The model of `--model`: `mlp`, `lenet` or a spec file, which must be a classifier.
fn classifier(name: &str) -> Result<(ModelSpec, String)> {
    let (spec, model) =
        if name == "mlp" { (ModelSpec::mlp(&MLP_SIZES), "mlp".to_string()) } else { inputs::load_spec(name)? };
    let out = spec.shapes().context(format!("--model {model}"))?.last().cloned().unwrap_or_default();
    if out.len() != 1 || out[0] < 2 {
        return Err(CliError::new(format!(
            "--model {model}: the model outputs {out:?} per sample; a classifier with at least 2 outputs is needed"
        )));
    }
    Ok((spec, model))
}

/// The device, named on stderr with its tuning.
fn open_gpu() -> Result<Gpu> {
    let gpu = Gpu::new_blocking()?;
    let report = gpu.report();
    eprintln!("adapter: {} ({}, {}), tuning {}", report.name, report.backend, report.device_type, report.tuning);
    Ok(gpu)
}

/// `G[,G2,...]`: positive integers.
fn parse_models(text: &str) -> Result<Vec<usize>> {
    let bad = |what: &str| CliError::new(format!("--models {text:?}: {what}"));
    let models: Vec<usize> = text
        .split(',')
        .map(|s| s.trim().parse::<usize>().map_err(|_| bad("expected comma-separated whole numbers such as 1,8,64")))
        .collect::<Result<_>>()?;
    if models.contains(&0) {
        return Err(bad("each G must be at least 1"));
    }
    Ok(models)
}
