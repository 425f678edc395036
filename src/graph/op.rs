//! The ops a graph can hold: a closed set, plus user-defined [`Op::Custom`] ops.

use std::sync::Arc;

use super::CustomOp;

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

/// Geometry of a 2-D convolution (PyTorch's `nn.Conv2d` arguments other than channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeom {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Zero padding on each side (height, width).
    pub padding: [usize; 2],
    /// Dilation (height, width).
    pub dilation: [usize; 2],
    /// Channel groups: input and output channels are split into `groups` independent sets.
    pub groups: usize,
}

impl Conv2dGeom {
    /// Output size of one spatial axis (0 = height, 1 = width) for input size `size`, or
    /// `None` if the kernel does not fit.
    pub fn out_size(&self, axis: usize, size: usize) -> Option<usize> {
        if self.kernel[axis] == 0 || self.dilation[axis] == 0 || self.stride[axis] == 0 {
            return None;
        }
        // Checked: the sizes come from user specs, and usize is 32 bits on wasm32.
        let span = self.dilation[axis].checked_mul(self.kernel[axis] - 1)?.checked_add(1)?;
        let padded = self.padding[axis].checked_mul(2)?.checked_add(size)?;
        if padded < span {
            return None;
        }
        Some((padded - span) / self.stride[axis] + 1)
    }
}

/// Geometry of a 2-D pooling window (PyTorch's `MaxPool2d` / `AvgPool2d` arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dGeom {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Implicit padding on each side (-inf for max, zeros for average).
    pub padding: [usize; 2],
    /// Dilation (max pooling only; 1 for average pooling).
    pub dilation: [usize; 2],
    /// Average pooling divides by the full window, padding included (PyTorch's default).
    pub count_include_pad: bool,
}

impl Pool2dGeom {
    /// The same output-size rule as a convolution (floor mode).
    pub fn out_size(&self, axis: usize, size: usize) -> Option<usize> {
        Conv2dGeom {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: 1,
        }
        .out_size(axis, size)
    }
}

/// Elementwise activation functions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    /// `max(x, 0)`.
    Relu,
    /// `x` if positive, else `slope * x`.
    LeakyRelu(f32),
    /// Exact GELU: `x * Φ(x)` with the erf-based normal CDF.
    Gelu,
    /// `x * sigmoid(x)`.
    Silu,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
}

impl Unary {
    /// Name of the function (dispatch label and errors).
    pub fn name(self) -> &'static str {
        match self {
            Unary::Relu => "relu",
            Unary::LeakyRelu(_) => "leaky_relu",
            Unary::Gelu => "gelu",
            Unary::Silu => "silu",
            Unary::Tanh => "tanh",
            Unary::Sigmoid => "sigmoid",
        }
    }

    /// Name of the gradient (dispatch label).
    pub fn grad_name(self) -> &'static str {
        match self {
            Unary::Relu => "relu_grad",
            Unary::LeakyRelu(_) => "leaky_relu_grad",
            Unary::Gelu => "gelu_grad",
            Unary::Silu => "silu_grad",
            Unary::Tanh => "tanh_grad",
            Unary::Sigmoid => "sigmoid_grad",
        }
    }
}

