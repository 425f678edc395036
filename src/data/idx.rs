//! Reader for the IDX file format and the MNIST data set.
//!
//! An IDX file is a big-endian header followed by the raw data in row-major
//! order:
//!
//! | bytes | meaning |
//! | --- | --- |
//! | 0–1 | always `0x00 0x00` |
//! | 2 | element type code (`0x08` = unsigned byte, the only one supported here) |
//! | 3 | number of dimensions `d` (at least 1) |
//! | 4 … 4+4d | each dimension as a big-endian `u32` |
//! | rest | the product of the dimensions, in elements |
//!
//! Files may be stored raw or gzip-compressed; compression is detected from
//! the gzip magic bytes `0x1f 0x8b`, not from the file name.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// IDX type code for unsigned bytes, the only element type supported.
const TYPE_U8: u8 = 0x08;

/// Largest data section accepted, in bytes (4 GiB). Headers describing more
/// are rejected before anything is allocated.
const MAX_DATA_BYTES: u64 = 1 << 32;

/// Upper bound on the up-front allocation for the data section, so that a
/// header lying about its size cannot make us reserve a huge buffer.
const MAX_PREALLOC: usize = 64 << 20;

/// Deflate expands data at most 1032-fold, so a gzip stream of `n` bytes holds at most
/// `1032 n` bytes: the up-front allocation for gzipped data is bounded by that, not by the
/// (unchecked) header.
const MAX_DEFLATE_RATIO: usize = 1032;

/// Number of classes (digits) in MNIST.
const MNIST_CLASSES: u8 = 10;

