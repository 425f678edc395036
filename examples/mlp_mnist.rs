//! Trains G batched MLPs (784-128-10) on the embedded MNIST, one learning rate per model
//! (a log-spaced sweep), and prints per-model loss and test accuracy. The lower-level
//! companion of `modelbatch train` (which trains LeNets by default).
//!
//! ```text
//! cargo run --release --example mlp_mnist -- [--models 16] [--epochs 1] [--batch-size 64]
//!                                            [--lr-min 0.005] [--lr-max 0.05] [--momentum 0.9] [--seed 0]
//! ```

use std::time::Instant;

use modelbatch::data::Mnist;
use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Dataset, Optimizer, TrainConfig, Trainer};
use modelbatch::{Gpu, PerModel, Sgd};

struct Args {
    models: usize,
    epochs: u64,
    batch: usize,
    lr_min: f32,
    lr_max: f32,
    momentum: f32,
    seed: u64,
}

const USAGE: &str =
    "usage: mlp_mnist [--models G] [--epochs E] [--batch-size N] [--lr-min A] [--lr-max B] [--momentum M] [--seed S]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args { models: 16, epochs: 1, batch: 64, lr_min: 0.005, lr_max: 0.05, momentum: 0.9, seed: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: cannot parse {v:?}");
        match flag.as_str() {
            "--models" => a.models = v.parse().map_err(|_| bad())?,
            "--epochs" => a.epochs = v.parse().map_err(|_| bad())?,
            "--batch-size" => a.batch = v.parse().map_err(|_| bad())?,
            "--lr-min" => a.lr_min = v.parse().map_err(|_| bad())?,
            "--lr-max" => a.lr_max = v.parse().map_err(|_| bad())?,
            "--momentum" => a.momentum = v.parse().map_err(|_| bad())?,
            "--seed" => a.seed = v.parse().map_err(|_| bad())?,
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if a.models == 0 || a.batch == 0 || a.epochs == 0 {
        return Err("--models, --batch-size and --epochs must be at least 1".into());
    }
    if !(a.lr_min > 0.0 && a.lr_max >= a.lr_min) {
        return Err("need 0 < --lr-min <= --lr-max".into());
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let (g, n) = (args.models, args.batch);
    let gpu = Gpu::new_blocking()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    let mnist = Mnist::load(Mnist::default_dir())?;
    let (train, test) = (Dataset::from_mnist(&mnist.train, "train"), Dataset::from_mnist(&mnist.test, "test"));
    let model = BatchModel::new(&gpu, &ModelSpec::mlp(&[784, 128, 10]), g, args.seed)?;
    let lrs = PerModel::log_space(args.lr_min, args.lr_max, g);
    let optimizer = Optimizer::Sgd(Sgd::new(lrs.clone()).momentum(args.momentum));
    let config = TrainConfig { batch_size: n, seed: args.seed, metrics_every: 100, ..TrainConfig::default() };
    let mut trainer = Trainer::new(&gpu, &model, &train, optimizer, config)?;

    let total = trainer.steps_per_epoch() * args.epochs;
    println!(
        "training {g} MLPs 784-128-10: SGD momentum {}, lr log-spaced {}..{}, batch {n} per model, {total} steps",
        args.momentum, args.lr_min, args.lr_max
    );
    let start = Instant::now();
    let mut last_loss = vec![f32::NAN; g];
    let mut report = |m: &[modelbatch::train::StepMetrics]| {
        let last = m.last().expect("metrics arrive in non-empty batches");
        last_loss.clone_from(&last.loss);
        let done = last.step + 1;
        let secs = start.elapsed().as_secs_f64();
        let mean = last.loss.iter().sum::<f32>() / g as f32;
        let eta = (total - done) as f64 * secs / done as f64;
        println!(
            "step {done:>5}/{total}  mean loss {mean:.4}  {:.0} samples/s  ETA {eta:.0} s",
            (done as usize * g * n) as f64 / secs
        );
    };
    trainer.train(total, &mut report)?;
    trainer.finish(&mut report)?;
    let secs = start.elapsed().as_secs_f64();
    let ev = pollster::block_on(trainer.evaluate(&test))?;
    let lr = lrs.values(g, "lr")?;
    println!("\n model        lr  last loss  test loss   top-1    top-5");
    for m in 0..g {
        println!(
            "{m:>6} {:>9.5} {:>10.4} {:>10.4} {:>6.2}% {:>7.2}%",
            lr[m],
            last_loss[m],
            ev.loss[m],
            100.0 * ev.top1_frac(m),
            100.0 * ev.top5_frac(m)
        );
    }
    let worst = (0..g).map(|m| ev.top1_frac(m)).fold(1.0, f64::min);
    let best = (0..g).map(|m| ev.top1_frac(m)).fold(0.0, f64::max);
    println!(
        "\n{g} models, {total} steps in {secs:.1} s ({:.0} samples/s); test top-1 from {:.2}% to {:.2}% on {} images",
        (total as usize * g * n) as f64 / secs,
        100.0 * worst,
        100.0 * best,
        ev.samples
    );
    Ok(())
}
