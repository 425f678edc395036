// Batched GEMM: C[g] = op(A[g]) * op(B[g]) (+ bias[g] on every row) (then relu if asked)
// (or times relu's derivative at a [G, M, N] tensor bound in the bias slot).
//
// One invocation computes a 4x4 block of C held in four vec4 registers (register blocking);
// workgroups tile C in WG x WG blocks of invocations and z walks the model batch g.
// Entry points by memory layout (the Rust side picks one, `linear.rs`):
//   gemm_nt  A [M,K], B [N,K]: both K-contiguous (linear forward);      needs K % 4 == 0
//   gemm_nn  A [M,K], B [K,N]: B N-contiguous (backward to the input);  needs N % 4 == 0
//   gemm_nn4 the same with A read as vec4 along K too;                  needs K % 4 == 0 too
//   gemm_tn  A [K,M], B [K,N]: both K-major (backward to the weight);   needs M % 4 == 0, N % 4 == 0
//   gemm     any layout through strides, scalar loads (odd sizes).
// (gemm_tile and gemm_split at the end: workgroup-memory tiles, and the depth split over
// a workgroup's invocations, for GPUs.)
// gemm_tn_sum and gemm_sum also write the sums of A's rows over the depth to `a_sums` [G, M]
// (a linear layer's bias gradient beside its weight gradient dy^T x: dy summed over the
// samples), from the A values they load anyway.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,     // bit 0: add bias, bit 1: relu, bit 2: times relu'(y) with y [G, M, N] bound as `bias`
    a_sm: u32,      // strides of A in elements: row (m), depth (k)
    a_sk: u32,
    b_sk: u32,      // strides of B: depth (k), column (n)
    b_sn: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read_write> a_sums: array<f32>;

override WG: u32 = 8u;
// 4x4 blocks per invocation side by side along C's columns: 1, or 2 in gemm_nt, gemm_nn4
// and gemm_tn(_sum) (`gemm_cols`: each A value loaded then serves twice the multiply-adds;
// the other entry points are built with 1).
override BX: u32 = 1u;
// 4x4 blocks per invocation stacked along C's rows: 1, or 2 in gemm_nt, gemm_nn4 and
// gemm_tn(_sum) (`gemm_rows`: each B value loaded then serves twice the multiply-adds; the
// other entry points are built with 1).
override BY: u32 = 1u;

// Writes the 4x4 block at (r0, c0) of model g, applying the epilogue; columns past N and
// rows past M are dropped.
fn store_block(g: u32, r0: u32, c0: u32, acc: array<vec4<f32>, 4>) {
    var add = vec4<f32>(0.0);
    if ((p.flags & 1u) != 0u) {
        for (var j = 0u; j < 4u; j++) {
            if (c0 + j < p.n) {
                add[j] = bias[g * p.n + c0 + j];
            }
        }
    }
    let base = g * p.m * p.n;
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + i;
        if (r >= p.m) {
            break;
        }
        var v = acc[i] + add;
        if ((p.flags & 2u) != 0u) {
            v = max(v, vec4<f32>(0.0));
        }
        if ((p.flags & 4u) != 0u) {
            // relu's derivative at y (as the `unary_grad` kernel computes it: dy * 1 or dy * 0).
            let row = base + r * p.n;
            var dr = vec4<f32>(0.0);
            for (var j = 0u; j < 4u; j++) {
                if (c0 + j < p.n) {
                    dr[j] = select(0.0, 1.0, bias[row + c0 + j] > 0.0);
                }
            }
            v = v * dr;
        }
        for (var j = 0u; j < 4u; j++) {
            if (c0 + j < p.n) {
                c[base + r * p.n + c0 + j] = v[j];
            }
        }
    }
}

// The vec4 offsets of rows r0 .. r0 + 3 of model g's A [M, K] (K % 4 == 0), rows past the
// edge clamped for loading (dropped at the store).
fn a_rows(g: u32, r0: u32, k4: u32) -> vec4<u32> {
    let last = p.m - 1u;
    return (vec4<u32>(g * p.m) + min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last))) * k4;
}

