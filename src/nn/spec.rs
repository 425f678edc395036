//! `ModelSpec`: a model described as data (JSON), shared by Rust, the CLI and JavaScript.
//!
//! `{"input": [C, H, W] or [F], "layers": [{"type": "conv2d", "out_channels": 6,
//! "kernel_size": 5}, ...]}`. Options use the PyTorch constructor's argument names; input
//! sizes (`in_channels`, `in_features`) are inferred. A layer's parameters are named
//! `<name>.weight`, `<name>.bias`, ... where `name` defaults to the layer's index, as in
//! `nn.Sequential`.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One layer's type and options.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// `nn.Conv2d`.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel (height, width).
        kernel_size: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Zero padding.
        padding: [usize; 2],
        /// Dilation.
        dilation: [usize; 2],
        /// Channel groups.
        groups: usize,
        /// Learnable bias.
        bias: bool,
    },
    /// `nn.Linear`.
    Linear {
        /// Output features.
        out_features: usize,
        /// Learnable bias.
        bias: bool,
    },
    /// `nn.BatchNorm2d`.
    BatchNorm2d {
        /// Added to the variance.
        eps: f32,
        /// Running-estimate factor; `None` for a cumulative average.
        momentum: Option<f32>,
        /// Learnable weight and bias.
        affine: bool,
        /// Keep running estimates (and use them in eval mode).
        track_running_stats: bool,
    },
    /// `nn.GroupNorm`.
    GroupNorm {
        /// Groups of channels.
        num_groups: usize,
        /// Added to the variance.
        eps: f32,
        /// Learnable weight and bias.
        affine: bool,
    },
    /// `nn.MaxPool2d`.
    MaxPool2d {
        /// Window.
        kernel_size: [usize; 2],
        /// Stride (defaults to the window).
        stride: [usize; 2],
        /// Padding.
        padding: [usize; 2],
        /// Dilation.
        dilation: [usize; 2],
    },
    /// `nn.AvgPool2d`.
    AvgPool2d {
        /// Window.
        kernel_size: [usize; 2],
        /// Stride (defaults to the window).
        stride: [usize; 2],
        /// Padding.
        padding: [usize; 2],
        /// Divide by the whole window, padding included.
        count_include_pad: bool,
    },
    /// `nn.AdaptiveAvgPool2d`.
    AdaptiveAvgPool2d {
        /// Output (height, width).
        output_size: [usize; 2],
    },
    /// `nn.ReLU`.
    Relu,
    /// `nn.LeakyReLU`.
    LeakyRelu {
        /// Slope for negative inputs.
        negative_slope: f32,
    },
    /// `nn.GELU` (exact).
    Gelu,
    /// `nn.SiLU`.
    Silu,
    /// `nn.Tanh`.
    Tanh,
    /// `nn.Sigmoid`.
    Sigmoid,
    /// `nn.Dropout`.
    Dropout {
        /// Probability of zeroing an element.
        p: f32,
    },
    /// `nn.Flatten` (everything after the sample axis).
    Flatten,
}

impl Layer {
    /// The JSON `type` of this layer.
    pub fn type_name(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "conv2d",
            Layer::Linear { .. } => "linear",
            Layer::BatchNorm2d { .. } => "batchnorm2d",
            Layer::GroupNorm { .. } => "groupnorm",
            Layer::MaxPool2d { .. } => "maxpool2d",
            Layer::AvgPool2d { .. } => "avgpool2d",
            Layer::AdaptiveAvgPool2d { .. } => "adaptive_avgpool2d",
            Layer::Relu => "relu",
            Layer::LeakyRelu { .. } => "leaky_relu",
            Layer::Gelu => "gelu",
            Layer::Silu => "silu",
            Layer::Tanh => "tanh",
            Layer::Sigmoid => "sigmoid",
            Layer::Dropout { .. } => "dropout",
            Layer::Flatten => "flatten",
        }
    }
}

/// A layer with its parameter-name prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    /// Prefix of the layer's parameter names (`"0"`, `"layers.3"`, ...).
    pub name: String,
    /// Type and options.
    pub layer: Layer,
}

/// A sequential model described as data.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Per-sample input shape: `[C, H, W]` for images or `[F]` for vectors.
    pub input: Vec<usize>,
    /// Layers in order.
    pub layers: Vec<LayerSpec>,
}

/// Most elements a spec may give one tensor: a layer's per-sample output or one model's
/// parameter (2^31). The kernels index tensors with `u32`, and the batched tensor (G models,
/// N samples) must still fit; specs over the cap are rejected when parsed, before anything
/// is allocated.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 31;

