//! Learning-rate schedule: linear warmup, then cosine decay to a floor (the official
//! `experiments/lr_scheduler.py::LinearWarmupCosineAnnealing`).

use serde::{Deserialize, Serialize};

/// Linear warmup from 0 to `max_lr` over `warmup_steps`, cosine decay to `min_lr` at
/// `decay_until_step`, then constant `min_lr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Step at which the decay reaches `min_lr` (official: the number of training steps).
    pub decay_until_step: usize,
    /// Peak learning rate.
    pub max_lr: f64,
    /// Final learning rate (official: `lr_decay_factor * lr`).
    pub min_lr: f64,
}

impl WarmupCosine {
    /// The learning rate of optimiser step `step` (0-based; step 0 of a warmup uses lr 0, as
    /// the official scheduler does).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.max_lr * step as f64 / self.warmup_steps as f64;
        }
        if step >= self.decay_until_step {
            return self.min_lr;
        }
        let ratio =
            (step - self.warmup_steps) as f64 / (self.decay_until_step - self.warmup_steps) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}
