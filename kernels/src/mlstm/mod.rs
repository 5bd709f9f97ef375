//! The mLSTM chunkwise form and recurrent step as backend primitives.
//!
//! With the `cube` feature (turned on by `wgpu` / `cuda`), burn's cube backends run fused
//! kernels: the generation step in one launch (`step_kernel.rs`) and the chunkwise forward in
//! two (`chunk_kernel.rs`, TFLA-style). Other backends, and shapes or float types the kernels
//! do not take, use the tensor-op reference of `xlstm_cells::mlstm`.

mod autodiff;
mod backward;
#[cfg(feature = "cube")]
mod chunk_gates_kernel;
#[cfg(feature = "cube")]
mod chunk_kernel;
mod chunk_matmul;
mod chunked;
#[cfg(feature = "cube")]
mod combine_kernel;
mod cpu;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cube")]
mod cube_matmul;
#[cfg(feature = "cube")]
mod dots_kernel;
#[cfg(feature = "cube")]
mod forward_gates_kernel;
#[cfg(feature = "cube")]
mod gate_input_grads_kernel;
#[cfg(feature = "cube")]
mod gate_kernel;
mod gates;
#[cfg(feature = "cube")]
mod gradient_mma_kernel;
#[cfg(feature = "cube")]
mod mma_gate_matrix;
#[cfg(feature = "cube")]
mod mma_tiles;
#[cfg(feature = "cube")]
mod output_mma_kernel;
#[cfg(feature = "cube")]
mod rows_kernel;
#[cfg(feature = "cube")]
mod scan_kernel;
#[cfg(feature = "cube")]
mod score_grads_mma_kernel;
#[cfg(feature = "cube")]
mod state_mma_kernel;
#[cfg(feature = "cube")]
mod state_weights_kernel;
#[cfg(feature = "cube")]
mod step_kernel;

pub use backward::{
    GateGradTerms, GradientProducts, GradientRows, Layout, OutputRowGrads, ScoreGradInputs,
    ScoreGrads,
};
pub use chunk_matmul::{chunkwise_matmul, ForwardGates};
pub use chunked::ChunkGates;
#[cfg(feature = "cube")]
pub use cube::DEFAULT_CHUNK;
pub use gates::GateMatrix;

use burn::backend::NdArray;
use burn::tensor::{backend::Backend, DType, Tensor};
use xlstm_cells::mlstm::{MlstmInputs, MlstmState};
use xlstm_cells::CellError;

/// The chunk-boundary states of one chunkwise forward, kept for its backward, which then does
/// not recompute them (the tensor-core schedule keeps them: their recompute was ≈ 3.7 ms of the
/// 31.6 ms forward + backward at B8 NH8 S8192 DQK256 DV512).
#[derive(Debug, Clone)]
pub struct ChunkStates<B: Backend> {
    /// `C` before every chunk `[B, NH, NC, DQK, DV]` (the inputs' float type).
    pub c_start: Tensor<B, 5>,
    /// `C` after the last chunk `[B, NH, DQK, DV]`, f32.
    pub c_end: Tensor<B, 4>,
    /// `n` before every chunk `[B, NH, NC, DQK]`, f32.
    pub n_start: Tensor<B, 4>,
    /// `n` after the last chunk `[B, NH, DQK]`, f32.
    pub n_end: Tensor<B, 3>,
}

/// The state a recurrence over chunks starts from ([`MlstmBackend::mlstm_chunk_states`]):
/// `c [B, NH, DQK, DV]` and `n [B, NH, DQK]`, f32.
#[derive(Debug, Clone)]
pub struct StateStart<B: Backend> {
    pub c: Tensor<B, 4>,
    pub n: Tensor<B, 3>,
}

impl<B: Backend> ChunkStates<B> {
    /// Batch entries `first..first + n`.
    pub(crate) fn narrow_batch(&self, first: usize, n: usize) -> Self {
        Self {
            c_start: self.c_start.clone().narrow(0, first, n),
            c_end: self.c_end.clone().narrow(0, first, n),
            n_start: self.n_start.clone().narrow(0, first, n),
            n_end: self.n_end.clone().narrow(0, first, n),
        }
    }
}

