// BatchNorm2d and GroupNorm: statistics, normalisation, exact gradients, running estimates.
//
// x is [G, N, C, H, W] (model-major); statistics are [G, 3, S] with rows mean,
// invstd = 1/sqrt(var + eps) and biased var. Batch norm: S = C, statistic s = channel.
// Group norm: S = N * groups, statistic s = n * groups + group. Per-channel weight and
// bias are [G, C] for both.
//
// Reductions (statistics, the sums of the exact gradient, the weight gradient) use one
// workgroup per item (statistic or channel) of one model, so nothing crosses models. An
// item's elements are `n_seg` runs ("segments") of hw contiguous values, `seg_stride`
// apart: batch norm per channel = N runs C*hw apart; group norm per statistic = the group's
// cpg channels, back to back. Invocations walk the item WGR values apart, tracking
// (segment, offset) by addition only. The item index is wg.x + wg.y * workgroups-in-x.
//
// Elementwise kernels give each invocation VPT elements WG apart: its position (model,
// sample, group, channel in group, position) is decoded once with divisions, then advanced
// by additions. The workgroup index is wg.x + wg.y * workgroups-in-x.

struct Params {
    g: u32,
    n: u32,
    c: u32,
    hw: u32,
    s: u32,           // statistics per model
    n_mul: u32,       // statistic of (n, channel) = n * n_mul + channel / cpg (0 for batch norm)
    cpg: u32,         // channels per group (1 for batch norm)
    stat_mod: u32,    // groups (batch norm: C); first channel of statistic s = (s % stat_mod) * cpg
    n_seg: u32,       // reductions: segments per item
    seg_stride: u32,  // reductions: elements between segments
    d_seg: u32,       // WGR / hw
    d_off: u32,       // WGR % hw
    item_stride: u32, // reductions: elements between the starts of consecutive items
    c_step: u32,      // reductions: channel advance per segment
    items: u32,       // reductions: items per model
    flags: u32,       // bit 0: affine (weight, and bias where used); bit 1: sums_stats' shift only
    eps: f32,
    momentum: f32,    // running update; negative: cumulative average
    count: f32,       // reductions: values per item; sums kernels: values per channel in all
    unbias: f32,      // running update: n / (n - 1)
    numel: u32,       // elementwise: G * N * C * hw
    e_hw: u32,        // elementwise: WG written in the radices (hw, cpg, groups, N, G)
    e_cig: u32,
    e_grp: u32,
    e_n: u32,
    e_g: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read> weight: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// Aliases for the kernels whose operands differ (each entry point uses one name per binding).
@group(0) @binding(1) var<storage, read> run_mean_in: array<f32>;
@group(0) @binding(2) var<storage, read> run_var_in: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
// Exact-gradient scratch [G, S] of (mean, invstd, mean(dxh), mean(dxh * x_hat)).
@group(0) @binding(3) var<storage, read> scratch: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> scratch_out: array<vec4<f32>>;
// Running update: batch stats, then running mean, var and count, written in place.
@group(0) @binding(1) var<storage, read> batch_stats: array<f32>;
@group(0) @binding(2) var<storage, read_write> run_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> run_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> run_count: array<f32>;

// Elementwise and running-estimate kernels.
const WG: u32 = 256u;
const VPT: u32 = 4u;
// Reductions: WGR invocations per item, fewer for short items (chosen by the host).
override WGR: u32 = 256u;
const WGR_MAX: u32 = 256u;

fn affine() -> bool {
    return (p.flags & 1u) != 0u;
}

// ---- reductions -------------------------------------------------------------------------

var<workgroup> red_a: array<f32, WGR_MAX>;
var<workgroup> red_b: array<f32, WGR_MAX>;

// Sums (a, b) over the workgroup; every invocation gets the totals. Three barriers: WGR
// partials, then RED partial sums of WGR / RED strided values each, then every invocation
// adds the RED sums itself (barriers are what software adapters pay for most).
const RED: u32 = 32u;

fn workgroup_sum2(lid: u32, a: f32, b: f32) -> vec2<f32> {
    red_a[lid] = a;
    red_b[lid] = b;
    workgroupBarrier();
    if (lid < RED) {
        // Invocation lid reads lid, lid + RED, ... and writes lid: no other reads that.
        var sa = 0.0;
        var sb = 0.0;
        for (var j = lid; j < WGR; j += RED) {
            sa += red_a[j];
            sb += red_b[j];
        }
        red_a[lid] = sa;
        red_b[lid] = sb;
    }
    workgroupBarrier();
    var total = vec2<f32>(0.0, 0.0);
    for (var j = 0u; j < RED; j++) {
        total += vec2<f32>(red_a[j], red_b[j]);
    }
    // The arrays are reused by the next call.
    workgroupBarrier();
    return total;
}

// An invocation's walk over an item: segment and offset inside it.
struct Walk {
    seg: u32,
    off: u32,
}

fn walk_start(lid: u32) -> Walk {
    let seg = lid / p.hw;
    return Walk(seg, lid - seg * p.hw);
}

fn walk_next(w: Walk) -> Walk {
    var seg = w.seg + p.d_seg;
    var off = w.off + p.d_off;
    if (off >= p.hw) {
        off -= p.hw;
        seg += 1u;
    }
    return Walk(seg, off);
}

// Mean, invstd and biased variance per statistic. Two passes over the item: the mean, then
// the deviations d = x - mean, whose sum corrects the rounding of the first mean (in the
// mean and, as sum(d)^2 / count, in the squared deviations), so an input with a large mean
// keeps an accurate variance.
@compute @workgroup_size(WGR)
fn norm_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = wg.x + wg.y * nwg.x;
    if (item >= p.g * p.items) {
        return;
    }
    let lid = lid3.x;
    let gm = item / p.items;
    let k = item - gm * p.items;
    let base = gm * p.n * p.c * p.hw + k * p.item_stride;

