//! Beyond the adapter's limits: a plan whose tensors pass the binding size splits its batch
//! into chunks of models (slices bound at offsets, or staged through chunk-sized buffers),
//! and gives the results of the unsplit run. Small limits are forced with `Gpu::restricted`.

mod common;

use common::assert_close_to_scale as close;
use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::train::{evaluate, Dataset, Normalize, Optimizer, Order, StepMetrics, TrainConfig, Trainer};
use modelbatch::{DType, Gpu, Graph, PerModel, Plan, Sgd, Tuning};

fn synthetic(n: usize, seed: u64) -> Dataset {
    common::small_images(n, seed)
}

/// Conv, BatchNorm (running estimates: state updated in place), dropout (per-model seeds),
/// pooling and linear layers: every kind of per-model tensor a chunk must slice.
fn spec() -> ModelSpec {
    common::small_convnet(5, true)
}

struct Run {
    metrics: Vec<StepMetrics>,
    state: Vec<Vec<f32>>,
    eval_loss: Vec<f64>,
    chunks: usize,
}

fn train(gpu: &Gpu, g: usize, data: &Dataset) -> Run {
    let model = BatchModel::new(gpu, &spec(), g, 3).unwrap();
    let opt = Optimizer::Sgd(Sgd::new(PerModel::log_space(0.01, 0.2, g)).momentum(0.9));
    let config =
        TrainConfig { batch_size: 8, metrics_every: 2, seed: 11, order: Order::PerModel, ..TrainConfig::default() };
    let mut t = Trainer::new(gpu, &model, data, opt, config).unwrap();
    let mut metrics = Vec::new();
    t.train(5, |m| metrics.extend_from_slice(m)).unwrap();
    t.finish(|m| metrics.extend_from_slice(m)).unwrap();
    let chunks = t.plan().stats().chunks;
    let eval = pollster::block_on(evaluate(gpu, &model, data, 16, Normalize::default())).unwrap();
    let state = pollster::block_on(model.state_dicts_batched()).unwrap();
    Run { metrics, state, eval_loss: eval.loss, chunks }
}

#[test]
fn a_split_batch_trains_and_evaluates_like_the_whole_batch() {
    let gpu = gpu_or_skip!();
    let g = 7;
    let data = synthetic(48, 2);
    let whole = train(gpu, g, &data);
    assert_eq!(whole.chunks, 1);
    // The conv output is 8 images x 5 x 12 x 12 floats = 23 KiB per model: a 64 KiB binding
    // takes two models per pass, so G=7 runs in 4 chunks.
    let small = gpu.restricted(64 << 10, 1 << 30);
    let split = train(&small, g, &data);
    assert_eq!(split.chunks, 4, "G=7 in chunks of 2");
    assert_eq!(split.metrics.len(), whole.metrics.len());
    for (s, w) in split.metrics.iter().zip(&whole.metrics) {
        assert_eq!(s.step, w.step);
        close(&format!("loss at step {}", s.step), &s.loss, &w.loss);
        assert_eq!(s.correct, w.correct, "correct at step {}", s.step);
    }
    for (i, (s, w)) in split.state.iter().zip(&whole.state).enumerate() {
        close(&format!("state tensor {i}"), s, w);
    }
    let (se, we): (Vec<f32>, Vec<f32>) =
        split.eval_loss.iter().zip(&whole.eval_loss).map(|(&s, &w)| (s as f32, w as f32)).unzip();
    close("evaluation loss", &se, &we);
    // Models differ (per-model learning rates), so equality is not trivial.
    assert!(whole.state[0][..45] != whole.state[0][45 * 3..45 * 4]);
    // Every parameter tensor in one optimizer dispatch per chunk (as on GPUs): the same run.
    let multi = small.with_tuning(Tuning { update_tensors: 0, ..small.tuning() }).unwrap();
    let run = train(&multi, g, &data);
    assert_eq!(run.chunks, 4);
    assert_eq!(run.metrics, split.metrics, "multi-tensor updates in chunks: metrics");
    assert_eq!(run.state, split.state, "multi-tensor updates in chunks: weights");
}

