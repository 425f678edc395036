//! `modelbatch train`: every input checked first (flags, spec, init weights, data, output
//! location), then G models trained at once, evaluated on the test split, and written out
//! all or nothing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

use modelbatch::data::Mnist;
use modelbatch::nn::{BatchModel, ModelSpec, TensorKind};
use modelbatch::train::{
    evaluate_ensemble_sharded, Dataset, Evaluation, Order, Schedule, ShardedTrainer, StepMetrics, TrainConfig,
};
use modelbatch::{Gpu, HyperParam};
use serde_json::{json, Value};

use crate::checkpoint::{parse_every, Checkpoints, Saved, CSV_HEADER};
use crate::cli::{parse_normalize, CliError, Context, Result, TrainArgs};
use crate::hyper::{self, tidy, Hyper};
use crate::output::{write_file, Staging};
use crate::pbt::Pbt;
use crate::report::{fmt_loss, fmt_secs, group, table, Progress, Spread};
use crate::{ensemble, inputs, interrupt, pbt};

pub fn run(a: &TrainArgs) -> Result<()> {
    let started = Instant::now();
    let g = a.models;
    for (flag, v) in [
        ("--models", g),
        ("--devices", a.devices),
        ("--batch-size", a.batch_size),
        ("--metrics-every", a.metrics_every),
    ] {
        if v == 0 {
            return Err(CliError::new(format!("{flag} must be at least 1")));
        }
    }
    // Nothing trained would leave no loss to report: evaluating weights is `eval`'s job.
    for (flag, v) in [("--steps", a.steps), ("--epochs", a.epochs)] {
        if v == Some(0) {
            return Err(CliError::new(format!(
                "{flag} must be at least 1 (to evaluate saved weights without training, use `modelbatch eval --weights DIR`)"
            )));
        }
    }
    let hyper = hyper::from_args(a, g)?;
    let pbt_flags = pbt::flags(a)?;
    let normalize = parse_normalize("--normalize", &a.normalize)?;
    let schedule = Schedule::parse(&a.schedule).context("--schedule")?;
    let every = match (&a.checkpoint, &a.checkpoint_every) {
        (None, Some(_)) => return Err(CliError::new("--checkpoint-every: give --checkpoint DIR too")),
        (None, None) => None,
        (Some(_), every) => Some(parse_every(every.as_deref().unwrap_or("5m"))?),
    };
    if let (Some(ck), Some(out)) = (&a.checkpoint, &a.out) {
        // The output folder is replaced as a whole at the end: saves inside it would go too.
        let full = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        if full(ck).starts_with(full(out)) {
            return Err(CliError::new(format!(
                "--checkpoint {}: inside --out {} (which is replaced as a whole at the end); give another folder",
                ck.display(),
                out.display()
            )));
        }
    }
    // Fail on an unwritable output location at once; from here on, any failure removes
    // the staging directory again (and the parents it created).
    let staging = a.out.as_deref().map(|d| Staging::prepare("--out", d)).transpose()?;
    let (spec, spec_name, spec_json) = inputs::load_spec_json(&a.model)?;
    if let Some(dir) = &a.init {
        inputs::check_weights(dir, "--init", &spec, g)?;
    }
    let data_dir = inputs::data_dir(&a.data);
    let mnist = Mnist::load(&data_dir)?;
    let mut train = Dataset::from_mnist(&mnist.train, "train");
    let mut test = Dataset::from_mnist(&mnist.test, "test");
    if let Some(n) = a.test_samples {
        if n == 0 {
            return Err(CliError::new("--test-samples: must be at least 1".to_string()));
        }
        test = test.head(n);
    }
    drop(mnist);
    check_fits(&spec, &spec_name, &train, &data_dir.display().to_string())?;
    check_fits(&spec, &spec_name, &test, &data_dir.display().to_string())?;
    let all_train = train.n;
    let mut pbt = match pbt_flags {
        Some(flags) => {
            let (p, rest) = Pbt::new(flags, train, &hyper, a.seed)?;
            train = rest;
            Some(p)
        }
        None => None,
    };
    if !a.no_shuffle && a.batch_size > train.n {
        return Err(CliError::new(format!(
            "--batch-size {}: larger than the {} training images (shuffled batches are drawn without replacement)",
            a.batch_size, train.n
        )));
    }
    let (mut checkpoints, saved) = match (&a.checkpoint, every) {
        (Some(dir), Some(every)) => {
            let pbt_setting = pbt.as_ref().map(|p| json!([p.every, p.fraction, p.valid.n]));
            let settings = settings(a, spec_json, &hyper, normalize, &data_dir, all_train, pbt_setting);
            let (c, saved) = Checkpoints::open(dir, every, settings)?;
            (Some(c), saved)
        }
        _ => (None, None),
    };
    let mut metrics = Metrics::new(g, staging.as_ref(), checkpoints.is_some())?;

    if a.devices > g {
        return Err(CliError::new(format!("--devices {}: more devices than the {g} models", a.devices)));
    }
    let gpus = open_devices(a.devices)?;
    let gpu = &gpus[0];
    let adapter = gpu.report();
    let models = BatchModel::sharded(&gpus, &spec, g, a.seed)?;
    if let (Some(dir), None) = (&a.init, &saved) {
        for model in &models {
            model.load_dir(dir)?;
        }
    }
    let order = if a.no_shuffle { Order::Sequential } else { Order::PerModel };
    // Every field is set today; the update keeps this compiling when TrainConfig grows.
    let eval_batch = inputs::fit_eval_batch(gpu, &spec, TrainConfig::default().eval_batch)?;
    #[allow(clippy::needless_update)]
    let config = TrainConfig {
        batch_size: a.batch_size,
        order,
        seed: a.seed,
        normalize,
        metrics_every: a.metrics_every,
        schedules: vec![schedule],
        eval_batch,
        ..TrainConfig::default()
    };
    let mut trainer = ShardedTrainer::new(&gpus, &models, &train, hyper.optimizer.clone(), config)?;
    let spe = trainer.shards()[0].steps_per_epoch();
    let total = a.steps.unwrap_or_else(|| a.epochs.unwrap_or(1).saturating_mul(spe));
    let start = match &saved {
        Some(saved) => {
            if saved.step > total {
                return Err(CliError::new(format!(
                    "--checkpoint: {} is at step {}, past this run's {total} steps (give more --steps or --epochs)",
                    saved.path.display(),
                    saved.step
                )));
            }
            trainer.resume(&saved.path)?;
            metrics.restore(saved)?;
            if let Some(p) = &mut pbt {
                p.restore(&saved.extra["pbt_rounds"])?;
            }
            saved.step
        }
        None => 0,
    };
    let params: usize = models[0].entries().iter().filter(|e| e.kind == TensorKind::Param).map(|e| e.numel()).sum();

    for (i, (gpu, model)) in gpus.iter().zip(&models).enumerate() {
        let r = gpu.report();
        let shard = if gpus.len() > 1 {
            format!(" [device {i}: models {}..{}]", model.first(), model.first() + model.models() - 1)
        } else {
            String::new()
        };
        println!("adapter: {} ({}, {}){shard}", r.name, r.backend, r.device_type);
    }
    println!(
        "training {g} × {spec_name} ({} parameters each) on {} images ({}): {total} steps of {} images per model ({:.2} epochs), {}",
        group(params as f64),
        train.n,
        data_dir.display(),
        a.batch_size,
        total as f64 / spe as f64,
        if a.no_shuffle { "file order" } else { "shuffled per model" }
    );
    println!("optimizer: {}", describe(&hyper, &a.schedule));
    if let Some(p) = &pbt {
        println!(
            "population-based training: every {} steps, the worst {}% copy the best on {} held-out training images",
            p.every,
            tidy(100.0 * p.fraction as f32),
            p.valid.n
        );
    }
    let first = &trainer.shards()[0];
    let (chunks, micro, passes) = (first.plan().stats().chunks, first.micro_batches(), first.passes());
    if chunks > 1 || micro > 1 {
        let phased = if passes > micro {
            format!(" in {passes} passes (BatchNorm statistics of the whole batch)")
        } else {
            String::new()
        };
        println!(
            "split to fit the adapter's {} MiB bindings: {chunks} chunk(s) of models per pass, {micro} micro-batch(es) per step{phased}",
            gpu.limits().max_storage_buffer_binding_size >> 20
        );
    }

    if let Some(saved) = &saved {
        println!("resuming from {} (step {} of {total})", saved.path.display(), saved.step);
    }

    let samples_per_step = (g * a.batch_size) as u64;
    let mut progress = Progress::new(start, total, samples_per_step);
    let t0 = Instant::now();
    let mut stopped = None;
    interrupt::graceful(true);
    for s in start..total {
        trainer.train(1, |ms| metrics.record(ms, &mut progress))?;
        progress.submitted(s + 1);
        report_deaths(&mut trainer, &metrics.first_bad, &progress);
        if let Some(p) = &mut pbt {
            if s + 1 < total && p.due(s + 1) {
                // Divergence flags current before the models are ranked.
                deliver(&mut trainer, &mut metrics, &mut progress)?;
                progress.println(&p.round(&mut trainer, s + 1)?);
            }
        }
        if let Some(c) = &mut checkpoints {
            if s + 1 < total && c.due(s + 1) {
                deliver(&mut trainer, &mut metrics, &mut progress)?;
                let path = metrics.save(c, &mut trainer, pbt_state(&pbt))?;
                progress.println(&format!("saved {}", path.display()));
            }
        }
        if interrupt::requested() {
            stopped = Some(s + 1);
            break;
        }
    }
    interrupt::graceful(false);
    deliver(&mut trainer, &mut metrics, &mut progress)?;
    progress.finish();
    metrics.check()?;
    if let Some(at) = stopped {
        // Ctrl-C: save where the run stands (the staging directory goes with `staging`).
        let saved = match &mut checkpoints {
            Some(c) if c.last_step() != Some(at) => Some(metrics.save(c, &mut trainer, pbt_state(&pbt))?),
            Some(c) => c.last_path(),
            None => None,
        };
        return Err(CliError::interrupted(match saved {
            Some(p) => format!(
                "interrupted after step {at} of {total}: saved {}; run the same command to continue",
                p.display()
            ),
            None => format!(
                "interrupted after step {at} of {total}; nothing saved (--checkpoint DIR makes a run resumable)"
            ),
        }));
    }
    if let Some(c) = &mut checkpoints {
        if c.last_step() != Some(total) {
            let path = metrics.save(c, &mut trainer, pbt_state(&pbt))?;
            println!("saved {}", path.display());
        }
    }
    let train_secs = t0.elapsed().as_secs_f64();
    let steps_run = total - start;
    println!(
        "trained {steps_run} steps in {}: {} samples/s",
        fmt_secs(train_secs),
        group(steps_run as f64 * samples_per_step as f64 / train_secs.max(1e-9))
    );

    println!("test set: {} images", test.n);
    let ev = pollster::block_on(trainer.evaluate(&test))?;
    let dead = trainer.dead();
    // Every model's values as they end (PBT and set_hyper change them).
    let mut hyper = hyper;
    for c in &mut hyper.columns {
        let h = HyperParam::from_name(c.name)?;
        for (m, v) in c.values.iter_mut().enumerate() {
            *v = trainer.hyper(m, h)?;
        }
    }
    drop(trainer);
    println!("{}", results_table(&hyper, &metrics.last_loss, &dead, &ev));
    // Across the models that did not diverge (a seed study's answer).
    let spread = Spread::of(&(0..g).filter(|&m| !dead[m]).map(|m| ev.top1_frac(m)).collect::<Vec<_>>());
    if let Some(s) = &spread {
        println!("{}", s.line());
    }
    let ensemble = match a.ensemble {
        true => {
            let members: Vec<usize> = (0..g).filter(|&m| !dead[m] && ev.loss[m].is_finite()).collect();
            if members.is_empty() {
                println!("ensemble: every model diverged");
                None
            } else {
                let parts: Vec<(&Gpu, &BatchModel)> = gpus.iter().zip(&models).collect();
                let e = pollster::block_on(evaluate_ensemble_sharded(&parts, &test, eval_batch, normalize, &members))?;
                println!("{}", ensemble::line(&e, g));
                Some(e)
            }
        }
        false => None,
    };

    if let Some(staging) = staging {
        for model in &models {
            model.save_dir(staging.path())?;
        }
        metrics.close()?;
        let summary = json!({
            "G": g,
            "devices": gpus.len(),
            "steps": total,
            "epochs": total as f64 / spe as f64,
            "batch_size": a.batch_size,
            "model": spec_name,
            "optimizer": hyper.kind.name(),
            "schedule": a.schedule,
            "order": if a.no_shuffle { "sequential" } else { "per-model" },
            "seed": a.seed,
            "normalize": {"mean": tidy(normalize.mean), "std": tidy(normalize.std)},
            "init": a.init.as_ref().map(|p| p.display().to_string()),
            "data": data_dir.display().to_string(),
            "train_samples": train.n,
            "test_samples": ev.samples,
            "adapter": {
                "name": adapter.name,
                "backend": adapter.backend,
                "device_type": adapter.device_type,
                "driver": adapter.driver,
            },
            "resumed_from_step": saved.as_ref().map(|s| s.step),
            "checkpoint": a.checkpoint.as_ref().map(|p| p.display().to_string()),
            "train_time_s": train_secs,
            "samples_per_s": steps_run as f64 * samples_per_step as f64 / train_secs.max(1e-9),
            "wall_time_s": started.elapsed().as_secs_f64(),
            "models": (0..g).map(|m| model_summary(m, &hyper, &metrics, &dead, &ev)).collect::<Vec<_>>(),
            "top1_over_models": spread.as_ref().map(Spread::json),
            "ensemble": ensemble.as_ref().map(|e| ensemble::json(e, g)),
            "pbt": pbt.as_ref().map(Pbt::summary),
        });
        let text = serde_json::to_string_pretty(&summary).context("summary.json")? + "\n";
        write_file(&staging.path().join("summary.json"), text.as_bytes())?;
        let target = staging.target().to_path_buf();
        staging.commit()?;
        println!("wrote {}: model-0 … model-{}.safetensors, metrics.csv, summary.json", target.display(), g - 1);
    }
    Ok(())
}

