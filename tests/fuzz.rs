//! Seeded mutation fuzzing of the three parsers that take untrusted input before a GPU is
//! touched: the IDX reader (`parse_idx`, raw and gzip, and `MnistSplit::from_arrays`), the
//! safetensors state-dict loader (`decode_state` against real models' state entries, the path
//! `BatchModel::load_safetensors` takes) and the `ModelSpec` JSON parser (`from_json`, then
//! `shapes`, `state_entries`, `init_model` and building the graph).
//!
//! Each target first replays its committed corpus (`tests/fuzz/corpus/<target>/`, which also
//! holds the regression inputs of every bug found), then mutates corpus entries for
//! `MODELBATCH_FUZZ_SECS` seconds (default 3) or `MODELBATCH_FUZZ_ITERS` mutated inputs
//! (default 100 million, so that the time binds), whichever comes first. The mutations come
//! from a fixed seed (`MODELBATCH_FUZZ_SEED` changes it): with an iteration cap and time to
//! reach it, a run is reproducible.
//! Every input runs under `catch_unwind` and fails the test if it
//!
//! - panics, or breaks a property of the target (a decoded state dict re-encodes to the same
//!   values, an accepted spec has state entries and builds a graph, ...);
//! - takes longer than [`HANG_LIMIT`] (a watchdog also catches inputs that never return);
//! - allocates more than [`alloc_bound`]: a bound linear in the input's length, checked on the
//!   largest single allocation and on the peak of live bytes, both counted per thread by the
//!   global allocator below. An allocation over [`HARD_LIMIT`] is reported before it is made,
//!   then the process aborts (it might not survive it).
//!
//! A failing input is written to `<target dir>/fuzz-failures/<target>-<hash>`, and its path
//! and a hex preview are printed. Copy it into the corpus once the bug is fixed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use modelbatch::data::idx::parse_idx;
use modelbatch::data::MnistSplit;
use modelbatch::io::{decode_state, encode_state};
use modelbatch::nn::{Mode, ModelSpec, StateEntry, MAX_TENSOR_ELEMENTS};
use modelbatch::{DType, Graph};

/// Longest a single input may take.
const HANG_LIMIT: Duration = Duration::from_secs(2);

/// Inputs are cut to this length after mutation, so that the bound below stays meaningful.
const MAX_INPUT: usize = 1 << 16;

/// Fixed allowance of [`alloc_bound`]: a parser's own buffers (the gzip decoder's window and
/// buffers, serde_json's scratch, error messages) that do not grow with the input.
const ALLOC_SLACK: usize = 16 << 20;

/// Allowance per input byte of [`alloc_bound`]. The parsers copy their input a few times
/// (the decoded data, serde_json's value tree, the graph's nodes with their names), each
/// copy at most a small multiple of its length, and a growing `Vec` may hold twice what it
/// needs; 64 leaves room for that and still catches a header whose claimed size is allocated.
const ALLOC_PER_BYTE: usize = 64;

/// Deflate expands at most 1032 times (258-byte matches coded in 2 bits), so `n` bytes of
/// gzip may legitimately decompress to 1032 n bytes, held in a `Vec` that may be twice that.
const GZIP_PER_BYTE: usize = 2 * 1032;

/// Single allocations above this are reported before they are made and abort the run.
const HARD_LIMIT: usize = 1 << 30;

/// Most bytes an input may allocate (largest single allocation and peak of live bytes).
fn alloc_bound(target: &str, input: &[u8]) -> usize {
    let per_byte = if target == "idx" && input.starts_with(&[0x1f, 0x8b]) { GZIP_PER_BYTE } else { ALLOC_PER_BYTE };
    ALLOC_SLACK + per_byte * input.len()
}

// ---------------------------------------------------------------------------------------
// Counting allocator: per-thread live bytes, peak and largest allocation while armed.

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    // The input being run, for the report of an allocation over HARD_LIMIT.
    static CURRENT: Cell<(*const u8, usize, &'static str)> = const { Cell::new((std::ptr::null(), 0, "")) };
}

