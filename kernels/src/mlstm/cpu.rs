//! The mLSTM recurrent step on the CPU (`NdArray<f32>`): one pass over the state per
//! (batch row, head), updated in place when the caller hands it over.
//!
//! The tensor-op reference (`xlstm_cells::mlstm::step`) is a dozen ops that each allocate, and
//! the reshapes around its two matmuls copy the whole `C` (burn-ndarray's reshapes always
//! copy); for generation at batch 1 that was a quarter of each token. The math is the same
//! (eqs. 15–17, 19–21, 23), in f32:
//! `m' = max(log σ(f̃) + m, ĩ)`, `i' = e^{ĩ - m'}`, `f' = e^{log σ(f̃) + m - m'}`,
//! `C' = f' C + i' k vᵀ`, `n' = f' n + i' k` (`k` scaled by `1/sqrt(DQK)`),
//! `h = q C' / (max(|q·n'|, e^{-m'}) + eps)`.

use burn::backend::ndarray::{NdArrayTensor, SharedArray};
use burn::backend::NdArray;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use xlstm_cells::mlstm::{check_step, MlstmState, EPS};
use xlstm_cells::CellError;

use crate::scalar::log_sigmoid;

type Cpu = NdArray<f32>;

/// The values of a small input, row-major.
fn values<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("NdArray<f32> float tensors hold f32")
}

/// The state tensor's own buffer (standard layout), copied only if someone else holds it.
fn owned<const D: usize>(t: Tensor<Cpu, D>) -> SharedArray<f32> {
    match t.into_primitive().tensor() {
        NdArrayTensor::F32(storage) => {
            let array = storage.into_owned();
            if array.is_standard_layout() {
                array
            } else {
                array.as_standard_layout().into_owned().into_shared()
            }
        }
        _ => unreachable!("the caller checked that the state is f32"),
    }
}

fn tensor<const D: usize>(array: SharedArray<f32>) -> Tensor<Cpu, D> {
    Tensor::from_primitive(TensorPrimitive::Float(NdArrayTensor::from(array)))
}

/// Whether [`step`] takes these operands (all f32; else the caller runs the reference).
pub fn takes(q: &Tensor<Cpu, 3>, state: Option<&MlstmState<Cpu>>) -> bool {
    let f32 = |d: DType| d == DType::F32;
    f32(q.dtype()) && state.is_none_or(|s| f32(s.c.dtype()) && f32(s.n.dtype()) && f32(s.m.dtype()))
}

/// [`xlstm_cells::mlstm::step`] as loops; same shapes, errors and result (f32 operands, see
/// [`takes`]).
pub fn step(
    q: Tensor<Cpu, 3>,
    k: Tensor<Cpu, 3>,
    v: Tensor<Cpu, 3>,
    i_preact: Tensor<Cpu, 2>,
    f_preact: Tensor<Cpu, 2>,
    state: Option<MlstmState<Cpu>>,
) -> Result<(Tensor<Cpu, 3>, MlstmState<Cpu>), CellError> {
    let [b, nh, dqk] = q.dims();
    let dv = v.dims()[2];
    let state = check_step(&q, &k, &v, &i_preact, &f_preact, state)?;
    let (mut c, mut n, mut m) = (owned(state.c), owned(state.n), owned(state.m));
    let (q, k, v) = (values(q), values(k), values(v));
    let (i_pre, f_pre) = (values(i_preact), values(f_preact));
    let (c_all, n_all, m_all) = (
        c.as_slice_mut().expect("standard layout"),
        n.as_slice_mut().expect("standard layout"),
        m.as_slice_mut().expect("standard layout"),
    );
    let scale = 1.0 / (dqk as f32).sqrt();
    let mut h = vec![0.0f32; b * nh * dv];
    for bh in 0..b * nh {
        let log_f = log_sigmoid(f_pre[bh]);
        let m_prev = m_all[bh];
        let m_new = (log_f + m_prev).max(i_pre[bh]); // eq. 15
        let input = (i_pre[bh] - m_new).exp(); // eq. 16
        let forget = (log_f + m_prev - m_new).exp(); // eq. 17
        m_all[bh] = m_new;
        let (q, k, v) = (
            &q[bh * dqk..][..dqk],
            &k[bh * dqk..][..dqk],
            &v[bh * dv..][..dv],
        );
        let n = &mut n_all[bh * dqk..][..dqk];
        let c = &mut c_all[bh * dqk * dv..][..dqk * dv];
        let h = &mut h[bh * dv..][..dv];
        let mut qn = 0.0f32;
        for (a, c_row) in c.chunks_exact_mut(dv).enumerate() {
            let ik = input * (k[a] * scale);
            n[a] = forget * n[a] + ik; // eq. 20
            qn += q[a] * n[a];
            for ((c_ad, &v_d), h_d) in c_row.iter_mut().zip(v).zip(h.iter_mut()) {
                *c_ad = forget * *c_ad + ik * v_d; // eq. 19
                *h_d += q[a] * *c_ad;
            }
        }
        let denominator = qn.abs().max((-m_new).exp()) + EPS as f32; // eq. 21
        h.iter_mut().for_each(|h_d| *h_d /= denominator);
    }
    let device = Default::default();
    let h = Tensor::from_data(TensorData::new(h, [b, nh, dv]), &device);
    let state = MlstmState {
        c: tensor(c),
        n: tensor(n),
        m: tensor(m),
    };
    Ok((h, state))
}
