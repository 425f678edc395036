//! The `modelbatch` command-line program, run as a user runs it: tiny MNIST-format data
//! sets written to a temporary folder, tiny runs (2 models, a few steps of 8 images).
//!
//! Error cases need no GPU (the program checks its inputs before acquiring one); the
//! tests that train skip without an adapter unless `MODELBATCH_REQUIRE_GPU=1`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use modelbatch::nn::{ModelSpec, StateEntry, TensorKind};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_modelbatch");
const TRAIN_N: usize = 64;
const TEST_N: usize = 32;

/// A fresh folder under the system temp dir, removed at the end of the test.
struct Temp(PathBuf);

impl Temp {
    fn new(tag: &str) -> Temp {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("modelbatch-cli-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Temp(dir)
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    /// Names in the folder (to prove nothing was left behind).
    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn write_gz(path: &Path, bytes: &[u8]) {
    let mut e = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

/// `n` 28x28 images whose class shows as a bright bar (learnable), plus their labels.
fn images(n: usize, seed: u32) -> (Vec<u8>, Vec<u8>) {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let (mut px, mut labels) = (Vec::with_capacity(n * 784), Vec::with_capacity(n));
    for _ in 0..n {
        let label = (next() % 10) as usize;
        for r in 0..28 {
            for c in 0..28 {
                let bar = r >= 2 + 2 * label && r < 4 + 2 * label && (4..24).contains(&c);
                px.push(if bar { 200 + (next() % 56) as u8 } else { (next() % 40) as u8 });
            }
        }
        labels.push(label as u8);
    }
    (px, labels)
}

/// A tiny MNIST folder: 64 training images (raw IDX) and 32 test images (gzipped IDX).
fn tiny_mnist(t: &Temp) -> PathBuf {
    let dir = t.join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let (px, lb) = images(TRAIN_N, 1);
    write(&dir.join("train-images-idx3-ubyte"), &idx_bytes(0x803, &[TRAIN_N as u32, 28, 28], &px));
    write(&dir.join("train-labels-idx1-ubyte"), &idx_bytes(0x801, &[TRAIN_N as u32], &lb));
    let (px, lb) = images(TEST_N, 2);
    write_gz(&dir.join("t10k-images-idx3-ubyte.gz"), &idx_bytes(0x803, &[TEST_N as u32, 28, 28], &px));
    write_gz(&dir.join("t10k-labels-idx1-ubyte.gz"), &idx_bytes(0x801, &[TEST_N as u32], &lb));
    dir
}

fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

/// `run` with environment variables set (the tuning cache is off unless one names it).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("RUST_BACKTRACE", "1").env("MODELBATCH_CACHE_DIR", "").env_remove("MODELBATCH_TUNING");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running modelbatch");
    eprintln!(
        "$ modelbatch {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn assert_ok(out: &Output) -> String {
    assert!(out.status.success(), "modelbatch failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Exit status 1, and stderr is exactly one line `error: …` holding every `needle`.
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "stderr must start with `error: `: {stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error should mention {n:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

/// `train` on the tiny data with `extra` flags, writing to `t/out`; expects failure and
/// that nothing was left in `t` besides what was there before.
fn train_fails(t: &Temp, data: &Path, extra: &[&str], needles: &[&str]) {
    let before = t.listing();
    let out_dir = t.join("out");
    let mut args = vec!["train", "--steps", "3", "--batch-size", "8", "--data", p(data), "--out", p(&out_dir)];
    if !extra.contains(&"--models") {
        args.extend(["--models", "2"]);
    }
    args.extend_from_slice(extra);
    assert_error(&run(&args), needles);
    assert!(!out_dir.exists(), "{} was created", out_dir.display());
    assert_eq!(t.listing(), before, "files were left behind");
}

fn lenet_entries() -> Vec<StateEntry> {
    ModelSpec::lenet().state_entries().unwrap()
}

/// `g` valid LeNet state dicts written as `dir/model-{i}.safetensors`, no GPU needed.
fn write_weights(dir: &Path, g: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let spec = ModelSpec::lenet();
    let entries = spec.state_entries().unwrap();
    for m in 0..g {
        let values = spec.init_model(7, m).unwrap();
        let bytes = modelbatch::io::encode_state(&entries, &values, None).unwrap();
        write(&dir.join(format!("model-{m}.safetensors")), &bytes);
    }
}

/// A LeNet state dict written with `entries` (altered by the caller).
fn write_altered(path: &Path, entries: &[StateEntry]) {
    let values: Vec<Vec<f32>> = entries.iter().map(|e| vec![0.01; e.numel().max(1)]).collect();
    write(path, &modelbatch::io::encode_state(entries, &values, None).unwrap());
}

// ---------------------------------------------------------------- errors (no GPU needed)

#[test]
fn missing_data_file() {
    let t = Temp::new("missing");
    let data = tiny_mnist(&t);
    std::fs::remove_file(data.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    train_fails(&t, &data, &[], &["t10k-labels-idx1-ubyte"]);
    train_fails(&t, &t.join("nowhere"), &[], &["nowhere", "train-images-idx3-ubyte"]);
}

#[test]
fn truncated_idx_file() {
    let t = Temp::new("truncated");
    let data = tiny_mnist(&t);
    let f = data.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&f).unwrap();
    write(&f, &bytes[..bytes.len() - 100]);
    train_fails(&t, &data, &[], &["train-images-idx3-ubyte", "truncated"]);
    write(&f, &bytes[..10]);
    train_fails(&t, &data, &[], &["train-images-idx3-ubyte", "truncated"]);
}

#[test]
fn wrong_idx_magic() {
    let t = Temp::new("magic");
    let data = tiny_mnist(&t);
    let (_, lb) = images(TRAIN_N, 1);
    write(&data.join("train-labels-idx1-ubyte"), &idx_bytes(0x1234_5678, &[TRAIN_N as u32], &lb));
    train_fails(&t, &data, &[], &["train-labels-idx1-ubyte", "magic"]);
}

#[test]
fn image_label_count_mismatch() {
    let t = Temp::new("count");
    let data = tiny_mnist(&t);
    let (_, lb) = images(TRAIN_N, 1);
    write(&data.join("train-labels-idx1-ubyte"), &idx_bytes(0x801, &[TRAIN_N as u32 - 1], &lb[1..]));
    train_fails(&t, &data, &[], &["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "mismatch"]);
}

#[test]
fn label_out_of_range() {
    let t = Temp::new("label");
    let data = tiny_mnist(&t);
    let (_, mut lb) = images(TRAIN_N, 1);
    lb[5] = 10;
    write(&data.join("train-labels-idx1-ubyte"), &idx_bytes(0x801, &[TRAIN_N as u32], &lb));
    train_fails(&t, &data, &[], &["train-labels-idx1-ubyte", "label 10", "index 5"]);
}

#[test]
fn init_with_missing_tensor() {
    let t = Temp::new("st-missing");
    let data = tiny_mnist(&t);
    let init = t.join("init");
    write_weights(&init, 2);
    let entries: Vec<StateEntry> = lenet_entries().into_iter().filter(|e| e.name != "layers.3.bias").collect();
    write_altered(&init.join("model-1.safetensors"), &entries);
    train_fails(&t, &data, &["--init", p(&init)], &["model-1.safetensors", "missing", "layers.3.bias"]);
}

#[test]
fn init_with_extra_tensor() {
    let t = Temp::new("st-extra");
    let data = tiny_mnist(&t);
    let init = t.join("init");
    write_weights(&init, 2);
    let mut entries = lenet_entries();
    entries.push(StateEntry { name: "head.weight".into(), shape: vec![3, 4], kind: TensorKind::Param });
    write_altered(&init.join("model-0.safetensors"), &entries);
    train_fails(&t, &data, &["--init", p(&init)], &["model-0.safetensors", "unexpected", "head.weight"]);
}

#[test]
fn init_with_misshaped_tensor() {
    let t = Temp::new("st-shape");
    let data = tiny_mnist(&t);
    let init = t.join("init");
    write_weights(&init, 2);
    let mut entries = lenet_entries();
    let e = entries.iter_mut().find(|e| e.name == "layers.0.weight").unwrap();
    e.shape = vec![6, 1, 3, 3];
    write_altered(&init.join("model-1.safetensors"), &entries);
    train_fails(&t, &data, &["--init", p(&init)], &["model-1.safetensors", "layers.0.weight", "[6, 1, 3, 3]"]);
}

#[test]
fn init_file_count_must_match_models() {
    let t = Temp::new("st-count");
    let data = tiny_mnist(&t);
    let init = t.join("init");
    write_weights(&init, 3);
    train_fails(&t, &data, &["--init", p(&init)], &["--init", "init", "3 model files", "--models is 2"]);
    let none = t.join("empty");
    std::fs::create_dir_all(&none).unwrap();
    train_fails(&t, &data, &["--init", p(&none)], &["--init", "empty", "--models is 2"]);
    std::fs::rename(init.join("model-1.safetensors"), init.join("model-3.safetensors")).unwrap();
    train_fails(&t, &data, &["--init", p(&init), "--models", "3"], &["--init", "model-1.safetensors", "missing"]);
}

#[test]
fn hyper_parameter_list_of_wrong_length() {
    let t = Temp::new("hyper-len");
    let data = tiny_mnist(&t);
    train_fails(&t, &data, &["--models", "3", "--lr", "0.1,0.2"], &["--lr", "2 values", "3 models"]);
    train_fails(&t, &data, &["--momentum", "0.9,0.9,0.9"], &["--momentum", "3 values", "2 models"]);
}

/// `--normalize MEAN,STD`: malformed pairs are usage errors; a negative mean is a value (not
/// a flag) and changes what eval computes, the default written out changes nothing.
#[test]
fn normalize_flag() {
    let t = Temp::new("normalize");
    let data = tiny_mnist(&t);
    train_fails(&t, &data, &["--normalize", "0.5"], &["--normalize", "MEAN,STD"]);
    train_fails(&t, &data, &["--normalize", "0.1,0"], &["--normalize", "STD > 0"]);
    let _gpu = gpu_or_skip!();
    let w = t.join("w");
    write_weights(&w, 2);
    let losses = |extra: &[&str]| {
        let mut args = vec!["eval", "--weights", p(&w), "--data", p(&data), "--json"];
        args.extend_from_slice(extra);
        let ev: Value = serde_json::from_str(assert_ok(&run(&args)).trim()).unwrap();
        ev["models"].as_array().unwrap().iter().map(|m| m["loss"].as_f64().unwrap()).collect::<Vec<_>>()
    };
    let default = losses(&[]);
    assert_eq!(losses(&["--normalize", "0.1307,0.3081"]), default);
    let shifted = losses(&["--normalize", "-0.5,2"]);
    assert!(shifted.iter().zip(&default).all(|(a, b)| a != b), "{shifted:?} vs {default:?}");
}

#[test]
fn nothing_to_train() {
    let t = Temp::new("no-steps");
    let data = tiny_mnist(&t);
    let out_dir = t.join("out");
    for (flag, needles) in [("--steps", &["--steps", "at least 1", "modelbatch eval"][..]), ("--epochs", &["--epochs"])]
    {
        assert_error(&run(&["train", flag, "0", "--models", "2", "--data", p(&data), "--out", p(&out_dir)]), needles);
        assert!(!out_dir.exists(), "{flag} 0: {} was created", out_dir.display());
    }
}

#[test]
fn bad_log_spec() {
    let t = Temp::new("hyper-log");
    let data = tiny_mnist(&t);
    train_fails(&t, &data, &["--lr", "log:0:0.1"], &["--lr", "log:0:0.1"]);
    train_fails(&t, &data, &["--lr", "log:0.1"], &["--lr", "log:0.1"]);
    train_fails(&t, &data, &["--weight-decay", "lin:a:1"], &["--weight-decay", "lin:a:1"]);
    // A negative value reaches the check (not taken for a flag).
    train_fails(&t, &data, &["--lr", "-0.1"], &["--lr", "-0.1", ">= 0"]);
    train_fails(&t, &data, &["--momentum", "0.5,-0.5"], &["--momentum", "-0.5", "model 1"]);
    train_fails(&t, &data, &["--optimizer", "adam", "--betas", "0.9"], &["--betas"]);
    train_fails(&t, &data, &["--optimizer", "adam", "--momentum", "0.9"], &["--momentum", "sgd"]);
}

#[test]
fn spec_json_error_names_the_layer() {
    let t = Temp::new("spec");
    let data = tiny_mnist(&t);
    let spec = t.join("net.json");
    write(
        &spec,
        br#"{"input": [1, 28, 28], "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 5}, {"type": "swishy"}]}"#,
    );
    train_fails(&t, &data, &["--model", p(&spec)], &["net.json", "layer 1", "swishy"]);
    write(&spec, b"{\"input\": [1, 28, 28], \"layers\": [");
    train_fails(&t, &data, &["--model", p(&spec)], &["net.json", "JSON"]);
    std::fs::remove_file(&spec).unwrap();
    train_fails(&t, &data, &["--model", p(&spec)], &["--model", "net.json"]);
}

#[test]
fn unwritable_output_directory() {
    let t = Temp::new("out");
    let data = tiny_mnist(&t);
    let base = ["train", "--models", "2", "--steps", "3", "--batch-size", "8", "--data", p(&data)];
    // A pseudo-filesystem that refuses new entries.
    let mut args = base.to_vec();
    args.extend(["--out", "/proc/modelbatch-nope"]);
    assert_error(&run(&args), &["--out", "/proc/modelbatch-nope"]);
    assert!(!Path::new("/proc/modelbatch-nope").exists());
    // Below a regular file, directly and through a missing folder.
    let file = t.join("file.txt");
    write(&file, b"not a folder");
    let before = t.listing();
    for target in [file.join("out"), file.join("sub").join("out")] {
        let mut args = base.to_vec();
        args.extend(["--out", p(&target)]);
        assert_error(&run(&args), &["--out", p(&target)]);
        assert_eq!(t.listing(), before);
    }
    // A regular file as the output, and a folder holding someone else's files: both kept.
    let mut args = base.to_vec();
    args.extend(["--out", p(&file)]);
    assert_error(&run(&args), &["--out", "file.txt", "not a directory"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
    let theirs = t.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    write(&theirs.join("notes.txt"), b"keep me");
    let mut args = base.to_vec();
    args.extend(["--out", p(&theirs)]);
    assert_error(&run(&args), &["--out", "theirs", "notes.txt"]);
    assert_eq!(std::fs::read(theirs.join("notes.txt")).unwrap(), b"keep me");
}

#[test]
fn missing_output_parents_are_removed_again_on_failure() {
    let t = Temp::new("parents");
    let data = tiny_mnist(&t);
    let out = t.join("a").join("b").join("out");
    let before = t.listing();
    let args = ["train", "--models", "2", "--lr", "1,2,3", "--data", p(&data), "--out", p(&out)];
    assert_error(&run(&args), &["--lr"]);
    // The --lr check comes first; now a failure after the output was prepared.
    write(&data.join("t10k-labels-idx1-ubyte.gz"), b"\x1f\x8bjunk");
    let args = ["train", "--models", "2", "--steps", "1", "--data", p(&data), "--out", p(&out)];
    assert_error(&run(&args), &["t10k-labels-idx1-ubyte.gz"]);
    assert_eq!(t.listing(), before);
}

#[test]
fn eval_errors() {
    let t = Temp::new("eval-err");
    let data = tiny_mnist(&t);
    let w = t.join("w");
    write_weights(&w, 2);
    let args = ["eval", "--models", "3", "--weights", p(&w), "--data", p(&data)];
    assert_error(&run(&args), &["--weights", "2 model files", "--models is 3"]);
    std::fs::remove_file(data.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let args = ["eval", "--weights", p(&w), "--data", p(&data)];
    assert_error(&run(&args), &["t10k-images-idx3-ubyte"]);
    let nothing = t.join("nothing");
    let args = ["eval", "--weights", p(&nothing)];
    assert_error(&run(&args), &["--weights", "nothing"]);
}

#[test]
fn bench_errors() {
    let t = Temp::new("bench-errors");
    assert_error(&run(&["bench", "--models", "1,x"]), &["--models", "1,x"]);
    assert_error(&run(&["bench", "--models", "2,0"]), &["--models", "at least 1"]);
    assert_error(&run(&["bench", "--models", "1", "--repeats", "0"]), &["--repeats"]);
    assert_error(&run(&["bench", "--models", "1", "--time-limit", "0"]), &["--time-limit"]);
    let missing = t.join("nowhere.json");
    assert_error(&run(&["bench", "--model", p(&missing)]), &["--model", "nowhere.json"]);
    let regression = t.join("regression.json");
    write(&regression, br#"{"input": [4], "layers": [{"type": "linear", "name": "fc", "out_features": 1}]}"#);
    assert_error(&run(&["bench", "--model", p(&regression)]), &["--model", "at least 2 outputs"]);
}

#[test]
fn tuning_errors() {
    assert_error(&run(&["--tuning", "conv_lanes=3", "info"]), &["--tuning", "conv_lanes", "power of two"]);
    assert_error(&run(&["info", "--tuning", "speed=11"]), &["--tuning", "unknown key \"speed\""]);
    assert_error(&run(&["tune", "--models", "0"]), &["--models", "at least 1"]);
    assert_error(&run(&["tune", "--margin", "2"]), &["--margin"]);
    assert_error(&run(&["tune", "--model", "mlp", "--steps", "0"]), &["--steps"]);
}

// ---------------------------------------------------------------- runs (GPU)

#[test]
fn tuning_reaches_the_device_from_the_flag_and_the_environment() {
    let _gpu = gpu_or_skip!();
    let out = assert_ok(&run(&["--tuning", "conv_ob=2,split_threads=4096", "info"]));
    let line = out.lines().find(|l| l.starts_with("tuning:")).unwrap_or_else(|| panic!("no tuning line: {out}"));
    assert!(line.contains("conv_ob=2") && line.contains("split_threads=4096"), "{line}");
    let env = |value: &str| run_env(&["info"], &[("MODELBATCH_TUNING", value)]);
    let out = assert_ok(&env("gemm_wg=4"));
    assert!(out.lines().any(|l| l.starts_with("tuning:") && l.contains("gemm_wg=4")), "{out}");
    assert_error(&env("gemm_wg=5"), &["MODELBATCH_TUNING", "gemm_wg"]);
}

/// `tune --keys`: only those keys, in that order; an unknown key is an error naming it.
#[test]
fn tune_searches_the_keys_given() {
    let _gpu = gpu_or_skip!();
    let args = ["tune", "--model", "mlp", "--models", "2", "--batch-size", "4", "--steps", "1", "--repeats", "1"];
    // (The MLP has nothing to pool: folds 3, 5 and 7 compile to the kernels of 1, skipped.)
    let out = run(&[&args[..], &["--keys", "folds,gemm_tile"]].concat());
    let lines = bench_lines(&out);
    // (Checks of a candidate that measured faster, "confirm", may come between.)
    let keys: Vec<&str> = lines.iter().filter_map(|l| l["key"].as_str()).filter(|k| *k != "confirm").collect();
    assert_eq!(keys, ["start", "folds", "gemm_tile"], "{lines:?}");
    assert_error(&run(&[&args[..], &["--keys", "folds,gemm_tiles"]].concat()), &["gemm_tiles", "the keys are"]);
}

#[test]
fn tune_prints_measurements_then_the_best() {
    let _gpu = gpu_or_skip!();
    let args = ["tune", "--model", "mlp", "--models", "2", "--batch-size", "4", "--steps", "1", "--repeats", "1"];
    let out = run(&args);
    let lines = bench_lines(&out);
    let last = lines.last().expect("a summary line");
    let best = last["best"].as_str().unwrap_or_else(|| panic!("no best: {last}"));
    assert!(lines[..lines.len() - 1].iter().any(|l| l["tuning"] == best), "the best was measured: {lines:?}");
    assert_eq!(lines[0]["key"], "start");
    // The MLP has no convolution: only the GEMM's workgroups, blocks and kernels, whether its weight
    // gradients sum the bias gradients (or sums do, `serial_sum`), the optimizer's tensors
    // per dispatch and the loop counters (every kernel) change its kernels.
    let keys: Vec<&str> = lines.iter().filter_map(|l| l["key"].as_str()).collect();
    let mlp_keys = [
        "start",
        "gemm_wg",
        "gemm_groups",
        "gemm_tile",
        "gemm_cols",
        "gemm_rows",
        "gemm_split",
        "folds",
        "serial_sum",
        "update_tensors",
        "loop_counters",
        // A candidate measured faster is checked against the best again.
        "confirm",
    ];
    assert!(keys.iter().all(|k| mlp_keys.contains(k)), "{keys:?}");
    // Checks come in threes: the best, the candidate, the best.
    for (i, _) in keys.iter().enumerate().filter(|(i, k)| **k != "confirm" && keys.get(i + 1) == Some(&"confirm")) {
        assert_eq!(keys[i + 1..i + 4], ["confirm"; 3], "{keys:?}");
        assert_eq!(lines[i + 2]["tuning"], lines[i]["tuning"], "the candidate again: {lines:?}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("--tuning {best}")), "how to use it: {stderr}");
    // What tune printed is accepted back.
    assert_ok(&run(&["--tuning", best, "info"]));
}

#[test]
fn tune_save_is_where_later_runs_start() {
    let _gpu = gpu_or_skip!();
    let t = Temp::new("tuning-cache");
    let dir = t.join("cache");
    let cache = [("MODELBATCH_CACHE_DIR", p(&dir))];
    let info = assert_ok(&run_env(&["info"], &cache));
    assert!(info.contains("(built-in)"), "nothing saved yet: {info}");
    let args = ["tune", "--model", "mlp", "--models", "2", "--batch-size", "4", "--steps", "1", "--repeats", "1"];
    let out = run_env(&[&args[..], &["--save"]].concat(), &cache);
    let best = bench_lines(&out).last().unwrap()["best"].as_str().unwrap().to_string();
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("saved to {}", files[0].display())), "{stderr}");
    // Later runs on this adapter start from it, and report where it came from.
    let info = assert_ok(&run_env(&["info"], &cache));
    assert!(info.contains(&best) && info.contains(&format!("(saved: {})", files[0].display())), "{info}");
    let both = assert_ok(&run_env(&["info"], &[cache[0], ("MODELBATCH_TUNING", "conv_ob=2")]));
    assert!(both.contains("+ MODELBATCH_TUNING)") && both.contains("conv_ob=2"), "{both}");
    // A broken file is an error that names it and says what to do.
    std::fs::write(&files[0], "conv_ob=99\n").unwrap();
    let file = files[0].to_str().unwrap();
    assert_error(&run_env(&["info"], &cache), &[file, "conv_ob", "--save"]);
}

#[test]
fn info_prints_the_adapter() {
    let gpu = gpu_or_skip!();
    let out = assert_ok(&run(&["info"]));
    let name = gpu.report().name;
    assert!(out.contains("adapter:") && out.contains(&name), "{out}");
    assert!(out.contains("backend:") && out.contains("device type:") && out.contains("limits:"), "{out}");
}

fn csv_rows(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv")).unwrap().lines().map(String::from).collect()
}

#[test]
fn train_writes_weights_metrics_and_summary_then_eval_reads_them() {
    let _gpu = gpu_or_skip!();
    let t = Temp::new("happy");
    let data = tiny_mnist(&t);
    let out_dir = t.join("run");
    let args = [
        "train",
        "--models",
        "2",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.05,0.1",
        "--momentum",
        "0.9",
        "--data",
        p(&data),
        "--out",
        p(&out_dir),
    ];
    let stdout = assert_ok(&run(&args));
    assert!(stdout.contains("top-1 %") && stdout.contains("final loss"), "{stdout}");
    // One row per model, sorted by test top-1, the varying lr shown.
    let table: Vec<&str> = stdout.lines().skip_while(|l| !l.contains("top-1 %")).collect();
    assert!(table[0].contains("lr") && !table[0].contains("momentum"), "{stdout}");
    assert!(table.len() >= 3, "{stdout}");
    let mut names = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    names.sort();
    assert_eq!(names, ["metrics.csv", "model-0.safetensors", "model-1.safetensors", "summary.json"]);
    assert_eq!(t.listing(), ["mnist", "run"], "no staging folder left");

    let rows = csv_rows(&out_dir);
    assert_eq!(rows[0], "step,model,loss,correct");
    assert_eq!(rows.len(), 1 + 2 * 3);
    for (i, r) in rows[1..].iter().enumerate() {
        let f: Vec<&str> = r.split(',').collect();
        assert_eq!((f[0].parse::<usize>().unwrap(), f[1].parse::<usize>().unwrap()), (i / 2, i % 2), "{r}");
        let loss: f32 = f[2].parse().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{r}");
        assert!(f[3].parse::<u32>().unwrap() <= 8, "{r}");
    }

    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["G"], 2);
    assert_eq!(summary["steps"], 3);
    assert!(summary["adapter"]["name"].is_string() && summary["wall_time_s"].is_number());
    let models = summary["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let last: Vec<f64> = rows[5..7].iter().map(|r| r.split(',').nth(2).unwrap().parse().unwrap()).collect();
    for (m, s) in models.iter().enumerate() {
        assert_eq!(s["model"], m);
        assert_eq!(s["hyper"]["lr"], [0.05, 0.1][m]);
        assert_eq!(s["hyper"]["momentum"], 0.9);
        assert_eq!(s["diverged"], false);
        assert!((s["final_loss"].as_f64().unwrap() - last[m]).abs() < 1e-6);
        let (c1, c5) = (s["top1_count"].as_u64().unwrap(), s["top5_count"].as_u64().unwrap());
        assert!(c1 <= c5 && c5 <= TEST_N as u64);
        assert!((s["top1"].as_f64().unwrap() - c1 as f64 / TEST_N as f64).abs() < 1e-12);
    }

    // The saved models evaluate to the numbers the summary reports.
    let args = ["eval", "--models", "2", "--weights", p(&out_dir), "--data", p(&data), "--json"];
    let json = assert_ok(&run(&args));
    assert!(
        json.starts_with(&format!("{{\"samples\": {TEST_N}, \"models\": [{{\"model\": 0, \"top1_count\": ")),
        "{json}"
    );
    let ev: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(ev["samples"], TEST_N);
    let evm = ev["models"].as_array().unwrap();
    assert_eq!(evm.len(), 2);
    for (m, e) in evm.iter().enumerate() {
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 6, "{e}");
        for k in ["model", "top1_count", "top5_count", "top1", "top5", "loss"] {
            assert!(e.get(k).is_some(), "{k} missing in {e}");
        }
        assert_eq!(e["model"], m);
        assert_eq!(e["top1_count"], models[m]["top1_count"]);
        assert_eq!(e["top5_count"], models[m]["top5_count"]);
        assert!(e["loss"].as_f64().unwrap().is_finite());
    }
    // --samples: the first images only (the counts of a part are at most the whole's).
    let first3 = |args: &[&str]| -> Value { serde_json::from_str(assert_ok(&run(args)).trim()).unwrap() };
    let part = first3(&[&args[..], &["--samples", "3"]].concat());
    assert_eq!(part["samples"], 3);
    for (e, whole) in part["models"].as_array().unwrap().iter().zip(evm) {
        assert!(e["top5_count"].as_u64().unwrap() <= 3.min(whole["top5_count"].as_u64().unwrap()), "{e}");
    }
    assert_eq!(first3(&[&args[..], &["--samples", "100000"]].concat())["samples"], TEST_N);
    assert_error(&run(&[&args[..], &["--samples", "0"]].concat()), &["--samples", "at least 1"]);
    // Without --models the files are counted; --split train reads the other files.
    let args = ["eval", "--weights", p(&out_dir), "--data", p(&data), "--split", "train"];
    let table = assert_ok(&run(&args));
    assert!(table.contains("top-1 %") && table.contains(&format!("{TRAIN_N} images")), "{table}");
}

/// Trains with `args` into `out` and returns metrics.csv and the model files' bytes.
fn train_snapshot(args: &[&str], out: &Path) -> (String, Vec<Vec<u8>>) {
    let mut a = args.to_vec();
    a.extend(["--out", p(out)]);
    assert_ok(&run(&a));
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let models = (0..2).map(|m| std::fs::read(out.join(format!("model-{m}.safetensors"))).unwrap()).collect();
    (csv, models)
}

#[test]
fn no_shuffle_runs_are_deterministic() {
    let _gpu = gpu_or_skip!();
    let t = Temp::new("determinism");
    let data = tiny_mnist(&t);
    let args = [
        "train",
        "--models",
        "2",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--no-shuffle",
        "--optimizer",
        "adamw",
        "--lr",
        "log:0.001:0.01",
        "--betas",
        "0.9,0.99",
        "--schedule",
        "warmup:2",
        "--data",
        p(&data),
    ];
    let a = train_snapshot(&args, &t.join("a"));
    let b = train_snapshot(&args, &t.join("b"));
    assert_eq!(a.0, b.0, "metrics.csv differs between identical --no-shuffle runs");
    assert!(a.1 == b.1, "weights differ between identical --no-shuffle runs");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(t.join("a/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["optimizer"], "adamw");
    assert_eq!(summary["models"][1]["hyper"]["lr"], 0.01);
    assert_eq!(summary["models"][1]["hyper"]["beta2"], 0.99);
}

#[test]
fn init_from_a_saved_run_reproduces() {
    let _gpu = gpu_or_skip!();
    let t = Temp::new("init");
    let data = tiny_mnist(&t);
    let base = ["train", "--models", "2", "--batch-size", "8", "--steps", "2", "--lr", "0.05", "--data", p(&data)];
    train_snapshot(&base, &t.join("a"));
    let mut resumed = base.to_vec();
    let a = t.join("a");
    resumed.extend(["--init", p(&a), "--no-shuffle"]);
    let first = train_snapshot(&resumed, &t.join("b"));
    // The second run replaces the first one's output in place.
    let second = train_snapshot(&resumed, &t.join("b"));
    assert_eq!(first.0, second.0, "metrics.csv differs between runs from the same --init");
    assert!(first.1 == second.1, "weights differ between runs from the same --init");
    let fresh = train_snapshot(&[&base[..], &["--no-shuffle"]].concat(), &t.join("c"));
    assert_ne!(first.0, fresh.0, "--init was ignored");
    // Sharded over two devices, each loads its model from the one directory: the same run.
    let sharded = train_snapshot(&[&resumed[..], &["--devices", "2"]].concat(), &t.join("d"));
    assert_eq!(first.0, sharded.0, "metrics.csv differs with --devices 2");
    assert!(first.1 == sharded.1, "weights differ with --devices 2");
    assert_eq!(t.listing(), ["a", "b", "c", "d", "mnist"]);
}

/// `&str` views of owned arguments.
fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Entry names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn checkpoint_errors() {
    let t = Temp::new("checkpoint-errors");
    let data = tiny_mnist(&t);
    train_fails(&t, &data, &["--checkpoint-every", "5"], &["--checkpoint-every", "--checkpoint DIR"]);
    let ck = t.join("ck");
    for bad in ["0", "5x", "-1m", "0s"] {
        train_fails(&t, &data, &["--checkpoint", p(&ck), "--checkpoint-every", bad], &["--checkpoint-every", bad]);
    }
    let out = t.join("out");
    for inside in [out.clone(), out.join("ck")] {
        train_fails(&t, &data, &["--checkpoint", p(&inside)], &["--checkpoint", "inside --out"]);
    }
    write(&ck, b"not a folder");
    train_fails(&t, &data, &["--checkpoint", p(&ck)], &["--checkpoint", "not a folder"]);
    std::fs::remove_file(&ck).unwrap();
    // A save whose run.json is not one of ours.
    std::fs::create_dir_all(ck.join("step-00000002/shard-0")).unwrap();
    write(&ck.join("step-00000002/run.json"), b"{\"format\": \"something else\"}");
    train_fails(&t, &data, &["--checkpoint", p(&ck)], &["step-00000002", "run.json", "not a modelbatch"]);
}

#[test]
fn checkpoint_resumes_as_the_uninterrupted_run() {
    let _gpu = gpu_or_skip!();
    let t = Temp::new("checkpoint");
    let data = tiny_mnist(&t);
    // A spec file: `eval` of a save takes the spec saved with it.
    let spec = t.join("mlp.json");
    write(
        &spec,
        br#"{"input": [1, 28, 28], "layers": [{"type": "flatten"}, {"type": "linear", "out_features": 16},
            {"type": "relu"}, {"type": "linear", "out_features": 10}]}"#,
    );
    let base = [
        "train",
        "--model",
        p(&spec),
        "--models",
        "2",
        "--batch-size",
        "8",
        "--momentum",
        "0.9",
        "--metrics-every",
        "2",
        "--data",
        p(&data),
    ];
    let straight = train_snapshot(&[&base[..], &["--lr", "log:0.01:0.1", "--steps", "5"]].concat(), &t.join("a"));
    for devices in ["1", "2"] {
        let ck = t.join(&format!("ck{devices}"));
        let with = |lr: &str, steps: &str| -> Vec<String> {
            let mut a: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            for f in
                ["--lr", lr, "--steps", steps, "--devices", devices, "--checkpoint", p(&ck), "--checkpoint-every", "2"]
            {
                a.push(f.to_string());
            }
            a
        };
        // 3 steps (saves after steps 2 and 3; the older goes), then the same command for
        // 5 steps continues from step 3, with the uninterrupted run's metrics and weights.
        let out = assert_ok(&run(&args(&with("log:0.01:0.1", "3"))));
        assert!(out.contains("saved") && out.contains("step-00000003"), "{out}");
        assert_eq!(names(&ck), ["step-00000003"]);
        let shards: Vec<String> =
            names(&ck.join("step-00000003")).into_iter().filter(|n| n.starts_with("shard-")).collect();
        assert_eq!(shards.len(), devices.parse::<usize>().unwrap(), "{shards:?}");
        // An interrupted save's leftovers go; other files stay.
        std::fs::create_dir_all(ck.join(".step-00000004.tmp-1/shard-0")).unwrap();
        write(&ck.join("notes.txt"), b"mine");
        let resumed = train_snapshot(&args(&with("log:0.01:0.1", "5")), &t.join("b"));
        assert_eq!(resumed.0, straight.0, "metrics.csv of the resumed run ({devices} devices)");
        assert!(resumed.1 == straight.1, "weights of the resumed run ({devices} devices)");
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(t.join("b/summary.json")).unwrap()).unwrap();
        assert_eq!(summary["resumed_from_step"], 3);
        assert_eq!(names(&ck), ["notes.txt", "step-00000005"]);
        // `eval` reads the newest save (or a save named), with the spec saved with it.
        let eval_out =
            assert_ok(&run(&["eval", "--weights", p(&t.join("b")), "--model", p(&spec), "--data", p(&data), "--json"]));
        for w in [ck.clone(), ck.join("step-00000005")] {
            let from_save = assert_ok(&run(&["eval", "--weights", p(&w), "--data", p(&data), "--json"]));
            assert_eq!(from_save, eval_out, "eval of the save {} ({devices} devices)", w.display());
        }
        assert_error(
            &run(&["eval", "--weights", p(&ck), "--models", "3", "--data", p(&data)]),
            &["--models 3", "holds 2 models"],
        );
        // Once more: nothing is left to train; the same results are written again.
        let again = train_snapshot(&args(&with("log:0.01:0.1", "5")), &t.join("c"));
        assert!(again == resumed, "a finished run run again");
        // Another run's settings, or fewer steps than saved: errors, the save untouched.
        assert_error(&run(&args(&with("0.2", "5"))), &["--lr", "another run", "step-00000005"]);
        assert_error(&run(&args(&with("log:0.01:0.1", "4"))), &["step 5", "4 steps"]);
        assert_eq!(names(&ck), ["notes.txt", "step-00000005"]);
    }
}

/// Ctrl-C during the steps: the run stops after the current step, saves itself, removes
/// the --out staging directory and exits with 130; the same command continues it.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_the_run_and_the_same_command_continues() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let _gpu = gpu_or_skip!();
    let t = Temp::new("ctrl-c");
    let data = tiny_mnist(&t);
    let ck = t.join("ck");
    let base = ["train", "--models", "2", "--batch-size", "8", "--momentum", "0.9", "--metrics-every", "1"];
    let base: Vec<&str> =
        [&base[..], &["--data", p(&data), "--checkpoint", p(&ck), "--checkpoint-every", "1h"]].concat();
    let mut child = Command::new(BIN)
        .args([&base[..], &["--steps", "1000000", "--out", p(&t.join("out"))]].concat())
        .env("MODELBATCH_CACHE_DIR", "")
        .env_remove("MODELBATCH_TUNING")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    // The first progress line says the steps are running.
    while !line.starts_with("step ") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "modelbatch ended before its first step");
    }
    // The shell's own `kill` (no procps needed).
    let kill = Command::new("sh").args(["-c", &format!("kill -INT {}", child.id())]).status().unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    let reader = std::thread::spawn(move || {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("modelbatch did not stop within 120 s of Ctrl-C");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let rest = reader.join().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    let last = rest.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: interrupted after step ") && last.contains("run the same command"), "{rest}");
    let saved = names(&ck);
    assert_eq!(saved.len(), 1, "{saved:?}");
    let at: u64 = saved[0].strip_prefix("step-").unwrap().parse().unwrap();
    assert!(last.contains(&format!("after step {at} of 1000000")), "{last} vs {saved:?}");
    assert_eq!(t.listing(), ["ck", "mnist"], "the --out staging directory was left behind");
    // The same command with two more steps continues: the straight run's results.
    let steps = (at + 2).to_string();
    let resumed = train_snapshot(&[&base[..], &["--steps", &steps]].concat(), &t.join("a"));
    let straight_args: Vec<&str> = base[..base.len() - 4].iter().copied().chain(["--steps", &steps]).collect();
    let straight = train_snapshot(&straight_args, &t.join("b"));
    assert_eq!(resumed.0, straight.0, "metrics.csv after Ctrl-C at step {at} and resuming");
    assert!(resumed.1 == straight.1, "weights after Ctrl-C at step {at} and resuming");
}

#[test]
fn ensemble_scores_the_models_as_one() {
    let _gpu = gpu_or_skip!();
    let t = Temp::new("ensemble");
    let data = tiny_mnist(&t);
    let out = t.join("a");
    let args = ["train", "--models", "3", "--steps", "3", "--batch-size", "8", "--lr", "lin:0.02:0.1", "--ensemble"];
    let stdout = assert_ok(&run(&[&args[..], &["--data", p(&data), "--out", p(&out)]].concat()));
    assert!(stdout.contains("ensemble of 3 models (mean probabilities): top-1 "), "{stdout}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    // Across the models (a seed study's answer): mean, std, min and max of top-1.
    let top1: Vec<f64> = (0..3).map(|m| summary["models"][m]["top1"].as_f64().unwrap()).collect();
    let spread = &summary["top1_over_models"];
    let mean = top1.iter().sum::<f64>() / 3.0;
    assert!((spread["mean"].as_f64().unwrap() - mean).abs() < 1e-12, "{spread}");
    assert_eq!(spread["max"].as_f64().unwrap(), top1.iter().cloned().fold(0.0, f64::max), "{spread}");
    assert!(stdout.contains(&format!("top-1 over 3 models: mean {:.2}%", 100.0 * mean)), "{stdout}");
    let e = &summary["ensemble"];
    assert_eq!(e["members"], 3, "{e}");
    assert_eq!(e["excluded"], serde_json::json!([]));
    let count = e["top1_count"].as_u64().unwrap();
    assert!(count <= TEST_N as u64 && e["top5_count"].as_u64().unwrap() >= count, "{e}");
    // eval --ensemble of the saved models: the same ensemble.
    let json = assert_ok(&run(&["eval", "--weights", p(&out), "--data", p(&data), "--json", "--ensemble"]));
    let v: Value = serde_json::from_str(&json).unwrap();
    for k in ["members", "top1_count", "top5_count", "top1"] {
        assert_eq!(v["ensemble"][k], e[k], "{k}: {json} vs {e}");
    }
    assert!((v["ensemble"]["loss"].as_f64().unwrap() - e["loss"].as_f64().unwrap()).abs() < 1e-6);
    let table = assert_ok(&run(&["eval", "--weights", p(&out), "--data", p(&data), "--ensemble"]));
    assert!(table.contains(&format!("ensemble of 3 models (mean probabilities): top-1 {count}/{TEST_N}")), "{table}");
    // One model is its own ensemble.
    let one = t.join("one");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::copy(out.join("model-1.safetensors"), one.join("model-0.safetensors")).unwrap();
    let json = assert_ok(&run(&["eval", "--weights", p(&one), "--data", p(&data), "--json", "--ensemble"]));
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ensemble"]["top1_count"], v["models"][0]["top1_count"], "{json}");
    assert_eq!(v["ensemble"]["top5_count"], v["models"][0]["top5_count"], "{json}");
    // Without --ensemble there is none.
    let json = assert_ok(&run(&["eval", "--weights", p(&one), "--data", p(&data), "--json"]));
    assert!(!json.contains("ensemble"), "{json}");
}

#[test]
fn pbt_errors() {
    let t = Temp::new("pbt-errors");
    let data = tiny_mnist(&t);
    train_fails(&t, &data, &["--pbt-fraction", "0.2"], &["--pbt-fraction", "--pbt K"]);
    train_fails(&t, &data, &["--pbt-valid", "5"], &["--pbt-valid", "--pbt K"]);
    train_fails(&t, &data, &["--pbt", "0"], &["--pbt must be at least 1"]);
    train_fails(&t, &data, &["--pbt", "2", "--models", "1"], &["--pbt needs at least 2 models"]);
    train_fails(&t, &data, &["--pbt", "2", "--pbt-fraction", "0.7"], &["--pbt-fraction 0.7", "at most 0.5"]);
    train_fails(&t, &data, &["--pbt", "2", "--pbt-valid", "0"], &["--pbt-valid must be at least 1"]);
    train_fails(&t, &data, &["--pbt", "2", "--pbt-valid", "64"], &["--pbt-valid 64", "only 64 images"]);
}

#[test]
fn pbt_copies_the_best_and_resumes_exactly() {
    let _gpu = gpu_or_skip!();
    let t = Temp::new("pbt");
    let data = tiny_mnist(&t);
    let base = [
        "train",
        "--models",
        "4",
        "--batch-size",
        "8",
        "--lr",
        "lin:0.01:0.1",
        "--momentum",
        "0.5,0.6,0.7,0.8",
        "--pbt",
        "2",
        "--pbt-valid",
        "16",
        "--data",
        p(&data),
    ];
    let out = t.join("a");
    let output = run(&[&base[..], &["--steps", "6", "--out", p(&out)]].concat());
    let stdout = assert_ok(&output);
    assert!(stdout.contains("population-based training: every 2 steps, the worst 25% copy the best on 16"), "{stdout}");
    // Progress (stderr): one line per round.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pbt at step 2: ") && stderr.contains("pbt at step 4: "), "{stderr}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let pbt = &summary["pbt"];
    assert_eq!(pbt["validation_images"], 16);
    assert_eq!(pbt["explored"], serde_json::json!(["lr", "momentum"]));
    let rounds = pbt["rounds"].as_array().unwrap();
    assert_eq!(rounds.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4], "{pbt}");
    // The last round's copy: its learning rate and momentum are its source's, perturbed.
    let copies = rounds[1]["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 1, "a quarter of 4 models");
    let (dst, src) = (copies[0][0].as_u64().unwrap() as usize, copies[0][1].as_u64().unwrap() as usize);
    assert_ne!(dst, src);
    let hyper = |m: usize, k: &str| summary["models"][m]["hyper"][k].as_f64().unwrap();
    let ratio = hyper(dst, "lr") / hyper(src, "lr");
    assert!((ratio - 0.8).abs() < 1e-5 || (ratio - 1.25).abs() < 1e-5, "lr {ratio}");
    let ratio = (1.0 - hyper(dst, "momentum")) / (1.0 - hyper(src, "momentum"));
    assert!((ratio - 0.8).abs() < 1e-4 || (ratio - 1.25).abs() < 1e-4, "1 - momentum {ratio}");
    // Interrupted after step 3 and resumed: the same rounds, metrics and weights.
    let ck = t.join("ck");
    let with_ck = [&base[..], &["--checkpoint", p(&ck), "--checkpoint-every", "100"]].concat();
    assert_ok(&run(&[&with_ck[..], &["--steps", "3"]].concat()));
    let b = t.join("b");
    assert_ok(&run(&[&with_ck[..], &["--steps", "6", "--out", p(&b)]].concat()));
    let resumed: Value = serde_json::from_str(&std::fs::read_to_string(b.join("summary.json")).unwrap()).unwrap();
    assert_eq!(resumed["resumed_from_step"], 3);
    assert_eq!(resumed["pbt"], summary["pbt"], "the rounds of the resumed run");
    assert_eq!(resumed["models"], summary["models"], "the models of the resumed run");
    assert_eq!(
        std::fs::read(b.join("metrics.csv")).unwrap(),
        std::fs::read(out.join("metrics.csv")).unwrap(),
        "metrics.csv of the resumed run"
    );
    for m in 0..4 {
        let f = format!("model-{m}.safetensors");
        assert!(std::fs::read(b.join(&f)).unwrap() == std::fs::read(out.join(&f)).unwrap(), "{f}");
    }
}

#[test]
fn trains_on_the_embedded_mnist() {
    let _gpu = gpu_or_skip!();
    let out = run(&["train", "--models", "1", "--steps", "2", "--batch-size", "8", "--metrics-every", "1"]);
    let stdout = assert_ok(&out);
    assert!(stdout.contains("60000 images") && stdout.contains("test set: 10000 images"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step 2/2") && stderr.contains("samples/s"), "{stderr}");
}

/// The JSON lines of a `bench` run (stdout holds nothing else).
fn bench_lines(out: &Output) -> Vec<Value> {
    let stdout = assert_ok(out);
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}"))).collect()
}

#[test]
fn bench_prints_one_json_line_per_g() {
    let gpu = gpu_or_skip!();
    let out = run(&["bench", "--models", "1,2", "--batch-size", "4", "--steps", "2", "--repeats", "2"]);
    let lines = bench_lines(&out);
    assert_eq!(lines.len(), 2, "one line per G");
    for (line, g) in lines.iter().zip([1u64, 2]) {
        assert_eq!(line["models"], g, "{line}");
        assert_eq!(line["batch_size"], 4, "{line}");
        assert_eq!(line["steps"], 2, "{line}");
        assert_eq!(line["repeats"], 2, "{line}");
        assert_eq!(line["model"], "lenet", "{line}");
        assert_eq!(line["adapter"], gpu.report().name.as_str(), "{line}");
        let tuning: modelbatch::Tuning = line["tuning"].as_str().expect("the tuning in use").parse().unwrap();
        assert_eq!(line["tuning"], tuning.to_string().as_str(), "{line}");
        assert!(line.get("skipped").is_none(), "{line}");
        let steps_per_s = line["steps_per_s"].as_f64().expect("steps_per_s");
        let samples_per_s = line["samples_per_s"].as_f64().expect("samples_per_s");
        assert!(steps_per_s.is_finite() && steps_per_s > 0.0, "{line}");
        let want = (g * 4) as f64 * steps_per_s;
        assert!((samples_per_s - want).abs() <= 1e-9 * want, "samples_per_s {samples_per_s} != G*N*steps_per_s {want}");
        let runs: Vec<f64> = line["runs_steps_per_s"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(runs.len(), 2, "{line}");
        assert!(runs.contains(&steps_per_s), "the median is one of the runs with 2 repeats (the upper one): {line}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("G=1") && stderr.contains("G=2"), "progress names each G: {stderr}");
}

#[test]
fn bench_skips_what_does_not_fit_and_goes_on() {
    let _gpu = gpu_or_skip!();
    // 10^6 LeNets at 4 images each need about 50 GiB: over the 64 MiB cap (and any adapter's
    // per-binding limit), so that G is reported as skipped and the next one still runs.
    let out = run(&[
        "bench",
        "--models",
        "1000000,1",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--max-memory-mib",
        "64",
        "--model",
        "mlp",
    ]);
    let lines = bench_lines(&out);
    assert_eq!(lines.len(), 2, "one line per G");
    assert_eq!(lines[0]["models"], 1_000_000);
    let reason = lines[0]["skipped"].as_str().expect("the large G is skipped");
    assert!(reason.contains("MiB"), "{reason}");
    assert!(lines[0].get("steps_per_s").is_none());
    assert_eq!(lines[1]["models"], 1);
    assert_eq!(lines[1]["model"], "mlp");
    assert!(lines[1]["steps_per_s"].as_f64().unwrap() > 0.0, "{}", lines[1]);
}

#[test]
fn devices_shard_the_models_with_the_one_device_results() {
    let _gpu = gpu_or_skip!();
    let t = Temp::new("devices");
    let data = tiny_mnist(&t);
    let base =
        ["train", "--models", "3", "--steps", "3", "--batch-size", "8", "--lr", "log:0.01:0.1", "--data", p(&data)];
    let run_to = |dir: &str, devices: &str| {
        let out = t.join(dir);
        let mut a = base.to_vec();
        a.extend(["--devices", devices, "--out", p(&out)]);
        let stdout = assert_ok(&run(&a));
        let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        let rows: Vec<(String, f64, String)> = csv
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (format!("{},{}", f[0], f[1]), f[2].parse().unwrap(), f[3].to_string())
            })
            .collect();
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        (stdout, rows, summary)
    };
    let (_, one, s1) = run_to("one", "1");
    let (stdout, two, s2) = run_to("two", "2");
    assert!(stdout.contains("[device 1: models 2..2]"), "{stdout}");
    assert_eq!(s2["devices"], 2);
    assert_eq!(one.len(), 9);
    for (a, b) in two.iter().zip(&one) {
        assert_eq!(a.0, b.0, "step,model");
        assert!((a.1 - b.1).abs() <= 1e-4 * b.1.abs().max(1.0), "{}: loss {} vs {}", a.0, a.1, b.1);
        assert_eq!(a.2, b.2, "{}: correct", a.0);
    }
    for m in 0..3 {
        let (x, y) = (&s2["models"][m], &s1["models"][m]);
        assert_eq!(x["top1"], y["top1"], "model {m}: test accuracy");
    }
    // Every model's weights are written, under global indices.
    for m in 0..3 {
        assert!(t.join("two").join(format!("model-{m}.safetensors")).exists());
    }
    assert_error(&run(&["train", "--models", "2", "--devices", "3", "--data", p(&data)]), &["--devices 3", "2 models"]);
}

/// `modelbatch tune --help` names every tuning key, in the order the search tries them.
#[test]
fn tune_help_names_every_key_in_order() {
    let help = assert_ok(&run(&["tune", "--help"])).replace(['\n', ' '], "");
    let keys = modelbatch::tuning::Tuning::keys().join(",");
    assert!(help.contains(&format!("Eachkeyinturn({keys})")), "{keys} not in:\n{help}");
}
