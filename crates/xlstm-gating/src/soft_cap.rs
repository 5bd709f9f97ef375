use burn::tensor::{backend::Backend, Tensor};

/// Soft-capping `cap · tanh(x / cap)` (xLSTM-7B: gate pre-activations with cap 15, output
/// logits with cap 30). Smooth, odd, identity near zero, bounded by `±cap`.
pub fn soft_cap<B: Backend, const D: usize>(x: Tensor<B, D>, cap: f64) -> Tensor<B, D> {
    (x / cap).tanh() * cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    #[test]
    fn bounded_and_close_to_identity_near_zero() {
        let xs: [f64; 6] = [-1.0e4, -20.0, -1e-4, 0.0, 3.0, 1.0e4];
        let t = Tensor::<NdArray<f64>, 1>::from_data(TensorData::from(xs), &Default::default());
        let got: Vec<f64> = soft_cap(t, 15.0).into_data().to_vec().unwrap();
        for (x, g) in xs.iter().zip(got) {
            assert!((g - 15.0 * (x / 15.0).tanh()).abs() < 1e-12);
            assert!(g.abs() <= 15.0);
        }
    }
}
