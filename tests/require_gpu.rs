//! A GPU test skips without an adapter, but fails when `MODELBATCH_REQUIRE_GPU=1` (as CI
//! sets it). Proven by re-running this test binary with no usable adapter.

mod common;

use std::process::Command;

/// Runs only when invoked explicitly by the tests below.
#[test]
#[ignore = "run by the tests below in a child process"]
fn probe_gpu() {
    let _gpu = gpu_or_skip!();
    println!("PROBE: adapter found");
}

fn probe(env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "probe_gpu", "--nocapture", "--test-threads=1"]);
    cmd.env_remove("MODELBATCH_REQUIRE_GPU");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn missing_adapter_skips_when_not_required() {
    let (ok, text) = probe(&[("WGPU_ADAPTER_NAME", "no-such-adapter-xyz")]);
    assert!(ok, "{text}");
    assert!(text.contains("SKIPPED"), "{text}");
    assert!(text.contains("no-such-adapter-xyz"), "the error names the requested adapter: {text}");
}

#[test]
fn missing_adapter_fails_when_required() {
    let (ok, text) = probe(&[("WGPU_ADAPTER_NAME", "no-such-adapter-xyz"), ("MODELBATCH_REQUIRE_GPU", "1")]);
    assert!(!ok, "must fail: {text}");
    assert!(text.contains("MODELBATCH_REQUIRE_GPU=1"), "{text}");
}

#[test]
fn no_backend_error_says_how_to_get_a_software_adapter() {
    // No DX12 on this platform's build: the instance finds no adapter at all.
    if cfg!(windows) {
        return;
    }
    let (ok, text) = probe(&[("WGPU_BACKEND", "dx12"), ("MODELBATCH_REQUIRE_GPU", "1")]);
    assert!(!ok, "{text}");
    assert!(text.contains("mesa-vulkan-drivers"), "{text}");
}

#[test]
fn adapter_found_when_present() {
    // With the environment as given, the probe either finds the adapter or (only when no
    // GPU is required) skips; under MODELBATCH_REQUIRE_GPU=1 it must find one.
    if common::gpu().is_none() {
        return;
    }
    let (ok, text) = probe(&[]);
    assert!(ok && text.contains("PROBE: adapter found"), "{text}");
}
