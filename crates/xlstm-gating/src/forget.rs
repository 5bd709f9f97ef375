use burn::tensor::{activation::log_sigmoid, backend::Backend, Tensor};

/// Log of the sigmoid forget gate, `log f_t = log σ(f̃_t)` (paper eq. 13 / 26, sigmoid variant).
///
/// Working in log space keeps products of many forget gates (`Π f = exp(Σ log f)`) exact for
/// long sequences. burn's `log_sigmoid` is the overflow-free form `-softplus(-x)`, finite for
/// pre-activations down to `-1e30`.
pub fn log_forget_gate<B: Backend, const D: usize>(f_preact: Tensor<B, D>) -> Tensor<B, D> {
    log_sigmoid(f_preact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    #[test]
    fn matches_float64_formula_over_a_wide_range() {
        let xs = [-1.0e3f64, -50.0, -3.5, -1e-3, 0.0, 0.7, 12.0, 40.0, 1.0e3];
        let device = Default::default();
        let t = Tensor::<NdArray<f64>, 1>::from_data(TensorData::from(xs), &device);
        let got: Vec<f64> = log_forget_gate(t).into_data().to_vec().unwrap();
        for (x, g) in xs.iter().zip(got) {
            // log σ(x) = -log(1 + e^{-x}), written so that neither branch overflows.
            let want = if *x >= 0.0 {
                -(-x).exp().ln_1p()
            } else {
                x - x.exp().ln_1p()
            };
            assert!(
                (g - want).abs() <= 1e-12 * (1.0 + want.abs()),
                "x={x}: {g} vs {want}"
            );
        }
    }
}
