//! Custom ops: a user's WGSL forward and backward through the `CustomOp` trait. Swish with a
//! learnable per-model slope (the op of `examples/custom_op`) against a CPU reference and finite
//! differences, through a Linear and an SGD training loop; a constant-factor op that reads
//! user uniform words on a folded grid; and errors (bad shapes, broken WGSL, too many inputs,
//! bad backward rules) that come back as values.

mod common;

#[path = "../examples/custom_op/swish.rs"]
mod swish;

use std::borrow::Cow;
use std::sync::Arc;

use common::grad_case::case;
use common::{assert_close, randn, to64};
use modelbatch::graph::{CustomOp, Graph};
use modelbatch::{autograd, DType, Error, PerModel, Plan, Reduction, Result, Sgd, TensorId};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use swish::{swish, SWISH_GRAD_WGSL, SWISH_WGSL};

fn sigmoid(t: f64) -> f64 {
    1.0 / (1.0 + (-t).exp())
}

#[test]
fn swish_wgsl_validates_offline() {
    for (name, source, entries) in
        [("swish", SWISH_WGSL, &["main"][..]), ("swish_grad", SWISH_GRAD_WGSL, &["grad_x", "grad_beta"][..])]
    {
        let module = naga::front::wgsl::parse_str(source)
            .unwrap_or_else(|e| panic!("{name}.wgsl: {}", e.emit_to_string_with_path(source, name)));
        Validator::new(ValidationFlags::all(), Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}.wgsl: {}", e.emit_to_string_with_path(source, name)));
        for entry in entries {
            assert!(
                module.entry_points.iter().any(|e| e.name == *entry && e.stage == naga::ShaderStage::Compute),
                "{name}.wgsl has no compute entry point {entry}"
            );
        }
    }
}

/// `swish(x @ w^T + b, beta)` on the CPU in f64, and the gradients of `sum(r * y)` with respect
/// to x `[G, N, I]`, w `[G, O, I]`, b `[G, O]` and beta `[G, 1]`.
#[allow(clippy::type_complexity)]
fn swish_linear_ref(
    (g, n, i_dim, o): (usize, usize, usize, usize),
    x: &[f32],
    w: &[f32],
    b: &[f32],
    beta: &[f32],
    r: &[f32],
) -> (Vec<f64>, [Vec<f64>; 4]) {
    let mut y = vec![0.0; g * n * o];
    let (mut dx, mut dw, mut db, mut dbeta) =
        (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; b.len()], vec![0.0; beta.len()]);
    for m in 0..g {
        let bt = beta[m] as f64;
        for s in 0..n {
            for j in 0..o {
                let mut h = b[m * o + j] as f64;
                for k in 0..i_dim {
                    h += x[(m * n + s) * i_dim + k] as f64 * w[(m * o + j) * i_dim + k] as f64;
                }
                let sg = sigmoid(bt * h);
                let idx = (m * n + s) * o + j;
                y[idx] = h * sg;
                let rv = r[idx] as f64;
                dbeta[m] += rv * h * h * sg * (1.0 - sg);
                let dh = rv * (sg + bt * h * sg * (1.0 - sg));
                db[m * o + j] += dh;
                for k in 0..i_dim {
                    dx[(m * n + s) * i_dim + k] += dh * w[(m * o + j) * i_dim + k] as f64;
                    dw[(m * o + j) * i_dim + k] += dh * x[(m * n + s) * i_dim + k] as f64;
                }
            }
        }
    }
    (y, [dx, dw, db, dbeta])
}

