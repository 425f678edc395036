// 2-D convolution as implicit GEMM (no im2col buffer), PyTorch's Conv2d per model:
// x [G, N, C, H, W], w [G, O, C/groups, kh, kw], bias [G, O], y [G, N, O, OH, OW].
//
// Each of the three products is a batched GEMM over z = (model g, channel group grp); the
// Rust side (`src/ops/conv.rs`) splits z and the x tiles over several dispatches when they
// pass 65,535 workgroups (`p.z0`, `p.x0` are the offsets of this dispatch).
//   conv2d              rows (n, oh, ow)  x cols o (O/groups)         depth (c, ky, kx)
//   conv2d_grad_input   rows (n, h, w)    x cols c (C/groups)         depth (o, ky, kx)
//   conv2d_grad_weight  rows o (O/groups) x cols (c, ky, kx)          depth (n, oh, ow), split-K
//
// Register blocking as in linear.wgsl: one invocation owns a 4x4 block of outputs in four
// vec4 accumulators. The 4 entries along the memory-contiguous axis of the output (rows for
// the two data kernels, cols for the weight kernel) are strided by the workgroup width
// (index base + i * WGX + lid.x), so consecutive invocations read and write consecutive
// addresses for every load and store. Each invocation decomposes its 4 output positions once;
// the depth loop is nested (ky, kx, then the channel axis innermost), so the spatial index
// math and zero-padding checks are hoisted out of the innermost loop and there is no integer
// division in it. Out-of-range taps are loaded from a clamped address and masked by select.
// All index arithmetic is u32; "negative" coordinates wrap to huge values and fail `< H`.

struct Params {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    oh: u32,
    ow: u32,
    groups: u32,
    cg: u32,             // C / groups
    og: u32,             // O / groups
    kh: u32,
    kw: u32,
    s0: u32,
    s1: u32,
    p0: u32,
    p1: u32,
    d0: u32,
    d1: u32,
    flags: u32,          // bit 0: add bias (forward)
    splits: u32,         // grad_weight: depth splits (z = (g * groups + grp) * splits + s)
    x0: u32,             // first x tile of this dispatch
    z0: u32,             // first z of this dispatch
    rows_per_split: u32, // grad_weight: output rows (n, oh) per split
    total: u32,          // grad_weight: elements of dw (stride between split partials)
}

@group(0) @binding(0) var<uniform> p: Params;
// conv2d: x; grad_input: dy; grad_weight: dy; reduce: partial sums.
@group(0) @binding(1) var<storage, read> a_in: array<f32>;
// conv2d and grad_input: w; grad_weight: x.
@group(0) @binding(2) var<storage, read> b_in: array<f32>;
// reduce: dw.
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;
// conv2d: bias.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// grad_input: dx; grad_weight: dw or its partial sums.
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
// conv2d: y.
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;

override WGX: u32 = 64u;
override WGY: u32 = 1u;
const REDUCE_WG: u32 = 256u;

