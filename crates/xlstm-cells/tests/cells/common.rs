//! Random inputs and comparisons shared by the cell tests.

#![allow(dead_code)] // each test binary uses its own part

use burn::tensor::{backend::Backend, Distribution, Tensor};
use xlstm_cells::mlstm::{MlstmInputs, MlstmState};
use xlstm_cells::slstm::{SlstmState, SlstmWeights};
use xlstm_golden::{rel_l2, Array};

/// Awkward shapes: `(B, NH, S, DQK, DV, chunk)` with batch 1, one head, odd and prime
/// lengths, S = 1, S not a multiple of the chunk, chunk longer than S, DQK ≠ DV.
pub const MLSTM_SHAPES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 1, 1, 4, 4, 4),
    (1, 1, 7, 3, 5, 2),
    (2, 3, 17, 8, 4, 5),
    (1, 2, 33, 16, 8, 8),
    (3, 1, 64, 8, 16, 16),
    (2, 2, 10, 4, 4, 64),
    (1, 4, 29, 6, 12, 7),
];

/// `(B, S, NH, DH)` for the sLSTM.
pub const SLSTM_SHAPES: [(usize, usize, usize, usize); 5] = [
    (1, 1, 1, 4),
    (2, 7, 1, 8),
    (1, 13, 3, 5),
    (3, 20, 2, 16),
    (2, 9, 4, 3),
];

pub fn normal<B: Backend, const D: usize>(
    shape: [usize; D],
    scale: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, scale), device)
}

/// Random mLSTM inputs; forget pre-activations around +2 (the usual regime) plus spread.
pub fn mlstm_inputs<B: Backend>(
    b: usize,
    nh: usize,
    s: usize,
    dqk: usize,
    dv: usize,
    device: &B::Device,
) -> MlstmInputs<B> {
    MlstmInputs {
        q: normal([b, nh, s, dqk], 1.0, device),
        k: normal([b, nh, s, dqk], 1.0, device),
        v: normal([b, nh, s, dv], 1.0, device),
        i_preact: normal([b, nh, s], 2.0, device),
        f_preact: normal([b, nh, s], 1.5, device) + 2.0,
    }
}

/// A random non-zero mLSTM state (as if after some tokens).
pub fn mlstm_state<B: Backend>(
    b: usize,
    nh: usize,
    dqk: usize,
    dv: usize,
    device: &B::Device,
) -> MlstmState<B> {
    MlstmState {
        c: normal([b, nh, dqk, dv], 1.0, device),
        n: normal([b, nh, dqk], 1.0, device),
        m: normal([b, nh], 1.0, device),
    }
}

pub fn slstm_weights<B: Backend>(nh: usize, dh: usize, device: &B::Device) -> SlstmWeights<B> {
    SlstmWeights {
        r: normal([nh, dh, 4 * dh], 1.0 / (dh as f64).sqrt(), device),
        b: normal([4 * nh * dh], 0.5, device),
    }
}

/// A random sLSTM state with positive normaliser (as after some tokens).
pub fn slstm_state<B: Backend>(b: usize, hidden: usize, device: &B::Device) -> SlstmState<B> {
    SlstmState {
        h: normal([b, hidden], 0.5, device),
        c: normal([b, hidden], 1.0, device),
        n: normal([b, hidden], 0.3, device).abs() + 0.5,
        m: normal([b, hidden], 1.0, device),
    }
}

/// Asserts `rel_l2(got, want) <= bound`, naming `what`.
pub fn assert_close<B: Backend, const D: usize>(
    what: &str,
    got: Tensor<B, D>,
    want: Tensor<B, D>,
    bound: f64,
) {
    let (got, want) = (Array::from_tensor(got), Array::from_tensor(want));
    assert_eq!(got.shape, want.shape, "{what}: shapes differ");
    let err = rel_l2(&got.values, &want.values);
    assert!(
        err <= bound,
        "{what}: relative L2 error {err:.3e} > {bound:.0e}"
    );
}
