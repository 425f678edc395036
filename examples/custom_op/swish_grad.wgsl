// Gradients of Swish with a learnable per-model slope, y = x * sigmoid(beta_g * x), with
// s = sigmoid(beta_g * x):
//   grad_x:    dx = dy * (s + beta_g * x * s * (1 - s))           one invocation per element
//   grad_beta: dbeta_g = sum over model g of dy * x^2 * s * (1 - s)  one invocation per model
//
// Both kernels take the inputs [dy, x, beta] (modelbatch's custom-op layout: the uniform,
// the inputs read-only, then the output: dx shaped like x, or dbeta [G, 1]).

struct Params {
    models: u32,   // G
    threads: u32,  // invocations asked for
    row: u32,      // flat invocation index = id.x + id.y * row
    out_len: u32,  // elements of the output per model
    dy_len: u32,   // elements of dy per model (= x_len)
    x_len: u32,    // elements of x per model
    beta_len: u32, // elements of beta per model (1)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;

fn sigmoid(t: f32) -> f32 {
    return 1.0 / (1.0 + exp(-t));
}

@compute @workgroup_size(WG)
fn grad_x(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * p.row;
    if i >= p.threads {
        return;
    }
    let b = beta[(i / p.x_len) * p.beta_len];
    let v = x[i];
    let s = sigmoid(b * v);
    out[i] = dy[i] * (s + b * v * s * (1.0 - s));
}

@compute @workgroup_size(WG)
fn grad_beta(@builtin(global_invocation_id) id: vec3<u32>) {
    let g = id.x + id.y * p.row;
    if g >= p.threads {
        return;
    }
    let b = beta[g * p.beta_len];
    let base = g * p.x_len;
    var acc = 0.0;
    for (var j = 0u; j < p.x_len; j++) {
        let v = x[base + j];
        let s = sigmoid(b * v);
        acc += dy[base + j] * v * v * s * (1.0 - s);
    }
    out[g * p.out_len] = acc;
}
