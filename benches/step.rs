//! `cargo bench`: a full LeNet training step (gather, forward, loss, backward, SGD with
//! momentum), N = 128 images per model, for several G; one JSON line per G.
//! `MODELBATCH_BENCH_MODELS=1,8,64` and `MODELBATCH_BENCH_STEPS=10` override the defaults.

use modelbatch::nn::ModelSpec;
use modelbatch::Gpu;

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: stay quick there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/step: run with `cargo bench --bench step` to measure");
        return;
    }
    let gpu = match Gpu::new_blocking() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to benchmark: {e}");
            return;
        }
    };
    let soft = gpu.report().device_type == "Cpu";
    let default = if soft { "1,8,64" } else { "1,8,64,256,1024" };
    let models = std::env::var("MODELBATCH_BENCH_MODELS").unwrap_or_else(|_| default.into());
    let steps: u64 =
        std::env::var("MODELBATCH_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(if soft { 3 } else { 20 });
    for g in models.split(',').filter_map(|s| s.trim().parse::<usize>().ok()) {
        match modelbatch::bench::step(&gpu, &ModelSpec::lenet(), g, 128, steps, 2, 3) {
            Ok(b) => println!("{}", b.json()),
            Err(e) => println!("{}", serde_json::json!({ "models": g, "batch_size": 128, "error": e.to_string() })),
        }
    }
}
