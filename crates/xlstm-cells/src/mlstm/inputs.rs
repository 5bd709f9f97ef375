use burn::tensor::{backend::Backend, Tensor};

use crate::CellError;

/// The inputs of the mLSTM cell over a sequence.
#[derive(Debug, Clone)]
pub struct MlstmInputs<B: Backend> {
    /// Queries `[B, NH, S, DQK]`.
    pub q: Tensor<B, 4>,
    /// Keys `[B, NH, S, DQK]` (unscaled: the cell applies `1/sqrt(DQK)`).
    pub k: Tensor<B, 4>,
    /// Values `[B, NH, S, DV]`.
    pub v: Tensor<B, 4>,
    /// Input-gate pre-activations `ĩ` `[B, NH, S]` (the gate is `exp(ĩ)`, eq. 25).
    pub i_preact: Tensor<B, 3>,
    /// Forget-gate pre-activations `f̃` `[B, NH, S]` (the gate is `σ(f̃)`, eq. 26).
    pub f_preact: Tensor<B, 3>,
}

impl<B: Backend> MlstmInputs<B> {
    /// `[B, NH, S, DQK, DV]` after checking that all five tensors agree.
    pub fn dims(&self) -> Result<[usize; 5], CellError> {
        let [b, nh, s, dqk] = self.q.dims();
        let dv = self.v.dims()[3];
        if b == 0 || nh == 0 || dqk == 0 || dv == 0 {
            return Err(CellError::new(
                "q",
                format!(
                    "every dimension must be positive, found q {:?}, v {:?}",
                    self.q.dims(),
                    self.v.dims()
                ),
            ));
        }
        CellError::check_shape("k", &self.k.dims(), &[b, nh, s, dqk], "B, NH, S, DQK as q")?;
        CellError::check_shape("v", &self.v.dims(), &[b, nh, s, dv], "B, NH, S as q")?;
        CellError::check_shape("i_preact", &self.i_preact.dims(), &[b, nh, s], "B, NH, S")?;
        CellError::check_shape("f_preact", &self.f_preact.dims(), &[b, nh, s], "B, NH, S")?;
        Ok([b, nh, s, dqk, dv])
    }

    /// The tokens `start..start + len` of every tensor.
    pub fn narrow(&self, start: usize, len: usize) -> Self {
        self.narrow_along(2, start, len)
    }

    /// The batch entries `start..start + len` of every tensor.
    pub fn narrow_batch(&self, start: usize, len: usize) -> Self {
        self.narrow_along(0, start, len)
    }

    /// Indices `start..start + len` of dimension `dim` (0 batch, 1 head, 2 token) of every tensor.
    fn narrow_along(&self, dim: usize, start: usize, len: usize) -> Self {
        Self {
            q: self.q.clone().narrow(dim, start, len),
            k: self.k.clone().narrow(dim, start, len),
            v: self.v.clone().narrow(dim, start, len),
            i_preact: self.i_preact.clone().narrow(dim, start, len),
            f_preact: self.f_preact.clone().narrow(dim, start, len),
        }
    }

    /// The groups of batch entries `parts` joined along the batch, in order.
    pub fn cat_batch(parts: Vec<Self>) -> Self {
        let cat4 = |f: fn(&Self) -> &Tensor<B, 4>| {
            Tensor::cat(parts.iter().map(|p| f(p).clone()).collect(), 0)
        };
        let cat3 = |f: fn(&Self) -> &Tensor<B, 3>| {
            Tensor::cat(parts.iter().map(|p| f(p).clone()).collect(), 0)
        };
        Self {
            q: cat4(|p| &p.q),
            k: cat4(|p| &p.k),
            v: cat4(|p| &p.v),
            i_preact: cat3(|p| &p.i_preact),
            f_preact: cat3(|p| &p.f_preact),
        }
    }
}
