//! Inference on a few images: every model's class probabilities, compiled once (for a
//! drawing pad that asks again at every stroke) over the model's own weight buffers.

use super::Normalize;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::{DType, Graph, TensorId};
use crate::nn::{BatchModel, Mode};
use crate::plan::Plan;

/// Class probabilities (softmax of the output) of every model for `n` byte images.
pub struct Predictor {
    plan: Plan,
    x: TensorId,
    probs: TensorId,
    g: usize,
    n: usize,
    pixels: usize,
    classes: usize,
    norm: Normalize,
}

impl Predictor {
    /// Compiles evaluation-mode inference of `model` for `n` images at a time.
    pub fn new(gpu: &Gpu, model: &BatchModel, n: usize, norm: Normalize) -> Result<Predictor> {
        if n == 0 {
            return Err(Error::Usage("predict: at least one image".into()));
        }
        let g = model.models();
        let input = &model.spec().input;
        let mut graph = Graph::new(g);
        let mut shape = vec![n];
        shape.extend_from_slice(input);
        let x = graph.input("x", &shape, DType::F32)?;
        let built = model.spec().build(&mut graph, x, Mode::Eval)?;
        let out = graph.shape(built.output).to_vec();
        if out.len() != 3 {
            return Err(Error::Usage(format!(
                "predict: the model's output per image must be a vector of class scores, got {:?}",
                &out[2..]
            )));
        }
        let probs = graph.softmax(built.output, false)?;
        let plan = model.plan(gpu, &graph, &[probs], &[])?;
        Ok(Predictor { plan, x, probs, g, n, pixels: input.iter().product(), classes: out[2], norm })
    }

    /// Classes per image.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Images per call.
    pub fn images(&self) -> usize {
        self.n
    }

    /// Probabilities `[G][n][classes]` (flat, model-major) for `n` images of bytes, image
    /// after image, normalised as in training.
    pub async fn predict(&self, images: &[u8]) -> Result<Vec<f32>> {
        if images.len() != self.n * self.pixels {
            return Err(Error::Usage(format!(
                "predict: expected {} image(s) of {} pixels ({} bytes), got {} bytes",
                self.n,
                self.pixels,
                self.n * self.pixels,
                images.len()
            )));
        }
        let Normalize { mean, std } = self.norm;
        let inv_std = 1.0 / std; // as the gather kernel computes it
        let one: Vec<f32> = images.iter().map(|&p| (p as f32 / 255.0 - mean) * inv_std).collect();
        let x: Vec<f32> = (0..self.g).flat_map(|_| one.iter().copied()).collect();
        self.plan.write(self.x, &x)?;
        self.plan.run()?;
        self.plan.read(self.probs).await
    }
}
