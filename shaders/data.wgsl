// Data ops: batches gathered from a dataset resident on the GPU. Images are stored as
// bytes packed four to a u32 (little-endian), `pixels` bytes per image; each model's step
// batch is a list of sample indices. Normalisation (p / 255 - mean) / std happens here.

struct Params {
    count: u32,    // outputs: G * N * pixels for images, G * N for labels
    pixels: u32,   // bytes per image
    mean: f32,
    inv_std: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> out_f32: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_u32: array<u32>;
@group(0) @binding(3) var<storage, read_write> out_v4: array<vec4<f32>>;

override WG: u32 = 256u;

fn byte_at(offset: u32) -> u32 {
    return (data[offset / 4u] >> ((offset % 4u) * 8u)) & 0xffu;
}

@compute @workgroup_size(WG)
fn gather_images(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.count) {
        return;
    }
    let sample = indices[i / p.pixels];
    let px = byte_at(sample * p.pixels + i % p.pixels);
    out_f32[i] = (f32(px) / 255.0 - p.mean) * p.inv_std;
}

// The same 4 pixels per invocation where images hold a multiple of 4 bytes: one u32 of the
// dataset in, one vec4 out (on lavapipe, whose loads and stores cost about as much per vec4
// as per scalar, ~3x faster). `count` counts the vec4s.
@compute @workgroup_size(WG)
fn gather_images4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.count) {
        return;
    }
    let quads = p.pixels / 4u;
    let sample = indices[i / quads];
    let word = data[sample * quads + i % quads];
    let px = vec4<f32>(vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(0xffu));
    out_v4[i] = (px / 255.0 - p.mean) * p.inv_std;
}

@compute @workgroup_size(WG)
fn gather_labels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.count) {
        return;
    }
    out_u32[i] = byte_at(indices[i]);
}
