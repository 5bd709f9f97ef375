//! Backend selection: cargo features decide which backends are compiled in, `--backend`
//! picks one of them at run time.

use clap::ValueEnum;

/// A compiled-in backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// burn-ndarray on the CPU (f32).
    #[cfg(feature = "ndarray")]
    Ndarray,
    /// burn-wgpu: Vulkan, Metal or DX12 (f32).
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// burn-cuda (f32).
    #[cfg(feature = "cuda")]
    Cuda,
}

impl Default for BackendKind {
    fn default() -> Self {
        #[cfg(feature = "ndarray")]
        return BackendKind::Ndarray;
        #[cfg(all(not(feature = "ndarray"), feature = "cuda"))]
        return BackendKind::Cuda;
        #[cfg(all(not(feature = "ndarray"), not(feature = "cuda"), feature = "wgpu"))]
        return BackendKind::Wgpu;
    }
}

/// Runs `$body` with `AB` bound to the autodiff backend and `IB` to the inner backend of
/// `$kind`, and `device` to its default device.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$device:ident, $ab:ident, $ib:ident| $body:expr) => {{
        match $kind {
            #[cfg(feature = "ndarray")]
            $crate::backend::BackendKind::Ndarray => {
                type $ib = burn::backend::NdArray<f32>;
                #[allow(dead_code)]
                type $ab = burn::backend::Autodiff<$ib>;
                let $device = burn::backend::ndarray::NdArrayDevice::Cpu;
                $body
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::BackendKind::Wgpu => {
                type $ib = burn::backend::Wgpu;
                #[allow(dead_code)]
                type $ab = burn::backend::Autodiff<$ib>;
                let $device = burn::backend::wgpu::WgpuDevice::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::BackendKind::Cuda => {
                type $ib = burn::backend::Cuda;
                #[allow(dead_code)]
                type $ab = burn::backend::Autodiff<$ib>;
                let $device = burn::backend::cuda::CudaDevice::default();
                $body
            }
        }
    }};
}

/// The `index`-th device of a backend (`xlstm train --devices N` uses `0..N`).
pub trait DeviceIndex: Sized {
    fn nth(index: usize) -> Self;
}

#[cfg(feature = "ndarray")]
impl DeviceIndex for burn::backend::ndarray::NdArrayDevice {
    /// ndarray has one device, the CPU: replicas share it (which checks the arithmetic of
    /// data-parallel training, not its speed).
    fn nth(_: usize) -> Self {
        Self::Cpu
    }
}

#[cfg(feature = "wgpu")]
impl DeviceIndex for burn::backend::wgpu::WgpuDevice {
    fn nth(index: usize) -> Self {
        Self::DiscreteGpu(index)
    }
}

#[cfg(feature = "cuda")]
impl DeviceIndex for burn::backend::cuda::CudaDevice {
    fn nth(index: usize) -> Self {
        Self::new(index)
    }
}
