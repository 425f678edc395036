//! `modelbatch train` from PyTorch-exported initial weights with `--no-shuffle` reproduces
//! PyTorch's per-step losses and final weights (tests/golden/gen_runs.py): SGD with
//! Nesterov momentum and weight decay, and Adam.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use modelbatch::io::decode_state;
use modelbatch::nn::ModelSpec;

fn golden(run: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/runs").join(run)
}

fn read_csv(path: &Path) -> Vec<(u64, usize, f64)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (si, mi, li) = (
        header.iter().position(|h| *h == "step").unwrap(),
        header.iter().position(|h| *h == "model").unwrap(),
        header.iter().position(|h| *h == "loss").unwrap(),
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[si].parse().unwrap(), f[mi].parse().unwrap(), f[li].parse().unwrap())
        })
        .collect()
}

fn check(run: &str, flags: &[&str], weight_rtol: f64) {
    if common::gpu().is_none() {
        return;
    }
    let out = std::env::temp_dir().join(format!("modelbatch-cli-golden-{run}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let init = golden(run).join("init");
    let mut args =
        vec!["train", "--model", "lenet", "--models", "2", "--no-shuffle", "--steps", "6", "--batch-size", "16"];
    args.extend_from_slice(flags);
    let output = Command::new(env!("CARGO_BIN_EXE_modelbatch"))
        .args(&args)
        .arg("--init")
        .arg(&init)
        .arg("--test-samples")
        .arg("100")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let want = read_csv(&golden(run).join("losses.csv"));
    let got = read_csv(&out.join("metrics.csv"));
    assert_eq!(got.len(), want.len(), "rows");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.0, g.1), (w.0, w.1));
        assert!(
            (g.2 - w.2).abs() <= 1e-3 * w.2.abs(),
            "{run}: step {} model {}: loss {} vs PyTorch {}",
            g.0,
            g.1,
            g.2,
            w.2
        );
    }
    let entries = ModelSpec::lenet().state_entries().unwrap();
    for m in 0..2 {
        let file = |dir: &Path| dir.join(format!("model-{m}.safetensors"));
        let ours = decode_state(&std::fs::read(file(&out)).unwrap(), "ours", &entries, None).unwrap();
        let theirs =
            decode_state(&std::fs::read(file(&golden(run).join("final"))).unwrap(), "golden", &entries, None).unwrap();
        for ((e, a), b) in entries.iter().zip(&ours).zip(&theirs) {
            let b64 = common::to64(b);
            let scale = b64.iter().fold(0.0f64, |x, v| x.max(v.abs()));
            common::assert_close(&format!("{run} model {m} {}", e.name), a, &b64, 0.0, weight_rtol * scale + 1e-6);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn sgd_nesterov_weight_decay_matches_pytorch() {
    check(
        "sgd",
        &["--optimizer", "sgd", "--lr", "0.05,0.1", "--momentum", "0.9", "--nesterov", "--weight-decay", "0.001"],
        1e-4,
    );
}

#[test]
fn adam_matches_pytorch() {
    check(
        "adam",
        &[
            "--optimizer",
            "adam",
            "--lr",
            "0.001,0.003",
            "--betas",
            "0.9,0.999",
            "--eps",
            "1e-8",
            "--weight-decay",
            "0.0001",
        ],
        1e-3,
    );
}
