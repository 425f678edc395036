//! Kernel shapes per adapter ([`Tuning`]): training gives the same results under every
//! tuning (bit for bit where the split-K counts stay, to rounding where they change),
//! `Gpu::with_tuning` checks its values, and `bench::tune` measures candidates and returns
//! the fastest. (`tests/conv.rs` and `tests/ops.rs` check each kernel under the extremes.)

mod common;

use modelbatch::bench::{tune, Tune};
use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::plan::Signature;
use modelbatch::train::{Dataset, Optimizer, Order, StepMetrics, TrainConfig, Trainer};
use modelbatch::tuning::CONFIRM;
use modelbatch::{Adam, Gpu, PerModel, Sgd, Tuning};
use serde_json::Value;

fn synthetic(n: usize) -> Dataset {
    let mut rng = modelbatch::nn::Rng::new(9);
    let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
    let images = labels
        .iter()
        .flat_map(|&l| (0..784).map(move |p| if (p % 28) % 10 == l as usize { 210 } else { 15 }))
        .collect();
    Dataset { images, labels, n, sample: vec![1, 28, 28], classes: 10, name: "synthetic".into() }
}

/// Five steps of three LeNets (momentum SGD, one learning rate per model): the metrics of
/// every step, the final weights and the step plan's kernels and grids.
fn run(gpu: &Gpu) -> (Vec<StepMetrics>, Vec<Vec<f32>>, Signature) {
    run_with(gpu, Optimizer::Sgd(Sgd::new(PerModel::log_space(0.02, 0.1, 3)).momentum(0.9)))
}

fn run_with(gpu: &Gpu, opt: Optimizer) -> (Vec<StepMetrics>, Vec<Vec<f32>>, Signature) {
    let data = synthetic(64);
    let model = BatchModel::new(gpu, &ModelSpec::lenet(), 3, 5).unwrap();
    let config = TrainConfig { batch_size: 16, metrics_every: 1, order: Order::PerModel, ..TrainConfig::default() };
    let mut t = Trainer::new(gpu, &model, &data, opt, config).unwrap();
    let signature = t.plan().signature();
    let mut metrics = Vec::new();
    t.train(5, |m| metrics.extend_from_slice(m)).unwrap();
    t.finish(|m| metrics.extend_from_slice(m)).unwrap();
    (metrics, pollster::block_on(model.state_dicts_batched()).unwrap(), signature)
}

fn tuned(gpu: &Gpu, text: &str) -> Gpu {
    gpu.with_tuning(gpu.tuning().apply(text).unwrap()).unwrap()
}

#[test]
fn shapes_that_keep_the_splits_train_bit_for_bit_alike() {
    // The direct weight gradient (the tiled one splits its depth otherwise), and GEMMs that
    // walk their whole depth (`gemm_split` adds slices).
    let gpu = &tuned(gpu_or_skip!(), "grad_weight_tile=0,gemm_split=0");
    let (m0, w0, s0) = run(gpu);
    // Workgroup sizes, the forward's channel blocks, strips, one position per invocation or
    // tiles, splits sharing workgroups: no sum changes its order. (With conv_ob=7 the
    // direct kernel stages two vec4 of weights per tap, and conv2's input gradient sums its
    // 16 channels in two dispatches, the second continuing the first's sums.)
    // (Relative to this device's tuning, so that each one changes something.)
    let t = gpu.tuning();
    for text in [
        "gemm_wg=16,conv_lanes=128,conv_ob=2,conv_strip=8".to_string(),
        "gemm_wg=4,conv_lanes=16,conv_ob=7,conv_strip=12".to_string(),
        format!("conv_tile=0,conv_pixel={}", 1 - t.conv_pixel),
        format!("conv_tile=0,conv_pixel={},conv_ob=8,conv_lanes=256", 1 - t.conv_pixel),
        // The tiled convolution adds in the direct kernels' order (channel, row, column).
        format!("conv_tile={},tile_px=2", if t.conv_tile == 0 { 128 } else { 0 }),
        format!("split_lanes={}", 1 - t.split_lanes),
        // Two GEMM blocks per invocation or one.
        format!("gemm_tile=0,gemm_cols={}", 3 - t.gemm_cols),
        // Two stacked (rows) or one.
        format!("gemm_tile=0,gemm_rows={}", 3 - t.gemm_rows),
    ] {
        let text = text.as_str();
        let (m1, w1, s1) = run(&tuned(gpu, text));
        assert_ne!(s0, s1, "{text}: other kernels or grids");
        assert_eq!(m0, m1, "{text}: metrics");
        assert_eq!(w0, w1, "{text}: weights");
    }
    // The same for the tiled convolution with 4 positions per invocation, which pools (a
    // small batch keeps 4 positions where split_threads is 1; that changes the splits, so
    // the two runs compare with each other).
    let tiles = tuned(gpu, "conv_tile=64,tile_px=4,split_threads=1,folds=1");
    let (m1, w1, s1) = run(&tiles);
    let (m2, w2, s2) = run(&tuned(&tiles, "folds=3"));
    assert_ne!(s1, s2, "tiles: the pooling folds");
    assert_eq!((m1, w1), (m2, w2), "tiles: pooling in the epilogue");
}

