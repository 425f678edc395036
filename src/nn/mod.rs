//! Batched layers and their PyTorch-style initialisation.

mod init;
mod mlp;

pub use init::{linear_init, Rng};
pub use mlp::Mlp;
