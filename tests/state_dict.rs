//! BatchModel state dicts: per-model and batched safetensors round trips, loading checks.

mod common;

use modelbatch::io::encode_state;
use modelbatch::nn::{BatchModel, ModelSpec, StateEntry, TensorKind};

fn normnet() -> ModelSpec {
    ModelSpec::from_json(
        r#"{"input": [3, 6, 6], "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3},
            {"type": "batchnorm2d"}, {"type": "relu"}, {"type": "flatten"}, {"type": "linear", "out_features": 5}]}"#,
    )
    .unwrap()
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("modelbatch-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn per_model_files_round_trip() {
    let gpu = gpu_or_skip!();
    let spec = normnet();
    let a = BatchModel::new(gpu, &spec, 5, 1).unwrap();
    let b = BatchModel::new(gpu, &spec, 5, 99).unwrap();
    let dir = tmpdir("roundtrip");
    a.save_dir(&dir).unwrap();
    for m in 0..5 {
        assert!(dir.join(format!("model-{m}.safetensors")).exists());
    }
    assert_ne!(pollster::block_on(a.state_dict(2)).unwrap(), pollster::block_on(b.state_dict(2)).unwrap());
    b.load_dir(&dir).unwrap();
    for m in 0..5 {
        let (sa, sb) = (pollster::block_on(a.state_dict(m)).unwrap(), pollster::block_on(b.state_dict(m)).unwrap());
        assert_eq!(sa, sb, "model {m}");
        assert_eq!(sa, spec.init_model(1, m).unwrap(), "model {m} holds its seeded init");
    }
    // The batched file holds the same numbers with a leading G dimension.
    let bytes = pollster::block_on(a.to_safetensors_batched()).unwrap();
    let c = BatchModel::new(gpu, &spec, 5, 7).unwrap();
    c.load_safetensors_batched(&bytes, "batched").unwrap();
    assert_eq!(
        pollster::block_on(c.state_dicts_batched()).unwrap(),
        pollster::block_on(a.state_dicts_batched()).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_use_pytorch_names_and_dtypes() {
    let gpu = gpu_or_skip!();
    let model = BatchModel::new(gpu, &normnet(), 2, 3).unwrap();
    let bytes = pollster::block_on(model.to_safetensors(1)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "0.bias",
            "0.weight",
            "1.bias",
            "1.num_batches_tracked",
            "1.running_mean",
            "1.running_var",
            "1.weight",
            "4.bias",
            "4.weight"
        ]
    );
    let t = st.tensor("0.weight").unwrap();
    assert_eq!((t.dtype(), t.shape()), (safetensors::Dtype::F32, &[4usize, 3, 3, 3][..]));
    let t = st.tensor("1.num_batches_tracked").unwrap();
    assert_eq!((t.dtype(), t.shape()), (safetensors::Dtype::I64, &[][..]));
    assert_eq!(st.tensor("4.weight").unwrap().shape(), &[5, 64]);
}

#[test]
fn loading_says_exactly_what_does_not_match() {
    let gpu = gpu_or_skip!();
    let spec = normnet();
    let model = BatchModel::new(gpu, &spec, 2, 3).unwrap();
    let before = pollster::block_on(model.state_dict(0)).unwrap();
    let entries = spec.state_entries().unwrap();
    let values = spec.init_model(5, 0).unwrap();

    // Missing tensor.
    let bytes = encode_state(&entries[1..], &values[1..], None).unwrap();
    let e = model.load_safetensors(0, &bytes, "a.safetensors").unwrap_err().to_string();
    assert!(e.contains("a.safetensors") && e.contains("missing tensors [\"0.weight\"]"), "{e}");
    // Extra tensor.
    let mut more = entries.clone();
    more.push(StateEntry { name: "9.weight".into(), shape: vec![2], kind: TensorKind::Param });
    let mut more_values = values.clone();
    more_values.push(vec![0.0, 1.0]);
    let e = model.load_safetensors(0, &encode_state(&more, &more_values, None).unwrap(), "b").unwrap_err().to_string();
    assert!(e.contains("unexpected tensors [\"9.weight\"]"), "{e}");
    // Wrong shape.
    let mut bad = entries.clone();
    bad[7].shape = vec![5, 2, 32];
    let e = model.load_safetensors(0, &encode_state(&bad, &values, None).unwrap(), "c").unwrap_err().to_string();
    assert!(e.contains("4.weight has shape [5, 2, 32], expected [5, 64]"), "{e}");
    // Wrong dtype: the counter stored as float.
    let mut bad = entries.clone();
    bad[6].kind = TensorKind::Buffer;
    let e = model.load_safetensors(0, &encode_state(&bad, &values, None).unwrap(), "d").unwrap_err().to_string();
    assert!(e.contains("1.num_batches_tracked has dtype F32, expected I64"), "{e}");
    // Not safetensors at all.
    let e = model.load_safetensors(0, b"garbage", "e.safetensors").unwrap_err().to_string();
    assert!(e.contains("e.safetensors: not a safetensors file"), "{e}");
    // Nothing was loaded by the failed attempts.
    assert_eq!(pollster::block_on(model.state_dict(0)).unwrap(), before);
}

#[test]
fn load_dir_checks_the_model_count() {
    let gpu = gpu_or_skip!();
    let spec = normnet();
    let dir = tmpdir("count");
    BatchModel::new(gpu, &spec, 3, 1).unwrap().save_dir(&dir).unwrap();
    let e = BatchModel::new(gpu, &spec, 2, 1).unwrap().load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("model-2.safetensors") && e.contains("2 models"), "{e}");
    let four = BatchModel::new(gpu, &spec, 4, 1).unwrap();
    let before = pollster::block_on(four.state_dicts_batched()).unwrap();
    let e = four.load_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("model-3.safetensors"), "{e}");
    assert_eq!(pollster::block_on(four.state_dicts_batched()).unwrap(), before, "all-or-nothing");
    let _ = std::fs::remove_dir_all(&dir);
}
