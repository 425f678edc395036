//! Benchmarks of a full training step (gather, forward, loss, backward, optimizer) as JSON
//! lines: the measuring stick of `modelbatch bench` and `cargo bench`.

use std::time::Instant;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::nn::{BatchModel, ModelSpec, Rng};
use crate::optim::Sgd;
use crate::train::{Dataset, Optimizer, Order, TrainConfig, Trainer};

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
    /// Adapter name.
    pub adapter: String,
    /// Backend.
    pub backend: String,
}

impl StepBench {
    /// One JSON line.
    pub fn json(&self) -> String {
        serde_json::json!({
            "models": self.models,
            "batch_size": self.batch_size,
            "steps_per_s": self.steps_per_s,
            "samples_per_s": self.samples_per_s,
            "step_ms": 1000.0 / self.steps_per_s,
            "runs_steps_per_s": self.runs,
            "adapter": self.adapter,
            "backend": self.backend,
        })
        .to_string()
    }
}

/// A random byte dataset shaped for `spec` (10 classes), `n` samples.
pub fn synthetic_dataset(spec: &ModelSpec, n: usize, seed: u64) -> Dataset {
    let px: usize = spec.input.iter().product();
    let mut rng = Rng::new(seed);
    Dataset {
        images: (0..n * px).map(|_| rng.below(256) as u8).collect(),
        labels: (0..n).map(|_| rng.below(10) as u8).collect(),
        n,
        sample: spec.input.clone(),
        classes: 10,
        name: "synthetic".into(),
    }
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
    let data = synthetic_dataset(spec, (4 * n).max(256), 1);
    let config = TrainConfig {
        batch_size: n,
        order: Order::Shared,
        metrics_every: steps.max(1) as usize,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(gpu, &model, &data, Optimizer::Sgd(Sgd::new(0.01).momentum(0.9)), config)?;
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
        adapter: r.name,
        backend: r.backend,
    })
}