    var sum = 0.0;
    for (var w = walk_start(lid); w.seg < p.n_seg; w = walk_next(w)) {
        sum += x[base + w.seg * p.seg_stride + w.off];
    }
    let mean = workgroup_sum2(lid, sum, 0.0).x / p.count;

    var sd = 0.0;
    var sd2 = 0.0;
    for (var w = walk_start(lid); w.seg < p.n_seg; w = walk_next(w)) {
        let d = x[base + w.seg * p.seg_stride + w.off] - mean;
        sd += d;
        sd2 += d * d;
    }
    let t = workgroup_sum2(lid, sd, sd2);
    let v = max((t.y - t.x * t.x / p.count) / p.count, 0.0);
    if (lid == 0u) {
        let o = gm * 3u * p.s + k;
        // The deviations' sum also corrects the rounding of the first-pass mean.
        out[o] = mean + t.x / p.count;
        out[o + p.s] = 1.0 / sqrt(v + p.eps);
        out[o + 2u * p.s] = v;
    }
}

// First dispatch of the exact gradient: per statistic, with dxh = dy * weight[c] and
// x_hat = (x - mean) * invstd, scratch = (mean, invstd, mean(dxh), mean(dxh * x_hat)).
@compute @workgroup_size(WGR)
fn norm_grad_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = wg.x + wg.y * nwg.x;
    if (item >= p.g * p.items) {
        return;
    }
    let lid = lid3.x;
    let gm = item / p.items;
    let k = item - gm * p.items;
    let base = gm * p.n * p.c * p.hw + k * p.item_stride;
    let so = gm * 3u * p.s + k;
    let mean = stats[so];
    let invstd = stats[so + p.s];
    let w0 = gm * p.c + (k % p.stat_mod) * p.cpg;

    var a = 0.0;
    var b = 0.0;
    for (var w = walk_start(lid); w.seg < p.n_seg; w = walk_next(w)) {
        let i = base + w.seg * p.seg_stride + w.off;
        var dxh = dy[i];
        if (affine()) {
            dxh *= weight[w0 + w.seg * p.c_step];
        }
        a += dxh;
        b += dxh * (x[i] - mean) * invstd;
    }
    let t = workgroup_sum2(lid, a, b);
    if (lid == 0u) {
        scratch_out[gm * p.s + k] = vec4<f32>(mean, invstd, t.x / p.count, t.y / p.count);
    }
}