/// Elements of `shape` if at most [`MAX_TENSOR_ELEMENTS`] (checked: no overflow).
fn capped_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_TENSOR_ELEMENTS)
}

/// torchmb's test LeNet, with its PyTorch parameter names.
pub const LENET_JSON: &str = r#"{
  "input": [1, 28, 28],
  "layers": [
    {"type": "conv2d", "name": "layers.0", "out_channels": 6, "kernel_size": 5},
    {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "conv2d", "name": "layers.3", "out_channels": 16, "kernel_size": 5},
    {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "flatten"},
    {"type": "linear", "name": "classifier.0", "out_features": 120},
    {"type": "relu"},
    {"type": "linear", "name": "classifier.2", "out_features": 84},
    {"type": "relu"},
    {"type": "linear", "name": "classifier.4", "out_features": 10}
  ]
}"#;

struct Opts<'a> {
    index: usize,
    ty: &'a str,
    map: &'a Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Opts<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Usage(format!("model spec: layer {} ({}): {msg}", self.index, self.ty))
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize(&mut self, key: &'static str, default: Option<usize>) -> Result<usize> {
        match self.get(key) {
            None => default.ok_or_else(|| self.err(format!("missing option `{key}`"))),
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .map(|n| n as usize)
                .ok_or_else(|| self.err(format!("`{key}` must be a non-negative integer, got {v}"))),
        }
    }

    fn pair(&mut self, key: &'static str, default: Option<[usize; 2]>) -> Result<[usize; 2]> {
        match self.get(key) {
            None => default.ok_or_else(|| self.err(format!("missing option `{key}`"))),
            Some(Value::Array(a)) if a.len() == 2 => {
                let one = |v: &Value| v.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as usize);
                match (one(&a[0]), one(&a[1])) {
                    (Some(x), Some(y)) => Ok([x, y]),
                    _ => Err(self.err(format!("`{key}` must be an integer or a pair of integers, got {:?}", a))),
                }
            }
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .map(|n| [n as usize; 2])
                .ok_or_else(|| self.err(format!("`{key}` must be an integer or a pair of integers, got {v}"))),
        }
    }

    fn f32(&mut self, key: &'static str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => {
                v.as_f64().map(|x| x as f32).ok_or_else(|| self.err(format!("`{key}` must be a number, got {v}")))
            }
        }
    }

    fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(format!("`{key}` must be true or false, got {v}"))),
        }
    }

    fn finish(self) -> Result<()> {
        for key in self.map.keys() {
            if key != "type" && key != "name" && !self.used.contains(&key.as_str()) {
                return Err(self.err(format!(
                    "unknown option `{}` (expected one of {:?})",
                    key.escape_debug(),
                    self.used
                )));
            }
        }
        Ok(())
    }
}

fn positive(o: &Opts, key: &str, v: [usize; 2]) -> Result<()> {
    if v[0] == 0 || v[1] == 0 {
        return Err(o.err(format!("`{key}` must be at least 1, got {v:?}")));
    }
    Ok(())
}

