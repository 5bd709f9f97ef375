//! Parameters under their official PyTorch `state_dict` names.
//!
//! Every module stores its parameters in the official layout, except weights that are
//! multiplied from the right (dense, headwise and sLSTM recurrent weights), which are stored
//! with their last two dims swapped and swapped back here; a checkpoint maps one to one:
//! [`OfficialParams::visit`] lists `(name, tensor)` pairs, [`OfficialParams::load`] replaces the
//! parameters from a [`TensorMap`] (keeping each parameter's id, so optimiser state stays
//! attached), checking every name and shape. [`safetensors`](self::safetensors) reads and writes
//! single files and sharded checkpoints with an index JSON.

mod components;
pub mod safetensors;

use std::collections::BTreeMap;

use burn::module::Param;
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// A checkpoint could not be read, written or applied.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("tensor `{0}` is missing from the checkpoint")]
    Missing(String),
    #[error("tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("the checkpoint has tensors the model does not know: {0:?}")]
    Unexpected(Vec<String>),
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// A parameter (of any rank the models use): the stored tensor itself (so that autodiff finds
/// its gradient), and how it maps to the official layout.
#[derive(Debug, Clone)]
pub enum ParamTensor<B: Backend> {
    R1(Tensor<B, 1>),
    R2(Tensor<B, 2>),
    R3(Tensor<B, 3>),
    /// Stored `[in, out]`; the official tensor is its transpose `[out, in]`.
    R2Swapped(Tensor<B, 2>),
    /// Stored `[.., in, out]`; the official tensor swaps the last two dims, `[.., out, in]`.
    R3Swapped(Tensor<B, 3>),
}

impl<B: Backend> ParamTensor<B> {
    /// The official shape.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::R1(t) => t.dims().to_vec(),
            Self::R2(t) => t.dims().to_vec(),
            Self::R3(t) => t.dims().to_vec(),
            Self::R2Swapped(t) => t.dims().into_iter().rev().collect(),
            Self::R3Swapped(t) => {
                let [nh, i, o] = t.dims();
                vec![nh, o, i]
            }
        }
    }

    /// The values in the official layout.
    pub fn into_data(self) -> TensorData {
        match self {
            Self::R1(t) => t.into_data(),
            Self::R2(t) => t.into_data(),
            Self::R3(t) => t.into_data(),
            Self::R2Swapped(t) => t.swap_dims(0, 1).into_data(),
            Self::R3Swapped(t) => t.swap_dims(1, 2).into_data(),
        }
    }
}

/// Named tensors read from (or to be written to) a checkpoint, as f32.
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    tensors: BTreeMap<String, TensorData>,
}

impl TensorMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, data: TensorData) {
        self.tensors.insert(name.into(), data);
    }

    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.tensors.get(name)
    }

    pub fn remove(&mut self, name: &str) -> Option<TensorData> {
        self.tensors.remove(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &TensorData)> {
        self.tensors.iter()
    }

    /// Removes `name`, checking its shape against `expected`.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<TensorData, CheckpointError> {
        let data = self
            .tensors
            .remove(name)
            .ok_or_else(|| CheckpointError::Missing(name.to_string()))?;
        if data.shape.as_slice() != expected {
            return Err(CheckpointError::Shape {
                name: name.to_string(),
                found: data.shape.to_vec(),
                expected: expected.to_vec(),
            });
        }
        Ok(data)
    }

    /// Error if any tensor was not used.
    pub fn finish(self) -> Result<(), CheckpointError> {
        if self.tensors.is_empty() {
            Ok(())
        } else {
            Err(CheckpointError::Unexpected(
                self.tensors.into_keys().collect(),
            ))
        }
    }

    /// Every parameter of `module` under its official name.
    pub fn from_module<B: Backend, M: OfficialParams<B>>(module: &M) -> Self {
        let mut out = vec![];
        module.visit_official("", &mut out);
        let mut map = Self::new();
        for (name, t) in out {
            map.insert(name, t.into_data().convert::<f32>());
        }
        map
    }
}

/// A module whose parameters have official names.
pub trait OfficialParams<B: Backend>: Sized {
    /// Appends `(prefix + name, value)` for every parameter.
    fn visit_official(&self, prefix: &str, out: &mut Vec<(String, ParamTensor<B>)>);
    /// Replaces every parameter by `src[prefix + name]` (removed from `src`).
    fn load_official(self, prefix: &str, src: &mut TensorMap) -> Result<Self, CheckpointError>;
    /// The official `state_dict` (tied weights appear under both names, as in PyTorch).
    fn state_dict(&self) -> TensorMap {
        TensorMap::from_module(self)
    }
}

/// Loads official weights into `model` from `path` (a `.safetensors` file, an index JSON, or
/// a directory with either). Every model parameter must be present with its shape, and every
/// tensor of the checkpoint must be used.
pub fn load_official<B: Backend, M: OfficialParams<B>>(
    model: M,
    path: &std::path::Path,
) -> Result<M, CheckpointError> {
    let mut map = safetensors::read_checkpoint(path)?;
    let model = model.load_official("", &mut map)?;
    map.finish()?;
    Ok(model)
}

/// Saves the official `state_dict` of `model` as one f32 safetensors file.
pub fn save_official<B: Backend, M: OfficialParams<B>>(
    model: &M,
    path: &std::path::Path,
) -> Result<(), CheckpointError> {
    safetensors::write_file(&model.state_dict(), path)
}