/// The mLSTM primitives; see [`xlstm_cells::mlstm`] for the math, shapes and errors. The
/// defaults are those tensor-op references.
pub trait MlstmBackend: Backend {
    /// Whether `Autodiff<Self>` runs [`Self::mlstm_chunkwise`] with tracked inputs as one
    /// autodiff node whose backward is [`Self::mlstm_chunkwise_backward`] (the cube backends,
    /// whose forward is a kernel), rather than differentiating the reference's tensor ops.
    const CHUNKWISE_NODE: bool = false;

    /// The largest buffer the device allocates, in bytes: the chunkwise schedules split the
    /// batch so that no chunk-state stack exceeds it. Unbounded by default; the cube backends
    /// report their runtime's (wgpu: the storage-binding limit, under 2 GiB on the H200's
    /// Vulkan driver, where a 2 GiB stack failed to allocate).
    fn mlstm_max_buffer_bytes(_device: &Self::Device) -> usize {
        usize::MAX
    }

    /// Chunkwise form over a sequence: `h [B, NH, S, DV]` and the final state.
    fn mlstm_chunkwise(
        x: &MlstmInputs<Self>,
        state: Option<MlstmState<Self>>,
        chunk_size: usize,
    ) -> Result<(Tensor<Self, 4>, MlstmState<Self>), CellError> {
        xlstm_cells::mlstm::chunkwise(x, state, chunk_size)
    }

    /// [`Self::mlstm_chunkwise`], and the chunk-boundary states where the schedule has them at
    /// hand (for [`Self::mlstm_chunkwise_backward`]; the default keeps none).
    #[allow(clippy::type_complexity)]
    fn mlstm_chunkwise_keeping_states(
        x: &MlstmInputs<Self>,
        state: Option<MlstmState<Self>>,
        chunk_size: usize,
    ) -> Result<(Tensor<Self, 4>, MlstmState<Self>, Option<ChunkStates<Self>>), CellError> {
        Self::mlstm_chunkwise(x, state, chunk_size).map(|(h, end)| (h, end, None))
    }

    /// Gradients of [`Self::mlstm_chunkwise`] from `state` (the zero state where the forward had
    /// none), given its output `h [B, NH, S, DV]` and the chunk-boundary states it kept (else
    /// they are recomputed): `dh` (like `h`) and `dstate` are the gradients of its outputs.
    /// Returns the gradients of the five inputs and of the three state tensors, each in its
    /// tensor's float type. The default is TFLA's backward in tensor ops (`backward.rs`), memory
    /// O(S · (chunk + DQK · DV / chunk)).
    fn mlstm_chunkwise_backward(
        x: &MlstmInputs<Self>,
        state: MlstmState<Self>,
        chunk_size: usize,
        h: Tensor<Self, 4>,
        states: Option<ChunkStates<Self>>,
        dh: Tensor<Self, 4>,
        dstate: MlstmState<Self>,
    ) -> (MlstmInputs<Self>, MlstmState<Self>) {
        let work = DType::F32;
        backward::chunkwise_backward(x, state, chunk_size, h, states, dh, dstate, work)
    }

    /// The backward's first step through the outputs, row by row ([`OutputRowGrads`]), from
    /// `dh, h [R, DV]` (one float type each) and, f32 `[R]`, the normaliser's inner products
    /// `qn`, the stabilisers `stab` and the row maxima of `log D` `row_max`: with
    /// `den = max(|qn|, e^{-stab}) + eps` and `dot = dh·h`, `dnum = dh / den` in `work`, `dqn`
    /// and the stabiliser's gradient `-dot·eps/den`, sent to the row maximum or to `m₀ + F_t`,
    /// whichever is the stabiliser. The cube backends do it in one pass.
    fn mlstm_backward_rows(
        dh: Tensor<Self, 2>,
        h: Tensor<Self, 2>,
        qn: Tensor<Self, 1>,
        stab: Tensor<Self, 1>,
        row_max: Tensor<Self, 1>,
        work: DType,
    ) -> OutputRowGrads<Self> {
        backward::backward_rows(dh, h, qn, stab, row_max, work)
    }

