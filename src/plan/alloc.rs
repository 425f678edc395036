//! Buffer assignment with liveness-based reuse.
//!
//! Leaves (inputs, parameters, state, constants) and tensors the caller keeps get buffers
//! of their own. Every other tensor borrows a buffer from a pool when it is produced and
//! returns it after its last reader has run; a reshape shares its operand's buffer.

use crate::graph::{Graph, Op};

/// Where each tensor lives.
pub(crate) struct Assignment {
    /// Index into `sizes` for every tensor the plan materialises.
    pub slot: Vec<Option<usize>>,
    /// Byte size of each buffer.
    pub sizes: Vec<u64>,
    /// Whether each buffer belongs to one tensor for the whole run (leaves and kept
    /// tensors) rather than to the pool of temporaries.
    pub owned: Vec<bool>,
    /// For a weight gradient (convolution or linear), the later node summing the same dy into
    /// its bias gradient, which the weight gradient's lowering computes too (see
    /// [`bias_folds`]).
    pub bias_of: Vec<Option<usize>>,
    /// For a convolution's weight or input gradient, the max-pooling gradient node that
    /// produces its dy, which its kernel may compute itself (see [`pool_folds`]).
    pub pool_of: Vec<Option<usize>>,
    /// For a convolution, the 2x2 max pooling of its output, which its kernel may compute
    /// in its epilogue (see [`forward_pool_folds`]); the pooling's buffer is assigned with the
    /// convolution's.
    pub pooled_by: Vec<Option<usize>>,
}

/// Pairs each live weight gradient with a later live sum of the same dy that is its layer's
/// bias gradient (autograd builds it beside), so that one lowering computes both from the dy
/// it reads anyway: a convolution's `conv2d_grad_weight(dy, x)` with `sum(dy, [1, 3, 4])`
/// (the tiled and direct kernels sum the dy they load; the implicit GEMM appends the sum),
/// a linear layer's `matmul(dy, x, trans_a)` (dy^T x) with `sum(dy, [1])` (the GEMM sums
/// the dy rows it loads). The sum's buffer is then taken where the weight gradient runs and
/// the sum node lowers to nothing.
pub(crate) fn bias_folds(graph: &Graph, live: &[bool]) -> Vec<Option<usize>> {
    let nodes = graph.nodes();
    let mut bias_of = vec![None; nodes.len()];
    let mut taken = vec![false; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        let axes: &[usize] = match node.op {
            Op::Conv2dGradWeight { .. } => &[1, 3, 4],
            Op::MatMul { trans_a: true, bias: false, .. } if graph.shape(node.inputs[0]).len() == 3 => &[1],
            _ => continue,
        };
        if !live[i] {
            continue;
        }
        let dy = node.inputs[0];
        let folds = |j: usize| {
            let sum = &nodes[j];
            live[j]
                && !taken[j]
                && sum.inputs.first() == Some(&dy)
                && matches!(&sum.op, Op::Sum { axes: a, scale } if a == axes && *scale == 1.0)
        };
        if let Some(j) = (i + 1..nodes.len()).find(|&j| folds(j)) {
            bias_of[i] = Some(j);
            taken[j] = true;
        }
    }
    bias_of
}

/// Pairs each live convolution weight or input gradient whose dy is a max-pooling gradient
/// `maxpool2d_grad(dpool, y)` (relu's derivative fused or not) with that node, where the
/// windows tile y exactly (stride = window, no padding or dilation, y's sides multiples of the
/// window) and nothing else reads dy (but a weight gradient's folded bias gradient; an input
/// gradient only with `inputs`): the tiled weight gradient and the input gradient's products
/// (`conv2d_grad_input_col`) can then compute dy from dpool and y as they load it, and the
/// pooling gradient's own pass (a write and a read of dy, the size of the convolution's
/// output) is skipped where every reader does. Whether a kernel takes it is the lowering's
/// call (`conv::grad_weight_folds_pool`, `conv::grad_input_folds_pool`); dy keeps its buffer
/// either way.
pub(crate) fn pool_folds(
    graph: &Graph,
    live: &[bool],
    keep: &[bool],
    last_use: &[usize],
    bias_of: &[Option<usize>],
    inputs: bool,
) -> Vec<Option<usize>> {
    let nodes = graph.nodes();
    let mut pool_of = vec![None; nodes.len()];
    for (k, node) in nodes.iter().enumerate() {
        let Op::MaxPool2dGrad { geom, .. } = &node.op else { continue };
        let y = graph.shape(node.inputs[1]);
        let exact = geom.kernel == geom.stride
            && geom.padding == [0, 0]
            && geom.dilation == [1, 1]
            && y.len() == 5
            && y[3] % geom.kernel[0] == 0
            && y[4] % geom.kernel[1] == 0;
        if !live[k] || !exact || keep[k] || last_use[k] >= nodes.len() {
            continue;
        }
        let readers: Vec<usize> =
            (0..nodes.len()).filter(|&m| live[m] && nodes[m].inputs.iter().any(|t| t.index() == k)).collect();
        // The convolution gradients reading dy as theirs; a bias sum only where folded.
        let conv = |m: usize| {
            nodes[m].inputs[0].index() == k
                && match nodes[m].op {
                    Op::Conv2dGradWeight { .. } => true,
                    Op::Conv2dGradInput { .. } => inputs,
                    _ => false,
                }
        };
        let folded_sum = |m: usize| readers.iter().any(|&r| bias_of[r] == Some(m));
        if readers.iter().all(|&m| conv(m) || folded_sum(m)) {
            for &m in readers.iter().filter(|&&m| conv(m)) {
                pool_of[m] = Some(k);
            }
        }
    }
    pool_of
}

