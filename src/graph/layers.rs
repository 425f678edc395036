//! Builders for activations, convolution, pooling and normalisation nodes.

use super::{shape_str, DType, Graph, Op, TensorId};
use crate::error::{Error, Result};
use crate::graph::{Conv2dGeom, NormKind, Pool2dGeom, Unary};

impl Graph {
    /// A byte dataset resident on the GPU: `bytes` bytes packed four to a u32 (write it
    /// with [`crate::Plan::write_bytes`]).
    pub fn dataset(&mut self, name: &str, bytes: usize) -> Result<TensorId> {
        if bytes == 0 {
            return Err(Error::Shape(format!("dataset {name:?} is empty")));
        }
        Ok(self.push(Op::Data { name: name.to_string() }, vec![], vec![1, bytes.div_ceil(4)], DType::U32))
    }

    fn check_gather(&self, op: &str, data: TensorId, indices: TensorId) -> Result<()> {
        self.check_dtype(op, indices, DType::U32)?;
        if !matches!(self.node(data).op, Op::Data { .. })
            || self.shape(indices).len() != 2
            || self.shape(indices)[0] != self.models()
        {
            return Err(Error::Shape(format!(
                "{op}: needs a dataset and [G, N] u32 indices, got {} and {}",
                shape_str(self.shape(data)),
                shape_str(self.shape(indices))
            )));
        }
        Ok(())
    }

    /// Images `indices[g, n]` (each `image` shaped, e.g. `[1, 28, 28]`) of a byte dataset,
    /// normalised as `(p / 255 - mean) / std` → `[G, N, ...image]`.
    pub fn gather_images(
        &mut self,
        data: TensorId,
        indices: TensorId,
        image: &[usize],
        mean: f32,
        std: f32,
    ) -> Result<TensorId> {
        self.check_gather("gather_images", data, indices)?;
        let mut shape = self.shape(indices).to_vec();
        shape.extend_from_slice(image);
        Ok(self.push(Op::GatherImages { mean, std }, vec![data, indices], shape, DType::F32))
    }

    /// Labels `indices[g, n]` of a byte dataset → `[G, N]` u32.
    pub fn gather_labels(&mut self, labels: TensorId, indices: TensorId) -> Result<TensorId> {
        self.check_gather("gather_labels", labels, indices)?;
        let shape = self.shape(indices).to_vec();
        Ok(self.push(Op::GatherLabels, vec![labels, indices], shape, DType::U32))
    }

    fn image(&self, op: &str, x: TensorId) -> Result<[usize; 5]> {
        self.check_g(op, x)?;
        self.check_dtype(op, x, DType::F32)?;
        match *self.shape(x) {
            [g, n, c, h, w] => Ok([g, n, c, h, w]),
            ref s => Err(Error::Shape(format!("{op}: input must be [G, N, C, H, W], got {}", shape_str(s)))),
        }
    }

    /// An activation function applied elementwise.
    pub fn unary(&mut self, f: Unary, x: TensorId) -> Result<TensorId> {
        self.check_dtype(f.name(), x, DType::F32)?;
        let s = self.shape(x).to_vec();
        Ok(self.push(Op::Unary(f), vec![x], s, DType::F32))
    }

    /// `dy * f'(x)`.
    pub fn unary_grad(&mut self, f: Unary, dy: TensorId, x: TensorId) -> Result<TensorId> {
        self.same_shape(f.grad_name(), dy, x)?;
        let s = self.shape(dy).to_vec();
        Ok(self.push(Op::UnaryGrad(f), vec![dy, x], s, DType::F32))
    }

    /// Softmax (`log = false`) or log-softmax over the last axis.
    pub fn softmax(&mut self, x: TensorId, log: bool) -> Result<TensorId> {
        self.check_dtype("softmax", x, DType::F32)?;
        let s = self.shape(x).to_vec();
        if s.len() < 2 {
            return Err(Error::Shape(format!("softmax: input {} has no axis to normalise", shape_str(&s))));
        }
        Ok(self.push(Op::Softmax { log }, vec![x], s, DType::F32))
    }

