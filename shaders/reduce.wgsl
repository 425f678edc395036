// Sums over axes and their inverse, the broadcast. Shapes arrive with adjacent axes of the
// same kind merged, so at most 8 kept and 8 reduced dimensions remain; sizes and input
// strides are packed four to a vec4 (uniform arrays need 16-byte elements).

struct Params {
    n_out: u32,
    rank_kept: u32,
    rank_red: u32,
    n_red: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    kept_size: array<vec4<u32>, 2>,
    kept_stride: array<vec4<u32>, 2>,
    red_size: array<vec4<u32>, 2>,
    red_stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

fn kept_offset(o: u32) -> u32 {
    var rem = o;
    var off = 0u;
    for (var d = i32(p.rank_kept) - 1; d >= 0; d--) {
        let size = p.kept_size[d / 4][d % 4];
        off += (rem % size) * p.kept_stride[d / 4][d % 4];
        rem /= size;
    }
    return off;
}

fn red_offset(r: u32) -> u32 {
    var rem = r;
    var off = 0u;
    for (var d = i32(p.rank_red) - 1; d >= 0; d--) {
        let size = p.red_size[d / 4][d % 4];
        off += (rem % size) * p.red_stride[d / 4][d % 4];
        rem /= size;
    }
    return off;
}

// out[o] = scale * sum over the reduced coordinates of x. One workgroup per output: its
// invocations stride over the reduced elements and combine partial sums in workgroup
// memory in a fixed order (deterministic). Keeping each invocation's loop short matters:
// some drivers (lavapipe) silently cut loops after 65,535 iterations per invocation.
const RED_WG: u32 = 64u;
var<workgroup> partial: array<f32, RED_WG>;

@compute @workgroup_size(RED_WG)
fn sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
       @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = wg.x + wg.y * nwg.x;
    var acc = 0.0;
    if (o < p.n_out) {
        let base = kept_offset(o);
        if (p.rank_red == 1u) {
            let stride = p.red_stride[0][0];
            for (var r = lid.x; r < p.n_red; r += RED_WG) {
                acc += x[base + r * stride];
            }
        } else if (p.rank_red == 2u) {
            let outer = p.red_size[0][0];
            let inner = p.red_size[0][1];
            let s0 = p.red_stride[0][0];
            let s1 = p.red_stride[0][1];
            if (inner >= RED_WG) {
                // Row by row (a conv bias gradient: images x positions): no division per
                // element, which CPU adapters run lane by lane.
                for (var a = 0u; a < outer; a++) {
                    let row = base + a * s0;
                    for (var b = lid.x; b < inner; b += RED_WG) {
                        acc += x[row + b * s1];
                    }
                }
            } else {
                for (var r = lid.x; r < p.n_red; r += RED_WG) {
                    acc += x[base + (r / inner) * s0 + (r % inner) * s1];
                }
            }
        } else {
            for (var r = lid.x; r < p.n_red; r += RED_WG) {
                acc += x[base + red_offset(r)];
            }
        }
    }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var stride = RED_WG / 2u; stride > 0u; stride /= 2u) {
        if (lid.x < stride) {
            partial[lid.x] += partial[lid.x + stride];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u && o < p.n_out) {
        out[o] = partial[0] * p.scale;
    }
}

// The same sums with one invocation per output, adding its elements in order: for one short
// reduced axis that is not the innermost (a linear layer's bias gradient, [G, N, F] summed
// over N), where neighbouring outputs read neighbouring elements (contiguous across lanes)
// and a workgroup per output would idle.
@compute @workgroup_size(WG)
fn sum_serial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * WG;
    if (o >= p.n_out) {
        return;
    }
    let base = kept_offset(o);
    let stride = p.red_stride[0][0];
    var acc = 0.0;
    for (var r = 0u; r < p.n_red; r++) {
        acc += x[base + r * stride];
    }
    out[o] = acc * p.scale;
}

// out[o] = scale * x[offset of o's coordinates]; repeated axes have input stride 0.
@compute @workgroup_size(WG)
fn broadcast(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * WG;
    if (o >= p.n_out) {
        return;
    }
    out[o] = x[kept_offset(o)] * p.scale;
}
