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

/// The layout of the tensors in `model.mpk` that this build writes and reads. 2: the weights
/// multiplied from the right are stored `[.., in, out]` (`Linear`, `LinearHeadwise`, the sLSTM
/// recurrent kernel). Format 1 (no `format` field in `state.json`) stored them `[.., out, in]`;
/// its square head-wise blocks would load transposed without an error, so it is refused.
pub const FORMAT: u32 = 2;

/// The contents of `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateFile {
    /// The checkpoint [`FORMAT`] (1 where the field is missing: written before it existed).
    #[serde(default = "format_one")]
    pub format: u32,
    /// Loop state.
    pub state: TrainState,
    /// Whatever the caller stores (model config, task, training settings).
    pub meta: serde_json::Value,
}

fn format_one() -> u32 {
    1
}

impl StateFile {
    /// The state file of a checkpoint written by this build.
    pub fn new(state: TrainState, meta: serde_json::Value) -> Self {
        Self {
            format: FORMAT,
            state,
            meta,
        }
    }
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
    let file: StateFile = serde_json::from_str(&text).map_err(|e| TrainError::Record {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if file.format != FORMAT {
        return Err(TrainError::Record {
            path,
            message: format!(
                "checkpoint format {} (field `format`), this build reads format {FORMAT} only: \
                 format 1 stored projection weights [out, in] and would load transposed; \
                 train again from scratch with this build",
                file.format
            ),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xlstm-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn state() -> TrainState {
        TrainState {
            step: 7,
            examples_seen: 224,
            skipped_steps: 1,
            seed: 42,
            schedule: WarmupCosine {
                warmup_steps: 2,
                decay_until_step: 10,
                max_lr: 1e-3,
                min_lr: 1e-4,
            },
        }
    }

    #[test]
    fn a_checkpoint_of_this_build_reads_back() {
        let d = dir("roundtrip");
        let file = StateFile::new(state(), serde_json::json!({"task": "parity"}));
        let text = serde_json::to_string_pretty(&file).unwrap();
        write_atomic(&d.join("state.json"), text.as_bytes()).unwrap();
        let back = read_state(&d).unwrap();
        assert_eq!(back.format, FORMAT);
        assert_eq!(back.state, state());
        assert_eq!(back.meta["task"], "parity");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_checkpoint_without_a_format_is_refused_by_name() {
        let d = dir("format1");
        // What builds before the [in, out] weight layout wrote: no `format` field.
        let old = serde_json::json!({"state": state(), "meta": {}});
        std::fs::write(d.join("state.json"), old.to_string()).unwrap();
        let err = read_state(&d).unwrap_err().to_string();
        assert!(err.contains("format 1"), "{err}");
        assert!(err.contains("`format`"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
