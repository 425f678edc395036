//! Tests for the IDX reader and the MNIST loader in `modelbatch::data`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::write::GzEncoder;
use flate2::Compression;
use modelbatch::data::idx::parse_idx;
use modelbatch::data::{read_idx, DataError, IdxArray, Mnist, MnistSplit};

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "modelbatch-idx-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `bytes` to `name` in this directory and returns its path.
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// An IDX file of unsigned bytes with the given dimensions and data.
fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn images_file(n: u32, rows: u32, cols: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..n * rows * cols).map(|i| (i % 256) as u8).collect();
    idx_bytes(&[n, rows, cols], &data)
}

fn labels_file(labels: &[u8]) -> Vec<u8> {
    idx_bytes(&[labels.len() as u32], labels)
}

/// Writes `bytes` as `name` (raw) and `name.gz` (gzipped) into `dir`, reads
/// each with `read_idx` and returns both errors.
fn read_both_err(dir: &TempDir, name: &str, bytes: &[u8]) -> [(String, DataError); 2] {
    let raw = dir.write(name, bytes);
    let gz_name = format!("{name}.gz");
    let gz = dir.write(&gz_name, &gzip(bytes));
    [(name.to_string(), read_idx(&raw).unwrap_err()), (gz_name, read_idx(&gz).unwrap_err())]
}

fn assert_msg(err: &DataError, file: &str, words: &[&str]) {
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    assert!(msg.contains(file), "message {msg:?} does not name {file:?}");
    for w in words {
        assert!(msg.contains(w), "message {msg:?} does not contain {w:?}");
    }
}

// ---------------------------------------------------------------------------
// The MNIST copy shipped with the crate

#[test]
fn loads_embedded_mnist() {
    let mnist = Mnist::load(Mnist::default_dir()).unwrap();
    let check = |s: &MnistSplit, n: usize| {
        assert_eq!((s.n, s.rows, s.cols), (n, 28, 28));
        assert_eq!(s.images.len(), n * 28 * 28);
        assert_eq!(s.labels.len(), n);
        assert_eq!(s.image(n - 1).len(), 28 * 28);
    };
    check(&mnist.train, 60000);
    check(&mnist.test, 10000);

    assert_eq!(mnist.train.labels[0], 5);
    assert_eq!(mnist.test.labels[0], 7);

    let histogram = |s: &MnistSplit| {
        let mut h = [0usize; 10];
        for &l in &s.labels {
            h[l as usize] += 1;
        }
        h
    };
    let train = histogram(&mnist.train);
    let test = histogram(&mnist.test);
    assert_eq!(train.iter().sum::<usize>(), 60000);
    assert_eq!(test.iter().sum::<usize>(), 10000);
    assert_eq!(train, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    assert_eq!(test, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);

    // Pixels: the first training image (a 5) has ink, and the borders of
    // MNIST images are blank.
    let img = mnist.train.image(0);
    assert!(img.iter().any(|&p| p > 200));
    assert!(img[..28].iter().all(|&p| p == 0));
}

#[test]
fn raw_and_gz_give_the_same_array() {
    // Decompress one shipped file, store it raw, and compare.
    let gz_path = Mnist::default_dir().join("t10k-labels-idx1-ubyte.gz");
    let from_gz = read_idx(&gz_path).unwrap();
    assert_eq!(from_gz.dims, vec![10000]);

    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(fs::File::open(&gz_path).unwrap()), &mut raw).unwrap();
    assert_eq!(raw.len(), 10008);
    let dir = TempDir::new("rawgz");
    // Deliberately misleading names: detection is by content, not extension.
    let raw_path = dir.write("labels.gz", &raw);
    let gz_copy = dir.write("labels.raw", &fs::read(&gz_path).unwrap());
    assert_eq!(read_idx(&raw_path).unwrap(), from_gz);
    assert_eq!(read_idx(&gz_copy).unwrap(), from_gz);
    assert_eq!(parse_idx(&raw, "mem").unwrap(), from_gz);
}