fn parse_layer(index: usize, v: &Value) -> Result<LayerSpec> {
    let map = v.as_object().ok_or_else(|| Error::Usage(format!("model spec: layer {index} is not an object")))?;
    let ty = map
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Usage(format!("model spec: layer {index} has no string `type`")))?;
    let name = match map.get("name") {
        None | Some(Value::Null) => index.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => {
            return Err(Error::Usage(format!(
                "model spec: layer {index} ({}): `name` must be a string, got {other}",
                ty.escape_debug()
            )))
        }
    };
    let mut o = Opts { index, ty, map, used: Vec::new() };
    let layer = match ty {
        "conv2d" => {
            let kernel_size = o.pair("kernel_size", None)?;
            let stride = o.pair("stride", Some([1, 1]))?;
            let dilation = o.pair("dilation", Some([1, 1]))?;
            positive(&o, "kernel_size", kernel_size)?;
            positive(&o, "stride", stride)?;
            positive(&o, "dilation", dilation)?;
            let groups = o.usize("groups", Some(1))?;
            if groups == 0 {
                return Err(o.err("`groups` must be at least 1"));
            }
            let out_channels = o.usize("out_channels", None)?;
            if out_channels == 0 || out_channels % groups != 0 {
                return Err(o.err(format!("`out_channels` {out_channels} must be positive and divisible by groups {groups}")));
            }
            Layer::Conv2d {
                out_channels,
                kernel_size,
                stride,
                padding: o.pair("padding", Some([0, 0]))?,
                dilation,
                groups,
                bias: o.bool("bias", true)?,
            }
        }
        "linear" => {
            let out_features = o.usize("out_features", None)?;
            if out_features == 0 {
                return Err(o.err("`out_features` must be at least 1"));
            }
            Layer::Linear { out_features, bias: o.bool("bias", true)? }
        }
        "batchnorm2d" => {
            let momentum = match o.get("momentum") {
                None if map.contains_key("momentum") => None,
                None => Some(0.1),
                Some(v) => Some(v.as_f64().ok_or_else(|| o.err(format!("`momentum` must be a number or null, got {v}")))? as f32),
            };
            Layer::BatchNorm2d {
                eps: o.f32("eps", 1e-5)?,
                momentum,
                affine: o.bool("affine", true)?,
                track_running_stats: o.bool("track_running_stats", true)?,
            }
        }
        "groupnorm" => Layer::GroupNorm {
            num_groups: o.usize("num_groups", None)?,
            eps: o.f32("eps", 1e-5)?,
            affine: o.bool("affine", true)?,
        },
        "maxpool2d" | "avgpool2d" => {
            let kernel_size = o.pair("kernel_size", None)?;
            let stride = o.pair("stride", Some(kernel_size))?;
            positive(&o, "kernel_size", kernel_size)?;
            positive(&o, "stride", stride)?;
            let padding = o.pair("padding", Some([0, 0]))?;
            if ty == "maxpool2d" {
                let dilation = o.pair("dilation", Some([1, 1]))?;
                positive(&o, "dilation", dilation)?;
                Layer::MaxPool2d { kernel_size, stride, padding, dilation }
            } else {
                Layer::AvgPool2d { kernel_size, stride, padding, count_include_pad: o.bool("count_include_pad", true)? }
            }
        }
        "adaptive_avgpool2d" => {
            let output_size = o.pair("output_size", None)?;
            positive(&o, "output_size", output_size)?;
            Layer::AdaptiveAvgPool2d { output_size }
        }
        "relu" => Layer::Relu,
        "leaky_relu" => Layer::LeakyRelu { negative_slope: o.f32("negative_slope", 0.01)? },
        "gelu" => Layer::Gelu,
        "silu" => Layer::Silu,
        "tanh" => Layer::Tanh,
        "sigmoid" => Layer::Sigmoid,
        "dropout" => {
            let p = o.f32("p", 0.5)?;
            if !(0.0..1.0).contains(&p) {
                return Err(o.err(format!("`p` must be in [0, 1), got {p}")));
            }
            Layer::Dropout { p }
        }
        "flatten" => Layer::Flatten,
        other => {
            return Err(Error::Usage(format!(
                "model spec: layer {index}: unknown type {other:?} (expected conv2d, linear, batchnorm2d, groupnorm, \
                 maxpool2d, avgpool2d, adaptive_avgpool2d, relu, leaky_relu, gelu, silu, tanh, sigmoid, dropout, flatten)"
            )))
        }
    };
    o.finish()?;
    Ok(LayerSpec { name, layer })
}

impl ModelSpec {
    /// torchmb's test LeNet (PyTorch names `layers.0`, `layers.3`, `classifier.{0,2,4}`).
    pub fn lenet() -> ModelSpec {
        ModelSpec::from_json(LENET_JSON).expect("the built-in LeNet spec is valid")
    }

    /// An MLP `sizes[0] → sizes[1] → … → last` with ReLUs between linear layers, named as
    /// `nn.Sequential` names them.
    pub fn mlp(sizes: &[usize]) -> ModelSpec {
        let mut layers = Vec::new();
        for (i, &out) in sizes.iter().enumerate().skip(1) {
            layers.push(LayerSpec {
                name: layers.len().to_string(),
                layer: Layer::Linear { out_features: out, bias: true },
            });
            if i + 1 < sizes.len() {
                layers.push(LayerSpec { name: layers.len().to_string(), layer: Layer::Relu });
            }
        }
        ModelSpec { input: vec![sizes[0]], layers }
    }

