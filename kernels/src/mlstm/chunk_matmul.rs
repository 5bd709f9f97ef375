//! The chunkwise mLSTM forward as batched matrix products: TFLA's algorithm (Beck et al. 2025)
//! written with the backend's ops, in three backend primitives: the gates with the stabiliser
//! over chunks ([`MlstmBackend::mlstm_forward_gates`]), the chunk-boundary states
//! ([`MlstmBackend::mlstm_chunk_states`]: `Kᵀ V` per chunk, then the linear scan
//! [`MlstmBackend::mlstm_chunk_scan`], likewise `n`) and the outputs of every chunk from its start state
//! ([`MlstmBackend::mlstm_chunk_outputs`]: `Q Kᵀ`, the gate matrix
//! [`MlstmBackend::mlstm_gate_matrix`], `(D∘P) V`, `Q C₀`, then
//! [`MlstmBackend::mlstm_chunk_combine`]). Their defaults here run the products through
//! [`MlstmBackend::mlstm_matmul`] on operands of the inputs' float type (on CUDA, bf16 and f16
//! go to tensor cores) with f32 results, except `Kᵀ V`, which feeds the chunk-boundary states
//! in the inputs' type. The gates are f32.
//!
//! The math is `xlstm_cells::mlstm`'s chunkwise form (see `chunk.rs` there): the gate matrix
//! sums `log f` over its ranges as `segment_sums` does, the state weights
//! `ĩ_s + Σ_{u>s} log f_u` are sums after each token (as the backward forms them); the
//! chunk-boundary states are kept in the inputs' float type between the scan and the output
//! products, as TFLA keeps them, and the final state is f32 throughout.

use burn::tensor::{backend::Backend, DType, Element, Tensor};
use xlstm_cells::mlstm::{MlstmInputs, MlstmState, EPS};
use xlstm_cells::CellError;
use xlstm_gating::normalizer;

use super::chunked::{batch_groups, chunks, ChunkGates};
use super::{ChunkStates, MlstmBackend, StateStart};

/// Bound on the chunk-boundary states (and their per-chunk increments) kept at once, in bytes;
/// a larger batch runs in groups of batch entries.
const STATES_BYTES: usize = 4 << 30;

/// `h [B, NH, S, DV]` and the final state of the chunkwise form with chunks of `chunk_size`
/// tokens (the last one padded with tokens that leave the memory as it is), from `state` or the
/// zero state. Errors name the offending field, as `xlstm_cells::mlstm::chunkwise`'s do.
pub fn chunkwise_matmul<B: MlstmBackend>(
    x: &MlstmInputs<B>,
    state: Option<MlstmState<B>>,
    chunk_size: usize,
) -> Result<(Tensor<B, 4>, MlstmState<B>), CellError> {
    chunkwise_matmul_keeping_states(x, state, chunk_size).map(|(h, end, _)| (h, end))
}

/// [`chunkwise_matmul`] and its chunk-boundary states, where the batch ran as one group (else
/// none: keeping every group's would mean concatenating the largest intermediate).
#[allow(clippy::type_complexity)]
pub(crate) fn chunkwise_matmul_keeping_states<B: MlstmBackend>(
    x: &MlstmInputs<B>,
    state: Option<MlstmState<B>>,
    chunk_size: usize,
) -> Result<(Tensor<B, 4>, MlstmState<B>, Option<ChunkStates<B>>), CellError> {
    let [b, nh, s, dqk, dv] = x.dims()?;
    if s == 0 || chunk_size == 0 {
        // The reference names the offending field.
        return xlstm_cells::mlstm::chunkwise(x, state, chunk_size).map(|(h, end)| (h, end, None));
    }
    if let Some(state) = &state {
        state.check(b, nh, dqk, dv)?;
    }
    let len = chunk_size.min(s);
    // Two stacks per entry (the `Kᵀ V` increments and the states), each under the device's
    // largest buffer.
    let stack = nh * s.div_ceil(len) * dqk * dv * x.q.dtype().size();
    let bound = STATES_BYTES.min(B::mlstm_max_buffer_bytes(&x.q.device()).saturating_mul(2));
    let groups = batch_groups(b, 2 * stack, bound);
    if groups.len() == 1 {
        let (h, end, kept) = group_forward(x, state, len);
        return Ok((h, end, Some(kept)));
    }
    let (mut hs, mut states) = (vec![], vec![]);
    for (first, n) in groups {
        let group_state = state.as_ref().map(|s| s.narrow_batch(first, n));
        let (h, st, _) = group_forward(&x.narrow_batch(first, n), group_state, len);
        hs.push(h);
        states.push(st);
    }
    Ok((Tensor::cat(hs, 0), MlstmState::cat_batch(states), None))
}

