// Optimizer updates, in place, one invocation per 4 parameter elements (a vec4). Hyper-parameters are
// per model: row g of `hyper` holds model g's values, so no model's setting touches another.
// `dead[g] != 0` freezes model g: its parameters and optimizer state are left untouched
// (set by the `guard` kernel when model g's loss stops being finite).

struct Params {
    numel: u32,     // elements of the parameter tensor, all models
    per_model: u32, // elements per model
}

// SGD hyper-parameter row: PyTorch's torch.optim.SGD, one row per model.
struct SgdHyper {
    lr: f32,
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
    nesterov: f32,   // 1.0 when on
    started: f32,    // 0.0 before the first step: the momentum buffer is then set to the gradient
    _pad0: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 256u;

// The update rules on 4 elements of one model, shared by the multi-tensor kernels that
// `src/ops/optim.rs` generates (one dispatch updates up to 16 parameter tensors: each
// invocation finds its tensor, then applies the rule with the model's row; a vec4 whose
// elements belong to two models, or reach past the tensor, takes them one at a time).

struct Sgd4 {
    w: vec4<f32>,
    m: vec4<f32>,
}

// SGD: new weights and momentum buffer; the buffer is returned unchanged without momentum.
fn sgd_step(w: vec4<f32>, grad: vec4<f32>, buf: vec4<f32>, h: SgdHyper) -> Sgd4 {
    var d = grad;
    if (h.weight_decay != 0.0) {
        d += h.weight_decay * w;
    }
    var m = buf;
    if (h.momentum != 0.0) {
        m = d;
        if (h.started != 0.0) {
            m = h.momentum * buf + (1.0 - h.dampening) * d;
        }
        if (h.nesterov != 0.0) {
            d += h.momentum * m;
        } else {
            d = m;
        }
    }
    return Sgd4(w - h.lr * d, m);
}

// Adam / AdamW hyper-parameter row: PyTorch's torch.optim.Adam and AdamW, one row per model.
// The host writes the bias corrections of the model's current step t each step.
struct AdamHyper {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: f32,  // 1.0: AdamW (decay the weights), 0.0: Adam (L2 added to the gradient)
    bc1: f32,        // 1 - beta1^t
    bc2_sqrt: f32,   // sqrt(1 - beta2^t)
}

struct Adam4 {
    w: vec4<f32>,
    m: vec4<f32>,
    v: vec4<f32>,
}

// Adam: new weights, first and second moments.
fn adam_step(weight: vec4<f32>, grad: vec4<f32>, avg: vec4<f32>, avg_sq: vec4<f32>, h: AdamHyper) -> Adam4 {
    var w = weight;
    var d = grad;
    if (h.weight_decay != 0.0) {
        if (h.decoupled != 0.0) {
            w *= 1.0 - h.lr * h.weight_decay;
        } else {
            d += h.weight_decay * w;
        }
    }
    let m = h.beta1 * avg + (1.0 - h.beta1) * d;
    let v = h.beta2 * avg_sq + (1.0 - h.beta2) * d * d;
    let denom = sqrt(v) / h.bc2_sqrt + h.eps;
    return Adam4(w - (h.lr / h.bc1) * (m / denom), m, v);
}

// dead[g] = 1 once model g's loss is NaN or infinite; it never comes back to life.
@group(0) @binding(1) var<storage, read> guard_loss: array<f32>;
@group(0) @binding(2) var<storage, read_write> guard_dead: array<f32>;

@compute @workgroup_size(WG)
fn guard(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * WG;
    if (g >= p.numel) {
        return;
    }
    let bits = bitcast<u32>(guard_loss[g]);
    if ((bits & 0x7f800000u) == 0x7f800000u) {
        guard_dead[g] = 1.0;
    }
}

// Gradient accumulation over micro-batches: acc_dst[i] += acc_src[i] (p.per_model = 1), or
// acc_dst[i] = 0 (p.per_model = 0: clear).
@group(0) @binding(1) var<storage, read_write> acc_dst: array<f32>;
@group(0) @binding(2) var<storage, read> acc_src: array<f32>;

@compute @workgroup_size(WG)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.numel) {
        return;
    }
    acc_dst[i] = select(0.0, acc_dst[i] + acc_src[i], p.per_model != 0u);
}
