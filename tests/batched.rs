//! torchmb's model-batch properties on a whole MLP training step: models never influence
//! each other, model g in a batch equals model g alone, and SGD follows PyTorch's rule.

mod common;

use modelbatch::nn::Mlp;
use modelbatch::optim::SgdState;
use modelbatch::{autograd, DType, Gpu, Graph, Plan, Reduction, Sgd, TensorId};

/// An MLP training step compiled for `g` models: forward, loss, backward, SGD.
struct Step {
    plan: Plan,
    x: TensorId,
    y: TensorId,
    seed: TensorId,
    logits: TensorId,
    loss: TensorId,
    params: Vec<TensorId>,
    grads: Vec<TensorId>,
    sgd: SgdState,
}

fn build(gpu: &Gpu, g: usize, n: usize, sizes: &[usize], sgd: &Sgd) -> Step {
    let mut graph = Graph::new(g);
    let x = graph.input("x", &[n, sizes[0]], DType::F32).unwrap();
    let y = graph.input("y", &[n], DType::U32).unwrap();
    let (mlp, logits) = Mlp::build(&mut graph, sizes, x).unwrap();
    let loss = graph.cross_entropy(logits, y, Reduction::Mean).unwrap();
    let seed = graph.input("seed", &[], DType::F32).unwrap();
    let params: Vec<TensorId> = mlp.params().iter().map(|(_, t)| *t).collect();
    let grads: Vec<TensorId> =
        autograd::grad(&mut graph, loss, Some(seed), &params).unwrap().into_iter().map(Option::unwrap).collect();
    let pairs: Vec<_> = params.iter().copied().zip(grads.iter().copied()).collect();
    let sgd = sgd.attach(&mut graph, &pairs).unwrap();
    let mut keep = vec![logits, loss];
    keep.extend(&grads);
    let plan = Plan::new(gpu, &graph, &keep, sgd.updates()).unwrap();
    sgd.upload(&plan).unwrap();
    plan.write(seed, &vec![1.0; g]).unwrap();
    Step { plan, x, y, seed, logits, loss, params, grads, sgd }
}

fn per_model(v: &[f32], g: usize, m: usize) -> &[f32] {
    let per = v.len() / g;
    &v[m * per..(m + 1) * per]
}

/// Writes random weights and data; returns the per-tensor host copies.
fn fill(step: &Step, seed: u64) -> (Vec<Vec<f32>>, Vec<f32>, Vec<u32>) {
    let p = &step.plan;
    let weights: Vec<Vec<f32>> = step
        .params
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let v: Vec<f32> = common::randn(seed * 100 + i as u64, p.shape(t).iter().product())
                .into_iter()
                .map(|w| w * 0.5)
                .collect();
            p.write(t, &v).unwrap();
            v
        })
        .collect();
    let xs = common::randn(seed * 100 + 99, p.shape(step.x).iter().product());
    let classes = *p.shape(step.logits).last().unwrap();
    let ys = common::labels(seed * 100 + 98, p.shape(step.y).iter().product(), classes);
    p.write(step.x, &xs).unwrap();
    p.write_u32(step.y, &ys).unwrap();
    (weights, xs, ys)
}

const SIZES: &[&[usize]] = &[&[13, 7, 5], &[16, 12, 8, 4]];

