//! The backend the tests run on: ndarray (f32) by default, wgpu with the `wgpu` feature.

#[cfg(not(feature = "wgpu"))]
pub type TestBackend = burn::backend::NdArray<f32>;
#[cfg(feature = "wgpu")]
pub type TestBackend = burn::backend::Wgpu<f32, i32>;

/// [`TestBackend`] with autodiff, for gradient checks.
pub type TestAutodiffBackend = burn::backend::Autodiff<TestBackend>;
