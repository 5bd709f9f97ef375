//! Official checkpoints in safetensors: one file, or shards listed by an index JSON
//! (`model.safetensors.index.json` with a `weight_map` from tensor name to shard file, the
//! layout of the released xLSTM-7B).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};

use super::{CheckpointError, TensorMap};

/// The index file name of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The file name of a single-file checkpoint in a directory.
pub const SINGLE_FILE: &str = "model.safetensors";

fn file_err(path: &Path, message: impl ToString) -> CheckpointError {
    CheckpointError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads every tensor of one safetensors file, converted to f32 (f32, f64, bf16, f16 accepted).
pub fn read_file(path: &Path) -> Result<TensorMap, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| file_err(path, format!("not a valid safetensors file: {e}")))?;
    let mut map = TensorMap::new();
    for (name, view) in file.tensors() {
        let values =
            decode(view.dtype(), view.data()).map_err(|message| CheckpointError::Tensor {
                name: name.clone(),
                message: format!("{}: {message}", path.display()),
            })?;
        map.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    Ok(map)
}

fn decode(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    fn chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes
            .chunks_exact(N)
            .map(|c| c.try_into().expect("exact chunk"))
    }
    Ok(match dtype {
        Dtype::F32 => chunks::<4>(bytes).map(f32::from_le_bytes).collect(),
        Dtype::F64 => chunks::<8>(bytes)
            .map(|b| f64::from_le_bytes(b) as f32)
            .collect(),
        Dtype::BF16 => chunks::<2>(bytes)
            .map(|b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16))
            .collect(),
        Dtype::F16 => chunks::<2>(bytes)
            .map(|b| f16_to_f32(u16::from_le_bytes(b)))
            .collect(),
        other => {
            return Err(format!(
                "unsupported dtype {other:?} (expected a float type)"
            ))
        }
    })
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value = f · 2^-24.
            return f32::from_bits(sign)
                + (f as f32) * 2f32.powi(-24) * if sign != 0 { -1.0 } else { 1.0 };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Reads a checkpoint: a `.safetensors` file, an index JSON, or a directory holding either
/// [`INDEX_FILE`] or [`SINGLE_FILE`].
pub fn read_checkpoint(path: &Path) -> Result<TensorMap, CheckpointError> {
    if path.is_dir() {
        let index = path.join(INDEX_FILE);
        if index.exists() {
            return read_sharded(&index);
        }
        return read_file(&path.join(SINGLE_FILE));
    }
    if path.extension().is_some_and(|e| e == "json") {
        return read_sharded(path);
    }
    read_file(path)
}

/// Reads every shard of an index JSON; each tensor must be in the shard the index names.
pub fn read_sharded(index: &Path) -> Result<TensorMap, CheckpointError> {
    let text = std::fs::read_to_string(index).map_err(|e| file_err(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| file_err(index, format!("invalid JSON: {e}")))?;
    let weight_map = json["weight_map"]
        .as_object()
        .ok_or_else(|| file_err(index, "no object `weight_map`"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, file) in weight_map {
        let file = file
            .as_str()
            .ok_or_else(|| file_err(index, format!("weight_map[{name}] is not a file name")))?;
        by_file.entry(file).or_default().push(name);
    }
    let mut map = TensorMap::new();
    for (file, names) in by_file {
        let mut shard = read_file(&dir.join(file))?;
        for name in names {
            let data = shard.remove(name).ok_or_else(|| CheckpointError::Tensor {
                name: name.to_string(),
                message: format!("the index names shard {file}, which does not hold it"),
            })?;
            map.insert(name, data);
        }
    }
    Ok(map)
}

/// Writes `map` as one f32 safetensors file.
pub fn write_file(map: &TensorMap, path: &Path) -> Result<(), CheckpointError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        map.iter()
            .map(|(name, data)| {
                let values: Vec<f32> = data.clone().convert::<f32>().to_vec().map_err(|e| {
                    CheckpointError::Tensor {
                        name: name.clone(),
                        message: format!("{e:?}"),
                    }
                })?;
                let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                Ok((name.clone(), data.shape.to_vec(), raw))
            })
            .collect::<Result<_, CheckpointError>>()?;
    let views = bytes
        .iter()
        .map(|(name, shape, raw)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), raw)
                .map(|v| (name.clone(), v))
                .map_err(|e| CheckpointError::Tensor {
                    name: name.clone(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| file_err(path, e))
}

/// Writes `map` into `dir` as shards of at most `max_shard_bytes` (a bigger tensor gets a
/// shard of its own) named `model-0000i-of-0000n.safetensors`, plus [`INDEX_FILE`].
pub fn write_sharded(
    map: &TensorMap,
    dir: &Path,
    max_shard_bytes: usize,
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let mut shards: Vec<TensorMap> = vec![TensorMap::new()];
    let mut size = 0;
    let mut total = 0;
    for (name, data) in map.iter() {
        let bytes = 4 * data.num_elements();
        if size + bytes > max_shard_bytes && !shards.last().expect("one shard").is_empty() {
            shards.push(TensorMap::new());
            size = 0;
        }
        size += bytes;
        total += bytes;
        shards
            .last_mut()
            .expect("one shard")
            .insert(name.clone(), data.clone());
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        write_file(shard, &dir.join(&file))?;
        for name in shard.names() {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    let path: PathBuf = dir.join(INDEX_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&index).expect("JSON"))
        .map_err(|e| file_err(&path, e))
}