    /// `"lenet"` or a JSON spec.
    pub fn from_json(text: &str) -> Result<ModelSpec> {
        if text.trim() == "lenet" || text.trim() == "\"lenet\"" {
            return Ok(ModelSpec::lenet());
        }
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::Usage(format!("model spec: invalid JSON: {e}")))?;
        ModelSpec::from_value(&v)
    }

    /// From an already-parsed JSON value.
    pub fn from_value(v: &Value) -> Result<ModelSpec> {
        let map = v
            .as_object()
            .ok_or_else(|| Error::Usage("model spec: expected a JSON object with `input` and `layers`".into()))?;
        for key in map.keys() {
            if key != "input" && key != "layers" {
                return Err(Error::Usage(format!(
                    "model spec: unknown top-level key `{}` (expected `input`, `layers`)",
                    key.escape_debug()
                )));
            }
        }
        let input: Vec<usize> = map
            .get("input")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter().map(|x| x.as_u64().filter(|&n| n > 0 && n <= u32::MAX as u64).map(|n| n as usize)).collect()
            })
            .filter(|v: &Vec<usize>| v.len() == 1 || v.len() == 3)
            .ok_or_else(|| {
                Error::Usage("model spec: `input` must be [C, H, W] or [F] with positive integers".into())
            })?;
        let layers = map
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Usage("model spec: `layers` must be an array".into()))?;
        if layers.is_empty() {
            return Err(Error::Usage("model spec: `layers` is empty".into()));
        }
        let layers = layers.iter().enumerate().map(|(i, l)| parse_layer(i, l)).collect::<Result<Vec<_>>>()?;
        let spec = ModelSpec { input, layers };
        spec.state_entries()?;
        Ok(spec)
    }

    /// Per-sample output shape of every layer (checks the whole spec, including that no
    /// output exceeds [`MAX_TENSOR_ELEMENTS`]); a `flatten` before the first linear layer is
    /// implicit.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        if capped_numel(&self.input).is_none() {
            return Err(Error::Usage(format!(
                "model spec: input {:?} has more than {MAX_TENSOR_ELEMENTS} elements",
                self.input
            )));
        }
        let mut s = self.input.clone();
        let mut out = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.layers.iter().enumerate() {
            let err = |m: String| Error::Usage(format!("model spec: layer {i} ({}): {m}", l.layer.type_name()));
            if !names.insert(l.name.clone()) {
                return Err(err(format!("name {:?} is used twice", l.name)));
            }
            let image = |s: &[usize]| -> Result<[usize; 3]> {
                match *s {
                    [c, h, w] => Ok([c, h, w]),
                    _ => Err(err(format!("needs an image input [C, H, W], got {s:?}"))),
                }
            };
            s = match &l.layer {
                Layer::Conv2d { out_channels, kernel_size, stride, padding, dilation, groups, .. } => {
                    let [c, h, w] = image(&s)?;
                    if c % groups != 0 {
                        return Err(err(format!("{c} input channels are not divisible by groups {groups}")));
                    }
                    let g = crate::graph::Conv2dGeom {
                        kernel: *kernel_size,
                        stride: *stride,
                        padding: *padding,
                        dilation: *dilation,
                        groups: *groups,
                    };
                    match (g.out_size(0, h), g.out_size(1, w)) {
                        (Some(oh), Some(ow)) => vec![*out_channels, oh, ow],
                        _ => return Err(err(format!("kernel {kernel_size:?} does not fit the input {s:?}"))),
                    }
                }
                Layer::Linear { out_features, .. } => vec![*out_features],
                Layer::BatchNorm2d { .. } => {
                    image(&s)?;
                    s
                }
                Layer::GroupNorm { num_groups, .. } => {
                    let [c, _, _] = image(&s)?;
                    if *num_groups == 0 || c % num_groups != 0 {
                        return Err(err(format!("{c} channels cannot be split into {num_groups} groups")));
                    }
                    s
                }
                Layer::MaxPool2d { kernel_size, stride, padding, dilation } => {
                    pooled(&image(&s)?, *kernel_size, *stride, *padding, *dilation).map_err(err)?
                }
                Layer::AvgPool2d { kernel_size, stride, padding, .. } => {
                    pooled(&image(&s)?, *kernel_size, *stride, *padding, [1, 1]).map_err(err)?
                }
                Layer::AdaptiveAvgPool2d { output_size } => {
                    let [c, _, _] = image(&s)?;
                    vec![c, output_size[0], output_size[1]]
                }
                Layer::Flatten => vec![s.iter().product()],
                _ => s,
            };
            if capped_numel(&s).is_none() {
                return Err(err(format!("output {s:?} has more than {MAX_TENSOR_ELEMENTS} elements")));
            }
            out.push(s.clone());
        }
        Ok(out)
    }
}

fn pooled(
    s: &[usize; 3],
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
) -> std::result::Result<Vec<usize>, String> {
    if pad[0] > k[0] / 2 || pad[1] > k[1] / 2 {
        return Err(format!("padding {pad:?} must be at most half the window {k:?}"));
    }
    let g = crate::graph::Pool2dGeom { kernel: k, stride, padding: pad, dilation: dil, count_include_pad: true };
    match (g.out_size(0, s[1]), g.out_size(1, s[2])) {
        (Some(oh), Some(ow)) => Ok(vec![s[0], oh, ow]),
        _ => Err(format!("window {k:?} does not fit the input {s:?}")),
    }
}