@compute @workgroup_size(WGX, WGY, 1)
fn conv2d(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + p.z0;
    let g = z / p.groups;
    let grp = z - g * p.groups;
    let ohw = p.oh * p.ow;
    let rows = p.n * ohw;
    let r0 = (wid.x + p.x0) * 4u * WGX + lid.x;
    let c0 = (wid.y * WGY + lid.y) * 4u;
    if (r0 >= rows || c0 >= p.og) {
        return;
    }
    let hw = p.h * p.w;
    let kk = p.kh * p.kw;
    // Rows past the edge are clamped for loading and dropped at the store.
    var xb: array<u32, 4>;
    var ih0: array<u32, 4>;
    var iw0: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        let m = min(r0 + i * WGX, rows - 1u);
        let n = m / ohw;
        let rem = m - n * ohw;
        let oy = rem / p.ow;
        let ox = rem - oy * p.ow;
        xb[i] = ((g * p.n + n) * p.c + grp * p.cg) * hw;
        ih0[i] = oy * p.s0 - p.p0;
        iw0[i] = ox * p.s1 - p.p1;
    }
    var wb: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        wb[j] = (g * p.o + grp * p.og + min(c0 + j, p.og - 1u)) * p.cg * kk;
    }
    var acc: array<vec4<f32>, 4>;
    for (var ky = 0u; ky < p.kh; ky++) {
        var hok: array<bool, 4>;
        var hoff: array<u32, 4>;
        for (var i = 0u; i < 4u; i++) {
            let ih = ih0[i] + ky * p.d0;
            hok[i] = ih < p.h;
            hoff[i] = xb[i] + ih * p.w;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            var ok: array<bool, 4>;
            var off: array<u32, 4>;
            for (var i = 0u; i < 4u; i++) {
                let iw = iw0[i] + kx * p.d1;
                ok[i] = hok[i] && iw < p.w;
                off[i] = select(0u, hoff[i] + iw, ok[i]);
            }
            if (!(ok[0] || ok[1] || ok[2] || ok[3])) {
                continue;
            }
            var wo = ky * p.kw + kx;
            for (var c = 0u; c < p.cg; c++) {
                let bv = vec4<f32>(b_in[wb[0] + wo], b_in[wb[1] + wo], b_in[wb[2] + wo], b_in[wb[3] + wo]);
                acc[0] += select(0.0, a_in[off[0]], ok[0]) * bv;
                acc[1] += select(0.0, a_in[off[1]], ok[1]) * bv;
                acc[2] += select(0.0, a_in[off[2]], ok[2]) * bv;
                acc[3] += select(0.0, a_in[off[3]], ok[3]) * bv;
                off[0] += hw;
                off[1] += hw;
                off[2] += hw;
                off[3] += hw;
                wo += kk;
            }
        }
    }
    var add = vec4<f32>(0.0);
    if ((p.flags & 1u) != 0u) {
        for (var j = 0u; j < 4u; j++) {
            if (c0 + j < p.og) {
                add[j] = bias[g * p.o + grp * p.og + c0 + j];
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let m = r0 + i * WGX;
        if (m >= rows) {
            break;
        }
        let n = m / ohw;
        let base = ((g * p.n + n) * p.o + grp * p.og + c0) * ohw + (m - n * ohw);
        let v = acc[i] + add;
        for (var j = 0u; j < 4u; j++) {
            if (c0 + j < p.og) {
                out4[base + j * ohw] = v[j];
            }
        }
    }
}

// dx[g, n, c, h, w] = sum over o of c's group, ky, kx with (h + p0 - ky*d0) = oh*s0 and
// (w + p1 - kx*d1) = ow*s1 inside the output of dy[g, n, o, oh, ow] * w[g, o, c_local, ky, kx].
@compute @workgroup_size(WGX, WGY, 1)
fn conv2d_grad_input(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + p.z0;
    let g = z / p.groups;
    let grp = z - g * p.groups;
    let hw = p.h * p.w;
    let ohw = p.oh * p.ow;
    let rows = p.n * hw;
    let r0 = (wid.x + p.x0) * 4u * WGX + lid.x;
    let c0 = (wid.y * WGY + lid.y) * 4u;
    if (r0 >= rows || c0 >= p.cg) {
        return;
    }
    let kk = p.kh * p.kw;
    var db: array<u32, 4>;
    var th: array<u32, 4>;
    var tw: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        let m = min(r0 + i * WGX, rows - 1u);
        let n = m / hw;
        let rem = m - n * hw;
        let y = rem / p.w;
        let x = rem - y * p.w;
        db[i] = ((g * p.n + n) * p.o + grp * p.og) * ohw;
        th[i] = y + p.p0;
        tw[i] = x + p.p1;
    }
    var wb: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        wb[j] = ((g * p.o + grp * p.og) * p.cg + min(c0 + j, p.cg - 1u)) * kk;
    }
    let wstep = p.cg * kk;
    var acc: array<vec4<f32>, 4>;
    for (var ky = 0u; ky < p.kh; ky++) {
        var hok: array<bool, 4>;
        var hoff: array<u32, 4>;
        for (var i = 0u; i < 4u; i++) {
            // t wraps past th when ky * d0 > th (a tap above the padded input).
            let t = th[i] - ky * p.d0;
            let q = t / p.s0;
            hok[i] = t <= th[i] && q * p.s0 == t && q < p.oh;
            hoff[i] = db[i] + q * p.ow;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            var ok: array<bool, 4>;
            var off: array<u32, 4>;
            for (var i = 0u; i < 4u; i++) {
                let t = tw[i] - kx * p.d1;
                let q = t / p.s1;
                ok[i] = hok[i] && t <= tw[i] && q * p.s1 == t && q < p.ow;
                off[i] = select(0u, hoff[i] + q, ok[i]);
            }
            if (!(ok[0] || ok[1] || ok[2] || ok[3])) {
                continue;
            }
            var wo = ky * p.kw + kx;
            for (var o = 0u; o < p.og; o++) {
                let bv = vec4<f32>(b_in[wb[0] + wo], b_in[wb[1] + wo], b_in[wb[2] + wo], b_in[wb[3] + wo]);
                acc[0] += select(0.0, a_in[off[0]], ok[0]) * bv;
                acc[1] += select(0.0, a_in[off[1]], ok[1]) * bv;
                acc[2] += select(0.0, a_in[off[2]], ok[2]) * bv;
                acc[3] += select(0.0, a_in[off[3]], ok[3]) * bv;
                off[0] += ohw;
                off[1] += ohw;
                off[2] += ohw;
                off[3] += ohw;
                wo += wstep;
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let m = r0 + i * WGX;
        if (m >= rows) {
            break;
        }
        let n = m / hw;
        let base = ((g * p.n + n) * p.c + grp * p.cg + c0) * hw + (m - n * hw);
        for (var j = 0u; j < 4u; j++) {
            if (c0 + j < p.cg) {
                out3[base + j * hw] = acc[i][j];
            }
        }
    }
}

// dw[g, o, c_local, ky, kx] = sum over (n, oh, ow) of dy[g, n, o, oh, ow] * x[g, n, c, ih, iw].
// The depth is split over p.splits workgroup slices (split-K: the output is small, the depth
// long); split s sums output rows (n, oh) in [s * rows_per_split, ...) and writes its partial
// at out3[s * total + ...]; conv2d_grad_weight_reduce adds the partials in a fixed order.
// With one split the kernel writes dw directly.
@compute @workgroup_size(WGX, WGY, 1)
fn conv2d_grad_weight(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + p.z0;
    let gg = z / p.splits;
    let s = z - gg * p.splits;
    let g = gg / p.groups;
    let grp = gg - g * p.groups;
    let kk = p.kh * p.kw;
    let cols = p.cg * kk;
    let k0 = (wid.x + p.x0) * 4u * WGX + lid.x;
    let o0 = (wid.y * WGY + lid.y) * 4u;
    if (k0 >= cols || o0 >= p.og) {
        return;
    }
    let hw = p.h * p.w;
    let ohw = p.oh * p.ow;
    var xc: array<u32, 4>;
    var dh: array<u32, 4>;
    var dw: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        let k = min(k0 + j * WGX, cols - 1u);
        let c = k / kk;
        let r = k - c * kk;
        let ky = r / p.kw;
        let kx = r - ky * p.kw;
        xc[j] = (grp * p.cg + c) * hw;
        dh[j] = ky * p.d0 - p.p0;
        dw[j] = kx * p.d1 - p.p1;
    }
    var dyo: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        dyo[i] = (grp * p.og + min(o0 + i, p.og - 1u)) * ohw;
    }
    let rbeg = s * p.rows_per_split;
    let rend = min(rbeg + p.rows_per_split, p.n * p.oh);
    var n = rbeg / p.oh;
    var oy = rbeg - n * p.oh;
    var acc: array<vec4<f32>, 4>;
    for (var r = rbeg; r < rend; r++) {
        let xn = (g * p.n + n) * p.c * hw;
        let dyn = (g * p.n + n) * p.o * ohw + oy * p.ow;
        var hok: array<bool, 4>;
        var hoff: array<u32, 4>;
        var iw: array<u32, 4>;
        for (var j = 0u; j < 4u; j++) {
            let ih = oy * p.s0 + dh[j];
            hok[j] = ih < p.h;
            hoff[j] = xn + xc[j] + ih * p.w;
            iw[j] = dw[j];
        }
        for (var ox = 0u; ox < p.ow; ox++) {
            var bv: vec4<f32>;
            for (var j = 0u; j < 4u; j++) {
                let ok = hok[j] && iw[j] < p.w;
                bv[j] = select(0.0, b_in[select(0u, hoff[j] + iw[j], ok)], ok);
                iw[j] += p.s1;
            }
            let d = dyn + ox;
            acc[0] += a_in[d + dyo[0]] * bv;
            acc[1] += a_in[d + dyo[1]] * bv;
            acc[2] += a_in[d + dyo[2]] * bv;
            acc[3] += a_in[d + dyo[3]] * bv;
        }
        oy += 1u;
        if (oy == p.oh) {
            oy = 0u;
            n += 1u;
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let o = o0 + i;
        if (o >= p.og) {
            break;
        }
        let base = s * p.total + (g * p.o + grp * p.og + o) * cols;
        for (var j = 0u; j < 4u; j++) {
            let k = k0 + j * WGX;
            if (k < cols) {
                out3[base + k] = acc[i][j];
            }
        }
    }
}

// dw[i] = sum over s of partial[s * total + i], s in order (deterministic).
@compute @workgroup_size(REDUCE_WG, 1, 1)
fn conv2d_grad_weight_reduce(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = gid.x + gid.y * nwg.x * REDUCE_WG;
    if (i >= p.total) {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        sum += a_in[s * p.total + i];
    }
    out2[i] = sum;
}
