//! The one implementation of the mLSTM sequence math: a scan over equal chunks.
//!
//! With one chunk this is the stabilised parallel form; with many it is the chunkwise form of
//! the official `chunkwise_simple` (and of TFLA): boundary states recurrently, the inside of
//! every chunk in parallel.

use burn::tensor::{backend::Backend, Bool, Tensor};
use xlstm_gating::{log_forget_gate, normalizer, M_EMPTY};

use super::{MlstmInputs, MlstmState};

/// Runs the cell over `x` (length a multiple of `len`) from `state`, in chunks of `len`.
///
/// Returns `h [B, NH, S, DV]` and the state after the last token.
///
/// Within a chunk, with `F_t = Σ_{u≤t} log f_u` (inclusive, chunk-local) and chunk-start state
/// `(C₀, n₀, m₀)`:
/// - token `s` enters token `t ≥ s` with log weight `F_t - F_s + ĩ_s` (the gate matrix `log D`),
///   the start state enters with `m₀ + F_t`; `stab_t` is the larger of the row max and that;
/// - `h_t = (Σ_s D_ts (q_t·k_s) v_s + e^{m₀+F_t-stab_t} q_t C₀) / max(|…same with n…|, e^{-stab_t}) + eps`
///   (eq. 21 with the normaliser of `xlstm_gating::normalizer`);
/// - the end state is `m₁ = max(F_L + m₀, max_s(ĩ_s + F_L - F_s))` and
///   `C₁ = e^{F_L+m₀-m₁} C₀ + Σ_s e^{ĩ_s+F_L-F_s-m₁} k_s v_sᵀ` (eqs. 19, 20, 15 unrolled).
pub(crate) fn scan<B: Backend>(
    x: &MlstmInputs<B>,
    state: MlstmState<B>,
    len: usize,
    eps: f64,
) -> (Tensor<B, 4>, MlstmState<B>) {
    let [b, nh, s, dqk, dv] = x.dims().expect("checked by the caller");
    debug_assert!(len > 0 && s % len == 0);
    let nc = s / len;
    let device = x.q.device();

    let q = x.q.clone().reshape([b, nh, nc, len, dqk]);
    let k = (x.k.clone() / (dqk as f64).sqrt()).reshape([b, nh, nc, len, dqk]);
    let v = x.v.clone().reshape([b, nh, nc, len, dv]);
    let log_i = x.i_preact.clone().reshape([b, nh, nc, len]);
    let log_f = log_forget_gate(x.f_preact.clone()).reshape([b, nh, nc, len]);
    let f_cum = log_f.clone().cumsum(3); // F_t
    let f_last = f_cum.clone().narrow(3, len - 1, 1); // F_L, [B, NH, NC, 1]
    let seg = segment_sums(log_f); // F_t - F_s, summed term by term

    // Each chunk's own contribution to its end state, scaled by exp(-m_loc).
    let log_w = log_i.clone() + seg.clone().narrow(3, len - 1, 1).reshape([b, nh, nc, len]); // ĩ_s + F_L - F_s
    let m_loc = log_w.clone().max_dim(3); // [B, NH, NC, 1]
    let k_w = k.clone() * (log_w - m_loc.clone()).exp().unsqueeze_dim::<5>(4);
    let kv = k_w.clone().swap_dims(3, 4).matmul(v.clone()); // [B, NH, NC, DQK, DV]
    let k_sum = k_w.sum_dim(3).reshape([b, nh, nc, dqk]);

    // Chunk-boundary states, recurrently (the only sequential part).
    let f_last = f_last.reshape([b, nh, nc]);
    let m_loc = m_loc.reshape([b, nh, nc]);
    let MlstmState {
        mut c,
        mut n,
        mut m,
    } = state;
    let (mut c_start, mut n_start, mut m_start) = (vec![], vec![], vec![]);
    for chunk in 0..nc {
        c_start.push(c.clone());
        n_start.push(n.clone());
        m_start.push(m.clone());
        let decayed_m = f_last.clone().narrow(2, chunk, 1).reshape([b, nh]) + m;
        let m_in = m_loc.clone().narrow(2, chunk, 1).reshape([b, nh]);
        let m_new = decayed_m.clone().max_pair(m_in.clone());
        let decay = (decayed_m - m_new.clone()).exp();
        let gain = (m_in - m_new.clone()).exp();
        let kv_chunk = kv.clone().narrow(2, chunk, 1).reshape([b, nh, dqk, dv]);
        let k_chunk = k_sum.clone().narrow(2, chunk, 1).reshape([b, nh, dqk]);
        c = c * decay.clone().reshape([b, nh, 1, 1])
            + kv_chunk * gain.clone().reshape([b, nh, 1, 1]);
        n = n * decay.reshape([b, nh, 1]) + k_chunk * gain.reshape([b, nh, 1]);
        m = m_new;
    }
    let final_state = MlstmState { c, n, m };
    let c_start: Tensor<B, 5> = Tensor::stack(c_start, 2); // [B, NH, NC, DQK, DV]
    let n_start: Tensor<B, 4> = Tensor::stack(n_start, 2); // [B, NH, NC, DQK]
    let m_start: Tensor<B, 3> = Tensor::stack(m_start, 2); // [B, NH, NC]

    // Gate matrix log D[t, s] = F_t - F_s + ĩ_s for s ≤ t.
    let causal: Tensor<B, 2, Bool> = Tensor::tril_mask([len, len], 0, &device);
    let log_d = seg + log_i.unsqueeze_dim::<5>(3);
    let log_d = log_d.mask_fill(
        causal.unsqueeze::<5>().expand([b, nh, nc, len, len]),
        M_EMPTY,
    );
    let log_start = (m_start.unsqueeze_dim::<4>(3) + f_cum).unsqueeze_dim::<5>(4); // m₀ + F_t
    let stab = log_d.clone().max_dim(4).max_pair(log_start.clone()); // [B, NH, NC, L, 1]

    let e = q.clone().matmul(k.swap_dims(3, 4)) * (log_d - stab.clone()).exp();
    let q_start = q * (log_start - stab.clone()).exp();
    let numerator = e.clone().matmul(v) + q_start.clone().matmul(c_start);
    let qn = e.sum_dim(4) + q_start.matmul(n_start.unsqueeze_dim::<5>(4));
    let h = numerator / normalizer(qn, stab, eps);
    (h.reshape([b, nh, s, dv]), final_state)
}

/// `seg[.., t, s] = Σ_{s<u≤t} log f_u` for `t ≥ s` (0 above the diagonal), from `log_f [.., L]`
/// (`[B, NH, NC, L]` → `[B, NH, NC, L, L]`).
///
/// Summing the terms themselves, rather than subtracting two cumulative sums `F_t - F_s`,
/// keeps every entry exact to the precision of its own size: with forget gates near -1e3 the
/// cumulative sums reach -1e5 and their difference would lose all digits in f32.
pub fn segment_sums<B: Backend>(log_f: Tensor<B, 4>) -> Tensor<B, 5> {
    let [b, nh, nc, len] = log_f.dims();
    let above_or_on_diagonal: Tensor<B, 2, Bool> =
        Tensor::tril_mask([len, len], -1, &log_f.device());
    log_f
        .unsqueeze_dim::<5>(4)
        .expand([b, nh, nc, len, len])
        .mask_fill(
            above_or_on_diagonal
                .unsqueeze::<5>()
                .expand([b, nh, nc, len, len]),
            0.0,
        )
        .cumsum(3)
}
