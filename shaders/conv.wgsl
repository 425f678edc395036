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
// vec4 accumulators. Workgroups are one-dimensional, along the memory-contiguous axis of the
// output; all invocations of a workgroup share one block of the other axis (wid.y), so the
// loads of that operand are uniform: the same address in every invocation.
//   conv2d, conv2d_grad_input: the block's 4 rows are 4 images at one spatial position, and
//     consecutive invocations take consecutive positions (consecutive addresses). The
//     position is decomposed once per invocation, and since the 4 rows share it, so are the
//     taps that land inside the input (a range of ky and of kx, computed once): the depth
//     loops (ky, kx, then the channel innermost) run over that range only, with no padding
//     checks and no integer division inside them.
//   conv2d_grad_weight: the block's 4 columns are taps (c, ky, kx) strided by the workgroup
//     width (k0 + j * WGX), so consecutive invocations take consecutive taps; each column's
//     tap is decomposed once, and out-of-range taps are loaded from a clamped address and
//     masked by select (u32 arithmetic: a "negative" coordinate wraps and fails `< H`).
//
// lavapipe stops an invocation's loops after 65,535 iterations in total; the Rust side keeps
// every invocation's loop count under that.

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
    flags: u32,          // bit 0: add bias, bit 1: relu (forward epilogue)
    splits: u32,         // grad_weight: depth splits (z = (g * groups + grp) * splits + s)
    x0: u32,             // first x tile of this dispatch
    z0: u32,             // first z of this dispatch
    rows_per_split: u32, // grad_weight: output rows (n, oh) per split
    total: u32,          // grad_weight: elements of dw (stride between split partials)
    dq0: u32,            // grad_input: d0 / s0, d0 % s0, d1 / s1, d1 % s1
    dr0: u32,
    dq1: u32,
    dr1: u32,
    dw_len: u32,         // reduce: the first dw_len sums go to dw (out2), the rest (a bias gradient) to out3
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
// grad_input: dx; grad_weight: dw or its partial sums; reduce: the bias gradient.
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
// conv2d: y.
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;

override WGX: u32 = 64u;
const REDUCE_WG: u32 = 256u;

