use burn::tensor::{backend::Backend, Tensor};

/// The mLSTM normaliser `max(|n_t · q_t|, exp(-m_t)) + eps` (paper eq. 21 with stabilisation).
///
/// The paper writes `max(|n·q|, 1)`; with the stabiliser the stored `n` is `exp(-m)` times the
/// true one, so the lower bound 1 becomes `exp(-m)`. The official code adds `eps` (1e-6)
/// after the max; so do we. `qn` and `m` have the same shape.
pub fn normalizer<B: Backend, const D: usize>(
    qn: Tensor<B, D>,
    m: Tensor<B, D>,
    eps: f64,
) -> Tensor<B, D> {
    qn.abs().max_pair(m.neg().exp()) + eps
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    #[test]
    fn takes_the_larger_of_the_two_bounds_then_adds_eps() {
        let d = Default::default();
        let qn = Tensor::<NdArray<f64>, 1>::from_data(TensorData::from([-3.0, 0.5, 1e-9]), &d);
        let m = Tensor::<NdArray<f64>, 1>::from_data(TensorData::from([0.0, 0.0, 2.0]), &d);
        let got: Vec<f64> = normalizer(qn, m, 1e-6).into_data().to_vec().unwrap();
        let want = [3.0 + 1e-6, 1.0 + 1e-6, (-2.0f64).exp() + 1e-6];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
    }
}
