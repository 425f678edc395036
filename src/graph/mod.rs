//! Symbolic graph IR. Every tensor's first dimension is the model batch G: activations are
//! `[G, N, ...]`, parameters `[G, ...]` with the per-model part laid out as PyTorch lays it out.
//!
//! The graph is append-only, so node order is a topological order. Each node produces one
//! tensor; a [`TensorId`] names both. Builder methods infer shapes and return
//! [`Error::Shape`] naming the op and the shapes that disagree.

mod op;

mod custom;
mod layers;

pub use custom::{CustomOp, CUSTOM_HEADER_WORDS};
pub use op::{Conv2dGeom, NormKind, Op, Pool2dGeom, Reduction, Unary};

use crate::error::{Error, Result};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: activations, parameters, gradients.
    F32,
    /// 32-bit unsigned integer: class labels.
    U32,
}

/// Handle to a tensor (the output of one node) in a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub(crate) usize);

impl TensorId {
    /// Index of the node producing this tensor.
    pub fn index(self) -> usize {
        self.0
    }
}

/// One node: an op applied to earlier tensors, producing a tensor of `shape` and `dtype`.
#[derive(Clone, Debug)]
pub struct Node {
    /// What the node computes.
    pub op: Op,
    /// Operands, all produced by earlier nodes.
    pub inputs: Vec<TensorId>,
    /// Output shape, G first.
    pub shape: Vec<usize>,
    /// Output element type.
    pub dtype: DType,
    /// Whether a gradient can flow to this tensor (it depends on a trainable parameter).
    pub requires_grad: bool,
}

impl Node {
    /// Number of elements of the output.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A dataflow graph over batched tensors.
#[derive(Clone, Debug)]
pub struct Graph {
    g: usize,
    nodes: Vec<Node>,
}

pub(crate) fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

impl Graph {
    /// An empty graph for a batch of `g` models.
    pub fn new(g: usize) -> Graph {
        assert!(g > 0, "a model batch needs at least one model");
        Graph { g, nodes: Vec::new() }
    }

    /// The model batch size G.
    pub fn models(&self) -> usize {
        self.g
    }

    /// The same graph for a batch of `g` models: every per-model tensor's first dimension
    /// becomes `g` (datasets are shared and keep their shape). Plans lower one such graph per
    /// chunk of models when a batch passes the adapter's binding limits.
    pub(crate) fn with_models(&self, g: usize) -> Graph {
        let mut out = self.clone();
        out.g = g;
        for n in &mut out.nodes {
            if !matches!(n.op, Op::Data { .. }) {
                n.shape[0] = g;
            }
        }
        out
    }

    /// All nodes in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node producing `t`.
    pub fn node(&self, t: TensorId) -> &Node {
        &self.nodes[t.0]
    }

    /// Shape of `t` (G first).
    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.nodes[t.0].shape
    }

    pub(crate) fn push(&mut self, op: Op, inputs: Vec<TensorId>, shape: Vec<usize>, dtype: DType) -> TensorId {
        let requires_grad = match op {
            Op::Param { .. } => true,
            _ => dtype == DType::F32 && inputs.iter().any(|i| self.nodes[i.0].requires_grad),
        };
        self.nodes.push(Node { op, inputs, shape, dtype, requires_grad });
        TensorId(self.nodes.len() - 1)
    }

    pub(crate) fn check_g(&self, op: &str, t: TensorId) -> Result<()> {
        let s = self.shape(t);
        if s.first() != Some(&self.g) {
            return Err(Error::Shape(format!(
                "{op}: operand of shape {} does not start with the model batch G={}",
                shape_str(s),
                self.g
            )));
        }
        Ok(())
    }

    pub(crate) fn check_dtype(&self, op: &str, t: TensorId, want: DType) -> Result<()> {
        let d = self.node(t).dtype;
        if d != want {
            return Err(Error::Shape(format!(
                "{op}: operand of shape {} has dtype {d:?}, expected {want:?}",
                shape_str(self.shape(t))
            )));
        }
        Ok(())
    }

    fn leaf(&mut self, op: Op, per_model: &[usize], dtype: DType) -> Result<TensorId> {
        if per_model.contains(&0) {
            return Err(Error::Shape(format!("{}: shape {} has a zero dimension", op.name(), shape_str(per_model))));
        }
        let mut shape = vec![self.g];
        shape.extend_from_slice(per_model);
        Ok(self.push(op, vec![], shape, dtype))
    }

    /// A per-run input (data, labels, hyper-parameters) of shape `[G, per_model...]`.
    pub fn input(&mut self, name: &str, per_model: &[usize], dtype: DType) -> Result<TensorId> {
        self.leaf(Op::Input { name: name.to_string() }, per_model, dtype)
    }

