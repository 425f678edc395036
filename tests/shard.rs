//! Sharding a model batch over several devices gives the single-device results: here two
//! devices opened on the test adapter (a machine with two GPUs would use `Gpu::all_blocking`).

mod common;

use common::assert_close_to_scale as close;
use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Dataset, Optimizer, Order, Schedule, ShardedTrainer, StepMetrics, TrainConfig, Trainer};
use modelbatch::{Gpu, PerModel, Sgd};

fn synthetic(n: usize, seed: u64) -> Dataset {
    common::small_images(n, seed)
}

fn spec() -> ModelSpec {
    common::small_convnet(4, true)
}

const G: usize = 5;

fn optimizer() -> Optimizer {
    Optimizer::Sgd(Sgd::new(PerModel::log_space(0.01, 0.3, G)).momentum(PerModel::lin_space(0.5, 0.9, G)))
}

fn config() -> TrainConfig {
    TrainConfig {
        batch_size: 8,
        metrics_every: 3,
        seed: 21,
        order: Order::PerModel,
        // Per-model schedules are sliced per shard too.
        schedules: (0..G)
            .map(|m| if m % 2 == 0 { Schedule::Constant } else { Schedule::parse("step:2:0.5").unwrap() })
            .collect(),
        ..TrainConfig::default()
    }
}

