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

// out[o] = scale * sum over the reduced coordinates of x. One invocation per output.
@compute @workgroup_size(WG)
fn sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * WG;
    if (o >= p.n_out) {
        return;
    }
    let base = kept_offset(o);
    var acc = 0.0;
    if (p.rank_red == 1u) {
        let stride = p.red_stride[0][0];
        for (var r = 0u; r < p.n_red; r++) {
            acc += x[base + r * stride];
        }
    } else {
        for (var r = 0u; r < p.n_red; r++) {
            acc += x[base + red_offset(r)];
        }
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
