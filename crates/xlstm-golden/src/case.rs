use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::Array;

/// One golden case: its JSON sidecar and its tensors.
#[derive(Debug, Clone)]
pub struct Case {
    /// File stem, e.g. `mlstm_cell_0`.
    pub name: String,
    /// The JSON `kind`, e.g. `mlstm_cell`.
    pub kind: String,
    /// The whole JSON sidecar (configuration).
    pub meta: serde_json::Value,
    /// Tensors by their full name (`input.q`, `grad.x`, …).
    pub tensors: BTreeMap<String, Array>,
}

impl Case {
    /// The tensor `name`, or a panic naming the case and the tensor.
    pub fn get(&self, name: &str) -> &Array {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("golden case {} has no tensor {name}", self.name))
    }

    /// Names (without the prefix) of all tensors that start with `prefix`, e.g. `"grad."`.
    pub fn names(&self, prefix: &str) -> Vec<String> {
        self.tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect()
    }

    /// An integer field of the JSON sidecar at `path` (e.g. `["config", "B"]`).
    pub fn meta_usize(&self, path: &[&str]) -> usize {
        let mut v = &self.meta;
        for key in path {
            v = &v[*key];
        }
        v.as_u64()
            .unwrap_or_else(|| panic!("golden case {}: no integer at {path:?}", self.name))
            as usize
    }

    /// Reads `dir/NAME.json` and `dir/NAME.safetensors`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, String> {
        let json_path = dir.join(format!("{name}.json"));
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&json_path)
                .map_err(|e| format!("{}: {e}", json_path.display()))?,
        )
        .map_err(|e| format!("{}: {e}", json_path.display()))?;
        let kind = meta["kind"]
            .as_str()
            .ok_or_else(|| format!("{}: no string field `kind`", json_path.display()))?
            .to_string();
        let st_path = dir.join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&st_path).map_err(|e| format!("{}: {e}", st_path.display()))?;
        let file =
            SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", st_path.display()))?;
        let mut tensors = BTreeMap::new();
        for (tname, view) in file.tensors() {
            let values = decode(view.dtype(), view.data())
                .map_err(|e| format!("{}: tensor {tname}: {e}", st_path.display()))?;
            tensors.insert(
                tname,
                Array {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(Self {
            name: name.to_string(),
            kind,
            meta,
            tensors,
        })
    }
}

fn decode(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f64>, String> {
    fn chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes
            .chunks_exact(N)
            .map(|c| c.try_into().expect("exact chunk"))
    }
    Ok(match dtype {
        Dtype::F64 => chunks::<8>(bytes).map(f64::from_le_bytes).collect(),
        Dtype::F32 => chunks::<4>(bytes)
            .map(|b| f32::from_le_bytes(b) as f64)
            .collect(),
        Dtype::I64 => chunks::<8>(bytes)
            .map(|b| i64::from_le_bytes(b) as f64)
            .collect(),
        Dtype::I32 => chunks::<4>(bytes)
            .map(|b| i32::from_le_bytes(b) as f64)
            .collect(),
        other => return Err(format!("unsupported dtype {other:?}")),
    })
}

/// The golden directory: `$XLSTM_GOLDEN_DIR`, else the project's `tests/golden/`.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("XLSTM_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden"),
    }
}

/// Every case in `dir` (each `*.json` with its `*.safetensors`), sorted by name.
pub fn cases(dir: &Path) -> Result<Vec<Case>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let stem = path.file_stem()?.to_str()?.to_string();
            (path.extension()? == "json" && dir.join(format!("{stem}.safetensors")).exists())
                .then_some(stem)
        })
        .collect();
    names.sort();
    names.iter().map(|n| Case::load(dir, n)).collect()
}