    /// The gates' gradients from the backward's terms within each chunk ([`GateGradTerms`]):
    /// `d log w_s = k_dot_s w_s scale` (+ `d_loc` at `w_arg`), `dĩ_s = cols_s + d log w_s`,
    /// `d log f_s = Σ_{u≥s}(rows_u - cols_u + dlog_start_u) + Σ_{u<s} d log w_u + d_dec`, and
    /// `df̃ = d log f · σ(-f̃)`. Returns `(dĩ, df̃)` `[B, NH, S]` (the chunks' padding tokens
    /// dropped), `dĩ` in `i_dtype` and `df̃` in `f_preact`'s float type. The cube backends do it
    /// in one pass.
    fn mlstm_gate_input_grads(
        terms: GateGradTerms<Self>,
        scale: f64,
        f_preact: Tensor<Self, 3>,
        i_dtype: DType,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        backward::gate_input_grads(terms, scale, f_preact, i_dtype)
    }

    /// The backward's last step for `dq` and `dk`, row by row: with `u = b + s ⊗ c` (row `r`
    /// takes `c[r / len]`), `out = (a + t ⊗ u) · scale` in `out` and `dot = x·u` per row (f32);
    /// `a, b [R, D]`, `c [R / len, D]`, `s, t [R]` f32 and `x [R, D]` of any float type. The
    /// cube backends do it in one pass.
    #[allow(clippy::too_many_arguments)]
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
        backward::gradient_rows(a, b, c, s, t, x, scale, len, out)
    }

    /// The backward's `[L, L]` step of every chunk ([`ScoreGradInputs`], [`ScoreGrads`]): the
    /// gate matrix as the forward formed it, back through the outputs (`dnum = dh / den`,
    /// `dqn`, the stabiliser's gradient), `dS = dP ∘ A` with `dP = dnum Vᵀ + dqn 1ᵀ` and the row
    /// and column sums of `d log D`. The default is `Q Kᵀ`, [`Self::mlstm_gate_matrix`],
    /// [`Self::mlstm_backward_rows`], `dnum Vᵀ` and [`Self::mlstm_gate_grads`]; the cube
    /// backends do it in one kernel on the tensor cores where they can
    /// (`score_grads_mma_kernel.rs`).
    fn mlstm_score_grads(
        inputs: ScoreGradInputs<Self>,
        scale: f64,
        work: DType,
    ) -> ScoreGrads<Self> {
        backward::score_grads(inputs, scale, work)
    }

    /// The backward's gradient rows of every chunk (`dq`, `dk`, `dv`; [`GradientProducts`]):
    /// `out = scale (M X + α ∘ U)` `[B, NH, NC, L, D]` in `out`, with `U = Y Z + β zᵀ`, and
    /// where `dot_with` is given `dot = W·U` per row `[B, NH, NC, L]` (f32). The default is two
    /// [`Self::mlstm_matmul`] products and [`Self::mlstm_gradient_rows`]; the cube backends do
    /// it in one kernel on the tensor cores where they can (`gradient_mma_kernel.rs`).
    fn mlstm_gradient_products(
        products: GradientProducts<Self>,
        scale: f64,
        out: DType,
    ) -> GradientRows<Self> {
        backward::gradient_products(products, scale, out)
    }

    /// The gate matrix of every chunk and the parts of its normaliser (`gates.rs`): from
    /// `scores [G, L, L]` (`q_t·k_s`, f32), the chunk's `log_f, log_i [G, L]` (`log σ(f̃)` and
    /// `ĩ`, f32; padding tokens `0` and `M_EMPTY`), `log_start [G, L]` (`m₀ + F_t`, f32), the
    /// queries `q [G, L, DQK]` (any float type) and the chunk-start `n_start [G, DQK]`:
    /// `P = scores · A · scale` in `out` (`[G, 2L, L]` with its rest below where `split`), the row
    /// maxima of `log D`, the stabilisers, the start state's factors and the normaliser's inner
    /// products `Σ_s P_ts + g_t q_t·n₀` ([`GateMatrix`]). The cube backends do it in one pass.
    #[allow(clippy::too_many_arguments)]
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
        gates::gate_matrix(
            scores, log_f, log_i, log_start, q, n_start, scale, out, split,
        )
    }

    /// The backward through the gate matrix of every chunk (`gates.rs`): from `scores` and
    /// `dpv [G, L, L]` (`dnum_t·v_s`), `log_f, log_i`, the row stabilisers `stab`, `dqn` and
    /// `dstab [G, L]` (the stabiliser's gradient where a row's maximum of `log D` takes it, else
    /// 0), all f32: `dS = (dpv + dqn) ∘ A` in `out`, and the row and column sums `[G, L]` of
    /// `d log D = (dpv + dqn) ∘ P + dstab` (at each row's first maximum). The cube backends do
    /// it in one pass.
    #[allow(clippy::too_many_arguments)]
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
        gates::gate_grads(scores, dpv, log_f, log_i, stab, dqn, dstab, scale, out)
    }

    /// `t [.., D]` with its leading dims merged or split into `shape` (`D` last), as `reshape`,
    /// for the row kernels' operands: where `t` is row-major with padded rows (burn's default
    /// layout on CUDA pads, e.g., rows of 192 bf16 entries to 256), the cube backends give a
    /// view with the padded row stride, which those kernels read, where burn's reshape copies.
    fn mlstm_rows<const D: usize, const E: usize>(
        t: Tensor<Self, D>,
        shape: [usize; E],
    ) -> Tensor<Self, E> {
        t.reshape(shape)
    }

    /// The rows of every chunk times a weight per row: `x_w = x ⊙ w` in `x`'s float type
    /// (`x [G, L, D]` of any float type, `w [G, L]` f32) and, where `u [G, L]` is given, the
    /// weighted sum of the rows `Σ_s u_s x_s` `[G, D]` in f32. The cube backends do it in one
    /// pass.
    fn mlstm_weighted_rows(
        x: Tensor<Self, 3>,
        w: Tensor<Self, 2>,
        u: Option<Tensor<Self, 2>>,
    ) -> (Tensor<Self, 3>, Option<Tensor<Self, 2>>) {
        backward::weighted_rows(x, w, u)
    }

    /// The linear recurrence over chunks: `x ← a_c x + b_c` from `x0 [G, E]`, over
    /// `c = 0..NC` (`reverse` false) or `NC-1..=0`, with `a [G, NC]` and `x0` f32 and
    /// `b [G, NC, E]` of any float type (`x` is f32 throughout). Returns `x` before each step
    /// `[G, NC, E]` in `b`'s float type and after the last `[G, E]` in f32.
    fn mlstm_chunk_scan(
        a: Tensor<Self, 2>,
        b: Tensor<Self, 3>,
        x0: Tensor<Self, 2>,
        reverse: bool,
    ) -> (Tensor<Self, 3>, Tensor<Self, 2>) {
        backward::chunk_scan(a, b, x0, reverse)
    }

    /// `lhs @ rhs` over the last two dims (leading dims batched, equal), accumulated in f32
    /// from operands of one float type, the result in `out`. The default multiplies in f32;
    /// the cube backends put half-type operands on tensor cores.
    fn mlstm_matmul(lhs: Tensor<Self, 5>, rhs: Tensor<Self, 5>, out: DType) -> Tensor<Self, 5> {
        backward::matmul_in_f32(lhs, rhs, out)
    }

    /// The gates of every chunk of `len` tokens from the pre-activations `ĩ, f̃ [B, NH, S]` (one
    /// float type): `ĩ`, `log σ(f̃)`, the chunk-local sums `F_t` and `ĩ_s + Σ_{u>s} log f_u`,
    /// each `[B, NH, ⌈S / len⌉, len]` in f32, the last chunk padded with tokens that leave the
    /// memory as it is (`ĩ = M_EMPTY`, `log f = 0`). The cube backends do it in one pass.
    fn mlstm_chunk_gates(
        i_preact: Tensor<Self, 3>,
        f_preact: Tensor<Self, 3>,
        len: usize,
    ) -> ChunkGates<Self> {
        chunked::chunk_gates(i_preact, f_preact, len)
    }

    /// Everything the chunkwise forward takes from the gates ([`ForwardGates`]), from the
    /// pre-activations `ĩ, f̃ [B, NH, S]` (one float type) in chunks of `len` tokens and the
    /// initial stabiliser `m0 [B, NH]` (f32; 0 where `None`): the chunks' `ĩ` and `log σ(f̃)`,
    /// `m₀ + F_t`, the keys' weights in the chunk-boundary states (`scale` included), the
    /// states' decay per chunk and the final stabiliser. The default is
    /// [`Self::mlstm_chunk_gates`], [`Self::mlstm_stabiliser_scan`],
    /// [`Self::mlstm_state_weights`] and a sum; the cube backends do it in one launch.
    fn mlstm_forward_gates(
        i_preact: Tensor<Self, 3>,
        f_preact: Tensor<Self, 3>,
        m0: Option<Tensor<Self, 2>>,
        len: usize,
        scale: f64,
    ) -> ForwardGates<Self> {
        chunk_matmul::forward_gates(i_preact, f_preact, m0, len, scale)
    }

    /// The keys' weights in the chunk-boundary states (the key scale included):
    /// `w_s = e^{log w_s - m_loc} · gain · scale` with `log_w [B, NH, NC, L]` and per chunk
    /// `m_loc` (`max_s log w_s`) and `gain` (`e^{m_loc - m₁}`) `[B, NH, NC]`, all f32. The cube
    /// backends do it in one pass.
    fn mlstm_state_weights(
        log_w: Tensor<Self, 4>,
        m_loc: Tensor<Self, 3>,
        gain: Tensor<Self, 3>,
        scale: f64,
    ) -> Tensor<Self, 4> {
        chunk_matmul::state_weights(log_w, m_loc, gain, scale)
    }

    /// The stabiliser of every chunk boundary: from `m = m0 [G]`, per chunk `c`,
    /// `m₁ = max(F_L + m, m_loc)` with `f_last [G, NC]` (`F_L`, the chunk's sum of `log f`) and
    /// `m_loc [G, NC]` (`max_s(ĩ_s + Σ_{u>s} log f_u)`), all f32. Returns `m` before every chunk and
    /// after the last `[G, NC + 1]`, `e^{F_L+m-m₁}` and `e^{m_loc-m₁}` `[G, NC]`.
    fn mlstm_stabiliser_scan(
        f_last: Tensor<Self, 2>,
        m_loc: Tensor<Self, 2>,
        m0: Tensor<Self, 1>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>, Tensor<Self, 2>) {
        backward::stabiliser_scan(f_last, m_loc, m0)
    }

    /// The chunk-boundary states of the chunkwise form (eq. 19 summed over each chunk): from
    /// `start` ([`StateStart`], the zero state where `None`), per chunk `c` the updates
    /// `C ← a_c C + (w_c∘K)ᵀ V` and `n ← a_c n + Σ_s w_n,s k_s` with the chunk's keys
    /// `k [B, NH, NC, L, DQK]` and values `v [B, NH, NC, L, DV]` (one float type), the keys'
    /// weights in `C` and in `n`, `w_c` and `w_n [B, NH, NC, L]`, and `decay [B, NH, NC]` (f32);
    /// the weighted keys `w_c,s k_s` are rounded to the keys' type; over `c = 0..NC`, or `NC-1..=0`
    /// where `reverse` (the backward's state gradients: `dC ← a_c dC + (g∘Q)ᵀ dnum`,
    /// `dn ← a_c dn + Σ_t g_t dqn_t q_t`). Returns `C` before every chunk's update
    /// `[B, NH, NC, DQK, DV]` in `k`'s float type and after the last update `[B, NH, DQK, DV]`,
    /// and `n` likewise, f32. The default is [`Self::mlstm_weighted_rows`], a batched product and
    /// [`Self::mlstm_chunk_scan`] (on the cube backends, the product on tensor cores for half
    /// types and the scan one kernel; where the device has `mma` for the half type, one fused
    /// kernel, `state_mma_kernel.rs`, unless `XLSTM_MLSTM_FUSED_STATES=0`).
    #[allow(clippy::too_many_arguments)]
    fn mlstm_chunk_states(
        k: Tensor<Self, 5>,
        w_c: Tensor<Self, 4>,
        w_n: Tensor<Self, 4>,
        v: Tensor<Self, 5>,
        decay: Tensor<Self, 3>,
        start: Option<StateStart<Self>>,
        reverse: bool,
    ) -> ChunkStates<Self> {
        chunk_matmul::chunk_states(k, w_c, w_n, v, decay, start, reverse)
    }

    /// The outputs of every chunk from its start state (eq. 21 within a chunk): `q, k
    /// [B, NH, NC, L, DQK]` and `v [B, NH, NC, L, DV]` of one float type, `log_f` and `log_i`
    /// `[B, NH, NC, L]` (`log σ(f̃)` and `ĩ`, f32; padding tokens carry `0` and `M_EMPTY`), the
    /// chunk-start `c_start [B, NH, NC, DQK, DV]` (the inputs' type) and
    /// `n_start [B, NH, NC, DQK]`, and `log_start [B, NH, NC, L]` (`m₀ + F_t`: the chunk-start
    /// stabiliser plus the chunk-local sums of `log f`, f32). Returns
    /// `h [B, NH, NC, L, DV]` in the inputs' type. The default is batched products through
    /// [`Self::mlstm_matmul`], [`Self::mlstm_gate_matrix`] and [`Self::mlstm_chunk_combine`]
    /// (on the cube backends, where the device has `mma` for the half type and `DV ≤ 256`, one
    /// fused kernel, `output_mma_kernel.rs`; `XLSTM_MLSTM_FUSED_OUTPUTS=0` turns it off, `=1`
    /// takes it for every `DV`).
    #[allow(clippy::too_many_arguments)]
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
        chunk_matmul::chunk_outputs(q, k, v, log_f, log_i, c_start, n_start, log_start)
    }

    /// The outputs of the chunkwise form from its parts, row by row (eq. 21 with the chunk's
    /// start state): `h = (num + g qc) / (max(|qn|, e^{-stab}) + eps)` with `num [G, L, DV]`
    /// (or `[G, 2L, DV]`, whose two halves sum to it: the products of the split `P`),
    /// `qc [R = G·L, DV]` (f32, or both bf16) and `g, qn, stab [R]` (f32), in f32 arithmetic;
    /// `h [R, DV]` in `dtype`. The cube backends do it in one pass.
    fn mlstm_chunk_combine(
        num: Tensor<Self, 3>,
        qc: Tensor<Self, 2>,
        g: Tensor<Self, 1>,
        qn: Tensor<Self, 1>,
        stab: Tensor<Self, 1>,
        dtype: DType,
    ) -> Tensor<Self, 2> {
        chunk_matmul::chunk_combine(num, qc, g, qn, stab, dtype)
    }

    /// Per chunk, the inner products (summed in f32) of `a [G, NC, E]` with `b [G, NC, E]` at
    /// the same chunk and at the next one: `same [G, NC]` and `next [G, NC]`, `next` 0 for the
    /// last chunk. The cube backends read both once.
    fn mlstm_chunk_dots(
        a: Tensor<Self, 3>,
        b: Tensor<Self, 3>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        backward::chunk_dots(a, b)
    }

    /// One recurrent step: `q, k [B, NH, DQK]`, `v [B, NH, DV]`, gates `[B, NH]` →
    /// `h [B, NH, DV]` and the new state.
    fn mlstm_step(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        i_preact: Tensor<Self, 2>,
        f_preact: Tensor<Self, 2>,
        state: Option<MlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, MlstmState<Self>), CellError> {
        xlstm_cells::mlstm::step(q, k, v, i_preact, f_preact, state)
    }
}

/// `NdArray<f32>` runs the generation step as loops over the state (`cpu.rs`).
impl MlstmBackend for NdArray<f32> {
    fn mlstm_step(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        i_preact: Tensor<Self, 2>,
        f_preact: Tensor<Self, 2>,
        state: Option<MlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, MlstmState<Self>), CellError> {
        if cpu::takes(&q, state.as_ref()) {
            cpu::step(q, k, v, i_preact, f_preact, state)
        } else {
            xlstm_cells::mlstm::step(q, k, v, i_preact, f_preact, state)
        }
    }
}
impl MlstmBackend for NdArray<f64> {}
