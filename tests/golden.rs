//! Golden values from PyTorch (`tests/golden/gen.py`): LeNet and a net with BatchNorm2d,
//! GroupNorm, grouped/strided convolutions, GELU, LeakyReLU and adaptive pooling. Three
//! models in one batch, each from PyTorch's own initial weights: training-mode logits,
//! loss, gradients (parameters and input), two SGD steps (momentum, Nesterov, weight decay,
//! BatchNorm running estimates) and eval-mode logits.

mod common;

use modelbatch::nn::{BatchModel, Mode, ModelSpec, TensorKind};
use modelbatch::{autograd, DType, Graph, Reduction, Sgd, TensorId};
use safetensors::{Dtype, SafeTensors};

const G: usize = 3;
const N: usize = 5;

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn load(name: &str) -> Golden {
        let path = format!("{}/tests/golden/{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
        Golden { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")) }
    }

    fn get(&self, key: &str) -> Vec<f64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(key).unwrap_or_else(|_| panic!("golden key {key} missing"));
        match t.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(t.data()).into_iter().map(f64::from).collect(),
            Dtype::I64 => bytemuck::pod_collect_to_vec::<u8, i64>(t.data()).into_iter().map(|v| v as f64).collect(),
            d => panic!("{key}: unexpected dtype {d:?}"),
        }
    }

    fn get32(&self, key: &str) -> Vec<f32> {
        self.get(key).into_iter().map(|v| v as f32).collect()
    }
}

/// |got - want| <= 1e-4 * max|want| + 1e-6 elementwise (relative to the tensor's scale).
fn close(what: &str, got: &[f32], want: &[f64]) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    common::assert_close(what, got, want, 0.0, 1e-4 * scale + 1e-6);
}

fn slice(v: &[f32], m: usize) -> &[f32] {
    let per = v.len() / G;
    &v[m * per..(m + 1) * per]
}

fn check(name: &str, spec: ModelSpec) {
    let Some(gpu) = common::gpu() else { return };
    let gold = Golden::load(name);
    let model = BatchModel::new(gpu, &spec, G, 0).unwrap();
    for m in 0..G {
        let values: Vec<Vec<f32>> =
            model.entries().iter().map(|e| gold.get32(&format!("m{m}.init.{}", e.name))).collect();
        model.load_state_dict(m, &values).unwrap();
    }
    let mut input = vec![N];
    input.extend(&spec.input);

    // Training step: the input is a parameter of the graph so that its gradient exists, but
    // the optimizer only updates the model's parameters.
    let mut graph = Graph::new(G);
    let x = graph.param("x", &input).unwrap();
    let y = graph.input("y", &[N], DType::U32).unwrap();
    let built = spec.build(&mut graph, x, Mode::Train).unwrap();
    let loss = graph.cross_entropy(built.output, y, Reduction::Mean).unwrap();
    let params = built.params();
    let mut wrt = params.clone();
    wrt.push(x);
    let grads: Vec<TensorId> =
        autograd::grad(&mut graph, loss, None, &wrt).unwrap().into_iter().map(Option::unwrap).collect();
    let pairs: Vec<_> = params.iter().copied().zip(grads.iter().copied()).collect();
    let mut sgd = Sgd::new(0.05).momentum(0.9).nesterov(true).weight_decay(1e-3).attach(&mut graph, &pairs).unwrap();
    let mut updates = sgd.updates().to_vec();
    updates.extend(built.updates.iter().cloned());
    let mut keep = vec![built.output, loss];
    keep.extend(&grads);
    let plan = model.plan(gpu, &graph, &keep, &updates).unwrap();
    sgd.upload(&plan).unwrap();
    plan.write(x, &gold.get32("x")).unwrap();
    let labels: Vec<u32> = gold.get("y").into_iter().map(|v| v as u32).collect();
    plan.write_u32(y, &labels).unwrap();

    plan.run().unwrap();
    sgd.after_step(&plan).unwrap();
    let logits = plan.read_blocking(built.output).unwrap();
    let losses = plan.read_blocking(loss).unwrap();
    let grad_values: Vec<Vec<f32>> = grads.iter().map(|&t| plan.read_blocking(t).unwrap()).collect();
    let param_names: Vec<&str> =
        model.entries().iter().filter(|e| e.kind == TensorKind::Param).map(|e| e.name.as_str()).collect();
    for m in 0..G {
        close(&format!("{name} m{m} logits"), slice(&logits, m), &gold.get(&format!("m{m}.logits")));
        close(&format!("{name} m{m} loss"), &losses[m..m + 1], &gold.get(&format!("m{m}.loss")));
        for (pn, gv) in param_names.iter().chain(["x"].iter()).zip(&grad_values) {
            close(&format!("{name} m{m} grad {pn}"), slice(gv, m), &gold.get(&format!("m{m}.grad.{pn}")));
        }
    }
    let compare_state = |step: &str| {
        for m in 0..G {
            let state = pollster::block_on(model.state_dict(m)).unwrap();
            for (e, v) in model.entries().iter().zip(&state) {
                close(&format!("{name} m{m} {step} {}", e.name), v, &gold.get(&format!("m{m}.{step}.{}", e.name)));
            }
        }
    };
    compare_state("step1");
    plan.run().unwrap();
    sgd.after_step(&plan).unwrap();
    compare_state("step2");

    // Eval mode over the same weights: running statistics instead of batch statistics.
    let mut eg = Graph::new(G);
    let ex = eg.input("x", &input, DType::F32).unwrap();
    let eb = spec.build(&mut eg, ex, Mode::Eval).unwrap();
    let eval = model.plan(gpu, &eg, &[eb.output], &[]).unwrap();
    eval.write(ex, &gold.get32("x")).unwrap();
    eval.run().unwrap();
    let el = eval.read_blocking(eb.output).unwrap();
    for m in 0..G {
        close(&format!("{name} m{m} eval logits"), slice(&el, m), &gold.get(&format!("m{m}.eval_logits")));
    }
}

#[test]
fn lenet_matches_pytorch() {
    check("lenet", ModelSpec::lenet());
}

#[test]
fn normnet_matches_pytorch() {
    let json = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/normnet.json")).unwrap();
    check("normnet", ModelSpec::from_json(&json).unwrap());
}
