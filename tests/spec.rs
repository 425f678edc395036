//! ModelSpec parsing, shape inference and state-dict naming (no GPU needed).

use modelbatch::nn::{Layer, ModelSpec, TensorKind};

fn err(json: &str) -> String {
    ModelSpec::from_json(json).unwrap_err().to_string()
}

#[test]
fn lenet_is_torchmbs_lenet() {
    let spec = ModelSpec::lenet();
    let shapes = spec.shapes().unwrap();
    assert_eq!(shapes[0], vec![6, 24, 24]);
    assert_eq!(shapes[2], vec![6, 12, 12]);
    assert_eq!(shapes[5], vec![16, 4, 4]);
    assert_eq!(shapes[6], vec![256]);
    assert_eq!(shapes.last().unwrap(), &vec![10]);
    let names: Vec<(String, Vec<usize>)> =
        spec.state_entries().unwrap().into_iter().map(|e| (e.name, e.shape)).collect();
    let want: Vec<(&str, Vec<usize>)> = vec![
        ("layers.0.weight", vec![6, 1, 5, 5]),
        ("layers.0.bias", vec![6]),
        ("layers.3.weight", vec![16, 6, 5, 5]),
        ("layers.3.bias", vec![16]),
        ("classifier.0.weight", vec![120, 256]),
        ("classifier.0.bias", vec![120]),
        ("classifier.2.weight", vec![84, 120]),
        ("classifier.2.bias", vec![84]),
        ("classifier.4.weight", vec![10, 84]),
        ("classifier.4.bias", vec![10]),
    ];
    assert_eq!(names, want.into_iter().map(|(n, s)| (n.to_string(), s)).collect::<Vec<_>>());
    assert_eq!(ModelSpec::from_json("lenet").unwrap(), spec);
}

#[test]
fn options_follow_pytorch_names_and_defaults() {
    let spec = ModelSpec::from_json(
        r#"{"input": [3, 9, 11], "layers": [
            {"type": "conv2d", "out_channels": 6, "kernel_size": [3, 5], "stride": 2, "padding": [1, 2], "groups": 3, "bias": false},
            {"type": "batchnorm2d", "momentum": null, "eps": 0.001},
            {"type": "groupnorm", "num_groups": 2, "name": "gn"},
            {"type": "leaky_relu", "negative_slope": 0.2},
            {"type": "maxpool2d", "kernel_size": 2},
            {"type": "avgpool2d", "kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": false},
            {"type": "adaptive_avgpool2d", "output_size": [1, 2]},
            {"type": "dropout", "p": 0.25},
            {"type": "linear", "out_features": 4}
        ]}"#,
    )
    .unwrap();
    assert_eq!(
        spec.layers[0].layer,
        Layer::Conv2d {
            out_channels: 6,
            kernel_size: [3, 5],
            stride: [2, 2],
            padding: [1, 2],
            dilation: [1, 1],
            groups: 3,
            bias: false
        }
    );
    assert_eq!(
        spec.layers[1].layer,
        Layer::BatchNorm2d { eps: 0.001, momentum: None, affine: true, track_running_stats: true }
    );
    assert_eq!(
        spec.layers[4].layer,
        Layer::MaxPool2d { kernel_size: [2, 2], stride: [2, 2], padding: [0, 0], dilation: [1, 1] }
    );
    let shapes = spec.shapes().unwrap();
    assert_eq!(shapes[0], vec![6, 5, 6]);
    assert_eq!(shapes[4], vec![6, 2, 3]);
    assert_eq!(shapes[6], vec![6, 1, 2]);
    assert_eq!(shapes[8], vec![4]);
    let entries = spec.state_entries().unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.weight",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "gn.weight",
            "gn.bias",
            "8.weight",
            "8.bias"
        ]
    );
    assert_eq!(entries[0].shape, vec![6, 1, 3, 5]);
    assert_eq!(entries[5].kind, TensorKind::Counter);
    assert!(entries[5].shape.is_empty());
    assert_eq!(entries[8].shape, vec![4, 12], "implicit flatten: 6*1*2 features");
}

