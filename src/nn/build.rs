//! Turning a [`ModelSpec`] into graph nodes, and PyTorch's default initialisation of its
//! parameters.

use crate::error::{Error, Result};
use crate::graph::{Conv2dGeom, DType, Graph, NormKind, Pool2dGeom, TensorId, Unary};
use crate::nn::init::Rng;
use crate::nn::spec::{Layer, ModelSpec, MAX_TENSOR_ELEMENTS};
use crate::plan::Update;

/// Training mode (batch statistics, dropout on) or evaluation mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics, running-estimate updates, dropout.
    Train,
    /// Running estimates, no dropout.
    Eval,
}

/// Kind of a named model tensor in a state dict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// A trainable parameter (f32).
    Param,
    /// A float buffer (`running_mean`, `running_var`).
    Buffer,
    /// `num_batches_tracked`: an int64 scalar in PyTorch, kept as one f32 per model here.
    Counter,
}

/// One entry of a model's state dict.
#[derive(Clone, Debug, PartialEq)]
pub struct StateEntry {
    /// PyTorch name (`layers.0.weight`).
    pub name: String,
    /// Per-model shape (`[]` for the counter).
    pub shape: Vec<usize>,
    /// Parameter, buffer or counter.
    pub kind: TensorKind,
}

impl StateEntry {
    /// Elements per model.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Per-model shape as stored in the graph (the counter is `[1]`).
    pub fn graph_shape(&self) -> Vec<usize> {
        if self.shape.is_empty() {
            vec![1]
        } else {
            self.shape.clone()
        }
    }
}

/// What [`ModelSpec::build`] added to a graph.
#[derive(Clone, Debug)]
pub struct Built {
    /// Output of the last layer, `[G, N, ...]`.
    pub output: TensorId,
    /// Every state-dict tensor, in state-dict order, with its graph tensor.
    pub state: Vec<(StateEntry, TensorId)>,
    /// In-place updates the training step must run (BatchNorm running estimates).
    pub updates: Vec<Update>,
    /// Dropout seed inputs (`[G, 3]` u32: seed, step, element offset), one per dropout layer.
    pub dropout_seeds: Vec<TensorId>,
    /// Elements per sample of each dropout layer's input (a micro-batch starting at sample
    /// s has element offset `s * elems`).
    pub dropout_sample_elems: Vec<usize>,
    /// Each BatchNorm2d layer's `(input, statistics, output)`, in order.
    pub(crate) batch_norms: Vec<(TensorId, TensorId, TensorId)>,
}

impl Built {
    /// The trainable parameters, in state-dict order.
    pub fn params(&self) -> Vec<TensorId> {
        self.state.iter().filter(|(e, _)| e.kind == TensorKind::Param).map(|(_, t)| *t).collect()
    }
}

