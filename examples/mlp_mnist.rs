//! Trains G batched MLPs (784-128-10) on the embedded MNIST, one learning rate per model
//! (a log-spaced sweep), and prints per-model loss and test accuracy.
//!
//! ```text
//! cargo run --release --example mlp_mnist -- [--models 16] [--epochs 1] [--batch-size 64]
//!                                            [--lr-min 0.005] [--lr-max 0.05] [--momentum 0.9] [--seed 0]
//! ```

use std::time::Instant;

use modelbatch::data::Mnist;
use modelbatch::train::{MlpClassifier, Normalize, Shuffler};
use modelbatch::{Gpu, PerModel, Sgd};

struct Args {
    models: usize,
    epochs: usize,
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
    let data = Mnist::load(Mnist::default_dir())?;
    let lrs = PerModel::log_space(args.lr_min, args.lr_max, g);
    let sgd = Sgd::new(lrs.clone()).momentum(args.momentum);
    let mut clf = MlpClassifier::new(&gpu, g, &[784, 128, 10], n, 500, &sgd, args.seed)?;
    let norm = Normalize::default();

    let steps_per_epoch = data.train.n / n;
    let total = steps_per_epoch * args.epochs;
    println!(
        "training {g} MLPs 784-128-10: SGD momentum {}, lr log-spaced {}..{}, batch {n} per model, {total} steps",
        args.momentum, args.lr_min, args.lr_max
    );
    let mut shuffler = Shuffler::new(g, data.train.n, args.seed);
    let start = Instant::now();
    let mut last_loss = vec![f32::NAN; g];
    for step in 0..total {
        let s = step % steps_per_epoch;
        if s == 0 {
            shuffler.shuffle(step / steps_per_epoch);
        }
        clf.step(&data.train, &shuffler.batches(s, n), norm)?;
        if (step + 1) % 100 == 0 || step + 1 == total {
            last_loss = pollster::block_on(clf.last_loss())?;
            let mean = last_loss.iter().sum::<f32>() / g as f32;
            let secs = start.elapsed().as_secs_f64();
            let rate = ((step + 1) * g * n) as f64 / secs;
            let eta = (total - step - 1) as f64 * secs / (step + 1) as f64;
            println!("step {:>5}/{total}  mean loss {mean:.4}  {rate:.0} samples/s  ETA {eta:.0} s", step + 1);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ev = pollster::block_on(clf.evaluate(&data.test, norm))?;
    let lr = lrs.values(g, "lr")?;
    let pct = |c: u64| 100.0 * c as f64 / ev.samples as f64;
    println!("\n model        lr  last loss  test loss   top-1    top-5");
    for m in 0..g {
        println!(
            "{m:>6} {:>9.5} {:>10.4} {:>10.4} {:>6.2}% {:>7.2}%",
            lr[m],
            last_loss[m],
            ev.loss[m],
            pct(ev.top1[m]),
            pct(ev.top5[m])
        );
    }
    let worst = ev.top1.iter().copied().min().unwrap_or(0);
    let best = ev.top1.iter().copied().max().unwrap_or(0);
    println!(
        "\n{g} models, {total} steps in {secs:.1} s ({:.0} samples/s); test top-1 from {:.2}% to {:.2}% on {} images",
        (total * g * n) as f64 / secs,
        pct(worst),
        pct(best),
        ev.samples
    );
    Ok(())
}
