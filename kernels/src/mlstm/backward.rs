//! The gradients of the chunkwise mLSTM in tensor ops and backend primitives, the backward of
//! TFLA (Beck et al. 2025).
//!
//! It reads the inputs, the initial state, the forward's output `h` and the chunk-boundary
//! states where the forward kept them (else it recomputes them from the inputs), then runs the
//! chain rule of `xlstm_cells::mlstm`'s chunkwise form by hand: a reverse recurrence over the
//! chunks for the state gradients `dC, dn, dm`, and all chunks in parallel for `dq, dk, dv` and
//! the gate gradients.
//! Memory is O(S · (L + DQK · DV / L)): the chunk-boundary states and their gradients, and an
//! `[L, L]` matrix per chunk.
//!
//! Within a chunk (notation of the forward, `chunk_kernel.rs`): `A_ts = e^{log D_ts - stab_t}`,
//! `g_t = e^{m₀ + F_t - stab_t}`, `P = (Q Kᵀ) ∘ A`, `num_t = (P V)_t + g_t q_t C₀`,
//! `qn_t = Σ_s P_ts + g_t q_t·n₀`, `den_t = max(|qn_t|, e^{-stab_t}) + eps`, `h_t = num_t / den_t`.
//! Then, with `dot_t = dh_t·h_t`:
//! - `dnum_t = dh_t / den_t`, `dqn_t = -sign(qn_t) dot_t / den_t` where `|qn_t| ≥ e^{-stab_t}`
//!   (else 0: the normaliser's floor is taken);
//! - `dP = dnum Vᵀ + dqn 1ᵀ`, `dQ = (dP∘A) K + g (dnum C₀ᵀ + dqn n₀ᵀ)`, `dK = (dP∘A)ᵀ Q`,
//!   `dV = Pᵀ dnum`, `dC₀ += (g Q)ᵀ dnum`, `dn₀ += (g Q)ᵀ dqn`;
//! - the log weights: `d log D_ts = dP_ts P_ts`, `d(m₀ + F_t) = g_t (q_t C₀·dnum_t + dqn_t q_t·n₀)`;
//! - the stabiliser: every term scales with `e^{-stab_t}` except `eps`, so its total gradient is
//!   `-dot_t · eps / den_t`; it goes to the argument of the max, as burn's `max_dim`/`max_pair`
//!   send it (ties to the row maximum).
//!
//! Between chunks, `C₁ = e^{F_L+m₀-m₁} C₀ + Σ_s w_s k_s v_sᵀ` with `w_s = e^{ĩ_s+F_L-F_s-m₁}` and
//! `m₁ = max(F_L + m₀, max_s(ĩ_s + F_L - F_s))`; given `dC₁, dn₁, dm₁`:
//! `dm₁' = dm₁ - ⟨dC₁, C₁⟩ - ⟨dn₁, n₁⟩` (to the argument of the max),
//! `d(F_L+m₀) += e^{F_L+m₀-m₁}(⟨dC₁, C₀⟩ + ⟨dn₁, n₀⟩)`, `dC₀ += e^{F_L+m₀-m₁} dC₁`,
//! `dk_s += w_s (dC₁ v_s + dn₁)`, `dv_s += w_s dC₁ᵀ k_s`, `d log w_s = k_s·dk_s`.
//! The log weights are sums of `log σ(f̃_u)` over ranges of a chunk, so the forget-gate gradient
//! is a reverse cumulative sum of the row sums minus the column sums of `d log D` (plus the
//! boundary terms), times `σ(-f̃)`.

use burn::tensor::activation::sigmoid;
use burn::tensor::{backend::Backend, DType, Int, Tensor};
use xlstm_cells::mlstm::{MlstmInputs, MlstmState, EPS};

use super::chunk_matmul::scan_chunks;
use super::chunked::{batch_groups, chunks, reverse_cumsum, ChunkGates, Chunked};
use super::gates::one_hot;
use super::{ChunkStates, MlstmBackend, StateStart};

/// Bound on one stack of chunk-boundary states kept at once (bytes; four such `[NC, DQK, DV]`
/// stacks live together: the states, their increments, their gradients and the chunks' terms
/// of those); larger batches run in even groups. Half-type stacks (the tensor-core path) get
/// 4 GiB. f32 stacks get 1 GiB: f32 work is where there are no tensor cores (WGSL), and on the
/// H200's Vulkan 2.2 GB f32 stacks failed to allocate.
const fn states_bytes(work: DType) -> usize {
    match work {
        DType::F32 => 1 << 30,
        _ => 4 << 30,
    }
}

