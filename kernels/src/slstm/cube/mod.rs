//! The fused sLSTM kernels for burn's cube backends (`CubeBackend<R, ..>`: CUDA, wgpu / Vulkan
//! / Metal). With burn's `fusion` feature off (our default), `burn::backend::Cuda` and
//! `burn::backend::Wgpu` are exactly these backends.

mod backward;
mod forward;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use xlstm_cells::slstm::{SlstmState, SlstmWeights};
use xlstm_cells::CellError;

use super::{fused_or_reference, SlstmBackend, SlstmFused, SlstmFusedGrads, SlstmSaved};

/// Most threads per cube we ask for (the WebGPU default limit; Metal and every Vulkan
/// driver have at least this).
const MAX_THREADS: usize = 256;

/// Target bytes of recurrent weights all cubes read per step (they come from L2): above it,
/// more batch rows share one cube.
const R_TRAFFIC_PER_STEP: usize = 16 << 20;

/// Environment variable that fixes the batch rows per cube (1, 2, 4 or 8), for tuning.
pub const BATCH_BLOCK_ENV: &str = "XLSTM_SLSTM_BATCH_BLOCK";

/// How a launch is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Threads per cube.
    pub threads: usize,
    /// Units each thread owns (`ceil(DH / threads)`).
    pub units_per_thread: usize,
    /// Batch rows per cube.
    pub batch_block: usize,
}

/// The plan for `batch × NH` heads of size `dh`, or `None` where the device cannot run it
/// (shared memory or threads per cube too small): the caller then uses the reference.
pub fn plan<R: CubeRuntime>(
    client: &ComputeClient<R>,
    batch: usize,
    nh: usize,
    dh: usize,
    elem_bytes: usize,
) -> Option<LaunchPlan> {
    let hw = &client.properties().hardware;
    let max_threads = (hw.max_cube_dim.0 as usize)
        .min(hw.max_units_per_cube as usize)
        .min(MAX_THREADS);
    if max_threads == 0 {
        return None;
    }
    let threads = dh.min(max_threads);
    let units_per_thread = dh.div_ceil(threads);
    let r_head = 4 * dh * dh * elem_bytes;
    let wanted = match std::env::var(BATCH_BLOCK_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(bb) => bb,
        None => (batch * nh * r_head)
            .div_ceil(R_TRAFFIC_PER_STEP)
            .next_power_of_two(),
    };
    let mut batch_block = wanted.clamp(1, 8).min(batch.next_power_of_two());
    // Shared memory: the backward's two gate-gradient buffers are the larger, 2·bb·4·DH f32.
    while 2 * batch_block * 4 * dh * 4 > hw.max_shared_memory_size {
        if batch_block == 1 {
            return None;
        }
        batch_block /= 2;
    }
    Some(LaunchPlan {
        threads,
        units_per_thread,
        batch_block,
    })
}

fn dims3(t: &CubeTensor<impl CubeRuntime>) -> [usize; 3] {
    t.shape().dims::<3>()
}

fn float_dtype_supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// The fused forward on cube tensors; see [`SlstmBackend::slstm_fused_forward`].
pub fn fused_forward<R: CubeRuntime>(
    wx: CubeTensor<R>,
    r: CubeTensor<R>,
    b: CubeTensor<R>,
    state0: CubeTensor<R>,
    save: bool,
) -> Option<(CubeTensor<R>, Option<[CubeTensor<R>; 2]>)> {
    let dtype = wx.dtype;
    if !float_dtype_supported(dtype) || [&r, &b, &state0].iter().any(|t| t.dtype != dtype) {
        return None;
    }
    let [batch, seq, _] = dims3(&wx);
    let [nh, dh, _] = dims3(&r);
    let client = wx.client.clone();
    let device = wx.device.clone();
    let plan = plan(&client, batch, nh, dh, dtype.size())?;
    let (wx, r, b, state0) = (
        into_contiguous(wx),
        into_contiguous(r),
        into_contiguous(b),
        into_contiguous(state0),
    );
    let hid = nh * dh;
    let empty = |shape: Vec<usize>, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::from(shape), dtype)
    };
    let out = empty(vec![batch, seq + 3, hid], dtype);
    let (gates, states) = if save {
        (
            empty(vec![batch, seq, 4 * hid], DType::F32),
            empty(vec![3, batch, seq, hid], DType::F32),
        )
    } else {
        (empty(vec![1], DType::F32), empty(vec![1], DType::F32))
    };
    let cube_count = CubeCount::Static(batch.div_ceil(plan.batch_block) as u32, nh as u32, 1);
    // SAFETY: every index is inside its tensor: the kernel checks b < B and j < DH, and the
    // tensors are contiguous of the shapes it reads them with.
    unsafe {
        forward::slstm_forward_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            CubeDim::new_1d(plan.threads as u32),
            wx.into_tensor_arg(),
            r.into_tensor_arg(),
            b.into_tensor_arg(),
            state0.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            gates.clone().into_tensor_arg(),
            states.clone().into_tensor_arg(),
            dh,
            plan.batch_block,
            plan.units_per_thread,
            save,
            dtype.into(),
        )
    };
    Some((out, save.then_some([gates, states])))
}