/// G=10 models of `n` floats through relu + add with 16 KiB bindings (3 chunks of 4).
fn relu_add_in_chunks(gpu: &Gpu, n: usize) {
    let g = 10;
    let mut graph = Graph::new(g);
    let x = graph.input("x", &[n], DType::F32).unwrap();
    let y = graph.relu(x).unwrap();
    let z = graph.add(y, x).unwrap();
    let small = gpu.restricted(16 << 10, 1 << 30);
    let plan = Plan::new(&small, &graph, &[z], &[]).unwrap();
    assert_eq!(plan.stats().chunks, 3);
    let data = common::randn(4, g * n);
    plan.write(x, &data).unwrap();
    plan.run().unwrap();
    let got = plan.read_blocking(z).unwrap();
    let want: Vec<f32> = data.iter().map(|&v| v.max(0.0) + v).collect();
    assert_eq!(got, want, "n = {n}");
}

#[test]
fn a_graph_split_in_chunks_computes_every_model() {
    let gpu = gpu_or_skip!();
    // The input and the kept output are whole-batch buffers. With 1000 floats per model a
    // chunk of 4 models (16,000 bytes) is not a multiple of the 256-byte offset alignment,
    // so chunks are staged through copies; with 1024 floats the slices are bound in place.
    relu_add_in_chunks(gpu, 1000);
    relu_add_in_chunks(gpu, 1024);
}

/// `relu(x) + relu(relu(x) * 2)`-like chain with two temporaries, `n` values per model.
fn chain(g: usize, n: usize) -> (Graph, modelbatch::TensorId, modelbatch::TensorId) {
    let mut graph = Graph::new(g);
    let x = graph.input("x", &[n], DType::F32).unwrap();
    let y = graph.relu(x).unwrap();
    let z = graph.add(y, x).unwrap();
    let w = graph.relu(z).unwrap();
    let out = graph.add(w, y).unwrap();
    (graph, x, out)
}

#[test]
fn plans_run_in_turn_share_their_temporaries() {
    let gpu = gpu_or_skip!();
    let g = 3;
    let (big, bx, bout) = chain(g, 1000);
    let (small, sx, sout) = chain(g, 600);
    let a = Plan::new(gpu, &big, &[bout], &[]).unwrap();
    let b = Plan::sharing_temporaries(gpu, &small, &[sout], &[], &a).unwrap();
    assert!(a.stats().temporary_bytes > 0 && a.stats().borrowed_bytes == 0);
    // Every temporary of the smaller plan fits one of the larger plan's.
    assert!(b.stats().borrowed_bytes > 0 && b.stats().borrowed_bytes <= a.stats().temporary_bytes);
    assert_eq!(b.stats().temporary_bytes, b.stats().borrowed_bytes);
    // Without sharing the smaller plan owns its temporaries.
    let c = Plan::sharing(gpu, &small, &[sout], &[], &a).unwrap();
    assert_eq!(c.stats().borrowed_bytes, 0);
    let want = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .map(|&x| {
                let y = x.max(0.0);
                (y + x).max(0.0) + y
            })
            .collect()
    };
    // Alternating runs: each plan writes its temporaries before reading them, and the kept
    // outputs are its own.
    for round in 0..3 {
        let (vb, vs) = (common::randn(10 + round, g * 1000), common::randn(20 + round, g * 600));
        a.write(bx, &vb).unwrap();
        b.write(sx, &vs).unwrap();
        a.run().unwrap();
        b.run().unwrap();
        assert_eq!(b.read_blocking(sout).unwrap(), want(&vs), "round {round}: the borrowing plan");
        assert_eq!(a.read_blocking(bout).unwrap(), want(&vb), "round {round}: the lending plan");
    }
}

#[test]
fn one_model_beyond_the_binding_limit_asks_for_a_smaller_batch() {
    let gpu = gpu_or_skip!();
    let mut graph = Graph::new(4);
    let x = graph.input("x", &[2, 1000], DType::F32).unwrap();
    let y = graph.relu(x).unwrap();
    let z = graph.relu(y).unwrap();
    // 8,000 bytes per model; bindings of 4 KiB cannot take one model.
    let small = gpu.restricted(4 << 10, 1 << 30);
    let e = Plan::new(&small, &graph, &[z], &[]).err().expect("must not compile").to_string();
    assert!(e.contains("for a single model") && e.contains("smaller batch"), "{e}");
}

