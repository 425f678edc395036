//! Trains G batched MLPs (784-128-10) on the embedded MNIST, one learning rate per model
//! (a log-spaced sweep), for one epoch; prints per-model loss and test accuracy.
//!
//! ```text
//! cargo run --release --example mlp_mnist -- [--models 16] [--epochs 1] [--batch-size 64]
//!                                            [--lr-min 0.005] [--lr-max 0.05] [--seed 0]
//! ```

use std::time::Instant;

use modelbatch::data::{Mnist, MnistSplit};
use modelbatch::nn::{Mlp, Rng};
use modelbatch::{autograd, DType, Gpu, Graph, PerModel, Plan, Reduction, Sgd};

struct Args {
    models: usize,
    epochs: usize,
    batch: usize,
    lr_min: f32,
    lr_max: f32,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { models: 16, epochs: 1, batch: 64, lr_min: 0.005, lr_max: 0.05, seed: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let bad = |v: &str| format!("{flag}: cannot parse {v:?}");
        match flag.as_str() {
            "--models" => a.models = value()?.parse().map_err(|_| bad(&flag))?,
            "--epochs" => a.epochs = value()?.parse().map_err(|_| bad(&flag))?,
            "--batch-size" => a.batch = value()?.parse().map_err(|_| bad(&flag))?,
            "--lr-min" => a.lr_min = value()?.parse().map_err(|_| bad(&flag))?,
            "--lr-max" => a.lr_max = value()?.parse().map_err(|_| bad(&flag))?,
            "--seed" => a.seed = value()?.parse().map_err(|_| bad(&flag))?,
            "-h" | "--help" => {
                println!(
                    "usage: mlp_mnist [--models G] [--epochs E] [--batch-size N] [--lr-min A] [--lr-max B] [--seed S]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other} (try --help)")),
        }
    }
    if a.models == 0 || a.batch == 0 || a.epochs == 0 {
        return Err("--models, --batch-size and --epochs must be at least 1".into());
    }
    Ok(a)
}

const MEAN: f32 = 0.1307;
const STD: f32 = 0.3081;

/// Writes images `idx` of `split`, normalised, into `out` (`idx.len() * 784` floats).
fn gather(split: &MnistSplit, idx: impl Iterator<Item = usize>, out: &mut Vec<f32>, labels: &mut Vec<u32>) {
    for i in idx {
        out.extend(split.image(i).iter().map(|&p| (p as f32 / 255.0 - MEAN) / STD));
        labels.push(split.labels[i] as u32);
    }
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
    let pixels = data.train.rows * data.train.cols;

    // Training graph: forward, per-model mean cross-entropy, backward, SGD.
    let lrs = PerModel::log_space(args.lr_min, args.lr_max, g);
    let mut graph = Graph::new(g);
    let x = graph.input("x", &[n, pixels], DType::F32)?;
    let y = graph.input("y", &[n], DType::U32)?;
    let (mlp, logits) = Mlp::build(&mut graph, &[pixels, 128, 10], x)?;
    let loss = graph.cross_entropy(logits, y, Reduction::Mean)?;
    let params: Vec<_> = mlp.params().iter().map(|(_, t)| *t).collect();
    let grads = autograd::grad(&mut graph, loss, None, &params)?;
    let pairs: Vec<_> =
        params.iter().zip(&grads).map(|(p, d)| (*p, d.expect("every parameter has a gradient"))).collect();
    let mut sgd = Sgd::new(lrs.clone()).momentum(0.9).attach(&mut graph, &pairs)?;
    let train = Plan::new(&gpu, &graph, &[loss], sgd.updates())?;
    mlp.init(&train, args.seed)?;
    sgd.upload(&train)?;

    // Evaluation graph over the same parameters (shared buffers).
    let ne = 500;
    let mut eg = Graph::new(g);
    let ex = eg.input("x", &[ne, pixels], DType::F32)?;
    let ey = eg.input("y", &[ne], DType::U32)?;
    let (_, elogits) = Mlp::build(&mut eg, &[pixels, 128, 10], ex)?;
    let eloss = eg.cross_entropy(elogits, ey, Reduction::Sum)?;
    let etop = eg.topk_accuracy(elogits, ey, &[1, 5], true)?;
    let eval = Plan::sharing(&gpu, &eg, &[eloss, etop], &[], &train)?;

    let steps_per_epoch = data.train.n / n;
    let total = steps_per_epoch * args.epochs;
    println!(
        "training {g} MLPs 784-128-10, SGD momentum 0.9, lr log-spaced {}..{}, batch {n}, {total} steps",
        args.lr_min, args.lr_max
    );
    let mut orders: Vec<Vec<usize>> = vec![(0..data.train.n).collect(); g];
    let mut xs = Vec::with_capacity(g * n * pixels);
    let mut ys = Vec::with_capacity(g * n);
    let start = Instant::now();
    let mut last_loss = vec![f32::NAN; g];
    for step in 0..total {
        let s = step % steps_per_epoch;
        if s == 0 {
            // Each model shuffles each epoch with its own stream.
            for (m, order) in orders.iter_mut().enumerate() {
                let mut rng =
                    Rng::new(args.seed.wrapping_mul(1_000_003).wrapping_add((step / steps_per_epoch * g + m) as u64));
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i + 1));
                }
            }
        }
        xs.clear();
        ys.clear();
        for order in &orders {
            gather(&data.train, order[s * n..(s + 1) * n].iter().copied(), &mut xs, &mut ys);
        }
        train.write(x, &xs)?;
        train.write_u32(y, &ys)?;
        train.run()?;
        sgd.after_step(&train)?;
        if (step + 1) % 100 == 0 || step + 1 == total {
            last_loss = train.read_blocking(loss)?;
            let mean = last_loss.iter().sum::<f32>() / g as f32;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "step {:>5}/{total}  mean loss {mean:.4}  {:.0} samples/s  ({secs:.1} s)",
                step + 1,
                ((step + 1) * g * n) as f64 / secs
            );
        }
    }
    let train_secs = start.elapsed().as_secs_f64();

    // Test accuracy.
    let mut correct = vec![[0f64; 2]; g];
    let mut loss_sum = vec![0f64; g];
    for chunk in 0..data.test.n / ne {
        xs.clear();
        ys.clear();
        for _ in 0..g {
            gather(&data.test, chunk * ne..(chunk + 1) * ne, &mut xs, &mut ys);
        }
        eval.write(ex, &xs)?;
        eval.write_u32(ey, &ys)?;
        eval.run()?;
        let top = eval.read_blocking(etop)?;
        let l = eval.read_blocking(eloss)?;
        for m in 0..g {
            correct[m][0] += top[2 * m] as f64;
            correct[m][1] += top[2 * m + 1] as f64;
            loss_sum[m] += l[m] as f64;
        }
    }
    let tested = (data.test.n / ne * ne) as f64;
    let lr_values = lrs.values(g, "lr")?;
    println!("\n model       lr   last loss   test loss   top-1    top-5");
    for m in 0..g {
        println!(
            "{m:>6} {:>8.4} {:>11.4} {:>11.4} {:>6.2}% {:>7.2}%",
            lr_values[m],
            last_loss[m],
            loss_sum[m] / tested,
            100.0 * correct[m][0] / tested,
            100.0 * correct[m][1] / tested
        );
    }
    let worst = correct.iter().map(|c| c[0] / tested).fold(1.0, f64::min);
    println!(
        "\n{g} models trained in {train_secs:.1} s ({:.0} samples/s); worst test top-1 {:.2}%",
        (total * g * n) as f64 / train_secs,
        100.0 * worst
    );
    Ok(())
}