#[test]
fn backprop_from_one_model_leaves_exact_zeros_elsewhere() {
    let gpu = gpu_or_skip!();
    let (g, n) = (17, 5);
    for sizes in SIZES {
        let step = build(gpu, g, n, sizes, &Sgd::new(0.0));
        fill(&step, 1);
        for &only in &[0usize, 8, 16] {
            let mut seed = vec![0.0; g];
            seed[only] = 1.0;
            step.plan.write(step.seed, &seed).unwrap();
            step.plan.run().unwrap();
            for (i, &gr) in step.grads.iter().enumerate() {
                let d = step.plan.read_blocking(gr).unwrap();
                for m in 0..g {
                    let slice = per_model(&d, g, m);
                    if m == only {
                        assert!(slice.iter().any(|&v| v != 0.0), "sizes {sizes:?}: model {m} grad {i} is all zero");
                    } else {
                        assert!(
                            slice.iter().all(|&v| v == 0.0),
                            "sizes {sizes:?}: backprop from model {only} leaked into model {m}'s gradient {i}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn changing_one_model_changes_nothing_else() {
    // Forward isolation: perturb model 3's weights and inputs, every other model's logits
    // and losses stay bitwise identical.
    let gpu = gpu_or_skip!();
    let (g, n) = (17, 5);
    let step = build(gpu, g, n, &[13, 7, 5], &Sgd::new(0.0));
    let (weights, xs, _) = fill(&step, 2);
    step.plan.run().unwrap();
    let before = step.plan.read_blocking(step.logits).unwrap();
    let loss_before = step.plan.read_blocking(step.loss).unwrap();
    let mut w0 = weights[0].clone();
    let per = w0.len() / g;
    for v in &mut w0[3 * per..4 * per] {
        *v += 1.0;
    }
    step.plan.write(step.params[0], &w0).unwrap();
    let mut x2 = xs.clone();
    let perx = x2.len() / g;
    for v in &mut x2[3 * perx..4 * perx] {
        *v = -*v;
    }
    step.plan.write(step.x, &x2).unwrap();
    step.plan.run().unwrap();
    let after = step.plan.read_blocking(step.logits).unwrap();
    let loss_after = step.plan.read_blocking(step.loss).unwrap();
    for m in 0..g {
        let same = per_model(&before, g, m) == per_model(&after, g, m);
        assert_eq!(same, m != 3, "model {m}: logits changed = {}", !same);
        assert_eq!(loss_before[m] == loss_after[m], m != 3, "model {m} loss");
    }
}

fn sgd_mixed(g: usize) -> Sgd {
    let lr: Vec<f32> = (0..g).map(|m| 0.01 + 0.02 * m as f32).collect();
    let mom: Vec<f32> = (0..g).map(|m| if m % 3 == 0 { 0.0 } else { 0.9 }).collect();
    let damp: Vec<f32> = (0..g).map(|m| if m % 3 == 2 { 0.1 } else { 0.0 }).collect();
    let wd: Vec<f32> = (0..g).map(|m| if m % 2 == 0 { 1e-2 } else { 0.0 }).collect();
    let nest: Vec<bool> = (0..g).map(|m| m % 3 == 1).collect();
    Sgd::new(lr).momentum(mom).dampening(damp).weight_decay(wd).nesterov_each(&nest)
}

#[test]
fn model_in_batch_equals_model_alone() {
    // Outputs, gradients and three SGD steps of model m in a batch of 17 are bitwise equal
    // to a batch of one holding model m's weights, data and hyper-parameters.
    let gpu = gpu_or_skip!();
    let (g, n) = (17, 5);
    for sizes in SIZES {
        let mut batch = build(gpu, g, n, sizes, &sgd_mixed(g));
        let (weights, xs, ys) = fill(&batch, 3);
        let mut outs = vec![];
        for _ in 0..3 {
            batch.plan.run().unwrap();
            batch.sgd.after_step(&batch.plan).unwrap();
            let mut o = vec![batch.plan.read_blocking(batch.logits).unwrap()];
            for &t in batch.grads.iter().chain(&batch.params) {
                o.push(batch.plan.read_blocking(t).unwrap());
            }
            outs.push(o);
        }
        for m in [0usize, 1, 2, 9, 16] {
            let mut alone = build(gpu, 1, n, sizes, &sgd_of(m));
            for (t, w) in alone.params.iter().zip(&weights) {
                alone.plan.write(*t, per_model(w, g, m)).unwrap();
            }
            alone.plan.write(alone.x, per_model(&xs, g, m)).unwrap();
            let per_y = ys.len() / g;
            alone.plan.write_u32(alone.y, &ys[m * per_y..(m + 1) * per_y]).unwrap();
            for (s, o) in outs.iter().enumerate() {
                alone.plan.run().unwrap();
                alone.sgd.after_step(&alone.plan).unwrap();
                let mut a = vec![alone.plan.read_blocking(alone.logits).unwrap()];
                for &t in alone.grads.iter().chain(&alone.params) {
                    a.push(alone.plan.read_blocking(t).unwrap());
                }
                for (j, (bo, ao)) in o.iter().zip(&a).enumerate() {
                    assert_eq!(per_model(bo, g, m), &ao[..], "sizes {sizes:?}, model {m}, step {s}, tensor {j}");
                }
            }
        }
    }
}

/// Model m's hyper-parameters of [`sgd_mixed`], for a batch of one.
fn sgd_of(m: usize) -> Sgd {
    let lr = 0.01 + 0.02 * m as f32;
    let mom = if m % 3 == 0 { 0.0 } else { 0.9 };
    let damp = if m % 3 == 2 { 0.1 } else { 0.0 };
    let wd = if m % 2 == 0 { 1e-2 } else { 0.0 };
    Sgd::new(lr).momentum(mom).dampening(damp).weight_decay(wd).nesterov(m % 3 == 1)
}

#[test]
fn sgd_matches_pytorch_rule() {
    // Three steps with per-model lr, momentum, dampening, weight decay and Nesterov, checked
    // against PyTorch's update rule evaluated on the CPU from the GPU's gradients.
    let gpu = gpu_or_skip!();
    let (g, n) = (17, 5);
    let cfg = sgd_mixed(g);
    let rows = cfg.rows(g).unwrap();
    let mut step = build(gpu, g, n, &[13, 7, 5], &cfg);
    let (mut weights, _, _) = fill(&step, 4);
    let mut bufs: Vec<Option<Vec<f64>>> = vec![None; weights.len()];
    let mut w64: Vec<Vec<f64>> = weights.iter().map(|w| common::to64(w)).collect();
    for s in 0..3 {
        step.plan.run().unwrap();
        step.sgd.after_step(&step.plan).unwrap();
        for (i, &gr) in step.grads.iter().enumerate() {
            let grad = step.plan.read_blocking(gr).unwrap();
            let per = grad.len() / g;
            let buf = bufs[i].get_or_insert_with(|| vec![0.0; grad.len()]);
            for (e, &d0) in grad.iter().enumerate() {
                let [lr, mom, damp, wd, nest, ..] = rows[e / per].map(|v| v as f64);
                let mut d = d0 as f64 + wd * w64[i][e];
                if mom != 0.0 {
                    buf[e] = if s == 0 { d } else { mom * buf[e] + (1.0 - damp) * d };
                    d = if nest != 0.0 { d + mom * buf[e] } else { buf[e] };
                }
                w64[i][e] -= lr * d;
            }
            weights[i] = step.plan.read_blocking(step.params[i]).unwrap();
            common::assert_close(&format!("step {s} param {i}"), &weights[i], &w64[i], 1e-5, 1e-6);
            // Continue from the GPU's values so rounding does not accumulate.
            w64[i] = common::to64(&weights[i]);
        }
    }
}

#[test]
fn runs_create_nothing_and_submit_once() {
    let gpu = gpu_or_skip!();
    let step = build(gpu, 4, 8, &[16, 12, 8, 4], &Sgd::new(0.1).momentum(0.9));
    fill(&step, 5);
    step.plan.run().unwrap();
    step.plan.read_blocking(step.loss).unwrap();
    let before = step.plan.stats();
    for _ in 0..5 {
        step.plan.run().unwrap();
    }
    step.plan.read_blocking(step.loss).unwrap();
    let after = step.plan.stats();
    assert_eq!(after.submits, before.submits + 5, "one submit per run");
    assert_eq!(after.buffers, before.buffers);
    assert_eq!(after.staging_buffers, before.staging_buffers, "repeated reads reuse their staging buffer");
    // Liveness reuse: intermediates share buffers, so there are fewer buffers than tensors.
    assert!(after.buffers < after.tensors, "{} buffers for {} tensors", after.buffers, after.tensors);
}