// dweight[g, c] = sum over n, h, w of dy * x_hat, one workgroup per channel; for group norm
// each sample's segment uses its own statistic.
@compute @workgroup_size(WGR)
fn norm_weight_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = wg.x + wg.y * nwg.x;
    if (item >= p.g * p.items) {
        return;
    }
    let lid = lid3.x;
    let gm = item / p.items;
    let k = item - gm * p.items;
    let base = gm * p.n * p.c * p.hw + k * p.item_stride;
    let so = gm * 3u * p.s + k / p.cpg;

    var acc = 0.0;
    for (var w = walk_start(lid); w.seg < p.n_seg; w = walk_next(w)) {
        let i = base + w.seg * p.seg_stride + w.off;
        let si = so + w.seg * p.n_mul;
        acc += dy[i] * (x[i] - stats[si]) * stats[si + p.s];
    }
    let t = workgroup_sum2(lid, acc, 0.0);
    if (lid == 0u) {
        out[gm * p.c + k] = t.x;
    }
}

// ---- elementwise ------------------------------------------------------------------------

// Where an element sits: model, sample, group, channel in group, position. The channel is
// grp * cpg + cig (batch norm: cpg = 1, one "group" per channel).
struct Pos {
    g: u32,
    n: u32,
    grp: u32,
    cig: u32,
    hw: u32,
}

fn pos_of(i: u32) -> Pos {
    let plane = i / p.hw;
    let gn = plane / p.c;
    let c = plane - gn * p.c;
    let g = gn / p.n;
    let grp = c / p.cpg;
    return Pos(g, gn - g * p.n, grp, c - grp * p.cpg, i - plane * p.hw);
}

// The position WG elements further on: a mixed-radix addition of WG's digits (hw, cpg,
// groups, N), each digit with at most one carry, no division.
fn pos_step(q: Pos) -> Pos {
    var r: Pos;
    r.hw = q.hw + p.e_hw;
    var carry = u32(r.hw >= p.hw);
    r.hw -= carry * p.hw;
    r.cig = q.cig + p.e_cig + carry;
    carry = u32(r.cig >= p.cpg);
    r.cig -= carry * p.cpg;
    r.grp = q.grp + p.e_grp + carry;
    carry = u32(r.grp >= p.stat_mod);
    r.grp -= carry * p.stat_mod;
    r.n = q.n + p.e_n + carry;
    carry = u32(r.n >= p.n);
    r.n -= carry * p.n;
    r.g = q.g + p.e_g + carry;
    return r;
}

// Index of an element's statistic within its model's rows.
fn stat_index(q: Pos) -> u32 {
    return q.n * p.n_mul + q.grp;
}

// Index of an element's channel in [G, C].
fn channel_index(q: Pos) -> u32 {
    return q.g * p.c + q.grp * p.cpg + q.cig;
}

// Each workgroup covers WG * VPT consecutive elements; invocation lid takes every WG-th one
// from block start + lid, so neighbouring invocations touch neighbouring elements.
fn first_element(wg: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG * VPT + lid.x;
}

// y = (x - mean) * invstd, then * weight[c] + bias[c] if affine.
@compute @workgroup_size(WG)
fn norm_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    var i = first_element(wg, nwg, lid);
    if (i >= p.numel) {
        return;
    }
    var q = pos_of(i);
    for (var j = 0u; j < VPT && i < p.numel; j++) {
        let so = q.g * 3u * p.s + stat_index(q);
        var v = (x[i] - stats[so]) * stats[so + p.s];
        if (affine()) {
            let wc = channel_index(q);
            v = v * weight[wc] + bias[wc];
        }
        out[i] = v;
        i += WG;
        q = pos_step(q);
    }
}

// Statistics held fixed (running estimates): dx = dy * weight[c] * invstd.
@compute @workgroup_size(WG)
fn norm_grad_fixed(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    var i = first_element(wg, nwg, lid);
    if (i >= p.numel) {
        return;
    }
    var q = pos_of(i);
    for (var j = 0u; j < VPT && i < p.numel; j++) {
        var d = dy[i] * stats[q.g * 3u * p.s + p.s + stat_index(q)];
        if (affine()) {
            d *= weight[channel_index(q)];
        }
        out[i] = d;
        i += WG;
        q = pos_step(q);
    }
}

