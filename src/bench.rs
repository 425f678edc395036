//! Benchmarks of a full training step (gather, forward, loss, backward, optimizer) as JSON
//! lines: the measuring stick of `modelbatch bench` and `cargo bench`.

use std::time::Instant;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::Reduction;
use crate::nn::{BatchModel, Mode, ModelSpec, Rng};
use crate::optim::Sgd;
use crate::plan::{MemoryEstimate, Plan};
use crate::train::{
    data_graph, own_statistics, DataGraph, Dataset, Head, Normalize, OptState, Optimizer, Order, TrainConfig, Trainer,
};
use crate::tuning::{Search, Tuning};

/// One measurement: a training step of G models on N images each.
#[derive(Clone, Debug, PartialEq)]
pub struct StepBench {
    /// Models G.
    pub models: usize,
    /// Images per model per step N.
    pub batch_size: usize,
    /// Median steps per second over the repetitions.
    pub steps_per_s: f64,
    /// `G * N * steps_per_s`.
    pub samples_per_s: f64,
    /// Every repetition's steps per second.
    pub runs: Vec<f64>,
    /// Timed steps per repetition.
    pub steps: u64,
    /// Warm-up steps before the first repetition.
    pub warmup: u64,
    /// Adapter name.
    pub adapter: String,
    /// Backend.
    pub backend: String,
    /// The kernel shapes in use ([`Tuning`]'s `key=value` text).
    pub tuning: String,
}

impl StepBench {
    /// One JSON line.
    pub fn json(&self) -> String {
        self.value().to_string()
    }

    /// The JSON object of [`StepBench::json`].
    pub fn value(&self) -> Value {
        json!({
            "models": self.models,
            "batch_size": self.batch_size,
            "steps_per_s": self.steps_per_s,
            "samples_per_s": self.samples_per_s,
            "step_ms": 1000.0 / self.steps_per_s,
            "runs_steps_per_s": self.runs,
            "steps": self.steps,
            "warmup": self.warmup,
            "repeats": self.runs.len(),
            "adapter": self.adapter,
            "backend": self.backend,
            "tuning": self.tuning,
        })
    }
}

/// For `harness = false` bench targets: the GPU to measure on, or `None` after a line saying
/// why: the target runs without `--bench` (as `cargo test --all-targets` runs it, which must
/// stay quick) or there is no adapter.
pub fn bench_target_gpu(name: &str) -> Option<Gpu> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/{name}: run with `cargo bench --bench {name}` to measure");
        return None;
    }
    match Gpu::new_blocking() {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("no GPU adapter, nothing to benchmark: {e}");
            None
        }
    }
}

/// A random byte dataset shaped for `spec`, `n` samples, with as many classes as the model
/// has outputs (10 where that is not a plain vector; at most 256, labels are bytes).
pub fn synthetic_dataset(spec: &ModelSpec, n: usize, seed: u64) -> Dataset {
    let px: usize = spec.input.iter().product();
    let classes = match spec.shapes().ok().and_then(|s| s.last().cloned()) {
        Some(out) if out.len() == 1 && out[0] >= 1 => out[0].min(256),
        _ => 10,
    };
    let mut rng = Rng::new(seed);
    Dataset {
        images: (0..n * px).map(|_| rng.below(256) as u8).collect(),
        labels: (0..n).map(|_| rng.below(classes) as u8).collect(),
        n,
        sample: spec.input.clone(),
        classes,
        name: "synthetic".into(),
    }
}

/// Samples in the synthetic dataset [`step`] trains on for batch size `n`.
pub fn dataset_samples(n: usize) -> usize {
    (4 * n).max(256)
}

/// Times `steps` training steps (SGD with momentum 0.9) of `g` models of `spec` on `n`
/// images each, `repeats` times after `warmup` steps; each repetition ends when the GPU has
/// finished its last step.
#[cfg(not(target_arch = "wasm32"))]
pub fn step(
    gpu: &Gpu,
    spec: &ModelSpec,
    g: usize,
    n: usize,
    steps: u64,
    warmup: u64,
    repeats: usize,
) -> Result<StepBench> {
    let model = BatchModel::new(gpu, spec, g, 0)?;
    let data = synthetic_dataset(spec, dataset_samples(n), 1);
    let mut trainer = step_trainer(gpu, &model, &data, n, steps)?;
    time_steps(gpu, &mut trainer, g, n, steps, warmup, repeats)
}

