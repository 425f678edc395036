// Cross-entropy (fused log-softmax + negative log-likelihood), its gradient, and top-k
// accuracy. logits [G, N, C], labels [G, N] (u32). A label >= C gives a NaN loss and counts
// as wrong rather than reading out of bounds.
//
// Per-model reductions use one workgroup per model: its invocations stride over the
// samples and combine their partial sums in workgroup memory. The model index is
// wg.x + wg.y * workgroups-in-x, so G may pass 65,535.

struct Params {
    g: u32,
    n: u32,
    c: u32,
    mode: u32,      // 0: none, 1: mean, 2: sum; for topk: 1 = fractions, 0 = counts
    n_k: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    ks: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> dloss: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

// log-sum-exp of one row, stable.
fn row_lse(row: u32) -> f32 {
    let base = row * p.c;
    var m = logits[base];
    for (var j = 1u; j < p.c; j++) {
        m = max(m, logits[base + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < p.c; j++) {
        s += exp(logits[base + j] - m);
    }
    return m + log(s);
}

// A quiet NaN made at run time: WGSL forbids NaN and infinity in constant expressions, and
// Tint (Chrome, Dawn) rejects `bitcast<f32>(0x7fc00000u)` written as a constant.
fn f32_nan(label: u32) -> f32 {
    return bitcast<f32>(0x7fc00000u | (label & 0u));
}

fn row_loss(row: u32) -> f32 {
    let label = labels[row];
    if (label >= p.c) {
        return f32_nan(label);
    }
    return row_lse(row) - logits[row * p.c + label];
}

// mode none: one loss per sample, one invocation per row.
@compute @workgroup_size(WG)
fn ce_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row < p.g * p.n) {
        out[row] = row_loss(row);
    }
}

// mode mean/sum: one workgroup per model.
@compute @workgroup_size(WG)
fn ce_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wg.x + wg.y * nwg.x;
    var acc = 0.0;
    if (g < p.g) {
        for (var i = lid.x; i < p.n; i += WG) {
            acc += row_loss(g * p.n + i);
        }
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid.x < stride) {
            partial[lid.x] += partial[lid.x + stride];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u && g < p.g) {
        var total = partial[0];
        if (p.mode == 1u) {
            total /= f32(p.n);
        }
        out[g] = total;
    }
}

// d logits = (softmax - onehot(label)) * upstream, one invocation per row.
@compute @workgroup_size(WG)
fn ce_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.g * p.n) {
        return;
    }
    var up: f32;
    if (p.mode == 0u) {
        up = dloss[row];
    } else if (p.mode == 1u) {
        up = dloss[row / p.n] / f32(p.n);
    } else {
        up = dloss[row / p.n];
    }
    let lse = row_lse(row);
    let label = labels[row];
    let base = row * p.c;
    // An out-of-range label has a NaN loss: its gradient is NaN too, never a silent push.
    if (label >= p.c) {
        up = f32_nan(label);
    }
    for (var j = 0u; j < p.c; j++) {
        var v = exp(logits[base + j] - lse);
        if (j == label) {
            v -= 1.0;
        }
        out[base + j] = v * up;
    }
}

// Top-k accuracy, one workgroup per model: a sample is correct for k when fewer than k
// logits beat its label's logit (NaN logits beat everything; a NaN label logit never wins).
var<workgroup> hits: array<u32, WG>;

// NaN test on the bits: comparisons with NaN may be folded by drivers that assume no NaNs.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

@compute @workgroup_size(WG)
fn topk(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = wg.x + wg.y * nwg.x;
    var mine: array<u32, 8>;
    if (g < p.g) {
        for (var i = lid.x; i < p.n; i += WG) {
            let row = g * p.n + i;
            let label = labels[row];
            // rank = p.c is never below any k (k <= C): an out-of-range label or a NaN label
            // logit is never correct, not even for k = C.
            var rank = p.c;
            if (label < p.c && !is_nan(logits[row * p.c + label])) {
                let base = row * p.c;
                let xl = logits[base + label];
                rank = 0u;
                for (var j = 0u; j < p.c; j++) {
                    let v = logits[base + j];
                    if (j != label && (is_nan(v) || v > xl)) {
                        rank += 1u;
                    }
                }
            }
            for (var t = 0u; t < p.n_k; t++) {
                if (rank < p.ks[t / 4u][t % 4u]) {
                    mine[t] += 1u;
                }
            }
        }
    }
    for (var t = 0u; t < p.n_k; t++) {
        hits[lid.x] = mine[t];
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
            if (lid.x < stride) {
                hits[lid.x] += hits[lid.x + stride];
            }
            workgroupBarrier();
        }
        if (lid.x == 0u && g < p.g) {
            var v = f32(hits[0]);
            if (p.mode == 1u) {
                v /= f32(p.n);
            }
            out[g * p.n_k + t] = v;
        }
        workgroupBarrier();
    }
}
