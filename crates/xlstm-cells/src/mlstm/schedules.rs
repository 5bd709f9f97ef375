use burn::tensor::{backend::Backend, Tensor};

use xlstm_gating::M_EMPTY;

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
/// A length that is no multiple of the chunk is padded at the end with neutral tokens
/// (input gate `exp(-∞) = 0`, forget gate 1, zero q/k/v): they change neither the outputs
/// before them nor the state, so any `S ≥ 1` works. A chunk longer than `S` is cut to `S`.
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
    let chunk = chunk_size.min(s);
    let pad = (chunk - s % chunk) % chunk;
    if pad == 0 {
        return Ok(chunk::scan(x, state, chunk, EPS));
    }
    let (h, state) = chunk::scan(&pad_neutral(x, pad), state, chunk, EPS);
    Ok((h.narrow(2, 0, s), state))
}

/// `x` followed by `pad` tokens that leave the memory as it is: `ĩ = M_EMPTY` (input gate
/// 0), `f̃ = +1e30` (`log σ(f̃) = 0`, forget gate 1), `q = k = v = 0`.
fn pad_neutral<B: Backend>(x: &MlstmInputs<B>, pad: usize) -> MlstmInputs<B> {
    let [b, nh, _, dqk, dv] = x.dims().expect("checked by the caller");
    let device = x.q.device();
    let zeros = |d: usize| Tensor::<B, 4>::zeros([b, nh, pad, d], &device);
    let gate = |value: f64| Tensor::<B, 3>::full([b, nh, pad], value, &device);
    MlstmInputs {
        q: Tensor::cat(vec![x.q.clone(), zeros(dqk)], 2),
        k: Tensor::cat(vec![x.k.clone(), zeros(dqk)], 2),
        v: Tensor::cat(vec![x.v.clone(), zeros(dv)], 2),
        i_preact: Tensor::cat(vec![x.i_preact.clone(), gate(M_EMPTY)], 2),
        f_preact: Tensor::cat(vec![x.f_preact.clone(), gate(-M_EMPTY)], 2),
    }
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