/// Saves the official `state_dict` of `model` into `dir` as shards of at most
/// `max_shard_bytes` with a `model.safetensors.index.json`.
pub fn save_official_sharded<B: Backend, M: OfficialParams<B>>(
    model: &M,
    dir: &std::path::Path,
    max_shard_bytes: usize,
) -> Result<(), CheckpointError> {
    safetensors::write_sharded(&model.state_dict(), dir, max_shard_bytes)
}

/// `Param` of rank 1–3 ⇄ [`ParamTensor`].
pub(crate) trait ParamRank<B: Backend>: Sized {
    fn view(&self) -> ParamTensor<B>;
    fn load_from(self, name: &str, src: &mut TensorMap) -> Result<Self, CheckpointError>;
}

macro_rules! param_rank {
    ($d:literal, $variant:ident) => {
        impl<B: Backend> ParamRank<B> for Param<Tensor<B, $d>> {
            fn view(&self) -> ParamTensor<B> {
                ParamTensor::$variant(self.val())
            }
            fn load_from(self, name: &str, src: &mut TensorMap) -> Result<Self, CheckpointError> {
                let data = src.take(name, &self.dims())?;
                Ok(self.map(|old| {
                    let grad = old.is_require_grad();
                    let t = Tensor::from_data(data.convert::<B::FloatElem>(), &old.device());
                    if grad {
                        t.require_grad()
                    } else {
                        t
                    }
                }))
            }
        }
    };
}
param_rank!(1, R1);
param_rank!(2, R2);
param_rank!(3, R3);

/// A parameter stored with its last two dims swapped against the official layout (`[.., in,
/// out]` where PyTorch has `[.., out, in]`; see `components::init::param_swapped`): checkpoints
/// see the official layout.
pub(crate) trait SwappedParamRank<B: Backend>: Sized {
    fn view_official(&self) -> ParamTensor<B>;
    fn load_from_official(self, name: &str, src: &mut TensorMap) -> Result<Self, CheckpointError>;
}

macro_rules! swapped_param_rank {
    ($d:literal, $variant:ident) => {
        impl<B: Backend> SwappedParamRank<B> for Param<Tensor<B, $d>> {
            fn view_official(&self) -> ParamTensor<B> {
                ParamTensor::$variant(self.val())
            }
            fn load_from_official(
                self,
                name: &str,
                src: &mut TensorMap,
            ) -> Result<Self, CheckpointError> {
                let mut official = self.dims();
                official.swap($d - 2, $d - 1);
                let data = src.take(name, &official)?;
                Ok(self.map(|old| {
                    let grad = old.is_require_grad();
                    let t =
                        Tensor::<B, $d>::from_data(data.convert::<B::FloatElem>(), &old.device());
                    let t = crate::components::init::swap_last_two(t);
                    if grad {
                        t.require_grad()
                    } else {
                        t
                    }
                }))
            }
        }
    };
}
swapped_param_rank!(2, R2Swapped);
swapped_param_rank!(3, R3Swapped);

/// Visit helper for a parameter stored swapped ([`SwappedParamRank`]).
pub(crate) fn visit_swapped<B: Backend, P: SwappedParamRank<B>>(
    p: &P,
    prefix: &str,
    name: &str,
    out: &mut Vec<(String, ParamTensor<B>)>,
) {
    out.push((join(prefix, name), p.view_official()));
}

/// Load helper for a parameter stored swapped ([`SwappedParamRank`]).
pub(crate) fn load_swapped<B: Backend, P: SwappedParamRank<B>>(
    p: P,
    prefix: &str,
    name: &str,
    src: &mut TensorMap,
) -> Result<P, CheckpointError> {
    p.load_from_official(&join(prefix, name), src)
}

/// `prefix` joined with `name` by a dot (no dot when `prefix` is empty).
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Visit helper for a parameter.
pub(crate) fn visit_param<B: Backend, P: ParamRank<B>>(
    p: &P,
    prefix: &str,
    name: &str,
    out: &mut Vec<(String, ParamTensor<B>)>,
) {
    out.push((join(prefix, name), p.view()));
}

/// Visit helper for an optional parameter.
pub(crate) fn visit_opt<B: Backend, P: ParamRank<B>>(
    p: &Option<P>,
    prefix: &str,
    name: &str,
    out: &mut Vec<(String, ParamTensor<B>)>,
) {
    if let Some(p) = p {
        visit_param(p, prefix, name, out);
    }
}

/// Load helper for a parameter.
pub(crate) fn load_param<B: Backend, P: ParamRank<B>>(
    p: P,
    prefix: &str,
    name: &str,
    src: &mut TensorMap,
) -> Result<P, CheckpointError> {
    p.load_from(&join(prefix, name), src)
}

/// Load helper for an optional parameter.
pub(crate) fn load_opt<B: Backend, P: ParamRank<B>>(
    p: Option<P>,
    prefix: &str,
    name: &str,
    src: &mut TensorMap,
) -> Result<Option<P>, CheckpointError> {
    p.map(|p| load_param(p, prefix, name, src)).transpose()
}

/// Load helper for an optional sub-module.
pub(crate) fn load_module<B: Backend, M: OfficialParams<B>>(
    m: Option<M>,
    prefix: &str,
    src: &mut TensorMap,
) -> Result<Option<M>, CheckpointError> {
    m.map(|m| m.load_official(prefix, src)).transpose()
}