    /// Gradient of softmax / log-softmax from the upstream gradient and the forward output.
    pub fn softmax_grad(&mut self, dy: TensorId, y: TensorId, log: bool) -> Result<TensorId> {
        self.same_shape("softmax_grad", dy, y)?;
        let s = self.shape(dy).to_vec();
        Ok(self.push(Op::SoftmaxGrad { log }, vec![dy, y], s, DType::F32))
    }

    fn check_seed(&self, op: &str, seed: TensorId) -> Result<()> {
        self.check_dtype(op, seed, DType::U32)?;
        if self.shape(seed) != [self.models(), 3] {
            return Err(Error::Shape(format!(
                "{op}: seed must be a [G, 3] u32 input (seed, step, element offset), got {}",
                shape_str(self.shape(seed))
            )));
        }
        Ok(())
    }

    /// Inverted dropout with probability `p`; `seed` is a `[G, 3]` u32 input holding each
    /// model's seed, the step number (write a new step each run for a new mask) and the
    /// index of this tensor's first element in the model's mask (0, or where a micro-batch
    /// of a larger batch starts, so its mask is that batch's).
    pub fn dropout(&mut self, x: TensorId, seed: TensorId, p: f32) -> Result<TensorId> {
        self.check_dtype("dropout", x, DType::F32)?;
        self.check_seed("dropout", seed)?;
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Shape(format!("dropout: p = {p} must be in [0, 1)")));
        }
        let s = self.shape(x).to_vec();
        Ok(self.push(Op::Dropout { p }, vec![x, seed], s, DType::F32))
    }

    /// Dropout's gradient: the same mask applied to `dy`.
    pub fn dropout_grad(&mut self, dy: TensorId, seed: TensorId, p: f32) -> Result<TensorId> {
        self.check_seed("dropout_grad", seed)?;
        let s = self.shape(dy).to_vec();
        Ok(self.push(Op::DropoutGrad { p }, vec![dy, seed], s, DType::F32))
    }

    /// 2-D convolution: x `[G, N, C, H, W]`, weight `[G, O, C/groups, kh, kw]`, bias `[G, O]`.
    pub fn conv2d(&mut self, x: TensorId, w: TensorId, bias: Option<TensorId>, geom: Conv2dGeom) -> Result<TensorId> {
        self.conv2d_with(x, w, bias, geom, false)
    }

    /// `relu(conv2d(x, w, bias))` in one kernel: the relu runs in the convolution's epilogue
    /// and the pre-activation is never stored. The same values and gradients as the two ops.
    pub fn conv2d_relu(
        &mut self,
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        geom: Conv2dGeom,
    ) -> Result<TensorId> {
        self.conv2d_with(x, w, bias, geom, true)
    }

    fn conv2d_with(
        &mut self,
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        geom: Conv2dGeom,
        relu: bool,
    ) -> Result<TensorId> {
        let [g, n, c, h, wd] = self.image("conv2d", x)?;
        self.check_g("conv2d", w)?;
        let ws = self.shape(w).to_vec();
        let groups = geom.groups.max(1);
        let ok = ws.len() == 5
            && c % groups == 0
            && ws[1] % groups == 0
            && ws[2] * groups == c
            && ws[3] == geom.kernel[0]
            && ws[4] == geom.kernel[1];
        if !ok {
            return Err(Error::Shape(format!(
                "conv2d: input {} and weight {} do not fit (weight must be [G, out, in/groups={}, {}, {}] with out divisible by groups={groups})",
                shape_str(self.shape(x)),
                shape_str(&ws),
                c / groups,
                geom.kernel[0],
                geom.kernel[1]
            )));
        }
        let (Some(oh), Some(ow)) = (geom.out_size(0, h), geom.out_size(1, wd)) else {
            return Err(Error::Shape(format!(
                "conv2d: kernel {:?} (dilation {:?}, padding {:?}) does not fit input {}",
                geom.kernel,
                geom.dilation,
                geom.padding,
                shape_str(self.shape(x))
            )));
        };
        let mut inputs = vec![x, w];
        if let Some(b) = bias {
            if self.shape(b) != [g, ws[1]] {
                return Err(Error::Shape(format!(
                    "conv2d: bias has shape {}, expected {}",
                    shape_str(self.shape(b)),
                    shape_str(&[g, ws[1]])
                )));
            }
            inputs.push(b);
        }
        Ok(self.push(Op::Conv2d { geom, bias: bias.is_some(), relu }, inputs, vec![g, n, ws[1], oh, ow], DType::F32))
    }

    /// Gradient of a convolution with respect to its input, of shape `x_shape`.
    pub fn conv2d_grad_input(
        &mut self,
        dy: TensorId,
        w: TensorId,
        x_shape: &[usize],
        geom: Conv2dGeom,
    ) -> Result<TensorId> {
        Ok(self.push(Op::Conv2dGradInput { geom }, vec![dy, w], x_shape.to_vec(), DType::F32))
    }

    /// Gradient of a convolution with respect to its weight, of shape `w_shape`.
    pub fn conv2d_grad_weight(
        &mut self,
        dy: TensorId,
        x: TensorId,
        w_shape: &[usize],
        geom: Conv2dGeom,
    ) -> Result<TensorId> {
        Ok(self.push(Op::Conv2dGradWeight { geom }, vec![dy, x], w_shape.to_vec(), DType::F32))
    }

    fn pool_out(&self, op: &str, x: TensorId, geom: &Pool2dGeom) -> Result<Vec<usize>> {
        let [g, n, c, h, w] = self.image(op, x)?;
        let pad_ok = 2 * geom.padding[0] <= geom.kernel[0] && 2 * geom.padding[1] <= geom.kernel[1];
        match (geom.out_size(0, h), geom.out_size(1, w)) {
            (Some(oh), Some(ow)) if pad_ok => Ok(vec![g, n, c, oh, ow]),
            _ => Err(Error::Shape(format!(
                "{op}: window {:?} (stride {:?}, padding {:?}, dilation {:?}) does not fit input {} (padding must be at most half the window)",
                geom.kernel,
                geom.stride,
                geom.padding,
                geom.dilation,
                shape_str(self.shape(x))
            ))),
        }
    }

    /// Max pooling over windows of `[G, N, C, H, W]`.
    pub fn maxpool2d(&mut self, x: TensorId, geom: Pool2dGeom) -> Result<TensorId> {
        let s = self.pool_out("maxpool2d", x, &geom)?;
        Ok(self.push(Op::MaxPool2d { geom }, vec![x], s, DType::F32))
    }

    /// Gradient of max pooling: `dy` routed to each window's first maximum of `x`.
    pub fn maxpool2d_grad(&mut self, dy: TensorId, x: TensorId, geom: Pool2dGeom) -> Result<TensorId> {
        let s = self.shape(x).to_vec();
        Ok(self.push(Op::MaxPool2dGrad { geom, relu: false }, vec![dy, x], s, DType::F32))
    }

    /// `relu_grad(maxpool2d_grad(dy, x), x)` in one kernel, where `x` is a relu output.
    pub fn maxpool2d_relu_grad(&mut self, dy: TensorId, x: TensorId, geom: Pool2dGeom) -> Result<TensorId> {
        let s = self.shape(x).to_vec();
        Ok(self.push(Op::MaxPool2dGrad { geom, relu: true }, vec![dy, x], s, DType::F32))
    }

    /// Average pooling over windows of `[G, N, C, H, W]`.
    pub fn avgpool2d(&mut self, x: TensorId, geom: Pool2dGeom) -> Result<TensorId> {
        let s = self.pool_out("avgpool2d", x, &geom)?;
        Ok(self.push(Op::AvgPool2d { geom }, vec![x], s, DType::F32))
    }

    /// Gradient of average pooling, of shape `x_shape`.
    pub fn avgpool2d_grad(&mut self, dy: TensorId, x_shape: &[usize], geom: Pool2dGeom) -> Result<TensorId> {
        Ok(self.push(Op::AvgPool2dGrad { geom }, vec![dy], x_shape.to_vec(), DType::F32))
    }

    /// Adaptive average pooling to `[oh, ow]` (PyTorch's windows: `floor(i*H/oh)` to
    /// `ceil((i+1)*H/oh)`).
    pub fn adaptive_avgpool2d(&mut self, x: TensorId, out: [usize; 2]) -> Result<TensorId> {
        let [g, n, c, _, _] = self.image("adaptive_avgpool2d", x)?;
        if out[0] == 0 || out[1] == 0 {
            return Err(Error::Shape(format!("adaptive_avgpool2d: output size {out:?} has a zero")));
        }
        Ok(self.push(Op::AdaptiveAvgPool2d, vec![x], vec![g, n, c, out[0], out[1]], DType::F32))
    }

    /// Gradient of adaptive average pooling, of shape `x_shape`.
    pub fn adaptive_avgpool2d_grad(&mut self, dy: TensorId, x_shape: &[usize]) -> Result<TensorId> {
        Ok(self.push(Op::AdaptiveAvgPool2dGrad, vec![dy], x_shape.to_vec(), DType::F32))
    }

    /// Statistics count `S` of a normalisation of `x`.
    fn stat_count(&self, op: &str, x: TensorId, kind: NormKind) -> Result<usize> {
        let [_, n, c, _, _] = self.image(op, x)?;
        match kind {
            NormKind::Batch => Ok(c),
            NormKind::Group(groups) if groups > 0 && c % groups == 0 => Ok(n * groups),
            NormKind::Group(groups) => Err(Error::Shape(format!(
                "{op}: {c} channels cannot be split into {groups} groups (input {})",
                shape_str(self.shape(x))
            ))),
        }
    }

    /// Mean, inverse standard deviation and biased variance of `x` per channel (batch) or
    /// per sample and group → `[G, 3, S]`.
    pub fn norm_stats(&mut self, x: TensorId, kind: NormKind, eps: f32) -> Result<TensorId> {
        let s = self.stat_count("norm_stats", x, kind)?;
        Ok(self.push(Op::NormStats { kind, eps }, vec![x], vec![self.models(), 3, s], DType::F32))
    }

    /// Statistics in the layout of [`Graph::norm_stats`] from running estimates `[G, C]`.
    pub fn running_stats(&mut self, mean: TensorId, var: TensorId, eps: f32) -> Result<TensorId> {
        self.same_shape("running_stats", mean, var)?;
        let s = self.shape(mean).to_vec();
        if s.len() != 2 {
            return Err(Error::Shape(format!("running_stats: estimates must be [G, C], got {}", shape_str(&s))));
        }
        Ok(self.push(Op::RunningStats { eps }, vec![mean, var], vec![s[0], 3, s[1]], DType::F32))
    }

    fn check_affine(&self, op: &str, x: TensorId, params: &[TensorId]) -> Result<()> {
        let c = self.shape(x)[2];
        for &p in params {
            if self.shape(p) != [self.models(), c] {
                return Err(Error::Shape(format!(
                    "{op}: per-channel parameter has shape {}, expected {}",
                    shape_str(self.shape(p)),
                    shape_str(&[self.models(), c])
                )));
            }
        }
        Ok(())
    }

    /// `(x - mean) * invstd`, then `* weight + bias` per channel if given.
    pub fn norm_apply(
        &mut self,
        x: TensorId,
        stats: TensorId,
        kind: NormKind,
        affine: Option<(TensorId, TensorId)>,
    ) -> Result<TensorId> {
        let s = self.stat_count("norm_apply", x, kind)?;
        if self.shape(stats) != [self.models(), 3, s] {
            return Err(Error::Shape(format!(
                "norm_apply: statistics have shape {}, expected {}",
                shape_str(self.shape(stats)),
                shape_str(&[self.models(), 3, s])
            )));
        }
        let mut inputs = vec![x, stats];
        if let Some((w, b)) = affine {
            self.check_affine("norm_apply", x, &[w, b])?;
            inputs.extend([w, b]);
        }
        let shape = self.shape(x).to_vec();
        Ok(self.push(Op::NormApply { kind, affine: affine.is_some() }, inputs, shape, DType::F32))
    }

    /// Gradient of [`Graph::norm_apply`] with respect to x.
    pub fn norm_grad(
        &mut self,
        dy: TensorId,
        x: TensorId,
        stats: TensorId,
        weight: Option<TensorId>,
        kind: NormKind,
        fixed: bool,
    ) -> Result<TensorId> {
        let mut inputs = vec![dy, x, stats];
        inputs.extend(weight);
        let shape = self.shape(x).to_vec();
        Ok(self.push(Op::NormGrad { kind, affine: weight.is_some(), fixed }, inputs, shape, DType::F32))
    }

    /// Batch-norm statistics `[G, 3, C]` of a batch summed in parts ([`Op::SumsStats`]):
    /// `sums` is `[xsum]` for the shift only, or `[xsum, dsum, dsq, gsum, gdot]`, each
    /// `[G, C]`; `count` values per channel over the whole batch.
    pub fn sums_stats(&mut self, sums: &[TensorId], eps: f32, count: usize) -> Result<TensorId> {
        let Some(&first) = sums.first() else {
            return Err(Error::Shape("sums_stats: needs the sums".into()));
        };
        let s = self.shape(first).to_vec();
        if s.len() != 2 || s[0] != self.models() || ![1, 5].contains(&sums.len()) || count == 0 {
            return Err(Error::Shape(format!(
                "sums_stats: expected 1 or 5 sums of shape [G, C] and a count, got {} of shape {}",
                sums.len(),
                shape_str(&s)
            )));
        }
        for &t in &sums[1..] {
            self.same_shape("sums_stats", first, t)?;
        }
        let op = Op::SumsStats { eps, count, shift: sums.len() == 1 };
        Ok(self.push(op, sums.to_vec(), vec![s[0], 3, s[1]], DType::F32))
    }

    /// Gradient of [`Graph::norm_apply`] (batch kind) with respect to x on statistics
    /// from [`Graph::sums_stats`], given the whole batch's `sum(dy)` and `sum(dy * x_hat)`.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_grad_sums(
        &mut self,
        dy: TensorId,
        x: TensorId,
        stats: TensorId,
        gsum: TensorId,
        gdot: TensorId,
        weight: Option<TensorId>,
        count: usize,
    ) -> Result<TensorId> {
        let c = self.stat_count("norm_grad_sums", x, NormKind::Batch)?;
        for t in [gsum, gdot] {
            if self.shape(t) != [self.models(), c] {
                return Err(Error::Shape(format!(
                    "norm_grad_sums: sums have shape {}, expected {}",
                    shape_str(self.shape(t)),
                    shape_str(&[self.models(), c])
                )));
            }
        }
        let mut inputs = vec![dy, x, stats, gsum, gdot];
        inputs.extend(weight);
        let shape = self.shape(x).to_vec();
        Ok(self.push(Op::NormGradSums { count, affine: weight.is_some() }, inputs, shape, DType::F32))
    }

    /// Gradient of the per-channel weight of [`Graph::norm_apply`]: `sum(dy * x_hat)` → `[G, C]`.
    pub fn norm_weight_grad(&mut self, dy: TensorId, x: TensorId, stats: TensorId, kind: NormKind) -> Result<TensorId> {
        let shape = vec![self.models(), self.shape(x)[2]];
        Ok(self.push(Op::NormWeightGrad { kind }, vec![dy, x, stats], shape, DType::F32))
    }
}