fn record(grow: usize, shrink: usize) {
    let _ = ARMED.try_with(|armed| {
        if !armed.get() {
            return;
        }
        if grow > HARD_LIMIT {
            armed.set(false);
            let (ptr, len, target) = CURRENT.get();
            // SAFETY: CURRENT points at the input of the run in progress on this thread.
            let input = unsafe { std::slice::from_raw_parts(ptr, len) };
            // Straight to stderr: the test harness's capture of eprintln! dies with the process.
            let msg = report(target, input, &format!("tried to allocate {grow} bytes at once"));
            let _ = std::io::stderr().write_all(format!("{msg}\n").as_bytes());
            std::process::abort();
        }
        LARGEST.set(LARGEST.get().max(grow));
        let live = LIVE.get() + grow as isize - shrink as isize;
        LIVE.set(live);
        PEAK.set(PEAK.get().max(live));
    });
}

// SAFETY: every call is forwarded to `System`; the bookkeeping neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(0, layout.size());
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size, layout.size());
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------------
// Deterministic randomness and mutations.

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const INTERESTING_U32: [u32; 14] = [
    0,
    1,
    2,
    3,
    28,
    255,
    60000,
    0x0000_0801,
    0x0000_0803,
    0x0001_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
];

const INTERESTING_BYTES: [u8; 10] = [0, 1, 3, 8, 0x0d, 0x1f, 0x7f, 0x80, 0x8b, 0xff];

/// One random byte-level mutation.
fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    // Bias positions towards the header, where the lengths and dimensions live.
    let pos = |rng: &mut Rng, len: usize| {
        if len == 0 {
            0
        } else if rng.chance(2) {
            rng.below(len.min(32))
        } else {
            rng.below(len)
        }
    };
    match rng.below(11) {
        0 if !data.is_empty() => {
            let i = pos(rng, data.len());
            data[i] ^= 1 << rng.below(8);
        }
        1 if !data.is_empty() => {
            let i = pos(rng, data.len());
            data[i] = if rng.chance(2) { rng.next() as u8 } else { *rng.pick(&INTERESTING_BYTES) };
        }
        2 if data.len() >= 4 => {
            // A 4-byte field (an IDX dimension) set to an interesting value, big- or little-endian.
            let i = if rng.chance(2) { 4 * rng.below(data.len().min(32) / 4) } else { rng.below(data.len() - 3) };
            let v = *rng.pick(&INTERESTING_U32);
            let v = if rng.chance(4) { v.wrapping_add(rng.below(3) as u32).wrapping_sub(1) } else { v };
            let b = if rng.chance(2) { v.to_be_bytes() } else { v.to_le_bytes() };
            data[i..i + 4].copy_from_slice(&b);
        }
        3 if data.len() >= 8 => {
            // A little-endian u64 (the safetensors header length) near the data's own length.
            let len = data.len() as u64;
            let choices = [0, 1, 2, len - 8, len - 7, len, 1 << 32, (1 << 63) - 1, u64::MAX, 100_000_001];
            let i = if rng.chance(2) { 0 } else { rng.below(data.len() - 7) };
            data[i..i + 8].copy_from_slice(&rng.pick(&choices).to_le_bytes());
        }
        4 => {
            let i = pos(rng, data.len() + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(i..i, bytes);
        }
        5 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(64));
            data.drain(i..i + n);
        }
        6 if !data.is_empty() => {
            let i = rng.below(data.len());
            let n = 1 + rng.below((data.len() - i).min(256));
            let copy = data[i..i + n].to_vec();
            let at = rng.below(data.len() + 1);
            data.splice(at..at, copy);
        }
        7 if !other.is_empty() => {
            // Splice: a prefix of this input, a suffix of another.
            let cut = rng.below(data.len() + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        8 if !data.is_empty() => data.truncate(rng.below(data.len())),
        9 => {
            // Append a copy of another input (a second gzip member, a second IDX array).
            data.extend_from_slice(other);
        }
        _ => {
            if let Some(b) = data.last_mut() {
                *b = b.wrapping_add(1);
            }
        }
    }
}

/// A JSON token: its byte range and kind.
#[derive(Clone, Copy, PartialEq)]
enum Tok {
    Str,
    Num,
    Word,
    Punct,
}

fn tokenize(text: &[u8]) -> Vec<(usize, usize, Tok)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        let start = i;
        let kind = match c {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(text.len());
                Tok::Str
            }
            b'-' | b'0'..=b'9' => {
                while i < text.len() && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                Tok::Num
            }
            b'a'..=b'z' | b'A'..=b'Z' => {
                while i < text.len() && text[i].is_ascii_alphanumeric() {
                    i += 1;
                }
                Tok::Word
            }
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                Tok::Punct
            }
        };
        out.push((start, i, kind));
    }
    out
}

