// Swish with a learnable per-model slope (a modelbatch custom op): y = x * sigmoid(beta_g * x).
//
// Bindings follow modelbatch's custom-op layout: the uniform, then the inputs x [G, ...] and
// beta [G, 1] (read-only), then the output y, shaped like x.

struct Params {
    models: u32,   // G
    threads: u32,  // invocations asked for: one per element of y
    row: u32,      // flat invocation index = id.x + id.y * row
    out_len: u32,  // elements of y per model
    x_len: u32,    // elements of x per model
    beta_len: u32, // elements of beta per model (1)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;

fn sigmoid(t: f32) -> f32 {
    // exp overflows to +inf for t < -88, and 1 / inf is the right limit, 0.
    return 1.0 / (1.0 + exp(-t));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * p.row;
    if i >= p.threads {
        return;
    }
    let v = x[i];
    y[i] = v * sigmoid(beta[(i / p.out_len) * p.beta_len] * v);
}
