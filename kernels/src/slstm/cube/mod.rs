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

/// Loads of `R` a thread issues before using them, in both reductions: the forward loads 4 per
/// row of `R` (one per gate), so 8 rows at once; the backward one per column, so 32 columns
/// (H200, bf16: 8 columns at once made the backward reduction 4× longer a chain of
/// dependent rounds than the forward's).
const LOADS_IN_FLIGHT: usize = 32;

/// Target bytes of recurrent weights all cubes read per step (they come from L2): above it,
/// more batch rows share one cube. High, because more cubes won on the H200 even at
/// B64 NH4 DH192 (75 MB of `R` per step, one row per cube 17 % faster than two).
const R_TRAFFIC_PER_STEP: usize = 128 << 20;

/// Shared memory a cube leaves unused beyond what it asks for (CUDA reserves 1 KiB per block).
const SHARED_SLACK: usize = 1 << 10;

/// Environment variable that caps the shared memory (KiB) a cube uses to hold part of `R`
/// (0: none; default: as much as fits with every cube resident at once), for tuning.
pub const R_CACHE_ENV: &str = "XLSTM_SLSTM_R_CACHE_KB";

/// Environment variable that fixes the batch rows per cube (1, 2, 4 or 8), for tuning.
pub const BATCH_BLOCK_ENV: &str = "XLSTM_SLSTM_BATCH_BLOCK";

/// Environment variable that caps the threads per unit of the reductions (a power of two;
/// default [`MAX_SPLIT`]), for tuning.
pub const SPLIT_ENV: &str = "XLSTM_SLSTM_SPLIT";

/// Environment variable that caps the threads per unit of the backward reduction alone (a
/// power of two; default the cap of [`SPLIT_ENV`]), for tuning.
pub const BACKWARD_SPLIT_ENV: &str = "XLSTM_SLSTM_BACKWARD_SPLIT";

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
    /// Blocks of rows of `R` per slice of the forward reduction held in shared memory.
    pub forward_cached: usize,
    /// Blocks of columns of `Rᵀ` per slice of the backward reduction held in shared memory.
    pub backward_cached: usize,
}

impl LaunchPlan {
    /// Rows loaded at once by one thread of a reduction of length `len` split `split` ways,
    /// `per_row` loads per row.
    fn unroll(len: usize, split: usize, per_row: usize) -> usize {
        len.div_ceil(split).min(LOADS_IN_FLIGHT / per_row)
    }

    /// Rows loaded at once in the forward reduction (over `DH`, 4 gates per row).
    fn forward_unroll(dh: usize, split: usize) -> usize {
        Self::unroll(dh, split, 4)
    }

    /// Columns loaded at once in the backward reduction (over `4·DH`).
    fn backward_unroll(dh: usize, split: usize) -> usize {
        Self::unroll(4 * dh, split, 1)
    }

    /// Blocks of `unroll` rows per slice of the forward reduction.
    fn forward_blocks(dh: usize, split: usize) -> usize {
        dh.div_ceil(split).div_ceil(Self::forward_unroll(dh, split))
    }

    /// Blocks of `unroll` columns per slice of the backward reduction.
    fn backward_blocks(dh: usize, split: usize) -> usize {
        (4 * dh)
            .div_ceil(split)
            .div_ceil(Self::backward_unroll(dh, split))
    }

    /// Padded length of a reduction of length `len` split `split` ways, `unroll` rows at once
    /// (what the kernels store per row in shared memory).
    fn padded(len: usize, split: usize, unroll: usize) -> usize {
        len.div_ceil(split).div_ceil(unroll) * unroll * split
    }

    /// Shared memory bytes of the forward: `h` padded, and the partial sums.
    fn forward_shared(dh: usize, bb: usize, split: usize) -> usize {
        let padded = Self::padded(dh, split, Self::forward_unroll(dh, split));
        4 * (bb * padded + split * bb * 4 * dh)
    }

