//! The fused sLSTM on the CPU (`NdArray<f32>`): the cube kernels' algorithm as plain Rust
//! loops over contiguous `f32` buffers.
//!
//! The tensor-op reference runs each time step as a dozen small tensor ops (a batched matmul,
//! gate slices, exponentials, masks), each allocating and dispatching; under autodiff every one
//! of them is also a graph node. Here one call runs the whole recurrence forward (and one the
//! whole backward) with the state in local buffers, the batch rows split over rayon's threads.
//!
//! Layouts are those of the hooks (`super`): `wx [B, S, 4H]` (gate, head, unit),
//! `r [NH, DH, 4DH]`, `b [4H]`, `state0 [4, B, H]`, `out [B, S + 3, H]`; saved for the backward:
//! `gates [B, S, 4H]` (the pre-activations) and `states [3, B, S, H]` (`c_t, n_t, m_t`).

use burn::backend::NdArray;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;
use xlstm_cells::slstm::GATES;

use super::{recurrent_grads, SlstmFused, SlstmFusedGrads, SlstmSaved};
use crate::scalar::{log_sigmoid, sigmoid};

type Cpu = NdArray<f32>;

/// The contiguous `f32` values of a primitive and its shape.
fn host<const D: usize>(t: FloatTensor<Cpu>) -> (Vec<f32>, Vec<usize>) {
    let t = Tensor::<Cpu, D>::from_primitive(TensorPrimitive::Float(t));
    let shape = t.dims().to_vec();
    // Flattening makes a strided view (a caller may hand one, e.g. `R` swapped from the
    // official layout) contiguous with one strided copy; reading a strided view element by element is ~10× slower.
    let data = t.reshape([shape.iter().product::<usize>()]).into_data();
    let values = data
        .into_vec::<f32>()
        .expect("NdArray<f32> float tensors hold f32");
    (values, shape)
}

/// A primitive of `shape` from `values`.
fn device<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FloatTensor<Cpu> {
    let data = TensorData::new(values, shape.to_vec());
    Tensor::<Cpu, D>::from_data(data, &Default::default())
        .into_primitive()
        .tensor()
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    nh: usize,
    dh: usize,
}

impl Dims {
    fn hidden(&self) -> usize {
        self.nh * self.dh
    }
}

/// One batch row's forward: writes `out_row [S + 3, H]` and, when given, `gates_row [S, 4H]`
/// and `states_row[k] [S, H]` for `c, n, m`.
#[allow(clippy::too_many_arguments)]
fn forward_row(
    d: Dims,
    wx_row: &[f32],
    r: &[f32],
    bias: &[f32],
    init: [&[f32]; 4],
    out_row: &mut [f32],
    mut gates_row: Option<&mut [f32]>,
    mut states_row: Option<[&mut [f32]; 3]>,
) {
    let (hid, dh) = (d.hidden(), d.dh);
    let mut h = init[0].to_vec();
    let mut c = init[1].to_vec();
    let mut n = init[2].to_vec();
    let mut m = init[3].to_vec();
    let mut pre = vec![0.0f32; GATES * hid];
    for t in 0..d.seq {
        // x̃ = W x_t + b + R h_{t-1} (eqs. 11–14), R block-diagonal per head.
        let wx_t = &wx_row[t * GATES * hid..(t + 1) * GATES * hid];
        for ((p, &x), &b) in pre.iter_mut().zip(wx_t).zip(bias) {
            *p = x + b;
        }
        for head in 0..d.nh {
            let r_head = &r[head * dh * GATES * dh..(head + 1) * dh * GATES * dh];
            for q in 0..dh {
                let hq = h[head * dh + q];
                let r_row = &r_head[q * GATES * dh..(q + 1) * GATES * dh];
                for g in 0..GATES {
                    let p = &mut pre[g * hid + head * dh..g * hid + (head + 1) * dh];
                    for (p, &w) in p.iter_mut().zip(&r_row[g * dh..(g + 1) * dh]) {
                        *p += hq * w;
                    }
                }
            }
        }
        for u in 0..hid {
            let (ir, fr, zr, or) = (pre[u], pre[hid + u], pre[2 * hid + u], pre[3 * hid + u]);
            // (15) m_t = max(log σ(f̃) + m_{t-1}, ĩ), and m_t = ĩ at the first step.
            let lhs = log_sigmoid(fr) + m[u];
            let m_t = if lhs < ir || n[u] == 0.0 { ir } else { lhs };
            // (16, 17), clamped at 1 as the official code.
            let ig = (ir - m_t).exp().min(1.0);
            let fg = (lhs - m_t).exp().min(1.0);
            // (8–10)
            c[u] = fg * c[u] + ig * zr.tanh();
            n[u] = fg * n[u] + ig;
            m[u] = m_t;
            h[u] = sigmoid(or) * c[u] / n[u];
        }
        out_row[t * hid..(t + 1) * hid].copy_from_slice(&h);
        if let Some(g) = gates_row.as_deref_mut() {
            g[t * GATES * hid..(t + 1) * GATES * hid].copy_from_slice(&pre);
        }
        if let Some(s) = states_row.as_mut() {
            s[0][t * hid..(t + 1) * hid].copy_from_slice(&c);
            s[1][t * hid..(t + 1) * hid].copy_from_slice(&n);
            s[2][t * hid..(t + 1) * hid].copy_from_slice(&m);
        }
    }
    let s = d.seq;
    out_row[s * hid..(s + 1) * hid].copy_from_slice(&c);
    out_row[(s + 1) * hid..(s + 2) * hid].copy_from_slice(&n);
    out_row[(s + 2) * hid..(s + 3) * hid].copy_from_slice(&m);
}

