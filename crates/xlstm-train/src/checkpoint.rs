//! Atomic checkpoints.
//!
//! `DIR/step-000123/` holds `model.mpk` (burn's named MessagePack record, full precision),
//! `optim.mpk` (both AdamW groups' moments), and `state.json` ([`TrainState`] plus what the
//! caller stores about the model and task). It is written as `step-000123.tmp-PID/`, renamed
//! into place, and only then named by `DIR/LATEST` (itself written to a temporary file and
//! renamed): a crash at any point leaves the previous checkpoint intact and named. The two
//! newest checkpoints are kept.

use crate::error::TrainError;
use crate::schedule::WarmupCosine;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything besides tensors that resuming needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken (skipped ones included).
    pub step: usize,
    /// Training examples consumed: the data position and, since every example is generated
    /// from `(seed, index)`, the whole random state of the data.
    pub examples_seen: u64,
    /// Steps skipped for a non-finite loss or gradient.
    pub skipped_steps: usize,
    /// The data/initialisation seed.
    pub seed: u64,
    /// The learning-rate schedule.
    pub schedule: WarmupCosine,
}

/// The contents of `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateFile {
    /// Loop state.
    pub state: TrainState,
    /// Whatever the caller stores (model config, task, training settings).
    pub meta: serde_json::Value,
}

const LATEST: &str = "LATEST";

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io("cannot rename into", path, e))
}

/// Creates a checkpoint for `step` in `root` with `fill(dir)` writing the files into the
/// (temporary) directory, then publishes it.
pub fn publish(
    root: &Path,
    step: usize,
    fill: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(root).map_err(|e| TrainError::io("cannot create", root, e))?;
    let name = format!("step-{step:06}");
    let tmp = root.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io("cannot create", &tmp, e))?;
    fill(&tmp)?;
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io("cannot replace", &dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::io("cannot rename into", &dir, e))?;
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    prune(root, &name);
    Ok(dir)
}

/// Removes all but the two newest `step-*` checkpoints (never `keep`).
fn prune(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-") && !n.contains(".tmp"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(2);
    for n in names.into_iter().take(excess).filter(|n| n != keep) {
        let _ = std::fs::remove_dir_all(root.join(n));
    }
}

/// The newest published checkpoint of `root`, or of its `checkpoints/` folder; `root` may
/// also be a checkpoint directory itself.
pub fn latest(root: &Path) -> Result<PathBuf, TrainError> {
    if root.join("state.json").is_file() {
        return Ok(root.to_path_buf());
    }
    for base in [root.to_path_buf(), root.join("checkpoints")] {
        let pointer = base.join(LATEST);
        if pointer.is_file() {
            let name = std::fs::read_to_string(&pointer)
                .map_err(|e| TrainError::io("cannot read", &pointer, e))?;
            return Ok(base.join(name.trim()));
        }
    }
    Err(TrainError::Config(format!(
        "no checkpoint in {} (expected {}/LATEST, checkpoints/LATEST or state.json)",
        root.display(),
        root.display()
    )))
}

/// Reads `state.json` of checkpoint directory `dir`.
pub fn read_state(dir: &Path) -> Result<StateFile, TrainError> {
    let path = dir.join("state.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| TrainError::io("cannot read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Record {
        path,
        message: e.to_string(),
    })
}
