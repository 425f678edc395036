//! User-defined batched ops: a Rust trait with WGSL forward and backward (torchmb's
//! `AbstractBatchModule` + `register_batch_module`).
//!
//! A [`CustomOp`] says what shape its output has, which WGSL kernel computes it and how its
//! gradient is built from other graph nodes, usually further custom ops whose kernels are the
//! user's backward WGSL. [`Graph::custom`] adds one to a graph; [`crate::autograd::grad`]
//! differentiates through it by calling [`CustomOp::backward`]; [`crate::Plan`] compiles its
//! kernel once, with the crate's own, and records one dispatch per run.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::{shape_str, DType, Graph, Op, TensorId};
use crate::error::{Error, Result};

/// Words at the start of every custom op's uniform, before the per-operand lengths.
pub const CUSTOM_HEADER_WORDS: usize = 4;

/// A batched op with a user-written WGSL kernel.
///
/// # The kernel's interface
///
/// One kernel launch computes the whole output for every model. The plan launches
/// [`CustomOp::invocations`] invocations (by default one per output element, all models
/// together) in workgroups of [`CustomOp::workgroup_size`], passed to the shader as the
/// override constant `WG`, which the shader must declare and use as its workgroup size. Past
/// 65,535 workgroups the grid folds into two dimensions, so the flat invocation index is
/// `id.x + id.y * p.row`; the grid is rounded up, so return when it reaches `p.threads`.
///
/// Bind group 0 holds, in this order:
///
/// | binding | WGSL declaration | content |
/// | --- | --- | --- |
/// | 0 | `var<uniform>` | the parameters below |
/// | 1 ..= k | `var<storage, read> array<f32>` | input `i` at binding `i + 1`, `[G, ...]` row-major (`array<u32>` for a u32 input) |
/// | k + 1 | `var<storage, read_write> array<f32>` | the output, `[G, ...]` row-major |
///
/// The uniform is a struct of 32-bit words:
///
/// | word | name (suggested) | value |
/// | --- | --- | --- |
/// | 0 | `models` | G |
/// | 1 | `threads` | invocations asked for |
/// | 2 | `row` | invocations per grid row: the flat index is `id.x + id.y * row` |
/// | 3 | `out_len` | elements per model of the output |
/// | 4 ..= 3 + k | `len_i` | elements per model of input `i` |
/// | 4 + k .. | | [`CustomOp::uniform_words`] (write f32 constants as `f32::to_bits`, declare them `f32`) |
///
/// The shader may declare fewer words than it is given, not more. Buffers can be larger than
/// their tensors (the plan reuses memory), so use the lengths above, never `arrayLength`. The
/// kernel must write every output element: the output buffer holds stale data before it runs.
/// Models must stay independent: model `g`'s output may only read model `g`'s slice of each
/// input (`g * len_i .. (g + 1) * len_i`).
///
/// At most `max_storage_buffers_per_shader_stage - 1` inputs (browsers grant 8 to 10 storage
/// buffers in all); a plan with more returns an error, as does WGSL that does not compile
/// (natively at [`crate::Plan::new`], in the browser at the first run).
///
/// # Example: a constant factor, `y = factor * x`, differentiated by itself
///
/// ```
/// use std::borrow::Cow;
/// use std::sync::Arc;
/// use modelbatch::graph::{CustomOp, Graph};
/// use modelbatch::{autograd, DType, Error, Result, TensorId};
///
/// #[derive(Debug)]
/// struct Scale {
///     factor: f32,
/// }
///
/// const SCALE: &str = "
/// struct Params { models: u32, threads: u32, row: u32, out_len: u32, x_len: u32, factor: f32 }
/// @group(0) @binding(0) var<uniform> p: Params;
/// @group(0) @binding(1) var<storage, read> x: array<f32>;
/// @group(0) @binding(2) var<storage, read_write> y: array<f32>;
/// override WG: u32 = 64u;
///
/// @compute @workgroup_size(WG)
/// fn main(@builtin(global_invocation_id) id: vec3<u32>) {
///     let i = id.x + id.y * p.row;
///     if i >= p.threads { return; }
///     y[i] = p.factor * x[i];
/// }";
///
/// impl CustomOp for Scale {
///     fn name(&self) -> &'static str {
///         "scale"
///     }
///     fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
///         match inputs {
///             [x] => Ok(x.to_vec()),
///             _ => Err(Error::Shape(format!("scale: needs one input, got {}", inputs.len()))),
///         }
///     }
///     fn wgsl(&self) -> Cow<'static, str> {
///         SCALE.into()
///     }
///     fn uniform_words(&self) -> Vec<u32> {
///         vec![self.factor.to_bits()]
///     }
///     // d(factor * x)/dx = factor: the gradient is the same op applied to dy.
///     fn backward(&self, graph: &mut Graph, _x: &[TensorId], _y: TensorId, dy: TensorId)
///         -> Result<Vec<Option<TensorId>>> {
///         Ok(vec![Some(graph.custom(Arc::new(Scale { factor: self.factor }), &[dy])?)])
///     }
/// }
///
/// let mut graph = Graph::new(3);
/// let w = graph.param("w", &[5, 4])?;
/// let y = graph.custom(Arc::new(Scale { factor: 2.5 }), &[w])?;
/// let dw = autograd::grad(&mut graph, y, None, &[w])?[0];
/// assert_eq!(graph.shape(dw.unwrap()), &[3, 5, 4]);
/// # Ok::<(), Error>(())
/// ```
///
/// `tests/custom_op.rs` and `examples/custom_op.rs` define Swish with a learnable per-model
/// slope, `y = x * sigmoid(beta_g * x)`, whose backward is two more custom ops: an
/// elementwise one for `dx` and a per-model reduction (one invocation per model) for `dbeta`.
pub trait CustomOp: Send + Sync + fmt::Debug {
    /// Short name: dispatch labels, errors, the shader module's label.
    fn name(&self) -> &'static str;

