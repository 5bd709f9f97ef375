//! Global-norm gradient clipping (torch's `clip_grad_norm_`): one norm over all gradients
//! of the model, `‖g‖ = sqrt(Σ_p Σ_i g_pi²)`, and every gradient scaled by
//! `max_norm / (‖g‖ + 1e-6)` when `‖g‖ > max_norm`. (burn's own clipping is per parameter.)

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{backend::AutodiffBackend, ElementConversion, Tensor};

/// Sums `Σ g²` over every float parameter with a gradient.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

/// Multiplies every gradient by `factor`.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of all gradients of `module` (NaN/Inf when any gradient is).
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = SquaredNorm::<B> { grads, total: None };
    module.visit(&mut v);
    v.total
        .map(|t| t.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0)
}

/// Scales all gradients so that their global norm is at most `max_norm`, given their
/// global norm `norm` (from [`global_grad_norm`]). Returns the factor applied (1 if none).
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    norm: f64,
    max_norm: f64,
) -> f64 {
    if norm <= max_norm {
        return 1.0;
    }
    let factor = max_norm / (norm + 1e-6);
    let mut v = Scale { grads, factor };
    module.visit(&mut v);
    factor
}
