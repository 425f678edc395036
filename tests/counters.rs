//! A training step creates nothing on the GPU after the first one, counted by wgpu itself:
//! its internal object counters (`Device::get_internal_counters`, live counts kept by
//! wgpu-hal, enabled by wgpu's `counters` feature, which this crate turns on for tests only),
//! and its submission index.
//!
//! The counters are live counts (created minus destroyed), so a per-step object is seen only
//! while it exists: an object that a step keeps (a cache that grows, a leak) shows after the
//! GPU is idle; one that a step creates, uses and drops shows while that step is in flight,
//! which is when the counters are sampled first (right after each step is submitted).

mod common;

use modelbatch::bench::synthetic_dataset;
use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{Optimizer, Schedule, StepMetrics, TrainConfig, Trainer};
use modelbatch::{Gpu, Sgd};

/// The wgpu-hal counters that matter, by name.
fn counts(gpu: &Gpu) -> Vec<(&'static str, isize)> {
    let h = gpu.device.get_internal_counters().hal;
    vec![
        ("buffers", h.buffers.read()),
        ("buffer_memory", h.buffer_memory.read()),
        ("memory_allocations", h.memory_allocations.read()),
        ("bind_groups", h.bind_groups.read()),
        ("bind_group_layouts", h.bind_group_layouts.read()),
        ("compute_pipelines", h.compute_pipelines.read()),
        ("render_pipelines", h.render_pipelines.read()),
        ("pipeline_layouts", h.pipeline_layouts.read()),
        ("shader_modules", h.shader_modules.read()),
        ("textures", h.textures.read()),
        ("texture_views", h.texture_views.read()),
        ("samplers", h.samplers.read()),
        ("query_sets", h.query_sets.read()),
    ]
}

fn get(c: &[(&str, isize)], name: &str) -> isize {
    c.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap()
}

/// An empty submit; returns wgpu's submission index, which counts every index wgpu-core has
/// handed out (submits, and the index a `map_async` reserves to flush pending writes).
/// An empty submit also sends the queue's pending `write_buffer`s, so that they can retire.
fn probe(gpu: &Gpu) -> u64 {
    let index = format!("{:?}", gpu.queue.submit([]));
    // `SubmissionIndex { index: N }`: the number is not public otherwise.
    index
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected SubmissionIndex format: {index}"))
}

#[test]
fn training_steps_create_no_gpu_objects_and_submit_once() {
    let gpu = gpu_or_skip!();
    let (g, batch, every) = (3, 8, 3u64);
    let spec = ModelSpec::lenet();
    let model = BatchModel::new(gpu, &spec, g, 0).unwrap();
    let data = synthetic_dataset(&spec, 64, 1);
    let config = TrainConfig {
        batch_size: batch,
        metrics_every: every as usize,
        // The learning rate halves at steps 4 and 8: the rows are rewritten every step.
        schedules: vec![Schedule::parse("step:4:0.5").unwrap()],
        ..TrainConfig::default()
    };
    let sgd = Optimizer::Sgd(Sgd::new(0.05).momentum(0.9));
    let mut trainer = Trainer::new(gpu, &model, &data, sgd, config).unwrap();
    let mut metrics: Vec<StepMetrics> = Vec::new();

    // The first step (and a metrics readback) may create what it likes.
    trainer.train(1, |m| metrics.extend_from_slice(m)).unwrap();
    trainer.finish(|m| metrics.extend_from_slice(m)).unwrap();
    probe(gpu);
    gpu.wait_idle().unwrap();
    let base = counts(gpu);
    assert!(
        get(&base, "buffers") > 0 && get(&base, "compute_pipelines") > 0 && get(&base, "bind_groups") > 0,
        "wgpu's counters read zero: is the `counters` feature of the wgpu dev-dependency on? {base:?}"
    );
    let plan_base = trainer.plan().stats();

    let steps = 8u64;
    for s in 2..=steps {
        let before = probe(gpu);
        let plan_before = trainer.plan().stats();
        trainer.train(1, |m| metrics.extend_from_slice(m)).unwrap();
        // In flight: the step's own objects (if it made any) are still alive.
        let live = counts(gpu);
        let after = probe(gpu);
        assert_eq!(trainer.plan().stats().submits, plan_before.submits + 1, "step {s}: one plan submit per step");
        // Submission indices the step used: its submit, plus, on a step that starts a metrics
        // readback (every `every` steps), the readback's copy submit and the index its
        // `map_async` reserves (wgpu-core's flush of pending writes to the mapped buffer).
        let want = if s % every == 0 { 3 } else { 1 };
        assert_eq!(after - before - 1, want, "step {s}: submission indices used (1 per step, 3 with a readback)");
        for ((name, now), (_, was)) in live.iter().zip(&base) {
            // `queue.write_buffer` stages its data in a fresh buffer, freed once the submit
            // that carries it has run: this step writes its sample indices before its submit
            // and the scheduled learning-rate rows after it, at most two buffers in flight.
            // (Their bytes depend on the driver's alignment: memory is compared once idle.)
            let allowed = match *name {
                "buffers" => 2,
                "buffer_memory" => continue,
                _ => 0,
            };
            assert!(now - was <= allowed, "step {s} in flight: {name} {was} -> {now} (allowed +{allowed})");
        }
        gpu.wait_idle().unwrap();
        // Idle: every counter is back where it was.
        assert_eq!(counts(gpu), base, "step {s}: GPU objects after the step, once the GPU is idle");
    }
    trainer.finish(|m| metrics.extend_from_slice(m)).unwrap();
    probe(gpu);
    gpu.wait_idle().unwrap();
    assert_eq!(counts(gpu), base, "after the last readback");

    let stats = trainer.plan().stats();
    assert_eq!(stats.submits, plan_base.submits + steps - 1, "one submit per step");
    assert_eq!(stats.buffers, plan_base.buffers);
    assert_eq!(stats.staging_buffers, plan_base.staging_buffers);
    // The steps really ran: every step's metrics came back, through three readbacks.
    assert_eq!(metrics.iter().map(|m| m.step).collect::<Vec<_>>(), (0..steps).collect::<Vec<_>>());
    assert!(metrics.iter().all(|m| m.loss.len() == g && m.loss.iter().all(|l| l.is_finite())));
}
