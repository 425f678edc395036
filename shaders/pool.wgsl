// 2-D pooling over [G, N, C, H, W] and its gradients, PyTorch semantics (floor mode).
//
// Every (model, sample, channel) is an independent plane of H x W inputs and OH x OW outputs,
// so models never mix. One invocation per output element (forward) or per input element
// (backward). The backward passes are gathers: each input element visits the few outputs
// whose windows contain it and sums their contributions in increasing output order (the
// order PyTorch's CPU scatter adds them), so no atomics and no races.
// The grid folds into 2-D past 65,535 workgroups: flat index = x + y * groups_x * WG.
//
// Bindings: a = x (forward) or dy (backward), b = x for maxpool2d_grad, out = y or dx.

struct Params {
    total: u32,     // invocations: outputs (forward) or inputs (backward)
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,        // window; for adaptive pooling unused
    kw: u32,
    sh: u32,        // stride
    sw: u32,
    ph: u32,        // padding on each side
    pw: u32,
    dh: u32,        // dilation (max pooling only)
    dw: u32,
    mode: u32,      // average pooling: 0 count_include_pad, 1 exclude padding, 2 adaptive
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

const NONE: u32 = 0xffffffffu;

// NaN test on the bits: comparisons with NaN may be folded by drivers that assume no NaNs.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// ---- max pooling ----

struct Arg {
    value: f32,
    at: u32,        // offset of the chosen input in its plane (iy * W + ix); NONE if no tap is inside
}

// PyTorch's CPU rule over the in-bounds taps in row-major window order: a tap replaces the
// current choice when it is greater or NaN. Ties keep the first maximum; NaN propagates (the
// last NaN of the window is chosen); a window of -inf keeps its first tap. Padding is -inf
// and never chosen. `x` is read from binding `src` (a for the forward, b for the gradient).
fn window_argmax_a(base: u32, oy: u32, ox: u32) -> Arg {
    let h0 = i32(oy * p.sh) - i32(p.ph);
    let w0 = i32(ox * p.sw) - i32(p.pw);
    var best = Arg(0.0, NONE);
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = h0 + i32(ky * p.dh);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = w0 + i32(kx * p.dw);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let at = u32(iy) * p.w + u32(ix);
            let v = a[base + at];
            if (best.at == NONE || is_nan(v) || (!is_nan(best.value) && v > best.value)) {
                best = Arg(v, at);
            }
        }
    }
    return best;
}

// The same rule reading x from binding b (WGSL cannot pass storage arrays to functions).
fn window_argmax_b(base: u32, oy: u32, ox: u32) -> Arg {
    let h0 = i32(oy * p.sh) - i32(p.ph);
    let w0 = i32(ox * p.sw) - i32(p.pw);
    var best = Arg(0.0, NONE);
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = h0 + i32(ky * p.dh);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = w0 + i32(kx * p.dw);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let at = u32(iy) * p.w + u32(ix);
            let v = b[base + at];
            if (best.at == NONE || is_nan(v) || (!is_nan(best.value) && v > best.value)) {
                best = Arg(v, at);
            }
        }
    }
    return best;
}

@compute @workgroup_size(WG)
fn maxpool2d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let ox = i % p.ow;
    let t = i / p.ow;
    let oy = t % p.oh;
    let plane = t / p.oh;
    let best = window_argmax_a(plane * p.h * p.w, oy, ox);
    // A window with no tap inside the input holds only padding: -inf.
    out[i] = select(best.value, bitcast<f32>(0xff800000u), best.at == NONE);
}

// Outputs along one axis whose window can hold input position `pos` + pad (dilated window of
// `k` taps `d` apart, stride `s`, `n` outputs): [lo, hi], empty when lo > hi.
fn reach(pos_padded: u32, k: u32, s: u32, d: u32, n: u32) -> vec2<i32> {
    let span = (k - 1u) * d;
    var lo = 0u;
    if (pos_padded > span) {
        lo = (pos_padded - span + s - 1u) / s;
    }
    let hi = min(pos_padded / s, n - 1u);
    return vec2<i32>(i32(lo), i32(hi));
}

