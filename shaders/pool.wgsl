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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Shapes and window geometry are pipeline constants (one pipeline per pooling layer; N and G
// stay in the uniform): every division and loop bound below is then a constant, so index
// arithmetic compiles to multiplies and shifts and window loops unroll. On lavapipe this made
// the forward ~4x and the backward ~4-10x faster than the same code with uniform shapes.
override H: u32 = 1u;       // input height and width
override W: u32 = 1u;
override OH: u32 = 1u;      // output height and width
override OW: u32 = 1u;
override KH: u32 = 1u;      // window (unused by adaptive pooling)
override KW: u32 = 1u;
override SH: u32 = 1u;      // stride
override SW: u32 = 1u;
override PH: u32 = 0u;      // padding on each side
override PW: u32 = 0u;
override DH: u32 = 1u;      // dilation (max pooling only)
override DW: u32 = 1u;
override MODE: u32 = 0u;    // average pooling: 0 count_include_pad, 1 exclude padding, 2 adaptive;
                            // max pooling gradient: 1 also applies relu's derivative at x (fused)
override NY: u32 = 1u;      // backward: most outputs whose windows hold one input, per axis
override NX: u32 = 1u;

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
// and never chosen. This one reads x from binding a (forward), the next from b (gradient).
fn window_argmax_a(base: u32, oy: u32, ox: u32) -> Arg {
    let h0 = i32(oy * SH) - i32(PH);
    let w0 = i32(ox * SW) - i32(PW);
    var best = Arg(0.0, NONE);
    for (var ky = 0u; ky < KH; ky++) {
        let iy = h0 + i32(ky * DH);
        if (iy < 0 || iy >= i32(H)) {
            continue;
        }
        for (var kx = 0u; kx < KW; kx++) {
            let ix = w0 + i32(kx * DW);
            if (ix < 0 || ix >= i32(W)) {
                continue;
            }
            let at = u32(iy) * W + u32(ix);
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
    let h0 = i32(oy * SH) - i32(PH);
    let w0 = i32(ox * SW) - i32(PW);
    var best = Arg(0.0, NONE);
    for (var ky = 0u; ky < KH; ky++) {
        let iy = h0 + i32(ky * DH);
        if (iy < 0 || iy >= i32(H)) {
            continue;
        }
        for (var kx = 0u; kx < KW; kx++) {
            let ix = w0 + i32(kx * DW);
            if (ix < 0 || ix >= i32(W)) {
                continue;
            }
            let at = u32(iy) * W + u32(ix);
            let v = b[base + at];
            if (best.at == NONE || is_nan(v) || (!is_nan(best.value) && v > best.value)) {
                best = Arg(v, at);
            }
        }
    }
    return best;
}

// Output element i of the [planes, OH, OW] output as (ox, oy, plane).
fn out_coords(i: u32) -> vec3<u32> {
    let t = i / OW;
    return vec3<u32>(i % OW, t % OH, t / OH);
}

@compute @workgroup_size(WG)
fn maxpool2d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let o = out_coords(i);
    let best = window_argmax_a(o.z * H * W, o.y, o.x);
    // A window with no tap inside the input holds only padding: -inf.
    out[i] = select(best.value, bitcast<f32>(0xff800000u | (i & 0u)), best.at == NONE);
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
    let ix = i % W;
    let t = i / W;
    let iy = t % H;
    let plane = t / H;
    let me = iy * W + ix;
    let ry = reach(iy + PH, KH, SH, DH, OH);
    let rx = reach(ix + PW, KW, SW, DW, OW);
    let xbase = plane * H * W;
    let ybase = plane * OH * OW;
    var acc = 0.0;
    // Constant trip counts (the range [lo, hi] varies per invocation) keep SIMD adapters
    // from diverging on loop control: out-of-range candidates are masked.
    for (var jy = 0u; jy < NY; jy++) {
        let oy = ry.x + i32(jy);
        // With dilation only every DH-th window lands a tap on iy: skip the others early (a
        // shortcut only; the argmax test below never credits a window that misses iy).
        if (oy > ry.y || (DH > 1u && (iy + PH - u32(oy) * SH) % DH != 0u)) {
            continue;
        }
        for (var jx = 0u; jx < NX; jx++) {
            let ox = rx.x + i32(jx);
            if (ox > rx.y || (DW > 1u && (ix + PW - u32(ox) * SW) % DW != 0u)) {
                continue;
            }
            if (window_argmax_b(xbase, u32(oy), u32(ox)).at == me) {
                acc += a[ybase + u32(oy) * OW + u32(ox)];
            }
        }
    }
    if (MODE == 1u) {
        // relu_grad(acc, x) as the activation kernel computes it.
        acc = acc * select(0.0, 1.0, b[xbase + me] > 0.0);
    }
    out[i] = acc;
}

// The same gradient where the windows tile the input exactly (stride = window, no padding
// or dilation, H = OH * KH, W = OW * KW): one invocation per window finds its argmax once
// and writes all of its KH x KW inputs, instead of every input scanning its window. The
// values are bit for bit the general kernel's (0.0 + dy at the argmax, 0.0 elsewhere).
@compute @workgroup_size(WG)
fn maxpool2d_grad_window(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let o = out_coords(i);
    let ox = o.x;
    let oy = o.y;
    let xbase = o.z * H * W;
    let at = window_argmax_b(xbase, oy, ox).at;
    let dy = 0.0 + a[i];
    for (var ky = 0u; ky < KH; ky++) {
        let row = (oy * KH + ky) * W + ox * KW;
        for (var kx = 0u; kx < KW; kx++) {
            var v = select(0.0, dy, row + kx == at);
            if (MODE == 1u) {
                v = v * select(0.0, 1.0, b[xbase + row + kx] > 0.0);
            }
            out[xbase + row + kx] = v;
        }
    }
}

// ---- 2x2 max pooling, stride 2, 4 windows per invocation ----
//
// Where the windows tile the input (H = 2 OH, W = 2 OW) and OW is a multiple of 4, an
// invocation takes 4 consecutive windows of one output row: its inputs are 2 vec4 of each
// of 2 input rows, its outputs (or output gradients) one vec4. The Rust side binds only
// buffers of whole vec4s. Same values as the kernels above, bit for bit. (On lavapipe, whose
// loads and stores cost about as much per vec4 as per scalar: LeNet's poolings and their
// gradients several times faster.)
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

// One window's taps in row-major order (top left, top right, bottom left, bottom right):
// PyTorch's rule as in window_argmax_a, `at` the tap's index.
fn quad_argmax(v: vec4<f32>) -> Arg {
    var best = Arg(v.x, 0u);
    for (var k = 1u; k < 4u; k++) {
        let u = v[k];
        if (is_nan(u) || (!is_nan(best.value) && u > best.value)) {
            best = Arg(u, k);
        }
    }
    return best;
}

// The vec4 index of the top row of invocation i's windows (its first input).
fn quad_at(i: u32) -> u32 {
    let o = out_coords(i * 4u);
    return (o.z * H * W + 2u * o.y * W + 2u * o.x) / 4u;
}

// Window k of the 4 whose top rows are (t0, t1) and bottom rows (d0, d1).
fn quad_taps(t0: vec4<f32>, t1: vec4<f32>, d0: vec4<f32>, d1: vec4<f32>, k: u32) -> vec4<f32> {
    switch (k) {
        case 0u: {
            return vec4<f32>(t0.xy, d0.xy);
        }
        case 1u: {
            return vec4<f32>(t0.zw, d0.zw);
        }
        case 2u: {
            return vec4<f32>(t1.xy, d1.xy);
        }
        default: {
            return vec4<f32>(t1.zw, d1.zw);
        }
    }
}

@compute @workgroup_size(WG)
fn maxpool2d_2x2(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let at = quad_at(i);
    let w4 = W / 4u;
    let t0 = a4[at];
    let t1 = a4[at + 1u];
    let d0 = a4[at + w4];
    let d1 = a4[at + w4 + 1u];
    var y = vec4<f32>();
    for (var k = 0u; k < 4u; k++) {
        y[k] = quad_argmax(quad_taps(t0, t1, d0, d1, k)).value;
    }
    out4[i] = y;
}

// dx of 4 windows from their dy and x (MODE 1: times relu's derivative at x).
@compute @workgroup_size(WG)
fn maxpool2d_grad_2x2(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let at = quad_at(i);
    let w4 = W / 4u;
    let t0 = b4[at];
    let t1 = b4[at + 1u];
    let d0 = b4[at + w4];
    let d1 = b4[at + w4 + 1u];
    let dy = vec4<f32>(0.0) + a4[i];
    // dx of window k's taps, in the taps' order.
    var g: array<vec4<f32>, 4>;
    for (var k = 0u; k < 4u; k++) {
        let x = quad_taps(t0, t1, d0, d1, k);
        let best = quad_argmax(x).at;
        var v = select(vec4<f32>(0.0), vec4<f32>(dy[k]), vec4<u32>(0u, 1u, 2u, 3u) == vec4<u32>(best));
        if (MODE == 1u) {
            v = v * select(vec4<f32>(0.0), vec4<f32>(1.0), x > vec4<f32>(0.0));
        }
        g[k] = v;
    }
    out4[at] = vec4<f32>(g[0].xy, g[1].xy);
    out4[at + 1u] = vec4<f32>(g[2].xy, g[3].xy);
    out4[at + w4] = vec4<f32>(g[0].zw, g[1].zw);
    out4[at + w4 + 1u] = vec4<f32>(g[2].zw, g[3].zw);
}

// ---- average pooling (fixed windows or adaptive) ----

// Window of output `o` along one axis of input size `n` (output size `on`, window `k`,
// stride `s`, padding `pad`): (start, end) clamped to the input, and the divisor's length
// (padding included) as PyTorch computes them.
fn avg_window(o: u32, n: u32, on: u32, k: u32, s: u32, pad: u32) -> vec3<i32> {
    if (MODE == 2u) {
        let start = (o * n) / on;
        let end = ((o + 1u) * n + on - 1u) / on;
        return vec3<i32>(i32(start), i32(end), i32(end - start));
    }
    let start = i32(o * s) - i32(pad);
    let end = min(start + i32(k), i32(n + pad));
    return vec3<i32>(max(start, 0), min(end, i32(n)), end - start);
}

fn divisor(wy: vec3<i32>, wx: vec3<i32>) -> f32 {
    if (MODE == 0u) {
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
    let o = out_coords(i);
    let wy = avg_window(o.y, H, OH, KH, SH, PH);
    let wx = avg_window(o.x, W, OW, KW, SW, PW);
    let base = o.z * H * W;
    var acc = 0.0;
    for (var iy = wy.x; iy < wy.y; iy++) {
        let row = base + u32(iy) * W;
        for (var ix = wx.x; ix < wx.y; ix++) {
            acc += a[row + u32(ix)];
        }
    }
    out[i] = acc / divisor(wy, wx);
}

// Outputs along one axis whose window holds input position `pos`: [lo, hi].
fn avg_reach(pos: u32, n: u32, on: u32, k: u32, s: u32, pad: u32) -> vec2<i32> {
    if (MODE == 2u) {
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
    let ix = i % W;
    let t = i / W;
    let iy = t % H;
    let plane = t / H;
    let ry = avg_reach(iy, H, OH, KH, SH, PH);
    let rx = avg_reach(ix, W, OW, KW, SW, PW);
    let ybase = plane * OH * OW;
    var acc = 0.0;
    for (var jy = 0u; jy < NY; jy++) {
        let oy = ry.x + i32(jy);
        if (oy > ry.y) {
            continue;
        }
        let wy = avg_window(u32(oy), H, OH, KH, SH, PH);
        let row = ybase + u32(oy) * OW;
        for (var jx = 0u; jx < NX; jx++) {
            let ox = rx.x + i32(jx);
            if (ox > rx.y) {
                continue;
            }
            let wx = avg_window(u32(ox), W, OW, KW, SW, PW);
            acc += a[row + u32(ox)] / divisor(wy, wx);
        }
    }
    out[i] = acc;
}