#[test]
fn a_batch_sharded_over_two_devices_trains_like_one_device() {
    let gpu = gpu_or_skip!();
    let data = synthetic(40, 4);

    let whole = BatchModel::new(gpu, &spec(), G, 8).unwrap();
    let mut t = Trainer::new(gpu, &whole, &data, optimizer(), config()).unwrap();
    let mut want: Vec<StepMetrics> = Vec::new();
    t.train(7, |m| want.extend_from_slice(m)).unwrap();
    t.finish(|m| want.extend_from_slice(m)).unwrap();
    let want_eval = pollster::block_on(t.evaluate(&data)).unwrap();
    let want_state = pollster::block_on(whole.state_dicts_batched()).unwrap();

    let gpus = vec![Gpu::new_blocking().unwrap(), Gpu::new_blocking().unwrap()];
    let models = BatchModel::sharded(&gpus, &spec(), G, 8).unwrap();
    assert_eq!(models.iter().map(|m| (m.first(), m.models())).collect::<Vec<_>>(), vec![(0, 3), (3, 2)]);
    let mut st = ShardedTrainer::new(&gpus, &models, &data, optimizer(), config()).unwrap();
    let mut got: Vec<StepMetrics> = Vec::new();
    st.train(7, |m| got.extend_from_slice(m)).unwrap();
    st.finish(|m| got.extend_from_slice(m)).unwrap();
    assert_eq!(st.step(), 7);
    assert_eq!(st.dead(), vec![false; G]);

    assert_eq!(got.len(), 7);
    for (a, b) in got.iter().zip(&want) {
        assert_eq!(a.step, b.step);
        close(&format!("loss at step {}", a.step), &a.loss, &b.loss);
        assert_eq!(a.correct, b.correct, "correct at step {}", a.step);
    }
    let eval = pollster::block_on(st.evaluate(&data)).unwrap();
    assert_eq!(eval.top1, want_eval.top1);
    let (a, b): (Vec<f32>, Vec<f32>) =
        eval.loss.iter().zip(&want_eval.loss).map(|(&x, &y)| (x as f32, y as f32)).unzip();
    close("evaluation loss", &a, &b);

    // The shards' weights, side by side, are the whole batch's.
    let parts: Vec<Vec<Vec<f32>>> =
        models.iter().map(|m| pollster::block_on(m.state_dicts_batched()).unwrap()).collect();
    for (i, w) in want_state.iter().enumerate() {
        let joined: Vec<f32> = parts.iter().flat_map(|p| p[i].iter().copied()).collect();
        close(&format!("state tensor {i}"), &joined, w);
    }

    // Both shards save into one directory under global indices, which loads as one batch.
    let dir = std::env::temp_dir().join(format!("modelbatch-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for m in &models {
        m.save_dir(&dir).unwrap();
    }
    let reloaded = BatchModel::new(gpu, &spec(), G, 99).unwrap();
    reloaded.load_dir(&dir).unwrap();
    let back = pollster::block_on(reloaded.state_dicts_batched()).unwrap();
    for (i, w) in back.iter().enumerate() {
        let joined: Vec<f32> = parts.iter().flat_map(|p| p[i].iter().copied()).collect();
        assert_eq!(w, &joined, "state tensor {i} after save/load");
    }
    // And as shards again (`modelbatch train --init DIR --devices 2`): each loads its slice
    // of the one directory; a file past the batch's last model is the last shard's error.
    let fresh = BatchModel::sharded(&gpus, &spec(), G, 77).unwrap();
    for (m, part) in fresh.iter().zip(&parts) {
        m.load_dir(&dir).unwrap();
        assert_eq!(&pollster::block_on(m.state_dicts_batched()).unwrap(), part, "shard from {}", m.first());
    }
    std::fs::copy(dir.join("model-0.safetensors"), dir.join(format!("model-{G}.safetensors"))).unwrap();
    fresh[0].load_dir(&dir).unwrap();
    let e = fresh[1].load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains(&format!("model-{G}.safetensors")) && e.contains(&format!("{G} models")), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();

    // Checkpoint after 4 sharded steps, resume into fresh shards, finish: the same 7 steps.
    let models = BatchModel::sharded(&gpus, &spec(), G, 8).unwrap();
    let mut st = ShardedTrainer::new(&gpus, &models, &data, optimizer(), config()).unwrap();
    st.train(4, |_| {}).unwrap();
    st.finish(|_| {}).unwrap();
    st.save_checkpoint(&dir).unwrap();
    let fresh = BatchModel::sharded(&gpus, &spec(), G, 1234).unwrap();
    let mut st = ShardedTrainer::new(&gpus, &fresh, &data, optimizer(), config()).unwrap();
    st.resume(&dir).unwrap();
    let mut tail: Vec<StepMetrics> = Vec::new();
    st.train(3, |m| tail.extend_from_slice(m)).unwrap();
    st.finish(|m| tail.extend_from_slice(m)).unwrap();
    assert_eq!(tail, got[4..].to_vec(), "resumed shards continue exactly");
    // The shards were saved in one step; shards of different steps, or more shards than
    // devices, are refused before any shard changes.
    let meta = dir.join("shard-1/trainer.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, text.replace("\"step\": 4", "\"step\": 5")).unwrap();
    let e = st.resume(&dir).unwrap_err().to_string();
    assert!(e.contains("different steps [4, 5]"), "{e}");
    assert_eq!(st.step(), 7, "a refused resume changes nothing");
    std::fs::write(&meta, text).unwrap();
    std::fs::create_dir(dir.join("shard-2")).unwrap();
    let e = st.resume(&dir).unwrap_err().to_string();
    assert!(e.contains("shard-2") && e.contains("more shards than the 2 devices"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shards_must_be_consecutive_slices() {
    let _gpu = gpu_or_skip!();
    let data = synthetic(16, 1);
    let gpus = vec![Gpu::new_blocking().unwrap(), Gpu::new_blocking().unwrap()];
    let models = vec![
        BatchModel::new_slice(&gpus[0], &spec(), 0..2, 0).unwrap(),
        BatchModel::new_slice(&gpus[1], &spec(), 3..5, 0).unwrap(),
    ];
    let e = ShardedTrainer::new(&gpus, &models, &data, optimizer(), config()).err().unwrap().to_string();
    assert!(e.contains("consecutive"), "{e}");
    let e = BatchModel::sharded(&gpus, &spec(), 1, 0).err().unwrap().to_string();
    assert!(e.contains("cannot shard 1 models over 2 devices"), "{e}");
}
