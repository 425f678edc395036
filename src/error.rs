//! The crate's error type: one enum, one-line messages that say what went wrong and where.

use std::fmt;

/// Everything that can go wrong in modelbatch.
#[derive(Debug)]
pub enum Error {
    /// No WebGPU adapter could be found or the requested one does not exist.
    NoAdapter(String),
    /// The adapter refused to create a device (limits or features not available).
    Device(String),
    /// A graph was built with incompatible shapes or dtypes; the message names the op.
    Shape(String),
    /// A graph, plan or tensor was used in a way it does not support.
    Usage(String),
    /// The GPU reported an error (validation, out of memory, lost device, failed map).
    Gpu(String),
    /// Reading a data set failed.
    Data(crate::data::DataError),
    /// A file could not be read or written, or holds the wrong content; the message names it.
    Io(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter(m) => write!(f, "no GPU adapter: {m}"),
            Error::Device(m) => write!(f, "could not create a GPU device: {m}"),
            Error::Shape(m) => write!(f, "shape error: {m}"),
            Error::Usage(m) => write!(f, "{m}"),
            Error::Gpu(m) => write!(f, "GPU error: {m}"),
            Error::Data(e) => write!(f, "{e}"),
            Error::Io(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Data(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::data::DataError> for Error {
    fn from(e: crate::data::DataError) -> Self {
        Error::Data(e)
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
