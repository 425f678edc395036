//! Population-based training's moves between steps: `copy_model` (a model becomes a clone
//! of another, optimizer state included) and `set_hyper` (a model's hyper-parameter
//! changes). A clone trained on the same samples follows its source bit for bit; every
//! other model stays bitwise as it would have been.

mod common;

use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Dataset, Optimizer, Order, ShardedTrainer, StepMetrics, TrainConfig, Trainer};
use modelbatch::{Adam, Gpu, HyperParam, PerModel, Sgd};

const G: usize = 5;

/// BatchNorm's running estimates are copied too; no dropout, so that a clone on the same
/// samples computes what its source computes.
fn spec() -> ModelSpec {
    common::bn_convnet()
}

fn data() -> Dataset {
    common::small_images(48, 3)
}

/// Every model reads the same samples each step.
fn config() -> TrainConfig {
    TrainConfig { batch_size: 8, metrics_every: 2, seed: 4, order: Order::Sequential, ..TrainConfig::default() }
}

fn sgd() -> Optimizer {
    Optimizer::Sgd(Sgd::new(PerModel::log_space(0.02, 0.2, G)).momentum(PerModel::lin_space(0.5, 0.9, G)))
}

fn adam() -> Optimizer {
    Optimizer::Adam(Adam::adamw(PerModel::log_space(1e-3, 1e-2, G)).weight_decay(0.05))
}

fn run(t: &mut Trainer, steps: u64) -> Vec<StepMetrics> {
    let mut out = Vec::new();
    t.train(steps, |m| out.extend_from_slice(m)).unwrap();
    t.finish(|m| out.extend_from_slice(m)).unwrap();
    out
}

/// Model `m`'s slice of every state-dict tensor.
fn weights(model: &BatchModel, m: usize) -> Vec<Vec<f32>> {
    pollster::block_on(model.state_dict(m)).unwrap()
}

/// Model `m`'s slice of every optimizer tensor of the trainer's plan.
fn opt_state(t: &Trainer, m: usize) -> Vec<Vec<f32>> {
    t.plan()
        .states()
        .into_iter()
        .filter(|(n, _)| n.starts_with("sgd.") || n.starts_with("adam.") || n.starts_with("optim."))
        .map(|(_, id)| {
            let all = t.plan().read_blocking(id).unwrap();
            let per = all.len() / G;
            all[m * per..(m + 1) * per].to_vec()
        })
        .collect()
}

fn clone_follows_its_source(gpu: &Gpu, optimizer: fn() -> Optimizer) {
    let d = data();
    // Reference: 3 steps, then 2 more, nothing copied.
    let ref_model = BatchModel::new(gpu, &spec(), G, 7).unwrap();
    let mut r = Trainer::new(gpu, &ref_model, &d, optimizer(), config()).unwrap();
    run(&mut r, 3);
    let ref_tail = run(&mut r, 2);

    let model = BatchModel::new(gpu, &spec(), G, 7).unwrap();
    let mut t = Trainer::new(gpu, &model, &d, optimizer(), config()).unwrap();
    run(&mut t, 3);
    let others: Vec<Vec<Vec<f32>>> = (0..G).map(|m| weights(&model, m)).collect();
    assert_ne!(others[3], others[1], "models differ before the copy");
    t.copy_model(3, 1).unwrap();
    assert_eq!(weights(&model, 3), others[1], "weights and BatchNorm estimates copied");
    assert_eq!(opt_state(&t, 3), opt_state(&t, 1), "optimizer state copied");
    for h in HyperParam::ALL {
        if let Ok(v) = t.hyper(1, h) {
            assert_eq!(t.hyper(3, h).unwrap().to_bits(), v.to_bits(), "{}", h.name());
        }
    }
    for m in [0, 1, 2, 4] {
        assert_eq!(weights(&model, m), others[m], "model {m} untouched by the copy");
    }
    let tail = run(&mut t, 2);
    for (a, b) in tail.iter().zip(&ref_tail) {
        assert_eq!(a.loss[3].to_bits(), a.loss[1].to_bits(), "the clone's loss at step {}", a.step);
        for m in [0, 1, 2, 4] {
            assert_eq!(a.loss[m].to_bits(), b.loss[m].to_bits(), "model {m}'s loss at step {}", a.step);
        }
    }
    assert_eq!(weights(&model, 3), weights(&model, 1), "the clone trained as its source");
    for m in [0, 1, 2, 4] {
        assert_eq!(weights(&model, m), weights(&ref_model, m), "model {m} as without the copy");
    }
}

