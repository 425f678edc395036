//! Checkpoints: every model, the optimizer state and the step counter in one directory,
//! written atomically (a temporary directory, each file flushed, then renamed into place),
//! so an interrupted save never leaves a partial checkpoint. Resuming continues exactly as
//! an uninterrupted run would.

use std::path::{Path, PathBuf};

use ::safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{json, Value};

use super::{OptState, Trainer};
use crate::error::{Error, Result};
use crate::io::write_atomic;

const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const TRAINER: &str = "trainer.json";

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// A checkpoint's files: path inside the checkpoint directory (`/`-separated) and bytes.
pub(crate) type Files = Vec<(String, Vec<u8>)>;

/// Adds a caller's `extra` files beside `files`: plain names, none of the checkpoint's own.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn add_extra(files: &mut Files, extra: &[(&str, &[u8])]) -> Result<()> {
    for (name, bytes) in extra {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains(['/', '\\'])
            && !name.starts_with("shard-")
            && ![MODEL, OPTIMIZER, TRAINER].contains(name);
        if !plain || files.iter().any(|(n, _)| n == name) {
            return Err(Error::Usage(format!(
                "checkpoint: extra file name {name:?} is taken or not a plain file name"
            )));
        }
        files.push((name.to_string(), bytes.to_vec()));
    }
    Ok(())
}