/// Gradients of `xlstm_cells::mlstm::chunkwise(x, Some(state), chunk_size)` given its output
/// `h [B, NH, S, DV]`, the chunk-boundary states it kept (if any) and the output gradients `dh`
/// (like `h`) and `dstate` (of the final state). Returns the gradients of the inputs and of the
/// initial state, each in the float type of its own tensor.
///
/// `work` is the float type of the large operands (`q, k, v, dh`, the chunk-boundary states
/// and their gradients) and of the products between them: f32, or the inputs' half type where
/// the device multiplies it on tensor cores. Gates, `[L, L]` matrices, row quantities and
/// inner products are f32 either way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunkwise_backward<B: MlstmBackend>(
    x: &MlstmInputs<B>,
    state: MlstmState<B>,
    chunk_size: usize,
    h: Tensor<B, 4>,
    states: Option<ChunkStates<B>>,
    dh: Tensor<B, 4>,
    dstate: MlstmState<B>,
    work: DType,
) -> (MlstmInputs<B>, MlstmState<B>) {
    let [b, nh, s, dqk, dv] = x.dims().expect("checked by the forward");
    let len = chunk_size.clamp(1, s);
    // Kept states are of the work type where they match this schedule's chunks.
    let states = states
        .filter(|kept| kept.c_start.dims()[2] == s.div_ceil(len) && kept.c_start.dtype() == work);
    let per_entry = nh * (s.div_ceil(len) + 1) * dqk * dv * work.size();
    // Each state stack (in the work type) under the device's largest buffer too.
    let largest = B::mlstm_max_buffer_bytes(&x.q.device());
    let groups = batch_groups(b, per_entry, states_bytes(work).min(largest));
    if groups.len() == 1 {
        return group_backward(x, state, len, h, states, dh, dstate, work);
    }
    let mut parts = vec![];
    for (first, n) in groups {
        parts.push(group_backward(
            &x.narrow_batch(first, n),
            state.narrow_batch(first, n),
            len,
            h.clone().narrow(0, first, n),
            states.as_ref().map(|kept| kept.narrow_batch(first, n)),
            dh.clone().narrow(0, first, n),
            dstate.narrow_batch(first, n),
            work,
        ));
    }
    let (dx, ds): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    (MlstmInputs::cat_batch(dx), MlstmState::cat_batch(ds))
}