/// The optimizer updates every parameter tensor in as few dispatches as the adapter's
/// storage-buffer limit allows (LeNet: 10 tensors), or `update_tensors` per dispatch: the
/// same weights bit for bit, SGD and AdamW.
#[test]
fn multi_tensor_updates_give_the_same_weights() {
    let gpu = gpu_or_skip!();
    let updates = |s: &Signature, entry: &str| s.iter().filter(|d| d.0 == entry).count();
    let limits = gpu.limits();
    let slots = (limits.max_storage_buffers_per_shader_stage as usize)
        .min(limits.max_buffers_and_acceleration_structures_per_shader_stage as usize - 1);
    let optimizers = [
        ("sgd", 3, Optimizer::Sgd(Sgd::new(PerModel::log_space(0.02, 0.1, 3)).momentum(0.9).weight_decay(1e-3))),
        ("adam", 4, Optimizer::Adam(Adam::adamw(PerModel::log_space(1e-3, 1e-2, 3)))),
    ];
    for (entry, per, opt) in optimizers {
        let (m0, w0, s0) = run_with(&tuned(gpu, "update_tensors=0"), opt.clone());
        let most = ((slots - 2) / per).clamp(1, 16);
        assert_eq!(updates(&s0, entry), 10usize.div_ceil(most), "{entry}: dispatches for 10 tensors, {most} at a time");
        for k in [1, 3, 16] {
            let (m1, w1, s1) = run_with(&tuned(gpu, &format!("update_tensors={k}")), opt.clone());
            assert_eq!(updates(&s1, entry), 10usize.div_ceil(k.min(most)), "{entry}: update_tensors={k}");
            assert_eq!(m0, m1, "{entry}: update_tensors={k}: metrics");
            assert_eq!(w0, w1, "{entry}: update_tensors={k}: weights");
        }
    }
}

#[test]
fn every_tuning_trains_alike_to_rounding() {
    let gpu = gpu_or_skip!();
    let (m0, w0, s0) = run(gpu);
    let losses = |m: &[StepMetrics]| m.iter().flat_map(|s| s.loss.clone()).collect::<Vec<f32>>();
    // The built-in values of both kinds of adapter, whichever this one is.
    let builtin = [Tuning::GPU.to_string(), Tuning::SOFTWARE.to_string()];
    let other = builtin.iter().find(|t| **t != gpu.tuning().to_string()).cloned();
    // GEMMs with their depth split over 2 to 16 slices where this adapter splits none, or
    // none where it does.
    let split = format!("gemm_split={}", if gpu.tuning().gemm_split == 0 { 1 << 24 } else { 0 });
    for text in other.as_deref().into_iter().chain([
        split.as_str(),
        "gemm_wg=4,conv_lanes=8,conv_ob=1,grad_weight_ob=1,conv_strip=8,split_threads=1,min_split_depth=4096",
        "gemm_wg=16,conv_lanes=256,conv_ob=8,grad_weight_ob=3,conv_strip=12,split_threads=1048576,min_split_depth=1,reduce_lanes=32",
        "folds=0",
        // naga's loop counters back in every loop of the crate's shaders.
        "loop_counters=1",
    ]) {
        let g = tuned(gpu, text);
        let (m1, w1, s1) = run(&g);
        assert_ne!(s0, s1, "{text}: other kernels or grids");
        assert_eq!(m0.len(), m1.len());
        for (a, b) in losses(&m0).iter().zip(losses(&m1)) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{text}: loss {a} vs {b}");
        }
        for (wa, wb) in w0.iter().zip(&w1) {
            for (a, b) in wa.iter().zip(wb) {
                assert!((a - b).abs() <= 1e-4, "{text}: weight {a} vs {b}");
            }
        }
        assert_eq!(g.tuning().to_string(), g.report().tuning, "the report names the tuning in use");
    }
}

