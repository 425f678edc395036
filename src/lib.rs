//! # modelbatch
//!
//! Train a batch of G independent copies of one neural network at once on any WebGPU
//! device — natively (Vulkan, Metal, DX12 through wgpu) and in the browser. Each model has
//! its own weights, optimizer state and hyper-parameters; one fused pass trains them all.
//!
//! The engine is define-then-run: build a [`Graph`] whose tensors carry the model batch as
//! their first dimension, differentiate it with [`autograd::grad`], attach optimizer
//! updates, and compile it once into a [`Plan`]. Each [`Plan::run`] is one compute pass and
//! one queue submit with nothing allocated.
#![warn(missing_docs)]

pub mod autograd;
pub mod data;
pub mod error;
pub mod gpu;
pub mod graph;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod plan;

pub use error::{Error, Result};
pub use gpu::Gpu;
pub use graph::{DType, Graph, Reduction, TensorId};
pub use optim::{PerModel, Sgd};
pub use plan::{Plan, PlanStats, Update};
