//! Data-parallel replicas (feature `collective`) against one trainer on the global batch.
//!
//! `cargo test -p xlstm-train --features collective --test distributed`. On ndarray every
//! replica runs on the CPU device, each on its own thread, and burn's collective sums the
//! gradients; the losses and weights must match one device training on the whole batch.
#![cfg(feature = "collective")]

mod common;

use burn::module::{AutodiffModule, Module};
use common::{flat_params, tiny, AB};
use xlstm_train::distributed::{join, leave};
use xlstm_train::{
    AdamWSettings, Dataset, FormalTask, Replica, TaskConfig, TrainConfig, TrainError, Trainer,
};

fn config(steps: usize, batch_size: usize, grad_accum: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size,
        grad_accum,
        lr: 1e-2,
        warmup_steps: 1,
        lr_decay_factor: 0.1,
        clip_norm: Some(0.5),
        adamw: AdamWSettings::default(),
        seed: 0,
    }
}

/// Relative L2 distance of two parameter lists.
fn rel(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (a, b) = (a.concat(), b.concat());
    let num: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn replicas_on_shards_equal_one_device_on_the_global_batch() {
    // Parity: variable lengths, so shards are padded differently and hold different numbers
    // of scored tokens only through the batch composition (one answer per example).
    let data = Dataset::new(TaskConfig::formal(FormalTask::Parity), 5).unwrap();
    let (steps, batch, accum, world) = (4, 6, 2, 3);
    let model = tiny(3, 21);

    let mut alone = Trainer::<AB, _>::new(
        model.clone(),
        config(steps, batch, accum),
        Default::default(),
    )
    .unwrap();
    let want: Vec<f64> = (0..steps)
        .map(|_| alone.step(&data).unwrap().loss)
        .collect();

    let results: Vec<(Vec<f64>, Vec<Vec<f32>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let model = model.clone().fork(&Default::default());
                let data = &data;
                s.spawn(move || {
                    join::<AB>(rank, world, Default::default()).unwrap();
                    let mut t = Trainer::<AB, _>::new(
                        model,
                        config(steps, batch, accum),
                        Default::default(),
                    )
                    .unwrap()
                    .into_replica(Replica { rank, world })
                    .unwrap();
                    let losses: Vec<f64> = (0..steps).map(|_| t.step(data).unwrap().loss).collect();
                    assert_eq!(t.state().examples_seen, (steps * batch * accum) as u64);
                    leave::<AB>(rank).unwrap();
                    (losses, flat_params(&t.model().valid()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let want_params = flat_params(&alone.model().valid());
    for (rank, (losses, params)) in results.iter().enumerate() {
        for (step, (got, want)) in losses.iter().zip(&want).enumerate() {
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "rank {rank} step {step}: loss {got} vs one device {want}"
            );
        }
        let err = rel(params, &want_params);
        assert!(
            err < 1e-5,
            "rank {rank}: weights differ from one device by {err:.2e}"
        );
        // Every replica holds the same weights, bit for bit.
        assert_eq!(params, &results[0].1, "rank {rank} drifted from rank 0");
    }
    // The runs did train: the weights moved.
    assert!(rel(&want_params, &flat_params(&model.valid())) > 1e-3);
}

#[test]
fn a_batch_that_does_not_split_evenly_is_refused() {
    let t = Trainer::<AB, _>::new(tiny(3, 1), config(1, 5, 1), Default::default()).unwrap();
    let err = t.into_replica(Replica { rank: 0, world: 2 }).err().unwrap();
    assert!(
        matches!(err, TrainError::Config(ref m) if m.contains("batch_size (5)")),
        "{err}"
    );
}