    /// The output's shape (G first) from the inputs' shapes (G first), or an
    /// [`Error::Shape`] that says what the op expected.
    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>>;

    /// WGSL source of the kernel (see the interface in the trait's documentation).
    fn wgsl(&self) -> Cow<'static, str>;

    /// Entry point of the kernel in [`CustomOp::wgsl`].
    fn entry_point(&self) -> &'static str {
        "main"
    }

    /// Invocations per workgroup, passed as the override constant `WG`.
    fn workgroup_size(&self) -> u32 {
        64
    }

    /// Invocations to launch for these shapes: by default one per output element.
    fn invocations(&self, inputs: &[&[usize]], output: &[usize]) -> usize {
        let _ = inputs;
        output.iter().product()
    }

    /// Extra uniform words after the operand lengths (constants of the op).
    fn uniform_words(&self) -> Vec<u32> {
        Vec::new()
    }

    /// The vector-Jacobian product: given the op's `inputs`, its `output` and the gradient
    /// `grad_output` of the loss with respect to it (same shape as `output`), appends nodes to
    /// `graph` and returns one gradient per input, shaped like that input (`None`: no gradient,
    /// e.g. for a u32 input or one that `graph.node(input).requires_grad` says needs none).
    ///
    /// The default says the op is not differentiable; gradient-only ops keep it.
    fn backward(
        &self,
        graph: &mut Graph,
        inputs: &[TensorId],
        output: TensorId,
        grad_output: TensorId,
    ) -> Result<Vec<Option<TensorId>>> {
        let _ = (graph, inputs, output, grad_output);
        Err(Error::Usage(format!("grad: custom op `{}` does not implement backward", self.name())))
    }
}

/// Custom ops compare by identity: two nodes hold the same op when they share one allocation.
impl PartialEq for dyn CustomOp {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(self as *const dyn CustomOp, other as *const dyn CustomOp)
    }
}

impl Graph {
    /// Applies a user-defined op to `inputs` (each `[G, ...]`, f32 or u32); the output is f32
    /// with the shape [`CustomOp::output_shape`] gives, which must start with G.
    pub fn custom(&mut self, op: Arc<dyn CustomOp>, inputs: &[TensorId]) -> Result<TensorId> {
        let name = op.name();
        for &t in inputs {
            if t.index() >= self.nodes().len() {
                return Err(Error::Usage(format!("{name}: tensor {} is not in this graph", t.index())));
            }
            self.check_g(name, t)?;
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|&t| self.shape(t)).collect();
        let shape = op.output_shape(&shapes)?;
        if shape.first() != Some(&self.models()) || shape.contains(&0) {
            return Err(Error::Shape(format!(
                "{name}: output shape {} must start with the model batch G={} and have no zero dimension \
                 (inputs {})",
                shape_str(&shape),
                self.models(),
                shapes.iter().map(|s| shape_str(s)).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(self.push(Op::Custom(op), inputs.to_vec(), shape, DType::F32))
    }
}
