use burn::tensor::{backend::Backend, Tensor, TensorData};

/// A tensor read from a golden file, in float64 (integers are exact in f64 up to 2^53).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl Array {
    /// As a tensor of backend `B` (converted to its float type), shape checked against `D`.
    pub fn to_tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        assert_eq!(
            self.shape.len(),
            D,
            "golden tensor of shape {:?} read as rank {D}",
            self.shape
        );
        let data =
            TensorData::new(self.values.clone(), self.shape.clone()).convert::<B::FloatElem>();
        Tensor::from_data(data, device)
    }

    /// Reads a tensor of any backend back, as float64.
    pub fn from_tensor<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Self {
        let shape = tensor.dims().to_vec();
        let values = tensor.into_data().iter::<f64>().collect();
        Self { shape, values }
    }

    /// The values as integers (token ids).
    pub fn to_ints(&self) -> Vec<i64> {
        self.values.iter().map(|v| *v as i64).collect()
    }
}

/// Relative L2 error `‖got - want‖ / ‖want‖` (absolute when `want` is all zero).
///
/// Panics when the lengths differ: comparing tensors of different sizes is a bug in the test.
pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "compared tensors differ in size");
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w) * (g - w))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    if got.iter().any(|g| !g.is_finite()) {
        return f64::INFINITY;
    }
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_l2_is_zero_only_for_equal_values_and_infinite_for_nan() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_l2(&[1.0, 0.0], &[0.0, 1.0]) - 2f64.sqrt()).abs() < 1e-15);
        assert_eq!(rel_l2(&[f64::NAN], &[1.0]), f64::INFINITY);
    }
}