const NUMBERS: [&str; 22] = [
    "0",
    "-1",
    "1",
    "2",
    "3",
    "5",
    "28",
    "65536",
    "2147483648",
    "4294967295",
    "4294967296",
    "1000000000000",
    "18446744073709551615",
    "18446744073709551616",
    "1e12",
    "-0",
    "0.5",
    "1.5",
    "0.999999999",
    "1e308",
    "1e400",
    "-1e400",
];

const STRINGS: [&str; 44] = [
    "\"input\"",
    "\"layers\"",
    "\"type\"",
    "\"name\"",
    "\"conv2d\"",
    "\"linear\"",
    "\"batchnorm2d\"",
    "\"groupnorm\"",
    "\"maxpool2d\"",
    "\"avgpool2d\"",
    "\"adaptive_avgpool2d\"",
    "\"relu\"",
    "\"leaky_relu\"",
    "\"dropout\"",
    "\"flatten\"",
    "\"out_channels\"",
    "\"out_features\"",
    "\"kernel_size\"",
    "\"stride\"",
    "\"padding\"",
    "\"dilation\"",
    "\"groups\"",
    "\"num_groups\"",
    "\"output_size\"",
    "\"momentum\"",
    "\"p\"",
    "\"bias\"",
    "\"lenet\"",
    "\"\"",
    "\"0\"",
    "\"layers.0\"",
    "\"0.weight\"",
    "\"1.num_batches_tracked\"",
    "\"dtype\"",
    "\"shape\"",
    "\"data_offsets\"",
    "\"__metadata__\"",
    "\"F32\"",
    "\"I64\"",
    "\"F16\"",
    "\"BF16\"",
    "\"U8\"",
    "\"F8_E4M3\"",
    "\"\\ud800\"",
];

const VALUES: [&str; 10] = ["true", "false", "null", "[]", "{}", "[1]", "[1, 2]", "[1, 2, 3]", "\"x\"", "{\"a\": 1}"];

/// One token-level mutation of JSON text (numbers, strings, deleted or duplicated members,
/// nesting); `other` is another corpus entry to splice from.
fn mutate_json(rng: &mut Rng, text: &mut Vec<u8>, other: &[u8]) {
    let toks = tokenize(text);
    if toks.is_empty() {
        text.extend_from_slice(b"{}");
        return;
    }
    let t = rng.below(toks.len());
    let (start, end, kind) = toks[t];
    let replace = |text: &mut Vec<u8>, a: usize, b: usize, with: &[u8]| {
        text.splice(a..b, with.iter().copied());
    };
    match rng.below(8) {
        0 | 1 => {
            // Retarget a token of the same kind (or any value).
            let with = match kind {
                Tok::Num => rng.pick(&NUMBERS).to_string(),
                Tok::Str => rng.pick(&STRINGS).to_string(),
                _ if rng.chance(2) => rng.pick(&VALUES).to_string(),
                _ => rng.pick(&NUMBERS).to_string(),
            };
            replace(text, start, end, with.as_bytes());
        }
        2 => {
            // Replace any token with a number (negative, huge, fractional).
            replace(text, start, end, rng.pick(&NUMBERS).as_bytes());
        }
        3 => {
            // Delete a run of tokens (a member, a layer).
            let last = (t + rng.below(8)).min(toks.len() - 1);
            replace(text, start, toks[last].1, b"");
        }
        4 => {
            // Duplicate a run of tokens right after itself (duplicate keys, repeated layers).
            let last = (t + rng.below(12)).min(toks.len() - 1);
            let copy = text[start..toks[last].1].to_vec();
            let at = toks[last].1;
            text.splice(at..at, copy);
        }
        5 => {
            // Wrap a run of tokens in an array or an object.
            let last = (t + rng.below(6)).min(toks.len() - 1);
            let (open, close): (&[u8], &[u8]) = if rng.chance(2) { (b"[", b"]") } else { (b"{\"a\": ", b"}") };
            let end = toks[last].1;
            text.splice(end..end, close.iter().copied());
            text.splice(start..start, open.iter().copied());
        }
        6 => {
            // Deep nesting around a token.
            let depth = *rng.pick(&[2, 64, 127, 128, 129, 1000, 20000]);
            let mut with = "[".repeat(depth).into_bytes();
            with.extend_from_slice(&text[start..end]);
            with.extend(std::iter::repeat_n(b']', depth));
            replace(text, start, end, &with);
        }
        _ => {
            // Splice a run of another entry's tokens in place of a run of ours.
            let theirs = tokenize(other);
            if !theirs.is_empty() {
                let a = rng.below(theirs.len());
                let b = (a + rng.below(16)).min(theirs.len() - 1);
                let with = other[theirs[a].0..theirs[b].1].to_vec();
                let last = (t + rng.below(4)).min(toks.len() - 1);
                replace(text, start, toks[last].1, &with);
            }
        }
    }
}