/// Error returned when reading IDX or MNIST data fails.
///
/// Every variant names the file (or in-memory buffer) concerned, and its
/// [`Display`](fmt::Display) output is a single line such as
/// `data/mnist/train-images-idx3-ubyte.gz: bad IDX magic 0x12345678 (expected 0x0000080x)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DataError {
    /// The file does not exist.
    NotFound {
        /// The path that was opened.
        path: String,
    },
    /// The file exists but could not be read.
    Io {
        /// The path that was opened.
        path: String,
        /// The operating system's error message.
        message: String,
    },
    /// None of the accepted names for an MNIST file exists in the directory.
    MissingFile {
        /// The directory searched.
        dir: String,
        /// The uncompressed file name looked for (`NAME`; `NAME.gz` was also tried).
        name: String,
        /// Whether the directory itself exists.
        dir_exists: bool,
    },
    /// The data starts with the gzip magic but could not be decompressed.
    CorruptGzip {
        /// Name of the file or buffer.
        what: String,
        /// The decompressor's error message.
        message: String,
    },
    /// The first four bytes are not an IDX magic number.
    BadMagic {
        /// Name of the file or buffer.
        what: String,
        /// The four bytes read, as a big-endian number.
        magic: u32,
    },
    /// The IDX element type is not unsigned byte (`0x08`).
    UnsupportedType {
        /// Name of the file or buffer.
        what: String,
        /// The type code found in the header.
        code: u8,
    },
    /// The data ends inside the IDX header.
    TruncatedHeader {
        /// Name of the file or buffer.
        what: String,
        /// Header length implied by the magic number, in bytes.
        needed: usize,
        /// Bytes actually present.
        found: usize,
    },
    /// The dimensions in the header describe an absurd amount of data
    /// (more than 4 GiB, more than this platform can address, or a product
    /// that overflows).
    TooLarge {
        /// Name of the file or buffer.
        what: String,
        /// The dimensions from the header.
        dims: Vec<u64>,
    },
    /// The data section is shorter than the header says.
    Truncated {
        /// Name of the file or buffer.
        what: String,
        /// Data length described by the header, in bytes.
        expected: u64,
        /// Data bytes actually present.
        found: u64,
    },
    /// There are bytes after the data section described by the header.
    TrailingData {
        /// Name of the file or buffer.
        what: String,
        /// Data length described by the header, in bytes.
        expected: u64,
        /// Number of extra bytes after it.
        extra: u64,
    },
    /// The array does not have the number of dimensions required.
    WrongShape {
        /// Name of the file or buffer.
        what: String,
        /// What was required, e.g. `"3-d (images x rows x cols)"`.
        expected: &'static str,
        /// The dimensions found.
        dims: Vec<usize>,
    },
    /// An image file and a label file disagree on the number of examples.
    CountMismatch {
        /// Name of the image file or buffer.
        images: String,
        /// Number of images.
        n_images: usize,
        /// Name of the label file or buffer.
        labels: String,
        /// Number of labels.
        n_labels: usize,
    },
    /// A label is not a valid class index.
    BadLabel {
        /// Name of the label file or buffer.
        what: String,
        /// Position of the first offending label.
        index: usize,
        /// The offending label.
        label: u8,
        /// Number of classes; labels must be smaller.
        classes: u8,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::NotFound { path } => write!(f, "{path}: file not found"),
            DataError::Io { path, message } => write!(f, "{path}: cannot read file: {message}"),
            DataError::MissingFile { dir, name, dir_exists } => {
                write!(f, "{dir}: missing MNIST file: neither {name} nor {name}.gz found")?;
                if !dir_exists {
                    write!(f, " (the directory does not exist)")?;
                }
                Ok(())
            }
            DataError::CorruptGzip { what, message } => {
                write!(f, "{what}: gzip stream is corrupt: {message}")
            }
            DataError::BadMagic { what, magic } => {
                write!(f, "{what}: bad IDX magic 0x{magic:08x} (expected 0x0000080x)")
            }
            DataError::UnsupportedType { what, code } => write!(
                f,
                "{what}: unsupported IDX type code 0x{code:02x} ({}); only 0x08 (unsigned byte) is supported",
                type_name(*code)
            ),
            DataError::TruncatedHeader { what, needed, found } => {
                write!(f, "{what}: truncated header: IDX header needs {needed} bytes, found {found}")
            }
            DataError::TooLarge { what, dims } => {
                write!(f, "{what}: IDX header dimensions {dims:?} describe more than {MAX_DATA_BYTES} bytes of data")
            }
            DataError::Truncated { what, expected, found } => {
                write!(f, "{what}: truncated: header says {expected} bytes of data, found {found}")
            }
            DataError::TrailingData { what, expected, extra } => write!(
                f,
                "{what}: {extra} unexpected trailing bytes after the {expected} bytes of data the header describes"
            ),
            DataError::WrongShape { what, expected, dims } => {
                write!(f, "{what}: expected a {expected} IDX array, found {}-d {dims:?}", dims.len())
            }
            DataError::CountMismatch { images, n_images, labels, n_labels } => {
                write!(f, "image/label count mismatch: {images} has {n_images} images, {labels} has {n_labels} labels")
            }
            DataError::BadLabel { what, index, label, classes } => {
                write!(f, "{what}: label {label} at index {index} is >= {classes} classes")
            }
        }
    }
}

impl std::error::Error for DataError {}

/// Human-readable name of an IDX type code, for error messages.
fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0b => "i16",
        0x0c => "i32",
        0x0d => "f32",
        0x0e => "f64",
        _ => "not an IDX type",
    }
}

/// Keeps error messages on one line.
fn one_line(message: impl fmt::Display) -> String {
    message.to_string().replace(['\n', '\r'], " ")
}

/// An n-dimensional array of unsigned bytes read from an IDX file.
#[derive(Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first (e.g. `[60000, 28, 28]` for MNIST
    /// training images).
    pub dims: Vec<usize>,
    /// The elements in row-major order; its length is the product of `dims`.
    pub data: Vec<u8>,
}

impl fmt::Debug for IdxArray {
    // Summarised: the data may be tens of megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdxArray")
            .field("dims", &self.dims)
            .field("data", &format_args!("[{} bytes]", self.data.len()))
            .finish()
    }
}

/// Reads an IDX file of unsigned bytes, raw or gzip-compressed.
///
/// Compression is detected from the gzip magic bytes, not the file name.
/// Errors name the file as `path` is displayed.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let what = path.display().to_string();
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => DataError::NotFound { path: what.clone() },
        _ => DataError::Io { path: what.clone(), message: one_line(e) },
    })?;
    parse_idx(&bytes, &what)
}