#[test]
fn swish_after_linear_matches_cpu_and_finite_differences() {
    let gpu = gpu_or_skip!();
    let (g, n, i_dim, o) = (5, 3, 7, 6);
    let x = randn(1, g * n * i_dim);
    let w: Vec<f32> = randn(2, g * o * i_dim).iter().map(|v| v * 0.8).collect();
    let b = randn(3, g * o);
    // A different slope per model, negative ones included.
    let beta: Vec<f32> = (0..g).map(|m| -1.0 + 0.7 * m as f32).collect();
    let c = case(
        gpu,
        g,
        vec![
            ("x", vec![n, i_dim], x.clone()),
            ("w", vec![o, i_dim], w.clone()),
            ("b", vec![o], b.clone()),
            ("beta", vec![1], beta.clone()),
        ],
        11,
        |gr, p| {
            let h = gr.linear(p[0], p[1], Some(p[2]))?;
            swish(gr, h, p[3])
        },
    );
    let labels = c.labels();
    for want in ["swish", "swish_grad_x", "swish_grad_beta"] {
        assert!(labels.contains(&want), "no {want} dispatch in {labels:?}");
    }
    let (y, grads) = c.run();
    let (y_ref, grads_ref) = swish_linear_ref((g, n, i_dim, o), &x, &w, &b, &beta, &c.r);
    assert_close("swish forward", &y, &y_ref, 1e-5, 1e-5);
    for ((name, got), want) in ["dx", "dw", "db", "dbeta"].iter().zip(&grads).zip(&grads_ref) {
        assert_close(name, got, want, 1e-4, 1e-5);
    }
    // Each model's slope gradient is its own: a model's dbeta depends on its data only.
    assert!(grads[3].iter().all(|v| v.is_finite()) && grads[3].windows(2).all(|p| p[0] != p[1]));
    c.fd(&grads);
}

/// Linear(8 → 16) → Swish(beta) → Linear(16 → 3) → cross-entropy, trained by SGD.
/// 40 SGD steps of Linear -> Swish -> Linear for 4 models: (first losses, last losses,
/// betas, chunks of models per pass).
fn swish_training(gpu: &modelbatch::Gpu) -> (Vec<f32>, Vec<f32>, Vec<f32>, usize) {
    let (g, n, d_in, hidden, classes) = (4, 32, 8, 16, 3);
    let mut graph = Graph::new(g);
    let x = graph.input("x", &[n, d_in], DType::F32).unwrap();
    let y = graph.input("y", &[n], DType::U32).unwrap();
    let w1 = graph.param("0.weight", &[hidden, d_in]).unwrap();
    let b1 = graph.param("0.bias", &[hidden]).unwrap();
    let beta = graph.param("1.beta", &[1]).unwrap();
    let w2 = graph.param("2.weight", &[classes, hidden]).unwrap();
    let b2 = graph.param("2.bias", &[classes]).unwrap();
    let h = graph.linear(x, w1, Some(b1)).unwrap();
    let h = swish(&mut graph, h, beta).unwrap();
    let logits = graph.linear(h, w2, Some(b2)).unwrap();
    let loss = graph.cross_entropy(logits, y, Reduction::Mean).unwrap();
    let params = [w1, b1, beta, w2, b2];
    let grads = autograd::grad(&mut graph, loss, None, &params).unwrap();
    let pairs: Vec<(TensorId, TensorId)> = params.iter().zip(&grads).map(|(&p, d)| (p, d.unwrap())).collect();
    // One learning rate per model: the models must end up different.
    let mut sgd = Sgd::new(PerModel::lin_space(0.3, 0.6, g)).momentum(0.5).attach(&mut graph, &pairs).unwrap();
    let plan = Plan::new(gpu, &graph, &[loss, beta], sgd.updates()).unwrap();
    sgd.upload(&plan).unwrap();

    // Same data for every model: labels from a fixed random teacher, so the task is learnable.
    let xs = randn(21, n * d_in);
    let teacher = randn(22, classes * d_in);
    let labels: Vec<u32> = (0..n)
        .map(|s| {
            let score = |c: usize| (0..d_in).map(|k| xs[s * d_in + k] * teacher[c * d_in + k]).sum::<f32>();
            (0..classes).max_by(|&a, &b| score(a).total_cmp(&score(b))).unwrap() as u32
        })
        .collect();
    plan.write(x, &xs.repeat(g)).unwrap();
    plan.write_u32(y, &labels.repeat(g)).unwrap();
    // The same initial weights in every model; beta starts at 1.
    for (i, (&p, per)) in params.iter().zip([hidden * d_in, hidden, 1, classes * hidden, classes]).enumerate() {
        let v: Vec<f32> =
            if p == beta { vec![1.0] } else { randn(30 + i as u64, per).iter().map(|v| v * 0.4).collect() };
        plan.write(p, &v.repeat(g)).unwrap();
    }
    let mut first = Vec::new();
    let mut last = Vec::new();
    for step in 0..40 {
        plan.run().unwrap();
        sgd.after_step(&plan).unwrap();
        last = plan.read_blocking(loss).unwrap();
        if step == 0 {
            first = last.clone();
        }
    }
    let betas = plan.read_blocking(beta).unwrap();
    (first, last, betas, plan.stats().chunks)
}