fn gunzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    MultiGzDecoder::new(data).take(MAX_INPUT as u64).read_to_end(&mut out).ok()?;
    Some(out)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).expect("write to a Vec");
    enc.finish().expect("write to a Vec")
}

/// A mutated copy of `base` for `target`, with structure-aware mutations: inside the gzip
/// stream of a gzipped IDX file, and on the JSON header of a safetensors file.
fn mutate(target: &str, rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = base.to_vec();
    let rounds = 1 + rng.below(4);
    let json = |rng: &mut Rng, d: &mut Vec<u8>| {
        for _ in 0..rounds {
            if rng.chance(4) {
                mutate_bytes(rng, d, other);
            } else {
                mutate_json(rng, d, other);
            }
        }
    };
    match target {
        "idx" if data.starts_with(&[0x1f, 0x8b]) && rng.chance(2) => {
            if let Some(mut inner) = gunzip(&data) {
                let other = gunzip(other).unwrap_or_default();
                for _ in 0..rounds {
                    mutate_bytes(rng, &mut inner, &other);
                }
                data = gzip(&inner);
            }
        }
        "safetensors" if data.len() >= 8 && rng.chance(2) => {
            let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
            if n <= (data.len() - 8) as u64 {
                let n = n as usize;
                let mut header = data[8..8 + n].to_vec();
                json(rng, &mut header);
                let mut out = (header.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(&header);
                out.extend_from_slice(&data[8 + n..]);
                data = out;
            }
        }
        "spec" => json(rng, &mut data),
        _ => {}
    }
    if data == base {
        for _ in 0..rounds {
            mutate_bytes(rng, &mut data, other);
        }
    }
    data.truncate(MAX_INPUT);
    data
}

// ---------------------------------------------------------------------------------------
// The targets. Each returns Err for a broken property; panics are caught by the driver.

type Check = std::result::Result<(), String>;

fn one_line(what: &str, e: &dyn std::fmt::Display) -> Check {
    let msg = e.to_string();
    if msg.is_empty() || msg.contains('\n') {
        return Err(format!("{what}: error message is empty or not one line: {msg:?}"));
    }
    Ok(())
}

/// Checked product of a shape.
fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

fn fuzz_idx(data: &[u8]) -> Check {
    match parse_idx(data, "input") {
        Ok(a) => {
            if numel(&a.dims) != Some(a.data.len()) {
                return Err(format!("dims {:?} but {} data bytes", a.dims, a.data.len()));
            }
            if !data.starts_with(&[0x1f, 0x8b]) && data[4 + 4 * a.dims.len()..] != a.data[..] {
                return Err("the data is not the bytes after the header".into());
            }
        }
        Err(e) => one_line("parse_idx", &e)?,
    }
    // An image file followed by a label file (as in the corpus's pair-* entries): parse both
    // and build an MNIST split.
    let label_magic = [0, 0, 8, 1];
    if let Some(at) = data.windows(4).skip(4).position(|w| w == label_magic).map(|p| p + 4) {
        let (images, labels) = data.split_at(at);
        if let (Ok(images), Ok(labels)) = (parse_idx(images, "images"), parse_idx(labels, "labels")) {
            match MnistSplit::from_arrays(images, "images", labels, "labels") {
                Ok(s) => {
                    if s.images.len() != s.n * s.rows * s.cols || s.labels.len() != s.n {
                        return Err(format!("split of {} images has inconsistent sizes", s.n));
                    }
                    if s.labels.iter().any(|&l| l >= 10) {
                        return Err("split accepted a label >= 10".into());
                    }
                    if s.n > 0 && s.image(s.n - 1).len() != s.rows * s.cols {
                        return Err("last image has the wrong size".into());
                    }
                }
                Err(e) => one_line("from_arrays", &e)?,
            }
        }
    }
    Ok(())
}

const TINY_SPEC: &str = r#"{"input": [2, 4, 4], "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3},
  {"type": "batchnorm2d"}, {"type": "relu"}, {"type": "flatten"}, {"type": "linear", "out_features": 3}]}"#;

