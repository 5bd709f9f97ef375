//! Data-parallel training over the devices of one host through burn's collective operations
//! (`burn::collective`, feature `collective`): one thread and one [`Trainer`] replica per
//! device; after each backward pass the replicas' gradients are summed by burn's all-reduce,
//! and every replica applies the same optimiser step (see [`crate::trainer::Replica`]).
//!
//! burn 0.21's local all-reduce moves the gradients between the devices with its own tensor
//! operations (tree strategy by default; centralized and ring exist), not through NCCL; a
//! multi-host run would add burn's global level (an orchestrator process and a data service
//! per node, `CollectiveConfig::with_global_address` etc.), which this module does not set up.

use burn::collective::{
    all_reduce, finish_collective, register, CollectiveConfig, CollectiveError, PeerId,
    ReduceOperation,
};
use burn::optim::GradientsParams;
use burn::tensor::{backend::AutodiffBackend, Tensor, TensorData};

use crate::trainer::Replica;
use crate::TrainError;

fn collective_error(what: &str, e: CollectiveError) -> TrainError {
    TrainError::Config(format!("collective {what}: {e:?}"))
}

fn peer(rank: usize) -> PeerId {
    PeerId::from(rank as u32)
}

/// Registers replica `rank` of `world` on `device` with burn's collective. Every replica calls
/// this once, on its own thread, before its first step; it returns once all `world` replicas
/// have registered (so start the other replicas' threads before calling it).
pub fn join<B: AutodiffBackend>(
    rank: usize,
    world: usize,
    device: B::Device,
) -> Result<(), TrainError> {
    let config = CollectiveConfig::default().with_num_devices(world);
    register::<B::InnerBackend>(peer(rank), device, config)
        .map_err(|e| collective_error("register", e))
}

/// Unregisters replica `rank` (after its last step).
pub fn leave<B: AutodiffBackend>(rank: usize) -> Result<(), TrainError> {
    finish_collective::<B::InnerBackend>(peer(rank)).map_err(|e| collective_error("finish", e))
}

/// Sums `grads` and the scalars `values` over all replicas; every replica gets the same sums.
pub(crate) fn all_reduce_grads<B: AutodiffBackend>(
    replica: Replica,
    grads: GradientsParams,
    values: &[f64],
    device: &B::Device,
) -> Result<(GradientsParams, Vec<f64>), TrainError> {
    let id = peer(replica.rank);
    let grads = grads
        .all_reduce::<B::InnerBackend>(id, ReduceOperation::Sum)
        .map_err(|e| collective_error("all-reduce of the gradients", e))?;
    let data = TensorData::new(values.iter().map(|&v| v as f32).collect(), [values.len()]);
    let local = Tensor::<B::InnerBackend, 1>::from_data(data, device);
    let summed =
        all_reduce::<B::InnerBackend>(id, local.into_primitive().tensor(), ReduceOperation::Sum)
            .map_err(|e| collective_error("all-reduce of the loss", e))?;
    let summed =
        Tensor::<B::InnerBackend, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(summed));
    let values = summed
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .map_err(|e| TrainError::Config(format!("collective: reading the summed loss: {e:?}")))?;
    Ok((grads, values))
}
