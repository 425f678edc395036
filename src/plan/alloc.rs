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
}

/// Bytes a tensor of `numel` 4-byte elements occupies, padded for vec4 access.
pub(crate) fn bytes_for(numel: usize) -> u64 {
    ((numel.max(1) * 4) as u64).div_ceil(16) * 16
}

/// `live[i]`: node i runs. `keep[i]`: tensor i must survive the whole run. `last_use[i]`:
/// position (node index; `nodes.len()` for the update phase) of the last reader of i.
pub(crate) fn assign(graph: &Graph, live: &[bool], keep: &[bool], last_use: &[usize]) -> Assignment {
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
    for (i, node) in nodes.iter().enumerate() {
        if live[i] && root[i] != i {
            slot[i] = slot[root[i]];
        }
        if !live[i] || root[i] != i {
            free.append(&mut release_at[i]);
            continue;
        }
        let need = bytes_for(node.numel());
        let own = node.op.is_leaf() || root_keep[i];
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
        slot[i] = Some(s);
        if !own {
            release_at[root_last[i].max(i)].push(s);
        }
        // Operands whose last reader was this node can be reused by later nodes; this
        // node's own output was assigned above, so it never aliases its operands.
        free.append(&mut release_at[i]);
    }
    Assignment { slot, sizes, owned }
}