@compute @workgroup_size(WG, WG, 1)
fn gemm_nt(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.z;
    let c0 = gid.x * 4u * BX;
    let r0 = gid.y * 4u * BY;
    if (c0 >= p.n || r0 >= p.m) {
        return;
    }
    let k4 = p.k / 4u;
    // Rows and columns past the edge are clamped for loading and dropped at the store.
    // (Constant indices only: a private array indexed in a loop may live in local memory
    // unless the driver unrolls the loop.)
    let ar = a_rows(g, r0, k4);
    // The second block's rows (BY = 2).
    let ar2 = a_rows(g, r0 + 4u, k4);
    let a0 = ar.x;
    let a1 = ar.y;
    let a2 = ar.z;
    let a3 = ar.w;
    let bb0 = (g * p.n + min(c0, p.n - 1u)) * k4;
    let bb1 = (g * p.n + min(c0 + 1u, p.n - 1u)) * k4;
    let bb2 = (g * p.n + min(c0 + 2u, p.n - 1u)) * k4;
    let bb3 = (g * p.n + min(c0 + 3u, p.n - 1u)) * k4;
    // The second block's columns (BX = 2).
    let cc0 = (g * p.n + min(c0 + 4u, p.n - 1u)) * k4;
    let cc1 = (g * p.n + min(c0 + 5u, p.n - 1u)) * k4;
    let cc2 = (g * p.n + min(c0 + 6u, p.n - 1u)) * k4;
    let cc3 = (g * p.n + min(c0 + 7u, p.n - 1u)) * k4;
    var acc: array<vec4<f32>, 4>;
    var acc2: array<vec4<f32>, 4>;
    var acc3: array<vec4<f32>, 4>;
    var acc4: array<vec4<f32>, 4>;
    for (var kk = 0u; kk < k4; kk++) {
        let b0 = b4[bb0 + kk];
        let b1 = b4[bb1 + kk];
        let b2 = b4[bb2 + kk];
        let b3 = b4[bb3 + kk];
        let v0 = a4[a0 + kk];
        let v1 = a4[a1 + kk];
        let v2 = a4[a2 + kk];
        let v3 = a4[a3 + kk];
        acc[0] += vec4<f32>(dot(v0, b0), dot(v0, b1), dot(v0, b2), dot(v0, b3));
        acc[1] += vec4<f32>(dot(v1, b0), dot(v1, b1), dot(v1, b2), dot(v1, b3));
        acc[2] += vec4<f32>(dot(v2, b0), dot(v2, b1), dot(v2, b2), dot(v2, b3));
        acc[3] += vec4<f32>(dot(v3, b0), dot(v3, b1), dot(v3, b2), dot(v3, b3));
        var e0 = vec4<f32>();
        var e1 = vec4<f32>();
        var e2 = vec4<f32>();
        var e3 = vec4<f32>();
        if (BX > 1u) {
            e0 = b4[cc0 + kk];
            e1 = b4[cc1 + kk];
            e2 = b4[cc2 + kk];
            e3 = b4[cc3 + kk];
            acc2[0] += vec4<f32>(dot(v0, e0), dot(v0, e1), dot(v0, e2), dot(v0, e3));
            acc2[1] += vec4<f32>(dot(v1, e0), dot(v1, e1), dot(v1, e2), dot(v1, e3));
            acc2[2] += vec4<f32>(dot(v2, e0), dot(v2, e1), dot(v2, e2), dot(v2, e3));
            acc2[3] += vec4<f32>(dot(v3, e0), dot(v3, e1), dot(v3, e2), dot(v3, e3));
        }
        if (BY > 1u) {
            let u0 = a4[ar2.x + kk];
            let u1 = a4[ar2.y + kk];
            let u2 = a4[ar2.z + kk];
            let u3 = a4[ar2.w + kk];
            acc3[0] += vec4<f32>(dot(u0, b0), dot(u0, b1), dot(u0, b2), dot(u0, b3));
            acc3[1] += vec4<f32>(dot(u1, b0), dot(u1, b1), dot(u1, b2), dot(u1, b3));
            acc3[2] += vec4<f32>(dot(u2, b0), dot(u2, b1), dot(u2, b2), dot(u2, b3));
            acc3[3] += vec4<f32>(dot(u3, b0), dot(u3, b1), dot(u3, b2), dot(u3, b3));
            if (BX > 1u) {
                acc4[0] += vec4<f32>(dot(u0, e0), dot(u0, e1), dot(u0, e2), dot(u0, e3));
                acc4[1] += vec4<f32>(dot(u1, e0), dot(u1, e1), dot(u1, e2), dot(u1, e3));
                acc4[2] += vec4<f32>(dot(u2, e0), dot(u2, e1), dot(u2, e2), dot(u2, e3));
                acc4[3] += vec4<f32>(dot(u3, e0), dot(u3, e1), dot(u3, e2), dot(u3, e3));
            }
        }
    }
    store_block(g, r0, c0, acc);
    if (BX > 1u && c0 + 4u < p.n) {
        store_block(g, r0, c0 + 4u, acc2);
    }
    if (BY > 1u && r0 + 4u < p.m) {
        store_block(g, r0 + 4u, c0, acc3);
        if (BX > 1u && c0 + 4u < p.n) {
            store_block(g, r0 + 4u, c0 + 4u, acc4);
        }
    }
}