/// Which statistics a normalisation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// BatchNorm2d: per channel, over samples and positions. Stats are `[G, 3, C]`.
    Batch,
    /// GroupNorm with this many groups: per sample and group, over the group's channels and
    /// positions. Stats are `[G, 3, N * groups]`.
    Group(usize),
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
    /// A dataset resident on the GPU: bytes packed four to a u32, shape `[1, words]` (the
    /// one leaf not batched over G: every model reads the same data).
    Data {
        /// Name used in errors and when looking tensors up.
        name: String,
    },
    /// `[data, indices]`: images `indices[g, n]` of a byte dataset, normalised:
    /// `(p / 255 - mean) / std` → `[G, N, ...image shape]`.
    GatherImages {
        /// Subtracted after scaling to [0, 1].
        mean: f32,
        /// Divided by.
        std: f32,
    },
    /// `[labels, indices]`: labels `indices[g, n]` of a byte dataset → `[G, N]` u32.
    GatherLabels,
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
        /// Relu applied in the kernel's epilogue (linear → relu fused).
        relu: bool,
    },
    /// `[a, b, y]`: `op(a)·op(b)` times relu's derivative at `y` (`y > 0`), shaped like `y`:
    /// relu's backward joined to the GEMM that computes its upstream gradient.
    MatMulReluGrad {
        /// A is stored transposed (`[G, K, M]`).
        trans_a: bool,
        /// B is stored transposed (`[G, N, K]`).
        trans_b: bool,
    },
    /// `[x]`: an activation function elementwise.
    Unary(Unary),
    /// `[dy, x]`: `dy * f'(x)` (for relu `x` may also be relu's output: same sign).
    UnaryGrad(Unary),
    /// `[x]`: softmax (or log-softmax) over the last axis.
    Softmax {
        /// Log-softmax instead of softmax.
        log: bool,
    },
    /// `[dy, y]`: gradient of softmax / log-softmax from its output `y`.
    SoftmaxGrad {
        /// Log-softmax instead of softmax.
        log: bool,
    },
    /// `[x, seed]`: inverted dropout; `seed` is a `[G, 3]` u32 input (per-model seed, step,
    /// element offset)
    /// so each model draws an independent stream and each step a new mask.
    Dropout {
        /// Probability of zeroing an element.
        p: f32,
    },
    /// `[dy, seed]`: dropout's gradient (the same mask, regenerated).
    DropoutGrad {
        /// Probability of zeroing an element.
        p: f32,
    },
    /// `[x, w, (bias)]`: 2-D convolution, x `[G, N, C, H, W]`, w `[G, O, C/groups, kh, kw]`.
    Conv2d {
        /// Strides, padding, dilation, groups.
        geom: Conv2dGeom,
        /// A bias `[G, O]` follows.
        bias: bool,
        /// Relu applied in the kernel's epilogue (conv → relu fused: one pass, no
        /// pre-activation tensor).
        relu: bool,
    },
    /// `[dy, w]`: gradient of a convolution with respect to its input (shape of x).
    Conv2dGradInput {
        /// Geometry of the forward convolution.
        geom: Conv2dGeom,
    },
    /// `[dy, x]`: gradient of a convolution with respect to its weight (shape of w).
    Conv2dGradWeight {
        /// Geometry of the forward convolution.
        geom: Conv2dGeom,
    },
    /// `[x]`: max pooling.
    MaxPool2d {
        /// Window geometry.
        geom: Pool2dGeom,
    },
    /// `[dy, x]`: gradient of max pooling (routed to the first maximum of each window).
    MaxPool2dGrad {
        /// Window geometry.
        geom: Pool2dGeom,
        /// `x` is a relu output and the result is also multiplied by relu's derivative at
        /// `x` (relu's gradient fused into the pooling gradient).
        relu: bool,
    },
    /// `[x]`: average pooling.
    AvgPool2d {
        /// Window geometry.
        geom: Pool2dGeom,
    },
    /// `[dy]`: gradient of average pooling (shape of the forward input).
    AvgPool2dGrad {
        /// Window geometry.
        geom: Pool2dGeom,
    },
    /// `[x]`: adaptive average pooling to a fixed output size (PyTorch's window rule).
    AdaptiveAvgPool2d,
    /// `[dy]`: gradient of adaptive average pooling (shape of the forward input).
    AdaptiveAvgPool2dGrad,
    /// `[x]`: batch statistics `[G, 3, S]`: mean, 1/sqrt(var + eps), biased variance.
    NormStats {
        /// Batch or group statistics.
        kind: NormKind,
        /// Added to the variance.
        eps: f32,
    },
    /// `[running_mean, running_var]`: the same `[G, 3, C]` layout from running estimates
    /// (BatchNorm2d in eval mode).
    RunningStats {
        /// Added to the variance.
        eps: f32,
    },
    /// `[x, stats, (weight, bias)]`: `(x - mean) * invstd (* weight + bias)`.
    NormApply {
        /// Batch or group statistics.
        kind: NormKind,
        /// Per-channel weight and bias follow.
        affine: bool,
    },
    /// `[dy, x, stats, (weight)]`: gradient with respect to x. With `fixed` the statistics
    /// are constants (eval mode); otherwise they are x's own batch statistics.
    NormGrad {
        /// Batch or group statistics.
        kind: NormKind,
        /// A weight operand follows.
        affine: bool,
        /// Statistics do not depend on x.
        fixed: bool,
    },
    /// `[xsum, (dsum, dsq, gsum, gdot)]`, each `[G, C]`: batch-norm statistics `[G, 3, C]`
    /// of a batch summed in parts (micro-batches), `count` values per channel in all. With
    /// `shift`, only `(xsum / count, 1, 0)`, the mean that the deviations `d = x - xsum /
    /// count` are taken from; otherwise, with `dsum` and `dsq` the sums of `d` and `d * d`,
    /// what [`Op::NormStats`] computes in one pass. `gsum` and `gdot` are the whole batch's
    /// `sum(dy)` and `sum(dy * x_hat)` at the output of the [`Op::NormApply`] that uses these
    /// statistics: its gradient takes them from here (see [`Op::NormGradSums`]).
    SumsStats {
        /// Added to the variance.
        eps: f32,
        /// Values per channel over the whole batch (samples times positions).
        count: usize,
        /// Only the first pass's mean, invstd 1.
        shift: bool,
    },
    /// `[dy, x, stats, gsum, gdot, (weight)]`: batch norm's exact gradient with respect to x
    /// when the batch is summed in parts: `invstd * w * (dy - gsum / count - x_hat * gdot /
    /// count)`, `gsum` and `gdot` being the whole batch's sums (`[G, C]` each).
    NormGradSums {
        /// Values per channel over the whole batch.
        count: usize,
        /// A weight operand follows.
        affine: bool,
    },
    /// `[dy, x, stats]`: gradient of the per-channel weight, `sum(dy * x_hat)` → `[G, C]`.
    NormWeightGrad {
        /// Batch or group statistics.
        kind: NormKind,
    },
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
    /// `[inputs...]`: a user-defined op with its own WGSL kernel and backward rule (nodes
    /// compare equal when they share one op allocation).
    Custom(Arc<dyn CustomOp>),
}

