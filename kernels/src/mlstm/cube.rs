//! [`MlstmBackend`] for burn's cube backends (CUDA, wgpu/Vulkan/Metal): the kernels of
//! `step_kernel.rs` and `chunk_kernel.rs`, with the tensor-op reference as the fallback.

use std::sync::OnceLock;

use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::kernel::{into_contiguous, into_contiguous_aligned};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use cubecl::zspace::metadata::Metadata;
use xlstm_cells::mlstm::{MlstmInputs, MlstmState, EPS};
use xlstm_cells::CellError;

use super::backward::{
    GateGradTerms, GradientProducts, GradientRows, Layout, OutputRowGrads, ScoreGradInputs,
    ScoreGrads,
};
use super::chunk_gates_kernel::{chunk_gates_kernel, GATE_MAX_LEN, GATE_UNITS};
use super::chunk_kernel::{mlstm_chunk_outputs_kernel, mlstm_chunk_states_kernel, SUB, UNITS};
use super::combine_kernel::chunk_combine_kernel;
use super::cube_matmul::{batched_matmul, exact_f32_matmul};
use super::dots_kernel::{chunk_dots_kernel, DOT_UNITS};
use super::forward_gates_kernel::{
    forward_gate_rounds, forward_gates_kernel, FORWARD_GATE_MAX_LEN,
};
use super::gate_input_grads_kernel::gate_input_grads_kernel;
use super::gate_kernel::{gate_grads_kernel, gate_groups, gate_matrix_kernel};
use super::gates::{gate_grads, gate_matrix, GateMatrix};
use super::gradient_mma_kernel::{
    gradient_products_mma_kernel, gradient_shared_bytes, GRADIENT_MAX_LEN, GRADIENT_PLANES,
    GRADIENT_TILE,
};
use super::mma_tiles::PLANE;
use super::output_mma_kernel::{
    chunk_outputs_mma_kernel, output_shared_bytes, OUTPUT_MAX_LEN, OUTPUT_PLANES, OUTPUT_TILE,
};
use super::rows_kernel::{
    backward_rows_kernel, gradient_rows_kernel, weighted_rows_kernel, COLUMN_UNITS, ROWS_PER_CUBE,
    ROW_UNITS,
};
use super::scan_kernel::{chunk_scan_kernel, stabiliser_scan_kernel};
use super::score_grads_mma_kernel::{
    score_grads_mma_kernel, score_shared_bytes, SCORE_MAX_LEN, SCORE_PLANES,
};
use super::state_mma_kernel::{chunk_states_mma_kernel, shared_bytes, STATE_PLANES, STATE_TILE};
use super::state_weights_kernel::state_weights_kernel;
use super::step_kernel::{mlstm_step_kernel, ROWS, TILE_V};
use super::{ChunkGates, ChunkStates, ForwardGates, MlstmBackend, StateStart};

/// Chunk sizes the output kernel is compiled for (multiples of 16 whose `[L, L]` gate matrix
/// fits in shared memory next to the other tiles). Any other requested size runs with
/// [`DEFAULT_CHUNK`]: every chunk size computes the same function.
const CHUNKS: [usize; 3] = [16, 32, 64];
/// The chunk size used when the requested one has no kernel.
pub const DEFAULT_CHUNK: usize = 64;
/// `DQK` slice per shared-memory load in the output kernel.
const SLICE: usize = 16;
/// Bound on the f32 chunk-start states kept at once (bytes); larger batches run in groups.
const STATES_BYTES: usize = 1 << 30;
/// Cubes per launch of the state kernel below which it takes the smaller (64×64) tiles.
const MIN_STATE_CUBES: usize = 2048;
/// Largest cube count along one axis that every runtime accepts (WebGPU's limit).
const MAX_CUBES: usize = 65_535;

type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;

/// The comptime configuration of the two chunk kernels for one call.
struct Plan {
    /// Chunk size `L`.
    len: usize,
    /// State tile entries per unit (`16·rm_state × 16·rn_state` per cube).
    rm_state: usize,
    rn_state: usize,
    /// Output columns per unit (`16·rn_out` per cube).
    rn_out: usize,
}

impl Plan {
    /// The largest tiles whose shared memory fits `limit` bytes, trying the requested chunk
    /// size first, then smaller ones; `None` when nothing fits.
    fn choose(requested: usize, dqk: usize, dv: usize, limit: usize) -> Option<Self> {
        let big = dqk >= 128 && dv >= 128;
        // Larger tiles only once the state is large enough to fill the device with them:
        // twice the arithmetic per shared-memory read.
        let state_tiles: &[(usize, usize)] = if big { &[(8, 8), (4, 4)] } else { &[(4, 4)] };
        let out_tiles: &[usize] = if dv >= 128 { &[8, 4] } else { &[4] };
        let lens = CHUNKS.iter().rev().filter(|&&l| l <= requested);
        for &len in lens {
            let state = state_tiles
                .iter()
                .find(|(rm, rn)| Self::state_bytes(len, *rm, *rn) <= limit);
            let out = out_tiles
                .iter()
                .find(|rn| Self::out_bytes(len, **rn) <= limit);
            if let (Some(&(rm_state, rn_state)), Some(&rn_out)) = (state, out) {
                return Some(Self {
                    len,
                    rm_state,
                    rn_state,
                    rn_out,
                });
            }
        }
        None
    }

    /// Shared memory of `mlstm_chunk_states_kernel` in bytes.
    fn state_bytes(len: usize, rm: usize, rn: usize) -> usize {
        4 * (SUB * 16 * (rm + rn) + 2 * len)
    }

    /// Shared memory of `mlstm_chunk_outputs_kernel` in bytes.
    fn out_bytes(len: usize, rn: usize) -> usize {
        4 * (2 * len * (SLICE + 1) + SLICE * 16 * rn + SLICE + len * (len + 1) + 5 * len)
    }
}

fn prim<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: Tensor<Cube<R, F, I, BT>, D>,
) -> CubeTensor<R> {
    into_contiguous(t.into_primitive().tensor())
}

/// [`prim`] of `t` in f32: the kernels' gates, weights and row quantities.
fn f32_prim<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: Tensor<Cube<R, F, I, BT>, D>,
) -> CubeTensor<R> {
    prim(t.cast(DType::F32))
}

/// `t` as the row kernels read it: row-major, its rows possibly padded (burn's default layout
/// pads rows, e.g. 192 bf16 entries to 256), taken as it is where the runtime reads it so;
/// anything else is copied. (Copying such padded inputs to a contiguous layout cost 4.3 of the
/// 13.9 ms of fw+bw at B32 NH4 S2048 D192.) The kernels index rows by the row stride.
fn rows_prim<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: Tensor<Cube<R, F, I, BT>, D>,
) -> CubeTensor<R> {
    into_contiguous_aligned(t.into_primitive().tensor())
}

/// `t` viewed as `shape` (the leading dims merged or split, the last kept) where `t` is
/// row-major with padded rows, i.e. its strides those of a contiguous tensor whose rows are
/// `strides[rank - 2]` long; `None` otherwise (a narrowed or permuted view).
fn padded_rows_view<R: CubeRuntime>(t: &CubeTensor<R>, shape: &[usize]) -> Option<CubeTensor<R>> {
    let (dims, strides) = (t.meta.shape(), t.meta.strides());
    let (rank, new_rank) = (dims.num_dims(), shape.len());
    if rank < 2
        || new_rank < 2
        || dims[rank - 1] != shape[new_rank - 1]
        || strides[rank - 1] != 1
        || dims.num_elements() != shape.iter().product::<usize>()
    {
        return None;
    }
    let pitch = strides[rank - 2];
    let mut outer = pitch;
    for d in (0..rank - 2).rev() {
        outer *= dims[d + 1];
        if strides[d] != outer {
            return None;
        }
    }
    let mut new_strides = vec![1; new_rank];
    new_strides[new_rank - 2] = pitch;
    for d in (0..new_rank - 2).rev() {
        new_strides[d] = new_strides[d + 1] * shape[d + 1];
    }
    let mut view = t.clone();
    *view.meta = Metadata::new(shape.to_vec(), new_strides);
    Some(view)
}

/// The row stride (in entries) of a row-major tensor.
fn row_stride<R: CubeRuntime>(t: &CubeTensor<R>) -> usize {
    let strides = t.meta.strides();
    strides[strides.len() - 2]
}

/// The greatest common divisor: a vector width must divide a row's length and its stride.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn wrap<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const D: usize>(
    t: CubeTensor<R>,
) -> Tensor<Cube<R, F, I, BT>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>, dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        dtype,
    )
}

