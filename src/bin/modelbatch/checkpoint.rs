//! `modelbatch train --checkpoint DIR`: the run is saved every `--checkpoint-every` (steps
//! or time) and after its last step, and the same command run again continues from the
//! newest save. Each save is a new folder `DIR/step-{S}` written atomically (every device's
//! models and optimizer state, the run's settings, its metrics so far); older saves are
//! removed only once it is complete, so an interruption at any moment leaves a whole one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use modelbatch::train::{checkpoint_step, ShardedTrainer};
use serde_json::{json, Value};

use crate::cli::{CliError, Context, Result};

const RUN: &str = "run.json";
const METRICS: &str = "metrics.csv";
const FORMAT: &str = "modelbatch-train-checkpoint-1";
/// The first line of every metrics.csv.
pub const CSV_HEADER: &str = "step,model,loss,correct\n";

/// How often a running training saves itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Every {
    Steps(u64),
    Time(Duration),
}

/// `K` (steps) or a time: `90s`, `10m`, `2h`.
pub fn parse_every(text: &str) -> Result<Every> {
    let bad = || {
        CliError::new(format!(
            "--checkpoint-every {text:?}: expected a number of steps (500) or a time (90s, 10m, 2h), at least 1"
        ))
    };
    let t = text.trim();
    let unit = match t.chars().last() {
        Some('s') => 1.0,
        Some('m') => 60.0,
        Some('h') => 3600.0,
        _ => {
            let steps: u64 = t.parse().map_err(|_| bad())?;
            return if steps == 0 { Err(bad()) } else { Ok(Every::Steps(steps)) };
        }
    };
    let n: f64 = t[..t.len() - 1].trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 || n * unit > 1e9 {
        return Err(bad());
    }
    Ok(Every::Time(Duration::from_secs_f64(n * unit)))
}

/// What a save holds beside the trainers' own files, for the command to pick up again.
pub struct Saved {
    pub step: u64,
    pub path: PathBuf,
    /// The metrics.csv rows of steps `0..step` (header included).
    pub csv: Vec<u8>,
    /// Each model's last loss (f32 bits) and first non-finite one (step, f32 bits).
    pub last_loss: Vec<f32>,
    pub first_bad: Vec<Option<(u64, f32)>>,
    /// What else the command saved with the run (PBT's rounds).
    pub extra: Value,
}

/// The saves of one run in `dir`.
pub struct Checkpoints {
    dir: PathBuf,
    every: Every,
    /// The run's settings, by flag: a save of other settings is another run's.
    settings: Value,
    last: Option<PathBuf>,
    last_step: Option<u64>,
    since: Instant,
}

/// A save's `run.json`, checked to be one (its format); errors name the file after `prefix`
/// (the flag that led to it, or nothing).
fn read_run(save: &Path, prefix: &str) -> Result<Value> {
    let path = save.join(RUN);
    let shown = format!("{prefix}{}", path.display());
    let text = std::fs::read(&path).context(&shown)?;
    let run: Value = serde_json::from_slice(&text).map_err(|e| CliError::new(format!("{shown}: invalid JSON: {e}")))?;
    if run["format"] != FORMAT {
        return Err(CliError::new(format!("{shown}: not a modelbatch train checkpoint (format)")));
    }
    Ok(run)
}

fn step_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten()
}

/// A flag's value as the message shows it (long per-model lists shortened).
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(77).collect::<String>())
    } else {
        s
    }
}