/// Reads back every step's metrics not yet delivered (the divergence flags are then
/// current) and reports the models that diverged.
fn deliver(trainer: &mut ShardedTrainer, metrics: &mut Metrics, progress: &mut Progress) -> Result<()> {
    trainer.finish(|ms| metrics.record(ms, progress))?;
    report_deaths(trainer, &metrics.first_bad, progress);
    Ok(())
}

/// Reports the models whose divergence the trainer noticed since the last call.
fn report_deaths(trainer: &mut ShardedTrainer, first_bad: &[Option<(u64, f32)>], progress: &Progress) {
    for m in trainer.take_newly_dead() {
        let when = match first_bad.get(m).copied().flatten() {
            Some((step, loss)) => format!("at step {step} (loss {loss})"),
            None => "(non-finite loss)".to_string(),
        };
        progress.println(&format!("model {m} diverged {when}: frozen, no further updates"));
    }
}

/// The data's images fit the model's input and its labels its outputs.
fn check_fits(spec: &ModelSpec, spec_name: &str, d: &Dataset, dir: &str) -> Result<()> {
    let px: usize = d.sample.iter().product();
    let want: usize = spec.input.iter().product();
    if px != want {
        return Err(CliError::new(format!(
            "{dir}: the {} images are {:?} ({px} values) but the model takes input {:?} ({want} values)",
            d.name, d.sample, spec.input
        )));
    }
    let out = spec.shapes()?.last().cloned().unwrap_or_default();
    if out.len() != 1 || out[0] < d.classes {
        return Err(CliError::new(format!(
            "--model {spec_name}: the model outputs {out:?} per sample but the data has {} classes",
            d.classes
        )));
    }
    Ok(())
}

