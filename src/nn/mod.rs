//! Batched layers: `ModelSpec` (a Sequential described as JSON), PyTorch-style
//! initialisation, and `BatchModel` (G independent models with state dicts).

mod batch_model;
mod build;
mod init;
mod mlp;
mod spec;

pub use batch_model::BatchModel;
pub use build::{Built, Mode, StateEntry, TensorKind};
pub use init::{linear_init, Rng};
pub use mlp::Mlp;
pub use spec::{Layer, LayerSpec, ModelSpec, LENET_JSON, MAX_TENSOR_ELEMENTS};
