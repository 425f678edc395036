//! The native side of the npm package's equivalence test (`web/test/node.test.mjs`): trains
//! G models on the first samples of MNIST exactly as the test does through WebAssembly and
//! prints every step's per-model loss and the final evaluation as one JSON object.
//!
//! ```text
//! cargo run --example web_reference -- [--model lenet|<JSON spec>] [--models 4] [--steps 20]
//!     [--batch-size 32] [--optimizer sgd|adam|adamw] [--lr-min 0.01] [--lr-max 0.1]
//!     [--momentum 0.9 (sgd)] [--seed 0]
//!     [--train-samples 2048] [--test-samples 1000] [--save-dir DIR]
//! ```

use modelbatch::data::Mnist;
use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Dataset, Optimizer, TrainConfig, Trainer};
use modelbatch::{Adam, Gpu, PerModel, Sgd};
use serde_json::json;

struct Args {
    model: String,
    models: usize,
    steps: u64,
    batch: usize,
    lr_min: f32,
    lr_max: f32,
    momentum: f32,
    seed: u64,
    train: usize,
    test: usize,
    save_dir: Option<std::path::PathBuf>,
    optimizer: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: "lenet".into(),
        models: 4,
        steps: 20,
        batch: 32,
        lr_min: 0.01,
        lr_max: 0.1,
        momentum: 0.9,
        seed: 0,
        train: 2048,
        test: 1000,
        save_dir: None,
        optimizer: "sgd".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: cannot parse {v:?}");
        match flag.as_str() {
            "--model" => a.model = v.clone(),
            "--models" => a.models = v.parse().map_err(|_| bad())?,
            "--steps" => a.steps = v.parse().map_err(|_| bad())?,
            "--batch-size" => a.batch = v.parse().map_err(|_| bad())?,
            "--lr-min" => a.lr_min = v.parse().map_err(|_| bad())?,
            "--lr-max" => a.lr_max = v.parse().map_err(|_| bad())?,
            "--momentum" => a.momentum = v.parse().map_err(|_| bad())?,
            "--seed" => a.seed = v.parse().map_err(|_| bad())?,
            "--train-samples" => a.train = v.parse().map_err(|_| bad())?,
            "--test-samples" => a.test = v.parse().map_err(|_| bad())?,
            "--save-dir" => a.save_dir = Some(v.into()),
            "--optimizer" => a.optimizer = v.clone(),
            other => return Err(format!("unknown flag {other}")),
        }
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
    let gpu = Gpu::new_blocking()?;
    let mnist = Mnist::load(Mnist::default_dir())?;
    let train = Dataset::from_mnist(&mnist.train, "train").head(a.train);
    let test = Dataset::from_mnist(&mnist.test, "test").head(a.test);
    let spec = ModelSpec::from_json(&a.model)?;
    let model = BatchModel::new(&gpu, &spec, a.models, a.seed)?;
    let lr = PerModel::log_space(a.lr_min, a.lr_max, a.models);
    let optimizer = match a.optimizer.as_str() {
        "sgd" => Optimizer::Sgd(Sgd::new(lr).momentum(a.momentum)),
        "adam" => Optimizer::Adam(Adam::new(lr)),
        "adamw" => Optimizer::Adam(Adam::adamw(lr)),
        other => return Err(format!("unknown optimizer {other:?} (sgd, adam, adamw)").into()),
    };
    let config = TrainConfig { batch_size: a.batch, seed: a.seed, metrics_every: 100, ..TrainConfig::default() };
    let mut trainer = Trainer::new(&gpu, &model, &train, optimizer, config)?;
    let mut loss: Vec<Vec<f32>> = Vec::new();
    trainer.train(a.steps, |m| loss.extend(m.iter().map(|s| s.loss.clone())))?;
    trainer.finish(|m| loss.extend(m.iter().map(|s| s.loss.clone())))?;
    let ev = pollster::block_on(trainer.evaluate(&test))?;
    if let Some(dir) = &a.save_dir {
        model.save_dir(dir)?;
    }
    let top1: Vec<f64> = (0..a.models).map(|m| ev.top1_frac(m)).collect();
    let out = json!({
        "adapter": gpu.report().name,
        "loss": loss,
        "top1": top1,
        "test_loss": ev.loss,
    });
    println!("{out}");
    Ok(())
}