/// What the chunkwise forward takes from the gates ([`MlstmBackend::mlstm_forward_gates`]), in
/// chunks of `L` tokens, f32; padding tokens carry `ĩ = M_EMPTY` and `log f = 0`.
#[derive(Debug, Clone)]
pub struct ForwardGates<B: Backend> {
    /// `ĩ` (= `log i`) `[B, NH, NC, L]`.
    pub log_i: Tensor<B, 4>,
    /// `log f = log σ(f̃)` `[B, NH, NC, L]`.
    pub log_f: Tensor<B, 4>,
    /// `m₀ + F_t` `[B, NH, NC, L]`: the stabiliser before the chunk plus the chunk-local sums
    /// of `log f`.
    pub log_start: Tensor<B, 4>,
    /// The keys' weights in the chunk-boundary states, `w_s = e^{ĩ_s + F_L - F_s - m₁} · scale`
    /// `[B, NH, NC, L]`.
    pub w: Tensor<B, 4>,
    /// The states' decay over each chunk, `e^{F_L + m₀ - m₁}` `[B, NH, NC]`.
    pub decay: Tensor<B, 3>,
    /// The stabiliser after the last chunk `[B, NH]`.
    pub m_end: Tensor<B, 2>,
}

/// The tensor-op form of [`MlstmBackend::mlstm_forward_gates`]: the chunk gates, the stabiliser
/// scan, the keys' weights and `m₀ + F_t` through their own primitives.
pub(crate) fn forward_gates<B: MlstmBackend>(
    i_preact: Tensor<B, 3>,
    f_preact: Tensor<B, 3>,
    m0: Option<Tensor<B, 2>>,
    len: usize,
    scale: f64,
) -> ForwardGates<B> {
    let [b, nh, _] = i_preact.dims();
    let device = i_preact.device();
    let ChunkGates {
        log_i,
        log_f,
        f_cum,
        log_w,
        f_last,
        m_loc,
    } = B::mlstm_chunk_gates(i_preact, f_preact, len);
    let nc = log_i.dims()[2];
    let m0 = m0.map_or_else(
        || Tensor::<B, 1>::zeros([b * nh], &device).cast(DType::F32),
        |m| m.cast(DType::F32).reshape([b * nh]),
    );
    let (m_all, decay, gain) = B::mlstm_stabiliser_scan(
        f_last.reshape([b * nh, nc]),
        m_loc.clone().reshape([b * nh, nc]),
        m0,
    );
    let m_all = m_all.reshape([b, nh, nc + 1]); // m before every chunk and after the last
    ForwardGates {
        // w_s = e^{ĩ_s + F_L - F_s - m₁} / sqrt(DQK), as e^{… - m_loc} e^{m_loc - m₁}.
        w: B::mlstm_state_weights(log_w, m_loc, gain.reshape([b, nh, nc]), scale),
        log_start: m_all.clone().narrow(2, 0, nc).unsqueeze_dim::<4>(3) + f_cum,
        decay: decay.reshape([b, nh, nc]),
        m_end: m_all.narrow(2, nc, 1).reshape([b, nh]),
        log_i,
        log_f,
    }
}

/// [`chunkwise_matmul`] for one group of batch entries, `len ≤ S`, from `state` (the zero
/// state where `None`), and its chunk-boundary states.
fn group_forward<B: MlstmBackend>(
    x: &MlstmInputs<B>,
    state: Option<MlstmState<B>>,
    len: usize,
) -> (Tensor<B, 4>, MlstmState<B>, ChunkStates<B>) {
    let [b, nh, s, dqk, dv] = x.dims().expect("checked by the caller");
    let nc = s.div_ceil(len);
    let dtype = x.q.dtype();
    let key_scale = 1.0 / (dqk as f64).sqrt();
    let q = chunks(x.q.clone(), len, dtype); // [B, NH, NC, L, DQK]
    let k = chunks(x.k.clone(), len, dtype);
    let v = chunks(x.v.clone(), len, dtype); // [B, NH, NC, L, DV]
    let ForwardGates {
        log_i, // [B, NH, NC, L]
        log_f,
        log_start, // m₀ + F_t
        w,         // the keys' weights in C and n
        decay,     // [B, NH, NC]
        m_end,     // [B, NH]
    } = B::mlstm_forward_gates(
        x.i_preact.clone(),
        x.f_preact.clone(),
        state.as_ref().map(|s| s.m.clone()),
        len,
        key_scale,
    );
    let start = state.as_ref().map(|s| StateStart {
        c: s.c.clone().cast(DType::F32),
        n: s.n.clone().cast(DType::F32),
    });
    let kept = B::mlstm_chunk_states(k.clone(), w.clone(), w, v.clone(), decay, start, false);
    let h = B::mlstm_chunk_outputs(
        q,
        k,
        v,
        log_f,
        log_i,
        kept.c_start.clone(),
        kept.n_start.clone(),
        log_start,
    );
    let h = h.reshape([b, nh, nc * len, dv]).narrow(2, 0, s);
    // The final state in the given state's float types; the zero state's are the backend's
    // default float type.
    let default = B::FloatElem::dtype();
    let [c_type, n_type, m_type] = state
        .as_ref()
        .map_or([default; 3], |s| [s.c.dtype(), s.n.dtype(), s.m.dtype()]);
    let final_state = MlstmState {
        c: kept.c_end.clone().cast(c_type),
        n: kept.n_end.clone().cast(n_type),
        m: m_end.cast(m_type),
    };
    (h, final_state, kept)
}