/// The trainer [`step`] times: SGD with momentum 0.9, one shared data order, metrics read
/// back once per `steps`.
#[cfg(not(target_arch = "wasm32"))]
fn step_trainer<'a>(
    gpu: &'a Gpu,
    model: &'a BatchModel,
    data: &'a Dataset,
    n: usize,
    steps: u64,
) -> Result<Trainer<'a>> {
    let config = TrainConfig {
        batch_size: n,
        order: Order::Shared,
        metrics_every: steps.max(1) as usize,
        ..TrainConfig::default()
    };
    Trainer::new(gpu, model, data, Optimizer::Sgd(Sgd::new(0.01).momentum(0.9)), config)
}

#[cfg(not(target_arch = "wasm32"))]
fn time_steps(
    gpu: &Gpu,
    trainer: &mut Trainer,
    g: usize,
    n: usize,
    steps: u64,
    warmup: u64,
    repeats: usize,
) -> Result<StepBench> {
    trainer.train(warmup, |_| {})?;
    trainer.finish(|_| {})?;
    let mut runs = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        trainer.train(steps, |_| {})?;
        trainer.finish(|_| {})?;
        gpu.wait_idle()?;
        runs.push(steps as f64 / start.elapsed().as_secs_f64());
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let steps_per_s = sorted[sorted.len() / 2];
    let r = gpu.report();
    Ok(StepBench {
        models: g,
        batch_size: n,
        steps_per_s,
        samples_per_s: steps_per_s * (g * n) as f64,
        runs,
        steps,
        warmup,
        adapter: r.name,
        backend: r.backend,
        tuning: r.tuning,
    })
}

/// What [`tune`] measures: training steps of `models` models of `spec` on `batch_size`
/// images each, `repeats` times `steps` steps after `warmup`, per candidate.
#[derive(Clone, Debug)]
pub struct Tune {
    /// The architecture.
    pub spec: ModelSpec,
    /// Its name in the JSON lines.
    pub model: String,
    /// Models G.
    pub models: usize,
    /// Images per model per step N.
    pub batch_size: usize,
    /// Timed steps per repetition.
    pub steps: u64,
    /// Warm-up steps per candidate (they also compile its kernels).
    pub warmup: u64,
    /// Repetitions per candidate; the median counts.
    pub repeats: usize,
    /// A candidate replaces the best so far only when it is at least this much faster
    /// (0.03: 3%), so that noise does not pick values.
    pub margin: f64,
    /// The keys to search, in order (`None`: every key of [`Tuning::keys`]).
    pub keys: Option<Vec<String>>,
}