fn describe(h: &Hyper, schedule: &str) -> String {
    let mut parts = vec![h.kind.name().to_string()];
    for c in &h.columns {
        if c.varies() {
            let (lo, hi) = c.values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            parts.push(format!("{} {}…{} (per model)", c.name, tidy(lo), tidy(hi)));
        } else {
            parts.push(format!("{} {}", c.name, tidy(c.values[0])));
        }
    }
    if let Some(n) = h.nesterov {
        parts.push(format!("nesterov {n}"));
    }
    if schedule != "constant" {
        parts.push(format!("schedule {schedule}"));
    }
    parts.join("  ")
}

fn results_table(h: &Hyper, last_loss: &[f32], dead: &[bool], ev: &Evaluation) -> String {
    let varying: Vec<_> = h.columns.iter().filter(|c| c.varies()).collect();
    let any_dead = dead.iter().any(|&d| d);
    let mut header = vec!["rank".to_string(), "model".to_string()];
    header.extend(varying.iter().map(|c| c.name.to_string()));
    header.extend(["final loss", "top-1 %", "top-5 %"].map(String::from));
    if any_dead {
        header.push("note".into());
    }
    // Best test top-1 first; diverged models after all the others whatever their accuracy.
    let mut order: Vec<usize> = (0..last_loss.len()).collect();
    order.sort_by(|&x, &y| {
        (dead[x].cmp(&dead[y])).then(ev.top1[y].cmp(&ev.top1[x])).then(ev.top5[y].cmp(&ev.top5[x])).then(x.cmp(&y))
    });
    let rows: Vec<Vec<String>> = order
        .iter()
        .enumerate()
        .map(|(rank, &m)| {
            let mut r = vec![(rank + 1).to_string(), m.to_string()];
            r.extend(varying.iter().map(|c| significant(c.values[m], 4)));
            r.push(fmt_loss(last_loss[m] as f64));
            r.push(format!("{:.2}", 100.0 * ev.top1_frac(m)));
            r.push(format!("{:.2}", 100.0 * ev.top5_frac(m)));
            if any_dead {
                r.push(if dead[m] { "diverged" } else { "" }.into());
            }
            r
        })
        .collect();
    table(&header, &rows)
}