// Second dispatch of the exact gradient:
// dx = invstd * (dxh - mean(dxh) - x_hat * mean(dxh * x_hat)).
@compute @workgroup_size(WG)
fn norm_grad_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    var i = first_element(wg, nwg, lid);
    if (i >= p.numel) {
        return;
    }
    var q = pos_of(i);
    for (var j = 0u; j < VPT && i < p.numel; j++) {
        let sc = scratch[q.g * p.s + stat_index(q)];
        var dxh = dy[i];
        if (affine()) {
            dxh *= weight[channel_index(q)];
        }
        let xh = (x[i] - sc.x) * sc.y;
        out[i] = sc.y * (dxh - sc.z - xh * sc.w);
        i += WG;
        q = pos_step(q);
    }
}

// ---- running estimates ------------------------------------------------------------------

// Eval-mode batch norm: stats [G, 3, C] from running mean and var [G, C]; one invocation
// per (model, channel).
@compute @workgroup_size(WG)
fn norm_running_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    if (t >= p.g * p.c) {
        return;
    }
    let v = run_var_in[t];
    store_stats(t, run_mean_in[t], 1.0 / sqrt(v + p.eps), v);
}

// Offset of channel t = (model, channel) of [G, C] in the statistics [G, 3, C].
fn stats_offset(t: u32) -> u32 {
    return t + t / p.c * 2u * p.c;
}

// Writes channel t's statistics.
fn store_stats(t: u32, mean: f32, invstd: f32, v: f32) {
    let o = stats_offset(t);
    out[o] = mean;
    out[o + p.c] = invstd;
    out[o + 2u * p.c] = v;
}

// ---- a batch summed in parts (micro-batches) ---------------------------------------------

// Batch-norm statistics from sums over the parts of a batch, one invocation per (model,
// channel): x holds sum(x), dy sum(d) and stats sum(d * d) for the deviations d = x - m1
// from the first pass's mean m1 = sum(x) / count; the result is what norm_stats computes.
// Flag bit 1: only (m1, 1, 0), the shift the deviations are summed with.
@compute @workgroup_size(WG)
fn norm_sums_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    if (t >= p.g * p.c) {
        return;
    }
    let m1 = x[t] / p.count;
    if ((p.flags & 2u) != 0u) {
        store_stats(t, m1, 1.0, 0.0);
        return;
    }
    let sd = dy[t];
    let v = max((stats[t] - sd * sd / p.count) / p.count, 0.0);
    store_stats(t, m1 + sd / p.count, 1.0 / sqrt(v + p.eps), v);
}

// norm_grad_apply's scratch from the whole batch's sums, one invocation per (model,
// channel): x holds sum(dy), dy sum(dy * x_hat) (dy at norm_apply's output), with the
// statistics and weight: (mean, invstd, mean(dxh), mean(dxh * x_hat)) for dxh = dy * weight.
@compute @workgroup_size(WG)
fn norm_grad_sums(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    if (t >= p.g * p.c) {
        return;
    }
    let so = stats_offset(t);
    var wc = 1.0;
    if (affine()) {
        wc = weight[t];
    }
    scratch_out[t] = vec4<f32>(stats[so], stats[so + p.c], wc * x[t] / p.count, wc * dy[t] / p.count);
}

// PyTorch's training-mode update, in place, one workgroup per model:
// running = (1 - m) * running + m * batch (variance unbiased), then count += 1, where
// m = momentum, or 1 / (count + 1) for a cumulative average. Every invocation reads the
// count before invocation 0 writes it.
@compute @workgroup_size(WG)
fn norm_running_update(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let gm = wg.x + wg.y * nwg.x;
    if (gm >= p.g) {
        return;
    }
    let count = run_count[gm];
    var m = p.momentum;
    if (m < 0.0) {
        m = 1.0 / (count + 1.0);
    }
    for (var c = lid3.x; c < p.c; c += WG) {
        let so = gm * 3u * p.c + c;
        let ro = gm * p.c + c;
        run_mean[ro] = (1.0 - m) * run_mean[ro] + m * batch_stats[so];
        run_var[ro] = (1.0 - m) * run_var[ro] + m * batch_stats[so + 2u * p.c] * p.unbias;
    }
    storageBarrier();
    if (lid3.x == 0u) {
        run_count[gm] = count + 1.0;
    }
}