impl Checkpoints {
    /// Opens `dir` (created when missing) for a run with these `settings`, and finds the
    /// newest save there; one of a run with other settings is an error naming the flag.
    pub fn open(dir: &Path, every: Every, settings: Value) -> Result<(Checkpoints, Option<Saved>)> {
        let flag = format!("--checkpoint {}", dir.display());
        if dir.exists() && !dir.is_dir() {
            return Err(CliError::new(format!("{flag}: exists and is not a folder")));
        }
        std::fs::create_dir_all(dir).context(&flag)?;
        let mut newest: Option<(u64, PathBuf)> = None;
        for entry in std::fs::read_dir(dir).context(&flag)? {
            let entry = entry.context(&flag)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".step-") {
                // A save that was interrupted before it was complete.
                let _ = std::fs::remove_dir_all(entry.path());
            } else if let Some(step) = step_of(&name) {
                if newest.as_ref().is_none_or(|(s, _)| step > *s) {
                    newest = Some((step, entry.path()));
                }
            }
        }
        let mut c =
            Checkpoints { dir: dir.to_path_buf(), every, settings, last: None, last_step: None, since: Instant::now() };
        let Some((step, path)) = newest else { return Ok((c, None)) };
        let saved = c.read(step, &path)?;
        c.last = Some(path);
        c.last_step = Some(step);
        Ok((c, Some(saved)))
    }

    /// Reads and checks the save at `path`.
    fn read(&self, step: u64, path: &Path) -> Result<Saved> {
        let at = |f: &str| path.join(f);
        let bad = |f: &str, what: &str| CliError::new(format!("{}: {what}", at(f).display()));
        let run = read_run(path, "")?;
        if run["step"].as_u64() != Some(step) {
            return Err(bad(RUN, &format!("holds step {}, its folder's name says {step}", run["step"])));
        }
        let theirs = &run["settings"];
        if *theirs != self.settings {
            let keys = self.settings.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
            let (flag, was, now) = keys
                .iter()
                .find(|k| theirs[k.as_str()] != self.settings[k.as_str()])
                .map(|k| (k.clone(), show(&theirs[k.as_str()]), show(&self.settings[k.as_str()])))
                .unwrap_or_else(|| ("settings".into(), show(theirs), show(&self.settings)));
            return Err(CliError::new(format!(
                "--checkpoint {}: {} is a save of another run ({flag} {was} there, {now} now): give another \
                 --checkpoint folder, or remove this one to start over",
                self.dir.display(),
                path.display()
            )));
        }
        let step_in_trainer = checkpoint_step(&path.join("shard-0"))?;
        if step_in_trainer != step {
            return Err(bad("shard-0", &format!("holds step {step_in_trainer}, the save says {step}")));
        }
        let last_loss: Vec<u32> =
            serde_json::from_value(run["last_loss_bits"].clone()).map_err(|_| bad(RUN, "bad last_loss_bits"))?;
        let first_bad: Vec<Option<(u64, u32)>> =
            serde_json::from_value(run["first_bad"].clone()).map_err(|_| bad(RUN, "bad first_bad"))?;
        let csv = std::fs::read(at(METRICS)).context(at(METRICS).display())?;
        if !csv.starts_with(CSV_HEADER.as_bytes()) {
            return Err(bad(METRICS, "not a modelbatch metrics.csv (header)"));
        }
        Ok(Saved {
            step,
            path: path.to_path_buf(),
            csv,
            last_loss: last_loss.into_iter().map(f32::from_bits).collect(),
            first_bad: first_bad.into_iter().map(|b| b.map(|(s, l)| (s, f32::from_bits(l)))).collect(),
            extra: run["extra"].clone(),
        })
    }

    /// Whether a save is due after `step` steps.
    pub fn due(&self, step: u64) -> bool {
        match self.every {
            Every::Steps(k) => step % k == 0,
            Every::Time(t) => self.since.elapsed() >= t,
        }
    }

    /// The step of the newest save (made or found).
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }

    /// The newest save (made or found).
    pub fn last_path(&self) -> Option<PathBuf> {
        self.last.clone()
    }

    /// Saves the run after its current step: the trainers (whose metrics must all have been
    /// delivered), the metrics rows `new_rows` delivered since the previous save, each
    /// model's last and first non-finite loss, and `extra` (the command's own state). Then
    /// removes the older saves.
    pub fn save(
        &mut self,
        trainer: &mut ShardedTrainer,
        new_rows: &[u8],
        last_loss: &[f32],
        first_bad: &[Option<(u64, f32)>],
        extra: Value,
    ) -> Result<PathBuf> {
        let step = trainer.step();
        let path = self.dir.join(format!("step-{step:08}"));
        let mut csv = match &self.last {
            Some(p) => std::fs::read(p.join(METRICS)).context(p.join(METRICS).display())?,
            None => CSV_HEADER.as_bytes().to_vec(),
        };
        csv.extend_from_slice(new_rows);
        let run = json!({
            "format": FORMAT,
            "step": step,
            "settings": self.settings,
            "last_loss_bits": last_loss.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
            "first_bad": first_bad.iter().map(|b| b.map(|(s, l)| (s, l.to_bits()))).collect::<Vec<_>>(),
            "extra": extra,
        });
        let run = serde_json::to_string_pretty(&run).context(RUN)? + "\n";
        trainer
            .save_checkpoint_with(&path, &[(RUN, run.as_bytes()), (METRICS, &csv)])
            .context(format!("--checkpoint {}", self.dir.display()))?;
        // The new save is whole: the older ones can go.
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if step_of(&name).is_some_and(|s| s != step) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        self.last = Some(path.clone());
        self.last_step = Some(step);
        self.since = Instant::now();
        Ok(path)
    }
}

