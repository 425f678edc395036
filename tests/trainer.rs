//! The Trainer: exact resume from a checkpoint, divergence isolation, schedules, Adam.

mod common;

use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Dataset, Optimizer, Order, Schedule, StepMetrics, TrainConfig, Trainer};
use modelbatch::{Adam, Gpu, PerModel, Sgd};

fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut rng = modelbatch::nn::Rng::new(seed);
    let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
    // Images correlated with their label so that training has something to learn.
    let images = labels
        .iter()
        .flat_map(|&l| (0..16).map(move |p| if p % 10 == l as usize { 200u8 } else { 20 }))
        .zip((0..).map(|_| ()))
        .map(|(v, _)| v.saturating_add(rng.below(30) as u8))
        .collect();
    Dataset { images, labels, n, sample: vec![1, 4, 4], classes: 10, name: "synthetic".into() }
}

fn spec() -> ModelSpec {
    ModelSpec::mlp(&[16, 12, 10])
}

fn run(trainer: &mut Trainer, steps: u64) -> Vec<StepMetrics> {
    let mut out = Vec::new();
    trainer.train(steps, |m| out.extend_from_slice(m)).unwrap();
    trainer.finish(|m| out.extend_from_slice(m)).unwrap();
    out
}

fn state(model: &BatchModel) -> Vec<Vec<f32>> {
    pollster::block_on(model.state_dicts_batched()).unwrap()
}

fn config() -> TrainConfig {
    TrainConfig { batch_size: 8, metrics_every: 3, seed: 5, ..TrainConfig::default() }
}

fn sgd(g: usize) -> Optimizer {
    Optimizer::Sgd(Sgd::new(PerModel::lin_space(0.05, 0.2, g)).momentum(0.9).nesterov(true).weight_decay(1e-3))
}

fn adam(g: usize) -> Optimizer {
    Optimizer::Adam(Adam::adamw(PerModel::lin_space(1e-3, 5e-3, g)).weight_decay(0.05))
}

