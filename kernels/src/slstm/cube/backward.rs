//! The fused sLSTM backward kernel: backpropagation through time in one launch.
//!
//! Same grid as the forward (one cube per (batch block, head), threads over units). The time
//! loop runs backwards; each thread carries `dc, dn, dm` of its units in registers, and the
//! gate gradients of step `t + 1` sit in shared memory (double-buffered) so that
//! `dh_t += Σ_g R[j, g·DH + ·] · dgates_{t+1}` can be read back. The kernel writes the
//! pre-activation gradients `dgates [B, S, 4H]` (= the gradient of `W x`) and the gradient of
//! the initial state; `dR` and `db` are reductions of `dgates` over batch and time, done after
//! by a batched matmul and a sum (see `super::recurrent_grads`).
//!
//! The gradients are those of the reference's autodiff: `max(lhs, ĩ)` sends the gradient to
//! `lhs = log σ(f̃) + m_{t-1}` on ties, `min(x, 1)` passes it where `x ≤ 1`, and the first-step
//! rule `m_t = ĩ` (where `n_{t-1} = 0`) sends it to `ĩ`.

use cubecl::prelude::*;

use super::forward::{log_sigmoid, sigmoid, tanh_clamped};

/// The kernel. Shapes (`H = NH·DH`, all contiguous): `rt [NH, 4DH, DH]` (R transposed per
/// head), `gates [B, S, 4H]` and `states [3, B, S, H]` (f32, saved by the forward),
/// `state0 [4, B, H]`, `dout [B, S+3, H]` (gradient of the packed forward output);
/// outputs `dgates [B, S, 4H]`, `dstate0 [4, B, H]`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn slstm_backward_kernel<F: Float>(
    rt: &Tensor<F>,
    gates: &Tensor<f32>,
    states: &Tensor<f32>,
    state0: &Tensor<F>,
    dout: &Tensor<F>,
    dgates: &mut Tensor<F>,
    dstate0: &mut Tensor<F>,
    #[comptime] dh: usize,
    #[comptime] bb: usize,
    #[comptime] upt: usize,
    #[define(F)] _dtype: StorageType,
) {
    let tid = UNIT_POS_X as usize;
    let nt = CUBE_DIM_X as usize;
    let head = CUBE_POS_Y as usize;
    let b0 = CUBE_POS_X as usize * bb;
    let batch = dout.shape(0);
    let seq = dout.shape(1) - 3;
    let hid = rt.shape(0) * dh;
    let rt_base = head * 4 * dh * dh;
    let plane0 = batch * hid;
    let plane = batch * seq * hid;
    let g4 = 4 * dh;

    // Gate gradients of the bb rows, two buffers: step t reads t + 1's, writes its own.
    let mut dg_buf = SharedMemory::<f32>::new(2 * bb * 4 * dh);
    let mut dc_reg = Array::<f32>::new(bb * upt);
    let mut dn_reg = Array::<f32>::new(bb * upt);
    let mut dm_reg = Array::<f32>::new(bb * upt);
    let mut acc = Array::<f32>::new(bb);

    // The gradients of the final c, n, m.
    #[unroll]
    for u in 0..upt {
        let j = tid + u * nt;
        #[unroll]
        for k in 0..bb {
            let b = b0 + k;
            let s = k * upt + u;
            dc_reg[s] = 0.0;
            dn_reg[s] = 0.0;
            dm_reg[s] = 0.0;
            if j < dh && b < batch {
                let o = (b * (seq + 3) + seq) * hid + head * dh + j;
                dc_reg[s] = f32::cast_from(dout[o]);
                dn_reg[s] = f32::cast_from(dout[o + hid]);
                dm_reg[s] = f32::cast_from(dout[o + 2 * hid]);
            }
        }
    }

    for step in 0..seq {
        let t = seq - 1 - step;
        let cur = (t % 2) * bb * g4;
        let nxt = bb * g4 - cur;
        #[unroll]
        for u in 0..upt {
            let j = tid + u * nt;
            if j < dh {
                // dh_t from step t + 1: Σ_col R[j, col] dgates_{t+1}[col].
                #[unroll]
                for k in 0..bb {
                    acc[k] = 0.0;
                }
                if t + 1 < seq {
                    for col in 0..g4 {
                        let w = f32::cast_from(rt[rt_base + col * dh + j]);
                        #[unroll]
                        for k in 0..bb {
                            acc[k] += dg_buf[nxt + k * g4 + col] * w;
                        }
                    }
                }
                #[unroll]
                for k in 0..bb {
                    let b = b0 + k;
                    if b < batch {
                        let s = k * upt + u;
                        let go = (b * seq + t) * 4 * hid + head * dh + j;
                        let ir = gates[go];
                        let fr = gates[go + hid];
                        let zr = gates[go + 2 * hid];
                        let or = gates[go + 3 * hid];
                        let so = (b * seq + t) * hid + head * dh + j;
                        let c = states[so];
                        let n = states[plane + so];
                        let m = states[2 * plane + so];
                        // The state before step t: the initial state at t = 0.
                        let o = b * hid + head * dh + j;
                        let mut c_prev = f32::cast_from(state0[plane0 + o]);
                        let mut n_prev = f32::cast_from(state0[2 * plane0 + o]);
                        let mut m_prev = f32::cast_from(state0[3 * plane0 + o]);
                        if t > 0 {
                            c_prev = states[so - hid];
                            n_prev = states[plane + so - hid];
                            m_prev = states[2 * plane + so - hid];
                        }
                        // Recompute the forward step's intermediates.
                        let lhs = log_sigmoid(fr) + m_prev;
                        let ei = f32::exp(ir - m);
                        let ef = f32::exp(lhs - m);
                        let ig = f32::min(ei, 1.0);
                        let fg = f32::min(ef, 1.0);
                        let zt = tanh_clamped(zr);
                        let og = sigmoid(or);

                        // h = (σ(õ) c) / n
                        let dh_t = f32::cast_from(dout[(b * (seq + 3) + t) * hid + head * dh + j])
                            + acc[k];
                        let dc = dc_reg[s] + dh_t * og / n;
                        let dn = dn_reg[s] - dh_t * og * c / (n * n);
                        let dor = dh_t * c / n * og * (1.0 - og);
                        // c = f c_prev + i z, n = f n_prev + i
                        let dzr = dc * ig * (1.0 - zt * zt);
                        let mut dei = 0.0f32;
                        if ei <= 1.0 {
                            dei = dc * zt + dn;
                        }
                        let mut def = 0.0f32;
                        if ef <= 1.0 {
                            def = dc * c_prev + dn * n_prev;
                        }
                        dc_reg[s] = dc * fg;
                        dn_reg[s] = dn * fg;
                        // i = exp(ĩ - m), f = exp(lhs - m)
                        let da = dei * ei;
                        let db = def * ef;
                        let dm = dm_reg[s] - da - db;
                        let mut dir = da;
                        let mut dlhs = db;
                        if n_prev == 0.0 || lhs < ir {
                            dir += dm;
                        } else {
                            dlhs += dm;
                        }
                        dm_reg[s] = dlhs;
                        let dfr = dlhs * sigmoid(-fr);

                        let bo = k * g4 + j;
                        dg_buf[cur + bo] = dir;
                        dg_buf[cur + bo + dh] = dfr;
                        dg_buf[cur + bo + 2 * dh] = dzr;
                        dg_buf[cur + bo + 3 * dh] = dor;
                        dgates[go] = F::cast_from(dir);
                        dgates[go + hid] = F::cast_from(dfr);
                        dgates[go + 2 * hid] = F::cast_from(dzr);
                        dgates[go + 3 * hid] = F::cast_from(dor);
                    }
                }
            }
        }
        // Publishes dgates_t for step t - 1; also orders this step's reads of the other
        // buffer before step t - 1 overwrites it.
        sync_cube();
    }

    // The initial state's gradients: dh_0 from the gates of step 0 (buffer 0), c, n, m carried.
    #[unroll]
    for u in 0..upt {
        let j = tid + u * nt;
        if j < dh {
            #[unroll]
            for k in 0..bb {
                acc[k] = 0.0;
            }
            for col in 0..g4 {
                let w = f32::cast_from(rt[rt_base + col * dh + j]);
                #[unroll]
                for k in 0..bb {
                    acc[k] += dg_buf[k * g4 + col] * w;
                }
            }
            #[unroll]
            for k in 0..bb {
                let b = b0 + k;
                if b < batch {
                    let s = k * upt + u;
                    let o = b * hid + head * dh + j;
                    dstate0[o] = F::cast_from(acc[k]);
                    dstate0[plane0 + o] = F::cast_from(dc_reg[s]);
                    dstate0[2 * plane0 + o] = F::cast_from(dn_reg[s]);
                    dstate0[3 * plane0 + o] = F::cast_from(dm_reg[s]);
                }
            }
        }
    }
}