#[test]
fn evaluation_takes_fewer_samples_per_pass_when_one_model_does_not_fit() {
    let gpu = gpu_or_skip!();
    let data = synthetic(40, 5);
    let model = BatchModel::new(gpu, &spec(), 3, 1).unwrap();
    let whole = pollster::block_on(evaluate(gpu, &model, &data, 40, Normalize::default())).unwrap();
    // 40 images x 5 x 12 x 12 floats = 113 KiB per model for the conv output: a 16 KiB
    // binding takes 5 images of one model per pass.
    let small = gpu.restricted(16 << 10, 1 << 30);
    let split = pollster::block_on(evaluate(&small, &model, &data, 40, Normalize::default())).unwrap();
    assert_eq!(split.top1, whole.top1);
    assert_eq!(split.top5, whole.top5);
    let (a, b): (Vec<f32>, Vec<f32>) = split.loss.iter().zip(&whole.loss).map(|(&x, &y)| (x as f32, y as f32)).unzip();
    close("evaluation loss", &a, &b);
}

/// A BatchNorm2d without running estimates normalises with each evaluation batch's
/// statistics: an evaluation batch that does not fit one pass runs in phases over passes
/// that fit and gives what one pass gives (a second BatchNorm2d with running estimates,
/// evaluation batches of 40, and of 15 with a remainder of 10).
#[test]
fn evaluation_with_batch_statistics_splits_its_batch_in_phases() {
    let gpu = gpu_or_skip!();
    let data = synthetic(40, 5);
    let spec = ModelSpec::from_json(
        r#"{"input": [1, 12, 12], "layers": [
            {"type": "conv2d", "out_channels": 5, "kernel_size": 3, "padding": 1},
            {"type": "batchnorm2d", "track_running_stats": false},
            {"type": "relu"},
            {"type": "maxpool2d", "kernel_size": 2},
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
            {"type": "batchnorm2d", "momentum": 0.5},
            {"type": "flatten"},
            {"type": "linear", "out_features": 10}
        ]}"#,
    )
    .unwrap();
    let model = BatchModel::new(gpu, &spec, 3, 1).unwrap();
    // Running estimates other than the initial ones.
    let opt = Optimizer::Sgd(Sgd::new(0.05));
    let config = TrainConfig { batch_size: 10, ..TrainConfig::default() };
    let mut t = Trainer::new(gpu, &model, &data, opt, config).unwrap();
    t.train(2, |_| {}).unwrap();
    t.finish(|_| {}).unwrap();
    // The first conv's output is 2,880 bytes per sample: a 16 KiB binding takes 5 samples of
    // one model per pass.
    let small = gpu.restricted(16 << 10, 1 << 30);
    for batch in [40, 15] {
        let want = pollster::block_on(evaluate(gpu, &model, &data, batch, Normalize::default())).unwrap();
        let got = pollster::block_on(evaluate(&small, &model, &data, batch, Normalize::default())).unwrap();
        assert_eq!(got.top1, want.top1, "batch {batch}");
        assert_eq!(got.top5, want.top5, "batch {batch}");
        let (a, b): (Vec<f32>, Vec<f32>) = got.loss.iter().zip(&want.loss).map(|(&x, &y)| (x as f32, y as f32)).unzip();
        close(&format!("evaluation loss, batch {batch}"), &a, &b);
    }
    // Passes of 5 samples each (the statistics of 5 samples) give losses the comparison above
    // tells apart (its tolerance: 1e-4 of the largest loss).
    let fives = pollster::block_on(evaluate(gpu, &model, &data, 5, Normalize::default())).unwrap();
    let whole = pollster::block_on(evaluate(gpu, &model, &data, 40, Normalize::default())).unwrap();
    let scale = whole.loss.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(fives.loss.iter().zip(&whole.loss).any(|(a, b)| (a - b).abs() > 1e-4 * scale), "{fives:?} {whole:?}");
}

/// The BatchNorm-free variant of `spec()` (dropout kept): batch statistics would change
/// with micro-batches, nothing else does.
fn spec_without_batchnorm() -> ModelSpec {
    common::small_convnet(5, false)
}