#[test]
fn a_copied_model_trains_as_its_source_sgd() {
    let gpu = gpu_or_skip!();
    clone_follows_its_source(gpu, sgd);
}

#[test]
fn a_copied_model_trains_as_its_source_adamw() {
    let gpu = gpu_or_skip!();
    clone_follows_its_source(gpu, adam);
}

#[test]
fn set_hyper_changes_one_model_from_the_next_step() {
    let gpu = gpu_or_skip!();
    let d = data();
    let ref_model = BatchModel::new(gpu, &spec(), G, 7).unwrap();
    let mut r = Trainer::new(gpu, &ref_model, &d, sgd(), config()).unwrap();
    run(&mut r, 4);

    let model = BatchModel::new(gpu, &spec(), G, 7).unwrap();
    let mut t = Trainer::new(gpu, &model, &d, sgd(), config()).unwrap();
    run(&mut t, 2);
    assert_eq!(t.hyper(2, HyperParam::Momentum).unwrap(), 0.7);
    // Model 2 stops learning (lr 0, no momentum to carry it on).
    t.set_hyper(2, HyperParam::Lr, 0.0).unwrap();
    t.set_hyper(2, HyperParam::Momentum, 0.0).unwrap();
    assert_eq!(t.hyper(2, HyperParam::Lr).unwrap(), 0.0);
    let frozen = weights(&model, 2);
    run(&mut t, 2);
    let moved = weights(&model, 2);
    // BatchNorm's running estimates still follow the data; the parameters do not move.
    for (e, (a, b)) in model.entries().iter().zip(moved.iter().zip(&frozen)) {
        if e.kind == modelbatch::nn::TensorKind::Param {
            assert_eq!(a, b, "{} moved with lr 0", e.name);
        }
    }
    for m in [0, 1, 3, 4] {
        assert_eq!(weights(&model, m), weights(&ref_model, m), "model {m} as without the change");
    }

    // Checked as the optimizer's constructor checks; nothing changes on an error.
    let err = |r: modelbatch::Result<()>| r.unwrap_err().to_string();
    assert!(err(t.set_hyper(0, HyperParam::Beta1, 0.9)).contains("sgd has no hyper-parameter beta1"));
    assert!(err(t.set_hyper(0, HyperParam::Lr, -1.0)).contains("lr -1 must be finite and >= 0"));
    assert!(err(t.set_hyper(0, HyperParam::WeightDecay, f32::NAN)).contains("weight_decay NaN"));
    assert!(err(t.set_hyper(G, HyperParam::Lr, 0.1)).contains(&format!("model {G} does not exist")));
    assert!(err(t.copy_model(0, G)).contains(&format!("model {G} does not exist")));
    assert_eq!(t.hyper(0, HyperParam::Lr).unwrap().to_bits(), 0.02f32.to_bits());
    assert_eq!(HyperParam::from_name("weight_decay").unwrap(), HyperParam::WeightDecay);
    assert!(HyperParam::from_name("lr2").unwrap_err().to_string().contains("one of lr, momentum"));

    // Nesterov needs momentum > 0 and no dampening, after the change as at the start.
    let nest = Optimizer::Sgd(Sgd::new(0.1).momentum(0.9).nesterov(true));
    let m2 = BatchModel::new(gpu, &spec(), G, 7).unwrap();
    let mut t2 = Trainer::new(gpu, &m2, &d, nest, config()).unwrap();
    assert!(err(t2.set_hyper(1, HyperParam::Momentum, 0.0)).contains("Nesterov"));
    assert!(err(t2.set_hyper(1, HyperParam::Dampening, 0.1)).contains("Nesterov"));
    assert_eq!(t2.hyper(1, HyperParam::Momentum).unwrap(), 0.9);
    let a = BatchModel::new(gpu, &spec(), G, 7).unwrap();
    let mut ta = Trainer::new(gpu, &a, &d, adam(), config()).unwrap();
    assert!(err(ta.set_hyper(0, HyperParam::Beta2, 1.0)).contains("beta2 1 must be in [0, 1)"));
    assert!(err(ta.set_hyper(0, HyperParam::Momentum, 0.5)).contains("adam has no hyper-parameter momentum"));
}