impl Op {
    /// Short name for errors and labels.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::State { .. } => "state",
            Op::Fill { .. } => "fill",
            Op::Data { .. } => "data",
            Op::GatherImages { .. } => "gather_images",
            Op::GatherLabels => "gather_labels",
            Op::MatMul { .. } => "matmul",
            Op::MatMulReluGrad { .. } => "matmul_relu_grad",
            Op::Unary(f) => f.name(),
            Op::UnaryGrad(f) => f.grad_name(),
            Op::Softmax { log: false } => "softmax",
            Op::Softmax { log: true } => "log_softmax",
            Op::SoftmaxGrad { .. } => "softmax_grad",
            Op::Dropout { .. } => "dropout",
            Op::DropoutGrad { .. } => "dropout_grad",
            Op::Conv2d { .. } => "conv2d",
            Op::Conv2dGradInput { .. } => "conv2d_grad_input",
            Op::Conv2dGradWeight { .. } => "conv2d_grad_weight",
            Op::MaxPool2d { .. } => "maxpool2d",
            Op::MaxPool2dGrad { .. } => "maxpool2d_grad",
            Op::AvgPool2d { .. } => "avgpool2d",
            Op::AvgPool2dGrad { .. } => "avgpool2d_grad",
            Op::AdaptiveAvgPool2d => "adaptive_avgpool2d",
            Op::AdaptiveAvgPool2dGrad => "adaptive_avgpool2d_grad",
            Op::NormStats { .. } => "norm_stats",
            Op::RunningStats { .. } => "running_stats",
            Op::NormApply { .. } => "norm_apply",
            Op::NormGrad { .. } => "norm_grad",
            Op::NormWeightGrad { .. } => "norm_weight_grad",
            Op::SumsStats { .. } => "sums_stats",
            Op::NormGradSums { .. } => "norm_grad_sums",
            Op::Add => "add",
            Op::Reshape => "reshape",
            Op::Sum { .. } => "sum",
            Op::Broadcast { .. } => "broadcast",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::CrossEntropyGrad { .. } => "cross_entropy_grad",
            Op::TopK { .. } => "topk_accuracy",
            Op::Custom(op) => op.name(),
        }
    }

    /// Leaves own persistent buffers that keep their contents between runs.
    pub fn is_leaf(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Fill { .. } | Op::Data { .. })
    }
}
