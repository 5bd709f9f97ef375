use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::ModelError;

/// Per-sequence lengths of a right-padded batch `[B, S]`: positions `t ≥ lengths[b]` are
/// padding. Padded positions leave every recurrent state (mLSTM, sLSTM, convolution) exactly
/// as it was after the last real token, and [`crate::lm::masked_cross_entropy`] ignores them.
/// Their outputs are finite but meaningless.
#[derive(Debug, Clone)]
pub struct Padding<B: Backend> {
    lengths: Vec<usize>,
    seq_len: usize,
    device: B::Device,
}

impl<B: Backend> Padding<B> {
    /// Error unless every length is at most `seq_len`.
    pub fn new(
        lengths: Vec<usize>,
        seq_len: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        if let Some((b, l)) = lengths.iter().enumerate().find(|(_, l)| **l > seq_len) {
            return Err(ModelError::input(
                "lengths",
                format!("lengths[{b}] = {l} exceeds the sequence length {seq_len}"),
            ));
        }
        Ok(Self {
            lengths,
            seq_len,
            device: device.clone(),
        })
    }

    /// The lengths, one per batch entry.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Error unless this padding fits a batch `[batch, seq_len]`.
    pub(crate) fn check(&self, batch: usize, seq_len: usize) -> Result<(), ModelError> {
        if self.lengths.len() != batch || self.seq_len != seq_len {
            return Err(ModelError::input(
                "padding",
                format!(
                    "padding for [{}, {}] used with a batch [{batch}, {seq_len}]",
                    self.lengths.len(),
                    self.seq_len
                ),
            ));
        }
        Ok(())
    }

    /// `[B, S]`, true at real tokens.
    pub fn valid(&self) -> Tensor<B, 2, Bool> {
        let values: Vec<bool> = self
            .lengths
            .iter()
            .flat_map(|&l| (0..self.seq_len).map(move |t| t < l))
            .collect();
        Tensor::from_data(
            TensorData::new(values, [self.lengths.len(), self.seq_len]),
            &self.device,
        )
    }

    /// `[B, 1]`, true for sequences with no real token at all.
    pub(crate) fn empty_rows(&self) -> Tensor<B, 2, Bool> {
        let values: Vec<bool> = self.lengths.iter().map(|&l| l == 0).collect();
        Tensor::from_data(
            TensorData::new(values, [self.lengths.len(), 1]),
            &self.device,
        )
    }

    /// `[B, count, width]` integer indices `max(lengths[b] + offset + j, 0)` for `j < count`
    /// (the same along the last axis), for `gather` along the time axis.
    pub(crate) fn time_index(
        &self,
        offset: isize,
        count: usize,
        width: usize,
    ) -> Tensor<B, 3, Int> {
        let values: Vec<i64> = self
            .lengths
            .iter()
            .flat_map(|&l| {
                (0..count).flat_map(move |j| {
                    let t = (l as isize + offset + j as isize).max(0) as i64;
                    std::iter::repeat_n(t, width)
                })
            })
            .collect();
        Tensor::from_data(
            TensorData::new(values, [self.lengths.len(), count, width]),
            &self.device,
        )
    }
}