@compute @workgroup_size(WG, WG, 1)
fn gemm_nn(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.z;
    let c0 = gid.x * 4u;
    let r0 = gid.y * 4u;
    if (c0 >= p.n || r0 >= p.m) {
        return;
    }
    let n4 = p.n / 4u;
    var arow: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        arow[i] = (g * p.m + min(r0 + i, p.m - 1u)) * p.k;
    }
    let bbase = g * p.k * n4 + gid.x;
    var acc: array<vec4<f32>, 4>;
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = b4[bbase + kk * n4];
        acc[0] += a[arow[0] + kk] * bv;
        acc[1] += a[arow[1] + kk] * bv;
        acc[2] += a[arow[2] + kk] * bv;
        acc[3] += a[arow[3] + kk] * bv;
    }
    store_block(g, r0, c0, acc);
}

// gemm_nn with A's rows read 4 depths at a time (K % 4 == 0): 8 vec4 loads per 64
// multiply-adds instead of 4 vec4 and 16 scalars (on lavapipe, whose loads cost about as much
// per vec4 as per scalar, LeNet's input gradients of fc1 and fc2 ~25% faster). The sums add
// their terms in gemm_nn's order.
@compute @workgroup_size(WG, WG, 1)
fn gemm_nn4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.z;
    let c0 = gid.x * 4u * BX;
    let r0 = gid.y * 4u * BY;
    if (c0 >= p.n || r0 >= p.m) {
        return;
    }
    let n4 = p.n / 4u;
    let k4 = p.k / 4u;
    let ar = a_rows(g, r0, k4);
    let a0 = ar.x;
    let a1 = ar.y;
    let a2 = ar.z;
    let a3 = ar.w;
    // The second block's rows (BY = 2).
    let ar2 = a_rows(g, r0 + 4u, k4);
    var bi = g * p.k * n4 + gid.x * BX;
    // The second block's columns (BX = 2), clamped past the edge.
    let b2 = min(gid.x * BX + 1u, n4 - 1u) - gid.x * BX;
    var acc: array<vec4<f32>, 4>;
    var acc2: array<vec4<f32>, 4>;
    var acc3: array<vec4<f32>, 4>;
    var acc4: array<vec4<f32>, 4>;
    for (var kk = 0u; kk < k4; kk++) {
        let v0 = a4[a0 + kk];
        let v1 = a4[a1 + kk];
        let v2 = a4[a2 + kk];
        let v3 = a4[a3 + kk];
        var u0 = vec4<f32>();
        var u1 = vec4<f32>();
        var u2 = vec4<f32>();
        var u3 = vec4<f32>();
        if (BY > 1u) {
            u0 = a4[ar2.x + kk];
            u1 = a4[ar2.y + kk];
            u2 = a4[ar2.z + kk];
            u3 = a4[ar2.w + kk];
        }
        for (var d = 0u; d < 4u; d++) {
            let bv = b4[bi];
            acc[0] += v0[d] * bv;
            acc[1] += v1[d] * bv;
            acc[2] += v2[d] * bv;
            acc[3] += v3[d] * bv;
            if (BY > 1u) {
                acc3[0] += u0[d] * bv;
                acc3[1] += u1[d] * bv;
                acc3[2] += u2[d] * bv;
                acc3[3] += u3[d] * bv;
            }
            if (BX > 1u) {
                let bw = b4[bi + b2];
                acc2[0] += v0[d] * bw;
                acc2[1] += v1[d] * bw;
                acc2[2] += v2[d] * bw;
                acc2[3] += v3[d] * bw;
                if (BY > 1u) {
                    acc4[0] += u0[d] * bw;
                    acc4[1] += u1[d] * bw;
                    acc4[2] += u2[d] * bw;
                    acc4[3] += u3[d] * bw;
                }
            }
            bi += n4;
        }
    }
    store_block(g, r0, c0, acc);
    if (BX > 1u && c0 + 4u < p.n) {
        store_block(g, r0, c0 + 4u, acc2);
    }
    if (BY > 1u && r0 + 4u < p.m) {
        store_block(g, r0 + 4u, c0, acc3);
        if (BX > 1u && c0 + 4u < p.n) {
            store_block(g, r0 + 4u, c0 + 4u, acc4);
        }
    }
}