    /// A trainable parameter of shape `[G, per_model...]`.
    pub fn param(&mut self, name: &str, per_model: &[usize]) -> Result<TensorId> {
        self.leaf(Op::Param { name: name.to_string() }, per_model, DType::F32)
    }

    /// Persistent, non-trainable state (optimizer buffers), zero-initialised.
    pub fn state(&mut self, name: &str, per_model: &[usize]) -> Result<TensorId> {
        self.leaf(Op::State { name: name.to_string() }, per_model, DType::F32)
    }

    /// A constant tensor whose every element is `value`.
    pub fn fill(&mut self, per_model: &[usize], value: f32) -> Result<TensorId> {
        self.leaf(Op::Fill { value }, per_model, DType::F32)
    }

    /// Batched matrix product `C[g] = op(A[g]) · op(B[g]) (+ bias[g])`, where `op` transposes
    /// the stored matrix when asked. A is `[G, M, K]` (`[G, K, M]` if `trans_a`), B is
    /// `[G, K, N]` (`[G, N, K]` if `trans_b`), bias `[G, N]`; C is `[G, M, N]`.
    pub fn matmul(
        &mut self,
        a: TensorId,
        b: TensorId,
        bias: Option<TensorId>,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<TensorId> {
        self.matmul_with(a, b, bias, trans_a, trans_b, false)
    }

    fn matmul_with(
        &mut self,
        a: TensorId,
        b: TensorId,
        bias: Option<TensorId>,
        trans_a: bool,
        trans_b: bool,
        relu: bool,
    ) -> Result<TensorId> {
        let (m, n) = self.product_shape("matmul", a, b, bias, trans_a, trans_b)?;
        let inputs = [a, b].into_iter().chain(bias).collect();
        let op = Op::MatMul { trans_a, trans_b, bias: bias.is_some(), relu };
        Ok(self.push(op, inputs, vec![self.g, m, n], DType::F32))
    }

    /// `(M, N)` of `op(a)·op(b) (+ bias)`, every operand checked.
    fn product_shape(
        &self,
        name: &str,
        a: TensorId,
        b: TensorId,
        bias: Option<TensorId>,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<(usize, usize)> {
        for t in [Some(a), Some(b), bias].into_iter().flatten() {
            self.check_g(name, t)?;
            self.check_dtype(name, t, DType::F32)?;
        }
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if sa.len() != 3 || sb.len() != 3 {
            return Err(Error::Shape(format!(
                "{name}: operands must be [G, rows, cols], got {} and {}",
                shape_str(&sa),
                shape_str(&sb)
            )));
        }
        let (m, ka) = if trans_a { (sa[2], sa[1]) } else { (sa[1], sa[2]) };
        let (kb, n) = if trans_b { (sb[2], sb[1]) } else { (sb[1], sb[2]) };
        if ka != kb {
            return Err(Error::Shape(format!(
                "{name}: inner dimensions differ: A {} (transposed: {trans_a}) has K={ka}, B {} (transposed: {trans_b}) has K={kb}",
                shape_str(&sa),
                shape_str(&sb)
            )));
        }
        if let Some(bias) = bias {
            let s = self.shape(bias);
            if s != [self.g, n] {
                return Err(Error::Shape(format!(
                    "{name}: bias has shape {}, expected {}",
                    shape_str(s),
                    shape_str(&[self.g, n])
                )));
            }
        }
        Ok((m, n))
    }

    /// `matmul(a, b) * relu'(y)` in one kernel, where `y` is a relu output shaped like the
    /// product: the gradient that reaches a relu from a GEMM (autograd joins them), bit for
    /// bit the two ops' result.
    pub fn matmul_relu_grad(
        &mut self,
        a: TensorId,
        b: TensorId,
        trans_a: bool,
        trans_b: bool,
        y: TensorId,
    ) -> Result<TensorId> {
        let name = "matmul_relu_grad";
        let (m, n) = self.product_shape(name, a, b, None, trans_a, trans_b)?;
        self.check_g(name, y)?;
        self.check_dtype(name, y, DType::F32)?;
        let shape = vec![self.g, m, n];
        if self.shape(y) != shape.as_slice() {
            return Err(Error::Shape(format!(
                "{name}: y has shape {}, the product {}",
                shape_str(self.shape(y)),
                shape_str(&shape)
            )));
        }
        Ok(self.push(Op::MatMulReluGrad { trans_a, trans_b }, vec![a, b, y], shape, DType::F32))
    }

    /// PyTorch's `nn.Linear` per model: `x [G, ..., in]`, `weight [G, out, in]`,
    /// `bias [G, out]` → `[G, ..., out]`.
    pub fn linear(&mut self, x: TensorId, weight: TensorId, bias: Option<TensorId>) -> Result<TensorId> {
        self.linear_with(x, weight, bias, false)
    }

    /// `relu(linear(x, weight, bias))` in one kernel: the relu runs in the GEMM's epilogue.
    /// The same values and gradients as the two ops.
    pub fn linear_relu(&mut self, x: TensorId, weight: TensorId, bias: Option<TensorId>) -> Result<TensorId> {
        self.linear_with(x, weight, bias, true)
    }

    fn linear_with(&mut self, x: TensorId, weight: TensorId, bias: Option<TensorId>, relu: bool) -> Result<TensorId> {
        let sx = self.shape(x).to_vec();
        let sw = self.shape(weight).to_vec();
        if sx.len() < 2 || sw.len() != 3 || sx[sx.len() - 1] != sw[2] {
            return Err(Error::Shape(format!(
                "linear: input {} does not match weight {} (expected input [G, ..., {}])",
                shape_str(&sx),
                shape_str(&sw),
                sw.get(2).copied().unwrap_or(0)
            )));
        }
        let features = sx[sx.len() - 1];
        let rows: usize = sx[1..sx.len() - 1].iter().product();
        let x3 = if sx.len() == 3 { x } else { self.reshape(x, &[rows, features])? };
        let y = self.matmul_with(x3, weight, bias, false, true, relu)?;
        if sx.len() == 3 {
            Ok(y)
        } else {
            let mut out = sx[1..sx.len() - 1].to_vec();
            out.push(sw[1]);
            self.reshape(y, &out)
        }
    }

    /// Elementwise `max(x, 0)`.
    pub fn relu(&mut self, x: TensorId) -> Result<TensorId> {
        self.unary(Unary::Relu, x)
    }

    /// Gradient of relu given the upstream gradient `dy` and relu's input or output.
    pub fn relu_grad(&mut self, dy: TensorId, y: TensorId) -> Result<TensorId> {
        self.unary_grad(Unary::Relu, dy, y)
    }

    pub(crate) fn same_shape(&self, op: &str, a: TensorId, b: TensorId) -> Result<()> {
        self.check_dtype(op, a, DType::F32)?;
        self.check_dtype(op, b, DType::F32)?;
        if self.shape(a) != self.shape(b) {
            return Err(Error::Shape(format!(
                "{op}: shapes differ: {} and {}",
                shape_str(self.shape(a)),
                shape_str(self.shape(b))
            )));
        }
        Ok(())
    }

    /// Elementwise sum of two tensors of one shape.
    pub fn add(&mut self, a: TensorId, b: TensorId) -> Result<TensorId> {
        self.same_shape("add", a, b)?;
        let s = self.shape(a).to_vec();
        Ok(self.push(Op::Add, vec![a, b], s, DType::F32))
    }

    /// The same data seen with another per-model shape (same element count); `flatten` is
    /// `reshape(x, &[n, rest])`.
    pub fn reshape(&mut self, x: TensorId, per_model: &[usize]) -> Result<TensorId> {
        let s = self.shape(x).to_vec();
        let mut shape = vec![self.g];
        shape.extend_from_slice(per_model);
        if shape.iter().product::<usize>() != s.iter().product::<usize>() {
            return Err(Error::Shape(format!(
                "reshape: cannot view {} as {}: element counts differ",
                shape_str(&s),
                shape_str(&shape)
            )));
        }
        let dtype = self.node(x).dtype;
        Ok(self.push(Op::Reshape, vec![x], shape, dtype))
    }

    /// Flattens every dimension after `[G, N]`: `[G, N, a, b, ...]` → `[G, N, a*b*...]`.
    pub fn flatten(&mut self, x: TensorId) -> Result<TensorId> {
        let s = self.shape(x).to_vec();
        if s.len() < 2 {
            return Err(Error::Shape(format!("flatten: input {} has no batch dimension", shape_str(&s))));
        }
        let rest: usize = s[2..].iter().product();
        self.reshape(x, &[s[1], rest])
    }

    fn check_axes(&self, op: &str, x: TensorId, axes: &[usize]) -> Result<Vec<usize>> {
        let s = self.shape(x);
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty() || sorted[0] == 0 || *sorted.last().unwrap() >= s.len() || sorted.len() != axes.len() {
            return Err(Error::Shape(format!(
                "{op}: axes {axes:?} are invalid for shape {} (give distinct axes in 1..{}; axis 0 is the model batch)",
                shape_str(s),
                s.len()
            )));
        }
        Ok(sorted)
    }

    /// Sum over `axes` (never axis 0, the model batch), times `scale`; the axes are removed.
    pub fn sum_scaled(&mut self, x: TensorId, axes: &[usize], scale: f32) -> Result<TensorId> {
        self.check_dtype("sum", x, DType::F32)?;
        let axes = self.check_axes("sum", x, axes)?;
        let s = self.shape(x);
        let shape: Vec<usize> = s.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
        Ok(self.push(Op::Sum { axes, scale }, vec![x], shape, DType::F32))
    }

    /// Sum over `axes` (axis 0, the model batch, is never reduced).
    pub fn sum(&mut self, x: TensorId, axes: &[usize]) -> Result<TensorId> {
        self.sum_scaled(x, axes, 1.0)
    }

    /// Mean over `axes` (axis 0, the model batch, is never reduced).
    pub fn mean(&mut self, x: TensorId, axes: &[usize]) -> Result<TensorId> {
        let s = self.shape(x).to_vec();
        let axes_ok = self.check_axes("mean", x, axes)?;
        let count: usize = axes_ok.iter().map(|&a| s[a]).product();
        self.sum_scaled(x, axes, 1.0 / count as f32)
    }

    /// Inverse of a reduction: repeats `x` along `axes` to reach `shape`, times `scale`.
    pub fn broadcast(&mut self, x: TensorId, shape: &[usize], axes: &[usize], scale: f32) -> Result<TensorId> {
        self.check_dtype("broadcast", x, DType::F32)?;
        let kept: Vec<usize> = shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect();
        if kept != self.shape(x) || axes.contains(&0) || axes.iter().any(|&a| a >= shape.len()) {
            return Err(Error::Shape(format!(
                "broadcast: cannot repeat {} along axes {axes:?} to {}",
                shape_str(self.shape(x)),
                shape_str(shape)
            )));
        }
        let mut axes = axes.to_vec();
        axes.sort_unstable();
        Ok(self.push(Op::Broadcast { axes, scale }, vec![x], shape.to_vec(), DType::F32))
    }

    fn check_logits_labels(&self, op: &str, logits: TensorId, labels: TensorId) -> Result<(usize, usize)> {
        self.check_dtype(op, logits, DType::F32)?;
        self.check_dtype(op, labels, DType::U32)?;
        let (sl, sy) = (self.shape(logits), self.shape(labels));
        if sl.len() != 3 || sy.len() != 2 || sl[0] != self.g || sy[0] != self.g || sl[1] != sy[1] {
            return Err(Error::Shape(format!(
                "{op}: logits must be [G, N, classes] and labels [G, N]; got logits {} and labels {} (G={})",
                shape_str(sl),
                shape_str(sy),
                self.g
            )));
        }
        Ok((sl[1], sl[2]))
    }

    /// torchmb's `batch_loss` for cross-entropy: fused log-softmax + NLL per model.
    /// `logits [G, N, C]`, `labels [G, N]` (u32) → `[G]` for mean/sum, `[G, N]` for none.
    pub fn cross_entropy(&mut self, logits: TensorId, labels: TensorId, reduction: Reduction) -> Result<TensorId> {
        let (n, _) = self.check_logits_labels("cross_entropy", logits, labels)?;
        let shape = match reduction {
            Reduction::None => vec![self.g, n],
            _ => vec![self.g],
        };
        Ok(self.push(Op::CrossEntropy { reduction }, vec![logits, labels], shape, DType::F32))
    }

    /// Gradient of [`Graph::cross_entropy`] with respect to the logits.
    pub fn cross_entropy_grad(
        &mut self,
        logits: TensorId,
        labels: TensorId,
        dloss: TensorId,
        reduction: Reduction,
    ) -> Result<TensorId> {
        let (n, _) = self.check_logits_labels("cross_entropy_grad", logits, labels)?;
        let want = match reduction {
            Reduction::None => vec![self.g, n],
            _ => vec![self.g],
        };
        if self.shape(dloss) != want.as_slice() {
            return Err(Error::Shape(format!(
                "cross_entropy_grad: loss gradient has shape {}, expected {}",
                shape_str(self.shape(dloss)),
                shape_str(&want)
            )));
        }
        let s = self.shape(logits).to_vec();
        Ok(self.push(Op::CrossEntropyGrad { reduction }, vec![logits, labels, dloss], s, DType::F32))
    }

    /// torchmb's `batch_topk`: for each k in `ks`, the fraction (or count, if `counts`) of
    /// samples whose label is among the k largest logits, per model → `[G, ks.len()]`
    /// (read it back with [`crate::Plan::read_topk`] to get torchmb's `[k][G]`).
    pub fn topk_accuracy(&mut self, logits: TensorId, labels: TensorId, ks: &[u32], counts: bool) -> Result<TensorId> {
        let (_, c) = self.check_logits_labels("topk_accuracy", logits, labels)?;
        if ks.is_empty() || ks.len() > 8 || ks.iter().any(|&k| k == 0 || k as usize > c) {
            return Err(Error::Shape(format!(
                "topk_accuracy: ks {ks:?} must be 1 to 8 values, each in 1..={c} (the class count)"
            )));
        }
        Ok(self.push(Op::TopK { ks: ks.to_vec(), counts }, vec![logits, labels], vec![self.g, ks.len()], DType::F32))
    }
}