#[test]
fn checkpoints_keep_changed_hyper_parameters() {
    let gpu = gpu_or_skip!();
    let d = data();
    let dir = std::env::temp_dir().join(format!("modelbatch-population-{}", std::process::id()));
    let straight = BatchModel::new(gpu, &spec(), G, 7).unwrap();
    let mut s = Trainer::new(gpu, &straight, &d, adam(), config()).unwrap();
    run(&mut s, 2);
    s.set_hyper(4, HyperParam::Lr, 0.02).unwrap();
    s.set_hyper(0, HyperParam::Beta1, 0.5).unwrap();
    s.copy_model(1, 3).unwrap();
    s.save_checkpoint(&dir).unwrap();
    let want = run(&mut s, 3);

    let fresh = BatchModel::new(gpu, &spec(), G, 99).unwrap();
    let mut t = Trainer::new(gpu, &fresh, &d, adam(), config()).unwrap();
    t.resume(&dir).unwrap();
    assert_eq!(t.hyper(4, HyperParam::Lr).unwrap(), 0.02);
    assert_eq!(t.hyper(0, HyperParam::Beta1).unwrap(), 0.5);
    assert_eq!(t.hyper(1, HyperParam::Lr).unwrap(), t.hyper(3, HyperParam::Lr).unwrap());
    assert_eq!(run(&mut t, 3), want, "the resumed run continues with the changed values");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sharded_copies_cross_devices() {
    let _gpu = gpu_or_skip!();
    let d = data();
    let gpus = vec![Gpu::new_blocking().unwrap(), Gpu::new_blocking().unwrap()];
    let models = BatchModel::sharded(&gpus, &spec(), G, 7).unwrap();
    let mut st = ShardedTrainer::new(&gpus, &models, &d, sgd(), config()).unwrap();
    st.train(3, |_| {}).unwrap();
    st.finish(|_| {}).unwrap();
    // Model 4 (second device) becomes model 0 (first device); model 1 (same device) too.
    pollster::block_on(st.copy_model(4, 0)).unwrap();
    pollster::block_on(st.copy_model(1, 0)).unwrap();
    assert_eq!(st.hyper(4, HyperParam::Lr).unwrap(), st.hyper(0, HyperParam::Lr).unwrap());
    st.set_hyper(2, HyperParam::Lr, 0.01).unwrap();
    assert_eq!(st.hyper(2, HyperParam::Lr).unwrap(), 0.01);
    let mut tail: Vec<StepMetrics> = Vec::new();
    st.train(2, |m| tail.extend_from_slice(m)).unwrap();
    st.finish(|m| tail.extend_from_slice(m)).unwrap();
    for s in &tail {
        assert_eq!(s.loss[4].to_bits(), s.loss[0].to_bits(), "model 4 follows model 0 at step {}", s.step);
        assert_eq!(s.loss[1].to_bits(), s.loss[0].to_bits(), "model 1 follows model 0 at step {}", s.step);
    }
    let w0 = weights(&models[0], 0);
    assert_eq!(weights(&models[1], 4 - models[1].first()), w0, "the cross-device clone");
    assert_eq!(weights(&models[0], 1), w0, "the same-device clone");
    assert!(st.hyper(G, HyperParam::Lr).is_err());
}