/// The vector width of a kernel's row accesses: the widest of 4, 2, 1 elements that divides
/// the row length `len` and that the runtime loads in one access for both float types.
fn vector_width<R: CubeRuntime>(
    client: &ComputeClient<R>,
    len: usize,
    dtype: DType,
    state_dtype: DType,
) -> usize {
    let max = client
        .io_optimized_vector_sizes(dtype.size())
        .max()
        .unwrap_or(1)
        .min(
            client
                .io_optimized_vector_sizes(state_dtype.size())
                .max()
                .unwrap_or(1),
        );
    [4, 2, 1]
        .into_iter()
        .find(|&w| w <= max && len.is_multiple_of(w))
        .unwrap_or(1)
}

/// The grid of the row kernels (`rows_kernel.rs`) over `rows` rows: `ROW_UNITS` units per row,
/// `ROWS_PER_CUBE` rows per cube.
fn row_grid<R: CubeRuntime>(client: &ComputeClient<R>, rows: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new_1d((ROW_UNITS * ROWS_PER_CUBE) as u32);
    let units = rows.div_ceil(ROWS_PER_CUBE) * ROW_UNITS * ROWS_PER_CUBE;
    (
        cubecl::calculate_cube_count_elemwise(client, units, dim),
        dim,
    )
}

/// Largest chunk the gate kernels take (`gate_kernel.rs`: one unit per row and per column of
/// the `[L, L]` matrix, which sits in shared memory).
const GATE_CHUNK: usize = 128;

/// Whether the gate kernels take `chunks` chunks of `len` tokens and an output of `out`.
fn gate_kernels_take<R: CubeRuntime>(
    client: &ComputeClient<R>,
    chunks: usize,
    len: usize,
    out: DType,
) -> bool {
    let shared = 4 * (len * (len + 1) + 5 * len + len * gate_groups(len));
    supported(out)
        && chunks > 0
        && (1..=GATE_CHUNK).contains(&len)
        && shared <= client.properties().hardware.max_shared_memory_size
}

/// `chunks` over two grid axes, as many as one axis takes along the first (the kernels number
/// a chunk `second · count_first + first`).
fn chunk_axes(chunks: usize) -> [u32; 2] {
    let across = chunks.min(MAX_CUBES);
    [across as u32, chunks.div_ceil(across) as u32]
}

/// The grid of the gate kernels: one cube of `len × gate_groups(len)` units per chunk.
fn chunk_grid(chunks: usize, len: usize) -> (CubeCount, CubeDim) {
    let [first, second] = chunk_axes(chunks);
    (
        CubeCount::Static(first, second, 1),
        CubeDim::new_2d(len as u32, gate_groups(len) as u32),
    )
}

/// Whether the kernels take this float type (f32, f16, bf16).
fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// Smallest side of a product that goes to tensor cores (their tiles are 16×16×16).
const TENSOR_CORE_TILE: usize = 16;

/// Whether the chunkwise form of `x` with chunks of `chunk_size` tokens runs as batched matrix
/// products on tensor cores (`chunk_matmul.rs`), forward and backward: a half type that the
/// device multiplies there, and products no thinner than a tile (the chunk is at most `S`
/// long). Everything else keeps the fused kernels (exact f32), and an empty sequence or chunk
/// the reference (which names the field).
fn tensor_core_chunks<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: &MlstmInputs<Cube<R, F, I, BT>>,
    chunk_size: usize,
) -> bool {
    let [_, _, s, dqk] = x.q.dims();
    let dv = x.v.dims()[3];
    let client = x.q.clone().into_primitive().tensor().client;
    let dtype = x.q.dtype();
    let forced = half_schedule_forced() && matches!(dtype, DType::BF16 | DType::F16);
    s > 0
        && chunk_size > 0
        && chunk_size.min(s).min(dqk).min(dv) >= TENSOR_CORE_TILE
        && (tensor_cores(&client, dtype) || forced)
}

/// Whether `XLSTM_MLSTM_HALF_SCHEDULE=1` asks for the tensor-core schedule, with its half-type
/// work, on half-type inputs where the device has no tensor cores (its products then run in
/// f32 from the half-type operands): the tests run that schedule's half-type path on any device
/// this way (CI's lavapipe, in f16), where it would otherwise run on CUDA only.
fn half_schedule_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("XLSTM_MLSTM_HALF_SCHEDULE").is_ok_and(|v| v == "1"))
}

/// Whether `dtype` is a half type that the device multiplies on tensor cores (`cmma`; CUDA
/// lists bf16 and f16, WGSL nothing).
fn tensor_cores<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return false;
    }
    let elem: StorageType = dtype.into();
    client
        .properties()
        .features
        .matmul
        .cmma
        .iter()
        .any(|mma| mma.a_type == elem && mma.b_type == elem)
}

/// What an `mma` kernel switch asks for: `0` never, `1` wherever the device takes the kernel,
/// unset (or anything else) the default rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    Off,
    On,
    Default,
}

impl Switch {
    fn read(name: &str) -> Self {
        match std::env::var(name).as_deref() {
            Ok("0") => Self::Off,
            Ok("1") => Self::On,
            _ => Self::Default,
        }
    }
}

/// `XLSTM_MLSTM_FUSED_STATES` (`0` turns the fused state kernel, `state_mma_kernel.rs`, off;
/// on by default where the device takes it).
fn fused_states() -> Switch {
    static SWITCH: OnceLock<Switch> = OnceLock::new();
    *SWITCH.get_or_init(|| Switch::read("XLSTM_MLSTM_FUSED_STATES"))
}

/// `XLSTM_MLSTM_FUSED_OUTPUTS` (`0` turns the fused output kernel, `output_mma_kernel.rs`, off;
/// `1` takes it for every `DV`; by default it is taken up to [`FUSED_OUTPUTS_MAX_DV`]).
fn fused_outputs() -> Switch {
    static SWITCH: OnceLock<Switch> = OnceLock::new();
    *SWITCH.get_or_init(|| Switch::read("XLSTM_MLSTM_FUSED_OUTPUTS"))
}

/// Largest `DV` for which the fused output kernel is taken by default: each of its cubes
/// recomputes `Q Kᵀ` for 64 columns of `DV`, and it runs at ≈ 60 TFLOP/s, so it beats the
/// batched products (cubek's, efficient on large operands) only on small states. Measured on the
/// H200 (docs/kernels.md, session 14): at `DQK = DV = 192` (3 column tiles) the forward took
/// 1.56–1.60 ms against 1.70 with the products; at `DQK 256, DV 512` (8 tiles) 7.71 against
/// 5.57.
const FUSED_OUTPUTS_MAX_DV: usize = 256;

/// Largest shared memory a kernel may declare statically (CUDA's limit without opt-in).
const STATIC_SHARED_BYTES: usize = 48 << 10;

/// Whether the device runs an `mma` kernel (`state_mma_kernel.rs`, `output_mma_kernel.rs`,
/// `score_grads_mma_kernel.rs`, `gradient_mma_kernel.rs`) on operands of `dtype` with `shared`
/// bytes of shared memory per cube and a grid of `[x, y]` cubes: half-type operands that the
/// runtime multiplies with `mma` m16n8k16 into f32 and moves with `ldmatrix`/`stmatrix` (CUDA
/// from sm_90), planes of 32 units, and a grid within the device's cube counts.
fn mma_kernels_take<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    shared: usize,
    [x, y]: [usize; 2],
) -> bool {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return false;
    }
    let props = client.properties();
    let elem: StorageType = dtype.into();
    let acc: StorageType = DType::F32.into();
    let matrices = &props.features.matmul;
    let has_mma = matrices.mma.iter().any(|mma| {
        mma.a_type == elem
            && mma.b_type == elem
            && mma.cd_type == acc
            && (mma.m, mma.n, mma.k) == (16, 8, 16)
    });
    has_mma
        && matrices.ldmatrix.contains(&elem)
        && matrices.stmatrix.contains(&elem)
        && props.hardware.plane_size_min == PLANE as u32
        && props.hardware.plane_size_max == PLANE as u32
        && shared
            <= props
                .hardware
                .max_shared_memory_size
                .min(STATIC_SHARED_BYTES)
        && x <= props.hardware.max_cube_count.0 as usize
        && y <= props.hardware.max_cube_count.1 as usize
}

/// The launch of the kernels with a row of units per chunk of `len` tokens
/// (`chunk_gates_kernel.rs`, `gate_input_grads_kernel.rs`): as many chunks per cube as fill
/// [`GATE_UNITS`] (at least one), one unit per token up to that, the cubes along x, then y.
/// Returns the cube count, the cube and the chunks per cube.
fn chunk_rows_launch(chunks: usize, len: usize) -> (CubeCount, CubeDim, usize) {
    let per_cube = (GATE_UNITS / len).max(1);
    let dim = CubeDim::new_2d(len.min(GATE_UNITS) as u32, per_cube as u32);
    let cubes = chunks.div_ceil(per_cube);
    let along_x = cubes.min(usize::from(u16::MAX));
    let count = CubeCount::Static(along_x as u32, cubes.div_ceil(along_x) as u32, 1);
    (count, dim, per_cube)
}

