//! State dicts as safetensors, byte-compatible with `torch.save`-free PyTorch workflows:
//! `safetensors.torch.load_file(path)` then `model.load_state_dict(...)`.
//!
//! Parameters and float buffers are F32 with PyTorch's per-model shapes;
//! `num_batches_tracked` is an I64 scalar. A batched file stores all G models with a
//! leading G dimension on every tensor.

use std::io::Write;
use std::path::Path;

use ::safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};
use crate::nn::{StateEntry, TensorKind};

fn shape_of(e: &StateEntry, lead: Option<usize>) -> Vec<usize> {
    let mut s = Vec::new();
    s.extend(lead);
    s.extend_from_slice(&e.shape);
    s
}

fn dtype_of(e: &StateEntry) -> Dtype {
    match e.kind {
        TensorKind::Counter => Dtype::I64,
        _ => Dtype::F32,
    }
}

/// Serialises `values` (one per entry, `lead * numel` floats each, `lead` = G for a batched
/// file or `None` for one model).
pub fn encode_state(entries: &[StateEntry], values: &[Vec<f32>], lead: Option<usize>) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = entries
        .iter()
        .zip(values)
        .map(|(e, v)| match e.kind {
            TensorKind::Counter => v.iter().flat_map(|&c| (c.round() as i64).to_le_bytes()).collect(),
            _ => bytemuck::cast_slice(v).to_vec(),
        })
        .collect();
    let views = entries
        .iter()
        .zip(&bytes)
        .map(|(e, b)| {
            TensorView::new(dtype_of(e), shape_of(e, lead), b)
                .map(|v| (e.name.clone(), v))
                .map_err(|err| Error::Usage(format!("state dict: tensor {}: {err}", e.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    ::safetensors::serialize(views, None).map_err(|e| Error::Usage(format!("state dict: {e}")))
}

/// Parses a safetensors file holding exactly `entries` (names, shapes with the optional
/// leading dimension, dtypes); `what` names the file in errors. Returns values in entry order.
pub fn decode_state(bytes: &[u8], what: &str, entries: &[StateEntry], lead: Option<usize>) -> Result<Vec<Vec<f32>>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Io(format!("{what}: not a safetensors file: {e}")))?;
    let mut problems = Vec::new();
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let missing: Vec<&str> = entries.iter().map(|e| e.name.as_str()).filter(|n| !names.contains(n)).collect();
    if !missing.is_empty() {
        problems.push(format!("missing tensors {missing:?}"));
    }
    let extra: Vec<&str> = names.iter().copied().filter(|n| !entries.iter().any(|e| e.name == *n)).collect();
    if !extra.is_empty() {
        problems.push(format!("unexpected tensors {extra:?}"));
    }
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Ok(t) = st.tensor(&e.name) else { continue };
        let want_shape = shape_of(e, lead);
        // PyTorch writes num_batches_tracked as an int64 scalar; accept it batched or not.
        let ok_dtype = t.dtype() == dtype_of(e);
        if t.shape() != want_shape.as_slice() {
            problems.push(format!("{} has shape {:?}, expected {:?}", e.name, t.shape(), want_shape));
            continue;
        }
        if !ok_dtype {
            problems.push(format!("{} has dtype {:?}, expected {:?}", e.name, t.dtype(), dtype_of(e)));
            continue;
        }
        out.push(match e.kind {
            TensorKind::Counter => {
                t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
            }
            _ => bytemuck::pod_collect_to_vec(t.data()),
        });
    }
    if !problems.is_empty() {
        return Err(Error::Io(format!("{what}: {}", problems.join("; "))));
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed to
/// disk, then renamed over `path`. Readers never see a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| Error::Io(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let io = |e: std::io::Error, p: &Path| Error::Io(format!("{}: {e}", p.display()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(e, &tmp))?;
        f.write_all(bytes).map_err(|e| io(e, &tmp))?;
        f.sync_all().map_err(|e| io(e, &tmp))?;
        std::fs::rename(&tmp, path).map_err(|e| io(e, path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable where the platform allows syncing a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
