//! A custom op in a batched network: G models Linear(784 → 64) → Swish(beta) → Linear(64 → 10)
//! on the embedded MNIST, where Swish with a learnable per-model slope,
//! `y = x * sigmoid(beta_g * x)`, is user code: a Rust `CustomOp` with WGSL forward and backward
//! (`swish.rs`, `swish.wgsl`, `swish_grad.wgsl`). Autograd differentiates through it, SGD trains
//! every model's weights and slope, and each model draws its own batches.
//!
//! ```text
//! cargo run --release --example custom_op -- [--models 8] [--steps 300] [--batch-size 64]
//! ```

mod swish;

use std::time::Instant;

use modelbatch::data::Mnist;
use modelbatch::nn::{linear_init, Rng};
use modelbatch::{autograd, DType, Gpu, Graph, PerModel, Plan, Reduction, Result, Sgd, TensorId};

const HIDDEN: usize = 64;
const PIXELS: usize = 28 * 28;

/// The tensors of [`network`] a caller needs.
struct Net {
    /// Which images each model sees: `[G, N]` u32 input.
    indices: TensorId,
    /// `[G, N, 10]`.
    logits: TensorId,
    /// `[G, N]` u32.
    labels: TensorId,
    /// Parameters with their state-dict names.
    params: Vec<(String, TensorId)>,
}

/// The network over `n` gathered images per model of the `samples`-image dataset `split`.
fn network(graph: &mut Graph, split: &str, samples: usize, n: usize) -> Result<Net> {
    let images = graph.dataset(&format!("{split}.images"), samples * PIXELS)?;
    let labels = graph.dataset(&format!("{split}.labels"), samples)?;
    let indices = graph.input("indices", &[n], DType::U32)?;
    let x = graph.gather_images(images, indices, &[PIXELS], 0.1307, 0.3081)?;
    let y = graph.gather_labels(labels, indices)?;
    let mut params = Vec::new();
    let mut param = |graph: &mut Graph, name: &str, shape: &[usize]| -> Result<TensorId> {
        let t = graph.param(name, shape)?;
        params.push((name.to_string(), t));
        Ok(t)
    };
    let w0 = param(graph, "0.weight", &[HIDDEN, PIXELS])?;
    let b0 = param(graph, "0.bias", &[HIDDEN])?;
    let beta = param(graph, "1.beta", &[1])?;
    let w2 = param(graph, "2.weight", &[10, HIDDEN])?;
    let b2 = param(graph, "2.bias", &[10])?;
    let h = graph.linear(x, w0, Some(b0))?;
    let h = swish::swish(graph, h, beta)?;
    let logits = graph.linear(h, w2, Some(b2))?;
    Ok(Net { indices, logits, labels: y, params })
}

fn arg(name: &str, default: usize) -> std::result::Result<usize, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("{name} needs a positive integer")),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let (g, steps, n) = (arg("--models", 8)?, arg("--steps", 300)?, arg("--batch-size", 64)?);
    let gpu = Gpu::new_blocking()?;
    let report = gpu.report();
    println!("adapter: {} ({}, {})", report.name, report.backend, report.device_type);
    let mnist = Mnist::load(Mnist::default_dir())?;
    let (train, test) = (&mnist.train, &mnist.test);

    // Training graph: loss per model, gradients through the custom op, SGD updates.
    let mut graph = Graph::new(g);
    let Net { indices, logits, labels, params } = network(&mut graph, "train", train.n, n)?;
    let loss = graph.cross_entropy(logits, labels, Reduction::Mean)?;
    let ids: Vec<TensorId> = params.iter().map(|(_, t)| *t).collect();
    let grads = autograd::grad(&mut graph, loss, None, &ids)?;
    let pairs: Vec<(TensorId, TensorId)> =
        ids.iter().zip(&grads).map(|(&p, d)| (p, d.expect("every parameter gets a gradient"))).collect();
    let lrs = PerModel::log_space(0.005, 0.15, g);
    let mut sgd = Sgd::new(lrs.clone()).momentum(0.9).attach(&mut graph, &pairs)?;
    let plan = Plan::new(&gpu, &graph, &[loss], sgd.updates())?;
    sgd.upload(&plan)?;
    plan.write_bytes(plan.find("train.images").expect("dataset"), &train.images)?;
    plan.write_bytes(plan.find("train.labels").expect("dataset"), &train.labels)?;

    // PyTorch's Linear init, model m from seed m; every slope starts at 1.
    for m in 0..g {
        let mut rng = Rng::new(m as u64);
        let (w0, b0) = linear_init(&mut rng, PIXELS, HIDDEN);
        let (w2, b2) = linear_init(&mut rng, HIDDEN, 10);
        for ((_, t), v) in params.iter().zip([w0, b0, vec![1.0], w2, b2]) {
            plan.write_model(*t, m, &v)?;
        }
    }

    println!(
        "training {g} models 784-{HIDDEN}(swish)-10, SGD momentum 0.9, lr 0.005..0.15 (log), batch {n}, {steps} steps"
    );
    let mut rng = Rng::new(1234);
    let start = Instant::now();
    let mut last = vec![f32::NAN; g];
    for step in 0..steps {
        // Each model draws its own batch.
        let idx: Vec<u32> = (0..g * n).map(|_| rng.below(train.n) as u32).collect();
        plan.write_u32(indices, &idx)?;
        plan.run()?;
        sgd.after_step(&plan)?;
        if step % 50 == 0 || step + 1 == steps {
            last = plan.read_blocking(loss)?;
            let shown: Vec<String> = last.iter().map(|l| format!("{l:.3}")).collect();
            println!("step {:>4}  loss per model [{}]", step + 1, shown.join(", "));
        }
    }
    let secs = start.elapsed().as_secs_f64();

    // Evaluation on the first 2,000 test images with the trained weights (shared, not copied).
    let eval_n = 2000.min(test.n);
    let mut eval = Graph::new(g);
    let net = network(&mut eval, "test", test.n, eval_n)?;
    let top1 = eval.topk_accuracy(net.logits, net.labels, &[1], false)?;
    let eval_plan = Plan::sharing(&gpu, &eval, &[top1], &[], &plan)?;
    eval_plan.write_bytes(eval_plan.find("test.images").expect("dataset"), &test.images)?;
    eval_plan.write_bytes(eval_plan.find("test.labels").expect("dataset"), &test.labels)?;
    let first: Vec<u32> = (0..eval_n as u32).collect();
    eval_plan.write_u32(net.indices, &first.repeat(g))?;
    eval_plan.run()?;
    let acc = eval_plan.read_blocking(top1)?;
    let betas = plan.read_blocking(params[2].1)?;

    let lr = lrs.values(g, "lr")?;
    println!("\n model        lr    beta  last loss  test top-1");
    for m in 0..g {
        println!("{m:>6} {:>9.4} {:>7.3} {:>10.4} {:>10.2}%", lr[m], betas[m], last[m], 100.0 * acc[m]);
    }
    println!("\n{g} models x {steps} steps in {secs:.1} s ({:.0} samples/s)", (g * n * steps) as f64 / secs);
    Ok(())
}
