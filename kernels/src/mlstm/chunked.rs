//! The inputs of the chunkwise form split into chunks of `L` tokens, as the tensor-op forward
//! (`chunk_matmul.rs`) and backward (`backward.rs`) both read them, and the batch groups they
//! run in. The chunk-local sums of `log f` are the reference's
//! (`xlstm_cells::mlstm::segment_sums`).

use burn::tensor::{backend::Backend, DType, Tensor};
use xlstm_cells::mlstm::MlstmInputs;
use xlstm_gating::M_EMPTY;

/// `x` padded to `NC = ⌈S / L⌉` whole chunks with tokens that leave the memory as it is (as
/// the reference pads: `ĩ = M_EMPTY`, `f̃ = -M_EMPTY` so `log f = 0`, `q = k = v = 0`).
pub(crate) struct Chunked<B: Backend> {
    /// Queries `[B, NH, NC, L, DQK]` (unscaled keys likewise), in the float type asked for.
    pub q: Tensor<B, 5>,
    pub k: Tensor<B, 5>,
    /// Values `[B, NH, NC, L, DV]`, in the float type asked for.
    pub v: Tensor<B, 5>,
    /// Input-gate pre-activations `ĩ` (= `log i`) `[B, NH, NC, L]`, f32.
    pub log_i: Tensor<B, 4>,
    /// Forget-gate pre-activations `f̃` `[B, NH, NC, L]`, f32.
    pub f_pre: Tensor<B, 4>,
}

impl<B: Backend> Chunked<B> {
    /// `x` in chunks of `len` tokens, `q, k, v` in `dtype`, the gates in f32.
    pub(crate) fn new(x: &MlstmInputs<B>, len: usize, dtype: DType) -> Self {
        Self {
            q: chunks(x.q.clone(), len, dtype),
            k: chunks(x.k.clone(), len, dtype),
            v: chunks(x.v.clone(), len, dtype),
            log_i: gate_chunks(x.i_preact.clone(), len, M_EMPTY),
            f_pre: gate_chunks(x.f_preact.clone(), len, -M_EMPTY),
        }
    }
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
