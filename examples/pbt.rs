//! Population-based training (Jaderberg et al., 2017) of G batched LeNets on the embedded
//! MNIST: all models train at once; every `--interval` steps each is scored on 5,000
//! held-out training images, and each model of the worst quarter becomes a clone of one of
//! the best quarter (weights, momentum buffers, hyper-parameters: `Trainer::copy_model`, on
//! the GPU) whose learning rate and momentum are then perturbed (`Trainer::set_hyper`).
//!
//! ```text
//! cargo run --release --example pbt -- [--models 16] [--rounds 8] [--interval 100] [--batch-size 32] [--seed 0]
//! ```

use std::time::Instant;

use modelbatch::data::Mnist;
use modelbatch::nn::{BatchModel, ModelSpec, Rng};
use modelbatch::train::{Dataset, Optimizer, TrainConfig, Trainer};
use modelbatch::{Gpu, HyperParam, PerModel, Sgd};

const USAGE: &str = "usage: pbt [--models G] [--rounds R] [--interval K] [--batch-size N] [--seed S]";

struct Args {
    models: usize,
    rounds: usize,
    interval: u64,
    batch: usize,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { models: 16, rounds: 8, interval: 100, batch: 32, seed: 0 };
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
            "--rounds" => a.rounds = v.parse().map_err(|_| bad())?,
            "--interval" => a.interval = v.parse().map_err(|_| bad())?,
            "--batch-size" => a.batch = v.parse().map_err(|_| bad())?,
            "--seed" => a.seed = v.parse().map_err(|_| bad())?,
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if a.models < 4 || a.rounds == 0 || a.interval == 0 || a.batch == 0 {
        return Err("need --models >= 4 and --rounds, --interval, --batch-size >= 1".into());
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
    let a = parse_args()?;
    let g = a.models;
    let gpu = Gpu::new_blocking()?;
    let r = gpu.report();
    println!("adapter: {} ({}, {})", r.name, r.backend, r.device_type);
    let mnist = Mnist::load(Mnist::default_dir())?;
    let all = Dataset::from_mnist(&mnist.train, "train");
    let (train, valid) = (all.slice(0..all.n - 5000, "train"), all.slice(all.n - 5000..all.n, "validation"));
    let test = Dataset::from_mnist(&mnist.test, "test");

    // Learning rates spread over two decades, momentum 0.5..0.95: most start badly.
    let model = BatchModel::new(&gpu, &ModelSpec::lenet(), g, a.seed)?;
    let sgd = Sgd::new(PerModel::log_space(1e-3, 0.3, g)).momentum(PerModel::lin_space(0.5, 0.95, g));
    let config = TrainConfig { batch_size: a.batch, seed: a.seed, metrics_every: 50, ..TrainConfig::default() };
    let mut t = Trainer::new(&gpu, &model, &train, Optimizer::Sgd(sgd), config)?;
    let mut rng = Rng::new(a.seed ^ 0x5eed);
    let quarter = (g / 4).max(1);
    println!(
        "population-based training of {g} LeNets: {} rounds of {} steps of {} images per model; \
         the worst {quarter} copy one of the best {quarter} each round",
        a.rounds, a.interval, a.batch
    );
    println!("round   step  best val %  mean val %   lr of the best  momentum   copied (worst <- best)");
    let start = Instant::now();
    for round in 1..=a.rounds {
        t.train(a.interval, |_| {})?;
        t.finish(|_| {})?;
        let ev = pollster::block_on(t.evaluate(&valid))?;
        let mut rank: Vec<usize> = (0..g).collect();
        rank.sort_by(|&x, &y| ev.top1[y].cmp(&ev.top1[x]).then(x.cmp(&y)));
        let best = rank[0];
        let mean = (0..g).map(|m| ev.top1_frac(m)).sum::<f64>() / g as f64;
        let mut copied = Vec::new();
        if round < a.rounds {
            for &worst in &rank[g - quarter..] {
                let src = rank[rng.below(quarter)];
                t.copy_model(worst, src)?;
                // Explore: each hyper-parameter scaled by 0.8 or 1.25 (momentum kept below 1).
                for h in [HyperParam::Lr, HyperParam::Momentum] {
                    let f = if rng.below(2) == 0 { 0.8 } else { 1.25 };
                    let v = (t.hyper(worst, h)? * f).min(if h == HyperParam::Momentum { 0.99 } else { 1.0 });
                    t.set_hyper(worst, h, v)?;
                }
                copied.push(format!("{worst}<-{src}"));
            }
        }
        println!(
            "{round:>5} {:>6} {:>11.2} {:>11.2} {:>16.5} {:>9.3}   {}",
            t.step(),
            100.0 * ev.top1_frac(best),
            100.0 * mean,
            t.hyper(best, HyperParam::Lr)?,
            t.hyper(best, HyperParam::Momentum)?,
            copied.join(" ")
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let ev = pollster::block_on(t.evaluate(&test))?;
    let best = (0..g).max_by_key(|&m| (ev.top1[m], std::cmp::Reverse(m))).unwrap_or(0);
    println!(
        "\n{} steps in {secs:.1} s ({:.0} samples/s); on the {} test images the best model ({best}: lr {:.5}, \
         momentum {:.3}) reaches {:.2}% top-1, the population's mean {:.2}%",
        t.step(),
        (t.step() as usize * g * a.batch) as f64 / secs,
        ev.samples,
        t.hyper(best, HyperParam::Lr)?,
        t.hyper(best, HyperParam::Momentum)?,
        100.0 * ev.top1_frac(best),
        100.0 * (0..g).map(|m| ev.top1_frac(m)).sum::<f64>() / g as f64
    );
    Ok(())
}