#[test]
fn errors_name_the_layer_and_the_problem() {
    let e = err(r#"{"input": [1, 28, 28], "layers": [{"type": "relu"}, {"type": "conv3d"}]}"#);
    assert!(e.contains("layer 1") && e.contains("unknown type \"conv3d\""), "{e}");
    let e = err(
        r#"{"input": [1, 28, 28], "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "strides": 2}]}"#,
    );
    assert!(e.contains("layer 0 (conv2d)") && e.contains("unknown option `strides`"), "{e}");
    let e = err(r#"{"input": [1, 4, 4], "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 5}]}"#);
    assert!(e.contains("layer 0 (conv2d)") && e.contains("does not fit"), "{e}");
    let e = err(
        r#"{"input": [3, 8, 8], "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 1, "groups": 2}]}"#,
    );
    assert!(e.contains("layer 0") && e.contains("divisible"), "{e}");
    let e = err(r#"{"input": [6, 8, 8], "layers": [{"type": "groupnorm", "num_groups": 4}]}"#);
    assert!(e.contains("layer 0 (groupnorm)") && e.contains("6 channels"), "{e}");
    let e = err(r#"{"input": [10], "layers": [{"type": "maxpool2d", "kernel_size": 2}]}"#);
    assert!(e.contains("layer 0 (maxpool2d)") && e.contains("image input"), "{e}");
    let e = err(r#"{"input": [10], "layers": [{"type": "linear"}]}"#);
    assert!(e.contains("missing option `out_features`"), "{e}");
    let e = err(r#"{"input": [10], "layers": [{"type": "linear", "out_features": -3}]}"#);
    assert!(e.contains("`out_features` must be a non-negative integer"), "{e}");
    let e = err(r#"{"input": [10], "layers": [{"type": "dropout", "p": 1.5}]}"#);
    assert!(e.contains("`p` must be in [0, 1)"), "{e}");
    let e = err(
        r#"{"input": [10], "layers": [{"type": "linear", "out_features": 3, "name": "a"}, {"type": "linear", "out_features": 3, "name": "a"}]}"#,
    );
    assert!(e.contains("layer 1") && e.contains("used twice"), "{e}");
    let e = err(r#"{"input": [1, 2], "layers": [{"type": "relu"}]}"#);
    assert!(e.contains("`input` must be"), "{e}");
    let e = err(r#"{"input": [4], "layers": []}"#);
    assert!(e.contains("`layers` is empty"), "{e}");
    let e = err(r#"{"input": [4], "layers": [{"type": "relu"}], "extra": 1}"#);
    assert!(e.contains("unknown top-level key `extra`"), "{e}");
    let e = err("{not json");
    assert!(e.contains("invalid JSON"), "{e}");
}

#[test]
fn mlp_spec_names_like_sequential() {
    let spec = ModelSpec::mlp(&[784, 128, 10]);
    let names: Vec<String> = spec.state_entries().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
}

#[test]
fn init_follows_pytorch_bounds_and_differs_per_model() {
    let spec = ModelSpec::from_json(
        r#"{"input": [2, 6, 6], "layers": [{"type": "conv2d", "out_channels": 3, "kernel_size": 3},
            {"type": "batchnorm2d"}, {"type": "flatten"}, {"type": "linear", "out_features": 5}]}"#,
    )
    .unwrap();
    let a = spec.init_model(0, 0).unwrap();
    let b = spec.init_model(0, 1).unwrap();
    let conv_bound = 1.0 / (2.0f32 * 9.0).sqrt();
    assert!(a[0].iter().all(|v| v.abs() <= conv_bound) && a[0].iter().any(|v| v.abs() > 0.5 * conv_bound));
    assert!(a[1].iter().all(|v| v.abs() <= conv_bound));
    assert_eq!(a[2], vec![1.0; 3], "bn weight");
    assert_eq!(a[3], vec![0.0; 3], "bn bias");
    assert_eq!(a[4], vec![0.0; 3], "running mean");
    assert_eq!(a[5], vec![1.0; 3], "running var");
    assert_eq!(a[6], vec![0.0], "num_batches_tracked");
    let lin_bound = 1.0 / (3.0f32 * 16.0).sqrt();
    assert!(a[7].iter().all(|v| v.abs() <= lin_bound));
    assert_ne!(a[0], b[0], "models start from different weights");
    assert_eq!(a, spec.init_model(0, 0).unwrap(), "seeded: reproducible");
}