/// Writes `files` as the directory `dir`, atomically: into a temporary sibling directory
/// (each file flushed), which then takes `dir`'s place (an existing `dir` is moved aside
/// first and removed after), so `dir` never holds a partial set.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn write_dir_atomic(dir: &Path, files: &Files) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let name = dir.file_name().ok_or_else(|| io(dir, "not a directory path"))?.to_string_lossy().to_string();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let write = || -> Result<()> {
        std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
        for (file, bytes) in files {
            let path = tmp.join(file);
            if let Some(sub) = path.parent().filter(|p| *p != tmp) {
                std::fs::create_dir_all(sub).map_err(|e| io(sub, e))?;
            }
            write_atomic(&path, bytes)?;
        }
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(|e| io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))?;
        Ok(())
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if old.exists() && !dir.exists() {
            let _ = std::fs::rename(&old, dir);
        }
    }
    result?;
    let _ = std::fs::remove_dir_all(&old);
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The step a checkpoint written by [`Trainer::save_checkpoint`] was taken after (read from
/// its `trainer.json`, nothing else checked).
#[cfg(not(target_arch = "wasm32"))]
pub fn checkpoint_step(dir: &Path) -> Result<u64> {
    let meta = read_meta(dir)?;
    meta["step"].as_u64().ok_or_else(|| io(&dir.join(TRAINER), "missing step"))
}

/// A checkpoint's `trainer.json`, checked to be one (its format).
#[cfg(not(target_arch = "wasm32"))]
fn read_meta(dir: &Path) -> Result<Value> {
    let path = dir.join(TRAINER);
    let text = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let meta: Value = serde_json::from_slice(&text).map_err(|e| io(&path, format!("invalid JSON: {e}")))?;
    if meta["format"] != "modelbatch-checkpoint-1" {
        return Err(io(&path, "not a modelbatch checkpoint (format)"));
    }
    Ok(meta)
}

impl Trainer<'_> {
    /// The optimizer's hyper-parameter rows (each as wide as its optimizer's).
    fn hyper_rows(&self) -> Vec<Vec<f32>> {
        match &self.opt {
            OptState::Sgd(s) => s.rows().iter().map(|r| r.to_vec()).collect(),
            OptState::Adam(a) => a.rows().iter().map(|r| r.to_vec()).collect(),
        }
    }

    fn set_hyper_rows(&mut self, rows: &[Vec<f32>]) -> Result<()> {
        fn fixed<const W: usize>(rows: &[Vec<f32>]) -> Result<Vec<[f32; W]>> {
            rows.iter()
                .map(|r| r.as_slice().try_into().map_err(|_| Error::Usage("bad hyper-parameter rows".into())))
                .collect()
        }
        match &mut self.opt {
            OptState::Sgd(s) => s.set_rows(fixed(rows)?),
            OptState::Adam(a) => a.set_rows(fixed(rows)?),
        }
    }

    /// The checkpoint's own files: the models, the optimizer's tensors and `trainer.json`.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn checkpoint_files(&mut self) -> Result<Files> {
        // Nothing is written from a lost device: the previous checkpoint stays as it was.
        self.plan.check_lost()?;
        let model = pollster::block_on(self.model.to_safetensors_batched())?;
        let mut tensors = Vec::new();
        for (name, t) in self.optimizer_tensors() {
            let values = pollster::block_on(self.plan.read(t))?;
            tensors.push((name, self.plan.shape(t).to_vec(), values));
        }
        let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| bytemuck::cast_slice(v).to_vec()).collect();
        let views = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Usage(format!("checkpoint: {e}")))?;
        let optimizer = ::safetensors::serialize(views, None).map_err(|e| Error::Usage(format!("checkpoint: {e}")))?;
        let (kind, counters) = match &self.opt {
            OptState::Sgd(s) => ("sgd", json!({ "started": s.started() })),
            OptState::Adam(a) => ("adam", json!({ "steps": a.steps() })),
        };
        let meta = json!({
            "format": "modelbatch-checkpoint-1",
            "step": self.step,
            "models": self.model.models(),
            "optimizer": kind,
            "counters": counters,
            "dead": self.dead,
            "batch_size": self.config.batch_size,
            "seed": self.config.seed,
            // Hyper-parameters as they are now (set_hyper and copy_model change them).
            "base_lr_bits": self.base_lr.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "hyper_rows_bits": self.hyper_rows().iter().map(|r| r.iter().map(|v| v.to_bits()).collect()).collect::<Vec<Vec<u32>>>(),
        });
        let meta = serde_json::to_string_pretty(&meta).unwrap_or_default().into_bytes();
        Ok(vec![(MODEL.into(), model), (OPTIMIZER.into(), optimizer), (TRAINER.into(), meta)])
    }

    /// Writes a checkpoint to `dir` (replacing any previous one there, atomically).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint(&mut self, dir: &Path) -> Result<()> {
        self.save_checkpoint_with(dir, &[])
    }

    /// [`Trainer::save_checkpoint`] with the caller's own `extra` files (name, bytes: e.g.
    /// its settings and the metrics so far) written into `dir` in the same atomic step.
    /// [`Trainer::resume`] ignores them. Names must be plain file names other than the
    /// checkpoint's own (`model.safetensors`, `optimizer.safetensors`, `trainer.json`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint_with(&mut self, dir: &Path, extra: &[(&str, &[u8])]) -> Result<()> {
        let mut files = self.checkpoint_files()?;
        add_extra(&mut files, extra)?;
        write_dir_atomic(dir, &files)
    }

    /// Restores models, optimizer state and step counter from a checkpoint written by
    /// [`Trainer::save_checkpoint`] for the same model batch and optimizer. Everything is
    /// checked before anything is changed.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let path = |f: &str| -> PathBuf { dir.join(f) };
        let read = |f: &str| std::fs::read(path(f)).map_err(|e| io(&path(f), e));
        let meta = read_meta(dir)?;
        let bad = |what: &str| io(&path(TRAINER), what);
        let g = self.model.models();
        if meta["models"].as_u64() != Some(g as u64) {
            return Err(bad(&format!("checkpoint holds {} models, this run has {g}", meta["models"])));
        }
        let kind = match &self.opt {
            OptState::Sgd(_) => "sgd",
            OptState::Adam(_) => "adam",
        };
        if meta["optimizer"] != kind {
            return Err(bad(&format!("checkpoint optimizer is {}, this run uses {kind}", meta["optimizer"])));
        }
        let step = meta["step"].as_u64().ok_or_else(|| bad("missing step"))?;
        let dead: Vec<bool> = serde_json::from_value(meta["dead"].clone()).map_err(|_| bad("bad `dead` list"))?;
        if dead.len() != g {
            return Err(bad("bad `dead` list"));
        }
        let model_bytes = read(MODEL)?;
        let opt_bytes = read(OPTIMIZER)?;
        let st = SafeTensors::deserialize(&opt_bytes).map_err(|e| io(&path(OPTIMIZER), e))?;
        let mut states = Vec::new();
        for (name, t) in self.optimizer_tensors() {
            let v = st.tensor(&name).map_err(|_| io(&path(OPTIMIZER), format!("missing tensor {name}")))?;
            if v.dtype() != Dtype::F32 || v.shape() != self.plan.shape(t) {
                return Err(io(
                    &path(OPTIMIZER),
                    format!("{name} has {:?} {:?}, expected F32 {:?}", v.dtype(), v.shape(), self.plan.shape(t)),
                ));
            }
            states.push((t, bytemuck::pod_collect_to_vec::<u8, f32>(v.data())));
        }
        // Validate the model file fully before touching anything.
        crate::io::decode_state(&model_bytes, &path(MODEL).display().to_string(), self.model.entries(), Some(g))?;
        // Checkpoints written before hyper-parameters were kept restore none.
        let hyper = match (meta.get("base_lr_bits"), meta.get("hyper_rows_bits")) {
            (Some(lr), Some(rows)) => {
                let lr: Vec<u32> = serde_json::from_value(lr.clone()).map_err(|_| bad("bad base_lr_bits"))?;
                let rows: Vec<Vec<u32>> =
                    serde_json::from_value(rows.clone()).map_err(|_| bad("bad hyper_rows_bits"))?;
                let width = self.hyper_rows().first().map_or(0, Vec::len);
                if lr.len() != g || rows.len() != g || rows.iter().any(|r| r.len() != width) {
                    return Err(bad("bad hyper-parameter rows"));
                }
                let rows: Vec<Vec<f32>> =
                    rows.into_iter().map(|r| r.into_iter().map(f32::from_bits).collect()).collect();
                Some((lr.into_iter().map(f32::from_bits).collect::<Vec<f32>>(), rows))
            }
            _ => None,
        };
        if let Some((lr, rows)) = hyper {
            self.set_hyper_rows(&rows)?;
            self.base_lr = lr;
        }
        match &mut self.opt {
            OptState::Sgd(s) => {
                s.set_started(meta["counters"]["started"].as_bool().ok_or_else(|| bad("missing counters"))?)
            }
            OptState::Adam(a) => {
                let steps: Vec<u64> =
                    serde_json::from_value(meta["counters"]["steps"].clone()).map_err(|_| bad("missing counters"))?;
                if steps.len() != g {
                    return Err(bad("bad Adam step counters"));
                }
                a.set_steps(steps);
            }
        }
        self.model.load_safetensors_batched(&model_bytes, &path(MODEL).display().to_string())?;
        for (t, v) in states {
            self.plan.write(t, &v)?;
        }
        self.step = step;
        self.flushed = step;
        self.dead = dead;
        self.order_epoch = None;
        self.apply_schedule()
    }
}