// The 4x4 block of C at (r0, c0) and the sums of A's rows r0 .. r0 + 3 over the depth.
struct Block {
    acc: array<vec4<f32>, 4>,
    a_sum: vec4<f32>,
}

// Writes the A sums of rows r0 .. r0 + 3 (invocations of the first column block only).
fn store_sums(g: u32, r0: u32, c0: u32, a_sum: vec4<f32>) {
    if (c0 != 0u) {
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        if (r0 + i < p.m) {
            a_sums[g * p.m + r0 + i] = a_sum[i];
        }
    }
}

// One depth step of a block: row i of the block gets a[i] * b; with `sums`, A's sums get a.
fn block_step(r: ptr<function, Block>, av: vec4<f32>, bv: vec4<f32>, sums: bool) {
    (*r).acc[0] += av.x * bv;
    (*r).acc[1] += av.y * bv;
    (*r).acc[2] += av.z * bv;
    (*r).acc[3] += av.w * bv;
    if (sums) {
        (*r).a_sum += av;
    }
}

// Stores a block and A's sums (gemm_sum; the other entry points never reach a_sums).
fn store_with_sums(gid: vec3<u32>, r: Block) {
    store_block(gid.z, gid.y * 4u, gid.x * 4u * BX, r.acc);
    store_sums(gid.z, gid.y * 4u, gid.x * 4u * BX, r.a_sum);
}

// Whether the blocks of this invocation lie past C's edge.
fn outside(gid: vec3<u32>) -> bool {
    return gid.x * 4u * BX >= p.n || gid.y * 4u * BY >= p.m;
}

// The blocks of a gemm_tn(_sum) invocation: rows gid.y * 4 * BY .. + 3 and columns
// gid.x * 4 * BX .. + 3 in `top` (with A's row sums), with BX = 2 the next four columns in
// `right`, with BY = 2 the next four rows in `low` (sums too) and `low_right`.
struct Tn {
    top: Block,
    right: array<vec4<f32>, 4>,
    low: Block,
    low_right: array<vec4<f32>, 4>,
}

// One depth step of a block without sums.
fn quad_step(acc: ptr<function, array<vec4<f32>, 4>>, av: vec4<f32>, bv: vec4<f32>) {
    (*acc)[0] += av.x * bv;
    (*acc)[1] += av.y * bv;
    (*acc)[2] += av.z * bv;
    (*acc)[3] += av.w * bv;
}

