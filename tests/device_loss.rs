//! A lost device ends training with a clear error, never a panic, and the last checkpoint
//! written before the loss stays intact: a new device resumes from it exactly. Its own test
//! binary: it destroys its device.

mod common;

use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Dataset, Optimizer, StepMetrics, TrainConfig, Trainer};
use modelbatch::{Gpu, PerModel, Sgd};

fn synthetic(n: usize) -> Dataset {
    let mut rng = modelbatch::nn::Rng::new(3);
    let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
    let images =
        labels.iter().flat_map(|&l| (0..16).map(move |p| if p % 10 == l as usize { 200 } else { 20 })).collect();
    Dataset { images, labels, n, sample: vec![1, 4, 4], classes: 10, name: "synthetic".into() }
}

fn optimizer() -> Optimizer {
    Optimizer::Sgd(Sgd::new(PerModel::lin_space(0.05, 0.2, 3)).momentum(0.9))
}

fn config() -> TrainConfig {
    TrainConfig { batch_size: 8, metrics_every: 2, seed: 1, ..TrainConfig::default() }
}

fn losses(t: &mut Trainer, steps: u64) -> modelbatch::Result<Vec<StepMetrics>> {
    let mut out = Vec::new();
    t.train(steps, |m| out.extend_from_slice(m))?;
    t.finish(|m| out.extend_from_slice(m))?;
    Ok(out)
}

#[test]
fn a_lost_device_is_an_error_and_the_last_checkpoint_resumes() {
    let _shared = gpu_or_skip!();
    let spec = ModelSpec::mlp(&[16, 12, 10]);
    let data = synthetic(32);
    let dir = std::env::temp_dir().join(format!("modelbatch-lost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Reference: 6 uninterrupted steps on a healthy device.
    let healthy = Gpu::new_blocking().unwrap();
    let reference = BatchModel::new(&healthy, &spec, 3, 5).unwrap();
    let mut t = Trainer::new(&healthy, &reference, &data, optimizer(), config()).unwrap();
    let want = losses(&mut t, 6).unwrap();
    let want_state = pollster::block_on(reference.state_dicts_batched()).unwrap();

    // 4 steps, a checkpoint, then the device is lost.
    let doomed = Gpu::new_blocking().unwrap();
    let model = BatchModel::new(&doomed, &spec, 3, 5).unwrap();
    let mut t = Trainer::new(&doomed, &model, &data, optimizer(), config()).unwrap();
    losses(&mut t, 4).unwrap();
    t.save_checkpoint(&dir).unwrap();
    let saved: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    doomed.device.destroy();

    let e = losses(&mut t, 2).expect_err("training on a lost device must fail").to_string();
    assert!(e.contains("lost"), "the error says the device was lost: {e}");
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(doomed.lost().is_some());
    // Saving again fails too, and leaves the previous checkpoint as it was.
    let e = t.save_checkpoint(&dir).expect_err("no checkpoint from a lost device").to_string();
    assert!(e.contains("lost"), "{e}");
    for (path, bytes) in &saved {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{path} unchanged");
    }

    // A new device resumes from the checkpoint and finishes like the uninterrupted run.
    let fresh = Gpu::new_blocking().unwrap();
    let model = BatchModel::new(&fresh, &spec, 3, 77).unwrap();
    let mut t = Trainer::new(&fresh, &model, &data, optimizer(), config()).unwrap();
    t.resume(&dir).unwrap();
    assert_eq!(t.step(), 4);
    let tail = losses(&mut t, 2).unwrap();
    assert_eq!(tail, want[4..].to_vec());
    assert_eq!(pollster::block_on(model.state_dicts_batched()).unwrap(), want_state);
    std::fs::remove_dir_all(&dir).unwrap();
}