/// [`chunkwise_backward`] for one group of batch entries, chunk size `len ≤ S`.
#[allow(clippy::too_many_arguments)]
fn group_backward<B: MlstmBackend>(
    x: &MlstmInputs<B>,
    state: MlstmState<B>,
    len: usize,
    h: Tensor<B, 4>,
    states: Option<ChunkStates<B>>,
    dh: Tensor<B, 4>,
    dstate: MlstmState<B>,
    work: DType,
) -> (MlstmInputs<B>, MlstmState<B>) {
    let [b, nh, s, dqk, dv] = x.dims().expect("checked by the forward");
    let nc = s.div_ceil(len);
    let dev = x.q.device();
    let scale = 1.0 / (dqk as f64).sqrt();
    let f32 = |t: Tensor<B, 5>| t.cast(DType::F32);
    let Chunked {
        q, // [B, NH, NC, L, DQK]
        k,
        v,     // [B, NH, NC, L, DV]
        gates, // [B, NH, NC, L] each
    } = Chunked::new(x, len, work);
    // The keys stay unscaled, as the forward multiplies them: the key scale 1/sqrt(DQK) enters
    // the f32 products and the state weights, so that a half work type does not round
    // k/sqrt(DQK) (it is not a power of two for DQK 24 or 32: the rounded scores flipped the
    // normaliser's max(|q·n|, e^{-m}) at a near tie and with it the gradient).
    let ChunkGates {
        log_i,
        log_f,
        f_cum,  // F_t
        log_w,  // ĩ_s + Σ_{u>s} log f_u: the chunk-boundary states' weights
        f_last, // F_L, [B, NH, NC]
        m_loc,  // max_s log w_s, [B, NH, NC]
    } = gates;

    // (The states themselves are the forward's where it kept them, else recomputed.)
    // The token of each chunk's max_s log w_s, where that maximum sends its gradient (burn's
    // argmax, as `max_dim_with_indices` takes it).
    let w_arg = log_w.clone().argmax(3); // [B, NH, NC, 1]

    // The stabilisers m, recurrently, then C and n as a linear scan over the chunks.
    let (m_all, decay, _) = B::mlstm_stabiliser_scan(
        f_last.clone().reshape([b * nh, nc]),
        m_loc.clone().reshape([b * nh, nc]),
        state.m.clone().cast(DType::F32).reshape([b * nh]),
    );
    let m_all = m_all.reshape([b, nh, nc + 1]); // m before every chunk and after the last
    let decay = decay.reshape([b, nh, nc]); // e^{F_L+m₀-m₁}

    // w_s = e^{ĩ_s + F_L - F_s - m₁}, the weight of token s in its chunk's end state.
    let w = (log_w - m_all.clone().narrow(2, 1, nc).unsqueeze_dim::<4>(3)).exp(); // [B, NH, NC, L]
    let w_keys = w.clone() * scale; // w_s / sqrt(DQK)

    // States of the work type (`b_c` of the work type in `scan_chunks`), those the forward kept
    // or recomputed; `x0` and the last state are f32.
    let ChunkStates {
        c_start,
        c_end,
        n_start,
        n_end,
    } = states.unwrap_or_else(|| {
        B::mlstm_chunk_states(
            k.clone(),
            w_keys.clone(),
            w_keys.clone(),
            v.clone(),
            decay.clone(),
            Some(StateStart {
                c: state.c.clone().cast(DType::F32),
                n: state.n.clone().cast(DType::F32),
            }),
            false,
        )
    });
    let m_start = m_all.clone().narrow(2, 0, nc);

    // The chunk's [L, L] step: the gate matrix as the forward formed it, back through the
    // outputs (dnum = dh / den, dqn and the stabiliser's gradient from dot_t = dh_t·h_t with
    // the forward's `h`, so neither `(D∘P) V` nor `Q C₀` is recomputed), dS and the sums of
    // d log D.
    let log_start = m_start.clone().unsqueeze_dim::<4>(3) + f_cum; // m₀ + F_t
    let ScoreGrads {
        p: p_w, // P in the work type
        ds,
        dnum: dnum_w,
        rows,
        cols,
        gain,
        dqn,
        dstab_to_start,
    } = B::mlstm_score_grads(
        ScoreGradInputs {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            h: chunks(h.clone(), len, h.dtype()),
            dh: chunks(dh.clone(), len, dh.dtype()),
            n_start: n_start.clone(),
            log_f,
            log_i,
            log_start,
        },
        scale,
        work,
    );
    let g = gain; // e^{m₀+F_t-stab_t}, [B, NH, NC, L]

    // dq = (dP∘A) K / sqrt(DQK) + g (dnum C₀ᵀ + dqn n₀ᵀ), and dg_t = q_t C₀·dnum_t + dqn_t q_t·n₀
    // as q_t·(dnum_t C₀ᵀ + dqn_t n₀) (the same rows); (a + (g / scale) u) · scale: the key scale
    // on the product only.
    let (dq, dg) = B::mlstm_gradient_products(
        GradientProducts {
            pairs: ds.clone(),
            pairs_layout: Layout::AsStored,
            x: k.clone(),
            y: dnum_w.clone(),
            z: c_start.clone(),
            z_layout: Layout::Transposed,
            alpha: g.clone() / scale,
            row_term: Some((dqn.clone(), n_start.clone())),
            dot_with: Some(q.clone()),
        },
        scale,
        x.q.dtype(),
    );
    let dlog_start = dg.expect("asked for") * g.clone() + dstab_to_start;
    let dm_intra = dlog_start.clone().sum_dim(3).reshape([b, nh, nc]);

    // Back through the chunk-boundary states, last chunk first: dC₀ = e^{F_L+m₀-m₁} dC₁ + (the
    // chunk's outputs' term (g∘Q)ᵀ dnum), dn₀ = e^{F_L+m₀-m₁} dn₁ + Σ_t g_t dqn_t q_t; dC₁ and
    // dn₁ of every chunk are kept.
    let ChunkStates {
        c_start: dc_end,
        c_end: dc0,
        n_start: dn_end,
        n_end: dn0,
    } = B::mlstm_chunk_states(
        q.clone(),
        g.clone(),
        g * dqn,
        dnum_w.clone(),
        decay.clone(),
        Some(StateStart {
            c: dstate.c.cast(DType::F32),
            n: dstate.n.cast(DType::F32),
        }),
        true,
    );
    // ⟨dC₁, C₀⟩ + ⟨dn₁, n₀⟩ and ⟨dC₁, C₁⟩ + ⟨dn₁, n₁⟩ of every chunk, in f32; C₁ is the next
    // chunk's C₀, or the final state.
    let flat = |t: Tensor<B, 5>| t.reshape([b * nh, nc, dqk * dv]);
    let (c_same, c_next) = B::mlstm_chunk_dots(flat(dc_end.clone()), flat(c_start.clone()));
    let with_start = c_same.reshape([b, nh, nc])
        + (dn_end.clone() * n_start.clone())
            .sum_dim(3)
            .reshape([b, nh, nc]);
    let dc_last = f32(dc_end.clone().narrow(2, nc - 1, 1)).reshape([b, nh, dqk, dv]);
    let with_end = (dc_last * c_end).sum_dim(3).sum_dim(2).reshape([b, nh, 1])
        + (dn_end.clone().narrow(2, nc - 1, 1).reshape([b, nh, dqk]) * n_end)
            .sum_dim(2)
            .reshape([b, nh, 1]);
    let with_next = if nc > 1 {
        let n_next = (dn_end.clone().narrow(2, 0, nc - 1) * n_start.narrow(2, 1, nc - 1))
            .sum_dim(3)
            .reshape([b, nh, nc - 1]);
        let inside = c_next.reshape([b, nh, nc]).narrow(2, 0, nc - 1) + n_next;
        Tensor::cat(vec![inside, with_end], 2)
    } else {
        with_end
    };
    // dm₀ = [m₁ from the decayed m₀] (dm₁ - ⟨dC₁, C₁⟩ - ⟨dn₁, n₁⟩) + decay ⟨dC₁, C₀⟩ + … +
    // (the chunk's outputs' term): linear in dm₁, so a scan too.
    let from_decay = (f_last + m_start.clone()).greater_equal(m_loc);
    let decay_term = decay * with_start;
    let beta = with_next
        .clone()
        .neg()
        .mask_fill(from_decay.clone().bool_not(), 0.0)
        + decay_term.clone()
        + dm_intra.clone();
    let alpha = from_decay.clone().float().cast(DType::F32);
    let (dm_end, dm0) = scan_chunks(
        alpha,
        beta.reshape([b, nh, nc, 1, 1]),
        dstate.m.cast(DType::F32).reshape([b, nh, 1, 1]),
        true,
    );
    let dm_new = dm_end.reshape([b, nh, nc]) - with_next; // d m₁ of every chunk
    let d_dec = dm_new.clone().mask_fill(from_decay.clone().bool_not(), 0.0) + decay_term;
    let d_loc = dm_new.mask_fill(from_decay, 0.0); // d max_s log w_s
    let (dc, dn, dm) = (dc0, dn0, dm0.reshape([b, nh]));

    // The chunks' own terms of their end states.
    // dk = (dP∘A)ᵀ Q + w (V dC₁ᵀ + dn₁) (then the key scale), and d log w_s = k_s·(the
    // state's term of dk_s).
    let (dk, k_dot) = B::mlstm_gradient_products(
        GradientProducts {
            pairs: ds,
            pairs_layout: Layout::Transposed,
            x: q,
            y: v,
            z: dc_end.clone(),
            z_layout: Layout::Transposed,
            alpha: w.clone(),
            row_term: Some((Tensor::ones([b, nh, nc, len], &dev), dn_end)),
            dot_with: Some(k.clone()),
        },
        scale,
        x.k.dtype(),
    );
    let k_dot = k_dot.expect("asked for");
    // dv = Pᵀ dnum + (w / sqrt(DQK)) K dC₁.
    let (dv_all, _) = B::mlstm_gradient_products(
        GradientProducts {
            pairs: p_w,
            pairs_layout: Layout::Transposed,
            x: dnum_w,
            y: k,
            z: dc_end,
            z_layout: Layout::AsStored,
            alpha: w_keys,
            row_term: None,
            dot_with: None,
        },
        1.0,
        x.v.dtype(),
    );

    // The gates: ĩ_s enters log D_{·s} and log w_s; log f_u every range sum that covers u.
    let (di, df) = B::mlstm_gate_input_grads(
        GateGradTerms {
            rows,
            cols,
            dlog_start,
            k_dot,
            w,
            w_arg: w_arg.reshape([b, nh, nc]),
            d_loc,
            d_dec,
        },
        scale,
        x.f_preact.clone(),
        x.i_preact.dtype(),
    );

    let out4 = |t: Tensor<B, 5>, d: usize, like: &Tensor<B, 4>| {
        t.reshape([b, nh, nc * len, d])
            .narrow(2, 0, s)
            .cast(like.dtype())
    };
    (
        MlstmInputs {
            q: out4(dq, dqk, &x.q),
            k: out4(dk, dqk, &x.k),
            v: out4(dv_all, dv, &x.v),
            i_preact: di,
            f_preact: df,
        },
        MlstmState {
            c: dc.cast(state.c.dtype()),
            n: dn.cast(state.n.dtype()),
            m: dm.cast(state.m.dtype()),
        },
    )
}

