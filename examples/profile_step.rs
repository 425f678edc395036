//! Prints where a LeNet training step spends its time, dispatch by dispatch (each run
//! alone and waited for), sorted by cost, with each dispatch's kernel (entry point and
//! override constants) and grid of workgroups:
//! `cargo run --release --example profile_step -- [G] [N] [R]`. With R > 1 the step is
//! profiled R times and each dispatch shows its fastest time (on a machine shared with
//! other work, the least disturbed one).

use modelbatch::bench::synthetic_dataset;
use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Optimizer, TrainConfig, Trainer};
use modelbatch::{Gpu, Sgd};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let g = args.next().transpose()?.unwrap_or(8);
    let n = args.next().transpose()?.unwrap_or(128);
    let repeats = args.next().transpose()?.unwrap_or(1).max(1);
    let gpu = Gpu::new_blocking()?;
    let spec = ModelSpec::lenet();
    let model = BatchModel::new(&gpu, &spec, g, 0)?;
    let data = synthetic_dataset(&spec, 4 * n, 1);
    let config = TrainConfig { batch_size: n, ..TrainConfig::default() };
    let mut trainer = Trainer::new(&gpu, &model, &data, Optimizer::Sgd(Sgd::new(0.01).momentum(0.9)), config)?;
    trainer.train(1, |_| {})?;
    trainer.finish(|_| {})?;
    let plan = trainer.plan();
    let mut times = plan.profile()?;
    for _ in 1..repeats {
        for (best, (_, t)) in times.iter_mut().zip(plan.profile()?) {
            best.1 = best.1.min(t);
        }
    }
    // (A split batch's copies are rows of their own: then no kernel column.)
    let kernels = plan.dispatch_kernels();
    let mut rows: Vec<_> = if kernels.len() == times.len() {
        times.iter().zip(&kernels).map(|(&(label, t), (_, k, grid))| (label, t, format!("{k} {grid:?}"))).collect()
    } else {
        times.iter().map(|&(label, t)| (label, t, String::new())).collect()
    };
    let total: f64 = rows.iter().map(|r| r.1).sum();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let how = if gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        "GPU timestamps"
    } else {
        "wall time, one submit per dispatch"
    };
    let of = if repeats > 1 { format!(", fastest of {repeats}") } else { String::new() };
    println!("G={g} N={n} on {}: {:.1} ms in {} dispatches ({how}{of})", gpu.report().name, total * 1e3, rows.len());
    for (label, t, kernel) in rows {
        println!("{:>9.3} ms {:>5.1}%  {label:<26} {kernel}", t * 1e3, 100.0 * t / total);
    }
    Ok(())
}
