//! The official initialisations (`xlstm/components/init.py`, `sLSTMCell.reset_parameters`).

use burn::module::Initializer;

/// "Small init" (Nguyen & Salazar 2019): `N(0, sqrt(2 / (5·dim)))`.
pub fn small_init(dim: usize) -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: (2.0 / (5.0 * dim as f64)).sqrt(),
    }
}

/// Wang init for output projections: `N(0, 2 / num_blocks / sqrt(dim))`.
pub fn wang_init(dim: usize, num_blocks: usize) -> Initializer {
    Initializer::Normal {
        mean: 0.0,
        std: 2.0 / num_blocks as f64 / (dim as f64).sqrt(),
    }
}

/// PyTorch's default for `nn.Linear` / `nn.Conv1d`: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
pub fn torch_default(fan_in: usize) -> Initializer {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Initializer::Uniform {
        min: -bound,
        max: bound,
    }
}

/// `n` values evenly spaced from `start` to `end` inclusive (`torch.linspace`).
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f32> {
    match n {
        0 => vec![],
        1 => vec![start as f32],
        _ => (0..n)
            .map(|i| (start + (end - start) * i as f64 / (n - 1) as f64) as f32)
            .collect(),
    }
}

/// A parameter drawn from `init` now. burn's `Initializer::init` is lazy, and clones of a lazy
/// parameter draw their own values: a model cloned before first use would not equal itself.
pub fn param<B: burn::tensor::backend::Backend, const D: usize>(
    init: &Initializer,
    shape: [usize; D],
    device: &B::Device,
) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
    burn::module::Param::from_tensor(init.init::<B, D, _>(shape, device).into_value())
}

/// A parameter drawn from `init` in the official shape `[.., out, in]` and stored with its last
/// two dims swapped, `[.., in, out]`, in memory order (same values as [`param`] on the official
/// shape). `x · W` then reads `W` as it lies: burn-ndarray copies a transposed matmul operand on
/// every call, which cost a third of each generated token.
pub fn param_swapped<B: burn::tensor::backend::Backend, const D: usize>(
    init: &Initializer,
    official_shape: [usize; D],
    device: &B::Device,
) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
    let official = init.init::<B, D, _>(official_shape, device).into_value();
    burn::module::Param::from_tensor(swap_last_two(official))
}

/// `t` with its last two dims swapped, laid out contiguously (a copy, not a view).
pub fn swap_last_two<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> burn::tensor::Tensor<B, D> {
    let device = t.device();
    burn::tensor::Tensor::from_data(t.swap_dims(D - 2, D - 1).into_data(), &device)
}