/// `folds`: with the tiled weight gradient, a LeNet step sums no bias gradient on its own
/// (five sums without the folds) and runs one max-pooling gradient instead of two; with bit
/// 1, no max pooling of its own (both convolutions pool) with the tiled kernels, both with
/// the direct ones (which do not pool).
#[test]
fn folds_remove_the_bias_sums_and_the_pooling_passes() {
    let gpu = tuned(gpu_or_skip!(), "grad_weight_tile=64,folds=1");
    let count = |s: &Signature, label: &str| s.iter().filter(|d| d.0 == label).count();
    let (_, _, on) = run(&gpu);
    let (_, _, off) = run(&tuned(&gpu, "folds=0"));
    assert_eq!(count(&on, "sum"), 0, "{on:?}");
    assert!(count(&off, "sum") >= 5, "{off:?}");
    assert_eq!((count(&on, "maxpool2d_grad"), count(&off, "maxpool2d_grad")), (1, 2));
    // With bit 2 and the input gradient's products (a small split_threads lets this small
    // batch take them), conv2's pooling gradient folds into both of its readers too.
    let (m1, w1, both) = run(&tuned(&gpu, "grad_weight_tile=256,grad_input_col=64,split_threads=1,folds=5"));
    let (m0, w0, _) = run(&tuned(&gpu, "grad_weight_tile=256,grad_input_col=64,split_threads=1,folds=0"));
    assert_eq!(count(&both, "maxpool2d_grad"), 0, "{both:?}");
    assert_eq!(count(&both, "conv2d_grad_input_col"), 1, "{both:?}");
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * a.abs().max(1.0);
    let losses = |m: &[StepMetrics]| m.iter().flat_map(|s| s.loss.clone()).collect::<Vec<f32>>();
    assert!(losses(&m0).iter().zip(losses(&m1)).all(|(&a, b)| close(a, b)), "losses");
    assert!(w0.iter().flatten().zip(w1.iter().flatten()).all(|(&a, &b)| close(a, b)), "weights");
    assert_eq!((count(&on, "maxpool2d"), count(&off, "maxpool2d")), (2, 2));
    for (text, pools) in
        [("folds=3,conv_tile=0,conv_pixel=0", 2), ("folds=3,conv_tile=64,tile_px=4,split_threads=1", 0)]
    {
        let (_, _, pooled) = run(&tuned(&gpu, text));
        assert_eq!(count(&pooled, "maxpool2d"), pools, "{text}: {pooled:?}");
        assert_eq!(count(&pooled, "maxpool2d_grad"), 1, "{text}: {pooled:?}");
    }
}

#[test]
fn with_tuning_checks_its_values() {
    let gpu = gpu_or_skip!();
    let bad = Tuning { conv_lanes: 100, ..gpu.tuning() };
    let err = gpu.with_tuning(bad).err().expect("conv_lanes=100 is refused").to_string();
    assert!(err.contains("conv_lanes") && err.contains("power of two"), "{err}");
    let max = gpu.limits().max_compute_invocations_per_workgroup;
    if max < 256 {
        let err = gpu.with_tuning(Tuning { gemm_wg: 16, ..gpu.tuning() }).err().expect("over the limit").to_string();
        assert!(err.contains("gemm_wg=16"), "{err}");
    }
    // A view shares the device: the original keeps its tuning.
    let view = tuned(gpu, "conv_ob=2");
    assert_eq!(view.tuning().conv_ob, 2);
    assert_ne!(gpu.tuning().conv_ob, 2);
}