/// The row-major operands of an `mma` kernel (`[.., rows, D]`, their rows read in place where
/// padded) and the width of the kernel's global vectors: 16 bytes, the `cp.async` staging of
/// `mma_tiles::stage_async` (at 4 bytes, `DQK` 18 with vectors of two bf16 entries, the H200
/// raised CUDA_ERROR_MISALIGNED_ADDRESS, session 15). `None` where an operand's last stride is
/// not 1, the runtime does not load 16 bytes at once, or a row stride or one of `lengths` is not
/// a multiple of the width (the caller runs the products).
fn mma_operands<R, F, I, BT, const N: usize>(
    client: &ComputeClient<R>,
    operands: [&Tensor<Cube<R, F, I, BT>, 5>; N],
    lengths: &[usize],
) -> Option<([CubeTensor<R>; N], usize)>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    let dtype = operands.first()?.dtype();
    let width = 16 / dtype.size();
    let prims = operands.map(|t| rows_prim(t.clone()));
    let loads_width = client
        .io_optimized_vector_sizes(dtype.size())
        .any(|size| size >= width);
    let divides = |x: usize| x.is_multiple_of(width);
    let takes = loads_width
        && prims
            .iter()
            .all(|t| t.meta.strides()[4] == 1 && divides(row_stride(t)))
        && lengths.iter().all(|&x| divides(x));
    takes.then_some((prims, width))
}

/// The chunk-boundary states of [`MlstmBackend::mlstm_chunk_states`] in one kernel on the
/// device's `mma` (`state_mma_kernel.rs`), where it takes them ([`mma_kernels_take`],
/// [`mma_operands`]), the batch entries and heads within one grid axis, unless switched off
/// ([`fused_states`]). `None` otherwise (the caller runs the products and the scans).
#[allow(clippy::too_many_arguments)]
fn mma_chunk_states<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    k: &Tensor<Cube<R, F, I, BT>, 5>,
    w_c: &Tensor<Cube<R, F, I, BT>, 4>,
    w_n: &Tensor<Cube<R, F, I, BT>, 4>,
    v: &Tensor<Cube<R, F, I, BT>, 5>,
    decay: &Tensor<Cube<R, F, I, BT>, 3>,
    start: Option<&StateStart<Cube<R, F, I, BT>>>,
    reverse: bool,
) -> Option<ChunkStates<Cube<R, F, I, BT>>> {
    let dtype = k.dtype();
    let [b, nh, nc, len, dqk] = k.dims();
    let dv = v.dims()[4];
    if fused_states() == Switch::Off || v.dtype() != dtype || b * nh * nc * len * dqk * dv == 0 {
        return None;
    }
    let tiles = dqk.div_ceil(STATE_TILE) * dv.div_ceil(STATE_TILE);
    let client = k.clone().into_primitive().tensor().client;
    if !mma_kernels_take(
        &client,
        dtype,
        shared_bytes(len, dtype.size()),
        [tiles, b * nh],
    ) {
        return None;
    }
    let ([k_p, v_p], width) = mma_operands(&client, [k, v], &[dqk, dv])?;
    let elem: StorageType = dtype.into();
    let [w_c, w_n] = [w_c, w_n].map(|t| f32_prim(t.clone()));
    let decay = prim(decay.clone());
    // The zero state is not read (the kernel starts from zero): any f32 tensor stands in.
    let (c0, n0) = match start {
        Some(start) => (f32_prim(start.c.clone()), f32_prim(start.n.clone())),
        None => (w_c.clone(), w_n.clone()),
    };
    let c_start = empty(&k_p, vec![b, nh, nc, dqk, dv], dtype);
    let c_end = empty(&k_p, vec![b, nh, dqk, dv], DType::F32);
    let n_start = empty(&k_p, vec![b, nh, nc, dqk], DType::F32);
    let n_end = empty(&k_p, vec![b, nh, dqk], DType::F32);
    // SAFETY: the kernel guards its global accesses by the tensors' shapes; its shared-memory
    // indices stay within the tiles it declares.
    unsafe {
        chunk_states_mma_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(tiles as u32, (b * nh) as u32, 1),
            CubeDim::new_2d(PLANE as u32, STATE_PLANES as u32),
            width,
            k_p.into_tensor_arg(),
            v_p.into_tensor_arg(),
            w_c.into_tensor_arg(),
            w_n.into_tensor_arg(),
            decay.into_tensor_arg(),
            c0.into_tensor_arg(),
            n0.into_tensor_arg(),
            c_start.clone().into_tensor_arg(),
            c_end.clone().into_tensor_arg(),
            n_start.clone().into_tensor_arg(),
            n_end.clone().into_tensor_arg(),
            len,
            reverse,
            start.is_none(),
            elem,
        );
    }
    Some(ChunkStates {
        c_start: wrap(c_start),
        c_end: wrap(c_end),
        n_start: wrap(n_start),
        n_end: wrap(n_end),
    })
}

/// The outputs of [`MlstmBackend::mlstm_chunk_outputs`] in one kernel on the device's `mma`
/// (`output_mma_kernel.rs`), where it takes them ([`mma_kernels_take`], [`mma_operands`]):
/// chunks of at most [`OUTPUT_MAX_LEN`] tokens, `c_start` of the inputs' type, every cube within
/// one grid axis; and `DV` up to [`FUSED_OUTPUTS_MAX_DV`] unless switched ([`fused_outputs`]).
/// `None` otherwise (the caller runs the products).
#[allow(clippy::too_many_arguments)]
fn mma_chunk_outputs<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    q: &Tensor<Cube<R, F, I, BT>, 5>,
    k: &Tensor<Cube<R, F, I, BT>, 5>,
    v: &Tensor<Cube<R, F, I, BT>, 5>,
    log_f: &Tensor<Cube<R, F, I, BT>, 4>,
    log_i: &Tensor<Cube<R, F, I, BT>, 4>,
    c_start: &Tensor<Cube<R, F, I, BT>, 5>,
    n_start: &Tensor<Cube<R, F, I, BT>, 4>,
    log_start: &Tensor<Cube<R, F, I, BT>, 4>,
) -> Option<Tensor<Cube<R, F, I, BT>, 5>> {
    let dtype = q.dtype();
    let [b, nh, nc, len, dqk] = q.dims();
    let dv = v.dims()[4];
    let cubes = b * nh * nc * dv.div_ceil(OUTPUT_TILE);
    let asked = match fused_outputs() {
        Switch::Off => false,
        Switch::On => true,
        Switch::Default => dv <= FUSED_OUTPUTS_MAX_DV,
    };
    if !asked
        || k.dtype() != dtype
        || v.dtype() != dtype
        || c_start.dtype() != dtype
        || b * nh * nc * len * dqk * dv == 0
        || len > OUTPUT_MAX_LEN
    {
        return None;
    }
    let client = q.clone().into_primitive().tensor().client;
    if !mma_kernels_take(
        &client,
        dtype,
        output_shared_bytes(dtype.size()),
        [cubes, 1],
    ) {
        return None;
    }
    let ([q_p, k_p, v_p], width) = mma_operands(&client, [q, k, v], &[dqk, dv])?;
    let elem: StorageType = dtype.into();
    let chunks = b * nh * nc;
    let by_chunk = |t: &Tensor<Cube<R, F, I, BT>, 4>| prim(t.clone().reshape([chunks, len]));
    let h = empty(&q_p, vec![b, nh, nc, len, dv], dtype);
    // SAFETY: the kernel guards its global accesses by the tensors' shapes; its shared-memory
    // indices stay within the tiles it declares.
    unsafe {
        chunk_outputs_mma_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(cubes as u32, 1, 1),
            CubeDim::new_2d(PLANE as u32, OUTPUT_PLANES as u32),
            width,
            q_p.into_tensor_arg(),
            k_p.into_tensor_arg(),
            v_p.into_tensor_arg(),
            prim(c_start.clone()).into_tensor_arg(),
            f32_prim(n_start.clone().reshape([chunks, dqk])).into_tensor_arg(),
            by_chunk(log_f).into_tensor_arg(),
            by_chunk(log_i).into_tensor_arg(),
            by_chunk(log_start).into_tensor_arg(),
            h.clone().into_tensor_arg(),
            (1.0 / (dqk as f64).sqrt()) as f32,
            EPS as f32,
            len,
            elem,
        );
    }
    Some(wrap(h))
}

