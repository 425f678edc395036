//! The seeded-gradient harness shared by the op tests: with leaves `p`, output `y` and a
//! random seed `r` shaped like `y`, `autograd::grad(y, Some(r), p)` is d sum(r*y) / dp, which
//! the tests compare with CPU references and central finite differences.

use modelbatch::{autograd, DType, Graph, Plan, TensorId};

use super::{check_fd, fd_leaves, randn};

/// Finite differences: step and tolerances (f32 forward passes; see `check_fd`).
pub const EPS: f32 = 1e-2;
pub const FD_RTOL: f64 = 2e-2;
/// Absolute part, as a fraction of the leaf's largest gradient.
pub const FD_ATOL: f64 = 1e-2;
/// Coordinates probed per leaf.
pub const FD_COORDS: usize = 3;

/// A compiled forward + seeded backward graph with its leaves written.
pub struct Case {
    pub plan: Plan,
    pub y: TensorId,
    pub r: Vec<f32>,
    pub leaves: Vec<(String, TensorId, Vec<f32>)>,
    pub grads: Vec<TensorId>,
    /// Extra inputs the builder made (e.g. the dropout seed), by name.
    pub extra: Vec<(String, TensorId)>,
}

/// What a case builder gets: the graph, the parameters, and a place to register inputs.
pub type Build<'a> =
    dyn FnOnce(&mut Graph, &[TensorId], &mut Vec<(String, TensorId)>) -> modelbatch::Result<TensorId> + 'a;

/// Builds `y = build(graph, params)` over parameters `leaves` (name, per-model shape, values),
/// seeds the backward pass with random `r`, compiles `[y, grads...]` and writes the leaves.
pub fn case(
    gpu: &modelbatch::Gpu,
    g: usize,
    leaves: Vec<(&str, Vec<usize>, Vec<f32>)>,
    seed: u64,
    build: impl FnOnce(&mut Graph, &[TensorId]) -> modelbatch::Result<TensorId>,
) -> Case {
    case_with_inputs(gpu, g, leaves, seed, Box::new(move |gr, p, _| build(gr, p)))
}

/// [`case`] for builders that also make inputs of their own (registered in `extra`).
pub fn case_with_inputs(
    gpu: &modelbatch::Gpu,
    g: usize,
    leaves: Vec<(&str, Vec<usize>, Vec<f32>)>,
    seed: u64,
    build: Box<Build>,
) -> Case {
    let mut graph = Graph::new(g);
    let params: Vec<TensorId> = leaves.iter().map(|(name, shape, _)| graph.param(name, shape).unwrap()).collect();
    let mut extra = Vec::new();
    let y = build(&mut graph, &params, &mut extra).unwrap();
    let y_shape = graph.shape(y).to_vec();
    let r_id = graph.input("seed_r", &y_shape[1..], DType::F32).unwrap();
    let grads = autograd::grad(&mut graph, y, Some(r_id), &params).unwrap();
    let grads: Vec<TensorId> = grads
        .iter()
        .zip(&leaves)
        .map(|(g, (name, _, _))| g.unwrap_or_else(|| panic!("no gradient for {name}")))
        .collect();
    let mut keep = vec![y];
    keep.extend_from_slice(&grads);
    let plan = Plan::new(gpu, &graph, &keep, &[]).unwrap();
    let r = randn(seed ^ 0xA5A5, y_shape.iter().product());
    plan.write(r_id, &r).unwrap();
    let leaves: Vec<(String, TensorId, Vec<f32>)> = leaves
        .into_iter()
        .zip(&params)
        .map(|((name, shape, values), &id)| {
            assert_eq!(values.len(), g * shape.iter().product::<usize>(), "{name}: value count");
            plan.write(id, &values).unwrap();
            (name.to_string(), id, values)
        })
        .collect();
    Case { plan, y, r, leaves, grads, extra }
}

impl Case {
    /// Runs once; returns `y` and each leaf's gradient.
    pub fn run(&self) -> (Vec<f32>, Vec<Vec<f32>>) {
        self.plan.run().unwrap();
        let y = self.plan.read_blocking(self.y).unwrap();
        let grads = self.grads.iter().map(|&t| self.plan.read_blocking(t).unwrap()).collect();
        (y, grads)
    }

    /// Leaf `i`'s values.
    pub fn values(&self, i: usize) -> &[f32] {
        &self.leaves[i].2
    }

    /// Labels of the plan's dispatches.
    pub fn labels(&self) -> Vec<&'static str> {
        self.plan.dispatch_labels()
    }

    /// An input the builder registered.
    pub fn input(&self, name: &str) -> TensorId {
        self.extra.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no input {name}")).1
    }

    /// Finite-difference check of every leaf's gradient with the default tolerances.
    pub fn fd(&self, grads: &[Vec<f32>]) {
        self.fd_with(grads, EPS, FD_RTOL, FD_ATOL);
    }

    /// Finite-difference check of every leaf's gradient; the output must come back bit for
    /// bit once the leaves are restored (deterministic kernels).
    pub fn fd_with(&self, grads: &[Vec<f32>], eps: f32, rtol: f64, atol: f64) {
        let leaves = fd_leaves(&self.leaves, grads);
        let before = self.plan.read_blocking(self.y).unwrap();
        check_fd(&self.plan, self.y, &self.r, &leaves, FD_COORDS, eps, rtol, atol);
        let (after, _) = self.run();
        assert_eq!(before, after, "output after the finite differences");
    }
}
