// Activation functions and their gradients (elementwise), softmax / log-softmax over the
// last axis and their gradients, and inverted dropout.
//
// The uniform holds four words whose meaning depends on the entry point:
//   unary, unary_grad:           n, func, alpha (f32 bits), unused
//   softmax_*, softmax_grad_*:   rows, cols, log (0 or 1), unused
//   dropout:                     per_model, first model of this dispatch, threshold, scale (f32 bits)
//
// `func` selects the activation: 0 relu, 1 leaky_relu(alpha), 2 gelu (exact, erf),
// 3 silu, 4 tanh, 5 sigmoid. 1-D grids fold into 2-D past 65,535 workgroups: the flat index
// is x + y * groups_x * WG (per-row workgroups: row = wg.x + wg.y * groups_x).

struct Params {
    w0: u32,
    w1: u32,
    w2: u32,
    w3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// unary / unary_grad / softmax / dropout input; softmax_grad: the forward output y.
@group(0) @binding(1) var<storage, read> x: array<f32>;
// Upstream gradient (unary_grad, softmax_grad); bound to a dummy elsewhere.
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// dropout: [G, 3] u32 (seed, step, element offset) per model.
@group(0) @binding(4) var<storage, read> seeds: array<u32>;

// Invocations per workgroup of the elementwise and one-row-per-invocation kernels.
override WG: u32 = 256u;
// Invocations per row of the one-workgroup-per-row softmax kernels (a power of two <= 256).
override RWG: u32 = 64u;

const SQRT1_2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;
const MAX_F32: f32 = 3.4028234663852886e38;

// ---------------------------------------------------------------------------------------
// Elementwise activations

// Upper tail of the standard normal, Q(v) = 1 - Phi(v) = erfc(v / sqrt 2) / 2, for v >= 0,
// with the Chebyshev fit of Numerical Recipes' erfcc (relative error < 1.2e-7 on the whole
// range). Computing the small tail directly avoids the cancellation of 1 - erf. v is
// clamped at 20, where the tail underflows to exactly 0, so no intermediate overflows.
fn normal_tail(v: f32) -> f32 {
    let z = min(v, 20.0) * SQRT1_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277))))))));
    return 0.5 * t * exp(poly);
}

// Standard normal CDF Phi(v).
fn normal_cdf(v: f32) -> f32 {
    let q = normal_tail(abs(v));
    return select(1.0 - q, q, v < 0.0);
}

// Standard normal density; exactly 0 past |v| = 20 (the clamp keeps v * v finite).
fn normal_pdf(v: f32) -> f32 {
    let c = clamp(v, -20.0, 20.0);
    return INV_SQRT_2PI * exp(-0.5 * c * c);
}

fn sigmoid(v: f32) -> f32 {
    // Stable for large |v|: never exponentiates a large positive number.
    if (v >= 0.0) {
        return 1.0 / (1.0 + exp(-v));
    }
    let e = exp(v);
    return e / (1.0 + e);
}

// tanh(v) for any finite v: tanh(±10) is ±1 in f32, and some drivers evaluate tanh through
// exp(2v), which overflows to inf / inf = NaN for large |v|.
fn tanh_safe(v: f32) -> f32 {
    return tanh(clamp(v, -10.0, 10.0));
}

fn f(v: f32) -> f32 {
    switch p.w1 {
        case 0u: { return max(v, 0.0); }
        case 1u: { return select(bitcast<f32>(p.w2) * v, v, v > 0.0); }
        case 2u: {
            // v * Phi(v), with the tail computed directly on each side.
            let q = normal_tail(abs(v));
            return select(v - v * q, v * q, v < 0.0);
        }
        case 3u: { return v * sigmoid(v); }
        case 4u: { return tanh_safe(v); }
        default: { return sigmoid(v); }
    }
}

fn df(v: f32) -> f32 {
    switch p.w1 {
        case 0u: { return select(0.0, 1.0, v > 0.0); }
        case 1u: { return select(bitcast<f32>(p.w2), 1.0, v > 0.0); }
        case 2u: { return normal_cdf(v) + v * normal_pdf(v); }
        case 3u: {
            let s = sigmoid(v);
            return s * (1.0 + v * (1.0 - s));
        }
        case 4u: {
            let t = tanh_safe(v);
            return 1.0 - t * t;
        }
        default: {
            let s = sigmoid(v);
            return s * (1.0 - s);
        }
    }
}

@compute @workgroup_size(WG)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < p.w0) {
        out[i] = f(x[i]);
    }
}

// out = dy * f'(x)
@compute @workgroup_size(WG)
fn unary_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < p.w0) {
        out[i] = dy[i] * df(x[i]);
    }
}

// ---------------------------------------------------------------------------------------
// Softmax / log-softmax over rows of `cols` values (p.w0 rows, p.w1 cols, p.w2 = log).
//
// The row maximum and the sum of exp(x - max) come from one pass ("online" softmax): the
// running sum is rescaled whenever the maximum grows. Partial (max, sum) pairs merge the
// same way. The running maximum starts at the lowest finite f32 (not -inf, so that merging
// two empty partials never computes -inf - -inf).

struct MaxSum {
    m: f32,
    s: f32,
}

fn ms_push(a: MaxSum, v: f32) -> MaxSum {
    if (v > a.m) {
        return MaxSum(v, a.s * exp(a.m - v) + 1.0);
    }
    return MaxSum(a.m, a.s + exp(v - a.m));
}

fn ms_merge(a: MaxSum, b: MaxSum) -> MaxSum {
    let m = max(a.m, b.m);
    return MaxSum(m, a.s * exp(a.m - m) + b.s * exp(b.m - m));
}

