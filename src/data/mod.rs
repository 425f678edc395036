//! Data sets used by the examples and tests.
//!
//! Currently this is a reader for the IDX format used by the MNIST database
//! of handwritten digits (see [`idx`]), plus a loader for the four MNIST
//! files. A gzip-compressed copy of MNIST ships in `data/mnist/`
//! ([`Mnist::default_dir`]).

pub mod idx;

pub use idx::{read_idx, DataError, IdxArray, Mnist, MnistSplit};
