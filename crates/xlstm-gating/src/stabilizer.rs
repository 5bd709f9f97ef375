use burn::tensor::{backend::Backend, Tensor};

/// The stabiliser update `m_t = max(log f_t + m_{t-1}, ĩ_t)` (paper eq. 15).
///
/// `log_f` is the log forget gate, `m_prev` the previous stabiliser, `i_preact` the input-gate
/// pre-activation `ĩ_t = log i_t` (exponential input gate, eq. 12 / 25). All tensors have the
/// same shape.
pub fn stabilizer_update<B: Backend, const D: usize>(
    log_f: Tensor<B, D>,
    m_prev: Tensor<B, D>,
    i_preact: Tensor<B, D>,
) -> Tensor<B, D> {
    (log_f + m_prev).max_pair(i_preact)
}

/// Stabilised input and forget gates of one step.
#[derive(Debug, Clone)]
pub struct StabilizedGates<B: Backend, const D: usize> {
    /// `i'_t = exp(ĩ_t - m_t)` (eq. 16).
    pub input: Tensor<B, D>,
    /// `f'_t = exp(log f_t + m_{t-1} - m_t)` (eq. 17).
    pub forget: Tensor<B, D>,
}

/// Stabilised gates of one step (paper eqs. 16 and 17) given the new stabiliser `m_new`
/// (from [`stabilizer_update`] or any other rule that keeps both exponents ≤ 0).
pub fn stabilized_gates<B: Backend, const D: usize>(
    i_preact: Tensor<B, D>,
    log_f: Tensor<B, D>,
    m_prev: Tensor<B, D>,
    m_new: Tensor<B, D>,
) -> StabilizedGates<B, D> {
    StabilizedGates {
        input: (i_preact - m_new.clone()).exp(),
        forget: (log_f + m_prev - m_new).exp(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f64>;

    fn t(v: &[f64]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::from(v), &Default::default())
    }

    #[test]
    fn stabilised_gates_equal_the_unstabilised_ratio_and_never_overflow() {
        // Pre-activations far outside exp's range: the stabilised gates stay in [0, 1] and
        // their ratio equals the exact ratio exp(ĩ) / (f · exp(m_prev)).
        let i_pre = [1.0e3, -1.0e3, 3.0, 0.0];
        let log_f = [-1.0e-3, -1.0e3, -0.2, -5.0];
        let m_prev = [2.0, 4.0, 700.0, -3.0];
        let m_new = stabilizer_update(t(&log_f), t(&m_prev), t(&i_pre));
        let m: Vec<f64> = m_new.clone().into_data().to_vec().unwrap();
        let g = stabilized_gates(t(&i_pre), t(&log_f), t(&m_prev), m_new);
        let gi: Vec<f64> = g.input.into_data().to_vec().unwrap();
        let gf: Vec<f64> = g.forget.into_data().to_vec().unwrap();
        for k in 0..4 {
            let want_m = (log_f[k] + m_prev[k]).max(i_pre[k]);
            assert_eq!(m[k], want_m);
            assert!((0.0..=1.0).contains(&gi[k]) && (0.0..=1.0).contains(&gf[k]));
            assert!(
                gi[k] == 1.0 || gf[k] == 1.0,
                "one of the two exponents is 0"
            );
            // log i' - log f' = ĩ - log f - m_prev, whenever both are representable.
            if gi[k] > 1e-300 && gf[k] > 1e-300 {
                let lhs = gi[k].ln() - gf[k].ln();
                let rhs = i_pre[k] - log_f[k] - m_prev[k];
                assert!((lhs - rhs).abs() < 1e-9 * (1.0 + rhs.abs()));
            }
        }
    }
}