fn finite_or_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn model_summary(m: usize, h: &Hyper, metrics: &Metrics, dead: &[bool], ev: &Evaluation) -> Value {
    let mut hyper = serde_json::Map::new();
    for c in &h.columns {
        hyper.insert(c.name.into(), json!(tidy(c.values[m])));
    }
    if let Some(n) = h.nesterov {
        hyper.insert("nesterov".into(), json!(n));
    }
    json!({
        "model": m,
        "hyper": hyper,
        "final_loss": finite_or_null(tidy(metrics.last_loss[m])),
        "diverged": dead[m],
        "diverged_at_step": metrics.first_bad[m].map(|(s, _)| s),
        "top1": ev.top1_frac(m),
        "top5": ev.top5_frac(m),
        "top1_count": ev.top1[m],
        "top5_count": ev.top5[m],
        "test_loss": finite_or_null(ev.loss[m]),
    })
}

/// Per-step metrics as they arrive: the last loss of each model, the first non-finite one,
/// and `metrics.csv` rows streamed into the staging directory.
struct Metrics {
    g: usize,
    last_loss: Vec<f32>,
    first_bad: Vec<Option<(u64, f32)>>,
    csv: Option<(BufWriter<File>, std::path::PathBuf)>,
    /// With --checkpoint: the metrics.csv rows delivered since the last save.
    unsaved: Option<Vec<u8>>,
    error: Option<CliError>,
}