// One invocation: output position (oh, ow) of 4 images (rows) x 4 output channels (cols).
// The 4 rows share their taps: the range of kernel rows and columns that land inside the
// input is computed once per invocation, and the loops run over it only (no padding checks).
@compute @workgroup_size(WGX, 1, 1)
fn conv2d(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + p.z0;
    let g = z / p.groups;
    let grp = z - g * p.groups;
    let ohw = p.oh * p.ow;
    let t = (wid.x + p.x0) * WGX + lid.x;
    let c0 = wid.y * 4u;
    if (t >= (p.n + 3u) / 4u * ohw || c0 >= p.og) {
        return;
    }
    let nb = t / ohw;
    let sp = t - nb * ohw;
    let oy = sp / p.ow;
    let ox = sp - oy * p.ow;
    let hw = p.h * p.w;
    let kk = p.kh * p.kw;
    // Images past the batch are clamped for loading and dropped at the store.
    var xb: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        xb[i] = ((g * p.n + min(nb * 4u + i, p.n - 1u)) * p.c + grp * p.cg) * hw;
    }
    var wb: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        wb[j] = (g * p.o + grp * p.og + min(c0 + j, p.og - 1u)) * p.cg * kk;
    }
    // Taps inside the input: ih = ih0 + ky * d0 in [0, H), likewise for the columns.
    let ih0 = i32(oy * p.s0) - i32(p.p0);
    let iw0 = i32(ox * p.s1) - i32(p.p1);
    let ky_lo = tap_lo(ih0, p.d0);
    let ky_end = tap_end(ih0, p.d0, p.h, p.kh);
    let kx_lo = tap_lo(iw0, p.d1);
    let kx_end = tap_end(iw0, p.d1, p.w, p.kw);
    var acc: array<vec4<f32>, 4>;
    for (var ky = ky_lo; ky < ky_end; ky++) {
        let row = u32(ih0 + i32(ky * p.d0)) * p.w;
        for (var kx = kx_lo; kx < kx_end; kx++) {
            var off = row + u32(iw0 + i32(kx * p.d1));
            var wo = ky * p.kw + kx;
            for (var c = 0u; c < p.cg; c++) {
                let bv = vec4<f32>(b_in[wb[0] + wo], b_in[wb[1] + wo], b_in[wb[2] + wo], b_in[wb[3] + wo]);
                acc[0] += a_in[xb[0] + off] * bv;
                acc[1] += a_in[xb[1] + off] * bv;
                acc[2] += a_in[xb[2] + off] * bv;
                acc[3] += a_in[xb[3] + off] * bv;
                off += hw;
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
        let n = nb * 4u + i;
        if (n >= p.n) {
            break;
        }
        let base = ((g * p.n + n) * p.o + grp * p.og + c0) * ohw + sp;
        var v = acc[i] + add;
        if ((p.flags & 2u) != 0u) {
            v = max(v, vec4<f32>(0.0));
        }
        for (var j = 0u; j < 4u; j++) {
            if (c0 + j < p.og) {
                out4[base + j * ohw] = v[j];
            }
        }
    }
}

// First tap index k with start + k * step >= 0.
fn tap_lo(start: i32, step: u32) -> u32 {
    return select(0u, (u32(-start) + step - 1u) / step, start < 0);
}

// One past the last tap index k < taps with start + k * step < size (at most taps).
fn tap_end(start: i32, step: u32, size: u32, taps: u32) -> u32 {
    return select(0u, min(taps, u32(i32(size) - 1 - start) / step + 1u), start < i32(size));
}

// dx[g, n, c, h, w] = sum over o of c's group, ky, kx with (h + p0 - ky*d0) = oh*s0 and
// (w + p1 - kx*d1) = ow*s1 inside the output of dy[g, n, o, oh, ow] * w[g, o, c_local, ky, kx].
// One invocation: input position (h, w) of 4 images x 4 input channels. The taps whose
// (h + p0 - ky*d0) lies in [0, (OH-1)*s0] form a range computed once; inside it the division
// by the stride is tracked as quotient and remainder, stepped by (d0 / s0, d0 % s0) per tap with
// a borrow, and a tap contributes when the remainder is 0 (always, with stride 1).
@compute @workgroup_size(WGX, 1, 1)
fn conv2d_grad_input(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + p.z0;
    let g = z / p.groups;
    let grp = z - g * p.groups;
    let hw = p.h * p.w;
    let ohw = p.oh * p.ow;
    let t = (wid.x + p.x0) * WGX + lid.x;
    let c0 = wid.y * 4u;
    if (t >= (p.n + 3u) / 4u * hw || c0 >= p.cg) {
        return;
    }
    let nb = t / hw;
    let sp = t - nb * hw;
    let y = sp / p.w;
    let x = sp - y * p.w;
    let kk = p.kh * p.kw;
    var db: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        db[i] = ((g * p.n + min(nb * 4u + i, p.n - 1u)) * p.o + grp * p.og) * ohw;
    }
    var wb: array<u32, 4>;
    for (var j = 0u; j < 4u; j++) {
        wb[j] = ((g * p.o + grp * p.og) * p.cg + min(c0 + j, p.cg - 1u)) * kk;
    }
    let wstep = p.cg * kk;
    // (y + p0 - ky * d0) in [0, (OH - 1) * s0]: ky from ky_lo (inclusive) to ky_end.
    let th = y + p.p0;
    let tw = x + p.p1;
    let ky_lo = tap_lo(i32((p.oh - 1u) * p.s0) - i32(th), p.d0);
    let ky_end = min(p.kh, th / p.d0 + 1u);
    let kx_lo = tap_lo(i32((p.ow - 1u) * p.s1) - i32(tw), p.d1);
    let kx_end = min(p.kw, tw / p.d1 + 1u);
    var qh = (th - ky_lo * p.d0) / p.s0;
    var rh = (th - ky_lo * p.d0) - qh * p.s0;
    let qw0 = (tw - kx_lo * p.d1) / p.s1;
    let rw0 = (tw - kx_lo * p.d1) - qw0 * p.s1;
    var acc: array<vec4<f32>, 4>;
    for (var ky = ky_lo; ky < ky_end; ky++) {
        if (rh == 0u) {
            var qw = qw0;
            var rw = rw0;
            for (var kx = kx_lo; kx < kx_end; kx++) {
                if (rw == 0u) {
                    var off = qh * p.ow + qw;
                    var wo = ky * p.kw + kx;
                    for (var o = 0u; o < p.og; o++) {
                        let bv = vec4<f32>(b_in[wb[0] + wo], b_in[wb[1] + wo], b_in[wb[2] + wo], b_in[wb[3] + wo]);
                        acc[0] += a_in[db[0] + off] * bv;
                        acc[1] += a_in[db[1] + off] * bv;
                        acc[2] += a_in[db[2] + off] * bv;
                        acc[3] += a_in[db[3] + off] * bv;
                        off += ohw;
                        wo += wstep;
                    }
                }
                let borrow = rw < p.dr1;
                rw = select(rw - p.dr1, rw + p.s1 - p.dr1, borrow);
                qw = qw - p.dq1 - select(0u, 1u, borrow);
            }
        }
        let borrow = rh < p.dr0;
        rh = select(rh - p.dr0, rh + p.s0 - p.dr0, borrow);
        qh = qh - p.dq0 - select(0u, 1u, borrow);
    }
    for (var i = 0u; i < 4u; i++) {
        let n = nb * 4u + i;
        if (n >= p.n) {
            break;
        }
        let base = ((g * p.n + n) * p.c + grp * p.cg + c0) * hw + sp;
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
@compute @workgroup_size(WGX, 1, 1)
fn conv2d_grad_weight(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + p.z0;
    let gg = z / p.splits;
    let s = z - gg * p.splits;
    let g = gg / p.groups;
    let grp = gg - g * p.groups;
    let kk = p.kh * p.kw;
    let cols = p.cg * kk;
    let k0 = (wid.x + p.x0) * 4u * WGX + lid.x;
    let o0 = wid.y * 4u;
    if (k0 >= cols || o0 >= p.og) {
        return;
    }
    let hw = p.h * p.w;
    let ohw = p.oh * p.ow;
    // The 4 columns' taps as vectors (component j: column k0 + j * WGX): no private array is
    // indexed in the loops below (one would live in local memory on some GPUs).
    var xc = vec4<u32>();
    var dh = vec4<u32>();
    var dw = vec4<u32>();
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
        let ih = vec4<u32>(oy * p.s0) + dh;
        let hok = ih < vec4<u32>(p.h);
        let hoff = vec4<u32>(xn) + xc + ih * p.w;
        var iw = dw;
        for (var ox = 0u; ox < p.ow; ox++) {
            let ok = hok & (iw < vec4<u32>(p.w));
            let at = select(vec4<u32>(0u), hoff + iw, ok);
            let bv = select(vec4<f32>(0.0), vec4<f32>(b_in[at.x], b_in[at.y], b_in[at.z], b_in[at.w]), ok);
            iw += vec4<u32>(p.s1);
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

// Sum i of the partial sums: dw (out2) for the first p.dw_len, then the bias gradient (out3)
// of a weight gradient that computes it too.
fn reduce_store(i: u32, sum: f32) {
    if (i < p.dw_len) {
        out2[i] = sum;
    } else {
        out3[i - p.dw_len] = sum;
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
    reduce_store(i, sum);
}

// The same sums for many splits (GPUs: a serial chain of thousands of loads per output is
// slow there): one workgroup of RL lanes per output, lane l adds splits l, l + RL, ... in
// order, then a fixed tree in workgroup memory (deterministic, another order than the
// serial kernel's).
override RL: u32 = 64u;  // a power of two, at most 256
var<workgroup> reduce_lanes: array<f32, 256>;

@compute @workgroup_size(RL, 1, 1)
fn conv2d_grad_weight_reduce_wide(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = wid.x + wid.y * nwg.x;
    var sum = 0.0;
    if (i < p.total) {
        for (var s = lid.x; s < p.splits; s += RL) {
            sum += a_in[s * p.total + i];
        }
    }
    reduce_lanes[lid.x] = sum;
    workgroupBarrier();
    for (var w = RL / 2u; w > 0u; w = w / 2u) {
        if (lid.x < w) {
            reduce_lanes[lid.x] += reduce_lanes[lid.x + w];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u && i < p.total) {
        reduce_store(i, reduce_lanes[0]);
    }
}

// ---------------------------------------------------------------------------------------------
// Direct kernels for stride 1 and dilation 1 (the Rust side picks them when the geometry
// allows, and the general kernels above otherwise).
//
// conv2d_direct computes a correlation y[n, o, oy, ox] = sum over the group's input channels
// c and taps (ky, kx) of x[n, c, oy + ky - p0, ox + kx - p1] * w(o, c, ky, kx), where taps
// outside x read zero. It serves the forward pass (w(o, c, ky, kx) = w[o, c, ky, kx]) and the
// input gradient, which is the same correlation of dy with the flipped kernel and the channel
// axes swapped (w(c, o, ky, kx) = w[o, c, kh-1-ky, kw-1-kx], padding kh-1-p0): the weight is
// addressed through strides (wrapping u32 arithmetic for the negative ones).
//
// One invocation: a strip of SW (8 or 12) consecutive output columns (a vec4 accumulator
// per 4 columns and output channel) of one image, for OB output channels. A workgroup shares
// one output row oy and one block of OB output channels (wid.y), its invocations walk (n,
// strip): the kernel rows that land inside the input are a workgroup-uniform range (padding
// rows are skipped, not masked), and the weights are the workgroup's. For each (c, ky) the
// strip's KW + SW - 1 input values are loaded once and reused for every kx, and each weight
// serves SW columns. (Measured on
// lavapipe: 4 output channels x 8 columns beat 8 x 4 by 1.3x, as many accumulators but fewer
// loads per multiply-add.) The workgroup first stages its weights in workgroup memory, a
// vec4 of output channels per tap; the input rows are loaded as vec4 (shifted into place
// where rows do not start at a multiple of 4: `XA`). On lavapipe, whose storage loads cost
// about as much per vec4 as per scalar, this took a LeNet step (G=64) from 1,349 to about
// 1,170 ms. Input channels whose weights pass the stage are summed by further dispatches,
// each starting from the sums y holds (flags bit 3; the last one adds the bias).
//
// conv2d_grad_weight_direct: dw(o, c, ky, kx) = sum over (n, oy, ox) of dy[n, o, oy, ox] *
// x[n, c, oy + ky - p0, ox + kx - p1]. One invocation owns GR <= 3 consecutive kernel rows
// (c, ky) (flattened: c * kh + ky, of one channel or of two) for OB output channels (GR x OB x KW accumulators); its workgroup
// shares the output-channel block (wid.y), so the dy loads are uniform. Along ox it slides a
// window of KW input values per channel; columns come 4 at a time, one vec4 of dy per output
// channel and one of x per input channel (`GA`): GR + OB vec4 loads per 4 positions for
// 4 * GR * KW * OB multiply-adds. The depth is split as in conv2d_grad_weight.

struct Direct {
    n: u32,
    ci: u32,      // input channels per model (all groups)
    ih: u32,
    iw: u32,
    co: u32,      // output channels per model
    oh: u32,
    ow: u32,
    groups: u32,
    cig: u32,     // input channels per group (the reduction)
    cog: u32,     // output channels per group
    kh: u32,
    p0: u32,      // input row = output row + ky - p0
    p1: u32,
    strips: u32,  // ceil(ow / SW)
    oblocks: u32, // ceil(cog / OB)
    flags: u32,   // bit 0: add bias, bit 1: relu (forward epilogue); bit 2: grad_weight splits along x;
                  // bit 3: conv2d_direct starts its sums from y
    w_oc: u32,    // weight strides: output channel, input channel, ky, kx (wrapping u32)
    w_ic: u32,
    w_ky: u32,
    w_kx: u32,
    x0: u32,      // first x tile of this dispatch
    z0: u32,      // first z of this dispatch
    w0: u32,      // weight offset of tap (0, 0) within a group
    wgrp: u32,    // weight elements per group
    splits: u32,  // grad_weight: depth splits (z = (g * groups + grp) * splits + s)
    rows_per_split: u32,
    total: u32,   // grad_weight: elements of dw
    ps: u32,      // grad_weight_tile: invocations sharing a task (partial sums per split)
    bias_at: u32, // grad_weight_tile with GB: offset of the bias gradient's sums in a partial
    c0: u32,      // conv2d_direct: the input channels of the group this dispatch sums,
    cn: u32,      // c0 .. c0 + cn (flags bit 3: adding to what y holds)
}

@group(0) @binding(0) var<uniform> q: Direct;

// Kernel width and output channels per invocation; MAX_KW and MAX_OB bound them.
override KW: u32 = 5u;
override OB: u32 = 4u;
// Output columns per invocation of conv2d_direct (a strip): 8 or 12 (`Corr::sw` in
// src/ops/conv.rs; the column shifts below assume at least 8).
override SW: u32 = 8u;
const MAX_KW: u32 = 8u;
const MAX_OB: u32 = 8u;

// x[row + ix] for a column ix of the input row starting at `row`, zero outside [0, iw)
// (a "negative" column wraps and fails the test).
fn direct_x(row: u32, ix: u32) -> f32 {
    return select(0.0, a_in[row + min(ix, q.iw - 1u)], ix < q.iw);
}

// Kernel rows [x, y) with 0 <= oy + ky - p0 < ih, for output row oy.
fn direct_rows(oy: u32) -> vec2<u32> {
    return vec2<u32>(select(0u, q.p0 - oy, oy < q.p0), min(q.kh, q.ih + q.p0 - oy));
}

// Weight offsets of tap (0, 0) for the OB output channels from o0 of dispatch row z; channels
// past the group are clamped for loading (and dropped at the store).
fn direct_weights(z: u32, o0: u32) -> array<u32, MAX_OB> {
    var wo: array<u32, MAX_OB>;
    for (var j = 0u; j < OB; j++) {
        wo[j] = z * q.wgrp + q.w0 + min(o0 + j, q.cog - 1u) * q.w_oc;
    }
    return wo;
}

// The input as vec4 (conv2d_direct: the Rust side binds only buffers of whole vec4s).
@group(0) @binding(1) var<storage, read> a4_in: array<vec4<f32>>;
// 1 where every input row starts at a multiple of 4 columns and the strips' windows too (iw
// and p1 multiples of 4): each vec4 of a row lies inside it or outside it.
override XA: u32 = 0u;
// With XA: bit k set where the window's vec4 k (columns col0 + 4k ..) lies outside the row
// for every strip of the dispatch (padding wider than 3 columns, a row narrower than the
// window): those are never loaded. (LeNet's conv2 input gradient loads 2 of its 5.)
override XSKIP: u32 = 0u;

// The weights of a conv2d_direct workgroup: tap (c, ky, kx) of the dispatch's input channels
// at ((c * kh + ky) * KW + kx) * ob4, its output channels o0 + 4h .. o0 + 4h + 3 at + h.
const DIRECT_W4: u32 = 512u;
var<workgroup> direct_w: array<vec4<f32>, DIRECT_W4>;

// Stages the weights of output channels o0 .. o0 + OB - 1 (model and group z) for the
// dispatch's input channels in direct_w. The barrier comes before any accumulator exists:
// llvmpipe runs a kernel with barriers as coroutines, and what lives across a barrier lives
// in memory (a barrier per channel chunk inside the loops made the kernel slower than no
// staging at all).
fn direct_stage(z: u32, o0: u32, lane: u32) {
    let ob4 = (OB + 3u) / 4u;
    let per_c = q.kh * KW;
    let wz = z * q.wgrp + q.w0 + q.c0 * q.w_ic;
    let last = q.cog - 1u;
    for (var e = lane; e < min(q.cn * per_c * ob4, DIRECT_W4); e += WGX) {
        let tap = e / ob4;
        let c = tap / per_c;
        let r = tap - c * per_c;
        let ky = r / KW;
        let wx = wz + c * q.w_ic + ky * q.w_ky + (r - ky * KW) * q.w_kx;
        let oc = o0 + (e - tap * ob4) * 4u;
        direct_w[e] = vec4<f32>(b_in[wx + min(oc, last) * q.w_oc], b_in[wx + min(oc + 1u, last) * q.w_oc],
                                b_in[wx + min(oc + 2u, last) * q.w_oc], b_in[wx + min(oc + 3u, last) * q.w_oc]);
    }
    workgroupBarrier();
}

// The vec4 of a4_in at element e (a multiple of 4), or anything where e is past the end.
fn direct_v4(e: u32) -> vec4<f32> {
    return a4_in[min(e >> 2u, arrayLength(&a4_in) - 1u)];
}

// Columns col .. col + 3 from the two aligned vec4s a, b holding them, shifted by s.
fn direct_shift(a: vec4<f32>, b: vec4<f32>, s: u32) -> vec4<f32> {
    let v = select(select(vec4<f32>(a.w, b.xyz), vec4<f32>(a.zw, b.xy), s == 2u), vec4<f32>(a.yzw, b.x), s == 1u);
    return select(v, a, s == 0u);
}

// The strip's input window of one row: columns col0 + 4k .. col0 + 4k + 3 in v[k] (k < 5;
// the first SW + KW - 1 columns are used), zero outside [0, iw).
struct DirectRow {
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
    v4: vec4<f32>,
}

// (Column indices wrap: a "negative" one fails `< iw`.)
fn direct_row(row: u32, col0: u32) -> DirectRow {
    // vec4s of the window: SW + KW - 1 columns.
    let nv = (SW + KW + 2u) / 4u;
    var r = DirectRow();
    if (XA == 1u) {
        let e = row + col0;
        if ((XSKIP & 1u) == 0u) {
            r.v0 = select(vec4<f32>(), direct_v4(e), col0 < q.iw);
        }
        if ((XSKIP & 2u) == 0u) {
            r.v1 = select(vec4<f32>(), direct_v4(e + 4u), col0 + 4u < q.iw);
        }
        if (nv > 2u && (XSKIP & 4u) == 0u) {
            r.v2 = select(vec4<f32>(), direct_v4(e + 8u), col0 + 8u < q.iw);
        }
        if (nv > 3u && (XSKIP & 8u) == 0u) {
            r.v3 = select(vec4<f32>(), direct_v4(e + 12u), col0 + 12u < q.iw);
        }
        if (nv > 4u && (XSKIP & 16u) == 0u) {
            r.v4 = select(vec4<f32>(), direct_v4(e + 16u), col0 + 16u < q.iw);
        }
        return r;
    }
    // The aligned vec4s from the multiple of 4 at or below the window's first element (an
    // arithmetic shift: that element may be "negative"), shifted by s, masked per column.
    let e0 = row + col0;
    let s = e0 & 3u;
    let a = bitcast<u32>(bitcast<i32>(e0 - s) >> 2u) << 2u;
    let u0 = direct_v4(a);
    let u1 = direct_v4(a + 4u);
    let u2 = direct_v4(a + 8u);
    var u3 = vec4<f32>();
    var u4 = vec4<f32>();
    var u5 = vec4<f32>();
    if (nv > 2u) {
        u3 = direct_v4(a + 12u);
    }
    if (nv > 3u) {
        u4 = direct_v4(a + 16u);
    }
    if (nv > 4u) {
        u5 = direct_v4(a + 20u);
    }
    let cols = vec4<u32>(col0) + vec4<u32>(0u, 1u, 2u, 3u);
    let iw = vec4<u32>(q.iw);
    r.v0 = select(vec4<f32>(), direct_shift(u0, u1, s), cols < iw);
    r.v1 = select(vec4<f32>(), direct_shift(u1, u2, s), cols + 4u < iw);
    r.v2 = select(vec4<f32>(), direct_shift(u2, u3, s), cols + 8u < iw);
    r.v3 = select(vec4<f32>(), direct_shift(u3, u4, s), cols + 12u < iw);
    r.v4 = select(vec4<f32>(), direct_shift(u4, u5, s), cols + 16u < iw);
    return r;
}

// Where a conv2d_direct invocation works: model and group z, output row oy, first output
// channel o0, the strip's first column ox0, the offsets of its input (xb) and output (ob),
// and whether it has a strip (`live`; the others only help stage the weights).
struct DirectAt {
    z: u32,
    g: u32,
    grp: u32,
    oy: u32,
    o0: u32,
    ox0: u32,
    col0: u32,
    xb: u32,
    ob: u32,
    live: bool,
}

// The invocation's place; stages the workgroup's weights (every invocation, before any
// accumulator exists).
fn direct_at(lid: vec3<u32>, wid: vec3<u32>) -> DirectAt {
    var at: DirectAt;
    at.z = wid.z + q.z0;
    at.g = at.z / q.groups;
    at.grp = at.z - at.g * q.groups;
    at.oy = wid.y / q.oblocks;
    at.o0 = (wid.y - at.oy * q.oblocks) * OB;
    direct_stage(at.z, at.o0, lid.x);
    let t = (wid.x + q.x0) * WGX + lid.x;
    at.live = t < q.n * q.strips;
    let n = min(t, q.n * q.strips - 1u) / q.strips;
    at.ox0 = (t - n * q.strips) * SW;
    // Input column of tap kx for the strip's column s: col0 + kx + s.
    at.col0 = at.ox0 - q.p1;
    at.xb = ((at.g * q.n + n) * q.ci + at.grp * q.cig + q.c0) * q.ih * q.iw;
    at.ob = ((at.g * q.n + n) * q.co + at.grp * q.cog) * q.oh * q.ow + at.oy * q.ow + at.ox0;
    return at;
}

// With FIX_ROWS = kh > 0 (a dispatch of one input channel whose kernel rows all land inside
// the input for every output row: LeNet's conv1), direct_sums writes its row loop out, so
// that every weight's address in direct_w is a constant: lavapipe loads a workgroup-memory
// value lane by lane unless its address is built from constants only.
override FIX_ROWS: u32 = 0u;

// Adds the terms of kernel row ky of the input row starting at `row` (input channel c of
// the dispatch, its weights from sk in direct_w) to the strip's sums.
fn direct_row_sums(at: DirectAt, row: u32, sk: u32, acc: ptr<function, array<vec4<f32>, MAX_OB>>,
                   acc2: ptr<function, array<vec4<f32>, MAX_OB>>, acc3: ptr<function, array<vec4<f32>, MAX_OB>>) {
    let ob4 = (OB + 3u) / 4u;
    let w = direct_row(row, at.col0);
    // (xv, xv2, xv3) hold the inputs of tap kx for the strip's columns, (xn, xn2) the
    // window's columns after them; all slide by one column per tap. (No private
    // array: lavapipe indexes those through memory unless every index is a constant.)
    var xv = w.v0;
    var xv2 = w.v1;
    var xv3 = vec4<f32>();
    var xn = w.v2;
    var xn2 = w.v3;
    if (SW == 12u) {
        xv3 = w.v2;
        xn = w.v3;
        xn2 = w.v4;
    }
    for (var kx = 0u; kx < KW; kx++) {
        let w1 = direct_w[sk + kx * ob4];
        var w2 = vec4<f32>();
        if (OB > 4u) {
            w2 = direct_w[sk + kx * ob4 + 1u];
        }
        for (var j = 0u; j < OB; j++) {
            let wv = select(w2[j & 3u], w1[j & 3u], j < 4u);
            (*acc)[j] += xv * wv;
            (*acc2)[j] += xv2 * wv;
            if (SW == 12u) {
                (*acc3)[j] += xv3 * wv;
            }
        }
        if (kx + 1u < KW) {
            xv = vec4<f32>(xv.yzw, xv2.x);
            if (SW == 12u) {
                xv2 = vec4<f32>(xv2.yzw, xv3.x);
                xv3 = vec4<f32>(xv3.yzw, xn.x);
            } else {
                xv2 = vec4<f32>(xv2.yzw, xn.x);
            }
            xn = vec4<f32>(xn.yzw, xn2.x);
            xn2 = vec4<f32>(xn2.yzw, 0.0);
        }
    }
}

// Adds the dispatch's input channels' terms to the strip's sums: columns 0-3 in acc, 4-7 in
// acc2, 8-11 in acc3 (SW = 12), per output channel.
fn direct_sums(at: DirectAt, acc: ptr<function, array<vec4<f32>, MAX_OB>>,
               acc2: ptr<function, array<vec4<f32>, MAX_OB>>, acc3: ptr<function, array<vec4<f32>, MAX_OB>>) {
    let ob4 = (OB + 3u) / 4u;
    if (FIX_ROWS > 0u) {
        // Rows written out (constants after inlining); at most 7 (MAX_KW - 1 is enough for
        // the layers this serves, the host checks).
        let row = at.xb + at.oy * q.iw;
        direct_row_sums(at, row, 0u, acc, acc2, acc3);
        if (FIX_ROWS > 1u) {
            direct_row_sums(at, row + q.iw, KW * ob4, acc, acc2, acc3);
        }
        if (FIX_ROWS > 2u) {
            direct_row_sums(at, row + 2u * q.iw, 2u * KW * ob4, acc, acc2, acc3);
        }
        if (FIX_ROWS > 3u) {
            direct_row_sums(at, row + 3u * q.iw, 3u * KW * ob4, acc, acc2, acc3);
        }
        if (FIX_ROWS > 4u) {
            direct_row_sums(at, row + 4u * q.iw, 4u * KW * ob4, acc, acc2, acc3);
        }
        if (FIX_ROWS > 5u) {
            direct_row_sums(at, row + 5u * q.iw, 5u * KW * ob4, acc, acc2, acc3);
        }
        if (FIX_ROWS > 6u) {
            direct_row_sums(at, row + 6u * q.iw, 6u * KW * ob4, acc, acc2, acc3);
        }
        return;
    }
    let ihw = q.ih * q.iw;
    // Kernel rows that land inside the input (uniform over the workgroup).
    let rows = direct_rows(at.oy);
    for (var c = 0u; c < q.cn; c++) {
        for (var ky = rows.x; ky < rows.y; ky++) {
            let row = at.xb + c * ihw + (at.oy + ky - q.p0) * q.iw;
            direct_row_sums(at, row, (c * q.kh + ky) * KW * ob4, acc, acc2, acc3);
        }
    }
}

// The bias of output channel o0 + j (0 without one).
fn direct_bias(at: DirectAt, j: u32) -> f32 {
    if ((q.flags & 1u) != 0u) {
        return bias[at.g * q.co + at.grp * q.cog + at.o0 + j];
    }
    return 0.0;
}

@compute @workgroup_size(WGX, 1, 1)
fn conv2d_direct(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let at = direct_at(lid, wid);
    if (!at.live) {
        return;
    }
    let ohw = q.oh * q.ow;
    // A dispatch after the first starts from the sums y holds, so that every sum adds its
    // terms in the same order however many dispatches share it.
    var acc: array<vec4<f32>, MAX_OB>;
    var acc2: array<vec4<f32>, MAX_OB>;
    var acc3: array<vec4<f32>, MAX_OB>;
    if ((q.flags & 8u) != 0u) {
        for (var j = 0u; j < OB; j++) {
            let y = at.ob + min(at.o0 + j, q.cog - 1u) * ohw;
            for (var s = 0u; s < SW; s++) {
                let v = select(0.0, out4[y + min(s, q.ow - 1u - at.ox0)], at.ox0 + s < q.ow);
                if (s < 4u) {
                    acc[j][s & 3u] = v;
                } else if (s < 8u) {
                    acc2[j][s & 3u] = v;
                } else {
                    acc3[j][s & 3u] = v;
                }
            }
        }
    }
    direct_sums(at, &acc, &acc2, &acc3);
    let relu = (q.flags & 2u) != 0u;
    for (var j = 0u; j < OB; j++) {
        if (at.o0 + j < q.cog) {
            let add = direct_bias(at, j);
            for (var s = 0u; s < SW; s++) {
                if (at.ox0 + s < q.ow) {
                    let v = select(select(acc3[j][s & 3u], acc2[j][s & 3u], s < 8u), acc[j][s & 3u], s < 4u) + add;
                    out4[at.ob + (at.o0 + j) * ohw + s] = select(v, max(v, 0.0), relu);
                }
            }
        }
    }
}

// y as vec4 (conv2d_direct_y4).
@group(0) @binding(4) var<storage, read_write> y4: array<vec4<f32>>;

// conv2d_direct where output rows are whole vec4s (ow a multiple of 4): y is read (when
// continuing) and written a vec4 at a time (on lavapipe, whose stores cost about as much
// per vec4 as per scalar: LeNet's conv1 forward ~12% faster).
@compute @workgroup_size(WGX, 1, 1)
fn conv2d_direct_y4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let at = direct_at(lid, wid);
    if (!at.live) {
        return;
    }
    let ohw4 = q.oh * q.ow / 4u;
    let ob4 = at.ob / 4u;
    var acc: array<vec4<f32>, MAX_OB>;
    var acc2: array<vec4<f32>, MAX_OB>;
    var acc3: array<vec4<f32>, MAX_OB>;
    if ((q.flags & 8u) != 0u) {
        for (var j = 0u; j < OB; j++) {
            let y = ob4 + min(at.o0 + j, q.cog - 1u) * ohw4;
            acc[j] = y4[y];
            if (at.ox0 + 4u < q.ow) {
                acc2[j] = y4[y + 1u];
            }
            if (SW == 12u && at.ox0 + 8u < q.ow) {
                acc3[j] = y4[y + 2u];
            }
        }
    }
    direct_sums(at, &acc, &acc2, &acc3);
    let relu = (q.flags & 2u) != 0u;
    for (var j = 0u; j < OB; j++) {
        if (at.o0 + j < q.cog) {
            let add = direct_bias(at, j);
            let y = ob4 + (at.o0 + j) * ohw4;
            var v = acc[j] + add;
            y4[y] = select(v, max(v, vec4<f32>(0.0)), relu);
            if (at.ox0 + 4u < q.ow) {
                v = acc2[j] + add;
                y4[y + 1u] = select(v, max(v, vec4<f32>(0.0)), relu);
            }
            if (SW == 12u && at.ox0 + 8u < q.ow) {
                v = acc3[j] + add;
                y4[y + 2u] = select(v, max(v, vec4<f32>(0.0)), relu);
            }
        }
    }
}

// conv2d_grad_weight_direct reads x as vec4 (as conv2d_direct reads its input).
@group(0) @binding(2) var<storage, read> b4_in: array<vec4<f32>>;
// Bit 0: dy rows (ow) and the x columns entering the window (iw, KW - 1 - p1) start at
// multiples of 4 columns; bit 1: the window's first columns too (iw, p1). One load per 4
// columns there, no shifts.
override GA: u32 = 0u;

// x at columns ix .. ix + 3 of the input row starting at element `row`, zero outside
// [0, iw) or where !ok. `fast`: they are an aligned vec4 inside the row or outside it.
fn gw_x4(row: u32, ix: u32, ok: bool, fast: bool) -> vec4<f32> {
    let last = arrayLength(&b4_in) - 1u;
    if (fast) {
        return select(vec4<f32>(), b4_in[min((row + ix) >> 2u, last)], ok && ix < q.iw);
    }
    // (An arithmetic shift: the first column may be "negative".)
    let e0 = row + ix;
    let s = e0 & 3u;
    let a = bitcast<u32>(bitcast<i32>(e0 - s) >> 2u);
    let v = direct_shift(b4_in[min(a, last)], b4_in[min(a + 1u, last)], s);
    let cols = vec4<u32>(ix) + vec4<u32>(0u, 1u, 2u, 3u);
    return select(vec4<f32>(), v, (cols < vec4<u32>(q.iw)) & vec4<bool>(ok));
}

// dy at columns ox .. ox + 3 of the output row starting at element `row`, zero past ow.
fn gw_dy4(row: u32, ox: u32) -> vec4<f32> {
    let last = arrayLength(&a4_in) - 1u;
    if ((GA & 1u) != 0u) {
        return a4_in[min((row + ox) >> 2u, last)];
    }
    let e0 = row + ox;
    let s = e0 & 3u;
    let a = e0 >> 2u;
    let v = direct_shift(a4_in[min(a, last)], a4_in[min(a + 1u, last)], s);
    return select(vec4<f32>(), v, vec4<u32>(ox) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(q.ow));
}

// Slides a kernel row's input window (lo, hi) by one column: v enters at component KW - 1
// (masked: a constant index must be in range even in the branch not taken).
fn gw_slide(lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>, v: f32) {
    *lo = vec4<f32>((*lo).yzw, (*hi).x);
    *hi = vec4<f32>((*hi).yzw, 0.0);
    if (KW <= 4u) {
        (*lo)[(KW - 1u) & 3u] = v;
    } else {
        (*hi)[(KW - 1u) & 3u] = v;
    }
}

// Kernel row f (c * kh + ky, clamped to the nr of a group): (c's offset in x, ky).
fn gw_krow(f: u32, nr: u32, ihw: u32) -> vec2<u32> {
    let c = min(f, nr - 1u) / q.kh;
    return vec2<u32>(c * ihw, min(f, nr - 1u) - c * q.kh);
}

// One kernel row's input row for output row oy of image ximg: its first element (clamped
// into the image), whether it exists, and the sliding window (lo, hi) filled for ox = -1
// (components past KW - 1 hold columns never used).
struct GwRow {
    row: u32,
    ok: bool,
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn gw_row(ximg: u32, k: vec2<u32>, oy: u32, exists: bool) -> GwRow {
    let iy = oy + k.y - q.p0;
    let ok = exists && iy < q.ih;
    let row = ximg + k.x + min(iy, q.ih - 1u) * q.iw;
    let f0 = gw_x4(row, 0u - q.p1, ok, (GA & 2u) != 0u);
    let f1 = gw_x4(row, 4u - q.p1, ok, (GA & 2u) != 0u);
    return GwRow(row, ok, vec4<f32>(0.0, f0.xyz), vec4<f32>(f0.w, f1.xyz));
}

@compute @workgroup_size(WGX, 1, 1)
fn conv2d_grad_weight_direct(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    // Kernel rows (c, ky), flattened to c * kh + ky, per lane group: GR consecutive ones each.
    let nr = q.cig * q.kh;
    let lanes = (nr + GR - 1u) / GR;
    let t = (wid.x + q.x0) * WGX + lid.x;
    var gg: u32;
    var s: u32;
    var r: u32;
    if ((q.flags & 4u) != 0u) {
        // x walks (split, kernel row): full workgroups however few kernel rows there are
        // (GPUs); dy loads are then shared by the lanes of one split, not the workgroup.
        gg = wid.z + q.z0;
        s = t / lanes;
        r = t - s * lanes;
        if (s >= q.splits) {
            return;
        }
    } else {
        // z walks (model, group, split): one split per workgroup, uniform dy loads.
        let z = wid.z + q.z0;
        gg = z / q.splits;
        s = z - gg * q.splits;
        r = t;
        if (r >= lanes) {
            return;
        }
    }
    let g = gg / q.groups;
    let grp = gg - g * q.groups;
    let o0 = wid.y * OB;
    // The invocation's kernel rows f .. f + GR - 1 (none past the group's: masked, not stored).
    let ihw = q.ih * q.iw;
    let f = r * GR;
    let k1 = gw_krow(f, nr, ihw);
    let k2 = gw_krow(f + 1u, nr, ihw);
    let k3 = gw_krow(f + 2u, nr, ihw);
    let c2ok = GR > 1u && f + 1u < nr;
    let c3ok = GR > 2u && f + 2u < nr;
    let ohw = q.oh * q.ow;
    var dyo: array<u32, MAX_OB>;
    for (var j = 0u; j < OB; j++) {
        dyo[j] = (grp * q.cog + min(o0 + j, q.cog - 1u)) * ohw;
    }
    let rbeg = s * q.rows_per_split;
    let rend = min(rbeg + q.rows_per_split, q.n * q.oh);
    var n = rbeg / q.oh;
    var oy = rbeg - n * q.oh;
    // Taps kx = 0..3 in lo, 4..7 in hi, per output channel (components past KW stay unused).
    var alo: array<vec4<f32>, MAX_OB>;
    var ahi: array<vec4<f32>, MAX_OB>;
    var blo: array<vec4<f32>, MAX_OB>;
    var bhi: array<vec4<f32>, MAX_OB>;
    var clo: array<vec4<f32>, MAX_OB>;
    var chi: array<vec4<f32>, MAX_OB>;
    // With GB, the sums of dy over the same positions (every row and column is visited):
    // the bias gradient, stored by the invocations of kernel row 0 of input channel 0.
    var bsum: array<f32, MAX_OB>;
    for (var rr = rbeg; rr < rend; rr++) {
        // This invocation's input rows; rows outside the input read zero.
        let ximg = ((g * q.n + n) * q.ci + grp * q.cig) * ihw;
        let dyr = (g * q.n + n) * q.co * ohw + oy * q.ow;
        // The window (lo, hi) holds x[iy, ox + k - p1] at component k: before each column it
        // slides by one and the new value enters at k = KW - 1. Columns enter 4 at a time, as
        // dy's do: one vec4 load each. (No private array: lavapipe indexes those through
        // memory.) The second and third kernel rows' (GR > 1, 2), zeros where there are none.
        let w1 = gw_row(ximg, k1, oy, true);
        let xrow = w1.row;
        let rok = w1.ok;
        var lo = w1.lo;
        var hi = w1.hi;
        var xrow2 = 0u;
        var rok2 = false;
        var lo2 = vec4<f32>(0.0);
        var hi2 = vec4<f32>(0.0);
        if (GR > 1u) {
            let w = gw_row(ximg, k2, oy, c2ok);
            xrow2 = w.row;
            rok2 = w.ok;
            lo2 = w.lo;
            hi2 = w.hi;
        }
        var xrow3 = 0u;
        var rok3 = false;
        var lo3 = vec4<f32>(0.0);
        var hi3 = vec4<f32>(0.0);
        if (GR > 2u) {
            let w = gw_row(ximg, k3, oy, c3ok);
            xrow3 = w.row;
            rok3 = w.ok;
            lo3 = w.lo;
            hi3 = w.hi;
        }
        for (var ox0 = 0u; ox0 < q.ow; ox0 += 4u) {
            let ix = ox0 + KW - 1u - q.p1;
            let xe = gw_x4(xrow, ix, rok, (GA & 1u) != 0u);
            var xe2 = vec4<f32>();
            if (GR > 1u) {
                xe2 = gw_x4(xrow2, ix, rok2, (GA & 1u) != 0u);
            }
            var xe3 = vec4<f32>();
            if (GR > 2u) {
                xe3 = gw_x4(xrow3, ix, rok3, (GA & 1u) != 0u);
            }
            var d4: array<vec4<f32>, MAX_OB>;
            for (var j = 0u; j < OB; j++) {
                d4[j] = gw_dy4(dyr + dyo[j], ox0);
            }
            for (var m = 0u; m < 4u; m++) {
                if ((GA & 1u) != 0u || ox0 + m < q.ow) {
                    gw_slide(&lo, &hi, xe[m]);
                    if (GR > 1u) {
                        gw_slide(&lo2, &hi2, xe2[m]);
                    }
                    if (GR > 2u) {
                        gw_slide(&lo3, &hi3, xe3[m]);
                    }
                    for (var j = 0u; j < OB; j++) {
                        let d = d4[j][m];
                        alo[j] += d * lo;
                        // (With KW = 5 only hi.x is a tap: the other three lanes' work, a third
                        // of the multiply-adds, is skipped; 5-7% faster weight gradients on
                        // lavapipe.)
                        if (KW == 5u) {
                            ahi[j].x += d * hi.x;
                        } else if (KW > 4u) {
                            ahi[j] += d * hi;
                        }
                        if (GR > 1u) {
                            blo[j] += d * lo2;
                            if (KW == 5u) {
                                bhi[j].x += d * hi2.x;
                            } else if (KW > 4u) {
                                bhi[j] += d * hi2;
                            }
                        }
                        if (GR > 2u) {
                            clo[j] += d * lo3;
                            if (KW == 5u) {
                                chi[j].x += d * hi3.x;
                            } else if (KW > 4u) {
                                chi[j] += d * hi3;
                            }
                        }
                        if (GB != 0u) {
                            bsum[j] += d;
                        }
                    }
                }
            }
        }
        oy += 1u;
        if (oy == q.oh) {
            oy = 0u;
            n += 1u;
        }
    }
    let cols = q.cig * q.kh * KW;
    for (var j = 0u; j < OB; j++) {
        let o = o0 + j;
        if (o < q.cog) {
            let base = s * q.total + (g * q.co + grp * q.cog + o) * cols + f * KW;
            for (var k = 0u; k < KW; k++) {
                out3[base + k] = select(ahi[j][k & 3u], alo[j][k & 3u], k < 4u);
                if (c2ok) {
                    out3[base + KW + k] = select(bhi[j][k & 3u], blo[j][k & 3u], k < 4u);
                }
                if (c3ok) {
                    out3[base + 2u * KW + k] = select(chi[j][k & 3u], clo[j][k & 3u], k < 4u);
                }
            }
            if (GB != 0u && r == 0u) {
                out3[s * q.total + q.bias_at + g * q.co + grp * q.cog + o] = bsum[j];
            }
        }
    }
}

// conv2d_pixel: the correlation of conv2d_direct (forward or input gradient, the same uniform
// and weight addressing) with one invocation per output position (n, oy, ox) and block of OB
// output channels: consecutive invocations take consecutive output columns, so input loads
// and output stores are contiguous across a workgroup (coalesced on GPUs), and the weight
// loads are uniform (the block is wid.y). Each loaded input serves OB multiply-adds. For GPUs
// (`conv_pixel` tuning); on lavapipe the strips of conv2d_direct reuse inputs in registers
// better. q.strips holds oh * ow here.
@compute @workgroup_size(WGX, 1, 1)
fn conv2d_pixel(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + q.z0;
    let g = z / q.groups;
    let grp = z - g * q.groups;
    let o0 = wid.y * OB;
    let t = (wid.x + q.x0) * WGX + lid.x;
    let ohw = q.strips;
    if (t >= q.n * ohw) {
        return;
    }
    let n = t / ohw;
    let pos = t - n * ohw;
    let oy = pos / q.ow;
    let ox = pos - oy * q.ow;
    let ihw = q.ih * q.iw;
    let rows = direct_rows(oy);
    let ky_lo = rows.x;
    let ky_end = rows.y;
    let wo = direct_weights(z, o0);
    let xb = ((g * q.n + n) * q.ci + grp * q.cig) * ihw;
    // Input column of tap kx: ox + kx - p1 (wrapping below zero, then failing the bound test).
    let col0 = ox - q.p1;
    var acc: array<f32, MAX_OB>;
    for (var c = 0u; c < q.cig; c++) {
        for (var ky = ky_lo; ky < ky_end; ky++) {
            let row = xb + c * ihw + (oy + ky - q.p0) * q.iw;
            let wk = c * q.w_ic + ky * q.w_ky;
            for (var kx = 0u; kx < KW; kx++) {
                let xv = direct_x(row, col0 + kx);
                let wx = wk + kx * q.w_kx;
                for (var j = 0u; j < OB; j++) {
                    acc[j] += xv * b_in[wo[j] + wx];
                }
            }
        }
    }
    let ob = ((g * q.n + n) * q.co + grp * q.cog) * ohw + pos;
    let relu = (q.flags & 2u) != 0u;
    for (var j = 0u; j < OB; j++) {
        let o = o0 + j;
        if (o < q.cog) {
            var add = 0.0;
            if ((q.flags & 1u) != 0u) {
                add = bias[g * q.co + grp * q.cog + o];
            }
            let v = acc[j] + add;
            out4[ob + o * ohw] = select(v, max(v, 0.0), relu);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tiled kernels for GPUs (the `conv_tile` and `grad_weight_tile` tunings): the same stride-1
// correlations as the direct kernels, but a workgroup first copies the input rows (zero
// padding included) and the weights it needs into workgroup memory, then every invocation
// reads its operands from there: each input value leaves device memory once per workgroup
// instead of once per tap, loads across a warp are contiguous, and the weight reads are
// broadcasts. A tile is a run of `q.strips` consecutive output rows of the flattened
// (image, output row) axis; the input rows it reads are a run of the flattened (image,
// padded input row) axis, the padded input being OH + KH - 1 rows by OW + KW - 1 columns.
// The Rust side (`corr_tile`, `grad_weight_tile` in src/ops/conv.rs) sizes tiles to fit
// TILE_F32 and falls back to the direct kernels where even one row does not.
//
// Accumulators are named variables, never private arrays: a private array indexed in a loop
// may live in (slow) local memory unless the driver unrolls the loop; the branches on
// override constants (PX, OB, KW) are resolved when the pipeline is created.

// Input (and output-gradient) rows of a tile, in f32: the `tile_kib` tuning x 256 (the
// Rust side passes it and sizes the tiles to it).
override TILE_F32: u32 = 2560u;
const TILE_W4: u32 = 128u;
var<workgroup> tile_f: array<f32, TILE_F32>;
var<workgroup> tile_w: array<vec4<f32>, TILE_W4>;
// Output positions per invocation of conv2d_tile (1 to 4).
override PX: u32 = 4u;
// conv2d_grad_weight_tile and _direct: 1 to add the bias gradient to the partial sums (at
// q.bias_at).
override GB: u32 = 0u;
// conv2d_grad_weight_direct: input channels per invocation (1 or 2).
override GR: u32 = 1u;

// First padded input row (flattened over images) that output row r reads with tap 0.
fn tile_row(r: u32) -> u32 {
    let n = r / q.oh;
    return n * (q.oh + q.kh - 1u) + (r - n * q.oh);
}

// x[n, iy, ix] of the input plane starting at `plane` (images `image` apart), zero outside
// the input (a "negative" coordinate wraps and fails the bounds).
fn tile_x(plane: u32, image: u32, n: u32, iy: u32, ix: u32) -> f32 {
    let ok = iy < q.ih && ix < q.iw && n < q.n;
    return select(0.0, a_in[plane + min(n, q.n - 1u) * image + min(iy, q.ih - 1u) * q.iw + min(ix, q.iw - 1u)], ok);
}

// Copies padded input rows [lo, lo + rows) of input channel c (absolute) of model g into
// tile_f[at ..], row-major, rows of OW + KW - 1 values, zero outside the input. Where a row
// fits the workgroup, each lane keeps one column and walks rows WGX / (OW + KW - 1) apart
// (no division per value).
fn tile_load_x(g: u32, c: u32, lo: u32, rows: u32, at: u32, lane: u32) {
    let ihp = q.oh + q.kh - 1u;
    let iwp = q.ow + KW - 1u;
    let ihw = q.ih * q.iw;
    let plane = (g * q.n * q.ci + c) * ihw;
    let image = q.ci * ihw;
    if (iwp <= WGX) {
        let step = WGX / iwp;
        let r0 = lane / iwp;
        let col = lane - r0 * iwp;
        if (r0 >= step) {
            return;
        }
        var n = (lo + r0) / ihp;
        var iyp = lo + r0 - n * ihp;
        for (var rr = r0; rr < rows; rr += step) {
            tile_f[at + rr * iwp + col] = tile_x(plane, image, n, iyp - q.p0, col - q.p1);
            iyp += step;
            while (iyp >= ihp) {
                iyp -= ihp;
                n += 1u;
            }
        }
        return;
    }
    for (var e = lane; e < rows * iwp; e += WGX) {
        let rr = e / iwp;
        let pr = lo + rr;
        let n = pr / ihp;
        tile_f[at + e] = tile_x(plane, image, n, pr - n * ihp - q.p0, e - rr * iwp - q.p1);
    }
}

// Output position pp (clamped to the tile's npx) of the tile starting at output row r0 whose
// input rows start at padded row lo: (tile offset of tap (0, 0), output offset of channel o0).
fn tile_pos(pp: u32, npx: u32, r0: u32, lo: u32, g: u32, grp: u32, o0: u32) -> vec2<u32> {
    let p = min(pp, npx - 1u);
    let rr = p / q.ow;
    let ox = p - rr * q.ow;
    let r = r0 + rr;
    let n = r / q.oh;
    let oy = r - n * q.oh;
    let iwp = q.ow + KW - 1u;
    return vec2<u32>((tile_row(r) - lo) * iwp + ox, ((g * q.n + n) * q.co + grp * q.cog + o0) * q.oh * q.ow + oy * q.ow + ox);
}

// Channels o0 .. o0 + 3 of one output position in a, o0 + 4 .. o0 + 7 in b.
struct Acc8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn tile_fma(acc: Acc8, xv: f32, w1: vec4<f32>, w2: vec4<f32>) -> Acc8 {
    var r = acc;
    r.a += xv * w1;
    if (OB > 4u) {
        r.b += xv * w2;
    }
    return r;
}

// conv2d_tile with FP = 1 also writes the 2x2 max pooling (stride 2) of its output, after
// bias and relu, to out5 ([G, N, O, OH / 2, OW / 2]; OH and OW even): the plan's forward
// pooling fold (`folds` bit 1), which skips the pooling's own pass (a read of y, the size of
// the convolution's output). The pooled value is maxpool2d's bit for bit.
override FP: u32 = 0u;
@group(0) @binding(5) var<storage, read_write> out5: array<f32>;

// The max-pooling rule (pool.wgsl's window_argmax) over a window in row-major order: v
// replaces the maximum so far when it is greater or NaN.
fn pool_take(best: f32, v: f32) -> f32 {
    return select(best, v, pool_is_nan(v) || (!pool_is_nan(best) && v > best));
}

// Channel o0 + j's output at one position: bias, relu (j < OB, o0 + j < q.cog).
fn tile_out(acc: Acc8, j: u32, g: u32, grp: u32, o0: u32) -> f32 {
    var add = 0.0;
    if ((q.flags & 1u) != 0u) {
        add = bias[g * q.co + grp * q.cog + o0 + j];
    }
    let v = select(acc.b[j & 3u], acc.a[j & 3u], j < 4u) + add;
    return select(v, max(v, 0.0), (q.flags & 2u) != 0u);
}

// Stores one position's OB channels where `ok`.
fn tile_store(acc: Acc8, ok: bool, at: u32, g: u32, grp: u32, o0: u32) {
    if (!ok) {
        return;
    }
    let ohw = q.oh * q.ow;
    for (var j = 0u; j < OB; j++) {
        if (o0 + j < q.cog) {
            out4[at + j * ohw] = tile_out(acc, j, g, grp, o0);
        }
    }
}

// With FP: stores one window's positions a0, a1 (first row) and a2, a3 (at y offsets `ys`),
// as tile_store does, and their max pooling at pooled offset `at` of channel o0.
fn tile_pool_store(a0: Acc8, a1: Acc8, a2: Acc8, a3: Acc8, ys: vec4<u32>, at: u32, g: u32, grp: u32, o0: u32) {
    let ohw = q.oh * q.ow;
    for (var j = 0u; j < OB; j++) {
        if (o0 + j < q.cog) {
            let v = vec4<f32>(tile_out(a0, j, g, grp, o0), tile_out(a1, j, g, grp, o0), tile_out(a2, j, g, grp, o0),
                              tile_out(a3, j, g, grp, o0));
            out4[ys.x + j * ohw] = v.x;
            out4[ys.y + j * ohw] = v.y;
            out4[ys.z + j * ohw] = v.z;
            out4[ys.w + j * ohw] = v.w;
            out5[at + j * (ohw / 4u)] = pool_take(pool_take(pool_take(v.x, v.y), v.z), v.w);
        }
    }
}

// y[n, o, oy, ox] for OB output channels (wid.y) and PX output positions per invocation,
// WGX apart along the tile's positions (consecutive invocations: consecutive columns). With
// FP (PX = 4, tiles of whole row pairs) an invocation's positions are instead one 2x2 pooling
// window's, which it also pools.
@compute @workgroup_size(WGX, 1, 1)
fn conv2d_tile(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + q.z0;
    let g = z / q.groups;
    let grp = z - g * q.groups;
    let o0 = wid.y * OB;
    let iwp = q.ow + KW - 1u;
    let r0 = (wid.x + q.x0) * q.strips;
    let r1 = min(r0 + q.strips, q.n * q.oh);
    let lo = tile_row(r0);
    let rows = tile_row(r1 - 1u) + q.kh - lo;
    let npx = (r1 - r0) * q.ow;
    // The invocation's positions in the tile (row-major over its rows).
    var e = vec4<u32>(lid.x, lid.x + WGX, lid.x + 2u * WGX, lid.x + 3u * WGX);
    // With FP: window lid.x of the tile's (r1 - r0) / 2 x OW / 2 (past npx where there is none).
    let pw = q.ow / 2u;
    let wr = lid.x / max(pw, 1u);
    let wc = lid.x - wr * pw;
    if (FP != 0u) {
        e = 2u * wr * q.ow + 2u * wc + vec4<u32>(0u, 1u, q.ow, q.ow + 1u);
    }
    let p0 = tile_pos(e.x, npx, r0, lo, g, grp, o0);
    let p1 = tile_pos(e.y, npx, r0, lo, g, grp, o0);
    let p2 = tile_pos(e.z, npx, r0, lo, g, grp, o0);
    let p3 = tile_pos(e.w, npx, r0, lo, g, grp, o0);
    let ob4 = (OB + 3u) / 4u;
    let taps = q.kh * KW;
    let wz = z * q.wgrp + q.w0;
    var a0 = Acc8();
    var a1 = Acc8();
    var a2 = Acc8();
    var a3 = Acc8();
    for (var c = 0u; c < q.cig; c++) {
        workgroupBarrier();
        tile_load_x(g, grp * q.cig + c, lo, rows, 0u, lid.x);
        // Weights of tap t, channels o0 + 4h .. o0 + 4h + 3, at tile_w[t * ob4 + h].
        for (var e = lid.x; e < taps * ob4; e += WGX) {
            let t = e / ob4;
            let h = e - t * ob4;
            let ky = t / KW;
            let kx = t - ky * KW;
            let wx = wz + c * q.w_ic + ky * q.w_ky + kx * q.w_kx;
            let oc = o0 + h * 4u;
            let last = q.cog - 1u;
            tile_w[e] = vec4<f32>(b_in[wx + min(oc, last) * q.w_oc], b_in[wx + min(oc + 1u, last) * q.w_oc],
                                  b_in[wx + min(oc + 2u, last) * q.w_oc], b_in[wx + min(oc + 3u, last) * q.w_oc]);
        }
        workgroupBarrier();
        for (var ky = 0u; ky < q.kh; ky++) {
            for (var kx = 0u; kx < KW; kx++) {
                let t = (ky * KW + kx) * ob4;
                let w1 = tile_w[t];
                let w2 = tile_w[min(t + 1u, TILE_W4 - 1u)];
                let off = ky * iwp + kx;
                a0 = tile_fma(a0, tile_f[p0.x + off], w1, w2);
                if (PX > 1u) {
                    a1 = tile_fma(a1, tile_f[p1.x + off], w1, w2);
                }
                if (PX > 2u) {
                    a2 = tile_fma(a2, tile_f[p2.x + off], w1, w2);
                }
                if (PX > 3u) {
                    a3 = tile_fma(a3, tile_f[p3.x + off], w1, w2);
                }
            }
        }
    }
    if (FP == 0u) {
        tile_store(a0, e.x < npx, p0.y, g, grp, o0);
        tile_store(a1, PX > 1u && e.y < npx, p1.y, g, grp, o0);
        tile_store(a2, PX > 2u && e.z < npx, p2.y, g, grp, o0);
        tile_store(a3, PX > 3u && e.w < npx, p3.y, g, grp, o0);
    } else if (e.x < npx) {
        // Row r0 + 2 wr is even within its image (OH is even, tiles start at even rows).
        let r = r0 + 2u * wr;
        let n = r / q.oh;
        let oy = r - n * q.oh;
        let at = ((g * q.n + n) * q.co + grp * q.cog + o0) * (q.oh * q.ow / 4u) + oy / 2u * pw + wc;
        tile_pool_store(a0, a1, a2, a3, vec4<u32>(p0.y, p1.y, p2.y, p3.y), at, g, grp, o0);
    }
}

// Offset of column 0 of output row r = (n, oy) of model g in dy, for the channel at `chan`
// (its offset within an image).
fn tile_dy(g: u32, r: u32, chan: u32) -> u32 {
    let n = r / q.oh;
    return (g * q.n + n) * q.co * q.oh * q.ow + chan + (r - n * q.oh) * q.ow;
}

// conv2d_grad_weight_tile with PKH > 0 computes dy instead of reading it: dy is the gradient
// of a max pooling of y (binding 4) whose PKH x PKW windows tile y exactly, given the pooled
// gradient (bound in dy's place), as maxpool2d_grad_window computes it (pool.wgsl): the
// pooled gradient at each window's argmax (PyTorch's rule: the first maximum, NaN wins), 0.0
// elsewhere, times relu's derivative at y with PR = 1. The tile's rows are whole windows.
override PKH: u32 = 0u;
override PKW: u32 = 1u;
override PR: u32 = 0u;
@group(0) @binding(4) var<storage, read> pool_y: array<f32>;

fn pool_is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// The position (ky * PKW + kx) of the maximum of the PKH x PKW window of pool_y whose first
// value is at yb, rows `row` apart: PyTorch's rule, the first maximum, NaN wins.
fn pool_argmax(yb: u32, row: u32) -> u32 {
    var best = 0.0;
    var at = 0xffffffffu;
    for (var ky = 0u; ky < PKH; ky++) {
        for (var kx = 0u; kx < PKW; kx++) {
            let v = pool_y[yb + ky * row + kx];
            if (at == 0xffffffffu || pool_is_nan(v) || (!pool_is_nan(best) && v > best)) {
                best = v;
                at = ky * PKW + kx;
            }
        }
    }
    return at;
}

// Stages dy rows [t0, t0 + nrows) of the group's channels at tile_f[dyat ..] (as the copy
// of dy does), one window per lane at a time.
fn tile_pool_dy(g: u32, grp: u32, t0: u32, nrows: u32, dyat: u32, lane: u32) {
    // (PKH is 0 where the kernel does not call this: no division by zero at pipeline creation.)
    let wh = max(PKH, 1u);
    let ohw = q.oh * q.ow;
    let ds = nrows * q.ow;
    let pw = q.ow / PKW;
    let per_o = nrows / wh * pw;
    let plane = (q.oh / wh) * pw;
    for (var e = lane; e < q.cog * per_o; e += WGX) {
        let o = e / per_o;
        let rem = e - o * per_o;
        let wr = rem / pw;
        let wc = rem - wr * pw;
        let r = t0 + wr * wh;
        let n = r / q.oh;
        let ch = grp * q.cog + o;
        let yb = tile_dy(g, r, ch * ohw) + wc * PKW;
        let at = pool_argmax(yb, q.ow);
        let dp = 0.0 + b_in[((g * q.n + n) * q.co + ch) * plane + (r - n * q.oh) / wh * pw + wc];
        let tb = dyat + o * ds + wr * wh * q.ow + wc * PKW;
        for (var ky = 0u; ky < PKH; ky++) {
            for (var kx = 0u; kx < PKW; kx++) {
                var v = select(0.0, dp, ky * PKW + kx == at);
                if (PR != 0u) {
                    v = v * select(0.0, 1.0, pool_y[yb + ky * q.ow + kx] > 0.0);
                }
                tile_f[tb + ky * q.ow + kx] = v;
            }
        }
    }
}

// One output channel's taps (kx 0-3 in lo, 4-7 in hi) += d * the input window. (With KW = 5
// only hi.x is a tap: updated alone, as conv2d_grad_weight_direct does.)
fn gw_fma(lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>, d: f32, wlo: vec4<f32>, whi: vec4<f32>) {
    *lo += d * wlo;
    if (KW == 5u) {
        (*hi).x += d * whi.x;
    } else if (KW > 4u) {
        *hi += d * whi;
    }
}

// Writes output channel o0 + j's KW taps (kx 0-3 in lo, 4-7 in hi) at out3[base + j * cols ..].
fn gw_store(lo: vec4<f32>, hi: vec4<f32>, j: u32, base: u32, o0: u32, cols: u32) {
    if (j >= OB || o0 + j >= q.cog) {
        return;
    }
    for (var k = 0u; k < KW; k++) {
        out3[base + j * cols + k] = select(hi[k & 3u], lo[k & 3u], k < 4u);
    }
}

// dw(o, c, ky, kx) = sum over output positions of dy[n, o, oy, ox] * x[n, c, oy + ky - p0,
// ox + kx - p1], over split wid.x of the output rows (q.rows_per_split of them, in tiles of
// q.strips rows). A task is (input channel, block of OB output channels, kernel row) with
// OB x KW accumulators; q.ps invocations share a task, each summing every q.ps-th row of a
// tile, and each writes its own partial sum (split * q.ps + its index), which
// conv2d_grad_weight_reduce adds in a fixed order. The tile holds the rows of x (all of the
// group's input channels) and of dy (all of its output channels). With GB, the tasks of input
// channel 0 and kernel row 0 also sum the dy values they read (each position of their rows
// once): the bias gradient's partial sums, stored after dw's in the same partial (q.bias_at),
// which the reduction writes to its own output. With PKH > 0 the dy rows are computed from a
// max pooling's gradient (tile_pool_dy) instead of copied. Bindings: x at 1 (a_in), dy (or
// the pooled gradient) at 2 (b_in), the partial sums or dw at 3, the pooling's input at 4.
@compute @workgroup_size(WGX, 1, 1)
fn conv2d_grad_weight_tile(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + q.z0;
    let g = z / q.groups;
    let grp = z - g * q.groups;
    let s = wid.x + q.x0;
    let per_c = q.oblocks * q.kh;
    let tasks = q.cig * per_c;
    let task = lid.x % tasks;
    let part = lid.x / tasks;
    let busy = part < q.ps;
    let c = task / per_c;
    let rem = task - c * per_c;
    let ob = rem / q.kh;
    let ky = rem - ob * q.kh;
    let o0 = ob * OB;
    let iwp = q.ow + KW - 1u;
    let ohw = q.oh * q.ow;
    let rbeg = s * q.rows_per_split;
    let rend = min(rbeg + q.rows_per_split, q.n * q.oh);
    // Output channel o0 + j's taps kx = 0..3 in lj, 4..7 in hj.
    var l0 = vec4<f32>();
    var l1 = vec4<f32>();
    var l2 = vec4<f32>();
    var l3 = vec4<f32>();
    var l4 = vec4<f32>();
    var l5 = vec4<f32>();
    var l6 = vec4<f32>();
    var l7 = vec4<f32>();
    var h0 = vec4<f32>();
    var h1 = vec4<f32>();
    var h2 = vec4<f32>();
    var h3 = vec4<f32>();
    var h4 = vec4<f32>();
    var h5 = vec4<f32>();
    var h6 = vec4<f32>();
    var h7 = vec4<f32>();
    // With GB, the sums of dy over the same positions: the bias gradient of channels
    // o0 .. o0 + 3 in bl, o0 + 4 .. o0 + 7 in bh (stored by the tasks of c = 0, ky = 0).
    var bl = vec4<f32>();
    var bh = vec4<f32>();
    for (var t0 = rbeg; t0 < rend; t0 += q.strips) {
        let t1 = min(t0 + q.strips, rend);
        let lo = tile_row(t0);
        let rows = tile_row(t1 - 1u) + q.kh - lo;
        let xlen = rows * iwp;
        let nrows = t1 - t0;
        workgroupBarrier();
        for (var cc = 0u; cc < q.cig; cc++) {
            tile_load_x(g, grp * q.cig + cc, lo, rows, cc * xlen, lid.x);
        }
        // dy rows [t0, t1) of the group's output channels after x: channel o at
        // dyat + o * nrows * OW.
        let dyat = q.cig * xlen;
        let ds = nrows * q.ow;
        // Channel o of this group starts at chan + o * OH * OW within an image.
        let chan = (grp * q.cog) * ohw;
        if (PKH != 0u) {
            tile_pool_dy(g, grp, t0, nrows, dyat, lid.x);
        } else if (q.ow <= WGX) {
            // One column per lane, (channel, row) pairs WGX / OW apart, as tile_load_x.
            let step = WGX / q.ow;
            let j0 = lid.x / q.ow;
            let ox = lid.x - j0 * q.ow;
            if (j0 < step) {
                var o = j0 / nrows;
                var rr = j0 - o * nrows;
                for (var jj = j0; jj < q.cog * nrows; jj += step) {
                    tile_f[dyat + jj * q.ow + ox] = b_in[tile_dy(g, t0 + rr, chan + o * ohw) + ox];
                    rr += step;
                    while (rr >= nrows) {
                        rr -= nrows;
                        o += 1u;
                    }
                }
            }
        } else {
            for (var e = lid.x; e < q.cog * ds; e += WGX) {
                let o = e / ds;
                let rp = e - o * ds;
                let rr = rp / q.ow;
                tile_f[dyat + e] = b_in[tile_dy(g, t0 + rr, chan + o * ohw) + rp - rr * q.ow];
            }
        }
        workgroupBarrier();
        if (busy) {
            for (var rr = part; rr < nrows; rr += q.ps) {
                let xrow = c * xlen + (tile_row(t0 + rr) - lo + ky) * iwp;
                let dyrow = dyat + min(o0, q.cog - 1u) * ds + rr * q.ow;
                // The window (wlo, whi) holds x[col - KW + 1 + k] at component k after column
                // col of the padded row enters at k = KW - 1; from col = KW - 1 on it is the
                // window of output column ox = col - KW + 1.
                var wlo = vec4<f32>(0.0);
                var whi = vec4<f32>(0.0);
                for (var col = 0u; col < iwp; col++) {
                    let v = tile_f[xrow + col];
                    wlo = vec4<f32>(wlo.yzw, whi.x);
                    whi = vec4<f32>(whi.yzw, 0.0);
                    if (KW <= 4u) {
                        wlo[(KW - 1u) & 3u] = v;
                    } else {
                        whi[(KW - 1u) & 3u] = v;
                    }
                    if (col + 1u >= KW) {
                        // Channels past the group read the tile's last value (never stored).
                        let db = dyrow + col + 1u - KW;
                        let last = dyat + q.cog * ds - 1u;
                        // dy of channels o0 .. o0 + 3 in dl, o0 + 4 .. o0 + 7 in dh.
                        var dl = vec4<f32>(0.0);
                        var dh = vec4<f32>(0.0);
                        dl.x = tile_f[db];
                        gw_fma(&l0, &h0, dl.x, wlo, whi);
                        if (OB > 1u) {
                            dl.y = tile_f[min(db + 1u * ds, last)];
                            gw_fma(&l1, &h1, dl.y, wlo, whi);
                        }
                        if (OB > 2u) {
                            dl.z = tile_f[min(db + 2u * ds, last)];
                            gw_fma(&l2, &h2, dl.z, wlo, whi);
                        }
                        if (OB > 3u) {
                            dl.w = tile_f[min(db + 3u * ds, last)];
                            gw_fma(&l3, &h3, dl.w, wlo, whi);
                        }
                        if (OB > 4u) {
                            dh.x = tile_f[min(db + 4u * ds, last)];
                            gw_fma(&l4, &h4, dh.x, wlo, whi);
                        }
                        if (OB > 5u) {
                            dh.y = tile_f[min(db + 5u * ds, last)];
                            gw_fma(&l5, &h5, dh.y, wlo, whi);
                        }
                        if (OB > 6u) {
                            dh.z = tile_f[min(db + 6u * ds, last)];
                            gw_fma(&l6, &h6, dh.z, wlo, whi);
                        }
                        if (OB > 7u) {
                            dh.w = tile_f[min(db + 7u * ds, last)];
                            gw_fma(&l7, &h7, dh.w, wlo, whi);
                        }
                        if (GB != 0u) {
                            bl += dl;
                            bh += dh;
                        }
                    }
                }
            }
        }
    }
    if (!busy) {
        return;
    }
    let cols = q.cig * q.kh * KW;
    let at = (s * q.ps + part) * q.total;
    if (GB != 0u && c == 0u && ky == 0u) {
        let bat = at + q.bias_at + g * q.co + grp * q.cog + o0;
        for (var j = 0u; j < OB; j++) {
            if (o0 + j < q.cog) {
                out3[bat + j] = select(bh[j & 3u], bl[j & 3u], j < 4u);
            }
        }
    }
    let base = at + (g * q.co + grp * q.cog + o0) * cols + (c * q.kh + ky) * KW;
    gw_store(l0, h0, 0u, base, o0, cols);
    gw_store(l1, h1, 1u, base, o0, cols);
    gw_store(l2, h2, 2u, base, o0, cols);
    gw_store(l3, h3, 3u, base, o0, cols);
    gw_store(l4, h4, 4u, base, o0, cols);
    gw_store(l5, h5, 5u, base, o0, cols);
    gw_store(l6, h6, 6u, base, o0, cols);
    gw_store(l7, h7, 7u, base, o0, cols);
}

// ---------------------------------------------------------------------------------------------
// conv2d_grad_input_col (the `grad_input_col` tuning, for GPUs): the stride-1 input gradient
// without the zero padding's taps. As a correlation (the orientation of conv2d_tile: input =
// dy, output = dx, weight w(c, o, ky, kx) = the flipped kernel through the q.w_* strides) it
// reads dy with q.p0 rows and q.p1 columns of zeros around it: LeNet's conv2 (dy 8x8, padding
// 4) spends 56% of conv2d_tile's taps on them. Here a workgroup takes q.strips whole images
// and, for each output channel c:
//   1. col[t, e] = sum over the group's dy channels o of w(c, o, t) * dy[o, e] for every tap t
//      and every dy position e of its images, into workgroup memory: a dense product, each
//      invocation holding the dy channels of its PX positions in registers (CB4 vec4 at a
//      time; more channels than 4 * CB4 take several chunks, summed in place), the weights of
//      c and of the chunk staged in tile_w (tap-major, CB4 vec4 per tap);
//   2. dx[c, y, x] = sum over the taps (ky, kx) whose dy position (y + ky - p0, x + kx - p1)
//      lies inside dy of col[t, that position]: the ranges are computed per output, the
//      padding never visited.
// The Rust side (`grad_input_col` in src/ops/conv.rs) keeps q.strips * taps * ih * iw within
// COL_F32, the images' positions within PX * WGX and taps * CB4 within TILE_W4.
const COL_F32: u32 = 3584u;
var<workgroup> col_f: array<f32, COL_F32>;
// vec4 of dy channels per position and chunk, 1 to 4.
override CB4: u32 = 4u;

// The dy channels of one position and chunk.
struct Col16 {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
}

// With PKH > 0 (the `pool_folds` of the plan, as in conv2d_grad_weight_tile) dy is the
// gradient of a max pooling of y (pool_y, binding 4) whose PKH x PKW windows tile y,
// computed from the pooled gradient bound in dy's place (maxpool2d_grad_window's values,
// relu's derivative with PR = 1). dx goes to binding 3 (out3).

// One position of the workgroup: dy's (and y's) address of channel 0 of the group, the
// position within its plane, and (PKH > 0) the pooled gradient's address of channel 0 at its
// window, the window's first position within the plane and this position's index in the
// window (ky * PKW + kx): the same for every channel.
struct ColAt {
    at: u32,
    pos: u32,
    pat: u32,
    win: u32,
    me: u32,
}

// dy of channel o (of the group, at most q.cig - 1) at position p, channels `plane` apart.
fn col_dy(p: ColAt, plane: u32, o: u32) -> f32 {
    if (PKH == 0u) {
        return a_in[p.at + o * plane];
    }
    // (PKH is 0 where the kernel does not get here: max() keeps pipeline creation from
    // dividing by zero.)
    let at = pool_argmax(p.at - p.pos + o * plane + p.win, q.iw);
    var v = select(0.0, 0.0 + a_in[p.pat + o * (plane / (max(PKH, 1u) * PKW))], at == p.me);
    if (PR != 0u) {
        v = v * select(0.0, 1.0, pool_y[p.at + o * plane] > 0.0);
    }
    return v;
}

// dy channels o .. o + 3 of the group at position p, zero past the group or where !ok
// (p's addresses are valid either way).
fn col_dy4(p: ColAt, plane: u32, o: u32, ok: bool) -> vec4<f32> {
    let last = q.cig - 1u;
    let v = vec4<f32>(col_dy(p, plane, min(o, last)), col_dy(p, plane, min(o + 1u, last)),
                      col_dy(p, plane, min(o + 2u, last)), col_dy(p, plane, min(o + 3u, last)));
    let m = vec4<u32>(o, o + 1u, o + 2u, o + 3u) < vec4<u32>(q.cig);
    return select(vec4<f32>(0.0), v, m & vec4<bool>(ok));
}

// The chunk of dy channels from k0 at one position.
fn col_load(p: ColAt, plane: u32, k0: u32, ok: bool) -> Col16 {
    var r = Col16();
    r.a = col_dy4(p, plane, k0, ok);
    if (CB4 > 1u) {
        r.b = col_dy4(p, plane, k0 + 4u, ok);
    }
    if (CB4 > 2u) {
        r.c = col_dy4(p, plane, k0 + 8u, ok);
    }
    if (CB4 > 3u) {
        r.d = col_dy4(p, plane, k0 + 12u, ok);
    }
    return r;
}

// Position e (clamped into the workgroup's np positions) of the workgroup whose images start
// at `base` (dy) and `pbase` (the pooled gradient, PKH > 0).
fn col_at(e: u32, np: u32, plane: u32, base: u32, pbase: u32) -> ColAt {
    let c = min(e, np - 1u);
    let i = c / plane;
    let pos = c - i * plane;
    let at = base + c + i * (q.ci - 1u) * plane;
    if (PKH == 0u) {
        return ColAt(at, pos, 0u, 0u, 0u);
    }
    let wh = max(PKH, 1u);
    let y = pos / q.iw;
    let x = pos - y * q.iw;
    let wy = y - y % wh;
    let wx = x - x % PKW;
    let pp = (y / wh) * (q.iw / PKW) + x / PKW;
    return ColAt(at, pos, pbase + i * q.ci * (plane / (wh * PKW)) + pp, wy * q.iw + wx, (y - wy) * PKW + x - wx);
}

// Tap t's weights for the chunk (staged in tile_w), loaded once for every position.
fn col_w(t: u32) -> Col16 {
    let w = t * CB4;
    var r = Col16();
    r.a = tile_w[w];
    if (CB4 > 1u) {
        r.b = tile_w[w + 1u];
    }
    if (CB4 > 2u) {
        r.c = tile_w[w + 2u];
    }
    if (CB4 > 3u) {
        r.d = tile_w[w + 3u];
    }
    return r;
}

// col[t, e] = the first chunk's products at position e, += the later chunks' (a uniform
// branch), where e is one of the workgroup's positions.
fn col_put(i: u32, s: f32, add: bool, ok: bool) {
    if (ok && add) {
        col_f[i] += s;
    } else if (ok) {
        col_f[i] = s;
    }
}

// A tap's weights against one position's chunk.
fn col_dot(w: Col16, v: Col16) -> f32 {
    var s = dot(w.a, v.a);
    if (CB4 > 1u) {
        s += dot(w.b, v.b);
    }
    if (CB4 > 2u) {
        s += dot(w.c, v.c);
    }
    if (CB4 > 3u) {
        s += dot(w.d, v.d);
    }
    return s;
}

@compute @workgroup_size(WGX, 1, 1)
fn conv2d_grad_input_col(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.z + q.z0;
    let g = z / q.groups;
    let grp = z - g * q.groups;
    let n0 = (wid.x + q.x0) * q.strips;
    let ni = min(q.strips, q.n - n0);
    let plane = q.ih * q.iw;
    let np = ni * plane;
    let taps = q.kh * KW;
    let wz = z * q.wgrp + q.w0;
    let chunk = 4u * CB4;
    // Position e of the workgroup is image n0 + e / plane, offset e % plane; its dy address
    // (channel 0 of the group) is base + e + (e / plane) * (ci - 1) * plane.
    let base = ((g * q.n + n0) * q.ci + grp * q.cig) * plane;
    // The pooled gradient's planes (PKH > 0).
    let pbase = ((g * q.n + n0) * q.ci + grp * q.cig) * (plane / max(PKH * PKW, 1u));
    let e0 = lid.x;
    let e1 = lid.x + WGX;
    let at0 = col_at(e0, np, plane, base, pbase);
    let at1 = col_at(e1, np, plane, base, pbase);
    let ok0 = e0 < np;
    let ok1 = PX > 1u && e1 < np;
    var v0 = Col16();
    var v1 = Col16();
    if (q.cig <= chunk) {
        v0 = col_load(at0, plane, 0u, ok0);
        if (PX > 1u) {
            v1 = col_load(at1, plane, 0u, ok1);
        }
    }
    let ohw = q.oh * q.ow;
    let last = q.cig - 1u;
    for (var c = 0u; c < q.cog; c++) {
        for (var k0 = 0u; k0 < q.cig; k0 += chunk) {
            if (q.cig > chunk) {
                v0 = col_load(at0, plane, k0, ok0);
                if (PX > 1u) {
                    v1 = col_load(at1, plane, k0, ok1);
                }
            }
            workgroupBarrier();
            for (var e = lid.x; e < taps * CB4; e += WGX) {
                let t = e / CB4;
                let o = k0 + 4u * (e - t * CB4);
                let ky = t / KW;
                let wx = wz + c * q.w_oc + ky * q.w_ky + (t - ky * KW) * q.w_kx;
                let wv = vec4<f32>(b_in[wx + min(o, last) * q.w_ic], b_in[wx + min(o + 1u, last) * q.w_ic],
                                   b_in[wx + min(o + 2u, last) * q.w_ic], b_in[wx + min(o + 3u, last) * q.w_ic]);
                tile_w[e] = select(vec4<f32>(0.0), wv, vec4<u32>(o, o + 1u, o + 2u, o + 3u) < vec4<u32>(q.cig));
            }
            workgroupBarrier();
            for (var t = 0u; t < taps; t++) {
                let w = col_w(t);
                col_put(t * np + e0, col_dot(w, v0), k0 > 0u, ok0);
                if (PX > 1u) {
                    col_put(t * np + e1, col_dot(w, v1), k0 > 0u, ok1);
                }
            }
        }
        workgroupBarrier();
        for (var f = lid.x; f < ni * ohw; f += WGX) {
            let i = f / ohw;
            let r = f - i * ohw;
            let y = r / q.ow;
            let x = r - y * q.ow;
            let ky0 = tap_lo(i32(y) - i32(q.p0), 1u);
            let ky1 = tap_end(i32(y) - i32(q.p0), 1u, q.ih, q.kh);
            let kx0 = tap_lo(i32(x) - i32(q.p1), 1u);
            let kx1 = tap_end(i32(x) - i32(q.p1), 1u, q.iw, KW);
            // col index of tap (ky, 0) at dy position (y + ky - p0, x - p1) of image i (u32
            // arithmetic wraps; every index read is inside).
            var s = 0.0;
            for (var ky = ky0; ky < ky1; ky++) {
                let row = ky * KW * np + i * plane + (y + ky - q.p0) * q.iw + x - q.p1;
                for (var kx = kx0; kx < kx1; kx++) {
                    s += col_f[row + kx * np + kx];
                }
            }
            out3[((g * q.n + n0 + i) * q.co + grp * q.cog + c) * ohw + r] = s;
        }
    }
}