#[test]
fn sgd_through_swish_reduces_every_models_loss() {
    let gpu = gpu_or_skip!();
    let g = 4;
    let (first, last, betas, chunks) = swish_training(gpu);
    assert_eq!(chunks, 1);
    for m in 0..g {
        assert!(last[m].is_finite() && last[m] < 0.5 * first[m], "model {m}: loss {} -> {}", first[m], last[m]);
        assert_ne!(betas[m], 1.0, "model {m}: beta never moved");
        if m > 0 {
            assert_eq!(first[m], first[0], "identical models start with identical losses");
            assert_ne!(last[m], last[m - 1], "models {m} and {} ended equal despite different learning rates", m - 1);
            assert_ne!(betas[m], betas[m - 1], "models {m} and {} learned the same beta", m - 1);
        }
    }
    // A custom op in a plan split into chunks of models (the kernel sees the chunk's G):
    // hidden activations are 32 x 16 floats = 2 KiB per model, 4 KiB bindings take 2 models.
    let small = gpu.restricted(4 << 10, 1 << 30);
    let (first2, last2, betas2, chunks2) = swish_training(&small);
    assert_eq!(chunks2, 2);
    for (what, a, b) in [("first loss", &first2, &first), ("last loss", &last2, &last), ("beta", &betas2, &betas)] {
        for m in 0..g {
            assert!(
                (a[m] - b[m]).abs() <= 1e-5 * b[m].abs().max(1.0),
                "{what} of model {m}: split {} vs {}",
                a[m],
                b[m]
            );
        }
    }
}

/// `y = factor * x` with the factor passed as a user uniform word; its own gradient.
#[derive(Debug)]
struct Scale {
    factor: f32,
    wg: u32,
}

const SCALE_WGSL: &str = "
struct Params { models: u32, threads: u32, row: u32, out_len: u32, x_len: u32, factor: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * p.row;
    if i >= p.threads { return; }
    y[i] = p.factor * x[i];
}";

impl CustomOp for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        Ok(inputs[0].to_vec())
    }
    fn wgsl(&self) -> Cow<'static, str> {
        SCALE_WGSL.into()
    }
    fn workgroup_size(&self) -> u32 {
        self.wg
    }
    fn uniform_words(&self) -> Vec<u32> {
        vec![self.factor.to_bits()]
    }
    fn backward(
        &self,
        graph: &mut Graph,
        _x: &[TensorId],
        _y: TensorId,
        dy: TensorId,
    ) -> Result<Vec<Option<TensorId>>> {
        Ok(vec![Some(graph.custom(Arc::new(Scale { factor: self.factor, wg: self.wg }), &[dy])?)])
    }
}