impl Metrics {
    fn new(g: usize, staging: Option<&Staging>, checkpointing: bool) -> Result<Metrics> {
        let csv = match staging {
            Some(s) => {
                let path = s.path().join("metrics.csv");
                let f = File::create(&path).context(path.display())?;
                let mut w = BufWriter::new(f);
                w.write_all(CSV_HEADER.as_bytes()).context(path.display())?;
                Some((w, path))
            }
            None => None,
        };
        let unsaved = checkpointing.then(Vec::new);
        Ok(Metrics { g, last_loss: vec![f32::NAN; g], first_bad: vec![None; g], csv, unsaved, error: None })
    }

    /// Takes up a saved run's metrics: its rows go to metrics.csv first.
    fn restore(&mut self, saved: &Saved) -> Result<()> {
        if saved.last_loss.len() != self.g || saved.first_bad.len() != self.g {
            return Err(CliError::new(format!("{}: metrics of another number of models", saved.path.display())));
        }
        self.last_loss.clone_from(&saved.last_loss);
        self.first_bad.clone_from(&saved.first_bad);
        if let Some((w, path)) = &mut self.csv {
            w.write_all(&saved.csv[CSV_HEADER.len()..]).context(path.display())?;
        }
        Ok(())
    }

    /// Saves the run (every metric delivered) with the rows not yet saved.
    fn save(&mut self, c: &mut Checkpoints, trainer: &mut ShardedTrainer, extra: Value) -> Result<std::path::PathBuf> {
        self.check()?;
        let rows = self.unsaved.as_deref().unwrap_or_default();
        let path = c.save(trainer, rows, &self.last_loss, &self.first_bad, extra)?;
        if let Some(rows) = &mut self.unsaved {
            rows.clear();
        }
        Ok(path)
    }

