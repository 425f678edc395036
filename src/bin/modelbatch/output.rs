//! All-or-nothing output directories: everything is written into a hidden sibling
//! directory, which is renamed into place once complete. On any failure (or panic) the
//! sibling is removed, so the output location never holds a partial checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::cli::{CliError, Result};

/// Directories to remove if the process dies in a panic: (staging dir, created parents).
static PENDING: Mutex<Vec<(PathBuf, Vec<PathBuf>)>> = Mutex::new(Vec::new());

/// Files a previous `train --out` writes; only a directory holding nothing else is replaced.
fn ours(name: &str) -> bool {
    name == "metrics.csv"
        || name == "summary.json"
        || name
            .strip_prefix("model-")
            .and_then(|r| r.strip_suffix(".safetensors"))
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// A staging directory for `--out DIR`.
pub struct Staging {
    flag: String,
    target: PathBuf,
    tmp: PathBuf,
    created: Vec<PathBuf>,
    done: bool,
}

impl Staging {
    /// Checks that `target` can be written (or replaced) and creates the staging sibling:
    /// call before any long work so that a bad `--out` fails at once.
    pub fn prepare(flag: &str, target: &Path) -> Result<Staging> {
        let shown = format!("{flag} {}", target.display());
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .ok_or_else(|| CliError::new(format!("{shown}: not a usable directory name")))?
            .to_string();
        if let Ok(meta) = std::fs::symlink_metadata(target) {
            if !meta.is_dir() {
                return Err(CliError::new(format!("{shown}: exists and is not a directory")));
            }
            let entries = std::fs::read_dir(target).map_err(|e| CliError::new(format!("{shown}: {e}")))?;
            for entry in entries {
                let entry = entry.map_err(|e| CliError::new(format!("{shown}: {e}")))?;
                let n = entry.file_name();
                let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
                if !is_file || !n.to_str().is_some_and(ours) {
                    return Err(CliError::new(format!(
                        "{shown}: exists and holds {:?}, which modelbatch did not write; \
                         choose another directory or remove it",
                        n
                    )));
                }
            }
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Create missing parents, remembering them to remove them again on failure.
        let mut missing = Vec::new();
        let mut p = parent.as_path();
        while !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(q) => p = q,
                None => break,
            }
        }
        let mut staging = Staging {
            flag: shown.clone(),
            target: target.to_path_buf(),
            tmp: PathBuf::new(),
            created: Vec::new(),
            done: false,
        };
        for dir in missing.iter().rev() {
            if let Err(e) = std::fs::create_dir(dir) {
                return Err(CliError::new(format!("{shown}: cannot create {}: {e}", dir.display())));
            }
            staging.created.push(dir.clone());
            staging.register();
        }
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        std::fs::create_dir(&tmp)
            .map_err(|e| CliError::new(format!("{shown}: cannot write in {}: {e}", parent.display())))?;
        staging.tmp = tmp;
        staging.register();
        Ok(staging)
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final location.
    pub fn target(&self) -> &Path {
        &self.target
    }

    fn register(&self) {
        let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|(t, _)| t != &self.tmp);
        p.push((self.tmp.clone(), self.created.clone()));
    }

    fn unregister(&self) {
        let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|(t, _)| t != &self.tmp);
    }

    /// Moves the complete directory into place (replacing an earlier output there).
    pub fn commit(mut self) -> Result<()> {
        let shown = self.flag.clone();
        let parent = self.tmp.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        if std::fs::symlink_metadata(&self.target).is_ok() {
            let name = self.target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            std::fs::rename(&self.target, &old)
                .map_err(|e| CliError::new(format!("{shown}: cannot move the previous output aside: {e}")))?;
            if let Err(e) = std::fs::rename(&self.tmp, &self.target) {
                let _ = std::fs::rename(&old, &self.target);
                return Err(CliError::new(format!("{shown}: cannot move the new output into place: {e}")));
            }
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.tmp, &self.target)
                .map_err(|e| CliError::new(format!("{shown}: cannot move the output into place: {e}")))?;
        }
        if let Ok(d) = std::fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        self.done = true;
        self.unregister();
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        remove(&self.tmp, &self.created);
        self.unregister();
    }
}

fn remove(tmp: &Path, created: &[PathBuf]) {
    if !tmp.as_os_str().is_empty() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    // Only the parents this run created, and only while empty.
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Removes every staging directory still pending (called from the panic hook).
pub fn cleanup_on_panic() {
    let pending = match PENDING.try_lock() {
        Ok(p) => p.clone(),
        Err(_) => return,
    };
    for (tmp, created) in &pending {
        remove(tmp, created);
    }
}

/// Writes a file in full and flushes it to disk.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| CliError::new(format!("{}: {e}", path.display())))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| CliError::new(format!("{}: {e}", path.display())))
}