#[test]
fn uniform_words_reach_the_kernel_on_a_folded_grid() {
    let gpu = gpu_or_skip!();
    // Workgroups of one invocation: 2 x 40,000 invocations need more than 65,535 workgroups,
    // so the grid folds into two dimensions.
    let (g, per) = (2, 40_000);
    let mut graph = Graph::new(g);
    let w = graph.param("w", &[per]).unwrap();
    let y = graph.custom(Arc::new(Scale { factor: -2.5, wg: 1 }), &[w]).unwrap();
    let seed = graph.input("seed", &[per], DType::F32).unwrap();
    let dw = autograd::grad(&mut graph, y, Some(seed), &[w]).unwrap()[0].unwrap();
    let plan = Plan::new(gpu, &graph, &[y, dw], &[]).unwrap();
    let (wv, sv) = (randn(5, g * per), randn(6, g * per));
    plan.write(w, &wv).unwrap();
    plan.write(seed, &sv).unwrap();
    plan.run().unwrap();
    let want = |v: &[f32]| -> Vec<f64> { v.iter().map(|&a| (-2.5f32 * a) as f64).collect() };
    assert_close("scale forward", &plan.read_blocking(y).unwrap(), &want(&wv), 0.0, 0.0);
    assert_close("scale backward", &plan.read_blocking(dw).unwrap(), &want(&sv), 0.0, 0.0);
    assert_eq!(to64(&plan.read_blocking(w).unwrap()), to64(&wv), "the input is untouched");
}

/// An op whose every part the test chooses, to provoke each error.
#[derive(Debug)]
struct Raw {
    wgsl: &'static str,
    shape: fn(&[&[usize]]) -> Result<Vec<usize>>,
    grads: usize,
}

impl CustomOp for Raw {
    fn name(&self) -> &'static str {
        "raw_op"
    }
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        (self.shape)(inputs)
    }
    fn wgsl(&self) -> Cow<'static, str> {
        self.wgsl.into()
    }
    fn backward(&self, graph: &mut Graph, x: &[TensorId], _y: TensorId, dy: TensorId) -> Result<Vec<Option<TensorId>>> {
        let _ = graph;
        Ok(x.iter().map(|_| Some(dy)).chain(std::iter::repeat(None)).take(self.grads).collect())
    }
}

fn same(inputs: &[&[usize]]) -> Result<Vec<usize>> {
    Ok(inputs[0].to_vec())
}

fn raw(wgsl: &'static str) -> Arc<dyn CustomOp> {
    Arc::new(Raw { wgsl, shape: same, grads: 1 })
}

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn bad_shapes_and_backward_rules_are_errors() {
    let mut graph = Graph::new(3);
    let x = graph.param("x", &[4]).unwrap();
    let refuse: fn(&[&[usize]]) -> Result<Vec<usize>> = |s| Err(Error::Shape(format!("raw_op: cannot take {s:?}")));
    let e = graph.custom(Arc::new(Raw { wgsl: "", shape: refuse, grads: 1 }), &[x]).unwrap_err();
    assert!(matches!(e, Error::Shape(_)) && message(e).contains("raw_op: cannot take [[3, 4]]"));
    let no_g: fn(&[&[usize]]) -> Result<Vec<usize>> = |_| Ok(vec![4]);
    let e = graph.custom(Arc::new(Raw { wgsl: "", shape: no_g, grads: 1 }), &[x]).unwrap_err();
    let m = message(e);
    assert!(m.contains("raw_op") && m.contains("must start with the model batch G=3"), "{m}");
    let zero: fn(&[&[usize]]) -> Result<Vec<usize>> = |_| Ok(vec![3, 0]);
    assert!(graph.custom(Arc::new(Raw { wgsl: "", shape: zero, grads: 1 }), &[x]).is_err());
    let mut small = Graph::new(3);
    let m = message(small.custom(raw(""), &[x]).unwrap_err());
    assert!(m.contains("raw_op") && m.contains("not in this graph"), "{m}");

    // Backward rules: wrong gradient count, wrong shape, none at all.
    let y = graph.custom(Arc::new(Raw { wgsl: "", shape: same, grads: 2 }), &[x]).unwrap();
    let m = message(autograd::grad(&mut graph.clone(), y, None, &[x]).unwrap_err());
    assert!(m.contains("raw_op") && m.contains("2 gradients for 1 inputs"), "{m}");
    let z = graph.fill(&[5], 1.0).unwrap();
    let s = graph.sum(x, &[1]).unwrap();
    let s = graph.broadcast(s, &[3, 5], &[1], 1.0).unwrap();
    let y = graph.custom(Arc::new(Raw { wgsl: "", shape: |i| Ok(i[1].to_vec()), grads: 3 }), &[x, s, z]).unwrap();
    let m = message(autograd::grad(&mut graph.clone(), y, None, &[x]).unwrap_err());
    assert!(m.contains("raw_op") && m.contains("gradient of input 0 has shape [3, 5]"), "{m}");
    let one = graph.fill(&[1], 1.0).unwrap();
    let y = graph.custom(Arc::new(swish::SwishGrad::X), &[x, x, one]).unwrap();
    let m = message(autograd::grad(&mut graph, y, None, &[x]).unwrap_err());
    assert!(m.contains("swish_grad_x") && m.contains("does not implement backward"), "{m}");
}