// Rows and columns of the second blocks past the edge are clamped for loading (dropped at
// the store).
fn tn_blocks(gid: vec3<u32>, sums: bool) -> Tn {
    let g = gid.z;
    let m4 = p.m / 4u;
    let n4 = p.n / 4u;
    let abase = g * p.k * m4 + gid.y * BY;
    let bbase = g * p.k * n4 + gid.x * BX;
    let a2 = min(gid.y * BY + 1u, m4 - 1u) - gid.y * BY;
    let b2 = min(gid.x * BX + 1u, n4 - 1u) - gid.x * BX;
    var top: Block;
    var right: array<vec4<f32>, 4>;
    var low: Block;
    var low_right: array<vec4<f32>, 4>;
    for (var kk = 0u; kk < p.k; kk++) {
        let av = a4[abase + kk * m4];
        let bv = b4[bbase + kk * n4];
        block_step(&top, av, bv, sums);
        var bv2 = vec4<f32>();
        if (BX > 1u) {
            bv2 = b4[bbase + kk * n4 + b2];
            quad_step(&right, av, bv2);
        }
        if (BY > 1u) {
            let av2 = a4[abase + kk * m4 + a2];
            block_step(&low, av2, bv, sums);
            if (BX > 1u) {
                quad_step(&low_right, av2, bv2);
            }
        }
    }
    return Tn(top, right, low, low_right);
}

// Stores the blocks of tn_blocks that lie inside C.
fn store_tn(gid: vec3<u32>, t: Tn) {
    let g = gid.z;
    let r0 = gid.y * 4u * BY;
    let c0 = gid.x * 4u * BX;
    store_block(g, r0, c0, t.top.acc);
    if (BX > 1u && c0 + 4u < p.n) {
        store_block(g, r0, c0 + 4u, t.right);
    }
    if (BY > 1u && r0 + 4u < p.m) {
        store_block(g, r0 + 4u, c0, t.low.acc);
        if (BX > 1u && c0 + 4u < p.n) {
            store_block(g, r0 + 4u, c0 + 4u, t.low_right);
        }
    }
}

@compute @workgroup_size(WG, WG, 1)
fn gemm_tn(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (!outside(gid)) {
        store_tn(gid, tn_blocks(gid, false));
    }
}

// (Only this entry point reaches a_sums: gemm_tn's layout does not bind it.)
@compute @workgroup_size(WG, WG, 1)
fn gemm_tn_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (!outside(gid)) {
        let t = tn_blocks(gid, true);
        store_tn(gid, t);
        let r0 = gid.y * 4u * BY;
        let c0 = gid.x * 4u * BX;
        store_sums(gid.z, r0, c0, t.top.a_sum);
        if (BY > 1u && r0 + 4u < p.m) {
            store_sums(gid.z, r0 + 4u, c0, t.low.a_sum);
        }
    }
}

// The 4x4 block of model g's C at (r0, c0) over depths [k0, k1) (any layout, through the
// strides; rows and columns past the edge clamped for loading).
fn any_block(g: u32, r0: u32, c0: u32, k0: u32, k1: u32, sums: bool) -> Block {
    var aoff: array<u32, 4>;
    var boff: array<u32, 4>;
    let abase = g * p.m * p.k;
    let bbase = g * p.k * p.n;
    for (var i = 0u; i < 4u; i++) {
        aoff[i] = abase + min(r0 + i, p.m - 1u) * p.a_sm;
        boff[i] = bbase + min(c0 + i, p.n - 1u) * p.b_sn;
    }
    var r: Block;
    for (var kk = k0; kk < k1; kk++) {
        let bv = vec4<f32>(
            b[boff[0] + kk * p.b_sk],
            b[boff[1] + kk * p.b_sk],
            b[boff[2] + kk * p.b_sk],
            b[boff[3] + kk * p.b_sk],
        );
        let ka = kk * p.a_sk;
        block_step(&r, vec4<f32>(a[aoff[0] + ka], a[aoff[1] + ka], a[aoff[2] + ka], a[aoff[3] + ka]), bv, sums);
    }
    return r;
}

@compute @workgroup_size(WG, WG, 1)
fn gemm(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (!outside(gid)) {
        store_block(gid.z, gid.y * 4u, gid.x * 4u, any_block(gid.z, gid.y * 4u, gid.x * 4u, 0u, p.k, false).acc);
    }
}

