//! Ensemble evaluation: one member scores as that model's own evaluation; identical members
//! score as one; several members match the mean of the Predictor's probabilities.

mod common;

use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{
    evaluate, evaluate_ensemble, evaluate_ensemble_sharded, Dataset, Normalize, Optimizer, Order, Predictor,
    TrainConfig, Trainer,
};
use modelbatch::{Gpu, PerModel, Sgd};

const G: usize = 4;

fn spec() -> ModelSpec {
    common::bn_convnet()
}

/// A batch trained for a few steps (models differ: seeds and learning rates).
fn trained(gpu: &Gpu, data: &Dataset) -> BatchModel {
    let model = BatchModel::new(gpu, &spec(), G, 11).unwrap();
    let opt = Optimizer::Sgd(Sgd::new(PerModel::log_space(0.02, 0.3, G)).momentum(0.9));
    let config = TrainConfig { batch_size: 8, order: Order::PerModel, ..TrainConfig::default() };
    let mut t = Trainer::new(gpu, &model, data, opt, config).unwrap();
    t.train(6, |_| {}).unwrap();
    t.finish(|_| {}).unwrap();
    drop(t);
    model
}

#[test]
fn ensembles_score_the_mean_of_their_members_probabilities() {
    let gpu = gpu_or_skip!();
    let data = common::small_images(37, 5);
    let norm = Normalize::default();
    let model = trained(gpu, &data);
    let each = pollster::block_on(evaluate(gpu, &model, &data, 16, norm)).unwrap();

    // One member: that model's own evaluation (37 samples in chunks of 16, 16 and 5).
    for m in 0..G {
        let e = pollster::block_on(evaluate_ensemble(gpu, &model, &data, 16, norm, &[m])).unwrap();
        assert_eq!((e.samples, e.members.clone()), (37, vec![m]));
        assert_eq!((e.top1, e.top5), (each.top1[m], each.top5[m]), "model {m} alone");
        assert!((e.loss - each.loss[m]).abs() < 1e-5 * (1.0 + each.loss[m]), "loss {} vs {}", e.loss, each.loss[m]);
    }

    // Several: the mean of the Predictor's probabilities, sample by sample.
    let members = [0, 2, 3];
    let e = pollster::block_on(evaluate_ensemble(gpu, &model, &data, 16, norm, &[3, 0, 2, 0])).unwrap();
    assert_eq!(e.members, members, "sorted, duplicates dropped");
    let predictor = Predictor::new(gpu, &model, 1, norm).unwrap();
    let c = predictor.classes();
    let (mut top1, mut loss) = (0u64, 0f64);
    for i in 0..data.n {
        let p = pollster::block_on(predictor.predict(&data.images[i * 144..(i + 1) * 144])).unwrap();
        let mean: Vec<f64> = (0..c).map(|k| members.iter().map(|&m| p[m * c + k] as f64).sum::<f64>() / 3.0).collect();
        let label = data.labels[i] as usize;
        top1 += u64::from(mean.iter().all(|&v| v <= mean[label]));
        loss -= mean[label].ln();
    }
    assert_eq!(e.top1, top1);
    assert!((e.loss - loss / data.n as f64).abs() < 1e-4, "{} vs {}", e.loss, loss / data.n as f64);
    assert!(e.top5 >= e.top1 && e.top5 <= 37);
    // An ensemble of copies of one model is that model.
    for m in 0..G {
        model.copy_model(m, 1).unwrap();
    }
    let copies = pollster::block_on(evaluate_ensemble(gpu, &model, &data, 16, norm, &[0, 1, 2, 3])).unwrap();
    let one = pollster::block_on(evaluate_ensemble(gpu, &model, &data, 16, norm, &[1])).unwrap();
    assert_eq!((copies.top1, copies.top5), (one.top1, one.top5));
    assert!((copies.loss - one.loss).abs() < 1e-6);

    let err = |members: &[usize]| {
        pollster::block_on(evaluate_ensemble(gpu, &model, &data, 16, norm, members)).unwrap_err().to_string()
    };
    assert!(err(&[]).contains("at least one member"));
    assert!(err(&[1, G]).contains(&format!("member {G} does not exist")));
}

#[test]
fn a_sharded_ensemble_scores_as_the_whole_batch() {
    let gpu = gpu_or_skip!();
    let data = common::small_images(29, 8);
    let norm = Normalize::default();
    // The same initial weights whole and sharded (model m from the stream seed + m).
    let whole = BatchModel::new(gpu, &spec(), G, 3).unwrap();
    let gpus = vec![Gpu::new_blocking().unwrap(), Gpu::new_blocking().unwrap()];
    let shards = BatchModel::sharded(&gpus, &spec(), G, 3).unwrap();
    let parts: Vec<(&Gpu, &BatchModel)> = gpus.iter().zip(&shards).collect();
    for members in [vec![0, 2, 3], vec![1], vec![3], vec![0, 1, 2, 3]] {
        let a = pollster::block_on(evaluate_ensemble(gpu, &whole, &data, 8, norm, &members)).unwrap();
        let b = pollster::block_on(evaluate_ensemble_sharded(&parts, &data, 8, norm, &members)).unwrap();
        assert_eq!((a.top1, a.top5, &a.members), (b.top1, b.top5, &b.members), "members {members:?}");
        assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
    }
    let swapped = [parts[1], parts[0]];
    let e = pollster::block_on(evaluate_ensemble_sharded(&swapped, &data, 8, norm, &[0])).unwrap_err().to_string();
    assert!(e.contains("consecutive slices"), "{e}");
}

#[test]
fn ensemble_evaluation_leaves_training_untouched() {
    let gpu = gpu_or_skip!();
    let data = common::small_images(40, 2);
    let norm = Normalize::default();
    let run = |evaluate_between: bool| {
        let model = BatchModel::new(gpu, &spec(), G, 5).unwrap();
        let opt = Optimizer::Adam(modelbatch::Adam::new(PerModel::log_space(1e-3, 1e-2, G)));
        let config = TrainConfig { batch_size: 8, metrics_every: 1, ..TrainConfig::default() };
        let mut t = Trainer::new(gpu, &model, &data, opt, config).unwrap();
        let mut losses = Vec::new();
        for _ in 0..3 {
            t.train(2, |m| losses.extend(m.iter().map(|s| s.loss.clone()))).unwrap();
            t.finish(|m| losses.extend(m.iter().map(|s| s.loss.clone()))).unwrap();
            if evaluate_between {
                pollster::block_on(evaluate_ensemble(gpu, &model, &data, 16, norm, &[0, 1, 2, 3])).unwrap();
                let predictor = Predictor::new(gpu, &model, 1, norm).unwrap();
                pollster::block_on(predictor.predict(&data.images[..144])).unwrap();
            }
        }
        drop(t);
        (losses, pollster::block_on(model.state_dicts_batched()).unwrap())
    };
    assert!(run(true) == run(false), "training with ensemble evaluations in between differs");
}