/// Four steps of 3 models at batch 14: (metrics, state, micro-batches, passes per step).
fn train_micro(gpu: &Gpu, spec: &ModelSpec, data: &Dataset) -> (Vec<StepMetrics>, Vec<Vec<f32>>, usize, usize) {
    let g = 3;
    let model = BatchModel::new(gpu, spec, g, 4).unwrap();
    let opt = Optimizer::Sgd(Sgd::new(PerModel::log_space(0.02, 0.2, g)).momentum(0.9));
    let config = TrainConfig { batch_size: 14, metrics_every: 2, seed: 3, ..TrainConfig::default() };
    let mut t = Trainer::new(gpu, &model, data, opt, config).unwrap();
    let mut metrics = Vec::new();
    t.train(4, |m| metrics.extend_from_slice(m)).unwrap();
    t.finish(|m| metrics.extend_from_slice(m)).unwrap();
    (metrics, pollster::block_on(model.state_dicts_batched()).unwrap(), t.micro_batches(), t.passes())
}

#[test]
fn a_batch_beyond_the_binding_limit_trains_in_micro_batches_like_one_pass() {
    let gpu = gpu_or_skip!();
    let data = synthetic(40, 7);
    let (want, want_state, micro, passes) = train_micro(gpu, &spec_without_batchnorm(), &data);
    assert_eq!((micro, passes), (1, 1));
    // The conv output is 2,880 bytes per sample: a 16 KiB binding holds 5 samples of one
    // model, so a batch of 14 runs as micro-batches of 5, 5 and 4 (and one model per chunk).
    let small = gpu.restricted(16 << 10, 1 << 30);
    let (got, got_state, micro, passes) = train_micro(&small, &spec_without_batchnorm(), &data);
    assert_eq!((micro, passes), (3, 3));
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(&want) {
        close(&format!("loss at step {}", a.step), &a.loss, &b.loss);
        assert_eq!(a.correct, b.correct, "correct at step {}", a.step);
    }
    for (i, (a, b)) in got_state.iter().zip(&want_state).enumerate() {
        close(&format!("state tensor {i}"), a, b);
    }
}

/// Two BatchNorm2d layers (the second without affine parameters, with a cumulative
/// average), parameters before, between and after them, and dropout.
fn spec_with_two_batchnorms() -> ModelSpec {
    ModelSpec::from_json(
        r#"{"input": [1, 12, 12], "layers": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"type": "batchnorm2d"},
            {"type": "relu"},
            {"type": "maxpool2d", "kernel_size": 2},
            {"type": "conv2d", "out_channels": 5, "kernel_size": 3},
            {"type": "batchnorm2d", "affine": false, "momentum": null},
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "dropout", "p": 0.2},
            {"type": "linear", "out_features": 10}
        ]}"#,
    )
    .unwrap()
}

#[test]
fn batchnorm_models_train_in_micro_batches_with_the_whole_batch_statistics() {
    let gpu = gpu_or_skip!();
    let data = synthetic(40, 7);
    for (what, spec, layers) in [("one BatchNorm2d", spec(), 1), ("two BatchNorm2d", spec_with_two_batchnorms(), 2)] {
        let (want, want_state, micro, passes) = train_micro(gpu, &spec, &data);
        assert_eq!((micro, passes), (1, 1), "{what}");
        // The first conv's output is 2,880 (5 channels) or 2,304 bytes (4) per sample: a 16
        // KiB binding holds 5 or 7 samples of one model, so a batch of 14 runs in parts.
        let small = gpu.restricted(16 << 10, 1 << 30);
        let (got, got_state, micro, passes) = train_micro(&small, &spec, &data);
        // Two forward phases per layer, then one backward phase per segment.
        assert!(micro > 1, "{what}: {micro} micro-batches");
        assert_eq!(passes, micro * (3 * layers + 1), "{what}: passes");
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            close(&format!("{what}: loss at step {}", a.step), &a.loss, &b.loss);
            assert_eq!(a.correct, b.correct, "{what}: correct at step {}", a.step);
        }
        // Parameters, and the running estimates updated once per step from the whole batch.
        let names: Vec<String> = spec.state_entries().unwrap().into_iter().map(|e| e.name).collect();
        for ((name, a), b) in names.iter().zip(&got_state).zip(&want_state) {
            close(&format!("{what}: {name}"), a, b);
        }
    }
}