@compute @workgroup_size(WG)
fn maxpool2d_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let ix = i % p.w;
    let t = i / p.w;
    let iy = t % p.h;
    let plane = t / p.h;
    let me = iy * p.w + ix;
    let ry = reach(iy + p.ph, p.kh, p.sh, p.dh, p.oh);
    let rx = reach(ix + p.pw, p.kw, p.sw, p.dw, p.ow);
    let xbase = plane * p.h * p.w;
    let ybase = plane * p.oh * p.ow;
    var acc = 0.0;
    for (var oy = ry.x; oy <= ry.y; oy++) {
        // With dilation only every dh-th window lands a tap on iy: skip the others early (a
        // shortcut only; the argmax test below never credits a window that misses iy).
        if (p.dh > 1u && (iy + p.ph - u32(oy) * p.sh) % p.dh != 0u) {
            continue;
        }
        for (var ox = rx.x; ox <= rx.y; ox++) {
            if (p.dw > 1u && (ix + p.pw - u32(ox) * p.sw) % p.dw != 0u) {
                continue;
            }
            if (window_argmax_b(xbase, u32(oy), u32(ox)).at == me) {
                acc += a[ybase + u32(oy) * p.ow + u32(ox)];
            }
        }
    }
    out[i] = acc;
}

// ---- average pooling (fixed windows or adaptive) ----

// Window of output `o` along one axis of input size `n` (output size `on`, window `k`,
// stride `s`, padding `pad`): (start, end) clamped to the input, and the divisor's length
// (padding included) as PyTorch computes them.
fn avg_window(o: u32, n: u32, on: u32, k: u32, s: u32, pad: u32) -> vec3<i32> {
    if (p.mode == 2u) {
        let start = (o * n) / on;
        let end = ((o + 1u) * n + on - 1u) / on;
        return vec3<i32>(i32(start), i32(end), i32(end - start));
    }
    let start = i32(o * s) - i32(pad);
    let end = min(start + i32(k), i32(n + pad));
    return vec3<i32>(max(start, 0), min(end, i32(n)), end - start);
}

fn divisor(wy: vec3<i32>, wx: vec3<i32>) -> f32 {
    if (p.mode == 0u) {
        return f32(wy.z * wx.z);
    }
    return f32((wy.y - wy.x) * (wx.y - wx.x));
}

@compute @workgroup_size(WG)
fn avgpool2d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let ox = i % p.ow;
    let t = i / p.ow;
    let oy = t % p.oh;
    let plane = t / p.oh;
    let wy = avg_window(oy, p.h, p.oh, p.kh, p.sh, p.ph);
    let wx = avg_window(ox, p.w, p.ow, p.kw, p.sw, p.pw);
    let base = plane * p.h * p.w;
    var acc = 0.0;
    for (var iy = wy.x; iy < wy.y; iy++) {
        let row = base + u32(iy) * p.w;
        for (var ix = wx.x; ix < wx.y; ix++) {
            acc += a[row + u32(ix)];
        }
    }
    out[i] = acc / divisor(wy, wx);
}

// Outputs along one axis whose window holds input position `pos`: [lo, hi].
fn avg_reach(pos: u32, n: u32, on: u32, k: u32, s: u32, pad: u32) -> vec2<i32> {
    if (p.mode == 2u) {
        // start(o) <= pos  <=>  o < ceil((pos + 1) * on / n);  end(o) > pos  <=>  o >= floor(pos * on / n).
        let lo = (pos * on) / n;
        let hi = min(((pos + 1u) * on + n - 1u) / n, on) - 1u;
        return vec2<i32>(i32(lo), i32(hi));
    }
    return reach(pos + pad, k, s, 1u, on);
}

@compute @workgroup_size(WG)
fn avgpool2d_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let ix = i % p.w;
    let t = i / p.w;
    let iy = t % p.h;
    let plane = t / p.h;
    let ry = avg_reach(iy, p.h, p.oh, p.kh, p.sh, p.ph);
    let rx = avg_reach(ix, p.w, p.ow, p.kw, p.sw, p.pw);
    let ybase = plane * p.oh * p.ow;
    var acc = 0.0;
    for (var oy = ry.x; oy <= ry.y; oy++) {
        let wy = avg_window(u32(oy), p.h, p.oh, p.kh, p.sh, p.ph);
        let row = ybase + u32(oy) * p.ow;
        for (var ox = rx.x; ox <= rx.y; ox++) {
            let wx = avg_window(u32(ox), p.w, p.ow, p.kw, p.sw, p.pw);
            acc += a[row + u32(ox)] / divisor(wy, wx);
        }
    }
    out[i] = acc;
}