/// The backward's terms of the gates' gradients within each chunk, `[B, NH, NC, L]` f32 (per
/// chunk `[B, NH, NC]`), for [`MlstmBackend::mlstm_gate_input_grads`].
#[derive(Debug, Clone)]
pub struct GateGradTerms<B: Backend> {
    /// Row sums of `d log D` (row `t`: the ranges that end at `t`).
    pub rows: Tensor<B, 4>,
    /// Column sums of `d log D` (column `s`: the terms of `ĩ_s`).
    pub cols: Tensor<B, 4>,
    /// `d(m₀ + F_t)`, the gradient of each row's start term.
    pub dlog_start: Tensor<B, 4>,
    /// `k_s · (V dC₁ᵀ + dn₁)_s`, the state term of `dk_s` dotted with `k_s`.
    pub k_dot: Tensor<B, 4>,
    /// The state weights `w_s = e^{log w_s - m₁}` (without the key scale).
    pub w: Tensor<B, 4>,
    /// The token of each chunk's `max_s log w_s` `[B, NH, NC]`.
    pub w_arg: Tensor<B, 3, Int>,
    /// The gradient of that maximum `[B, NH, NC]`.
    pub d_loc: Tensor<B, 3>,
    /// The gradient of the chunk's `F_L` through its decay `[B, NH, NC]`.
    pub d_dec: Tensor<B, 3>,
}

/// The tensor-op form of [`MlstmBackend::mlstm_gate_input_grads`].
pub(crate) fn gate_input_grads<B: Backend>(
    terms: GateGradTerms<B>,
    scale: f64,
    f_preact: Tensor<B, 3>,
    i_dtype: DType,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
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
    let [b, nh, nc, len] = rows.dims();
    let s = f_preact.dims()[2];
    // d log w_s = k_s·(state term) w_s / sqrt(DQK), plus the maximum's gradient at its token.
    let dlog_w =
        k_dot * w * scale + one_hot(w_arg.unsqueeze_dim::<4>(3), len) * d_loc.unsqueeze_dim::<4>(3);
    let di = cols.clone() + dlog_w.clone();
    let dlog_f = reverse_cumsum(rows - cols + dlog_start)
        + (dlog_w.clone().cumsum(3) - dlog_w)
        + d_dec.unsqueeze_dim::<4>(3);
    let tokens = |t: Tensor<B, 4>| t.reshape([b, nh, nc * len]).narrow(2, 0, s);
    // d f̃ = d log f · σ(-f̃).
    let f_dtype = f_preact.dtype();
    let df = tokens(dlog_f) * sigmoid(f_preact.cast(DType::F32).neg());
    (tokens(di).cast(i_dtype), df.cast(f_dtype))
}

/// The inputs of [`MlstmBackend::mlstm_score_grads`], per chunk.
#[derive(Debug, Clone)]
pub struct ScoreGradInputs<B: Backend> {
    /// Queries and (unscaled) keys `[B, NH, NC, L, DQK]`, in the work type.
    pub q: Tensor<B, 5>,
    pub k: Tensor<B, 5>,
    /// Values, the forward's outputs and their gradients `[B, NH, NC, L, DV]`.
    pub v: Tensor<B, 5>,
    pub h: Tensor<B, 5>,
    pub dh: Tensor<B, 5>,
    /// The chunk-start `n₀ [B, NH, NC, DQK]`, f32.
    pub n_start: Tensor<B, 4>,
    /// `log f`, `ĩ` and `m₀ + F_t` `[B, NH, NC, L]`, f32.
    pub log_f: Tensor<B, 4>,
    pub log_i: Tensor<B, 4>,
    pub log_start: Tensor<B, 4>,
}

