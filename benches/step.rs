//! `cargo bench --bench step`: a full LeNet training step (gather, forward, loss, backward,
//! SGD with momentum), N = 128 images per model, for G in 1, 8, 64, 256, 1024; one JSON line
//! per G (the lines of `modelbatch bench`). A G that does not fit prints a line with
//! `"skipped": "<reason>"` instead: its estimated memory is over the cap (default: half the
//! available memory on a software adapter), its largest buffer is over the adapter's
//! per-binding limit, or it is predicted to take longer than the time limit (default 60 s on
//! a software adapter, 300 s on a GPU).
//!
//! Overrides: `MODELBATCH_BENCH_MODELS=1,8,64`, `MODELBATCH_BENCH_STEPS=10` (timed steps per
//! repetition; default 3 on a software adapter, 20 on a GPU), `MODELBATCH_BENCH_TIME_LIMIT=S`
//! (seconds per G), `MODELBATCH_BENCH_MAX_MEMORY_MIB=M`.

use modelbatch::bench::{default_memory_cap, sweep, Sweep};
use modelbatch::nn::ModelSpec;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(x) => Some(x),
        Err(_) => {
            eprintln!("ignoring {name}={v:?}: not a number");
            None
        }
    }
}

fn main() {
    let Some(gpu) = modelbatch::bench::bench_target_gpu("step") else { return };
    let report = gpu.report();
    let soft = report.device_type == "Cpu";
    eprintln!("adapter: {} ({}, {})", report.name, report.backend, report.device_type);
    let models = std::env::var("MODELBATCH_BENCH_MODELS").unwrap_or_else(|_| "1,8,64,256,1024".into());
    let s = Sweep {
        spec: ModelSpec::lenet(),
        model: "lenet".into(),
        models: models.split(',').filter_map(|s| s.trim().parse::<usize>().ok()).filter(|&g| g > 0).collect(),
        batch_size: 128,
        steps: env("MODELBATCH_BENCH_STEPS").unwrap_or(if soft { 3 } else { 20 }),
        warmup: 2,
        repeats: 3,
        max_memory: env::<u64>("MODELBATCH_BENCH_MAX_MEMORY_MIB").map(|m| m << 20).or_else(|| default_memory_cap(&gpu)),
        time_limit: Some(env("MODELBATCH_BENCH_TIME_LIMIT").unwrap_or(if soft { 60.0 } else { 300.0 })),
    };
    sweep(&gpu, &s, |p| eprintln!("bench: {p}"), |v| println!("{v}"));
}