/// The models of a `train --checkpoint` save, for `eval --weights`.
pub struct SavedModels {
    /// The save's folder (`.../step-S`) and step.
    pub path: PathBuf,
    pub step: u64,
    /// The `--model` it was trained with: `"lenet"` or a spec's JSON.
    pub model: Value,
    /// Each device's `model.safetensors` (models of every shard, batched) and model count.
    pub shards: Vec<(PathBuf, usize)>,
}

impl SavedModels {
    /// Models in the whole batch.
    pub fn models(&self) -> usize {
        self.shards.iter().map(|(_, g)| g).sum()
    }
}

/// `dir` as a `train --checkpoint` save: `dir` itself (a `step-S` folder) or the newest save
/// in it (the `--checkpoint` folder); `None` when it is neither (a folder of model files).
pub fn saved_models(dir: &Path, flag: &str) -> Result<Option<SavedModels>> {
    let save = if dir.join(RUN).is_file() {
        dir.to_path_buf()
    } else {
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
        let newest = entries
            .flatten()
            .filter_map(|e| step_of(&e.file_name().to_string_lossy()).map(|s| (s, e.path())))
            .filter(|(_, p)| p.join(RUN).is_file())
            .max_by_key(|(s, _)| *s);
        match newest {
            Some((_, p)) => p,
            None => return Ok(None),
        }
    };
    let shown = |p: &Path| format!("{flag} {}", p.display());
    let run = read_run(&save, &format!("{flag} "))?;
    let step = run["step"].as_u64().unwrap_or(0);
    let mut shards = Vec::new();
    for i in 0.. {
        let shard = save.join(format!("shard-{i}"));
        if !shard.is_dir() {
            break;
        }
        let meta_path = shard.join("trainer.json");
        let meta: Value = std::fs::read(&meta_path).context(shown(&meta_path)).and_then(|t| {
            serde_json::from_slice(&t).map_err(|e| CliError::new(format!("{}: {e}", shown(&meta_path))))
        })?;
        let g = meta["models"]
            .as_u64()
            .filter(|&g| g > 0)
            .ok_or_else(|| CliError::new(format!("{}: no model count", shown(&meta_path))))? as usize;
        shards.push((shard.join("model.safetensors"), g));
    }
    if shards.is_empty() {
        return Err(CliError::new(format!("{}: holds no shard-0 folder", shown(&save))));
    }
    Ok(Some(SavedModels { path: save, step, model: run["settings"]["--model"].clone(), shards }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_forms() {
        assert_eq!(parse_every("500").unwrap(), Every::Steps(500));
        assert_eq!(parse_every("90s").unwrap(), Every::Time(Duration::from_secs(90)));
        assert_eq!(parse_every("1.5m").unwrap(), Every::Time(Duration::from_secs(90)));
        assert_eq!(parse_every("2h").unwrap(), Every::Time(Duration::from_secs(7200)));
        for bad in ["0", "", "m", "-1m", "0s", "1x", "nanm", "1e99h", "1.5"] {
            let e = parse_every(bad).unwrap_err().to_string();
            assert!(e.starts_with("--checkpoint-every"), "{bad}: {e}");
        }
    }

    #[test]
    fn save_names() {
        assert_eq!(step_of("step-00000500"), Some(500));
        assert_eq!(step_of("step-123456789"), Some(123_456_789));
        for other in ["step-", "step-1a", ".step-00000001.tmp-9", "stepx-1", "step--1"] {
            assert_eq!(step_of(other), None, "{other}");
        }
    }
}