@compute @workgroup_size(WG, WG, 1)
fn gemm_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (!outside(gid)) {
        store_with_sums(gid, any_block(gid.z, gid.y * 4u, gid.x * 4u, 0u, p.k, true));
    }
}

// gemm_split, gemm_split_sum (the `gemm_split` tuning, for GPUs): any layout, like gemm and
// gemm_sum, for products with too few 4x4 blocks to keep a GPU busy (a few models: each
// invocation of the other kernels walks the whole depth, one dependent load after another).
// A workgroup of 4 x 4 x SK invocations computes a 16x16 tile of C: invocation (x, y, s)
// the partial block (y, x) over the s-th of SK consecutive runs of depths (each walked in
// order, as the other kernels walk the whole depth); the SK partial blocks are
// then added in workgroup memory, pairwise (slices [h, 2h) into [0, h) for h = SK / 2, ...,
// 1: a fixed order), and slice 0 stores. Models walk the workgroups' z.
override SK: u32 = 2u;
// One Block (5 vec4) per invocation of the slices written in a round: at most 8 x 16.
const PART_V4: u32 = 640u;
var<workgroup> part: array<vec4<f32>, PART_V4>;

// A workgroup's block (y, x) after the slices are added: where it lies in C and whether
// this invocation stores it (slice 0, inside C).
struct Split {
    r: Block,
    r0: u32,
    c0: u32,
    store: bool,
}

fn split_block(wid: vec3<u32>, lid: vec3<u32>, sums: bool) -> Split {
    let r0 = (wid.y * 4u + lid.y) * 4u;
    let c0 = (wid.x * 4u + lid.x) * 4u;
    let run = (p.k + SK - 1u) / SK;
    let k0 = min(lid.z * run, p.k);
    var r = any_block(wid.z, r0, c0, k0, min(k0 + run, p.k), sums);
    let at = (lid.y * 4u + lid.x) * 5u;
    for (var h = SK / 2u; h > 0u; h /= 2u) {
        workgroupBarrier();
        if (lid.z >= h && lid.z < 2u * h) {
            let o = (lid.z - h) * 80u + at;
            part[o] = r.acc[0];
            part[o + 1u] = r.acc[1];
            part[o + 2u] = r.acc[2];
            part[o + 3u] = r.acc[3];
            part[o + 4u] = r.a_sum;
        }
        workgroupBarrier();
        if (lid.z < h) {
            let o = lid.z * 80u + at;
            r.acc[0] += part[o];
            r.acc[1] += part[o + 1u];
            r.acc[2] += part[o + 2u];
            r.acc[3] += part[o + 3u];
            r.a_sum += part[o + 4u];
        }
    }
    return Split(r, r0, c0, lid.z == 0u && r0 < p.m && c0 < p.n);
}

@compute @workgroup_size(4, 4, SK)
fn gemm_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = split_block(wid, lid, false);
    if (s.store) {
        store_block(wid.z, s.r0, s.c0, s.r.acc);
    }
}

// (Only this entry point of the two reaches a_sums: gemm_split's layout does not bind it.)
@compute @workgroup_size(4, 4, SK)
fn gemm_split_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = split_block(wid, lid, true);
    if (s.store) {
        store_block(wid.z, s.r0, s.c0, s.r.acc);
        store_sums(wid.z, s.r0, s.c0, s.r.a_sum);
    }
}

// gemm_tile, gemm_tile_sum (the `gemm_tile` tuning, for GPUs): any layout, like gemm and
// gemm_sum, but a workgroup of WG x WG invocations computes a (4 WG) x (4 WG) tile of C from
// workgroup memory. Per step of KC depths it copies the tile's rows of op(A) and columns of
// op(B) there (ta[kk * WG + i]: rows 4i .. 4i + 3 of the tile at depth kk, as one vec4; tb
// the same for columns), zero past the edges, each lane loading four values whose addresses
// run along the operand's contiguous axis across lanes; then every invocation reads a vec4
// of A (the same for a row of lanes: a broadcast) and one of B per depth for 16 multiply-adds.
// The depth is summed in order (k ascending), as gemm_sum's A sums.
const KC: u32 = 16u;
const TILE_V4: u32 = 256u; // KC x the widest WG (16)
var<workgroup> ta: array<vec4<f32>, TILE_V4>;
var<workgroup> tb: array<vec4<f32>, TILE_V4>;

