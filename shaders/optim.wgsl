// Optimizer updates, in place, one invocation per parameter element. Hyper-parameters are
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
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;
@group(0) @binding(4) var<storage, read> hyper: array<SgdHyper>;
@group(0) @binding(5) var<storage, read> dead: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.numel) {
        return;
    }
    if (dead[i / p.per_model] != 0.0) {
        return;
    }
    let h = hyper[i / p.per_model];
    var d = grad[i];
    if (h.weight_decay != 0.0) {
        d += h.weight_decay * param[i];
    }
    if (h.momentum != 0.0) {
        var m = d;
        if (h.started != 0.0) {
            m = h.momentum * buf[i] + (1.0 - h.dampening) * d;
        }
        buf[i] = m;
        if (h.nesterov != 0.0) {
            d += h.momentum * m;
        } else {
            d = m;
        }
    }
    param[i] -= h.lr * d;
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

@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(5) var<storage, read> adam_hyper: array<AdamHyper>;
@group(0) @binding(6) var<storage, read> adam_dead: array<f32>;

@compute @workgroup_size(WG)
fn adam(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.numel) {
        return;
    }
    if (adam_dead[i / p.per_model] != 0.0) {
        return;
    }
    let h = adam_hyper[i / p.per_model];
    var w = param[i];
    var d = grad[i];
    if (h.weight_decay != 0.0) {
        if (h.decoupled != 0.0) {
            w *= 1.0 - h.lr * h.weight_decay;
        } else {
            d += h.weight_decay * w;
        }
    }
    let m = h.beta1 * exp_avg[i] + (1.0 - h.beta1) * d;
    let v = h.beta2 * exp_avg_sq[i] + (1.0 - h.beta2) * d * d;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / h.bc2_sqrt + h.eps;
    param[i] = w - (h.lr / h.bc1) * (m / denom);
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