/// Pairs each live convolution with a live max pooling of its output in 2x2 windows with
/// stride 2 (no padding or dilation, even sides): the convolution's kernel can then pool in
/// its epilogue, from the outputs it holds, and the pooling's own pass (a read of the
/// convolution's output) is skipped. The output is still written (the backward pass reads
/// it). Whether the kernel takes it is the lowering's call (`conv::forward_pools`); the
/// pooling's buffer is assigned where the convolution runs either way.
pub(crate) fn forward_pool_folds(graph: &Graph, live: &[bool]) -> Vec<Option<usize>> {
    let nodes = graph.nodes();
    let mut pooled_by = vec![None; nodes.len()];
    for (k, node) in nodes.iter().enumerate() {
        let Op::MaxPool2d { geom } = &node.op else { continue };
        let i = node.inputs[0].index();
        let y = graph.shape(node.inputs[0]);
        let fits = geom.kernel == [2, 2]
            && geom.stride == [2, 2]
            && geom.padding == [0, 0]
            && geom.dilation == [1, 1]
            && y.len() == 5
            && y[3] % 2 == 0
            && y[4] % 2 == 0;
        if live[k] && live[i] && fits && matches!(nodes[i].op, Op::Conv2d { .. }) && pooled_by[i].is_none() {
            pooled_by[i] = Some(k);
        }
    }
    pooled_by
}

/// Bytes a tensor of `numel` 4-byte elements occupies, padded for vec4 access.
pub(crate) fn bytes_for(numel: usize) -> u64 {
    ((numel.max(1) * 4) as u64).div_ceil(16) * 16
}

/// `live[i]`: node i runs. `keep[i]`: tensor i must survive the whole run. `last_use[i]`:
/// position (node index; `nodes.len()` for the update phase) of the last reader of i.
/// `bias_of`: from [`bias_folds`]; a folded sum's buffer is assigned with its weight gradient's.
/// `pool_of`: from [`pool_folds`], kept in the assignment for the lowering (dy keeps its
/// buffer). `pooled_by`: from [`forward_pool_folds`]; a pooling's buffer is assigned with its
/// convolution's.
pub(crate) fn assign(
    graph: &Graph,
    live: &[bool],
    keep: &[bool],
    last_use: &[usize],
    bias_of: Vec<Option<usize>>,
    pool_of: Vec<Option<usize>>,
    pooled_by: Vec<Option<usize>>,
) -> Assignment {
    let nodes = graph.nodes();
    let n = nodes.len();
    // Follow reshapes to the tensor that owns the storage.
    let mut root: Vec<usize> = (0..n).collect();
    for (i, node) in nodes.iter().enumerate() {
        if node.op == Op::Reshape {
            root[i] = root[node.inputs[0].index()];
        }
    }
    let mut root_last = vec![0usize; n];
    let mut root_keep = vec![false; n];
    for i in 0..n {
        if live[i] {
            let r = root[i];
            root_last[r] = root_last[r].max(last_use[i]);
            root_keep[r] |= keep[i];
        }
    }
    let mut slot: Vec<Option<usize>> = vec![None; n];
    let mut sizes: Vec<u64> = Vec::new();
    let mut owned: Vec<bool> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Buffers to release once position p has executed.
    let mut release_at: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
    for i in 0..n {
        if live[i] && root[i] != i {
            slot[i] = slot[root[i]];
        }
        if !live[i] || root[i] != i || slot[i].is_some() {
            free.append(&mut release_at[i]);
            continue;
        }
        // The node's output, then a folded bias gradient's or pooling's (written by the same
        // dispatches).
        for t in std::iter::once(i).chain(bias_of[i]).chain(pooled_by[i]) {
            let need = bytes_for(nodes[t].numel());
            let own = nodes[t].op.is_leaf() || root_keep[t];
            let s = if own {
                sizes.push(need);
                owned.push(true);
                sizes.len() - 1
            } else {
                // Best fit among free buffers at least as large; otherwise a new one.
                let best = free
                    .iter()
                    .enumerate()
                    .filter(|(_, &b)| sizes[b] >= need)
                    .min_by_key(|(_, &b)| sizes[b])
                    .map(|(pos, _)| pos);
                match best {
                    Some(pos) => free.swap_remove(pos),
                    None => {
                        sizes.push(need);
                        owned.push(false);
                        sizes.len() - 1
                    }
                }
            };
            slot[t] = Some(s);
            if !own {
                release_at[root_last[t].max(t)].push(s);
            }
        }
        // Operands whose last reader was this node can be reused by later nodes; this
        // node's own output was assigned above, so it never aliases its operands.
        free.append(&mut release_at[i]);
    }
    Assignment { slot, sizes, owned, bias_of, pool_of, pooled_by }
}