/// The fused backward on cube tensors: `dgates [B, S, 4H]` and `dstate0 [4, B, H]`.
pub fn fused_backward<R: CubeRuntime>(
    rt: CubeTensor<R>,
    gates: CubeTensor<R>,
    states: CubeTensor<R>,
    state0: CubeTensor<R>,
    dout: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let dtype = dout.dtype;
    let [batch, rows, hid] = dims3(&dout);
    let seq = rows - 3;
    let [nh, _, dh] = dims3(&rt);
    let client = dout.client.clone();
    let device = dout.device.clone();
    // The forward ran with this plan, so it fits.
    let plan = plan(&client, batch, nh, dh, dtype.size()).unwrap_or(LaunchPlan {
        threads: dh.min(MAX_THREADS),
        units_per_thread: dh.div_ceil(dh.min(MAX_THREADS)),
        batch_block: 1,
    });
    let (rt, gates, states, state0, dout) = (
        into_contiguous(rt),
        into_contiguous(gates),
        into_contiguous(states),
        into_contiguous(state0),
        into_contiguous(dout),
    );
    let dgates = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        Shape::from(vec![batch, seq, 4 * hid]),
        dtype,
    );
    let dstate0 = empty_device_contiguous_dtype(
        client.clone(),
        device,
        Shape::from(vec![4, batch, hid]),
        dtype,
    );
    let cube_count = CubeCount::Static(batch.div_ceil(plan.batch_block) as u32, nh as u32, 1);
    // SAFETY: as for the forward.
    unsafe {
        backward::slstm_backward_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            CubeDim::new_1d(plan.threads as u32),
            rt.into_tensor_arg(),
            gates.into_tensor_arg(),
            states.into_tensor_arg(),
            state0.into_tensor_arg(),
            dout.into_tensor_arg(),
            dgates.clone().into_tensor_arg(),
            dstate0.clone().into_tensor_arg(),
            dh,
            plan.batch_block,
            plan.units_per_thread,
            dtype.into(),
        )
    };
    (dgates, dstate0)
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> SlstmBackend
    for CubeBackend<R, F, I, BT>
{
    fn slstm_sequence(
        wx: Tensor<Self, 3>,
        weights: &SlstmWeights<Self>,
        state: Option<SlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, SlstmState<Self>), CellError> {
        fused_or_reference(wx, weights, state)
    }

    fn slstm_fused_forward(
        wx: FloatTensor<Self>,
        r: FloatTensor<Self>,
        b: FloatTensor<Self>,
        state0: FloatTensor<Self>,
        save: bool,
    ) -> Option<SlstmFused<Self>> {
        let (out, saved) = fused_forward(wx, r.clone(), b, state0.clone(), save)?;
        Some(SlstmFused {
            out: out.clone(),
            saved: saved.map(|[gates, states]| SlstmSaved {
                r,
                state0,
                out,
                gates,
                states,
            }),
        })
    }

    fn slstm_fused_backward(
        saved: SlstmSaved<Self>,
        dout: FloatTensor<Self>,
    ) -> SlstmFusedGrads<Self> {
        let float =
            |t: FloatTensor<Self>| Tensor::<Self, 3>::from_primitive(TensorPrimitive::Float(t));
        let [nh, _, _] = dims3(&saved.r);
        let rt = float(saved.r).swap_dims(1, 2).into_primitive().tensor();
        let (dgates, dstate0) =
            fused_backward(rt, saved.gates, saved.states, saved.state0.clone(), dout);
        let (dr, db) = super::recurrent_grads(
            float(saved.out),
            float(saved.state0),
            float(dgates.clone()),
            nh,
        );
        SlstmFusedGrads {
            wx: dgates,
            r: dr.into_primitive().tensor(),
            b: db.into_primitive().tensor(),
            state0: dstate0,
        }
    }
}
