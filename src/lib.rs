#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod autograd;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod data;
pub mod error;
pub mod gpu;
pub mod graph;
pub mod io;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod plan;
pub mod train;
pub mod tuning;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
pub use gpu::Gpu;
pub use graph::{Conv2dGeom, CustomOp, DType, Graph, NormKind, Pool2dGeom, Reduction, TensorId, Unary};
pub use optim::{Adam, HyperParam, PerModel, Sgd};
pub use plan::{Plan, PlanStats, Update};
pub use tuning::Tuning;