/// What [`MlstmBackend::mlstm_score_grads`] gives, per chunk.
#[derive(Debug, Clone)]
pub struct ScoreGrads<B: Backend> {
    /// `P = (Q Kᵀ)/√DQK ∘ A` `[B, NH, NC, L, L]`, in the work type.
    pub p: Tensor<B, 5>,
    /// `dS = dP ∘ A` `[B, NH, NC, L, L]`, in the work type.
    pub ds: Tensor<B, 5>,
    /// `dnum = dh / den` `[B, NH, NC, L, DV]`, in the work type.
    pub dnum: Tensor<B, 5>,
    /// Row and column sums of `d log D` (with the stabiliser's term at each row's maximum)
    /// `[B, NH, NC, L]`, f32.
    pub rows: Tensor<B, 4>,
    pub cols: Tensor<B, 4>,
    /// The start state's factor `g_t = e^{m₀+F_t-stab_t}`, f32.
    pub gain: Tensor<B, 4>,
    /// `dqn_t`, the gradient of the normaliser's inner product, f32.
    pub dqn: Tensor<B, 4>,
    /// The stabiliser's gradient where `m₀ + F_t` is the stabiliser (else 0), f32.
    pub dstab_to_start: Tensor<B, 4>,
}

/// The tensor-op form of [`MlstmBackend::mlstm_score_grads`]: `Q Kᵀ`, the gate matrix, the rows
/// through the outputs, `dnum Vᵀ` and the gate gradients, each a primitive of its own.
pub(crate) fn score_grads<B: MlstmBackend>(
    inputs: ScoreGradInputs<B>,
    scale: f64,
    work: DType,
) -> ScoreGrads<B> {
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
    let chunk_count = b * nh * nc;
    let token_rows = chunk_count * len;
    let mm = |lhs: Tensor<B, 5>, rhs: Tensor<B, 5>| B::mlstm_matmul(lhs, rhs, DType::F32);
    let by_chunk_row = |t: Tensor<B, 4>| t.reshape([chunk_count, len]);
    let by_matrix = |t: Tensor<B, 5>| t.reshape([chunk_count, len, len]);
    let by_row = |t: Tensor<B, 5>| B::mlstm_rows(t, [token_rows, dv]);
    let as_chunks = |t: Tensor<B, 2>| t.reshape([b, nh, nc, len]);
    let scores = mm(q.clone(), k.swap_dims(3, 4)); // q_t·k_s
    let gates = B::mlstm_gate_matrix(
        by_matrix(scores.clone()),
        by_chunk_row(log_f.clone()),
        by_chunk_row(log_i.clone()),
        by_chunk_row(log_start),
        B::mlstm_rows(q, [chunk_count, len, dqk]),
        n_start.reshape([chunk_count, dqk]),
        scale,
        work,
        false,
    );
    let per_token = |t: Tensor<B, 2>| t.reshape([token_rows]);
    let OutputRowGrads {
        dnum,
        dqn,
        dstab_to_max,
        dstab_to_start,
    } = B::mlstm_backward_rows(
        by_row(dh),
        by_row(h),
        per_token(gates.qn),
        per_token(gates.stab.clone()),
        per_token(gates.row_max),
        work,
    );
    let dnum = dnum.reshape([b, nh, nc, len, dv]);
    let dqn = dqn.reshape([chunk_count, len]);
    // dS = dP∘A with dP = dnum Vᵀ + dqn 1ᵀ, and the row and column sums of
    // d log D = dP∘P (+ dstab at each row's maximum where the row maximum is the stabiliser).
    let (ds, rows, cols) = B::mlstm_gate_grads(
        by_matrix(scores),
        by_matrix(mm(dnum.clone(), v.swap_dims(3, 4))),
        by_chunk_row(log_f),
        by_chunk_row(log_i),
        gates.stab,
        dqn.clone(),
        dstab_to_max.reshape([chunk_count, len]),
        scale,
        work,
    );
    ScoreGrads {
        p: gates.p.reshape([b, nh, nc, len, len]),
        ds: ds.reshape([b, nh, nc, len, len]),
        dnum,
        rows: as_chunks(rows),
        cols: as_chunks(cols),
        gain: as_chunks(gates.gain),
        dqn: as_chunks(dqn),
        dstab_to_start: dstab_to_start.reshape([b, nh, nc, len]),
    }
}

/// How a stored matrix multiplies: as stored, or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    AsStored,
    Transposed,
}

impl Layout {
    fn apply<B: Backend>(self, t: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Self::AsStored => t,
            Self::Transposed => t.swap_dims(3, 4),
        }
    }
}

