//! torchmb's layer suite on whole models described by ModelSpec, G = 17: each model of a
//! batch equals the same model run alone (outputs, parameter and input gradients, one SGD
//! step with momentum, Nesterov and weight decay, BatchNorm running statistics), and
//! backpropagating from one model leaves exact zeros in every other model's gradients.

mod common;

use modelbatch::nn::{BatchModel, Mode, ModelSpec};
use modelbatch::optim::SgdState;
use modelbatch::{autograd, DType, Gpu, Graph, Plan, Reduction, Sgd, TensorId};

const N: usize = 5;

struct Step {
    plan: Plan,
    x: TensorId,
    y: TensorId,
    seed: TensorId,
    out: TensorId,
    grads: Vec<TensorId>,
    sgd: SgdState,
}

fn step(gpu: &Gpu, model: &BatchModel, sgd: &Sgd) -> Step {
    let spec = model.spec();
    let g = model.models();
    let mut input = vec![N];
    input.extend(&spec.input);
    let mut graph = Graph::new(g);
    let x = graph.param("x", &input).unwrap();
    let y = graph.input("y", &[N], DType::U32).unwrap();
    let built = spec.build(&mut graph, x, Mode::Train).unwrap();
    let loss = graph.cross_entropy(built.output, y, Reduction::Mean).unwrap();
    let seed = graph.input("seed", &[], DType::F32).unwrap();
    let params = built.params();
    let mut wrt = params.clone();
    wrt.push(x);
    let grads: Vec<TensorId> =
        autograd::grad(&mut graph, loss, Some(seed), &wrt).unwrap().into_iter().map(Option::unwrap).collect();
    let pairs: Vec<_> = params.iter().copied().zip(grads.iter().copied()).collect();
    let sgd = sgd.attach(&mut graph, &pairs).unwrap();
    let mut updates = sgd.updates().to_vec();
    updates.extend(built.updates.iter().cloned());
    let mut keep = vec![built.output];
    keep.extend(&grads);
    let plan = model.plan(gpu, &graph, &keep, &updates).unwrap();
    sgd.upload(&plan).unwrap();
    plan.write(seed, &vec![1.0; g]).unwrap();
    Step { plan, x, y, seed, out: built.output, grads, sgd }
}

fn slice(v: &[f32], g: usize, m: usize) -> &[f32] {
    &v[m * v.len() / g..(m + 1) * v.len() / g]
}

fn specs() -> Vec<(&'static str, ModelSpec)> {
    let normnet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/normnet.json")).unwrap();
    vec![
        ("lenet", ModelSpec::lenet()),
        ("normnet", ModelSpec::from_json(&normnet).unwrap()),
        (
            "odd",
            ModelSpec::from_json(
                r#"{"input": [3, 9, 7], "layers": [
                {"type": "conv2d", "out_channels": 6, "kernel_size": [3, 2], "stride": 2, "padding": 1, "groups": 3},
                {"type": "batchnorm2d", "momentum": null}, {"type": "silu"},
                {"type": "avgpool2d", "kernel_size": 2, "stride": 1, "count_include_pad": false},
                {"type": "groupnorm", "num_groups": 2, "affine": false}, {"type": "tanh"},
                {"type": "flatten"}, {"type": "linear", "out_features": 7}, {"type": "sigmoid"},
                {"type": "linear", "out_features": 5}]}"#,
            )
            .unwrap(),
        ),
    ]
}

fn data(spec: &ModelSpec, g: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let per: usize = spec.input.iter().product::<usize>() * N;
    let classes = *spec.shapes().unwrap().last().unwrap().last().unwrap();
    (common::randn(seed, g * per), common::labels(seed + 1, g * N, classes))
}