/// The tensor-op form of [`MlstmBackend::mlstm_state_weights`].
pub(crate) fn state_weights<B: Backend>(
    log_w: Tensor<B, 4>,
    m_loc: Tensor<B, 3>,
    gain: Tensor<B, 3>,
    scale: f64,
) -> Tensor<B, 4> {
    (log_w - m_loc.unsqueeze_dim::<4>(3)).exp() * gain.unsqueeze_dim::<4>(3) * scale
}

/// The tensor-op form of [`MlstmBackend::mlstm_chunk_states`]: the weighted keys and their
/// sums for `n` in one pass, `(w∘K)ᵀ V` of every chunk as one batched product (in `k`'s float
/// type, as TFLA keeps the states), then the scans.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_states<B: MlstmBackend>(
    k: Tensor<B, 5>,
    w_c: Tensor<B, 4>,
    w_n: Tensor<B, 4>,
    v: Tensor<B, 5>,
    decay: Tensor<B, 3>,
    start: Option<StateStart<B>>,
    reverse: bool,
) -> ChunkStates<B> {
    let [b, nh, nc, len, dqk] = k.dims();
    let dv = v.dims()[4];
    let dtype = k.dtype();
    let StateStart { c: c0, n: n0 } = start.unwrap_or_else(|| StateStart {
        c: Tensor::<B, 4>::zeros([b, nh, dqk, dv], &k.device()).cast(DType::F32),
        n: Tensor::<B, 3>::zeros([b, nh, dqk], &k.device()).cast(DType::F32),
    });
    let flat = |t: Tensor<B, 4>| t.reshape([b * nh * nc, len]);
    let (k_w, k_sum) = B::mlstm_weighted_rows(
        B::mlstm_rows(k, [b * nh * nc, len, dqk]),
        flat(w_c),
        Some(flat(w_n)),
    );
    let k_w = k_w.reshape([b, nh, nc, len, dqk]);
    let kv = B::mlstm_matmul(k_w.swap_dims(3, 4), v, dtype); // [B, NH, NC, DQK, DV]
    let (c_start, c_end) = scan_chunks(decay.clone(), kv, c0, reverse);
    let (n_start, n_end) = scan_chunks(
        decay,
        k_sum.expect("asked for").reshape([b, nh, nc, dqk, 1]),
        n0.unsqueeze_dim::<4>(3),
        reverse,
    );
    ChunkStates {
        c_start,
        c_end,
        n_start: n_start.reshape([b, nh, nc, dqk]),
        n_end: n_end.reshape([b, nh, dqk]),
    }
}

/// [`MlstmBackend::mlstm_chunk_scan`] over per-head stacks: `x ← a_c x + b_c` with
/// `a [B, NH, NC]`, `b [B, NH, NC, D1, D2]` and `x0 [B, NH, D1, D2]` (f32). Returns `x` before
/// every step in `b`'s float type and after the last in f32.
pub(crate) fn scan_chunks<B: MlstmBackend>(
    a: Tensor<B, 3>,
    b: Tensor<B, 5>,
    x0: Tensor<B, 4>,
    reverse: bool,
) -> (Tensor<B, 5>, Tensor<B, 4>) {
    let [batch, nh, nc, d1, d2] = b.dims();
    let rows = batch * nh;
    let (out, last) = B::mlstm_chunk_scan(
        a.reshape([rows, nc]),
        b.reshape([rows, nc, d1 * d2]),
        x0.reshape([rows, d1 * d2]),
        reverse,
    );
    (
        out.reshape([batch, nh, nc, d1, d2]),
        last.reshape([batch, nh, d1, d2]),
    )
}