/// The operands of [`MlstmBackend::mlstm_gradient_products`], per chunk:
/// `out = scale (M X + α ∘ U)` with `U = Y Z + β zᵀ`, and `dot = W·U` per row.
#[derive(Debug, Clone)]
pub struct GradientProducts<B: Backend> {
    /// The chunk's `[L, L]` matrix as stored `[B, NH, NC, L, L]` (`dS` or `P`, rows `t`), in
    /// the work type.
    pub pairs: Tensor<B, 5>,
    /// Whether `M` is `pairs` or its transpose.
    pub pairs_layout: Layout,
    /// `X [B, NH, NC, L, D]`, in the work type.
    pub x: Tensor<B, 5>,
    /// `Y [B, NH, NC, L, E]`, in the work type.
    pub y: Tensor<B, 5>,
    /// `Z` as stored: `[B, NH, NC, E, D]`, or `[B, NH, NC, D, E]` where `z_layout` is
    /// `Transposed`; in the work type.
    pub z: Tensor<B, 5>,
    /// Whether `Z` is `z` or its transpose.
    pub z_layout: Layout,
    /// `α [B, NH, NC, L]` f32.
    pub alpha: Tensor<B, 4>,
    /// `(β [B, NH, NC, L], z [B, NH, NC, D])` f32: the rank-one term of `U`, none if absent.
    pub row_term: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// `W [B, NH, NC, L, D]` (any float type): the rows dotted with `U`, if wanted.
    pub dot_with: Option<Tensor<B, 5>>,
}

/// What [`MlstmBackend::mlstm_gradient_products`] gives: the rows `[B, NH, NC, L, D]` and, where
/// asked, their dots `[B, NH, NC, L]`.
pub type GradientRows<B> = (Tensor<B, 5>, Option<Tensor<B, 4>>);

/// The tensor-op form of [`MlstmBackend::mlstm_gradient_products`]: two products in f32, then
/// the rows in one pass ([`MlstmBackend::mlstm_gradient_rows`]) where there is a row term and a
/// dot, else in tensor ops.
pub(crate) fn gradient_products<B: MlstmBackend>(
    products: GradientProducts<B>,
    scale: f64,
    out: DType,
) -> GradientRows<B> {
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
    let [b, nh, nc, len, d] = x.dims();
    let pair_term = B::mlstm_matmul(pairs_layout.apply(pairs), x, DType::F32);
    let state_term = B::mlstm_matmul(y, z_layout.apply(z), DType::F32);
    let rows = b * nh * nc * len;
    match (row_term, dot_with) {
        (Some((beta, z_row)), Some(w)) => {
            let (result, dot) = B::mlstm_gradient_rows(
                B::mlstm_rows(pair_term, [rows, d]),
                B::mlstm_rows(state_term, [rows, d]),
                z_row.reshape([b * nh * nc, d]),
                beta.reshape([rows]),
                alpha.reshape([rows]),
                B::mlstm_rows(w, [rows, d]),
                scale,
                len,
                out,
            );
            (
                result.reshape([b, nh, nc, len, d]),
                Some(dot.reshape([b, nh, nc, len])),
            )
        }
        (row_term, dot_with) => {
            let u = match row_term {
                Some((beta, z_row)) => {
                    state_term + beta.unsqueeze_dim::<5>(4) * z_row.unsqueeze_dim::<5>(3)
                }
                None => state_term,
            };
            let dot = dot_with.map(|w| {
                (w.cast(DType::F32) * u.clone())
                    .sum_dim(4)
                    .reshape([b, nh, nc, len])
            });
            let result = (pair_term + u * alpha.unsqueeze_dim::<5>(4)) * scale;
            (result.cast(out), dot)
        }
    }
}

/// The tensor-op form of [`MlstmBackend::mlstm_weighted_rows`].
pub(crate) fn weighted_rows<B: Backend>(
    x: Tensor<B, 3>,
    w: Tensor<B, 2>,
    u: Option<Tensor<B, 2>>,
) -> (Tensor<B, 3>, Option<Tensor<B, 2>>) {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let x_w = (x.clone() * w.unsqueeze_dim(2)).cast(dtype);
    let sum = u.map(|u| (x * u.unsqueeze_dim(2)).sum_dim(1).squeeze_dim(1));
    (x_w, sum)
}

/// The backward's first step through the outputs, per row `t`
/// ([`MlstmBackend::mlstm_backward_rows`]).
#[derive(Debug, Clone)]
pub struct OutputRowGrads<B: Backend> {
    /// `dnum_t = dh_t / den_t` `[R, DV]`, in the work type.
    pub dnum: Tensor<B, 2>,
    /// `dqn_t = -sign(qn_t) (dh_t·h_t) / den_t` where `|qn_t| ≥ e^{-stab_t}`, else 0 `[R]`, f32.
    pub dqn: Tensor<B, 1>,
    /// The stabiliser's gradient `-(dh_t·h_t) eps / den_t` where the row maximum of `log D` is
    /// the stabiliser, else 0 `[R]`, f32.
    pub dstab_to_max: Tensor<B, 1>,
    /// The same where `m₀ + F_t` is the stabiliser (it exceeds the row maximum), else 0.
    pub dstab_to_start: Tensor<B, 1>,
}