const MINI_LENET_SPEC: &str = r#"{"input": [1, 12, 12], "layers": [
  {"type": "conv2d", "name": "layers.0", "out_channels": 2, "kernel_size": 5}, {"type": "relu"},
  {"type": "maxpool2d", "kernel_size": 2},
  {"type": "conv2d", "name": "layers.3", "out_channels": 3, "kernel_size": 3}, {"type": "relu"},
  {"type": "maxpool2d", "kernel_size": 2}, {"type": "flatten"},
  {"type": "linear", "name": "classifier.0", "out_features": 4}, {"type": "relu"},
  {"type": "linear", "name": "classifier.2", "out_features": 4}, {"type": "relu"},
  {"type": "linear", "name": "classifier.4", "out_features": 2}]}"#;

/// State entries of the models the safetensors corpus is written for, plus LeNet's.
fn models() -> &'static [(&'static str, Vec<StateEntry>)] {
    static MODELS: OnceLock<Vec<(&'static str, Vec<StateEntry>)>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let entries = |spec: ModelSpec| spec.state_entries().expect("valid spec");
        vec![
            ("tiny", entries(ModelSpec::from_json(TINY_SPEC).expect("tiny spec"))),
            ("mini-lenet", entries(ModelSpec::from_json(MINI_LENET_SPEC).expect("mini LeNet spec"))),
            ("mlp", entries(ModelSpec::mlp(&[4, 3, 2]))),
            ("lenet", entries(ModelSpec::lenet())),
        ]
    })
}

fn fuzz_safetensors(data: &[u8]) -> Check {
    for (model, entries) in models() {
        for lead in [None, Some(2)] {
            let values = match decode_state(data, "input", entries, lead) {
                Ok(v) => v,
                Err(e) => {
                    one_line("decode_state", &e)?;
                    continue;
                }
            };
            let ctx = format!("{model} (lead {lead:?})");
            if values.len() != entries.len() {
                return Err(format!("{ctx}: {} tensors decoded for {} entries", values.len(), entries.len()));
            }
            for (e, v) in entries.iter().zip(&values) {
                if v.len() != lead.unwrap_or(1) * e.numel() {
                    return Err(format!("{ctx}: {} decoded to {} values", e.name, v.len()));
                }
            }
            // What was decoded re-encodes and decodes to the same bits.
            let again = encode_state(entries, &values, lead)
                .and_then(|b| decode_state(&b, "re-encoded", entries, lead))
                .map_err(|e| format!("{ctx}: round trip failed: {e}"))?;
            let bits =
                |v: &[Vec<f32>]| v.iter().map(|t| t.iter().map(|x| x.to_bits()).collect()).collect::<Vec<Vec<_>>>();
            if bits(&again) != bits(&values) {
                return Err(format!("{ctx}: round trip changed the values"));
            }
        }
    }
    Ok(())
}

