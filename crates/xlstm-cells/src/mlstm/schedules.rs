use burn::tensor::{backend::Backend, Tensor};

use super::{chunk, MlstmInputs, MlstmState, EPS};
use crate::CellError;

/// The stabilised parallel form (official `parallel_stabilized_simple`, extended with a state).
///
/// `x`: q, k `[B, NH, S, DQK]`, v `[B, NH, S, DV]`, gates `[B, NH, S]`.
/// `state`: `None` is the empty memory of the official parallel form ([`MlstmState::empty`]).
/// Returns `h [B, NH, S, DV]` and the state after the last token. Memory is O(S²).
pub fn parallel<B: Backend>(
    x: &MlstmInputs<B>,
    state: Option<MlstmState<B>>,
) -> Result<(Tensor<B, 4>, MlstmState<B>), CellError> {
    let [_, _, s, _, _] = checked_dims(x)?;
    let state = initial_state(state, x, MlstmState::empty)?;
    Ok(chunk::scan(x, state, s, EPS))
}

/// The chunkwise form (official `chunkwise_simple`): any length, any chunk size.
///
/// `x`: q, k `[B, NH, S, DQK]`, v `[B, NH, S, DV]`, gates `[B, NH, S]`.
/// `state`: `None` is the official zero state ([`MlstmState::zeros`]).
/// A last partial chunk (`S % chunk_size`) is run as one shorter chunk, so any `S ≥ 1` works.
/// Returns `h [B, NH, S, DV]` and the state after the last token. Memory is O(S · chunk_size).
pub fn chunkwise<B: Backend>(
    x: &MlstmInputs<B>,
    state: Option<MlstmState<B>>,
    chunk_size: usize,
) -> Result<(Tensor<B, 4>, MlstmState<B>), CellError> {
    let [_, _, s, _, _] = checked_dims(x)?;
    if chunk_size == 0 {
        return Err(CellError::new("chunk_size", "must be at least 1"));
    }
    let state = initial_state(state, x, MlstmState::zeros)?;
    let full = s - s % chunk_size;
    let mut outputs = vec![];
    let mut state = state;
    if full > 0 {
        let (h, next) = chunk::scan(&x.narrow(0, full), state, chunk_size, EPS);
        outputs.push(h);
        state = next;
    }
    if full < s {
        let (h, next) = chunk::scan(&x.narrow(full, s - full), state, s - full, EPS);
        outputs.push(h);
        state = next;
    }
    Ok((Tensor::cat(outputs, 2), state))
}

fn checked_dims<B: Backend>(x: &MlstmInputs<B>) -> Result<[usize; 5], CellError> {
    let dims = x.dims()?;
    if dims[2] == 0 {
        return Err(CellError::new(
            "q",
            "the sequence length S must be at least 1",
        ));
    }
    Ok(dims)
}

fn initial_state<B: Backend>(
    state: Option<MlstmState<B>>,
    x: &MlstmInputs<B>,
    default: fn(usize, usize, usize, usize, &B::Device) -> MlstmState<B>,
) -> Result<MlstmState<B>, CellError> {
    let [b, nh, _, dqk, dv] = x.dims()?;
    match state {
        Some(state) => {
            state.check(b, nh, dqk, dv)?;
            Ok(state)
        }
        None => Ok(default(b, nh, dqk, dv, &x.q.device())),
    }
}