/// The fused forward (see [`super::SlstmBackend::slstm_fused_forward`]).
pub fn forward(
    wx: FloatTensor<Cpu>,
    r: FloatTensor<Cpu>,
    b: FloatTensor<Cpu>,
    state0: FloatTensor<Cpu>,
    save: bool,
) -> SlstmFused<Cpu> {
    let saved_inputs = save.then(|| (r.clone(), state0.clone()));
    let (wx, wx_shape) = host::<3>(wx);
    let (r, r_shape) = host::<3>(r);
    let (bias, _) = host::<1>(b);
    let (s0, _) = host::<3>(state0);
    let d = Dims {
        batch: wx_shape[0],
        seq: wx_shape[1],
        nh: r_shape[0],
        dh: r_shape[1],
    };
    let hid = d.hidden();
    let plane0 = d.batch * hid;
    let mut out = vec![0.0f32; d.batch * (d.seq + 3) * hid];
    let mut gates = vec![0.0f32; if save { wx.len() } else { 0 }];
    let mut states = vec![0.0f32; if save { 3 * d.batch * d.seq * hid } else { 0 }];
    let (cs, rest) = states.split_at_mut(if save { d.batch * d.seq * hid } else { 0 });
    let (ns, ms) = rest.split_at_mut(cs.len());
    let row_state = |bi: usize, k: usize| &s0[k * plane0 + bi * hid..k * plane0 + (bi + 1) * hid];

    let work = out
        .par_chunks_mut((d.seq + 3) * hid)
        .zip(wx.par_chunks(d.seq * GATES * hid))
        .enumerate();
    if d.batch == 1 {
        // One row (generation): run it here; handing it to rayon's pool would cost a thread
        // switch per call, more than a short sequence's work.
        let init = [0, 1, 2, 3].map(|k| row_state(0, k));
        let saved = save.then_some([cs, ns, ms]);
        let g = save.then_some(&mut gates[..]);
        forward_row(d, &wx, &r, &bias, init, &mut out, g, saved);
    } else if save {
        let seq_h = d.seq * hid;
        work.zip(gates.par_chunks_mut(d.seq * GATES * hid))
            .zip(cs.par_chunks_mut(seq_h))
            .zip(ns.par_chunks_mut(seq_h))
            .zip(ms.par_chunks_mut(seq_h))
            .for_each(|(((((bi, (out_row, wx_row)), g), c), n), m)| {
                let init = [0, 1, 2, 3].map(|k| row_state(bi, k));
                forward_row(
                    d,
                    wx_row,
                    &r,
                    &bias,
                    init,
                    out_row,
                    Some(g),
                    Some([c, n, m]),
                );
            });
    } else {
        work.for_each(|(bi, (out_row, wx_row))| {
            let init = [0, 1, 2, 3].map(|k| row_state(bi, k));
            forward_row(d, wx_row, &r, &bias, init, out_row, None, None);
        });
    }

    let out = device(out, [d.batch, d.seq + 3, hid]);
    let saved = saved_inputs.map(|(r, state0)| SlstmSaved {
        r,
        state0,
        out: out.clone(),
        gates: device(gates, [d.batch, d.seq, GATES * hid]),
        states: device(states, [3, d.batch, d.seq, hid]),
    });
    SlstmFused { out, saved }
}