fn fuzz_spec(data: &[u8]) -> Check {
    let text = String::from_utf8_lossy(data);
    let spec = match ModelSpec::from_json(&text) {
        Ok(s) => s,
        Err(e) => return one_line("from_json", &e),
    };
    let shapes = spec.shapes().map_err(|e| format!("from_json accepted a spec shapes() rejects: {e}"))?;
    let entries =
        spec.state_entries().map_err(|e| format!("from_json accepted a spec state_entries() rejects: {e}"))?;
    for s in shapes.iter().chain(entries.iter().map(|e| &e.shape)).chain([&spec.input]) {
        if numel(s).is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
            return Err(format!("accepted a tensor of shape {s:?}, over {MAX_TENSOR_ELEMENTS} elements"));
        }
    }
    let total = entries.iter().try_fold(0usize, |t, e| t.checked_add(e.numel()));
    if total.is_some_and(|t| t <= 1 << 16) {
        let init = spec.init_model(7, 1).map_err(|e| format!("init_model failed: {e}"))?;
        for (e, v) in entries.iter().zip(&init) {
            if v.len() != e.numel() || v.iter().any(|x| !x.is_finite()) {
                return Err(format!("init_model: {} has {} values (or a non-finite one)", e.name, v.len()));
            }
        }
    }
    for mode in [Mode::Train, Mode::Eval] {
        let mut graph = Graph::new(2);
        let mut x_shape = vec![3];
        x_shape.extend_from_slice(&spec.input);
        let x = graph.input("x", &x_shape, DType::F32).map_err(|e| format!("graph input: {e}"))?;
        let built =
            spec.build(&mut graph, x, mode).map_err(|e| format!("accepted spec does not build ({mode:?}): {e}"))?;
        let mut want = vec![2, 3];
        want.extend_from_slice(shapes.last().expect("at least one layer"));
        if graph.shape(built.output) != want.as_slice() {
            return Err(format!("graph output {:?}, shapes() says {want:?}", graph.shape(built.output)));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The driver.

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn hex_preview(data: &[u8]) -> String {
    let shown: Vec<String> = data.iter().take(64).map(|b| format!("{b:02x}")).collect();
    let more = if data.len() > 64 { format!(" … ({} bytes)", data.len()) } else { String::new() };
    format!("{}{more}", shown.join(" "))
}

/// `<target dir>/fuzz-failures`, found from the test binary (`<target dir>/<profile>/deps/fuzz-…`).
fn failure_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors().nth(3).map(|t| t.join("fuzz-failures")).unwrap_or_else(|| PathBuf::from("target/fuzz-failures"))
}

/// Saves a failing input and describes it.
fn report(target: &str, input: &[u8], problem: &str) -> String {
    let dir = failure_dir();
    let path = dir.join(format!("{target}-{:016x}", fnv(input)));
    let saved = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, input));
    let at = match saved {
        Ok(()) => format!("input saved to {}", path.display()),
        Err(e) => format!("could not save the input to {}: {e}", path.display()),
    };
    format!("fuzz target {target}: {problem}\n  {at}\n  hex: {}", hex_preview(input))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// The input running now and since when, for the watchdog.
type Current = Arc<Mutex<Option<(Instant, Vec<u8>)>>>;

/// Runs one input; Err describes (and has saved) a failure.
fn run_one(target: &'static str, f: fn(&[u8]) -> Check, input: &[u8], current: &Current) -> Check {
    *current.lock().expect("watchdog lock") = Some((Instant::now(), input.to_vec()));
    CURRENT.set((input.as_ptr(), input.len(), target));
    LIVE.set(0);
    PEAK.set(0);
    LARGEST.set(0);
    let start = Instant::now();
    ARMED.set(true);
    let outcome = catch_unwind(AssertUnwindSafe(|| f(input)));
    ARMED.set(false);
    let took = start.elapsed();
    *current.lock().expect("watchdog lock") = None;
    let bound = alloc_bound(target, input);
    let problem = match outcome {
        Err(p) => Some(format!("panicked: {}", panic_message(&*p))),
        Ok(Err(broken)) => Some(broken),
        Ok(Ok(())) if took > HANG_LIMIT => Some(format!("took {took:?} (limit {HANG_LIMIT:?})")),
        Ok(Ok(())) if LARGEST.get() > bound || PEAK.get() > bound as isize => Some(format!(
            "allocated too much for a {}-byte input: largest allocation {} bytes, peak {} live bytes (bound {bound})",
            input.len(),
            LARGEST.get(),
            PEAK.get()
        )),
        Ok(Ok(())) => None,
    };
    match problem {
        Some(p) => Err(report(target, input, &p)),
        None => Ok(()),
    }
}

fn env_num(name: &str) -> Option<f64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let out: Vec<_> = files
        .iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(p).expect("corpus file")))
        .collect();
    assert!(!out.is_empty(), "{}: empty corpus", dir.display());
    out
}