/// Finds the [`Tuning`] under which a training step of `t` runs fastest on `gpu`: starting
/// from the device's own tuning, a [`Search`]: each key of [`Tuning::keys`] in turn tries its
/// [`Tuning::candidates`] with the other keys at their best so far (coordinate descent, one
/// pass), keeping a value only when it beats the best by `t.margin`, checked against the best
/// measured again ([`crate::tuning::CONFIRM`] lines). Candidates that
/// compile to the same kernels and grids as one already measured (a key the model does not
/// use) are skipped. `line` receives one JSON object per measurement (a [`StepBench`] with
/// `"tuning"`, `"key"` and `"model"` added, or `"skipped": reason` for a candidate that failed)
/// and a last one with `"best"` (the tuning's text), its and the starting point's
/// `steps_per_s` and `"speedup"` ([`Search::speedup`]: the kept values' gains, each measured
/// against the value it replaced in the same check). Returns the best tuning.
#[cfg(not(target_arch = "wasm32"))]
pub fn tune(gpu: &Gpu, t: &Tune, mut progress: impl FnMut(&str), mut line: impl FnMut(Value)) -> Result<Tuning> {
    let model = BatchModel::new(gpu, &t.spec, t.models, 0)?;
    let data = synthetic_dataset(&t.spec, dataset_samples(t.batch_size), 1);
    let mut seen: Vec<crate::plan::Signature> = Vec::new();
    // The steps per second of `tuning`, or `None` where it compiles to what was measured.
    let mut measure = |tuning: Tuning, key: &str, progress: &mut dyn FnMut(&str)| -> Result<Option<(f64, Value)>> {
        let view = gpu.with_tuning(tuning)?;
        let mut trainer = step_trainer(&view, &model, &data, t.batch_size, t.steps)?;
        let signature = trainer.plan().signature();
        if key != crate::tuning::CONFIRM && seen.contains(&signature) {
            progress(&format!("{key}: {tuning} compiles to kernels already measured; skipped"));
            return Ok(None);
        }
        seen.push(signature);
        let b = time_steps(&view, &mut trainer, t.models, t.batch_size, t.steps, t.warmup, t.repeats)?;
        progress(&format!("{key}: {tuning}: {:.2} steps/s", b.steps_per_s));
        let mut v = b.value();
        v["tuning"] = json!(tuning.to_string());
        v["key"] = json!(key);
        v["model"] = json!(t.model);
        Ok(Some((b.steps_per_s, v)))
    };
    let mut search = Search::new(gpu.tuning(), gpu.limits(), t.margin);
    if let Some(keys) = &t.keys {
        search = search.only(keys)?;
    }
    while let Some((key, candidate)) = search.next_candidate() {
        match measure(candidate, key, &mut progress) {
            Ok(Some((rate, v))) => {
                line(v);
                search.record(Some(rate));
            }
            Ok(None) => search.record(None),
            // The starting point must run; a candidate the adapter cannot run (a limit, a loop
            // budget) is reported, not fatal.
            Err(e) if key == "start" => return Err(e),
            Err(e) => {
                let reason = one_line(&e);
                progress(&format!("{key}: {candidate}: {reason}"));
                line(json!({"tuning": candidate.to_string(), "key": key, "model": t.model, "skipped": reason}));
                search.record(None);
            }
        }
    }
    let ((best, best_rate), (start, base)) = (search.best(), search.start());
    let r = gpu.report();
    line(json!({
        "best": best.to_string(),
        "steps_per_s": best_rate,
        "samples_per_s": best_rate * (t.models * t.batch_size) as f64,
        "start": start.to_string(),
        "start_steps_per_s": base,
        "speedup": search.speedup(),
        "models": t.models,
        "batch_size": t.batch_size,
        "model": t.model,
        "adapter": r.name,
        "backend": r.backend,
    }));
    Ok(best)
}

/// The GPU memory a training step of `g` models of `spec` on `n` images each allocates on
/// `gpu` (SGD with momentum, a resident dataset of `samples` images): [`Plan::estimate_on`]
/// of the graph [`Trainer::new`] compiles, split into chunks of models where the adapter's
/// binding limit asks for it, known before anything is allocated. The parameters and running
/// estimates are counted once (the model's store shares them with the step).
pub fn step_estimate(gpu: &Gpu, spec: &ModelSpec, g: usize, n: usize, samples: usize) -> Result<MemoryEstimate> {
    let head = Head { mode: Mode::Train, reduction: Reduction::Mean, ks: &[1] };
    let DataGraph { mut graph, built, loss, top: correct, .. } =
        data_graph(spec, g, "train", samples, n, Normalize { mean: 0.0, std: 1.0 }, head, &mut own_statistics)?;
    let params = built.params();
    let grads = crate::autograd::grad(&mut graph, loss, None, &params)?;
    let pairs: Vec<_> = params.iter().zip(grads).filter_map(|(&p, d)| d.map(|d| (p, d))).collect();
    let sgd = Optimizer::Sgd(Sgd::new(0.01).momentum(0.9));
    let (_, updates) = OptState::attach(&sgd, &mut graph, &pairs, loss, &built.updates)?;
    Plan::estimate_on(gpu, &graph, &[loss, correct], &updates)
}

/// A default cap on the memory a benchmark may allocate: on a software (CPU) adapter,
/// whose buffers live in system memory, half of the memory available now (Linux's
/// `MemAvailable`); `None` elsewhere (a GPU reports no memory size through WebGPU, so an
/// out-of-memory error is caught instead).
pub fn default_memory_cap(gpu: &Gpu) -> Option<u64> {
    if gpu.report().device_type != "Cpu" {
        return None;
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024 / 2)
}