    /// Records a batch of steps and shows the progress (completed steps, mean loss of the
    /// live models at the last of them).
    fn record(&mut self, ms: &[StepMetrics], progress: &mut Progress) {
        for s in ms {
            for m in 0..self.g {
                let (loss, correct) = (s.loss[m], s.correct[m]);
                self.last_loss[m] = loss;
                if !loss.is_finite() && self.first_bad[m].is_none() {
                    self.first_bad[m] = Some((s.step, loss));
                }
                if let Some((w, path)) = &mut self.csv {
                    if self.error.is_none() {
                        if let Err(e) = writeln!(w, "{},{m},{loss},{correct}", s.step) {
                            self.error = Some(CliError::new(format!("{}: {e}", path.display())));
                        }
                    }
                }
                if let Some(rows) = &mut self.unsaved {
                    let _ = writeln!(rows, "{},{m},{loss},{correct}", s.step);
                }
            }
        }
        let Some(last) = ms.last() else { return };
        let live: Vec<f64> = last.loss.iter().filter(|l| l.is_finite()).map(|&l| l as f64).collect();
        let mean = if live.is_empty() { f64::NAN } else { live.iter().sum::<f64>() / live.len() as f64 };
        progress.metrics(last.step + 1, mean);
    }

    fn check(&mut self) -> Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn close(&mut self) -> Result<()> {
        self.check()?;
        if let Some((w, path)) = self.csv.take() {
            let f = w.into_inner().map_err(|e| CliError::new(format!("{}: {}", path.display(), e.error())))?;
            f.sync_all().context(path.display())?;
        }
        Ok(())
    }
}

/// `n` devices: the first `n` adapters, or `n` devices on the best adapter when fewer exist.
fn open_devices(n: usize) -> Result<Vec<Gpu>> {
    if n == 1 {
        return Ok(vec![Gpu::new_blocking()?]);
    }
    let mut all = Gpu::all_blocking()?;
    if all.len() >= n {
        all.truncate(n);
        return Ok(all);
    }
    println!("--devices {n}: {} adapter(s) found; opening {n} devices on the best one", all.len());
    (0..n).map(|_| Ok(Gpu::new_blocking()?)).collect()
}

/// The flags that decide what a run computes, by flag (a checkpoint of other settings is
/// another run's): the model, the batch and its split over devices, the data, the start,
/// the optimizer with every model's values, the data order, seed, normalisation, schedule.
fn settings(
    a: &TrainArgs,
    model: Value,
    h: &Hyper,
    normalize: modelbatch::train::Normalize,
    data_dir: &std::path::Path,
    train_n: usize,
    pbt: Option<Value>,
) -> Value {
    let full = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
    let mut s = serde_json::Map::new();
    s.insert("--model".into(), model);
    s.insert("--models".into(), json!(a.models));
    s.insert("--devices".into(), json!(a.devices));
    s.insert("--data".into(), json!({ "folder": full(data_dir), "train_images": train_n }));
    s.insert("--init".into(), json!(a.init.as_deref().map(full)));
    s.insert("--batch-size".into(), json!(a.batch_size));
    s.insert("--optimizer".into(), json!(h.kind.name()));
    for c in &h.columns {
        let flag = match c.name {
            "beta1" => "--betas (B1)".to_string(),
            "beta2" => "--betas (B2)".to_string(),
            name => format!("--{}", name.replace('_', "-")),
        };
        s.insert(flag, json!(c.values.iter().map(|&v| tidy(v)).collect::<Vec<_>>()));
    }
    s.insert("--nesterov".into(), json!(h.nesterov));
    s.insert("--no-shuffle".into(), json!(a.no_shuffle));
    s.insert("--seed".into(), json!(a.seed));
    s.insert("--normalize".into(), json!([tidy(normalize.mean), tidy(normalize.std)]));
    s.insert("--schedule".into(), json!(a.schedule));
    s.insert("--pbt".into(), json!(pbt));
    Value::Object(s)
}

/// The command's own state a save keeps: PBT's rounds.
fn pbt_state(pbt: &Option<Pbt>) -> Value {
    json!({ "pbt_rounds": pbt.as_ref().map(Pbt::rounds_json) })
}

/// `v` with `digits` significant digits, trailing zeros dropped (0.052437 → 0.05244).
fn significant(v: f32, digits: i32) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (digits - 1 - (v.abs() as f64).log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn significant_digits() {
        for (v, want) in [(0.052437944, "0.05244"), (0.8000001, "0.8"), (0.01, "0.01"), (123.456, "123.5"), (0.0, "0")]
        {
            assert_eq!(super::significant(v, 4), want);
        }
        assert_eq!(super::significant(12345.0, 4), "12345");
    }
}