/// Replays the corpus, then fuzzes until the time or iteration budget is spent.
fn fuzz(target: &'static str, f: fn(&[u8]) -> Check) {
    let secs = env_num("MODELBATCH_FUZZ_SECS").unwrap_or(3.0);
    let max_iters = env_num("MODELBATCH_FUZZ_ITERS").map_or(100_000_000, |n| n as u64);
    let seed = env_num("MODELBATCH_FUZZ_SEED").map_or(0x5eed, |n| n as u64) ^ fnv(target.as_bytes());
    let current: Current = Arc::new(Mutex::new(None));
    let (done_tx, done_rx) = mpsc::channel();
    let worker_current = current.clone();
    std::thread::spawn(move || {
        let result = (|| -> std::result::Result<(usize, u64), String> {
            let corpus = corpus(target);
            for (name, input) in &corpus {
                run_one(target, f, input, &worker_current).map_err(|e| format!("corpus entry {name}: {e}"))?;
            }
            let mut rng = Rng(seed);
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut iters = 0u64;
            while iters < max_iters && Instant::now() < deadline {
                let base = &corpus[rng.below(corpus.len())].1;
                let other = &corpus[rng.below(corpus.len())].1;
                let input = mutate(target, &mut rng, base, other);
                run_one(target, f, &input, &worker_current)?;
                iters += 1;
            }
            Ok((corpus.len(), iters))
        })();
        let _ = done_tx.send(result);
    });
    // Watchdog: an input that never returns is reported from here.
    loop {
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok((entries, iters))) => {
                eprintln!("fuzz target {target}: {entries} corpus entries and {iters} mutated inputs, no failure");
                return;
            }
            Ok(Err(failure)) => panic!("{failure}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("fuzz target {target}: the worker thread died"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let guard = current.lock().expect("watchdog lock");
                if let Some((since, input)) = guard.as_ref() {
                    if since.elapsed() > HANG_LIMIT + Duration::from_secs(1) {
                        panic!(
                            "{}",
                            report(target, input, &format!("hangs: still running after {:?}", since.elapsed()))
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn fuzz_idx_reader() {
    fuzz("idx", fuzz_idx);
}

#[test]
fn fuzz_safetensors_loader() {
    fuzz("safetensors", fuzz_safetensors);
}

#[test]
fn fuzz_model_spec() {
    fuzz("spec", fuzz_spec);
}

/// The corpora hold valid inputs (so the fuzzer starts from deep paths) and the edge cases
/// the targets must reject.
#[test]
fn corpus_covers_valid_and_invalid_inputs() {
    let idx = corpus("idx");
    let ok = |name: &str| parse_idx(&idx.iter().find(|(n, _)| n == name).expect(name).1, name).is_ok();
    assert!(ok("images-3x4x5.idx") && ok("images-3x4x5.idx.gz") && ok("multi-member.idx.gz") && ok("labels-3.idx"));
    assert!(!ok("claims-60000x28x28-has-10.idx") && !ok("claims-60000x28x28-has-10.idx.gz") && !ok("type-f32.idx"));
    assert!(!ok("claims-4GiB.idx.gz") && !ok("regress-gz-prealloc.idx.gz"));

    let st = corpus("safetensors");
    for (file, model, lead) in [
        ("tiny.safetensors", "tiny", None),
        ("tiny-metadata.safetensors", "tiny", None),
        ("tiny-batched-g2.safetensors", "tiny", Some(2)),
        ("mini-lenet.safetensors", "mini-lenet", None),
        ("mini-lenet-batched-g2.safetensors", "mini-lenet", Some(2)),
        ("mlp-4-3-2.safetensors", "mlp", None),
    ] {
        let bytes = &st.iter().find(|(n, _)| n == file).expect(file).1;
        let entries = &models().iter().find(|(m, _)| *m == model).expect(model).1;
        decode_state(bytes, file, entries, lead).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(decode_state(bytes, file, entries, Some(3)).is_err(), "{file} decoded with G=3");
    }

    let spec = corpus("spec");
    let parsed = |name: &str| {
        ModelSpec::from_json(&String::from_utf8_lossy(&spec.iter().find(|(n, _)| n == name).expect(name).1))
    };
    assert_eq!(parsed("lenet.json").unwrap(), ModelSpec::lenet());
    let all = parsed("all-layers.json").unwrap();
    let mut kinds: Vec<&str> = all.layers.iter().map(|l| l.layer.type_name()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), 15, "all-layers.json covers every layer type: {kinds:?}");
    for bad in ["huge-linear.json", "huge-linear-u32.json", "huge-input-flatten.json", "huge-conv.json", "nested.json"]
    {
        assert!(parsed(bad).is_err(), "{bad} accepted");
    }
    // Regressions: the weight cap, and a key holding a newline kept on one line in the error.
    let e = parsed("regress-weight-over-cap.json").unwrap_err().to_string();
    assert!(e.contains("4.weight") && e.contains("2147483648 elements"), "{e}");
    let e = parsed("regress-newline-in-key.json").unwrap_err().to_string();
    assert!(e.contains("unknown top-level key") && !e.contains('\n'), "{e}");
}