    /// Shared memory bytes of the backward: the gate gradients padded, and the partial sums.
    fn backward_shared(dh: usize, bb: usize, split: usize) -> usize {
        let padded = Self::padded(4 * dh, split, Self::backward_unroll(dh, split));
        4 * (bb * padded + split * bb * dh)
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
    let backward_cap = env_usize(BACKWARD_SPLIT_ENV).unwrap_or(cap).max(1);
    let max_shared = hw.max_shared_memory_size;
    let cache_cap = env_usize(R_CACHE_ENV).map_or(usize::MAX, |kb| kb << 10);
    let mut batch_block = wanted.clamp(1, 8).min(batch.next_power_of_two());
    loop {
        let mut forward_split = split_for(dh, unit_threads, max_threads, cap);
        while forward_split > 1
            && LaunchPlan::forward_shared(dh, batch_block, forward_split) > max_shared
        {
            forward_split /= 2;
        }
        let mut backward_split = split_for(4 * dh, unit_threads, max_threads, backward_cap);
        while backward_split > 1
            && LaunchPlan::backward_shared(dh, batch_block, backward_split) > max_shared
        {
            backward_split /= 2;
        }
        let forward_shared = LaunchPlan::forward_shared(dh, batch_block, forward_split);
        let backward_shared = LaunchPlan::backward_shared(dh, batch_block, backward_split);
        if forward_shared <= max_shared && backward_shared <= max_shared {
            // Part of R in shared memory, as much as fits while every cube stays resident (the
            // device's shared memory split between the cubes one SM must hold at once).
            let cubes = batch.div_ceil(batch_block) * nh;
            let per_sm =
                cubes.div_ceil(hw.num_streaming_multiprocessors.unwrap_or(1).max(1) as usize);
            let budget = |own: usize| {
                (max_shared / per_sm)
                    .saturating_sub(own + SHARED_SLACK)
                    .min(cache_cap)
            };
            let forward_block =
                forward_split * LaunchPlan::forward_unroll(dh, forward_split) * 4 * dh * elem_bytes;
            let backward_block =
                backward_split * LaunchPlan::backward_unroll(dh, backward_split) * dh * elem_bytes;
            return Some(LaunchPlan {
                unit_threads,
                batch_block,
                forward_split,
                backward_split,
                forward_cached: (budget(forward_shared) / forward_block)
                    .min(LaunchPlan::forward_blocks(dh, forward_split)),
                backward_cached: (budget(backward_shared) / backward_block)
                    .min(LaunchPlan::backward_blocks(dh, backward_split)),
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
            empty(vec![4, batch, seq, hid], DType::F32),
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
            LaunchPlan::forward_unroll(dh, plan.forward_split),
            plan.forward_cached,
            save,
            dtype.into(),
        )
    };
    Some((out, save.then_some([gates, states])))
}

/// What the backward kernel writes: `dgates [B, S, 4H]` (in the I/O dtype), the same
/// head-major `[NH, B, S, 4DH]` (f32), `dstate0 [4, B, H]` and the bias gradient per row
/// `[B, 4H]` (f32).
pub struct BackwardOutput<R: CubeRuntime> {
    /// `[B, S, 4H]`, the gradient of `W x`.
    pub dgates: CubeTensor<R>,
    /// `[NH, B, S, 4DH]`, f32: `dgates` head-major, the right operand of the `dR` matmul.
    pub dgates_heads: CubeTensor<R>,
    /// `[4, B, H]`, the gradient of the initial state.
    pub dstate0: CubeTensor<R>,
    /// `[B, 4H]`, f32: `Σ_t dgates_t` per row.
    pub dbias_rows: CubeTensor<R>,
}

/// The fused backward kernel on cube tensors (`rt [NH, 4DH, DH]`, the saved `gates` and
/// `states`, `state0 [4, B, H]`, `dout [B, S + 3, H]`).
pub fn fused_backward<R: CubeRuntime>(
    rt: CubeTensor<R>,
    gates: CubeTensor<R>,
    states: CubeTensor<R>,
    state0: CubeTensor<R>,
    dout: CubeTensor<R>,
) -> BackwardOutput<R> {
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
        forward_cached: 0,
        backward_cached: 0,
    });
    let (rt, gates, states, state0, dout) = (
        into_contiguous(rt),
        into_contiguous(gates),
        into_contiguous(states),
        into_contiguous(state0),
        into_contiguous(dout),
    );
    let empty = |shape: Vec<usize>, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::from(shape), dtype)
    };
    let out = BackwardOutput {
        dgates: empty(vec![batch, seq, 4 * hid], dtype),
        dgates_heads: empty(vec![nh, batch, seq, 4 * dh], DType::F32),
        dstate0: empty(vec![4, batch, hid], dtype),
        dbias_rows: empty(vec![batch, 4 * hid], DType::F32),
    };
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
            out.dgates.clone().into_tensor_arg(),
            out.dgates_heads.clone().into_tensor_arg(),
            out.dstate0.clone().into_tensor_arg(),
            out.dbias_rows.clone().into_tensor_arg(),
            dh,
            plan.batch_block,
            plan.unit_threads,
            plan.backward_split,
            LaunchPlan::backward_unroll(dh, plan.backward_split),
            plan.backward_cached,
            dtype.into(),
        )
    };
    out
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
        let dtype = dout.dtype;
        let [nh, dh, _] = dims3(&saved.r);
        let [batch, rows, _] = dims3(&dout);
        let seq = rows - 3;
        let rt = Tensor::<Self, 3>::from_primitive(TensorPrimitive::Float(saved.r))
            .swap_dims(1, 2)
            .into_primitive()
            .tensor();
        let states =
            Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(saved.states.clone()));
        let g = fused_backward(rt, saved.gates, saved.states, saved.state0, dout);
        // dR[h] = Σ_b h_prev[h, b]ᵀ dgates[h, b] (sum over t inside the matmul): one f32
        // matmul batched over (head, row), `[NH, B, DH, S] × [NH, B, S, 4DH]`, then the sum
        // over rows. Batching over rows keeps the contraction short (S, not B·S), so the
        // matmul has enough output tiles to fill the device.
        let h_prev = states
            .narrow(0, 3, 1)
            .reshape([nh, batch, seq, dh])
            .swap_dims(2, 3);
        let dgates_heads =
            Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(g.dgates_heads));
        let dr = h_prev
            .matmul(dgates_heads)
            .sum_dim(1)
            .reshape([nh, dh, 4 * dh])
            .cast(dtype);
        let db = Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(g.dbias_rows))
            .sum_dim(0)
            .reshape([4 * nh * dh])
            .cast(dtype);
        SlstmFusedGrads {
            wx: g.dgates,
            r: dr.into_primitive().tensor(),
            b: db.into_primitive().tensor(),
            state0: g.dstate0,
        }
    }
}