/// One batch row's backward through time: writes `dgates_row [S, 4H]` and `dstate0_row[k]`
/// (`h, c, n, m`). The gradients are those of the reference's autodiff, ties included (see
/// `cube/backward.rs`).
#[allow(clippy::too_many_arguments)]
fn backward_row(
    d: Dims,
    r: &[f32],
    gates_row: &[f32],
    states_row: [&[f32]; 3],
    init: [&[f32]; 4],
    dout_row: &[f32],
    dgates_row: &mut [f32],
    dstate0_row: [&mut [f32]; 4],
) {
    let (hid, dh, seq) = (d.hidden(), d.dh, d.seq);
    let [dh0, dc0, dn0, dm0] = dstate0_row;
    // Gradients flowing into c, n, m of the current step from the later ones.
    let mut dc: Vec<f32> = dout_row[seq * hid..(seq + 1) * hid].to_vec();
    let mut dn: Vec<f32> = dout_row[(seq + 1) * hid..(seq + 2) * hid].to_vec();
    let mut dm: Vec<f32> = dout_row[(seq + 2) * hid..(seq + 3) * hid].to_vec();
    // dh_t from step t + 1: R dgates_{t+1}, per head.
    let mut dh_rec = vec![0.0f32; hid];
    let recurrent = |dg: &[f32], dh_rec: &mut [f32]| {
        for head in 0..d.nh {
            let r_head = &r[head * dh * GATES * dh..(head + 1) * dh * GATES * dh];
            for q in 0..dh {
                let r_row = &r_head[q * GATES * dh..(q + 1) * GATES * dh];
                let mut acc = 0.0f32;
                for g in 0..GATES {
                    let dg_g = &dg[g * hid + head * dh..g * hid + (head + 1) * dh];
                    acc += dg_g
                        .iter()
                        .zip(&r_row[g * dh..(g + 1) * dh])
                        .map(|(a, w)| a * w)
                        .sum::<f32>();
                }
                dh_rec[head * dh + q] = acc;
            }
        }
    };
    for t in (0..seq).rev() {
        let pre = &gates_row[t * GATES * hid..(t + 1) * GATES * hid];
        let at = |k: usize, t: usize| &states_row[k][t * hid..(t + 1) * hid];
        let (c_t, n_t, m_t) = (at(0, t), at(1, t), at(2, t));
        let (c_p, n_p, m_p) = if t == 0 {
            (init[1], init[2], init[3])
        } else {
            (at(0, t - 1), at(1, t - 1), at(2, t - 1))
        };
        let dout_t = &dout_row[t * hid..(t + 1) * hid];
        let dg_t = &mut dgates_row[t * GATES * hid..(t + 1) * GATES * hid];
        for u in 0..hid {
            let (ir, fr, zr, or) = (pre[u], pre[hid + u], pre[2 * hid + u], pre[3 * hid + u]);
            let (c, n, m) = (c_t[u], n_t[u], m_t[u]);
            // Recompute the forward step's intermediates.
            let lhs = log_sigmoid(fr) + m_p[u];
            let ei = (ir - m).exp();
            let ef = (lhs - m).exp();
            let (ig, fg) = (ei.min(1.0), ef.min(1.0));
            let zt = zr.tanh();
            let og = sigmoid(or);
            // h = σ(õ) c / n
            let dh_t = dout_t[u] + dh_rec[u];
            let dcu = dc[u] + dh_t * og / n;
            let dnu = dn[u] - dh_t * og * c / (n * n);
            let dor = dh_t * c / n * og * (1.0 - og);
            // c = f c_prev + i z, n = f n_prev + i
            let dzr = dcu * ig * (1.0 - zt * zt);
            let dei = if ei <= 1.0 { dcu * zt + dnu } else { 0.0 };
            let def = if ef <= 1.0 {
                dcu * c_p[u] + dnu * n_p[u]
            } else {
                0.0
            };
            dc[u] = dcu * fg;
            dn[u] = dnu * fg;
            // i = exp(ĩ - m), f = exp(lhs - m), m = max(lhs, ĩ) (ĩ at the first step)
            let (da, db) = (dei * ei, def * ef);
            let dmu = dm[u] - da - db;
            let (dir, dlhs) = if n_p[u] == 0.0 || lhs < ir {
                (da + dmu, db)
            } else {
                (da, db + dmu)
            };
            dm[u] = dlhs;
            dg_t[u] = dir;
            dg_t[hid + u] = dlhs * sigmoid(-fr);
            dg_t[2 * hid + u] = dzr;
            dg_t[3 * hid + u] = dor;
        }
        recurrent(dg_t, &mut dh_rec);
    }
    dh0.copy_from_slice(&dh_rec);
    dc0.copy_from_slice(&dc);
    dn0.copy_from_slice(&dn);
    dm0.copy_from_slice(&dm);
}