// One invocation per row (short rows).
@compute @workgroup_size(WG)
fn softmax_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.w0) {
        return;
    }
    let cols = p.w1;
    let base = row * cols;
    var ms = MaxSum(-MAX_F32, 0.0);
    for (var j = 0u; j < cols; j++) {
        ms = ms_push(ms, x[base + j]);
    }
    if (p.w2 != 0u) {
        let lse = log(ms.s);
        for (var j = 0u; j < cols; j++) {
            out[base + j] = (x[base + j] - ms.m) - lse;
        }
    } else {
        let inv = 1.0 / ms.s;
        for (var j = 0u; j < cols; j++) {
            out[base + j] = exp(x[base + j] - ms.m) * inv;
        }
    }
}

var<workgroup> red_m: array<f32, 256>;
var<workgroup> red_s: array<f32, 256>;

// One workgroup of RWG invocations per row (long rows): the invocations stride over the
// row and merge their partials in workgroup memory.
@compute @workgroup_size(RWG)
fn softmax_wg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    let valid = row < p.w0;
    let cols = p.w1;
    let base = row * cols;
    var ms = MaxSum(-MAX_F32, 0.0);
    if (valid) {
        for (var j = lid.x; j < cols; j += RWG) {
            ms = ms_push(ms, x[base + j]);
        }
    }
    red_m[lid.x] = ms.m;
    red_s[lid.x] = ms.s;
    workgroupBarrier();
    for (var stride = RWG / 2u; stride > 0u; stride /= 2u) {
        if (lid.x < stride) {
            let merged = ms_merge(MaxSum(red_m[lid.x], red_s[lid.x]), MaxSum(red_m[lid.x + stride], red_s[lid.x + stride]));
            red_m[lid.x] = merged.m;
            red_s[lid.x] = merged.s;
        }
        workgroupBarrier();
    }
    if (!valid) {
        return;
    }
    let m = red_m[0];
    let s = red_s[0];
    if (p.w2 != 0u) {
        let lse = log(s);
        for (var j = lid.x; j < cols; j += RWG) {
            out[base + j] = (x[base + j] - m) - lse;
        }
    } else {
        let inv = 1.0 / s;
        for (var j = lid.x; j < cols; j += RWG) {
            out[base + j] = exp(x[base + j] - m) * inv;
        }
    }
}

// Gradients from the forward output y (bound as `x`) and dy:
//   softmax:     dx = y * (dy - sum(dy * y))
//   log-softmax: dx = dy - exp(y) * sum(dy)
fn grad_term(k: u32) -> f32 {
    if (p.w2 != 0u) {
        return dy[k];
    }
    return dy[k] * x[k];
}

fn grad_write(k: u32, total: f32) {
    if (p.w2 != 0u) {
        out[k] = dy[k] - exp(x[k]) * total;
    } else {
        out[k] = x[k] * (dy[k] - total);
    }
}

@compute @workgroup_size(WG)
fn softmax_grad_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.w0) {
        return;
    }
    let cols = p.w1;
    let base = row * cols;
    var total = 0.0;
    for (var j = 0u; j < cols; j++) {
        total += grad_term(base + j);
    }
    for (var j = 0u; j < cols; j++) {
        grad_write(base + j, total);
    }
}

@compute @workgroup_size(RWG)
fn softmax_grad_wg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    let valid = row < p.w0;
    let cols = p.w1;
    let base = row * cols;
    var acc = 0.0;
    if (valid) {
        for (var j = lid.x; j < cols; j += RWG) {
            acc += grad_term(base + j);
        }
    }
    red_s[lid.x] = acc;
    workgroupBarrier();
    for (var stride = RWG / 2u; stride > 0u; stride /= 2u) {
        if (lid.x < stride) {
            red_s[lid.x] += red_s[lid.x + stride];
        }
        workgroupBarrier();
    }
    if (!valid) {
        return;
    }
    let total = red_s[0];
    for (var j = lid.x; j < cols; j += RWG) {
        grad_write(base + j, total);
    }
}

// ---------------------------------------------------------------------------------------
// Dropout: out = x * keep / (1 - p) (also its gradient, with dy bound as x).
//
// The keep decision for element i of model g is a pure function of (seed_g, step, i + offset_g):
// r = MurmurHash3_x86_32 of the three little-endian words (seed, step, i + offset) with hash seed 0,
// and the element is dropped when r < threshold = round(p * 2^32). Models never share a
// stream unless they share a seed row, and a model's mask does not depend on G.
// Grid: x, y fold the elements of one model; z is the model, offset by p.w1 (models are
// dispatched in chunks of at most 65,535).

fn rotl(v: u32, r: u32) -> u32 {
    return (v << r) | (v >> (32u - r));
}

// One 4-byte block of MurmurHash3_x86_32.
fn murmur_block(h: u32, block: u32) -> u32 {
    var k = block * 0xcc9e2d51u;
    k = rotl(k, 15u);
    k *= 0x1b873593u;
    let hh = rotl(h ^ k, 13u);
    return hh * 5u + 0xe6546b64u;
}

// MurmurHash3's finaliser (length 12 bytes mixed in first).
fn murmur_final(h0: u32) -> u32 {
    var h = h0 ^ 12u;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    h ^= h >> 16u;
    return h;
}

@compute @workgroup_size(WG)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let per_model = p.w0;
    if (i >= per_model) {
        return;
    }
    let g = p.w1 + gid.z;
    // The (seed, step) part of the hash: per model, the same for every element.
    let key = murmur_block(murmur_block(0u, seeds[3u * g]), seeds[3u * g + 1u]);
    let r = murmur_final(murmur_block(key, seeds[3u * g + 2u] + i));
    let k = g * per_model + i;
    out[k] = select(0.0, x[k] * bitcast<f32>(p.w3), r >= p.w2);
}
