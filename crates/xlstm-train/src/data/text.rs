//! Byte-level language modelling on a file the user names: vocabulary 256, random windows of
//! `seq_len + 1` bytes (input = first `seq_len`, target = last `seq_len`). The first 90 % of
//! the file is for training, the last 10 % for evaluation.

use super::Example;
use crate::rng::Rng;

/// The bytes of a text file split into a training and an evaluation part.
#[derive(Clone, Debug)]
pub struct ByteText {
    train: Vec<u8>,
    eval: Vec<u8>,
    seq_len: usize,
}

impl ByteText {
    /// Splits `bytes` (90 % / 10 %); both parts must hold a window of `seq_len + 1` bytes.
    pub fn new(bytes: Vec<u8>, seq_len: usize) -> Result<Self, String> {
        let cut = bytes.len() * 9 / 10;
        let (train, eval) = (bytes[..cut].to_vec(), bytes[cut..].to_vec());
        if eval.len() < seq_len + 1 {
            return Err(format!(
                "text: the file has {} bytes; the last 10 % must hold seq_len + 1 = {} bytes (use a larger file or a smaller --seq-len)",
                bytes.len(),
                seq_len + 1
            ));
        }
        Ok(Self {
            train,
            eval,
            seq_len,
        })
    }

    /// A random window of the training (`eval = false`) or evaluation part.
    pub fn example(&self, eval: bool, rng: &mut Rng) -> Example {
        let part = if eval { &self.eval } else { &self.train };
        let start = rng.below(part.len() - self.seq_len);
        let w = &part[start..start + self.seq_len + 1];
        Example {
            input: w[..self.seq_len].iter().map(|&b| b as u32).collect(),
            target: w[1..].iter().map(|&b| b as i64).collect(),
            length: self.seq_len,
        }
    }
}