/// The tensor-op form of [`MlstmBackend::mlstm_chunk_outputs`]: `Q Kᵀ` through
/// [`MlstmBackend::mlstm_matmul`], the gate matrix `P = D∘(Q Kᵀ)/sqrt(DQK)` stabilised by its
/// row maxima and the start state's `m₀ + F_t` ([`MlstmBackend::mlstm_gate_matrix`]), the
/// products `P V` and `Q C₀`, then [`MlstmBackend::mlstm_chunk_combine`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_outputs<B: MlstmBackend>(
    q: Tensor<B, 5>,
    k: Tensor<B, 5>,
    v: Tensor<B, 5>,
    log_f: Tensor<B, 4>,
    log_i: Tensor<B, 4>,
    c_start: Tensor<B, 5>,
    n_start: Tensor<B, 4>,
    log_start: Tensor<B, 4>,
) -> Tensor<B, 5> {
    let [b, nh, nc, len, dqk] = q.dims();
    let dv = v.dims()[4];
    let dtype = q.dtype();
    let key_scale = 1.0 / (dqk as f64).sqrt();
    let chunks = b * nh * nc;
    let by_chunk = |t: Tensor<B, 4>| t.reshape([chunks, len]);
    let scores = B::mlstm_matmul(q.clone(), k.swap_dims(3, 4), DType::F32); // q_t·k_s

    // P = D∘(Q Kᵀ)/sqrt(DQK) as the sum of two operands of the inputs' type (its rounded value
    // and the rest, stacked): rounding it once to bf16 cost 4e-2 of relative error where the
    // terms of a row cancel; the split leaves 2⁻¹⁶ of it.
    let gates = B::mlstm_gate_matrix(
        scores.reshape([chunks, len, len]),
        by_chunk(log_f),
        by_chunk(log_i),
        by_chunk(log_start),
        B::mlstm_rows(q.clone(), [chunks, len, dqk]),
        n_start.reshape([chunks, dqk]),
        key_scale,
        dtype,
        dtype != DType::F32,
    );

    // P V as one product [P; rest] V where P was split (the combine sums the two halves).
    let p_rows = gates.p.dims()[1];
    let sums = sums_type(dtype);
    let num = B::mlstm_matmul(gates.p.reshape([b, nh, nc, p_rows, len]), v, sums);
    // The start state's terms with the exact q (the row factor g_t applied to the products).
    let qc = B::mlstm_matmul(q.clone(), c_start, sums);
    let rows = chunks * len;
    let row = |t: Tensor<B, 2>| t.reshape([rows]);
    B::mlstm_chunk_combine(
        num.reshape([chunks, p_rows, dv]),
        qc.reshape([rows, dv]),
        row(gates.gain),
        row(gates.qn),
        row(gates.stab),
        dtype,
    )
    .reshape([b, nh, nc, len, dv])
}

/// The float type of the products that are only added to another before their result is
/// rounded (the forward's `(D∘P) V` and `Q C₀`, the backward's two terms of `dv`): bf16 where
/// the work is bf16 (each is a sum accumulated in f32 and rounded once, like the result itself;
/// half the bytes written and read back), else f32 (f16's range is too short for sums of
/// products).
pub(crate) fn sums_type(dtype: DType) -> DType {
    if dtype == DType::BF16 {
        DType::BF16
    } else {
        DType::F32
    }
}

/// The tensor-op form of [`MlstmBackend::mlstm_chunk_combine`].
pub(crate) fn chunk_combine<B: Backend>(
    num: Tensor<B, 3>,
    qc: Tensor<B, 2>,
    g: Tensor<B, 1>,
    qn: Tensor<B, 1>,
    stab: Tensor<B, 1>,
    dtype: DType,
) -> Tensor<B, 2> {
    let [rows, dv] = qc.dims();
    let len = rows / num.dims()[0].max(1);
    let num = num.cast(DType::F32);
    let num = if num.dims()[1] == len {
        num
    } else {
        num.clone().narrow(1, 0, len) + num.narrow(1, len, len)
    };
    let (num, qc) = (num.reshape([rows, dv]), qc.cast(DType::F32));
    let num = num + qc * g.unsqueeze_dim::<2>(1);
    (num / normalizer(qn, stab, EPS).unsqueeze_dim::<2>(1)).cast(dtype)
}