/// Parses an IDX array of unsigned bytes held in memory, raw or
/// gzip-compressed (detected from the gzip magic bytes).
///
/// `what` names the data in error messages (typically a file name).
///
/// The data must be exactly as long as the header says: missing bytes and
/// trailing bytes are both errors.
pub fn parse_idx(bytes: &[u8], what: &str) -> Result<IdxArray, DataError> {
    if bytes.starts_with(&GZIP_MAGIC) {
        // `MultiGzDecoder` also accepts concatenated gzip members, as `zcat` does.
        parse_stream(MultiGzDecoder::new(bytes), what, true, bytes.len().saturating_mul(MAX_DEFLATE_RATIO))
    } else {
        parse_stream(bytes, what, false, bytes.len())
    }
}

/// Parses an IDX stream. `gz` says whether read errors come from the gzip
/// decoder; `size_hint` bounds the up-front allocation for the data.
fn parse_stream<R: Read>(mut reader: R, what: &str, gz: bool, size_hint: usize) -> Result<IdxArray, DataError> {
    let read_err = |e: io::Error| {
        if gz {
            DataError::CorruptGzip { what: what.to_string(), message: one_line(e) }
        } else {
            DataError::Io { path: what.to_string(), message: one_line(e) }
        }
    };

    let mut magic = [0u8; 4];
    let got = read_full(&mut reader, &mut magic).map_err(read_err)?;
    if got < magic.len() {
        return Err(DataError::TruncatedHeader { what: what.to_string(), needed: magic.len(), found: got });
    }
    let [zero0, zero1, code, ndims] = magic;
    if zero0 != 0 || zero1 != 0 || ndims == 0 {
        return Err(DataError::BadMagic { what: what.to_string(), magic: u32::from_be_bytes(magic) });
    }
    if code != TYPE_U8 {
        return Err(DataError::UnsupportedType { what: what.to_string(), code });
    }

    let ndims = usize::from(ndims);
    let mut dim_bytes = vec![0u8; 4 * ndims];
    let got = read_full(&mut reader, &mut dim_bytes).map_err(read_err)?;
    if got < dim_bytes.len() {
        return Err(DataError::TruncatedHeader { what: what.to_string(), needed: 4 + dim_bytes.len(), found: 4 + got });
    }
    let dims64: Vec<u64> =
        dim_bytes.chunks_exact(4).map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect();

    let too_large = || DataError::TooLarge { what: what.to_string(), dims: dims64.clone() };
    let mut total: u64 = 1;
    for &d in &dims64 {
        total = total.checked_mul(d).ok_or_else(too_large)?;
    }
    if total > MAX_DATA_BYTES {
        return Err(too_large());
    }
    let len = usize::try_from(total).map_err(|_| too_large())?;
    let dims = dims64.iter().map(|&d| usize::try_from(d).map_err(|_| too_large())).collect::<Result<Vec<_>, _>>()?;

    let mut data = Vec::with_capacity(len.min(size_hint).min(MAX_PREALLOC));
    (&mut reader).take(total).read_to_end(&mut data).map_err(read_err)?;
    if data.len() < len {
        return Err(DataError::Truncated { what: what.to_string(), expected: total, found: data.len() as u64 });
    }
    // Drain the rest: counts trailing bytes and, for gzip, makes the decoder
    // check the CRC and length in the stream trailer.
    let extra = io::copy(&mut reader, &mut io::sink()).map_err(read_err)?;
    if extra > 0 {
        return Err(DataError::TrailingData { what: what.to_string(), expected: total, extra });
    }
    Ok(IdxArray { dims, data })
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// One split (training or test) of MNIST: `n` greyscale images of
/// `rows` x `cols` pixels with their labels.
#[derive(Clone, PartialEq, Eq)]
pub struct MnistSplit {
    /// Pixel values (0 = background, 255 = ink), `n * rows * cols` bytes:
    /// image after image, each row-major.
    pub images: Vec<u8>,
    /// One label per image, each in `0..10`.
    pub labels: Vec<u8>,
    /// Number of images (and labels).
    pub n: usize,
    /// Image height in pixels (28 for MNIST).
    pub rows: usize,
    /// Image width in pixels (28 for MNIST).
    pub cols: usize,
}

impl fmt::Debug for MnistSplit {
    // Summarised: the pixel data is tens of megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MnistSplit")
            .field("n", &self.n)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("images", &format_args!("[{} bytes]", self.images.len()))
            .field("labels", &format_args!("[{} bytes]", self.labels.len()))
            .finish()
    }
}

