//! Reading what a command needs (model spec, data, weights), each checked before the GPU
//! is touched so that bad input fails fast with an error naming the file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use modelbatch::data::{DataError, Mnist, MnistSplit};
use modelbatch::nn::ModelSpec;

use crate::cli::{CliError, Context, Result, Split};

/// `lenet` or a JSON spec file; returns the spec and a name for reports.
pub fn load_spec(arg: &str) -> Result<(ModelSpec, String)> {
    load_spec_json(arg).map(|(spec, name, _)| (spec, name))
}

/// [`load_spec`], and the spec as JSON (`"lenet"` for the built-in one), as a checkpoint's
/// settings record it.
pub fn load_spec_json(arg: &str) -> Result<(ModelSpec, String, serde_json::Value)> {
    let lenet = || serde_json::Value::from("lenet");
    if arg == "lenet" {
        return Ok((ModelSpec::lenet(), "lenet".into(), lenet()));
    }
    let text = std::fs::read_to_string(arg).context(format!("--model {arg}: cannot read the model spec"))?;
    let spec = ModelSpec::from_json(&text).context(arg)?;
    spec.state_entries().context(arg)?;
    // What from_json accepted is JSON, or the bare word lenet.
    let json = serde_json::from_str(&text).unwrap_or_else(|_| lenet());
    Ok((spec, arg.to_string(), json))
}

/// The data folder: `--data` or the embedded MNIST.
pub fn data_dir(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone().unwrap_or_else(Mnist::default_dir)
}

/// `NAME` or `NAME.gz` in `dir`, as [`Mnist::load`] looks for it.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(DataError::MissingFile { dir: dir.display().to_string(), name: name.into(), dir_exists: dir.is_dir() }.into())
}

/// One split of an MNIST-format folder.
pub fn load_split(dir: &Path, split: Split) -> Result<MnistSplit> {
    let (images, labels) = match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    };
    let (images, labels) = (find(dir, images)?, find(dir, labels)?);
    Ok(Mnist::load_split(&images, &labels)?)
}

/// The model indices `i` of the `model-{i}.safetensors` files in `dir`.
fn model_files(dir: &Path, flag: &str) -> Result<BTreeSet<usize>> {
    let entries = std::fs::read_dir(dir).context(format!("{flag} {}: cannot read the directory", dir.display()))?;
    let mut found = BTreeSet::new();
    for entry in entries {
        let entry = entry.context(format!("{flag} {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name.strip_prefix("model-").and_then(|r| r.strip_suffix(".safetensors")) else { continue };
        // Only the canonical spelling (`model-7`, not `model-07` or `model-+7`).
        match digits.parse::<usize>() {
            Ok(i) if i.to_string() == digits => {
                found.insert(i);
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Number of models saved in `dir` (`model-0` … `model-{n-1}`, none missing).
pub fn count_models(dir: &Path, flag: &str) -> Result<usize> {
    let found = model_files(dir, flag)?;
    if found.is_empty() {
        return Err(CliError::new(format!("{flag} {}: no model-{{i}}.safetensors files there", dir.display())));
    }
    let n = found.len();
    if let Some(missing) = (0..n).find(|i| !found.contains(i)) {
        return Err(CliError::new(format!(
            "{flag} {}: {} is missing (found {n} model files, numbered up to {})",
            dir.display(),
            dir.join(format!("model-{missing}.safetensors")).display(),
            found.last().copied().unwrap_or(0)
        )));
    }
    Ok(n)
}

/// Checks that `dir` holds exactly `model-0` … `model-{g-1}.safetensors` and that each is a
/// state dict of `spec` (names, shapes, dtypes), without touching the GPU.
pub fn check_weights(dir: &Path, flag: &str, spec: &ModelSpec, g: usize) -> Result<()> {
    let found = model_files(dir, flag)?;
    if found.len() != g {
        let listed = if found.is_empty() {
            "no model-{i}.safetensors files".to_string()
        } else {
            format!("{} model files (model-{{{}}})", found.len(), fmt_set(&found))
        };
        return Err(CliError::new(format!(
            "{flag} {}: holds {listed} but --models is {g} (expected model-0 … model-{}.safetensors)",
            dir.display(),
            g - 1
        )));
    }
    if let Some(missing) = (0..g).find(|i| !found.contains(i)) {
        return Err(CliError::new(format!(
            "{flag} {}: {} is missing (--models {g} needs model-0 … model-{}.safetensors)",
            dir.display(),
            dir.join(format!("model-{missing}.safetensors")).display(),
            g - 1
        )));
    }
    let entries = spec.state_entries()?;
    for m in 0..g {
        let path = dir.join(format!("model-{m}.safetensors"));
        let bytes = std::fs::read(&path).context(path.display())?;
        modelbatch::io::decode_state(&bytes, &path.display().to_string(), &entries, None)?;
    }
    Ok(())
}

fn fmt_set(s: &BTreeSet<usize>) -> String {
    let v: Vec<String> = s.iter().take(8).map(|i| i.to_string()).collect();
    let more = if s.len() > 8 { ",…" } else { "" };
    format!("{}{more}", v.join(","))
}

/// The largest evaluation batch up to `want` whose biggest activation for one model
/// (`batch × the largest per-sample layer output`) fits the adapter's per-binding limit;
/// plans split the G models into chunks that fit (and the library would also shrink the
/// batch itself), this keeps the evaluation passes few and large. `want` itself where a
/// BatchNorm2d has no running estimates: it normalises with each evaluation batch's
/// statistics, so the batch is part of what is evaluated (the library splits it into
/// passes that fit without changing them).
pub fn fit_eval_batch(gpu: &modelbatch::Gpu, spec: &ModelSpec, want: usize) -> Result<usize> {
    if spec.evaluates_with_batch_statistics() {
        return Ok(want.max(1));
    }
    let limits = gpu.limits();
    let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
    let per_sample = spec
        .shapes()?
        .iter()
        .map(|s| s.iter().product::<usize>())
        .chain(std::iter::once(spec.input.iter().product()))
        .max()
        .unwrap_or(1)
        .max(1) as u64;
    // A little headroom for buffer alignment.
    let fit = (max_binding - max_binding / 64) / (4 * per_sample);
    Ok((fit as usize).clamp(1, want.max(1)))
}
