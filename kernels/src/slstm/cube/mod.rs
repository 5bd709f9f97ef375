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

use super::{SlstmBackend, SlstmFused, SlstmFusedGrads, SlstmSaved};

/// Most threads per cube we ask for (CUDA's limit; the device's own limit applies too).
const MAX_THREADS: usize = 1024;

/// Shortest slice of a reduction one thread sums: below it, more threads per unit cost more
/// in partial sums and barriers than they save.
const MIN_SLICE: usize = 8;

/// Most threads per unit (H200, bf16, B16: 4 beat 2 by 20–40 % and 8 or 16 by up to 13 %, the
/// larger cubes costing occupancy and barrier time).
const MAX_SPLIT: usize = 4;

/// Rows of `R` a thread loads before using them (loads in flight per thread and gate).
const UNROLL: usize = 8;

/// Target bytes of recurrent weights all cubes read per step (they come from L2): above it,
/// more batch rows share one cube. High, because more cubes won on the H200 even at
/// B64 NH4 DH192 (75 MB of `R` per step, one row per cube 17 % faster than two).
const R_TRAFFIC_PER_STEP: usize = 128 << 20;

/// Environment variable that fixes the batch rows per cube (1, 2, 4 or 8), for tuning.
pub const BATCH_BLOCK_ENV: &str = "XLSTM_SLSTM_BATCH_BLOCK";

/// Environment variable that caps the threads per unit of the reductions (a power of two;
/// default [`MAX_SPLIT`]), for tuning.
pub const SPLIT_ENV: &str = "XLSTM_SLSTM_SPLIT";

/// How a launch is laid out: one cube per (batch block, head) of `unit_threads · split`
/// threads (the split differs between forward and backward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Threads along the head's units (`min(DH, threads)`; a thread owns
    /// `ceil(DH / unit_threads)` units).
    pub unit_threads: usize,
    /// Batch rows per cube.
    pub batch_block: usize,
    /// Threads per unit in the forward reduction (over `DH`).
    pub forward_split: usize,
    /// Threads per unit in the backward reduction (over `4·DH`).
    pub backward_split: usize,
}

impl LaunchPlan {
    /// Rows loaded at once by one thread of a reduction of length `len` split `split` ways.
    fn unroll(len: usize, split: usize) -> usize {
        len.div_ceil(split).min(UNROLL)
    }

    /// Padded length of a reduction of length `len` split `split` ways (what the kernels
    /// store per row in shared memory).
    fn padded(len: usize, split: usize) -> usize {
        let unroll = Self::unroll(len, split);
        len.div_ceil(split).div_ceil(unroll) * unroll * split
    }

    /// Shared memory bytes of the forward: `h` padded, and the partial sums.
    fn forward_shared(dh: usize, bb: usize, split: usize) -> usize {
        4 * (bb * Self::padded(dh, split) + split * bb * 4 * dh)
    }

    /// Shared memory bytes of the backward: the gate gradients padded, and the partial sums.
    fn backward_shared(dh: usize, bb: usize, split: usize) -> usize {
        4 * (bb * Self::padded(4 * dh, split) + split * bb * dh)
    }
}

/// The largest power-of-two split of a reduction of length `len` that keeps slices at least
/// `MIN_SLICE` long and the cube within `max_threads`.
fn split_for(len: usize, unit_threads: usize, max_threads: usize, cap: usize) -> usize {
    let mut split = 1;
    while 2 * split <= cap
        && unit_threads * 2 * split <= max_threads
        && len / (2 * split) >= MIN_SLICE
    {
        split *= 2;
    }
    split
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
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
    let unit_threads = dh.min(max_threads);
    let r_head = 4 * dh * dh * elem_bytes;
    let wanted = env_usize(BATCH_BLOCK_ENV).unwrap_or_else(|| {
        (batch * nh * r_head)
            .div_ceil(R_TRAFFIC_PER_STEP)
            .next_power_of_two()
    });
    let cap = env_usize(SPLIT_ENV).unwrap_or(MAX_SPLIT).max(1);
    let max_shared = hw.max_shared_memory_size;
    let mut batch_block = wanted.clamp(1, 8).min(batch.next_power_of_two());
    loop {
        let mut forward_split = split_for(dh, unit_threads, max_threads, cap);
        while forward_split > 1
            && LaunchPlan::forward_shared(dh, batch_block, forward_split) > max_shared
        {
            forward_split /= 2;
        }
        let mut backward_split = split_for(4 * dh, unit_threads, max_threads, cap);
        while backward_split > 1
            && LaunchPlan::backward_shared(dh, batch_block, backward_split) > max_shared
        {
            backward_split /= 2;
        }
        if LaunchPlan::forward_shared(dh, batch_block, forward_split) <= max_shared
            && LaunchPlan::backward_shared(dh, batch_block, backward_split) <= max_shared
        {
            return Some(LaunchPlan {
                unit_threads,
                batch_block,
                forward_split,
                backward_split,
            });
        }
        if batch_block == 1 {
            return None;
        }
        batch_block /= 2;
    }
}

fn dims3(t: &CubeTensor<impl CubeRuntime>) -> [usize; 3] {
    t.shape().dims::<3>()
}

fn float_dtype_supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// The fused forward's packed output `[B, S + 3, H]` and, when saving, the gate
/// pre-activations and states for the backward.
type ForwardOutput<R> = (CubeTensor<R>, Option<[CubeTensor<R>; 2]>);

/// The fused forward on cube tensors; see [`SlstmBackend::slstm_fused_forward`].
pub fn fused_forward<R: CubeRuntime>(
    wx: CubeTensor<R>,
    r: CubeTensor<R>,
    b: CubeTensor<R>,
    state0: CubeTensor<R>,
    save: bool,
) -> Option<ForwardOutput<R>> {
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
            CubeDim::new_1d((plan.unit_threads * plan.forward_split) as u32),
            wx.into_tensor_arg(),
            r.into_tensor_arg(),
            b.into_tensor_arg(),
            state0.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            gates.clone().into_tensor_arg(),
            states.clone().into_tensor_arg(),
            dh,
            plan.batch_block,
            plan.unit_threads,
            plan.forward_split,
            LaunchPlan::unroll(dh, plan.forward_split),
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
    // The forward found a plan for these sizes, so this finds one too (the backward shares
    // no block sizes with the forward; the fallback is the smallest layout).
    let plan = plan(&client, batch, nh, dh, dtype.size()).unwrap_or(LaunchPlan {
        unit_threads: dh.min(MAX_THREADS),
        batch_block: 1,
        forward_split: 1,
        backward_split: 1,
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
            CubeDim::new_1d((plan.unit_threads * plan.backward_split) as u32),
            rt.into_tensor_arg(),
            gates.into_tensor_arg(),
            states.into_tensor_arg(),
            state0.into_tensor_arg(),
            dout.into_tensor_arg(),
            dgates.clone().into_tensor_arg(),
            dstate0.clone().into_tensor_arg(),
            dh,
            plan.batch_block,
            plan.unit_threads,
            plan.backward_split,
            LaunchPlan::unroll(4 * dh, plan.backward_split),
            dtype.into(),
        )
    };
    (dgates, dstate0)
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> SlstmBackend
    for CubeBackend<R, F, I, BT>
{
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