/// Why a step of this size cannot run under `max_bytes`, if it cannot (binding limits are
/// already met by the estimate's chunks; [`step_estimate`] errs where no chunk fits).
pub fn check_fits(est: &MemoryEstimate, max_bytes: Option<u64>) -> Option<String> {
    match max_bytes {
        Some(max) if est.bytes > max => Some(format!(
            "it needs an estimated {} MiB of GPU memory, more than the {} MiB allowed",
            est.bytes.div_ceil(1 << 20),
            max >> 20
        )),
        _ => None,
    }
}

/// A series of [`step`] measurements over several G: what [`sweep`] runs.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The architecture.
    pub spec: ModelSpec,
    /// Its name in the JSON lines (`lenet`, a file name).
    pub model: String,
    /// The values of G, measured in this order.
    pub models: Vec<usize>,
    /// Images per model per step N.
    pub batch_size: usize,
    /// Timed steps per repetition.
    pub steps: u64,
    /// Warm-up steps (untimed) before the repetitions.
    pub warmup: u64,
    /// Repetitions; the median is reported.
    pub repeats: usize,
    /// Skip a G whose estimated memory is larger (bytes); see [`default_memory_cap`].
    pub max_memory: Option<u64>,
    /// Skip a G whose predicted time (from the last G measured, assuming time grows with G)
    /// is longer, in seconds, and every G after a measurement that took longer.
    pub time_limit: Option<f64>,
}

/// Measures each G of `s` in turn, calling `line` with one JSON object per G: a
/// [`StepBench`] with `"model"` added, or `{"models", "batch_size", "model", "skipped":
/// reason, "adapter", "backend"}` where the size does not fit the adapter or the limits, or
/// failed. `progress` receives a human-readable line before each G and never fails the run.
#[cfg(not(target_arch = "wasm32"))]
pub fn sweep(gpu: &Gpu, s: &Sweep, mut progress: impl FnMut(&str), mut line: impl FnMut(Value)) {
    let report = gpu.report();
    // Seconds per model-step of the last G measured, and whether it ran past the limit.
    let mut rate: Option<(usize, f64)> = None;
    let mut over: Option<(usize, f64)> = None;
    let timed_steps = s.warmup + s.steps * s.repeats.max(1) as u64;
    for &g in &s.models {
        let skipped = |reason: String| {
            json!({
                "models": g,
                "batch_size": s.batch_size,
                "model": s.model,
                "skipped": reason,
                "adapter": report.name,
                "backend": report.backend,
            })
        };
        let est = step_estimate(gpu, &s.spec, g, s.batch_size, dataset_samples(s.batch_size));
        let reason = match &est {
            Err(e) => Some(format!("error: {e}")),
            Ok(est) => check_fits(est, s.max_memory),
        };
        let reason = reason.or_else(|| {
            let limit = s.time_limit?;
            if let Some((g0, secs)) = over.filter(|&(g0, _)| g > g0) {
                return Some(format!("G={g0} took {secs:.1} s, more than the time limit of {limit} s"));
            }
            let (g0, per) = rate?;
            let predicted = per * g as f64 * timed_steps as f64;
            (predicted > limit).then(|| {
                format!("predicted {predicted:.1} s (scaled from G={g0}), more than the time limit of {limit} s")
            })
        });
        if let Some(reason) = reason {
            progress(&format!("G={g}: skipped: {reason}"));
            line(skipped(reason));
            continue;
        }
        let mib = est.map(|e| e.bytes.div_ceil(1 << 20)).unwrap_or(0);
        progress(&format!(
            "G={g}: {} × {} steps of {} images per model ({} warm-up), about {mib} MiB",
            s.repeats.max(1),
            s.steps,
            s.batch_size,
            s.warmup
        ));
        let start = Instant::now();
        match step(gpu, &s.spec, g, s.batch_size, s.steps, s.warmup, s.repeats) {
            Ok(b) => {
                let secs = start.elapsed().as_secs_f64();
                let mut v = b.value();
                v["model"] = json!(s.model);
                line(v);
                rate = Some((g, 1.0 / (b.steps_per_s * g as f64)));
                if s.time_limit.is_some_and(|l| secs > l) {
                    over = Some((g, secs));
                }
            }
            Err(e) => {
                let reason = format!("error: {}", one_line(&e));
                progress(&format!("G={g}: {reason}"));
                line(skipped(reason));
            }
        }
    }
}

fn one_line(e: &Error) -> String {
    e.to_string().split(['\n', '\r']).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
}
