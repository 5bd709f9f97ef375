#![allow(dead_code)]

use burn::tensor::{Distribution, Int, Tensor, TensorData};

pub type B = burn::backend::NdArray<f32>;

/// Relative L2 error `‖a - b‖ / ‖b‖`.
pub fn rel<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f64> = a.into_data().iter::<f64>().collect();
    let b: Vec<f64> = b.into_data().iter::<f64>().collect();
    let d: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let n: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    assert!(a.iter().all(|x| x.is_finite()), "non-finite values");
    d / n.max(1e-30)
}

/// Random token ids `[batch, len]` below `vocab`.
pub fn tokens(batch: usize, len: usize, vocab: usize) -> Tensor<B, 2, Int> {
    let t: Tensor<B, 2> = Tensor::random(
        [batch, len],
        Distribution::Uniform(0.0, vocab as f64),
        &Default::default(),
    );
    t.floor().int().clamp(0, vocab as i64 - 1)
}

pub fn ints(values: Vec<i64>, shape: [usize; 2]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

pub fn device() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}