#[test]
fn tune_measures_candidates_and_returns_the_fastest() {
    let gpu = gpu_or_skip!();
    let t = Tune {
        spec: ModelSpec::lenet(),
        model: "lenet".into(),
        models: 2,
        batch_size: 4,
        steps: 1,
        warmup: 0,
        repeats: 1,
        margin: 0.0,
        keys: None,
    };
    let mut lines: Vec<Value> = Vec::new();
    let mut progress = Vec::new();
    let best = tune(gpu, &t, |p| progress.push(p.to_string()), |v| lines.push(v)).unwrap();
    let last = lines.pop().expect("a summary line");
    assert_eq!(last["best"], best.to_string().as_str(), "{last}");
    assert_eq!(last["start"], gpu.tuning().to_string().as_str(), "{last}");
    let all: Vec<&Value> = lines.iter().filter(|l| l.get("steps_per_s").is_some()).collect();
    // (Checks, key "confirm", measure the best and a candidate again.)
    let measured: Vec<&Value> = all.iter().copied().filter(|l| l["key"] != CONFIRM).collect();
    assert!(measured.len() >= 4, "the start and several candidates are measured: {lines:?}");
    assert_eq!(measured[0]["key"], "start");
    // With a zero margin, the best is the start (speedup 1) or a candidate that was faster in
    // its measurement and in its check right after it (best, candidate, best).
    let speedup = last["speedup"].as_f64().unwrap();
    if last["best"] == last["start"] {
        assert_eq!(speedup, 1.0, "{last}");
    } else {
        assert!(speedup > 1.0, "{last}");
        let at = all.iter().position(|l| l["key"] != CONFIRM && l["tuning"] == last["best"]).expect("measured");
        let check: Vec<&str> = all[at + 1..at + 4].iter().map(|l| l["key"].as_str().unwrap()).collect();
        assert_eq!(check, [CONFIRM; 3], "{lines:?}");
        assert_eq!(all[at + 2]["tuning"], last["best"]);
    }
    for l in &all {
        assert!(Tuning::default().apply(l["tuning"].as_str().unwrap()).is_ok(), "{l}");
        assert_eq!(l["models"], 2);
    }
    // Candidates that compile to kernels already measured are skipped, not timed twice (at
    // this size, for example, wider convolution workgroups than the short rows need).
    assert!(progress.iter().any(|p| p.contains("already measured")), "{progress:?}");
    let distinct: std::collections::HashSet<&str> = measured.iter().map(|l| l["tuning"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), measured.len(), "no tuning measured twice");
    // Some keys only, in the order given.
    // (loop_counters offers one other value, folds four; each key changes LeNet's kernels on
    // either built-in tuning, folds 3, 5 and 7 only where the tiled convolutions pool or the
    // input gradient's products take the pooled dy.)
    let t = Tune { keys: Some(vec!["loop_counters".into(), "folds".into()]), ..t };
    let mut lines: Vec<Value> = Vec::new();
    tune(gpu, &t, |_| {}, |v| lines.push(v)).unwrap();
    let keys: Vec<&str> = lines.iter().filter_map(|l| l["key"].as_str()).filter(|k| *k != CONFIRM).collect();
    assert_eq!(keys[..3], ["start", "loop_counters", "folds"], "{lines:?}");
    assert!(keys[3..].iter().all(|&k| k == "folds") && keys.len() <= 7, "{lines:?}");
    let t = Tune { keys: Some(vec!["gemm".into()]), ..t };
    let err = tune(gpu, &t, |_| {}, |_| {}).unwrap_err().to_string();
    assert!(err.contains("unknown tuning key \"gemm\""), "{err}");
}