/// The tensor-op form of [`MlstmBackend::mlstm_backward_rows`].
pub(crate) fn backward_rows<B: Backend>(
    dh: Tensor<B, 2>,
    h: Tensor<B, 2>,
    qn: Tensor<B, 1>,
    stab: Tensor<B, 1>,
    row_max: Tensor<B, 1>,
    work: DType,
) -> OutputRowGrads<B> {
    let dh = dh.cast(DType::F32);
    let dot = (dh.clone() * h.cast(DType::F32)).sum_dim(1).squeeze_dim(1);
    let floor = stab.clone().neg().exp();
    let den = qn.clone().abs().max_pair(floor.clone()) + EPS;
    let on_qn = qn.clone().abs().greater_equal(floor);
    let dqn = (qn.sign() * dot.clone() / den.clone())
        .neg()
        .mask_fill(on_qn.bool_not(), 0.0);
    let dstab = dot.neg() * EPS / den.clone();
    let from_start = stab.greater(row_max);
    OutputRowGrads {
        dnum: (dh / den.unsqueeze_dim(1)).cast(work),
        dqn,
        dstab_to_max: dstab.clone().mask_fill(from_start.clone(), 0.0),
        dstab_to_start: dstab.mask_fill(from_start.bool_not(), 0.0),
    }
}

/// The tensor-op form of [`MlstmBackend::mlstm_gradient_rows`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gradient_rows<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    c: Tensor<B, 2>,
    s: Tensor<B, 1>,
    t: Tensor<B, 1>,
    x: Tensor<B, 2>,
    scale: f64,
    len: usize,
    out: DType,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let [rows, d] = b.dims();
    let c = c
        .unsqueeze_dim::<3>(1)
        .expand([rows / len, len, d])
        .reshape([rows, d]);
    let u = b + c * s.unsqueeze_dim(1);
    let dot = (x.cast(DType::F32) * u.clone()).sum_dim(1).squeeze_dim(1);
    (((a + u * t.unsqueeze_dim(1)) * scale).cast(out), dot)
}

/// The tensor-op form of [`MlstmBackend::mlstm_chunk_scan`]: one step per chunk.
pub(crate) fn chunk_scan<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 3>,
    x0: Tensor<B, 2>,
    reverse: bool,
) -> (Tensor<B, 3>, Tensor<B, 2>) {
    let [g, nc, e] = b.dims();
    let dtype = b.dtype();
    let b = b.cast(DType::F32);
    let mut x = x0;
    let mut out = vec![x.clone(); nc];
    for step in 0..nc {
        let c = if reverse { nc - 1 - step } else { step };
        out[c] = x.clone();
        x = x * a.clone().narrow(1, c, 1) + b.clone().narrow(1, c, 1).reshape([g, e]);
    }
    (Tensor::stack::<3>(out, 1).cast(dtype), x)
}

/// The tensor-op form of [`MlstmBackend::mlstm_chunk_dots`].
pub(crate) fn chunk_dots<B: Backend>(
    a: Tensor<B, 3>,
    b: Tensor<B, 3>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [g, nc, _] = a.dims();
    let (a, b) = (a.cast(DType::F32), b.cast(DType::F32));
    let same = (a.clone() * b.clone()).sum_dim(2).reshape([g, nc]);
    let last = Tensor::<B, 2>::zeros([g, 1], &a.device());
    let next = if nc > 1 {
        let inside = (a.narrow(1, 0, nc - 1) * b.narrow(1, 1, nc - 1))
            .sum_dim(2)
            .reshape([g, nc - 1]);
        Tensor::cat(vec![inside, last], 1)
    } else {
        last
    };
    (same, next)
}

/// The f32 form of [`MlstmBackend::mlstm_matmul`]: both operands in f32, the result in `out`.
pub(crate) fn matmul_in_f32<B: Backend>(
    lhs: Tensor<B, 5>,
    rhs: Tensor<B, 5>,
    out: DType,
) -> Tensor<B, 5> {
    lhs.cast(DType::F32).matmul(rhs.cast(DType::F32)).cast(out)
}

/// The tensor-op form of [`MlstmBackend::mlstm_stabiliser_scan`]: one step per chunk.
pub(crate) fn stabiliser_scan<B: Backend>(
    f_last: Tensor<B, 2>,
    m_loc: Tensor<B, 2>,
    m0: Tensor<B, 1>,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let [g, nc] = f_last.dims();
    let mut m = m0.reshape([g, 1]);
    let (mut ms, mut decays, mut gains) = (vec![m.clone()], vec![], vec![]);
    for chunk in 0..nc {
        let decayed = f_last.clone().narrow(1, chunk, 1) + m;
        let m_in = m_loc.clone().narrow(1, chunk, 1);
        m = decayed.clone().max_pair(m_in.clone());
        decays.push((decayed - m.clone()).exp());
        gains.push((m_in - m.clone()).exp());
        ms.push(m.clone());
    }
    (
        Tensor::cat(ms, 1),
        Tensor::cat(decays, 1),
        Tensor::cat(gains, 1),
    )
}

#[cfg(test)]
mod tests {
    use super::super::chunk_matmul::chunkwise_matmul_keeping_states;
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::TensorData;

    type R = NdArray<f32>;
    type A = Autodiff<R>;

