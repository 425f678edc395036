//! Files: safetensors state dicts (PyTorch names and dtypes) and atomic writes.

mod safetensors;

pub use self::safetensors::{decode_state, encode_state, write_atomic};
