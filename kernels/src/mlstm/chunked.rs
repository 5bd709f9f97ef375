//! The inputs of the chunkwise form split into chunks of `L` tokens ([`chunks`]; the tensor-op
//! forward, `chunk_matmul.rs`, reads them so), with the gates of every chunk ([`ChunkGates`]:
//! all of them together in [`Chunked`], as the backward, `backward.rs`, reads them; the forward
//! takes its own through `mlstm_forward_gates`), and the batch groups they run in. The sums of `log f` within a chunk
//! are the reference's (`xlstm_cells::mlstm::segment_sums`).

use burn::tensor::{backend::Backend, DType, Tensor};
use xlstm_cells::mlstm::MlstmInputs;
use xlstm_gating::{log_forget_gate, M_EMPTY};

use super::MlstmBackend;

/// `x` padded to `NC = ⌈S / L⌉` whole chunks with tokens that leave the memory as it is (as
/// the reference pads: `ĩ = M_EMPTY`, `f̃ = -M_EMPTY` so `log f = 0`, `q = k = v = 0`).
pub(crate) struct Chunked<B: Backend> {
    /// Queries `[B, NH, NC, L, DQK]` (unscaled keys likewise), in the float type asked for.
    pub q: Tensor<B, 5>,
    pub k: Tensor<B, 5>,
    /// Values `[B, NH, NC, L, DV]`, in the float type asked for.
    pub v: Tensor<B, 5>,
    /// The gates of every chunk.
    pub gates: ChunkGates<B>,
}

impl<B: MlstmBackend> Chunked<B> {
    /// `x` in chunks of `len` tokens, `q, k, v` in `dtype`, the gates in f32.
    pub(crate) fn new(x: &MlstmInputs<B>, len: usize, dtype: DType) -> Self {
        Self {
            q: chunks(x.q.clone(), len, dtype),
            k: chunks(x.k.clone(), len, dtype),
            v: chunks(x.v.clone(), len, dtype),
            gates: B::mlstm_chunk_gates(x.i_preact.clone(), x.f_preact.clone(), len),
        }
    }
}

/// The gates of every chunk of `L` tokens, `[B, NH, NC, L]` each (and two per chunk,
/// `[B, NH, NC]`), f32; padding tokens carry `ĩ = M_EMPTY` and `log f = 0`.
#[derive(Debug, Clone)]
pub struct ChunkGates<B: Backend> {
    /// `ĩ` (= `log i`).
    pub log_i: Tensor<B, 4>,
    /// `log f = log σ(f̃)`.
    pub log_f: Tensor<B, 4>,
    /// `F_t = Σ_{u≤t} log f_u`, the chunk-local sums.
    pub f_cum: Tensor<B, 4>,
    /// `log w_s = ĩ_s + Σ_{u>s} log f_u`, the weight of token `s` in its chunk's end state
    /// before stabilising.
    pub log_w: Tensor<B, 4>,
    /// `F_L`, the chunk's sum of `log f` (the last `F_t`), `[B, NH, NC]`.
    pub f_last: Tensor<B, 3>,
    /// `m_loc = max_s log w_s`, the chunk's own stabiliser, `[B, NH, NC]`.
    pub m_loc: Tensor<B, 3>,
}

/// The tensor-op form of [`MlstmBackend::mlstm_chunk_gates`].
pub(crate) fn chunk_gates<B: Backend>(
    i_preact: Tensor<B, 3>,
    f_preact: Tensor<B, 3>,
    len: usize,
) -> ChunkGates<B> {
    let log_i = gate_chunks(i_preact, len, M_EMPTY);
    let log_f = log_forget_gate(gate_chunks(f_preact, len, -M_EMPTY));
    let [b, nh, nc, _] = log_i.dims();
    let log_w = log_i.clone() + sums_after(log_f.clone());
    let f_cum = log_f.clone().cumsum(3);
    ChunkGates {
        f_last: f_cum.clone().narrow(3, len - 1, 1).reshape([b, nh, nc]),
        m_loc: log_w.clone().max_dim(3).reshape([b, nh, nc]),
        log_w,
        f_cum,
        log_i,
        log_f,
    }
}

/// `Σ_{u≥s} t_u` within each chunk `[B, NH, NC, L]`.
pub(crate) fn reverse_cumsum<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 4> {
    t.flip([3]).cumsum(3).flip([3])
}

/// `Σ_{u>s} log f_u` within each chunk `[B, NH, NC, L]`.
fn sums_after<B: Backend>(log_f: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, nh, nc, len] = log_f.dims();
    let zero = Tensor::<B, 4>::zeros([b, nh, nc, 1], &log_f.device());
    if len == 1 {
        return zero;
    }
    reverse_cumsum(Tensor::cat(vec![log_f.narrow(3, 1, len - 1), zero], 3)) // of log f_{s+1}
}

/// `t [B, NH, S, D]` as `[B, NH, NC, L, D]` in `dtype`, zero-padded to whole chunks.
pub(crate) fn chunks<B: Backend>(t: Tensor<B, 4>, len: usize, dtype: DType) -> Tensor<B, 5> {
    let [b, nh, s, d] = t.dims();
    let nc = s.div_ceil(len);
    let t = t.cast(dtype);
    let t = if nc * len == s {
        t
    } else {
        let zeros = Tensor::<B, 4>::zeros([b, nh, nc * len - s, d], &t.device()).cast(dtype);
        Tensor::cat(vec![t, zeros], 2)
    };
    t.reshape([b, nh, nc, len, d])
}

/// A gate `[B, NH, S]` as `[B, NH, NC, L]` in f32, padded with `value`.
fn gate_chunks<B: Backend>(t: Tensor<B, 3>, len: usize, value: f64) -> Tensor<B, 4> {
    let [b, nh, s] = t.dims();
    let nc = s.div_ceil(len);
    let t = t.cast(DType::F32);
    let t = if nc * len == s {
        t
    } else {
        let fill = Tensor::<B, 3>::full([b, nh, nc * len - s], value, &t.device());
        Tensor::cat(vec![t, fill.cast(DType::F32)], 2)
    };
    t.reshape([b, nh, nc, len])
}

/// The batch split into groups `(first, count)` of at most `bound / per_entry` entries (at
/// least one), as even as possible: B8 with room for 7 per group runs as 4 + 4, not 7 + 1.
pub(crate) fn batch_groups(b: usize, per_entry: usize, bound: usize) -> Vec<(usize, usize)> {
    let most = (bound / per_entry.max(1)).max(1);
    let groups = b.div_ceil(most).max(1);
    let (size, extra) = (b / groups, b % groups);
    let mut first = 0;
    (0..groups)
        .map(|group| {
            let count = size + usize::from(group < extra);
            first += count;
            (first - count, count)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::batch_groups;

    #[test]
    fn batch_groups_are_even_and_cover_the_batch() {
        assert_eq!(batch_groups(8, 10, 70), vec![(0, 4), (4, 4)]);
        assert_eq!(batch_groups(8, 10, 80), vec![(0, 8)]);
        assert_eq!(batch_groups(7, 10, 30), vec![(0, 3), (3, 2), (5, 2)]);
        assert_eq!(batch_groups(3, 100, 10), vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(batch_groups(1, 0, 10), vec![(0, 1)]);
    }
}