fn resume_matches(gpu: &Gpu, name: &str, optimizer: fn(usize) -> Optimizer) {
    let data = synthetic(40, 1);
    let g = 3;
    // 12 steps straight (crossing an epoch boundary at step 5).
    let straight = BatchModel::new(gpu, &spec(), g, 9).unwrap();
    let mut t = Trainer::new(gpu, &straight, &data, optimizer(g), config()).unwrap();
    let all = run(&mut t, 12);
    // 7 steps, checkpoint, a fresh model and trainer resume for 5 more.
    let dir = std::env::temp_dir().join(format!("modelbatch-ckpt-{}-{}", std::process::id(), name));
    let first = BatchModel::new(gpu, &spec(), g, 9).unwrap();
    let mut t1 = Trainer::new(gpu, &first, &data, optimizer(g), config()).unwrap();
    let head = run(&mut t1, 7);
    t1.save_checkpoint(&dir).unwrap();
    // Replacing an existing checkpoint works too, with the caller's own files beside.
    t1.save_checkpoint_with(&dir, &[("notes.txt", b"mine")]).unwrap();
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(modelbatch::train::checkpoint_step(&dir).unwrap(), 7);
    for taken in ["model.safetensors", "trainer.json", "a/b", "", ".hidden", "shard-0"] {
        let e = t1.save_checkpoint_with(&dir, &[(taken, b"x")]).unwrap_err().to_string();
        assert!(e.contains("extra file name"), "{taken:?}: {e}");
    }
    let second = BatchModel::new(gpu, &spec(), g, 1234).unwrap();
    let mut t2 = Trainer::new(gpu, &second, &data, optimizer(g), config()).unwrap();
    t2.resume(&dir).unwrap();
    assert_eq!(t2.step(), 7);
    let tail = run(&mut t2, 5);
    assert_eq!(&all[..7], &head[..]);
    assert_eq!(&all[7..], &tail[..], "metrics after resume");
    assert_eq!(state(&straight), state(&second), "weights after resume are bitwise those of the straight run");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_continues_exactly_sgd() {
    let gpu = gpu_or_skip!();
    resume_matches(gpu, "sgd", sgd);
}

#[test]
fn resume_continues_exactly_adamw() {
    let gpu = gpu_or_skip!();
    resume_matches(gpu, "adamw", adam);
}

#[test]
fn resume_rejects_a_mismatched_checkpoint() {
    let gpu = gpu_or_skip!();
    let data = synthetic(40, 1);
    let dir = std::env::temp_dir().join(format!("modelbatch-ckpt-mismatch-{}", std::process::id()));
    let a = BatchModel::new(gpu, &spec(), 3, 0).unwrap();
    let mut ta = Trainer::new(gpu, &a, &data, sgd(3), config()).unwrap();
    run(&mut ta, 2);
    ta.save_checkpoint(&dir).unwrap();
    let b = BatchModel::new(gpu, &spec(), 2, 0).unwrap();
    let mut tb = Trainer::new(gpu, &b, &data, sgd(2), config()).unwrap();
    let e = tb.resume(&dir).unwrap_err().to_string();
    assert!(e.contains("trainer.json") && e.contains("3 models"), "{e}");
    let c = BatchModel::new(gpu, &spec(), 3, 0).unwrap();
    let before = state(&c);
    let mut tc = Trainer::new(gpu, &c, &data, adam(3), config()).unwrap();
    let e = tc.resume(&dir).unwrap_err().to_string();
    assert!(e.contains("optimizer is \"sgd\""), "{e}");
    assert_eq!(state(&c), before, "a failed resume changes nothing");
    assert_eq!(tc.step(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diverging_model_is_frozen_and_leaves_the_others_bitwise_intact() {
    let gpu = gpu_or_skip!();
    let data = synthetic(48, 2);
    let cfg = TrainConfig { order: Order::Shared, ..config() };
    // Model 1 has an absurd learning rate and diverges within a few steps.
    let lr3 = vec![0.05, 1e12, 0.1];
    let three = BatchModel::new(gpu, &spec(), 3, 3).unwrap();
    let init = state(&three);
    let mut t3 = Trainer::new(gpu, &three, &data, Optimizer::Sgd(Sgd::new(lr3).momentum(0.9)), cfg.clone()).unwrap();
    let m3 = run(&mut t3, 10);
    assert_eq!(t3.dead(), &[false, true, false]);
    assert_eq!(t3.take_newly_dead(), vec![1]);
    let weights3 = state(&three);
    assert!(
        weights3.iter().flat_map(|t| &t[t.len() / 3..2 * t.len() / 3]).all(|v| v.is_finite()),
        "frozen before NaN reached its weights"
    );

    // The same two healthy models alone.
    let two = BatchModel::new(gpu, &spec(), 2, 0).unwrap();
    for (dst, src) in [(0, 0), (1, 2)] {
        two.load_state_dict(dst, &model_slice(&init, 3, src)).unwrap();
    }
    let mut t2 = Trainer::new(gpu, &two, &data, Optimizer::Sgd(Sgd::new(vec![0.05, 0.1]).momentum(0.9)), cfg).unwrap();
    let m2 = run(&mut t2, 10);
    for (a, b) in m3.iter().zip(&m2) {
        assert_eq!([a.loss[0], a.loss[2]], [b.loss[0], b.loss[1]], "step {}", a.step);
        assert_eq!([a.correct[0], a.correct[2]], [b.correct[0], b.correct[1]]);
    }
    for m in [0usize, 2] {
        assert_eq!(
            pollster::block_on(three.state_dict(m)).unwrap(),
            pollster::block_on(two.state_dict(if m == 0 { 0 } else { 1 })).unwrap(),
            "model {m}"
        );
    }
}

/// Model m's slice of a batched state.
fn model_slice(all: &[Vec<f32>], g: usize, m: usize) -> Vec<Vec<f32>> {
    all.iter().map(|t| t[m * t.len() / g..(m + 1) * t.len() / g].to_vec()).collect()
}

#[test]
fn schedules_follow_their_formulas() {
    assert_eq!(Schedule::Constant.lr(0.1, 1000), 0.1);
    let s = Schedule::parse("step:10:0.5").unwrap();
    assert_eq!((s.lr(1.0, 9), s.lr(1.0, 10), s.lr(1.0, 25)), (1.0, 0.5, 0.25));
    let c = Schedule::parse("cosine:100:0.01").unwrap();
    assert!((c.lr(1.0, 0) - 1.0).abs() < 1e-6);
    assert!((c.lr(1.0, 50) - 0.505).abs() < 1e-6);
    assert!((c.lr(1.0, 100) - 0.01).abs() < 1e-6 && (c.lr(1.0, 500) - 0.01).abs() < 1e-6);
    let w = Schedule::parse("warmup:4,step:2:0.1").unwrap();
    assert_eq!((w.lr(1.0, 0), w.lr(1.0, 3)), (0.25, 1.0));
    assert!((w.lr(1.0, 4) - 1.0).abs() < 1e-7 && (w.lr(1.0, 6) - 0.1).abs() < 1e-7);
    // Each error names the part that is wrong.
    for (text, says) in [
        ("cosine:0", "cosine T_MAX must be a whole number of steps, at least 1 (got \"0\")"),
        ("cosine:10:nan", "cosine ETA_MIN must be a finite number (got \"nan\")"),
        ("step:0:0.5", "step SIZE must be"),
        ("step:5:inf", "step GAMMA must be a finite number"),
        ("warmup:x,constant", "warmup STEPS must be"),
        // (The part after the warm-up named by itself.)
        ("warmup:5,cosine:-1", "\"cosine:-1\": cosine T_MAX must be"),
        ("linear", "expected constant, step:SIZE:GAMMA or cosine:T_MAX[:ETA_MIN]"),
    ] {
        let err = Schedule::parse(text).unwrap_err().to_string();
        assert!(err.contains(says) && (err.contains(&format!("{text:?}")) || text.starts_with("warmup:5")), "{err}");
    }
}

#[test]
fn schedules_change_the_learning_rate_the_kernels_use() {
    // With a step schedule that zeroes the rate after 2 steps, the weights stop moving.
    let gpu = gpu_or_skip!();
    let data = synthetic(40, 3);
    let model = BatchModel::new(gpu, &spec(), 2, 0).unwrap();
    let cfg = TrainConfig { schedules: vec![Schedule::Step { step_size: 2, gamma: 0.0 }], ..config() };
    let mut t = Trainer::new(gpu, &model, &data, Optimizer::Sgd(Sgd::new(0.1)), cfg).unwrap();
    let s0 = state(&model);
    run(&mut t, 2);
    let s2 = state(&model);
    run(&mut t, 3);
    assert_ne!(s0, s2);
    assert_eq!(s2, state(&model));
}

#[test]
fn impossible_configurations_are_errors_not_panics() {
    let gpu = gpu_or_skip!();
    let data = synthetic(20, 4);
    let model = BatchModel::new(gpu, &spec(), 2, 0).unwrap();
    let big = TrainConfig { batch_size: 21, ..config() };
    let e = Trainer::new(gpu, &model, &data, sgd(2), big).err().expect("batch > samples").to_string();
    assert!(e.contains("batch size 21") && e.contains("20 samples"), "{e}");
    let narrow = BatchModel::new(gpu, &ModelSpec::mlp(&[16, 4]), 2, 0).unwrap();
    let e = Trainer::new(gpu, &narrow, &data, sgd(2), config()).err().expect("4 outputs for 10 classes").to_string();
    assert!(e.contains("10 classes") && e.contains("only 4 outputs"), "{e}");
}

/// Trainers on one device in several threads: `finish` delivers every step's metrics even
/// when another thread's poll takes the finished readback's callback and runs it a moment
/// later (a race a CI run hit under parallel tests: the last step's metrics went missing).
#[test]
fn finish_delivers_every_step_while_other_threads_poll_the_device() {
    let gpu = gpu_or_skip!();
    let data = synthetic(40, 4);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let data = &data;
            s.spawn(move || {
                for round in 0..150 {
                    let model = BatchModel::new(gpu, &spec(), 2, t).unwrap();
                    let config = TrainConfig { metrics_every: 1, ..config() };
                    let mut trainer = Trainer::new(gpu, &model, data, sgd(2), config).unwrap();
                    let steps: Vec<u64> = run(&mut trainer, 3).iter().map(|m| m.step).collect();
                    assert_eq!(steps, [0, 1, 2], "thread {t}, round {round}");
                }
            });
        }
    });
}