// Slot e of a copy: (depth, quad of rows or columns), consecutive lanes walking the depth
// where the operand is contiguous along it (`stride_k` 1), else the rows (columns).
fn tile_slot(e: u32, stride_k: u32) -> vec2<u32> {
    if (stride_k == 1u) {
        return vec2<u32>(e % KC, e / KC);
    }
    return vec2<u32>(e / WG, e % WG);
}

// Rows (columns) r .. r + 3 of `len`, `stride` apart, at depth k: their offsets, clamped
// for loading, and which are inside.
struct Quad {
    at: vec4<u32>,
    ok: vec4<bool>,
}

fn tile_quad(r: u32, len: u32, stride: u32, k: u32) -> Quad {
    let i = vec4<u32>(r) + vec4<u32>(0u, 1u, 2u, 3u);
    return Quad(min(i, vec4<u32>(len - 1u)) * stride, (i < vec4<u32>(len)) & vec4<bool>(k < p.k));
}

// Copies op(A) rows [r0, r0 + 4 WG) and op(B) columns [c0, c0 + 4 WG) at depths
// [k0, k0 + KC) of model g into ta and tb, zero past the edges.
fn tile_load(g: u32, r0: u32, c0: u32, k0: u32, lane: u32) {
    for (var e = lane; e < KC * WG; e += WG * WG) {
        let s = tile_slot(e, p.a_sk);
        let k = k0 + s.x;
        let at = g * p.m * p.k + min(k, p.k - 1u) * p.a_sk;
        let o = tile_quad(r0 + 4u * s.y, p.m, p.a_sm, k);
        let v = vec4<f32>(a[at + o.at.x], a[at + o.at.y], a[at + o.at.z], a[at + o.at.w]);
        ta[s.x * WG + s.y] = select(vec4<f32>(0.0), v, o.ok);
    }
    for (var e = lane; e < KC * WG; e += WG * WG) {
        let s = tile_slot(e, p.b_sk);
        let k = k0 + s.x;
        let at = g * p.k * p.n + min(k, p.k - 1u) * p.b_sk;
        let o = tile_quad(c0 + 4u * s.y, p.n, p.b_sn, k);
        let v = vec4<f32>(b[at + o.at.x], b[at + o.at.y], b[at + o.at.z], b[at + o.at.w]);
        tb[s.x * WG + s.y] = select(vec4<f32>(0.0), v, o.ok);
    }
}

fn tile_block(gid: vec3<u32>, lid: vec3<u32>, wid: vec3<u32>, sums: bool) -> Block {
    let r0 = wid.y * 4u * WG;
    let c0 = wid.x * 4u * WG;
    var r: Block;
    for (var k0 = 0u; k0 < p.k; k0 += KC) {
        workgroupBarrier();
        tile_load(gid.z, r0, c0, k0, lid.y * WG + lid.x);
        workgroupBarrier();
        let steps = min(KC, p.k - k0);
        for (var kk = 0u; kk < steps; kk++) {
            block_step(&r, ta[kk * WG + lid.y], tb[kk * WG + lid.x], sums);
        }
    }
    return r;
}

@compute @workgroup_size(WG, WG, 1)
fn gemm_tile(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let r = tile_block(gid, lid, wid, false);
    if (!outside(gid)) {
        store_block(gid.z, gid.y * 4u, gid.x * 4u, r.acc);
    }
}

@compute @workgroup_size(WG, WG, 1)
fn gemm_tile_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(workgroup_id) wid: vec3<u32>) {
    let r = tile_block(gid, lid, wid, true);
    if (!outside(gid)) {
        store_with_sums(gid, r);
    }
}