#[test]
fn load_accepts_mixed_raw_and_gz() {
    let dir = TempDir::new("mixed");
    let n = 3;
    dir.write("train-images-idx3-ubyte", &images_file(n, 2, 4));
    dir.write("train-labels-idx1-ubyte.gz", &gzip(&labels_file(&[1, 9, 0])));
    dir.write("t10k-images-idx3-ubyte.gz", &gzip(&images_file(2, 2, 4)));
    dir.write("t10k-labels-idx1-ubyte", &labels_file(&[4, 2]));
    let mnist = Mnist::load(dir.path()).unwrap();
    assert_eq!((mnist.train.n, mnist.train.rows, mnist.train.cols), (3, 2, 4));
    assert_eq!(mnist.train.labels, vec![1, 9, 0]);
    assert_eq!(mnist.train.image(1), &[8, 9, 10, 11, 12, 13, 14, 15]);
    assert_eq!(mnist.test.n, 2);
    assert_eq!(mnist.test.labels, vec![4, 2]);
}

#[test]
fn parse_idx_in_memory() {
    let arr = parse_idx(&idx_bytes(&[2, 3], &[1, 2, 3, 4, 5, 6]), "mem").unwrap();
    assert_eq!(arr, IdxArray { dims: vec![2, 3], data: vec![1, 2, 3, 4, 5, 6] });
    let gz = parse_idx(&gzip(&idx_bytes(&[2, 3], &[1, 2, 3, 4, 5, 6])), "mem").unwrap();
    assert_eq!(gz, arr);
    // A zero dimension is a valid, empty array.
    let empty = parse_idx(&idx_bytes(&[0, 28, 28], &[]), "mem").unwrap();
    assert_eq!(empty.dims, vec![0, 28, 28]);
    assert!(empty.data.is_empty());
}

// ---------------------------------------------------------------------------
// Error cases

#[test]
fn error_missing_file() {
    let dir = TempDir::new("missing");
    let path = dir.path().join("no-such-file-idx1-ubyte");
    let err = read_idx(&path).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    assert_msg(&err, "no-such-file-idx1-ubyte", &["file not found"]);

    let gz = dir.path().join("no-such-file-idx1-ubyte.gz");
    assert_msg(&read_idx(&gz).unwrap_err(), "no-such-file-idx1-ubyte.gz", &["file not found"]);
}

