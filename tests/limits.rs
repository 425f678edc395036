//! Memory: the plan knows what it needs before allocating, and a tensor beyond the
//! adapter's binding limit is a clear error that says how many models would fit.

mod common;

use modelbatch::nn::{BatchModel, ModelSpec};
use modelbatch::{DType, Graph, Plan, Tuning};

#[test]
fn estimate_matches_what_the_plan_allocates() {
    let gpu = gpu_or_skip!();
    let spec = ModelSpec::lenet();
    let model = BatchModel::new(gpu, &spec, 3, 0).unwrap();
    let mut graph = Graph::new(3);
    let x = graph.input("x", &[4, 1, 28, 28], DType::F32).unwrap();
    let built = spec.build(&mut graph, x, modelbatch::nn::Mode::Eval).unwrap();
    // Without a device: the plan under the default `folds` (the folds decide which tensors
    // share buffers).
    let est = Plan::estimate(&graph, &[built.output], &[]).unwrap();
    let default_folds = gpu.with_tuning(Tuning { folds: Tuning::default().folds, ..gpu.tuning() }).unwrap();
    let plan = Plan::new(&default_folds, &graph, &[built.output], &[]).unwrap();
    assert_eq!(est.bytes, plan.stats().bytes);
    assert_eq!(est.buffers, plan.stats().buffers);
    assert!(est.largest >= 3 * 4 * 6 * 24 * 24 * 4, "the first conv output is the largest tensor");
    assert_eq!(plan.stats().scratch_bytes, 0, "no weight gradient, no split-K scratch");
    // On a device: under its tuning, every fold value.
    for folds in 0..=7 {
        let gpu = gpu.with_tuning(Tuning { folds, ..gpu.tuning() }).unwrap();
        let est = Plan::estimate_on(&gpu, &graph, &[built.output], &[]).unwrap();
        let plan = Plan::new(&gpu, &graph, &[built.output], &[]).unwrap();
        assert_eq!((est.bytes, est.buffers), (plan.stats().bytes, plan.stats().buffers), "folds={folds}");
    }
    drop(model);
}

#[test]
fn split_k_scratch_is_reported() {
    let gpu = gpu_or_skip!().with_tuning(modelbatch::Tuning::SOFTWARE).unwrap();
    // LeNet's first weight gradient (depth 64 images x 24 x 24) is split: its partial sums
    // live in a scratch buffer, `splits x 3 models x (150 weights + 6 biases)` floats; the
    // second's too, `splits x 3 x (2400 + 16)` floats (it sums the bias gradient as well).
    let mut graph = Graph::new(3);
    let x = graph.input("x", &[64, 1, 28, 28], DType::F32).unwrap();
    let built = ModelSpec::lenet().build(&mut graph, x, modelbatch::nn::Mode::Train).unwrap();
    let params = built.params();
    let grads = modelbatch::autograd::grad(&mut graph, built.output, None, &params).unwrap();
    let keep: Vec<_> = grads.into_iter().flatten().collect();
    let plan = Plan::new(&gpu, &graph, &keep, &[]).unwrap();
    let labels = plan.dispatch_labels();
    assert!(labels.contains(&"conv2d_grad_weight_reduce"), "{labels:?}");
    let scratch = plan.stats().scratch_bytes;
    let (conv1, conv2) = (3 * 156 * 4, 3 * 2416 * 4);
    let sizes = |b: u64| scratch > b * conv2 && (scratch - b * conv2) % conv1 == 0;
    assert!((1..=scratch / conv2).any(sizes), "{scratch}");
    assert!(scratch <= 64 << 20);
}

#[test]
fn a_tensor_beyond_the_buffer_limit_says_how_many_models_fit() {
    let gpu = gpu_or_skip!();
    // Whole-batch tensors (inputs, weights, kept outputs) must fit one buffer; bindings
    // beyond the limit are split into chunks of models instead (tests/split.rs).
    let max = 1u64 << 20;
    let gpu = &gpu.restricted(max, max);
    // G = 8 models whose input alone is 1.5x the limit: 5 models would fit.
    let per_model = (max as usize / 4) * 3 / 2 / 8;
    let mut graph = Graph::new(8);
    let x = graph.input("x", &[per_model], DType::F32).unwrap();
    let y = graph.relu(x).unwrap();
    let est = Plan::estimate(&graph, &[y], &[]).unwrap();
    assert!(est.largest > max);
    let e = Plan::new(gpu, &graph, &[y], &[]).err().expect("must not compile").to_string();
    assert!(e.contains("use at most 5 models") && e.contains("G=8"), "{e}");
}

#[test]
fn foreign_tensor_ids_are_errors_not_panics() {
    let small = Graph::new(2);
    let mut big = Graph::new(2);
    let t = big.input("x", &[3], DType::F32).unwrap();
    let t = big.relu(t).unwrap();
    let e = Plan::estimate(&small, &[t], &[]).unwrap_err().to_string();
    assert!(e.contains("not in this graph"), "{e}");
}