    fn rand<B: Backend, const D: usize>(
        seed: &mut u64,
        shape: [usize; D],
        lo: f32,
        hi: f32,
    ) -> Tensor<B, D> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                lo + (hi - lo) * ((*seed >> 11) as f32 / (1u64 << 53) as f32)
            })
            .collect();
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    fn vals<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    fn rel(got: &[f32], want: &[f32]) -> f64 {
        let num: f64 = got
            .iter()
            .zip(want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    /// Every gradient against autodiff of the reference, on NdArray<f32>, from the matmul
    /// schedule's output, with its kept chunk-boundary states (odd cases) or recomputing them.
    #[test]
    fn matches_autodiff_of_the_reference() {
        for (case, &([b, nh, s, dqk, dv], chunk, with_state, f_lo)) in [
            ([1, 1, 1, 8, 8], 4, true, -3.0f32),
            ([2, 1, 7, 8, 12], 4, false, -3.0),
            ([1, 2, 33, 16, 8], 16, true, -3.0),
            ([1, 1, 65, 8, 16], 32, true, 2.0),
            ([2, 1, 100, 12, 6], 64, false, -3.0),
            ([1, 1, 40, 8, 8], 8, true, -40.0),
        ]
        .iter()
        .enumerate()
        {
            let mut seed = 0x1234_5678_9abc_def1 ^ case as u64;
            let q: Tensor<A, 4> = rand(&mut seed, [b, nh, s, dqk], -1.7, 1.7).require_grad();
            let k: Tensor<A, 4> = rand(&mut seed, [b, nh, s, dqk], -1.7, 1.7).require_grad();
            let v: Tensor<A, 4> = rand(&mut seed, [b, nh, s, dv], -1.7, 1.7).require_grad();
            let i: Tensor<A, 3> = rand(&mut seed, [b, nh, s], -4.0, 4.0).require_grad();
            let f: Tensor<A, 3> = rand(&mut seed, [b, nh, s], f_lo, 8.0).require_grad();
            let state = MlstmState::<A> {
                c: rand(&mut seed, [b, nh, dqk, dv], -0.5, 0.5).require_grad(),
                n: rand(&mut seed, [b, nh, dqk], -0.5, 0.5).require_grad(),
                m: rand(&mut seed, [b, nh], -2.0, 2.0).require_grad(),
            };
            let wh: Tensor<A, 4> = rand(&mut seed, [b, nh, s, dv], -1.0, 1.0);
            let wc: Tensor<A, 4> = rand(&mut seed, [b, nh, dqk, dv], -1.0, 1.0);
            let wn: Tensor<A, 3> = rand(&mut seed, [b, nh, dqk], -1.0, 1.0);
            let wm: Tensor<A, 2> = rand(&mut seed, [b, nh], -1.0, 1.0);
            let x = MlstmInputs {
                q,
                k,
                v,
                i_preact: i,
                f_preact: f,
            };
            let st = with_state.then(|| state.clone());
            let (h, end) = xlstm_cells::mlstm::chunkwise(&x, st, chunk).unwrap();
            let loss = (h * wh.clone()).sum()
                + (end.c * wc.clone()).sum()
                + (end.n * wn.clone()).sum()
                + (end.m * wm.clone()).sum();
            let grads = loss.backward();

            let inner = MlstmInputs {
                q: x.q.clone().inner(),
                k: x.k.clone().inner(),
                v: x.v.clone().inner(),
                i_preact: x.i_preact.clone().inner(),
                f_preact: x.f_preact.clone().inner(),
            };
            let state0 = if with_state {
                MlstmState {
                    c: state.c.clone().inner(),
                    n: state.n.clone().inner(),
                    m: state.m.clone().inner(),
                }
            } else {
                MlstmState::zeros(b, nh, dqk, dv, &Default::default())
            };
            let dstate = MlstmState {
                c: wc.inner(),
                n: wn.inner(),
                m: wm.inner(),
            };
            // Odd cases: `h` and the kept chunk-boundary states of the matmul schedule (its gate
            // sums are differences of chunk-local sums, the reference's are sums, so `h` differs
            // by rounding: 1.4e-5 seen on grad f); even cases: the reference's `h`, the states
            // recomputed.
            let kept_states = case % 2 == 1;
            let (h_inner, states) = if kept_states {
                let (h, _, states) =
                    chunkwise_matmul_keeping_states(&inner, Some(state0.clone()), chunk).unwrap();
                assert!(states.is_some(), "one batch group keeps its states");
                (h, states)
            } else {
                let (h, _) =
                    xlstm_cells::mlstm::chunkwise(&inner, Some(state0.clone()), chunk).unwrap();
                (h, None)
            };
            let bound = if kept_states { 3e-5 } else { 1e-5 };
            let (dx, ds) = chunkwise_backward(
                &inner,
                state0,
                chunk,
                h_inner,
                states,
                wh.inner(),
                dstate,
                DType::F32,
            );
            let mut pairs = vec![
                ("q", vals(dx.q), vals(x.q.grad(&grads).unwrap())),
                ("k", vals(dx.k), vals(x.k.grad(&grads).unwrap())),
                ("v", vals(dx.v), vals(x.v.grad(&grads).unwrap())),
                (
                    "i",
                    vals(dx.i_preact),
                    vals(x.i_preact.grad(&grads).unwrap()),
                ),
                (
                    "f",
                    vals(dx.f_preact),
                    vals(x.f_preact.grad(&grads).unwrap()),
                ),
            ];
            if with_state {
                pairs.push(("c0", vals(ds.c), vals(state.c.grad(&grads).unwrap())));
                pairs.push(("n0", vals(ds.n), vals(state.n.grad(&grads).unwrap())));
                pairs.push(("m0", vals(ds.m), vals(state.m.grad(&grads).unwrap())));
            }
            for (name, got, want) in pairs {
                let err = rel(&got, &want);
                eprintln!("case {case} grad {name}: {err:e}");
                assert!(
                    err < bound,
                    "case {case} grad {name}: rel L2 {err:e}\n got {:?}\nwant {:?}",
                    &got[..got.len().min(8)],
                    &want[..want.len().min(8)]
                );
            }
        }
    }
}
