//! A batched multi-layer perceptron: Linear → ReLU → … → Linear.

use crate::error::{Error, Result};
use crate::graph::{Graph, TensorId};
use crate::nn::init::{linear_init, Rng};
use crate::plan::Plan;

/// G independent MLPs with layer sizes `sizes` (`[784, 128, 10]`: one hidden layer).
/// Parameters are named as `nn.Sequential` of Linear/ReLU names them: `0.weight`, `0.bias`,
/// `2.weight`, …
#[derive(Clone, Debug)]
pub struct Mlp {
    sizes: Vec<usize>,
    params: Vec<(String, TensorId)>,
}

impl Mlp {
    /// Adds the parameters and the forward pass for input `x [G, N, sizes[0]]` to `graph`,
    /// returning the MLP and its logits `[G, N, sizes.last()]`.
    pub fn build(graph: &mut Graph, sizes: &[usize], x: TensorId) -> Result<(Mlp, TensorId)> {
        if sizes.len() < 2 {
            return Err(Error::Usage(format!("mlp: need at least an input and an output size, got {sizes:?}")));
        }
        let mut params = Vec::new();
        let mut h = x;
        for (l, pair) in sizes.windows(2).enumerate() {
            let idx = 2 * l;
            let w = graph.param(&format!("{idx}.weight"), &[pair[1], pair[0]])?;
            let b = graph.param(&format!("{idx}.bias"), &[pair[1]])?;
            params.push((format!("{idx}.weight"), w));
            params.push((format!("{idx}.bias"), b));
            h = graph.linear(h, w, Some(b))?;
            if l + 2 < sizes.len() {
                h = graph.relu(h)?;
            }
        }
        Ok((Mlp { sizes: sizes.to_vec(), params }, h))
    }

    /// Parameters in state-dict order with their PyTorch names.
    pub fn params(&self) -> &[(String, TensorId)] {
        &self.params
    }

    /// Initial weights of model `g` as PyTorch would draw them, from `seed + g`, in
    /// [`Mlp::params`] order.
    pub fn init_model(&self, seed: u64, g: usize) -> Vec<Vec<f32>> {
        let mut rng = Rng::new(seed.wrapping_add(g as u64));
        let mut out = Vec::new();
        for pair in self.sizes.windows(2) {
            let (w, b) = linear_init(&mut rng, pair[0], pair[1]);
            out.push(w);
            out.push(b);
        }
        out
    }

    /// Initialises every model of `plan` independently (model g from `seed + g`).
    pub fn init(&self, plan: &Plan, seed: u64) -> Result<()> {
        let g = plan.shape(self.params[0].1)[0];
        for m in 0..g {
            for ((_, t), values) in self.params.iter().zip(self.init_model(seed, m)) {
                plan.write_model(*t, m, &values)?;
            }
        }
        Ok(())
    }
}
