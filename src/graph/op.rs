//! The closed set of ops a graph can hold.

/// How a per-sample loss is reduced per model (torchmb's `batch_loss` reductions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Keep one loss per sample: `[G, N]`.
    None,
    /// Mean over the samples of each model: `[G]`.
    Mean,
    /// Sum over the samples of each model: `[G]`.
    Sum,
}

/// What a node computes. Operands are the node's `inputs`, in the order documented here.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Data written before each run (images, labels, hyper-parameters).
    Input {
        /// Name used in errors and when looking tensors up.
        name: String,
    },
    /// Trainable parameter, persistent across runs.
    Param {
        /// PyTorch state-dict name of the parameter.
        name: String,
    },
    /// Non-trainable persistent state (optimizer buffers), zero-initialised.
    State {
        /// Name used in errors and checkpoints.
        name: String,
    },
    /// Constant tensor with every element equal to `value`.
    Fill {
        /// The value.
        value: f32,
    },
    /// `[a, b, (bias)]`: batched `op(a)·op(b) (+ bias)`.
    MatMul {
        /// A is stored transposed (`[G, K, M]`).
        trans_a: bool,
        /// B is stored transposed (`[G, N, K]`).
        trans_b: bool,
        /// A bias operand follows, added to every row.
        bias: bool,
    },
    /// `[x]`: `max(x, 0)`.
    Relu,
    /// `[dy, y]`: `dy` where `y > 0`, else 0.
    ReluGrad,
    /// `[a, b]`: `a + b`.
    Add,
    /// `[x]`: the same elements, another shape.
    Reshape,
    /// `[x]`: sum over `axes` (sorted, never 0) times `scale`.
    Sum {
        /// Reduced axes.
        axes: Vec<usize>,
        /// Factor applied to the sum (1/count for a mean).
        scale: f32,
    },
    /// `[x]`: `x` repeated along `axes` of the output, times `scale`.
    Broadcast {
        /// Axes of the output along which `x` is repeated.
        axes: Vec<usize>,
        /// Factor applied to every element.
        scale: f32,
    },
    /// `[logits, labels]`: log-softmax + negative log-likelihood.
    CrossEntropy {
        /// Per-model reduction.
        reduction: Reduction,
    },
    /// `[logits, labels, dloss]`: gradient of the cross-entropy with respect to the logits.
    CrossEntropyGrad {
        /// Reduction of the forward op.
        reduction: Reduction,
    },
    /// `[logits, labels]`: top-k accuracy per model for each k.
    TopK {
        /// The k values.
        ks: Vec<u32>,
        /// Counts instead of fractions.
        counts: bool,
    },
}

impl Op {
    /// Short name for errors and labels.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::State { .. } => "state",
            Op::Fill { .. } => "fill",
            Op::MatMul { .. } => "matmul",
            Op::Relu => "relu",
            Op::ReluGrad => "relu_grad",
            Op::Add => "add",
            Op::Reshape => "reshape",
            Op::Sum { .. } => "sum",
            Op::Broadcast { .. } => "broadcast",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::CrossEntropyGrad { .. } => "cross_entropy_grad",
            Op::TopK { .. } => "topk_accuracy",
        }
    }

    /// Leaves own persistent buffers that keep their contents between runs.
    pub fn is_leaf(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Fill { .. })
    }
}
