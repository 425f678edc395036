//! Determinism: the same seed on the same adapter gives bitwise-identical training (no
//! atomics; every reduction, including the split-K partial sums, adds in a fixed order),
//! also on a second device of the same adapter. A different seed gives different results.

mod common;

use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Dataset, Optimizer, Order, StepMetrics, TrainConfig, Trainer};
use modelbatch::{Gpu, PerModel, Sgd};

fn synthetic(n: usize) -> Dataset {
    let mut rng = modelbatch::nn::Rng::new(6);
    let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
    let images = labels
        .iter()
        .flat_map(|&l| (0..784).map(move |p| if (p / 28) % 10 == l as usize { 220 } else { 10 }))
        .collect();
    Dataset { images, labels, n, sample: vec![1, 28, 28], classes: 10, name: "synthetic".into() }
}

/// LeNet with BatchNorm and dropout: convolutions (split-K weight gradients), pooling,
/// normalisation statistics and per-model random streams.
fn spec() -> ModelSpec {
    ModelSpec::from_json(
        r#"{"input": [1, 28, 28], "layers": [
            {"type": "conv2d", "out_channels": 6, "kernel_size": 5},
            {"type": "batchnorm2d"},
            {"type": "relu"},
            {"type": "maxpool2d", "kernel_size": 2},
            {"type": "conv2d", "out_channels": 16, "kernel_size": 5},
            {"type": "relu"},
            {"type": "maxpool2d", "kernel_size": 2},
            {"type": "flatten"},
            {"type": "dropout", "p": 0.3},
            {"type": "linear", "out_features": 32},
            {"type": "relu"},
            {"type": "linear", "out_features": 10}
        ]}"#,
    )
    .unwrap()
}

fn run(gpu: &Gpu, seed: u64) -> (Vec<StepMetrics>, Vec<Vec<u32>>) {
    let data = synthetic(96);
    let model = BatchModel::new(gpu, &spec(), 4, seed).unwrap();
    let opt = Optimizer::Sgd(Sgd::new(PerModel::log_space(0.01, 0.1, 4)).momentum(0.9));
    let config =
        TrainConfig { batch_size: 32, metrics_every: 2, seed, order: Order::PerModel, ..TrainConfig::default() };
    let mut t = Trainer::new(gpu, &model, &data, opt, config).unwrap();
    let mut metrics = Vec::new();
    t.train(5, |m| metrics.extend_from_slice(m)).unwrap();
    t.finish(|m| metrics.extend_from_slice(m)).unwrap();
    let bits = pollster::block_on(model.state_dicts_batched())
        .unwrap()
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect();
    (metrics, bits)
}

fn loss_bits(m: &[StepMetrics]) -> Vec<Vec<u32>> {
    m.iter().map(|s| s.loss.iter().map(|x| x.to_bits()).collect()).collect()
}

#[test]
fn the_same_seed_gives_bitwise_identical_training() {
    let gpu = gpu_or_skip!();
    let (m1, w1) = run(gpu, 42);
    let (m2, w2) = run(gpu, 42);
    assert_eq!(loss_bits(&m1), loss_bits(&m2), "losses, bit for bit");
    assert_eq!(m1, m2);
    assert_eq!(w1, w2, "weights, bit for bit");
    // A second device on the same adapter.
    let other = Gpu::new_blocking().unwrap();
    let (m3, w3) = run(&other, 42);
    assert_eq!(loss_bits(&m1), loss_bits(&m3));
    assert_eq!(w1, w3);
    // Another seed: other weights, other batches, other dropout masks.
    let (m4, w4) = run(gpu, 43);
    assert_ne!(loss_bits(&m1), loss_bits(&m4));
    assert_ne!(w1, w4);
}
