//! Swish with a learnable per-model slope as a modelbatch custom op:
//! `y = x * sigmoid(beta_g * x)`, `x [G, ...]`, `beta [G, 1]` (one slope per model).
//!
//! The forward kernel is `swish.wgsl`; the backward builds two more custom ops from
//! `swish_grad.wgsl`: `dx` elementwise and `dbeta` as a per-model reduction. Shared by
//! `examples/custom_op` and `tests/custom_op.rs`.

use std::borrow::Cow;
use std::sync::Arc;

use modelbatch::graph::{CustomOp, Graph};
use modelbatch::{Error, Result, TensorId};

/// Forward WGSL (entry point `main`).
pub const SWISH_WGSL: &str = include_str!("swish.wgsl");
/// Backward WGSL (entry points `grad_x` and `grad_beta`).
pub const SWISH_GRAD_WGSL: &str = include_str!("swish_grad.wgsl");

/// `y = x * sigmoid(beta_g * x)` over inputs `[x [G, ...], beta [G, 1]]`.
#[derive(Debug)]
pub struct Swish;

/// `[x, beta]` must be `[G, ...]` and `[G, 1]`.
fn check(op: &str, x: &[usize], beta: &[usize]) -> Result<()> {
    if beta != [x[0], 1] {
        return Err(Error::Shape(format!("{op}: beta must be [G, 1] = [{}, 1], got {beta:?} (x is {x:?})", x[0])));
    }
    Ok(())
}

impl CustomOp for Swish {
    fn name(&self) -> &'static str {
        "swish"
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let [x, beta] = inputs else {
            return Err(Error::Shape(format!("swish: needs inputs [x, beta], got {} inputs", inputs.len())));
        };
        check("swish", x, beta)?;
        Ok(x.to_vec())
    }

    fn wgsl(&self) -> Cow<'static, str> {
        SWISH_WGSL.into()
    }

    fn backward(
        &self,
        graph: &mut Graph,
        inputs: &[TensorId],
        _output: TensorId,
        dy: TensorId,
    ) -> Result<Vec<Option<TensorId>>> {
        let (x, beta) = (inputs[0], inputs[1]);
        let operands = [dy, x, beta];
        let mut grad = |which: SwishGrad, wrt: TensorId| -> Result<Option<TensorId>> {
            if graph.node(wrt).requires_grad {
                Ok(Some(graph.custom(Arc::new(which), &operands)?))
            } else {
                Ok(None)
            }
        };
        Ok(vec![grad(SwishGrad::X, x)?, grad(SwishGrad::Beta, beta)?])
    }
}

/// The two gradients of [`Swish`], over inputs `[dy, x, beta]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwishGrad {
    /// `dx`, shaped like x: one invocation per element.
    X,
    /// `dbeta [G, 1]`: one invocation per model, summing over the model's elements.
    Beta,
}

impl CustomOp for SwishGrad {
    fn name(&self) -> &'static str {
        match self {
            SwishGrad::X => "swish_grad_x",
            SwishGrad::Beta => "swish_grad_beta",
        }
    }

    fn output_shape(&self, inputs: &[&[usize]]) -> Result<Vec<usize>> {
        let [dy, x, beta] = inputs else {
            return Err(Error::Shape(format!("{}: needs inputs [dy, x, beta], got {}", self.name(), inputs.len())));
        };
        check(self.name(), x, beta)?;
        if dy != x {
            return Err(Error::Shape(format!("{}: dy {dy:?} and x {x:?} differ", self.name())));
        }
        Ok(match self {
            SwishGrad::X => x.to_vec(),
            SwishGrad::Beta => beta.to_vec(),
        })
    }

    fn wgsl(&self) -> Cow<'static, str> {
        SWISH_GRAD_WGSL.into()
    }

    fn entry_point(&self) -> &'static str {
        match self {
            SwishGrad::X => "grad_x",
            SwishGrad::Beta => "grad_beta",
        }
    }

    fn invocations(&self, inputs: &[&[usize]], output: &[usize]) -> usize {
        match self {
            SwishGrad::X => output.iter().product(),
            SwishGrad::Beta => inputs[1][0],
        }
    }
}

/// Adds `swish(x, beta)` to `graph`.
pub fn swish(graph: &mut Graph, x: TensorId, beta: TensorId) -> Result<TensorId> {
    graph.custom(Arc::new(Swish), &[x, beta])
}