#[test]
fn each_model_in_a_batch_of_17_equals_the_model_alone() {
    let gpu = gpu_or_skip!();
    let g = 17;
    let sgd = Sgd::new(0.05).momentum(0.9).nesterov(true).weight_decay(1e-3);
    for (name, spec) in specs() {
        let batch = BatchModel::new(gpu, &spec, g, 11).unwrap();
        let mut s = step(gpu, &batch, &sgd);
        let (xs, ys) = data(&spec, g, 3);
        s.plan.write(s.x, &xs).unwrap();
        s.plan.write_u32(s.y, &ys).unwrap();
        let mut outs = Vec::new();
        for _ in 0..2 {
            s.plan.run().unwrap();
            s.sgd.after_step(&s.plan).unwrap();
            let mut o = vec![s.plan.read_blocking(s.out).unwrap()];
            o.extend(s.grads.iter().map(|&t| s.plan.read_blocking(t).unwrap()));
            o.extend(pollster::block_on(batch.state_dicts_batched()).unwrap());
            outs.push(o);
        }
        for m in [0usize, 7, 16] {
            let alone = BatchModel::new(gpu, &spec, 1, 0).unwrap();
            alone
                .load_state_dict(
                    0,
                    &pollster::block_on(BatchModel::new(gpu, &spec, g, 11).unwrap().state_dict(m)).unwrap(),
                )
                .unwrap();
            let mut a = step(gpu, &alone, &sgd);
            a.plan.write(a.x, slice(&xs, g, m)).unwrap();
            a.plan.write_u32(a.y, &ys[m * N..(m + 1) * N]).unwrap();
            for (k, o) in outs.iter().enumerate() {
                a.plan.run().unwrap();
                a.sgd.after_step(&a.plan).unwrap();
                let mut got = vec![a.plan.read_blocking(a.out).unwrap()];
                got.extend(a.grads.iter().map(|&t| a.plan.read_blocking(t).unwrap()));
                got.extend(pollster::block_on(alone.state_dicts_batched()).unwrap());
                for (j, (bo, ao)) in o.iter().zip(&got).enumerate() {
                    assert_eq!(slice(bo, g, m), &ao[..], "{name}: model {m}, step {k}, tensor {j}");
                }
            }
        }
    }
}

#[test]
fn backprop_from_one_model_leaves_exact_zeros_in_the_others() {
    let gpu = gpu_or_skip!();
    let g = 17;
    for (name, spec) in specs() {
        let model = BatchModel::new(gpu, &spec, g, 5).unwrap();
        let s = step(gpu, &model, &Sgd::new(0.0));
        let (xs, ys) = data(&spec, g, 9);
        s.plan.write(s.x, &xs).unwrap();
        s.plan.write_u32(s.y, &ys).unwrap();
        for only in [0usize, 9] {
            let mut seed = vec![0.0; g];
            seed[only] = 1.0;
            s.plan.write(s.seed, &seed).unwrap();
            s.plan.run().unwrap();
            for (i, &t) in s.grads.iter().enumerate() {
                let d = s.plan.read_blocking(t).unwrap();
                for m in 0..g {
                    let part = slice(&d, g, m);
                    if m == only {
                        assert!(part.iter().any(|&v| v != 0.0), "{name}: model {m} gradient {i} is all zero");
                    } else {
                        assert!(
                            part.iter().all(|&v| v == 0.0),
                            "{name}: model {only} leaked into model {m}, gradient {i}"
                        );
                    }
                }
            }
        }
    }
}

/// `gather_images` against the CPU formula, bit for bit: images of 5x5 bytes (one pixel per
/// invocation) and 4x6 (four per invocation, one u32 of the dataset to one vec4), 3 models
/// picking their own samples, the first and last sample of the dataset among them.
#[test]
fn gather_images_both_paths_equal_the_formula() {
    let gpu = gpu_or_skip!();
    for image in [[1, 5, 5], [1, 4, 6]] {
        let pixels: usize = image.iter().product();
        let (samples, g, n) = (7, 3, 4);
        let bytes: Vec<u8> = (0..samples * pixels).map(|i| (i * 37 % 256) as u8).collect();
        let picks: Vec<u32> = vec![0, 6, 3, 3, 1, 2, 6, 0, 5, 4, 0, 6];
        let mut graph = Graph::new(g);
        let data = graph.dataset("images", bytes.len()).unwrap();
        let indices = graph.input("indices", &[n], DType::U32).unwrap();
        let (mean, std) = (0.1307f32, 0.3081f32);
        let x = graph.gather_images(data, indices, &image, mean, std).unwrap();
        let plan = Plan::new(gpu, &graph, &[x], &[]).unwrap();
        plan.write_bytes(data, &bytes).unwrap();
        plan.write_u32(indices, &picks).unwrap();
        plan.run().unwrap();
        let got = plan.read_blocking(x).unwrap();
        let inv_std = 1.0 / std;
        let want: Vec<f32> = picks
            .iter()
            .flat_map(|&s| (0..pixels).map(move |p| (s as usize) * pixels + p))
            .map(|b| (f32::from(bytes[b]) / 255.0 - mean) * inv_std)
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{image:?}");
        let kernel = &plan.dispatch_kernels()[0].1;
        let four = pixels % 4 == 0;
        assert_eq!(kernel.contains("gather_images4("), four, "{image:?}: {kernel}");
    }
}