impl ModelSpec {
    /// Every tensor of a model's state dict, in PyTorch's order; errors if one has more than
    /// [`MAX_TENSOR_ELEMENTS`] elements.
    pub fn state_entries(&self) -> Result<Vec<StateEntry>> {
        let shapes = self.shapes()?;
        let mut prev = self.input.clone();
        let mut out = Vec::new();
        let mut entry = |name: &str, suffix: &str, shape: Vec<usize>, kind| {
            out.push(StateEntry { name: format!("{name}.{suffix}"), shape, kind })
        };
        for (l, shape) in self.layers.iter().zip(shapes) {
            match &l.layer {
                Layer::Conv2d { out_channels, kernel_size, groups, bias, .. } => {
                    let w = vec![*out_channels, prev[0] / groups, kernel_size[0], kernel_size[1]];
                    entry(&l.name, "weight", w, TensorKind::Param);
                    if *bias {
                        entry(&l.name, "bias", vec![*out_channels], TensorKind::Param);
                    }
                }
                Layer::Linear { out_features, bias } => {
                    let fan_in: usize = prev.iter().product();
                    entry(&l.name, "weight", vec![*out_features, fan_in], TensorKind::Param);
                    if *bias {
                        entry(&l.name, "bias", vec![*out_features], TensorKind::Param);
                    }
                }
                Layer::BatchNorm2d { affine, track_running_stats, .. } => {
                    let c = prev[0];
                    if *affine {
                        entry(&l.name, "weight", vec![c], TensorKind::Param);
                        entry(&l.name, "bias", vec![c], TensorKind::Param);
                    }
                    if *track_running_stats {
                        entry(&l.name, "running_mean", vec![c], TensorKind::Buffer);
                        entry(&l.name, "running_var", vec![c], TensorKind::Buffer);
                        entry(&l.name, "num_batches_tracked", vec![], TensorKind::Counter);
                    }
                }
                Layer::GroupNorm { affine: true, .. } => {
                    entry(&l.name, "weight", vec![prev[0]], TensorKind::Param);
                    entry(&l.name, "bias", vec![prev[0]], TensorKind::Param);
                }
                _ => {}
            }
            prev = shape;
        }
        for e in &out {
            if e.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
                return Err(Error::Usage(format!(
                    "model spec: {} of shape {:?} has more than {MAX_TENSOR_ELEMENTS} elements",
                    e.name, e.shape
                )));
            }
        }
        Ok(out)
    }

    /// Model `g`'s initial state as PyTorch's default initialisation draws it (weights
    /// kaiming-uniform with a = √5, i.e. U(±1/√fan_in), biases U(±1/√fan_in); norms weight 1,
    /// bias 0, running var 1), from the stream `seed + g`; in [`ModelSpec::state_entries`] order.
    pub fn init_model(&self, seed: u64, g: usize) -> Result<Vec<Vec<f32>>> {
        let entries = self.state_entries()?;
        let mut rng = Rng::new(seed.wrapping_add(g as u64));
        let mut out = Vec::with_capacity(entries.len());
        let mut bound = 0.0f64;
        for e in &entries {
            let n = e.numel().max(1);
            let suffix = e.name.rsplit('.').next().unwrap_or("");
            let layer = self
                .layers
                .iter()
                .find(|l| e.name.strip_suffix(suffix).and_then(|p| p.strip_suffix('.')) == Some(&l.name));
            let is_norm = matches!(layer.map(|l| &l.layer), Some(Layer::BatchNorm2d { .. } | Layer::GroupNorm { .. }));
            let values = match (suffix, is_norm) {
                ("weight", true) | ("running_var", _) => vec![1.0; n],
                ("bias", true) | ("running_mean", _) | ("num_batches_tracked", _) => vec![0.0; n],
                ("weight", false) => {
                    let fan_in: usize = e.shape[1..].iter().product();
                    bound = 1.0 / (fan_in as f64).sqrt();
                    (0..n).map(|_| rng.symmetric(bound)).collect()
                }
                // A conv/linear bias follows its weight and shares its fan-in bound.
                _ => (0..n).map(|_| rng.symmetric(bound)).collect(),
            };
            out.push(values);
        }
        Ok(out)
    }

    /// Appends the model to `graph` for input `x` (`[G, N, C, H, W]` or `[G, N, F]`).
    /// Parameters and buffers get their state-dict names, so plans built from this graph
    /// share them with a [`crate::nn::BatchModel`] by name.
    pub fn build(&self, graph: &mut Graph, x: TensorId, mode: Mode) -> Result<Built> {
        self.build_with(graph, x, mode, &[])
    }

    /// Whether evaluation normalises with batch statistics: a BatchNorm2d layer without
    /// running estimates (`track_running_stats: false`) uses each evaluation batch's, as in
    /// PyTorch, so the evaluation batch is part of what is evaluated.
    pub fn evaluates_with_batch_statistics(&self) -> bool {
        self.layers.iter().any(|l| matches!(l.layer, Layer::BatchNorm2d { track_running_stats: false, .. }))
    }

    /// Each BatchNorm2d layer's input shape `[C, H, W]`, in order.
    pub(crate) fn batch_norm_inputs(&self) -> Result<Vec<Vec<usize>>> {
        let shapes = self.shapes()?;
        let mut prev = self.input.clone();
        let mut out = Vec::new();
        for (l, shape) in self.layers.iter().zip(shapes) {
            if matches!(l.layer, Layer::BatchNorm2d { .. }) {
                out.push(prev.clone());
            }
            prev = shape;
        }
        Ok(out)
    }

    /// [`ModelSpec::build`], the BatchNorm2d layers given statistics in `stats` (one entry
    /// per layer, in order; `Some([G, 3, C])`: normalise with it and update no running
    /// estimates) normalising with those.
    pub(crate) fn build_with(
        &self,
        graph: &mut Graph,
        x: TensorId,
        mode: Mode,
        stats: &[Option<TensorId>],
    ) -> Result<Built> {
        let entries = self.state_entries()?;
        let mut state = Vec::new();
        let mut updates = Vec::new();
        let mut dropout_seeds = Vec::new();
        let mut dropout_sample_elems = Vec::new();
        let mut find = |graph: &mut Graph, name: &str| -> Result<Option<TensorId>> {
            let Some(e) = entries.iter().find(|e| e.name == name) else { return Ok(None) };
            let t = match e.kind {
                TensorKind::Param => graph.param(name, &e.graph_shape())?,
                _ => graph.state(name, &e.graph_shape())?,
            };
            state.push((e.clone(), t));
            Ok(Some(t))
        };
        let mut batch_norms = Vec::new();
        let mut h = x;
        let mut fused_relu = false;
        for (i, l) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("{}.{s}", l.name);
            // A relu right after a convolution or a linear layer runs in its epilogue.
            if std::mem::take(&mut fused_relu) {
                continue;
            }
            if matches!(l.layer, Layer::Linear { .. }) && graph.shape(h).len() > 3 {
                h = graph.flatten(h)?;
            }
            h = match &l.layer {
                Layer::Conv2d { kernel_size, stride, padding, dilation, groups, .. } => {
                    let w = find(graph, &p("weight"))?.expect("conv weight entry");
                    let b = find(graph, &p("bias"))?;
                    let geom = Conv2dGeom {
                        kernel: *kernel_size,
                        stride: *stride,
                        padding: *padding,
                        dilation: *dilation,
                        groups: *groups,
                    };
                    fused_relu = matches!(self.layers.get(i + 1).map(|n| &n.layer), Some(Layer::Relu));
                    if fused_relu {
                        graph.conv2d_relu(h, w, b, geom)?
                    } else {
                        graph.conv2d(h, w, b, geom)?
                    }
                }
                Layer::Linear { .. } => {
                    let w = find(graph, &p("weight"))?.expect("linear weight entry");
                    let b = find(graph, &p("bias"))?;
                    fused_relu = matches!(self.layers.get(i + 1).map(|n| &n.layer), Some(Layer::Relu));
                    if fused_relu {
                        graph.linear_relu(h, w, b)?
                    } else {
                        graph.linear(h, w, b)?
                    }
                }
                Layer::BatchNorm2d { eps, momentum, .. } => {
                    let w = find(graph, &p("weight"))?;
                    let b = find(graph, &p("bias"))?;
                    let mean = find(graph, &p("running_mean"))?;
                    let var = find(graph, &p("running_var"))?;
                    let count = find(graph, &p("num_batches_tracked"))?;
                    let given = stats.get(batch_norms.len()).copied().flatten();
                    let stats = match (given, mode, mean, var, count) {
                        (Some(given), ..) => given,
                        (None, Mode::Eval, Some(mean), Some(var), Some(_)) => graph.running_stats(mean, var, *eps)?,
                        (None, _, mean, var, count) => {
                            let stats = graph.norm_stats(h, NormKind::Batch, *eps)?;
                            if let (Mode::Train, Some(mean), Some(var), Some(count)) = (mode, mean, var, count) {
                                updates.push(Update::BatchNormRunning { stats, mean, var, count, momentum: *momentum });
                            }
                            stats
                        }
                    };
                    let y = graph.norm_apply(h, stats, NormKind::Batch, w.zip(b))?;
                    batch_norms.push((h, stats, y));
                    y
                }
                Layer::GroupNorm { num_groups, eps, .. } => {
                    let w = find(graph, &p("weight"))?;
                    let b = find(graph, &p("bias"))?;
                    let kind = NormKind::Group(*num_groups);
                    let stats = graph.norm_stats(h, kind, *eps)?;
                    graph.norm_apply(h, stats, kind, w.zip(b))?
                }
                Layer::MaxPool2d { kernel_size, stride, padding, dilation } => graph.maxpool2d(
                    h,
                    Pool2dGeom {
                        kernel: *kernel_size,
                        stride: *stride,
                        padding: *padding,
                        dilation: *dilation,
                        count_include_pad: true,
                    },
                )?,
                Layer::AvgPool2d { kernel_size, stride, padding, count_include_pad } => graph.avgpool2d(
                    h,
                    Pool2dGeom {
                        kernel: *kernel_size,
                        stride: *stride,
                        padding: *padding,
                        dilation: [1, 1],
                        count_include_pad: *count_include_pad,
                    },
                )?,
                Layer::AdaptiveAvgPool2d { output_size } => graph.adaptive_avgpool2d(h, *output_size)?,
                Layer::Relu => graph.unary(Unary::Relu, h)?,
                Layer::LeakyRelu { negative_slope } => graph.unary(Unary::LeakyRelu(*negative_slope), h)?,
                Layer::Gelu => graph.unary(Unary::Gelu, h)?,
                Layer::Silu => graph.unary(Unary::Silu, h)?,
                Layer::Tanh => graph.unary(Unary::Tanh, h)?,
                Layer::Sigmoid => graph.unary(Unary::Sigmoid, h)?,
                Layer::Dropout { p: prob } => match mode {
                    Mode::Eval => h,
                    Mode::Train => {
                        let seed = graph.input(&p("seed"), &[3], DType::U32)?;
                        dropout_seeds.push(seed);
                        dropout_sample_elems.push(graph.shape(h)[2..].iter().product());
                        graph.dropout(h, seed, *prob)?
                    }
                },
                Layer::Flatten => graph.flatten(h)?,
            };
        }
        Ok(Built { output: h, state, updates, dropout_seeds, dropout_sample_elems, batch_norms })
    }
}
