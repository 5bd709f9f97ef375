//! `xlstm train --devices N`: data-parallel replicas on the first `N` devices of the backend
//! (feature `distributed`). Rank 0 runs the visible loop (progress, evaluation, checkpoints)
//! on the calling thread; ranks `1..N` run the same steps on their own threads and devices;
//! burn's collective all-reduce sums the gradients of every step (`xlstm_train::distributed`).

use crate::backend::DeviceIndex;
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use std::path::PathBuf;
use xlstm_blocks::lm::XlstmLm;
use xlstm_train::distributed::{join, leave};
use xlstm_train::{Dataset, Replica, TrainConfig, Trainer};

/// Checks that devices `0..world` exist by creating a tensor on each, so that a missing GPU
/// is one clear error before training starts rather than a failure inside the runtime.
pub fn check_devices<AB: AutodiffBackend>(world: usize) -> Result<(), String>
where
    AB::Device: DeviceIndex,
{
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let missing = (0..world).find(|&i| {
        std::panic::catch_unwind(|| {
            let t = burn::tensor::Tensor::<AB, 1>::zeros([1], &AB::Device::nth(i));
            t.into_data();
        })
        .is_err()
    });
    std::panic::set_hook(hook);
    match missing {
        Some(i) => Err(format!(
            "--devices {world}: device {i} of this backend is not available"
        )),
        None => Ok(()),
    }
}

/// What every follower needs to start (or resume) its replica.
pub struct Plan {
    pub world: usize,
    pub config: TrainConfig,
    pub data: Dataset,
    /// `Some(dir)`: resume every replica from the checkpoints in `dir`.
    pub resume: Option<PathBuf>,
}

/// Starts ranks `1..world` on their devices with copies of `model` (rank 0's initial
/// weights) and returns their threads. A failing follower prints its error and ends the
/// process (the other replicas would otherwise wait for it in the all-reduce forever).
pub fn spawn_followers<AB>(plan: Plan, model: &XlstmLm<AB>) -> Vec<std::thread::JoinHandle<()>>
where
    AB: AutodiffBackend + xlstm_kernels::XlstmBackend,
    AB::InnerBackend: xlstm_kernels::XlstmBackend,
    AB::Device: DeviceIndex,
{
    (1..plan.world)
        .map(|rank| {
            let device = AB::Device::nth(rank);
            let model = model.clone().fork(&device);
            let (config, data, resume) =
                (plan.config.clone(), plan.data.clone(), plan.resume.clone());
            let world = plan.world;
            std::thread::spawn(move || {
                let run = || -> Result<(), String> {
                    let e = |e: xlstm_train::TrainError| format!("device {rank}: {e}");
                    join::<AB>(rank, world, device.clone()).map_err(e)?;
                    let trainer = match &resume {
                        Some(dir) => Trainer::resume(model, config, dir, device).map_err(e)?.0,
                        None => Trainer::new(model, config, device).map_err(e)?,
                    };
                    let mut trainer = trainer.into_replica(Replica { rank, world }).map_err(e)?;
                    while !trainer.finished() {
                        trainer.step(&data).map_err(e)?;
                    }
                    leave::<AB>(rank).map_err(e)
                };
                if let Err(err) = run() {
                    eprintln!("error: {err}");
                    std::process::exit(1);
                }
            })
        })
        .collect()
}