#[test]
fn error_missing_mnist_file_in_dir() {
    let dir = TempDir::new("missingdir");
    dir.write("train-images-idx3-ubyte", &images_file(1, 2, 2));
    dir.write("train-labels-idx1-ubyte.gz", &gzip(&labels_file(&[3])));
    dir.write("t10k-images-idx3-ubyte.gz", &gzip(&images_file(1, 2, 2)));
    // t10k-labels-idx1-ubyte is missing.
    let err = Mnist::load(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    let dir_name = dir.path().display().to_string();
    assert_msg(&err, "t10k-labels-idx1-ubyte", &[&dir_name, "t10k-labels-idx1-ubyte.gz", "missing"]);
    assert!(!err.to_string().contains("does not exist"));

    // A directory that does not exist at all.
    let gone = dir.path().join("nope");
    let err = Mnist::load(&gone).unwrap_err();
    assert_msg(&err, "train-images-idx3-ubyte", &[&gone.display().to_string(), "does not exist"]);
}

#[test]
fn error_bad_magic() {
    let dir = TempDir::new("magic");
    let mut bytes = idx_bytes(&[4], &[0, 1, 2, 3]);
    bytes[..4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    for (name, err) in read_both_err(&dir, "bad-magic-idx1-ubyte", &bytes) {
        assert!(matches!(err, DataError::BadMagic { .. }), "{err:?}");
        assert_msg(&err, &name, &["bad IDX magic 0x12345678", "expected 0x0000080x"]);
    }
    // Zero dimensions is also not a valid magic.
    let err = parse_idx(&[0, 0, 8, 0], "zero-dims").unwrap_err();
    assert_msg(&err, "zero-dims", &["bad IDX magic 0x00000800"]);
}

#[test]
fn error_wrong_type_code() {
    let dir = TempDir::new("type");
    // Type 0x0d = f32, a valid IDX type but not supported here.
    let mut bytes = idx_bytes(&[2], &[0; 8]);
    bytes[2] = 0x0d;
    for (name, err) in read_both_err(&dir, "floats-idx1-float", &bytes) {
        assert!(matches!(err, DataError::UnsupportedType { code: 0x0d, .. }), "{err:?}");
        assert_msg(&err, &name, &["unsupported IDX type code 0x0d", "f32", "0x08"]);
    }
}

#[test]
fn error_truncated_header() {
    let dir = TempDir::new("header");
    let full = images_file(2, 3, 3);
    // Cut inside the dimension list (needs 16 bytes).
    for (name, err) in read_both_err(&dir, "short-header-idx3-ubyte", &full[..10]) {
        assert!(matches!(err, DataError::TruncatedHeader { needed: 16, found: 10, .. }), "{err:?}");
        assert_msg(&err, &name, &["truncated header", "16 bytes", "found 10"]);
    }
    // Cut inside the magic number, and an empty file.
    for (len, tag) in [(2usize, "two"), (0, "empty")] {
        let file = format!("{tag}-idx3-ubyte");
        for (name, err) in read_both_err(&dir, &file, &full[..len]) {
            assert_msg(&err, &name, &["truncated header", "4 bytes", &format!("found {len}")]);
        }
    }
}

#[test]
fn error_truncated_data() {
    let dir = TempDir::new("data");
    // Header claims 60000 x 28 x 28 images (47040000 data bytes after the
    // 16-byte header) but only 1000 bytes follow.
    let mut bytes = idx_bytes(&[60000, 28, 28], &[]);
    bytes.extend(std::iter::repeat_n(7u8, 1000));
    for (name, err) in read_both_err(&dir, "train-images-idx3-ubyte", &bytes) {
        assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
        assert_msg(&err, &name, &["truncated: header says 47040000 bytes of data, found 1000"]);
    }
}

#[test]
fn error_trailing_data() {
    let dir = TempDir::new("trailing");
    let mut bytes = labels_file(&[1, 2, 3]);
    bytes.extend_from_slice(&[0, 0]);
    for (name, err) in read_both_err(&dir, "trailing-idx1-ubyte", &bytes) {
        assert!(matches!(err, DataError::TrailingData { extra: 2, .. }), "{err:?}");
        assert_msg(&err, &name, &["2 unexpected trailing bytes", "3 bytes"]);
    }
}

#[test]
fn error_absurd_header_does_not_allocate() {
    let dir = TempDir::new("huge");
    // Product overflows u64.
    let overflow = idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[1, 2, 3]);
    for (name, err) in read_both_err(&dir, "overflow-idx3-ubyte", &overflow) {
        assert!(matches!(err, DataError::TooLarge { .. }), "{err:?}");
        assert_msg(&err, &name, &["4294967295", "more than 4294967296 bytes"]);
    }
    // 2^32 + 2^16 bytes: no overflow, but over the 4 GiB limit.
    let big = idx_bytes(&[65537, 65536], &[1, 2, 3]);
    for (name, err) in read_both_err(&dir, "big-idx2-ubyte", &big) {
        assert!(matches!(err, DataError::TooLarge { .. }), "{err:?}");
        assert_msg(&err, &name, &["more than 4294967296 bytes"]);
    }
    // A header promising 2 GiB over a tiny file must fail fast as truncated,
    // without reserving 2 GiB first.
    let lying = idx_bytes(&[1 << 31], &[1, 2, 3]);
    for (name, err) in read_both_err(&dir, "lying-idx1-ubyte", &lying) {
        assert_msg(&err, &name, &["truncated: header says 2147483648 bytes of data, found 3"]);
    }
}

#[test]
fn error_count_mismatch() {
    let dir = TempDir::new("count");
    let images = images_file(5, 2, 2);
    let labels = labels_file(&[0, 1, 2, 3]);
    for gz in [false, true] {
        let (img_name, lab_name, img, lab) = if gz {
            ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", gzip(&images), gzip(&labels))
        } else {
            ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", images.clone(), labels.clone())
        };
        let img_path = dir.write(img_name, &img);
        let lab_path = dir.write(lab_name, &lab);
        let err = Mnist::load_split(&img_path, &lab_path).unwrap_err();
        assert!(matches!(err, DataError::CountMismatch { n_images: 5, n_labels: 4, .. }), "{err:?}");
        assert_msg(
            &err,
            img_name,
            &["image/label count mismatch", &format!("{img_name} has 5 images"), &format!("{lab_name} has 4 labels")],
        );
    }
}

#[test]
fn error_label_out_of_range() {
    let dir = TempDir::new("label");
    let images = images_file(7, 2, 2);
    let labels = labels_file(&[0, 1, 2, 3, 4, 12, 200]);
    for gz in [false, true] {
        let (img, lab, lab_name) = if gz {
            (gzip(&images), gzip(&labels), "t10k-labels-idx1-ubyte.gz")
        } else {
            (images.clone(), labels.clone(), "t10k-labels-idx1-ubyte")
        };
        let img_path = dir.write("images", &img);
        let lab_path = dir.write(lab_name, &lab);
        let err = Mnist::load_split(&img_path, &lab_path).unwrap_err();
        assert!(matches!(err, DataError::BadLabel { index: 5, label: 12, .. }), "{err:?}");
        assert_msg(&err, lab_name, &["label 12 at index 5 is >= 10 classes"]);
    }
}

#[test]
fn error_wrong_shape() {
    let dir = TempDir::new("shape");
    // Images stored flat (2-d) instead of 3-d.
    let img_path = dir.write("flat-images", &idx_bytes(&[2, 4], &[0; 8]));
    let lab_path = dir.write("labels", &labels_file(&[1, 2]));
    let err = Mnist::load_split(&img_path, &lab_path).unwrap_err();
    assert!(matches!(err, DataError::WrongShape { .. }), "{err:?}");
    assert_msg(&err, "flat-images", &["expected a 3-d", "found 2-d [2, 4]"]);

    let img_path = dir.write("images", &images_file(2, 2, 2));
    let lab_path = dir.write("labels-2d", &idx_bytes(&[2, 1], &[1, 2]));
    let err = Mnist::load_split(&img_path, &lab_path).unwrap_err();
    assert_msg(&err, "labels-2d", &["expected a 1-d", "found 2-d [2, 1]"]);
}

#[test]
fn error_corrupt_gzip() {
    let dir = TempDir::new("gzip");
    let good = gzip(&labels_file(&[1, 2, 3, 4]));

    // Bad CRC in the gzip trailer: the data decodes but fails the check.
    let mut bad_crc = good.clone();
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 0xff;
    let path = dir.write("bad-crc-idx1-ubyte.gz", &bad_crc);
    let err = read_idx(&path).unwrap_err();
    assert!(matches!(err, DataError::CorruptGzip { .. }), "{err:?}");
    assert_msg(&err, "bad-crc-idx1-ubyte.gz", &["gzip stream is corrupt"]);

    // A gzip header followed by an invalid deflate block (reserved type 3).
    let mut garbage = good[..10].to_vec();
    garbage.extend_from_slice(&[0xff; 32]);
    let path = dir.write("garbage-idx1-ubyte.gz", &garbage);
    let err = read_idx(&path).unwrap_err();
    assert!(matches!(err, DataError::CorruptGzip { .. }), "{err:?}");
    assert_msg(&err, "garbage-idx1-ubyte.gz", &["gzip stream is corrupt"]);

    // A gzip file cut short before its trailer.
    let cut = &good[..good.len() - 4];
    let path = dir.write("cut-idx1-ubyte.gz", cut);
    let err = read_idx(&path).unwrap_err();
    assert!(matches!(err, DataError::CorruptGzip { .. }), "{err:?}");
    assert_msg(&err, "cut-idx1-ubyte.gz", &["gzip stream is corrupt"]);

    // The same through parse_idx, named by `what`.
    let err = parse_idx(&bad_crc, "in-memory labels").unwrap_err();
    assert_msg(&err, "in-memory labels", &["gzip stream is corrupt"]);
}

#[test]
fn data_error_is_std_error() {
    fn takes_error(_: &dyn std::error::Error) {}
    let err = parse_idx(&[], "x").unwrap_err();
    takes_error(&err);
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
    assert!(boxed.to_string().starts_with("x: "));
}