/// The fused backward (see [`super::SlstmBackend::slstm_fused_backward`]).
pub fn backward(saved: SlstmSaved<Cpu>, dout: FloatTensor<Cpu>) -> SlstmFusedGrads<Cpu> {
    let SlstmSaved {
        r,
        state0,
        out,
        gates,
        states,
    } = saved;
    let state0_tensor = state0.clone();
    let (r, r_shape) = host::<3>(r);
    let (s0, _) = host::<3>(state0);
    let (gates, g_shape) = host::<3>(gates);
    let (states, _) = host::<4>(states);
    let (dout, _) = host::<3>(dout);
    let d = Dims {
        batch: g_shape[0],
        seq: g_shape[1],
        nh: r_shape[0],
        dh: r_shape[1],
    };
    let hid = d.hidden();
    let plane0 = d.batch * hid;
    let plane = d.batch * d.seq * hid;
    let mut dgates = vec![0.0f32; gates.len()];
    // Per batch row: [4, H] (h, c, n, m), transposed to [4, B, H] below.
    let mut dstate0_rows = vec![0.0f32; 4 * plane0];
    dgates
        .par_chunks_mut(d.seq * GATES * hid)
        .zip(dstate0_rows.par_chunks_mut(4 * hid))
        .enumerate()
        .for_each(|(bi, (dg_row, ds_row))| {
            let seq_h = d.seq * hid;
            let states_row =
                [0, 1, 2].map(|k| &states[k * plane + bi * seq_h..k * plane + (bi + 1) * seq_h]);
            let init =
                [0, 1, 2, 3].map(|k| &s0[k * plane0 + bi * hid..k * plane0 + (bi + 1) * hid]);
            let gates_row = &gates[bi * d.seq * GATES * hid..(bi + 1) * d.seq * GATES * hid];
            let dout_row = &dout[bi * (d.seq + 3) * hid..(bi + 1) * (d.seq + 3) * hid];
            let (a, rest) = ds_row.split_at_mut(hid);
            let (b, rest) = rest.split_at_mut(hid);
            let (c, m) = rest.split_at_mut(hid);
            backward_row(
                d,
                &r,
                gates_row,
                states_row,
                init,
                dout_row,
                dg_row,
                [a, b, c, m],
            );
        });
    let mut dstate0 = vec![0.0f32; 4 * plane0];
    for bi in 0..d.batch {
        for k in 0..4 {
            dstate0[k * plane0 + bi * hid..k * plane0 + (bi + 1) * hid]
                .copy_from_slice(&dstate0_rows[(bi * 4 + k) * hid..(bi * 4 + k + 1) * hid]);
        }
    }
    let dgates = Tensor::<Cpu, 3>::from_primitive(TensorPrimitive::Float(device(
        dgates,
        [d.batch, d.seq, GATES * hid],
    )));
    let (dr, db) = recurrent_grads(
        Tensor::from_primitive(TensorPrimitive::Float(out)),
        Tensor::from_primitive(TensorPrimitive::Float(state0_tensor)),
        dgates.clone(),
        d.nh,
    );
    SlstmFusedGrads {
        wx: dgates.into_primitive().tensor(),
        r: dr.into_primitive().tensor(),
        b: db.into_primitive().tensor(),
        state0: device(dstate0, [4, d.batch, hid]),
    }
}