#[test]
fn broken_wgsl_and_too_many_inputs_are_errors_not_panics() {
    let gpu = gpu_or_skip!();
    let compile = |op: Arc<dyn CustomOp>, inputs: usize| -> Result<()> {
        let mut graph = Graph::new(2);
        let xs: Vec<TensorId> = (0..inputs).map(|i| graph.param(&format!("x{i}"), &[8]).unwrap()).collect();
        let y = graph.custom(op, &xs)?;
        let plan = Plan::new(gpu, &graph, &[y], &[])?;
        plan.run()
    };
    let cases: [(&str, &'static str, &str); 4] = [
        ("does not parse", "fn main( {", "raw_op"),
        (
            "type error",
            "@group(0) @binding(0) var<uniform> p: vec4<u32>;
             @group(0) @binding(2) var<storage, read_write> y: array<f32>;
             override WG: u32 = 64u;
             @compute @workgroup_size(WG) fn main() { y[0] = p.x; }",
            "raw_op",
        ),
        (
            "no WG override",
            "@group(0) @binding(0) var<uniform> p: vec4<u32>;
             @group(0) @binding(2) var<storage, read_write> y: array<f32>;
             @compute @workgroup_size(64) fn main() { y[0] = f32(p.x); }",
            "WG",
        ),
        (
            "uniform larger than given",
            "struct P { a: vec4<u32>, b: vec4<u32> }
             @group(0) @binding(0) var<uniform> p: P;
             @group(0) @binding(2) var<storage, read_write> y: array<f32>;
             override WG: u32 = 64u;
             @compute @workgroup_size(WG) fn main() { y[0] = f32(p.b.w); }",
            "raw_op",
        ),
    ];
    for (what, wgsl, needle) in cases {
        let e = compile(raw(wgsl), 1).expect_err(what);
        let m = message(e);
        assert!(m.contains("custom op `raw_op`") && m.contains(needle), "{what}: {m}");
    }
    // Exactly at the limit compiles and runs; one more input is refused before compiling.
    let limits = gpu.limits();
    let max = (limits.max_storage_buffers_per_shader_stage as usize - 1)
        .min(limits.max_buffers_and_acceleration_structures_per_shader_stage as usize - 2);
    assert!(max <= 64, "the adapter binds {max} inputs per kernel: this test would build that many");
    let ok = "@group(0) @binding(0) var<uniform> p: vec4<u32>;
              override WG: u32 = 64u;
              @compute @workgroup_size(WG) fn main() { }";
    compile(raw(ok), max).expect("inputs + output at the limit");
    let m = message(compile(raw(ok), max + 1).unwrap_err());
    assert!(m.contains("raw_op") && m.contains(&format!("{} inputs", max + 1)), "{m}");
    // The device is still healthy: a good custom op compiles and runs afterwards.
    compile(Arc::new(Scale { factor: 1.0, wg: 64 }), 1).expect("a valid op after the failures");
    gpu.take_error().expect("no error left behind");
}