/// The `[L, L]` step of [`MlstmBackend::mlstm_score_grads`] in one kernel on the device's `mma`
/// (`score_grads_mma_kernel.rs`), where it takes them ([`mma_kernels_take`], [`mma_operands`]):
/// chunks of at most [`SCORE_MAX_LEN`] tokens, `q, k, v, h, dh` of the work type, every chunk
/// within one grid axis. `None` otherwise (the caller runs the products and the row passes).
fn mma_score_grads<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    inputs: &ScoreGradInputs<Cube<R, F, I, BT>>,
    scale: f64,
    work: DType,
) -> Option<ScoreGrads<Cube<R, F, I, BT>>> {
    let ScoreGradInputs {
        q,
        k,
        v,
        h,
        dh,
        n_start,
        log_f,
        log_i,
        log_start,
    } = inputs;
    let [b, nh, nc, len, dqk] = q.dims();
    let dv = v.dims()[4];
    let chunks = b * nh * nc;
    if [q, k, v, h, dh].iter().any(|t| t.dtype() != work)
        || chunks * len * dqk * dv == 0
        || len > SCORE_MAX_LEN
    {
        return None;
    }
    let client = q.clone().into_primitive().tensor().client;
    if !mma_kernels_take(&client, work, score_shared_bytes(work.size()), [chunks, 1]) {
        return None;
    }
    let ([q_p, k_p, v_p, h_p, dh_p], width) =
        mma_operands(&client, [q, k, v, h, dh], &[dqk, dv, len])?;
    let by_chunk =
        |t: &Tensor<Cube<R, F, I, BT>, 4>, n: usize| f32_prim(t.clone().reshape([chunks, n]));
    let p = empty(&q_p, vec![chunks, len, len], work);
    let ds = empty(&q_p, vec![chunks, len, len], work);
    let dnum = empty(&q_p, vec![b, nh, nc, len, dv], work);
    let [rows, cols, gain, dqn, dstab_start] =
        std::array::from_fn(|_| empty(&q_p, vec![chunks, len], DType::F32));
    let elem: StorageType = work.into();
    // SAFETY: the kernel guards its global accesses by the tensors' shapes; its shared-memory
    // indices stay within the tiles it declares.
    unsafe {
        score_grads_mma_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(chunks as u32, 1, 1),
            CubeDim::new_2d(PLANE as u32, SCORE_PLANES as u32),
            width,
            q_p.into_tensor_arg(),
            k_p.into_tensor_arg(),
            v_p.into_tensor_arg(),
            h_p.into_tensor_arg(),
            dh_p.into_tensor_arg(),
            by_chunk(n_start, dqk).into_tensor_arg(),
            by_chunk(log_f, len).into_tensor_arg(),
            by_chunk(log_i, len).into_tensor_arg(),
            by_chunk(log_start, len).into_tensor_arg(),
            p.clone().into_tensor_arg(),
            ds.clone().into_tensor_arg(),
            dnum.clone().into_tensor_arg(),
            rows.clone().into_tensor_arg(),
            cols.clone().into_tensor_arg(),
            gain.clone().into_tensor_arg(),
            dqn.clone().into_tensor_arg(),
            dstab_start.clone().into_tensor_arg(),
            scale as f32,
            EPS as f32,
            len,
            elem,
        );
    }
    let matrix = |t: CubeTensor<R>| {
        let t: Tensor<Cube<R, F, I, BT>, 3> = wrap(t);
        t.reshape([b, nh, nc, len, len])
    };
    let per_chunk = |t: CubeTensor<R>| {
        let t: Tensor<Cube<R, F, I, BT>, 2> = wrap(t);
        t.reshape([b, nh, nc, len])
    };
    Some(ScoreGrads {
        p: matrix(p),
        ds: matrix(ds),
        dnum: wrap(dnum),
        rows: per_chunk(rows),
        cols: per_chunk(cols),
        gain: per_chunk(gain),
        dqn: per_chunk(dqn),
        dstab_to_start: per_chunk(dstab_start),
    })
}

/// The gradient rows of [`MlstmBackend::mlstm_gradient_products`] in one kernel on the
/// device's `mma` (`gradient_mma_kernel.rs`), where it takes them ([`mma_kernels_take`],
/// [`mma_operands`]): chunks of at most [`GRADIENT_MAX_LEN`] tokens, every operand and the
/// result of one half type, every cube within one grid axis. `None` otherwise (the caller runs
/// the products).
fn mma_gradient_products<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    products: &GradientProducts<Cube<R, F, I, BT>>,
    scale: f64,
    out: DType,
) -> Option<GradientRows<Cube<R, F, I, BT>>> {
    let GradientProducts {
        pairs,
        pairs_layout,
        x,
        y,
        z,
        z_layout,
        alpha,
        row_term,
        dot_with,
    } = products;
    let dtype = x.dtype();
    let [b, nh, nc, len, d] = x.dims();
    let e = y.dims()[4];
    let tiles = d.div_ceil(GRADIENT_TILE);
    let cubes = b * nh * nc * tiles;
    let transposed = *z_layout == Layout::Transposed;
    let same_type = [pairs, y, z]
        .into_iter()
        .chain(dot_with)
        .all(|t| t.dtype() == dtype);
    if !same_type || out != dtype || b * nh * nc * len * d * e == 0 || len > GRADIENT_MAX_LEN {
        return None;
    }
    let client = x.clone().into_primitive().tensor().client;
    let shared = gradient_shared_bytes(dtype.size(), transposed);
    if !mma_kernels_take(&client, dtype, shared, [cubes, 1]) {
        return None;
    }
    let w = dot_with.as_ref().unwrap_or(x);
    let ([pairs_p, x_p, y_p, z_p, w_p], width) =
        mma_operands(&client, [pairs, x, y, z, w], &[len, d, e])?;
    let chunks = b * nh * nc;
    let rows =
        |t: &Tensor<Cube<R, F, I, BT>, 4>, n: usize| f32_prim(t.clone().reshape([chunks, n]));
    let alpha_p = rows(alpha, len);
    let (beta_p, z_row_p) = match row_term {
        Some((beta, z_row)) => (rows(beta, len), rows(z_row, d)),
        None => (alpha_p.clone(), alpha_p.clone()),
    };
    let result = empty(&x_p, vec![b, nh, nc, len, d], dtype);
    let dots_shape = match dot_with {
        Some(_) => vec![tiles, chunks * len],
        None => vec![1, 1],
    };
    let dots = empty(&x_p, dots_shape, DType::F32);
    let elem: StorageType = dtype.into();
    // SAFETY: the kernel guards its global accesses by the tensors' shapes; its shared-memory
    // indices stay within the tiles it declares.
    unsafe {
        gradient_products_mma_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(cubes as u32, 1, 1),
            CubeDim::new_2d(PLANE as u32, GRADIENT_PLANES as u32),
            width,
            pairs_p.into_tensor_arg(),
            x_p.into_tensor_arg(),
            y_p.into_tensor_arg(),
            z_p.into_tensor_arg(),
            alpha_p.into_tensor_arg(),
            beta_p.into_tensor_arg(),
            z_row_p.into_tensor_arg(),
            w_p.into_tensor_arg(),
            result.clone().into_tensor_arg(),
            dots.clone().into_tensor_arg(),
            scale as f32,
            len,
            *pairs_layout == Layout::Transposed,
            transposed,
            row_term.is_some(),
            dot_with.is_some(),
            elem,
        );
    }
    let dots = dot_with.as_ref().map(|_| {
        let dots: Tensor<Cube<R, F, I, BT>, 2> = wrap(dots);
        dots.sum_dim(0).reshape([b, nh, nc, len])
    });
    Some((wrap(result), dots))
}

