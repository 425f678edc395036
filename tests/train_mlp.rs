//! End to end on the embedded MNIST with the GPU-resident Trainer: a short run teaches every
//! model of a batch.

mod common;

use modelbatch::data::Mnist;
use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Dataset, Optimizer, TrainConfig, Trainer};
use modelbatch::{PerModel, Sgd};

#[test]
fn every_model_learns_mnist() {
    let gpu = gpu_or_skip!();
    let mnist = Mnist::load(Mnist::default_dir()).unwrap();
    let train = Dataset::from_mnist(&mnist.train, "train");
    let test = Dataset::from_mnist(&mnist.test, "test").head(2000);
    let (g, steps) = (5, 200);
    let model = BatchModel::new(gpu, &ModelSpec::mlp(&[784, 32, 10]), g, 7).unwrap();
    let sgd = Sgd::new(PerModel::log_space(0.01, 0.1, g)).momentum(0.5);
    let config = TrainConfig { batch_size: 32, seed: 7, metrics_every: 64, ..TrainConfig::default() };
    let mut trainer = Trainer::new(gpu, &model, &train, Optimizer::Sgd(sgd), config).unwrap();
    let before = pollster::block_on(trainer.evaluate(&test)).unwrap();
    let mut seen = Vec::new();
    trainer.train(steps, |m| seen.extend(m.iter().map(|s| s.step))).unwrap();
    trainer.finish(|m| seen.extend(m.iter().map(|s| s.step))).unwrap();
    assert_eq!(seen, (0..steps).collect::<Vec<_>>(), "every step's metrics arrive once, in order");
    let after = pollster::block_on(trainer.evaluate(&test)).unwrap();
    assert_eq!(after.samples, 2000);
    for m in 0..g {
        let acc = after.top1_frac(m);
        assert!(acc > 0.8, "model {m}: test accuracy {acc} after {steps} steps");
        assert!(after.top5[m] >= after.top1[m]);
        assert!(after.loss[m] < 0.6 * before.loss[m], "model {m}: loss {} -> {}", before.loss[m], after.loss[m]);
        if m > 0 {
            assert_ne!(after.loss[m], after.loss[m - 1], "models differ");
        }
    }
    assert!(trainer.dead().iter().all(|d| !d));
}