impl MnistSplit {
    /// The pixels of image `i` (`rows * cols` bytes, row-major).
    ///
    /// # Panics
    ///
    /// Panics if `i >= self.n`.
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(i < self.n, "image index {i} out of range for {} images", self.n);
        let size = self.rows * self.cols;
        &self.images[i * size..(i + 1) * size]
    }

    /// Builds a split from already-parsed IDX arrays, e.g. from
    /// [`parse_idx`] on in-memory data.
    ///
    /// Checks that `images` is 3-d, `labels` is 1-d, the counts agree and
    /// every label is below 10. `images_what` and `labels_what` name the
    /// arrays in error messages.
    pub fn from_arrays(
        images: IdxArray,
        images_what: &str,
        labels: IdxArray,
        labels_what: &str,
    ) -> Result<MnistSplit, DataError> {
        let &[n, rows, cols] = images.dims.as_slice() else {
            return Err(DataError::WrongShape {
                what: images_what.to_string(),
                expected: "3-d (images x rows x cols)",
                dims: images.dims,
            });
        };
        let &[n_labels] = labels.dims.as_slice() else {
            return Err(DataError::WrongShape {
                what: labels_what.to_string(),
                expected: "1-d (labels)",
                dims: labels.dims,
            });
        };
        if n != n_labels {
            return Err(DataError::CountMismatch {
                images: images_what.to_string(),
                n_images: n,
                labels: labels_what.to_string(),
                n_labels,
            });
        }
        if let Some((index, &label)) = labels.data.iter().enumerate().find(|&(_, &l)| l >= MNIST_CLASSES) {
            return Err(DataError::BadLabel { what: labels_what.to_string(), index, label, classes: MNIST_CLASSES });
        }
        Ok(MnistSplit { images: images.data, labels: labels.data, n, rows, cols })
    }
}

/// The MNIST database of handwritten digits: 60000 training and 10000 test
/// images of 28 x 28 pixels, labelled 0 to 9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    /// The 60000 training examples.
    pub train: MnistSplit,
    /// The 10000 test examples.
    pub test: MnistSplit,
}

/// The four standard MNIST file names (uncompressed form).
const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

impl Mnist {
    /// Loads MNIST from `dir`, which must hold the four standard files
    /// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
    /// `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each either
    /// raw (`NAME`) or gzipped (`NAME.gz`); `NAME` is used if both exist.
    ///
    /// See [`Mnist::load_split`] for the checks made.
    pub fn load(dir: impl AsRef<Path>) -> Result<Mnist, DataError> {
        let dir = dir.as_ref();
        let train_images = find_file(dir, TRAIN_IMAGES)?;
        let train_labels = find_file(dir, TRAIN_LABELS)?;
        let test_images = find_file(dir, TEST_IMAGES)?;
        let test_labels = find_file(dir, TEST_LABELS)?;
        Ok(Mnist {
            train: Mnist::load_split(&train_images, &train_labels)?,
            test: Mnist::load_split(&test_images, &test_labels)?,
        })
    }

    /// Loads one split from an image file and a label file (each raw or
    /// gzipped).
    ///
    /// Checks that the images are a 3-d array, the labels a 1-d array, the
    /// counts agree and every label is below 10.
    pub fn load_split(images: &Path, labels: &Path) -> Result<MnistSplit, DataError> {
        let image_array = read_idx(images)?;
        let label_array = read_idx(labels)?;
        MnistSplit::from_arrays(image_array, &images.display().to_string(), label_array, &labels.display().to_string())
    }

    /// The directory holding the copy of MNIST shipped with this crate
    /// (`data/mnist` in the crate's source tree).
    pub fn default_dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))
    }
}

/// Finds `NAME` or `NAME.gz` in `dir`.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let raw = dir.join(name);
    if raw.exists() {
        return Ok(raw);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    Err(DataError::MissingFile { dir: dir.display().to_string(), name: name.to_string(), dir_exists: dir.is_dir() })
}