impl<R, F, I, BT> MlstmBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    const CHUNKWISE_NODE: bool = true;

    fn mlstm_max_buffer_bytes(device: &Self::Device) -> usize {
        let client = R::client(device);
        usize::try_from(client.properties().memory.max_page_size).unwrap_or(usize::MAX)
    }

    fn mlstm_chunkwise(
        x: &MlstmInputs<Self>,
        state: Option<MlstmState<Self>>,
        chunk_size: usize,
    ) -> Result<(Tensor<Self, 4>, MlstmState<Self>), CellError> {
        let [b, nh, s, dqk, dv] = x.dims()?;
        if s == 0 || chunk_size == 0 {
            return xlstm_cells::mlstm::chunkwise(x, state, chunk_size);
        }
        if tensor_core_chunks(x, chunk_size) {
            // From the zero state without materialising it (its kernels start from zero).
            return super::chunkwise_matmul(x, state, chunk_size);
        }
        let state = MlstmState::given_or_zeros(state, [b, nh, dqk, dv], &x.q.device())?;
        let dtype = x.q.dtype();
        let state_dtype = state.c.dtype();
        let requested = if CHUNKS.contains(&chunk_size) {
            chunk_size
        } else {
            DEFAULT_CHUNK
        };
        let shared = x.q.clone().into_primitive().tensor();
        let limit = shared.client.properties().hardware.max_shared_memory_size;
        let Some(plan) = Plan::choose(requested, dqk, dv, limit) else {
            return xlstm_cells::mlstm::chunkwise(x, Some(state), chunk_size);
        };
        let len = plan.len;
        let chunks = s.div_ceil(len);
        // The chunk-start states are f32 [G, NH, NC, DQK, DV]: the batch runs in groups of G
        // entries so that they stay under STATES_BYTES.
        let group = (STATES_BYTES / (nh * chunks * dqk * dv * 4)).clamp(1, b);
        // A state cube walks every chunk in turn, so the state kernel needs many cubes in
        // flight: the large tiles only where they still give MIN_STATE_CUBES per launch (on
        // the H200 at B8 NH8 S8192 DQK256 DV512, 128 cubes of 128×128 took 5.9 ms per group).
        let big_tiles = dqk.div_ceil(16 * plan.rm_state) * dv.div_ceil(16 * plan.rn_state);
        let (rm_state, rn_state) = if big_tiles * nh * group >= MIN_STATE_CUBES {
            (plan.rm_state, plan.rn_state)
        } else {
            (4, 4)
        };
        let rn_out = plan.rn_out;
        let tiles_out = chunks * dv.div_ceil(16 * rn_out);
        let tiles_state = dqk.div_ceil(16 * rm_state) * dv.div_ceil(16 * rn_state);
        if !supported(dtype)
            || !supported(state_dtype)
            || tiles_out > MAX_CUBES
            || tiles_state > MAX_CUBES
            || nh > MAX_CUBES
            || b > MAX_CUBES
        {
            return xlstm_cells::mlstm::chunkwise(x, Some(state), chunk_size);
        }
        let same = |t: Tensor<Self, 3>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let same4 = |t: Tensor<Self, 4>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let q = prim(x.q.clone());
        let k = prim(same4(x.k.clone()));
        let v = prim(same4(x.v.clone()));
        let i_pre = prim(same(x.i_preact.clone()));
        let f_pre = prim(same(x.f_preact.clone()));
        let c0 = prim(state.c);
        let n0 = prim(state.n.cast(state_dtype));
        let m0 = prim(state.m.cast(state_dtype));

        let c_start = empty(&q, vec![group, nh, chunks, dqk, dv], DType::F32);
        let n_start = empty(&q, vec![group, nh, chunks, dqk], DType::F32);
        let m_start = empty(&q, vec![group, nh, chunks], DType::F32);
        let c_out = empty(&q, vec![b, nh, dqk, dv], state_dtype);
        let n_out = empty(&q, vec![b, nh, dqk], state_dtype);
        let m_out = empty(&q, vec![b, nh], state_dtype);
        let h = empty(&q, vec![b, nh, s, dv], dtype);
        let key_scale = 1.0 / (dqk as f32).sqrt();
        let client = q.client.clone();

        for first in (0..b).step_by(group) {
            let entries = group.min(b - first);
            mlstm_chunk_states_kernel::launch::<R>(
                &client,
                CubeCount::Static(tiles_state as u32, nh as u32, entries as u32),
                CubeDim::new_2d(UNITS, UNITS),
                k.clone().into_tensor_arg(),
                v.clone().into_tensor_arg(),
                i_pre.clone().into_tensor_arg(),
                f_pre.clone().into_tensor_arg(),
                c0.clone().into_tensor_arg(),
                n0.clone().into_tensor_arg(),
                m0.clone().into_tensor_arg(),
                c_start.clone().into_tensor_arg(),
                n_start.clone().into_tensor_arg(),
                m_start.clone().into_tensor_arg(),
                c_out.clone().into_tensor_arg(),
                n_out.clone().into_tensor_arg(),
                m_out.clone().into_tensor_arg(),
                key_scale,
                first as u32,
                len,
                rm_state,
                rn_state,
                [dtype.into(), state_dtype.into()],
            );
            mlstm_chunk_outputs_kernel::launch::<R>(
                &client,
                CubeCount::Static(tiles_out as u32, nh as u32, entries as u32),
                CubeDim::new_2d(UNITS, UNITS),
                q.clone().into_tensor_arg(),
                k.clone().into_tensor_arg(),
                v.clone().into_tensor_arg(),
                i_pre.clone().into_tensor_arg(),
                f_pre.clone().into_tensor_arg(),
                c_start.clone().into_tensor_arg(),
                n_start.clone().into_tensor_arg(),
                m_start.clone().into_tensor_arg(),
                h.clone().into_tensor_arg(),
                key_scale,
                EPS as f32,
                first as u32,
                len,
                rn_out,
                SLICE,
                dtype.into(),
            );
        }
        Ok((
            wrap(h),
            MlstmState {
                c: wrap(c_out),
                n: wrap(n_out),
                m: wrap(m_out),
            },
        ))
    }

    /// The tensor-core schedule keeps its chunk-boundary states for the backward.
    fn mlstm_chunkwise_keeping_states(
        x: &MlstmInputs<Self>,
        state: Option<MlstmState<Self>>,
        chunk_size: usize,
    ) -> Result<(Tensor<Self, 4>, MlstmState<Self>, Option<ChunkStates<Self>>), CellError> {
        x.dims()?;
        if tensor_core_chunks(x, chunk_size) {
            return super::chunk_matmul::chunkwise_matmul_keeping_states(x, state, chunk_size);
        }
        Self::mlstm_chunkwise(x, state, chunk_size).map(|(h, end)| (h, end, None))
    }

    /// The backward in tensor ops (`backward.rs`), its large products on tensor cores where the
    /// forward ran as batched matmuls (half-type inputs), else in f32.
    fn mlstm_chunkwise_backward(
        x: &MlstmInputs<Self>,
        state: MlstmState<Self>,
        chunk_size: usize,
        h: Tensor<Self, 4>,
        states: Option<ChunkStates<Self>>,
        dh: Tensor<Self, 4>,
        dstate: MlstmState<Self>,
    ) -> (MlstmInputs<Self>, MlstmState<Self>) {
        let work = if tensor_core_chunks(x, chunk_size) {
            x.q.dtype()
        } else {
            DType::F32
        };
        super::backward::chunkwise_backward(x, state, chunk_size, h, states, dh, dstate, work)
    }

    /// Half-type operands on tensor cores (tiles chosen per shape); everything else, and
    /// products thinner than a tile, in exact f32 (cubek's unit matmul, not burn's default,
    /// which rounds f32 operands through tf32 where the device has it).
    fn mlstm_matmul(lhs: Tensor<Self, 5>, rhs: Tensor<Self, 5>, out: DType) -> Tensor<Self, 5> {
        let [.., m, k] = lhs.dims();
        let n = rhs.dims()[4];
        let dtype = lhs.dtype();
        let client = lhs.clone().into_primitive().tensor().client;
        let on_cores = m.min(n).min(k) >= TENSOR_CORE_TILE
            && rhs.dtype() == dtype
            && tensor_cores(&client, dtype);
        let (lhs, rhs) = if on_cores {
            (lhs, rhs)
        } else {
            (lhs.cast(DType::F32), rhs.cast(DType::F32))
        };
        let lhs_p = lhs.clone().into_primitive().tensor();
        let rhs_p = rhs.clone().into_primitive().tensor();
        let mut shape = lhs.dims();
        shape[4] = n;
        let product = empty(&lhs_p, shape.to_vec(), out);
        let launched = if on_cores {
            batched_matmul(&lhs_p, &rhs_p, &product)
        } else {
            exact_f32_matmul(&lhs_p, &rhs_p, &product)
        };
        if launched {
            wrap(product)
        } else {
            super::backward::matmul_in_f32(lhs, rhs, out)
        }
    }

    fn mlstm_chunk_states(
        k: Tensor<Self, 5>,
        w_c: Tensor<Self, 4>,
        w_n: Tensor<Self, 4>,
        v: Tensor<Self, 5>,
        decay: Tensor<Self, 3>,
        start: Option<StateStart<Self>>,
        reverse: bool,
    ) -> ChunkStates<Self> {
        match mma_chunk_states(&k, &w_c, &w_n, &v, &decay, start.as_ref(), reverse) {
            Some(states) => states,
            None => super::chunk_matmul::chunk_states(k, w_c, w_n, v, decay, start, reverse),
        }
    }

    fn mlstm_chunk_outputs(
        q: Tensor<Self, 5>,
        k: Tensor<Self, 5>,
        v: Tensor<Self, 5>,
        log_f: Tensor<Self, 4>,
        log_i: Tensor<Self, 4>,
        c_start: Tensor<Self, 5>,
        n_start: Tensor<Self, 4>,
        log_start: Tensor<Self, 4>,
    ) -> Tensor<Self, 5> {
        match mma_chunk_outputs(&q, &k, &v, &log_f, &log_i, &c_start, &n_start, &log_start) {
            Some(h) => h,
            None => super::chunk_matmul::chunk_outputs(
                q, k, v, log_f, log_i, c_start, n_start, log_start,
            ),
        }
    }

    fn mlstm_chunk_scan(
        a: Tensor<Self, 2>,
        b: Tensor<Self, 3>,
        x0: Tensor<Self, 2>,
        reverse: bool,
    ) -> (Tensor<Self, 3>, Tensor<Self, 2>) {
        let [g, nc, e] = b.dims();
        let dtype = b.dtype();
        if !supported(dtype) || g * e == 0 || nc == 0 {
            return super::backward::chunk_scan(a, b, x0, reverse);
        }
        let a = f32_prim(a);
        let b = prim(b);
        let x0 = f32_prim(x0);
        let out = empty(&b, vec![g, nc, e], dtype);
        let last = empty(&b, vec![g, e], DType::F32);
        let client = b.client.clone();
        let width = vector_width(&client, e, dtype, DType::F32);
        let dim = CubeDim::new_1d(256);
        chunk_scan_kernel::launch::<R>(
            &client,
            cubecl::calculate_cube_count_elemwise(&client, g * e / width, dim),
            dim,
            width,
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            x0.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            last.clone().into_tensor_arg(),
            reverse,
            dtype.into(),
        );
        (wrap(out), wrap(last))
    }

    fn mlstm_chunk_gates(
        i_preact: Tensor<Self, 3>,
        f_preact: Tensor<Self, 3>,
        len: usize,
    ) -> ChunkGates<Self> {
        let [b, nh, s] = i_preact.dims();
        let dtype = i_preact.dtype();
        if !supported(dtype)
            || f_preact.dtype() != dtype
            || len == 0
            || len > GATE_MAX_LEN
            || b * nh * s == 0
        {
            return super::chunked::chunk_gates(i_preact, f_preact, len);
        }
        let nc = s.div_ceil(len);
        // Read in place, in their strides (e.g. a transposed projection's output): no copy.
        let i_pre = i_preact.into_primitive().tensor();
        let out = || empty(&i_pre, vec![b * nh * nc, len], DType::F32);
        let (log_i, log_f, f_cum, log_w) = (out(), out(), out(), out());
        let per_chunk = || empty(&i_pre, vec![b * nh * nc], DType::F32);
        let (f_last, m_loc) = (per_chunk(), per_chunk());
        let client = i_pre.client.clone();
        let (count, dim, per_cube) = chunk_rows_launch(b * nh * nc, len);
        chunk_gates_kernel::launch::<R>(
            &client,
            count,
            dim,
            i_pre.into_tensor_arg(),
            f_preact.into_primitive().tensor().into_tensor_arg(),
            log_i.clone().into_tensor_arg(),
            log_f.clone().into_tensor_arg(),
            f_cum.clone().into_tensor_arg(),
            log_w.clone().into_tensor_arg(),
            f_last.clone().into_tensor_arg(),
            m_loc.clone().into_tensor_arg(),
            len,
            per_cube,
            dtype.into(),
        );
        let shaped = |t: CubeTensor<R>| wrap::<R, F, I, BT, 2>(t).reshape([b, nh, nc, len]);
        ChunkGates {
            log_i: shaped(log_i),
            log_f: shaped(log_f),
            f_cum: shaped(f_cum),
            log_w: shaped(log_w),
            f_last: wrap::<R, F, I, BT, 1>(f_last).reshape([b, nh, nc]),
            m_loc: wrap::<R, F, I, BT, 1>(m_loc).reshape([b, nh, nc]),
        }
    }

    fn mlstm_forward_gates(
        i_preact: Tensor<Self, 3>,
        f_preact: Tensor<Self, 3>,
        m0: Option<Tensor<Self, 2>>,
        len: usize,
        scale: f64,
    ) -> ForwardGates<Self> {
        let [b, nh, s] = i_preact.dims();
        let dtype = i_preact.dtype();
        if !supported(dtype)
            || f_preact.dtype() != dtype
            || len == 0
            || len > FORWARD_GATE_MAX_LEN
            || b * nh * s == 0
        {
            return super::chunk_matmul::forward_gates(i_preact, f_preact, m0, len, scale);
        }
        let (rows, nc) = (b * nh, s.div_ceil(len));
        // Read in place, in their strides (e.g. a transposed projection's output): no copy.
        let i_pre = i_preact.into_primitive().tensor();
        let per_token = || empty(&i_pre, vec![rows * nc, len], DType::F32);
        let (log_i, log_f, log_start, w) = (per_token(), per_token(), per_token(), per_token());
        let decay = empty(&i_pre, vec![rows * nc], DType::F32);
        let m_end = empty(&i_pre, vec![rows], DType::F32);
        let zero_start = m0.is_none();
        // The zero stabiliser is not read: an unwritten entry stands in.
        let m0 = m0.map_or_else(
            || empty(&i_pre, vec![1], DType::F32),
            |m| f32_prim(m.reshape([rows])),
        );
        let per_round = forward_gate_rounds(len, nc);
        let along_x = rows.min(usize::from(u16::MAX));
        let client = i_pre.client.clone();
        forward_gates_kernel::launch::<R>(
            &client,
            CubeCount::Static(along_x as u32, rows.div_ceil(along_x) as u32, 1),
            CubeDim::new_2d(len.min(GATE_UNITS) as u32, per_round as u32),
            i_pre.into_tensor_arg(),
            f_preact.into_primitive().tensor().into_tensor_arg(),
            m0.into_tensor_arg(),
            log_i.clone().into_tensor_arg(),
            log_f.clone().into_tensor_arg(),
            log_start.clone().into_tensor_arg(),
            w.clone().into_tensor_arg(),
            decay.clone().into_tensor_arg(),
            m_end.clone().into_tensor_arg(),
            scale as f32,
            len,
            per_round,
            zero_start,
            dtype.into(),
        );
        let shaped = |t: CubeTensor<R>| wrap::<R, F, I, BT, 2>(t).reshape([b, nh, nc, len]);
        ForwardGates {
            log_i: shaped(log_i),
            log_f: shaped(log_f),
            log_start: shaped(log_start),
            w: shaped(w),
            decay: wrap::<R, F, I, BT, 1>(decay).reshape([b, nh, nc]),
            m_end: wrap::<R, F, I, BT, 1>(m_end).reshape([b, nh]),
        }
    }

    fn mlstm_state_weights(
        log_w: Tensor<Self, 4>,
        m_loc: Tensor<Self, 3>,
        gain: Tensor<Self, 3>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        let [b, nh, nc, len] = log_w.dims();
        if b * nh * nc * len == 0 {
            return super::chunk_matmul::state_weights(log_w, m_loc, gain, scale);
        }
        let g = b * nh * nc;
        let log_w = f32_prim(log_w.reshape([g, len]));
        let m_loc = f32_prim(m_loc.reshape([g]));
        let gain = f32_prim(gain.reshape([g]));
        let w = empty(&log_w, vec![g, len], DType::F32);
        let client = log_w.client.clone();
        let dim = CubeDim::new_1d(256);
        state_weights_kernel::launch::<R>(
            &client,
            cubecl::calculate_cube_count_elemwise(&client, g * len, dim),
            dim,
            log_w.into_tensor_arg(),
            m_loc.into_tensor_arg(),
            gain.into_tensor_arg(),
            w.clone().into_tensor_arg(),
            scale as f32,
        );
        wrap::<R, F, I, BT, 2>(w).reshape([b, nh, nc, len])
    }

    fn mlstm_stabiliser_scan(
        f_last: Tensor<Self, 2>,
        m_loc: Tensor<Self, 2>,
        m0: Tensor<Self, 1>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        let [g, nc] = f_last.dims();
        if g == 0 || nc == 0 {
            return super::backward::stabiliser_scan(f_last, m_loc, m0);
        }
        let f_last = f32_prim(f_last);
        let m_loc = f32_prim(m_loc);
        let m0 = f32_prim(m0);
        let m_all = empty(&f_last, vec![g, nc + 1], DType::F32);
        let decay = empty(&f_last, vec![g, nc], DType::F32);
        let gain = empty(&f_last, vec![g, nc], DType::F32);
        let client = f_last.client.clone();
        let dim = CubeDim::new_1d(64);
        stabiliser_scan_kernel::launch::<R>(
            &client,
            cubecl::calculate_cube_count_elemwise(&client, g, dim),
            dim,
            f_last.into_tensor_arg(),
            m_loc.into_tensor_arg(),
            m0.into_tensor_arg(),
            m_all.clone().into_tensor_arg(),
            decay.clone().into_tensor_arg(),
            gain.clone().into_tensor_arg(),
        );
        (wrap(m_all), wrap(decay), wrap(gain))
    }

    fn mlstm_chunk_combine(
        num: Tensor<Self, 3>,
        qc: Tensor<Self, 2>,
        g: Tensor<Self, 1>,
        qn: Tensor<Self, 1>,
        stab: Tensor<Self, 1>,
        dtype: DType,
    ) -> Tensor<Self, 2> {
        let [rows, dv] = qc.dims();
        let [chunks, num_rows, _] = num.dims();
        let len = rows / chunks.max(1);
        if !supported(dtype) || rows * dv == 0 {
            return super::chunk_matmul::chunk_combine(num, qc, g, qn, stab, dtype);
        }
        // The sums are read in their own float type where both share a supported one.
        let sums = if num.dtype() == qc.dtype() && supported(num.dtype()) {
            num.dtype()
        } else {
            DType::F32
        };
        let num = prim(num.cast(sums));
        let h = empty(&num, vec![rows, dv], dtype);
        let client = num.client.clone();
        let width = vector_width(&client, dv, dtype, sums);
        let dim = CubeDim::new_1d(256);
        chunk_combine_kernel::launch::<R>(
            &client,
            cubecl::calculate_cube_count_elemwise(&client, rows * dv / width, dim),
            dim,
            width,
            num.into_tensor_arg(),
            prim(qc.cast(sums)).into_tensor_arg(),
            f32_prim(g).into_tensor_arg(),
            f32_prim(qn).into_tensor_arg(),
            f32_prim(stab).into_tensor_arg(),
            h.clone().into_tensor_arg(),
            EPS as f32,
            num_rows == 2 * len,
            [dtype.into(), sums.into()],
        );
        wrap(h)
    }

    fn mlstm_gate_input_grads(
        terms: GateGradTerms<Self>,
        scale: f64,
        f_preact: Tensor<Self, 3>,
        i_dtype: DType,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        let [b, nh, nc, len] = terms.rows.dims();
        let s = f_preact.dims()[2];
        let dtype = f_preact.dtype();
        if !supported(dtype) || i_dtype != dtype || len > GATE_MAX_LEN || b * nh * s == 0 {
            return super::backward::gate_input_grads(terms, scale, f_preact, i_dtype);
        }
        let g = b * nh * nc;
        let by_chunk_token = |t: Tensor<Self, 4>| f32_prim(t.reshape([g, len]));
        let by_chunk = |t: Tensor<Self, 3>| f32_prim(t.reshape([g]));
        let GateGradTerms {
            rows,
            cols,
            dlog_start,
            k_dot,
            w,
            w_arg,
            d_loc,
            d_dec,
        } = terms;
        let rows = by_chunk_token(rows);
        let f_pre = f_preact.into_primitive().tensor();
        let di = empty(&rows, vec![b, nh, s], dtype);
        let df = empty(&rows, vec![b, nh, s], dtype);
        let client = rows.client.clone();
        let (count, dim, per_cube) = chunk_rows_launch(g, len);
        gate_input_grads_kernel::launch::<R>(
            &client,
            count,
            dim,
            rows.into_tensor_arg(),
            by_chunk_token(cols).into_tensor_arg(),
            by_chunk_token(dlog_start).into_tensor_arg(),
            by_chunk_token(k_dot).into_tensor_arg(),
            by_chunk_token(w).into_tensor_arg(),
            by_chunk(w_arg.float()).into_tensor_arg(),
            by_chunk(d_loc).into_tensor_arg(),
            by_chunk(d_dec).into_tensor_arg(),
            f_pre.into_tensor_arg(),
            di.clone().into_tensor_arg(),
            df.clone().into_tensor_arg(),
            scale as f32,
            len,
            per_cube,
            dtype.into(),
        );
        (wrap(di), wrap(df))
    }

    fn mlstm_backward_rows(
        dh: Tensor<Self, 2>,
        h: Tensor<Self, 2>,
        qn: Tensor<Self, 1>,
        stab: Tensor<Self, 1>,
        row_max: Tensor<Self, 1>,
        work: DType,
    ) -> OutputRowGrads<Self> {
        let [rows, dv] = dh.dims();
        let dtype = dh.dtype();
        if !supported(dtype) || !supported(work) || rows * dv == 0 {
            return super::backward::backward_rows(dh, h, qn, stab, row_max, work);
        }
        let h = if h.dtype() == dtype { h } else { h.cast(dtype) };
        let (dh, h) = (rows_prim(dh), rows_prim(h));
        let dnum = empty(&dh, vec![rows, dv], work);
        let row = || empty(&dh, vec![rows], DType::F32);
        let (dqn, dstab_to_max, dstab_to_start) = (row(), row(), row());
        let client = dh.client.clone();
        let aligned = gcd(gcd(dv, row_stride(&dh)), row_stride(&h));
        let width = vector_width(&client, aligned, dtype, work);
        let (count, dim) = row_grid(&client, rows);
        backward_rows_kernel::launch::<R>(
            &client,
            count,
            dim,
            width,
            dh.into_tensor_arg(),
            h.into_tensor_arg(),
            f32_prim(qn).into_tensor_arg(),
            f32_prim(stab).into_tensor_arg(),
            f32_prim(row_max).into_tensor_arg(),
            dnum.clone().into_tensor_arg(),
            dqn.clone().into_tensor_arg(),
            dstab_to_max.clone().into_tensor_arg(),
            dstab_to_start.clone().into_tensor_arg(),
            EPS as f32,
            [dtype.into(), work.into()],
        );
        OutputRowGrads {
            dnum: wrap(dnum),
            dqn: wrap(dqn),
            dstab_to_max: wrap(dstab_to_max),
            dstab_to_start: wrap(dstab_to_start),
        }
    }

    fn mlstm_gradient_rows(
        a: Tensor<Self, 2>,
        b: Tensor<Self, 2>,
        c: Tensor<Self, 2>,
        s: Tensor<Self, 1>,
        t: Tensor<Self, 1>,
        x: Tensor<Self, 2>,
        scale: f64,
        len: usize,
        out: DType,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        let [rows, d] = a.dims();
        let dtype = x.dtype();
        if !supported(dtype) || !supported(out) || rows * d == 0 {
            return super::backward::gradient_rows(a, b, c, s, t, x, scale, len, out);
        }
        let (a, b, c) = (f32_prim(a), f32_prim(b), f32_prim(c));
        let x = rows_prim(x);
        let result = empty(&a, vec![rows, d], out);
        let dot = empty(&a, vec![rows], DType::F32);
        let client = a.client.clone();
        let width = vector_width(&client, gcd(d, row_stride(&x)), dtype, out);
        let (count, dim) = row_grid(&client, rows);
        gradient_rows_kernel::launch::<R>(
            &client,
            count,
            dim,
            width,
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            c.into_tensor_arg(),
            f32_prim(s).into_tensor_arg(),
            f32_prim(t).into_tensor_arg(),
            x.into_tensor_arg(),
            result.clone().into_tensor_arg(),
            dot.clone().into_tensor_arg(),
            scale as f32,
            len,
            [dtype.into(), out.into()],
        );
        (wrap(result), wrap(dot))
    }

    fn mlstm_gate_matrix(
        scores: Tensor<Self, 3>,
        log_f: Tensor<Self, 2>,
        log_i: Tensor<Self, 2>,
        log_start: Tensor<Self, 2>,
        q: Tensor<Self, 3>,
        n_start: Tensor<Self, 2>,
        scale: f64,
        out: DType,
        split: bool,
    ) -> GateMatrix<Self> {
        let [chunks, len, _] = scores.dims();
        let client = scores.clone().into_primitive().tensor().client;
        if !gate_kernels_take(&client, chunks, len, out) || !supported(q.dtype()) {
            return gate_matrix(
                scores, log_f, log_i, log_start, q, n_start, scale, out, split,
            );
        }
        let q_dtype = q.dtype();
        let dqk = q.dims()[2];
        let scores = f32_prim(scores);
        let q = rows_prim(q);
        let width = vector_width(&client, gcd(dqk, row_stride(&q)), q_dtype, DType::F32);
        let rows = if split { 2 * len } else { len };
        let p = empty(&scores, vec![chunks, rows, len], out);
        let row = || empty(&scores, vec![chunks, len], DType::F32);
        let (row_max, stab, gain, qn) = (row(), row(), row(), row());
        let (count, dim) = chunk_grid(chunks, len);
        gate_matrix_kernel::launch::<R>(
            &client,
            count,
            dim,
            width,
            scores.into_tensor_arg(),
            f32_prim(log_f).into_tensor_arg(),
            f32_prim(log_i).into_tensor_arg(),
            f32_prim(log_start).into_tensor_arg(),
            q.into_tensor_arg(),
            f32_prim(n_start).into_tensor_arg(),
            p.clone().into_tensor_arg(),
            row_max.clone().into_tensor_arg(),
            stab.clone().into_tensor_arg(),
            gain.clone().into_tensor_arg(),
            qn.clone().into_tensor_arg(),
            scale as f32,
            len,
            gate_groups(len),
            split,
            [out.into(), q_dtype.into()],
        );
        GateMatrix {
            p: wrap(p),
            row_max: wrap(row_max),
            stab: wrap(stab),
            gain: wrap(gain),
            qn: wrap(qn),
        }
    }

    fn mlstm_gate_grads(
        scores: Tensor<Self, 3>,
        dpv: Tensor<Self, 3>,
        log_f: Tensor<Self, 2>,
        log_i: Tensor<Self, 2>,
        stab: Tensor<Self, 2>,
        dqn: Tensor<Self, 2>,
        dstab: Tensor<Self, 2>,
        scale: f64,
        out: DType,
    ) -> (Tensor<Self, 3>, Tensor<Self, 2>, Tensor<Self, 2>) {
        let [chunks, len, _] = scores.dims();
        let client = scores.clone().into_primitive().tensor().client;
        if !gate_kernels_take(&client, chunks, len, out) {
            return gate_grads(scores, dpv, log_f, log_i, stab, dqn, dstab, scale, out);
        }
        let scores = f32_prim(scores);
        let ds = empty(&scores, vec![chunks, len, len], out);
        let rows = empty(&scores, vec![chunks, len], DType::F32);
        let cols = empty(&scores, vec![chunks, len], DType::F32);
        let (count, dim) = chunk_grid(chunks, len);
        gate_grads_kernel::launch::<R>(
            &client,
            count,
            dim,
            scores.into_tensor_arg(),
            f32_prim(dpv).into_tensor_arg(),
            f32_prim(log_f).into_tensor_arg(),
            f32_prim(log_i).into_tensor_arg(),
            f32_prim(stab).into_tensor_arg(),
            f32_prim(dqn).into_tensor_arg(),
            f32_prim(dstab).into_tensor_arg(),
            ds.clone().into_tensor_arg(),
            rows.clone().into_tensor_arg(),
            cols.clone().into_tensor_arg(),
            scale as f32,
            len,
            gate_groups(len),
            out.into(),
        );
        (wrap(ds), wrap(rows), wrap(cols))
    }

    fn mlstm_rows<const D: usize, const E: usize>(
        t: Tensor<Self, D>,
        shape: [usize; E],
    ) -> Tensor<Self, E> {
        let primitive = t.clone().into_primitive().tensor();
        match padded_rows_view(&primitive, &shape) {
            Some(view) => wrap(view),
            None => t.reshape(shape),
        }
    }

    fn mlstm_weighted_rows(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 2>,
        u: Option<Tensor<Self, 2>>,
    ) -> (Tensor<Self, 3>, Option<Tensor<Self, 2>>) {
        let [chunks, len, d] = x.dims();
        let dtype = x.dtype();
        if !supported(dtype) || chunks * len * d == 0 {
            return super::backward::weighted_rows(x, w, u);
        }
        let x = rows_prim(x);
        let w = f32_prim(w);
        let with_sum = u.is_some();
        let u = u.map_or_else(|| w.clone(), f32_prim);
        let x_w = empty(&x, vec![chunks, len, d], dtype);
        // Without the sum the kernel writes none: a one-entry stand-in.
        let sum = empty(
            &x,
            if with_sum { vec![chunks, d] } else { vec![1] },
            DType::F32,
        );
        let client = x.client.clone();
        let width = vector_width(&client, gcd(d, row_stride(&x)), dtype, DType::F32);
        let [first, second] = chunk_axes(chunks);
        let count = CubeCount::Static((d / width).div_ceil(COLUMN_UNITS) as u32, first, second);
        weighted_rows_kernel::launch::<R>(
            &client,
            count,
            CubeDim::new_1d(COLUMN_UNITS as u32),
            width,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            u.into_tensor_arg(),
            x_w.clone().into_tensor_arg(),
            sum.clone().into_tensor_arg(),
            with_sum,
            dtype.into(),
        );
        (wrap(x_w), with_sum.then(|| wrap(sum)))
    }

    fn mlstm_score_grads(
        inputs: ScoreGradInputs<Self>,
        scale: f64,
        work: DType,
    ) -> ScoreGrads<Self> {
        match mma_score_grads(&inputs, scale, work) {
            Some(grads) => grads,
            None => super::backward::score_grads(inputs, scale, work),
        }
    }

    fn mlstm_gradient_products(
        products: GradientProducts<Self>,
        scale: f64,
        out: DType,
    ) -> GradientRows<Self> {
        match mma_gradient_products(&products, scale, out) {
            Some(result) => result,
            None => super::backward::gradient_products(products, scale, out),
        }
    }

    fn mlstm_chunk_dots(
        a: Tensor<Self, 3>,
        b: Tensor<Self, 3>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        let [g, nc, e] = a.dims();
        let dtype = a.dtype();
        if !supported(dtype) || g * nc * e == 0 || g > MAX_CUBES || nc > MAX_CUBES {
            return super::backward::chunk_dots(a, b);
        }
        let b = if b.dtype() == dtype { b } else { b.cast(dtype) };
        let (a, b) = (prim(a), prim(b));
        let same = empty(&a, vec![g, nc], DType::F32);
        let next = empty(&a, vec![g, nc], DType::F32);
        let client = a.client.clone();
        let width = vector_width(&client, e, dtype, dtype);
        chunk_dots_kernel::launch::<R>(
            &client,
            CubeCount::Static(nc as u32, g as u32, 1),
            CubeDim::new_1d(DOT_UNITS as u32),
            width,
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            same.clone().into_tensor_arg(),
            next.clone().into_tensor_arg(),
            dtype.into(),
        );
        (wrap(same), wrap(next))
    }

    fn mlstm_step(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        i_preact: Tensor<Self, 2>,
        f_preact: Tensor<Self, 2>,
        state: Option<MlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, MlstmState<Self>), CellError> {
        let [b, nh, dqk] = q.dims();
        let dv = v.dims()[2];
        let shapes_agree = k.dims() == [b, nh, dqk]
            && v.dims() == [b, nh, dv]
            && i_preact.dims() == [b, nh]
            && f_preact.dims() == [b, nh];
        if !shapes_agree || b == 0 || nh == 0 || dqk == 0 || dv == 0 {
            // The reference names the offending field.
            return xlstm_cells::mlstm::step(q, k, v, i_preact, f_preact, state);
        }
        let state = MlstmState::given_or_zeros(state, [b, nh, dqk, dv], &q.device())?;
        let dtype = q.dtype();
        let state_dtype = state.c.dtype();
        let tiles = dv.div_ceil(TILE_V as usize);
        if !supported(dtype)
            || !supported(state_dtype)
            || tiles > MAX_CUBES
            || nh > MAX_CUBES
            || b > MAX_CUBES
        {
            return xlstm_cells::mlstm::step(q, k, v, i_preact, f_preact, Some(state));
        }
        let same = |t: Tensor<Self, 2>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let same3 = |t: Tensor<Self, 3>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let q = prim(q);
        let k = prim(same3(k));
        let v = prim(same3(v));
        let i_pre = prim(same(i_preact));
        let f_pre = prim(same(f_preact));
        let c = prim(state.c);
        let n = prim(state.n.cast(state_dtype));
        let m = prim(state.m.cast(state_dtype));
        let h = empty(&q, vec![b, nh, dv], dtype);
        let n_out = empty(&q, vec![b, nh, dqk], state_dtype);
        let m_out = empty(&q, vec![b, nh], state_dtype);
        let client = q.client.clone();
        let width = vector_width(&client, dv, dtype, state_dtype);
        // A state the caller no longer holds is updated in place (`c_out` aliases input 5).
        let in_place = c.can_mut();
        let c_out = if in_place {
            c.clone()
        } else {
            empty(&q, vec![b, nh, dqk, dv], state_dtype)
        };
        let c_out_arg = if in_place {
            c.as_tensor_alias(5)
        } else {
            c_out.clone().into_tensor_arg()
        };
        mlstm_step_kernel::launch::<R>(
            &client,
            CubeCount::Static(
                dv.div_ceil(width * TILE_V as usize) as u32,
                nh as u32,
                b as u32,
            ),
            CubeDim::new_2d(TILE_V, ROWS),
            width,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            i_pre.into_tensor_arg(),
            f_pre.into_tensor_arg(),
            c.into_tensor_arg(),
            n.into_tensor_arg(),
            m.into_tensor_arg(),
            h.clone().into_tensor_arg(),
            c_out_arg,
            n_out.clone().into_tensor_arg(),
            m_out.clone().into_tensor_arg(),
            1.0 / (dqk as f32).sqrt(),
            EPS as f32,
            [dtype.into(), state_dtype.into()],
        );
        Ok((
            wrap(h),
            MlstmState {
                c: wrap(c_out),
                n: wrap(n_out),
                m: wrap(m_out),
            },
        ))
    }
}
