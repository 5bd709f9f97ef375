//! The fused sLSTM forward kernel: the whole time loop in one launch.
//!
//! One cube per (batch block, head); its threads stride over the head's `DH` units, each
//! thread owning `upt` units and, for each, `bb` batch rows. Per step a thread computes the
//! four gate pre-activations of its units (`Σ_u h_{t-1}[u] R[u, g·DH + j]`, `R` read from
//! global memory where consecutive threads read consecutive columns, so the loads coalesce and
//! the head's `R` stays in L1/L2), adds `W x_t + b`, and applies the pointwise cell update with
//! `c, n, m` in registers. `h_{t-1}` lives in shared memory, double-buffered, so one barrier
//! per step suffices. State and accumulation are f32 whatever the I/O dtype `F`.

use cubecl::prelude::*;

/// `log σ(x)` without overflow: `min(x, 0) - log1p(exp(-|x|))`.
#[cube]
pub fn log_sigmoid(x: f32) -> f32 {
    f32::min(x, 0.0) - f32::log1p(f32::exp(-f32::abs(x)))
}

/// `σ(x) = 1 / (1 + exp(-x))`.
#[cube]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + f32::exp(-x))
}

/// `tanh(x)`, with the argument clamped to ±15 where f32 `tanh` is already ±1 (some shader
/// compilers evaluate `tanh` through `exp` and return NaN for large arguments).
#[cube]
pub fn tanh_clamped(x: f32) -> f32 {
    f32::tanh(f32::clamp(x, -15.0, 15.0))
}

/// The kernel. Shapes (`H = NH·DH`, all contiguous):
/// `wx [B, S, 4H]`, `r [NH, DH, 4DH]`, `bias [4H]`, `state0 [4, B, H]` (h, c, n, m),
/// `out [B, S+3, H]` (h_1..h_S, c_S, n_S, m_S); when `save`: `gates [B, S, 4H]` (the
/// pre-activations) and `states [3, B, S, H]` (c_t, n_t, m_t), both f32.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn slstm_forward_kernel<F: Float>(
    wx: &Tensor<F>,
    r: &Tensor<F>,
    bias: &Tensor<F>,
    state0: &Tensor<F>,
    out: &mut Tensor<F>,
    gates: &mut Tensor<f32>,
    states: &mut Tensor<f32>,
    #[comptime] dh: usize,
    #[comptime] bb: usize,
    #[comptime] upt: usize,
    #[comptime] save: bool,
    #[define(F)] _dtype: StorageType,
) {
    let tid = UNIT_POS_X as usize;
    let nt = CUBE_DIM_X as usize;
    let head = CUBE_POS_Y as usize;
    let b0 = CUBE_POS_X as usize * bb;
    let batch = wx.shape(0);
    let seq = wx.shape(1);
    let hid = r.shape(0) * dh;
    let r_base = head * dh * 4 * dh;

    // h_{t-1} of the bb rows, two buffers: step t reads buffer t % 2, writes the other.
    let mut h_buf = SharedMemory::<f32>::new(2 * bb * dh);
    let mut c_reg = Array::<f32>::new(bb * upt);
    let mut n_reg = Array::<f32>::new(bb * upt);
    let mut m_reg = Array::<f32>::new(bb * upt);
    let mut acc = Array::<f32>::new(4 * bb);

    #[unroll]
    for u in 0..upt {
        let j = tid + u * nt;
        #[unroll]
        for k in 0..bb {
            let b = b0 + k;
            let mut h = 0.0f32;
            let mut c = 0.0f32;
            let mut n = 0.0f32;
            let mut m = 0.0f32;
            if j < dh && b < batch {
                let o = b * hid + head * dh + j;
                let plane = batch * hid;
                h = f32::cast_from(state0[o]);
                c = f32::cast_from(state0[plane + o]);
                n = f32::cast_from(state0[2 * plane + o]);
                m = f32::cast_from(state0[3 * plane + o]);
            }
            if j < dh {
                h_buf[k * dh + j] = h;
            }
            c_reg[k * upt + u] = c;
            n_reg[k * upt + u] = n;
            m_reg[k * upt + u] = m;
        }
    }
    // Publishes h_0 to every thread before the first step reads it.
    sync_cube();

    for t in 0..seq {
        let cur = (t % 2) * bb * dh;
        let nxt = bb * dh - cur;
        #[unroll]
        for u in 0..upt {
            let j = tid + u * nt;
            if j < dh {
                #[unroll]
                for x in 0..4 * bb {
                    acc[x] = 0.0;
                }
                // R h_{t-1} for the four gates of unit j (eqs. 11–14, recurrent part).
                for q in 0..dh {
                    let row = r_base + q * 4 * dh + j;
                    let ri = f32::cast_from(r[row]);
                    let rf = f32::cast_from(r[row + dh]);
                    let rz = f32::cast_from(r[row + 2 * dh]);
                    let ro = f32::cast_from(r[row + 3 * dh]);
                    #[unroll]
                    for k in 0..bb {
                        let hq = h_buf[cur + k * dh + q];
                        acc[4 * k] += hq * ri;
                        acc[4 * k + 1] += hq * rf;
                        acc[4 * k + 2] += hq * rz;
                        acc[4 * k + 3] += hq * ro;
                    }
                }
                #[unroll]
                for k in 0..bb {
                    let b = b0 + k;
                    if b < batch {
                        let xo = (b * seq + t) * 4 * hid + head * dh + j;
                        let bo = head * dh + j;
                        let ir = (f32::cast_from(wx[xo]) + acc[4 * k]) + f32::cast_from(bias[bo]);
                        let fr = (f32::cast_from(wx[xo + hid]) + acc[4 * k + 1])
                            + f32::cast_from(bias[bo + hid]);
                        let zr = (f32::cast_from(wx[xo + 2 * hid]) + acc[4 * k + 2])
                            + f32::cast_from(bias[bo + 2 * hid]);
                        let or = (f32::cast_from(wx[xo + 3 * hid]) + acc[4 * k + 3])
                            + f32::cast_from(bias[bo + 3 * hid]);
                        let s = k * upt + u;
                        let c_prev = c_reg[s];
                        let n_prev = n_reg[s];
                        let m_prev = m_reg[s];
                        // (15) m_t = max(log σ(f̃) + m_{t-1}, ĩ), and m_t = ĩ at the first step.
                        let lhs = log_sigmoid(fr) + m_prev;
                        let mut m = lhs;
                        if lhs < ir || n_prev == 0.0 {
                            m = ir;
                        }
                        // (16, 17) stabilised gates, clamped at 1 as the official code.
                        let ig = f32::min(f32::exp(ir - m), 1.0);
                        let fg = f32::min(f32::exp(lhs - m), 1.0);
                        // (8–10)
                        let c = fg * c_prev + ig * tanh_clamped(zr);
                        let n = fg * n_prev + ig;
                        let h = (sigmoid(or) * c) / n;
                        c_reg[s] = c;
                        n_reg[s] = n;
                        m_reg[s] = m;
                        h_buf[nxt + k * dh + j] = h;
                        out[(b * (seq + 3) + t) * hid + head * dh + j] = F::cast_from(h);
                        if save {
                            gates[xo] = ir;
                            gates[xo + hid] = fr;
                            gates[xo + 2 * hid] = zr;
                            gates[xo + 3 * hid] = or;
                            let so = (b * seq + t) * hid + head * dh + j;
                            let plane = batch * seq * hid;
                            states[so] = c;
                            states[plane + so] = n;
                            states[2 * plane + so] = m;
                        }
                    }
                }
            }
        }
        // Publishes h_t (buffer nxt) for step t + 1; also orders this step's reads of buffer
        // cur before step t + 1 overwrites it.
        sync_cube();
    }

    #[unroll]
    for u in 0..upt {
        let j = tid + u * nt;
        #[unroll]
        for k in 0..bb {
            let b = b0 + k;
            if j < dh && b < batch {
                let s = k * upt + u;
                let o = (b * (seq + 3) + seq) * hid + head * dh + j;
                out[o] = F::cast_from(c_reg[s]);
                out[o + hid] = F::cast_from(n_reg[s]);
                out[o + 2 * hid] = F::cast_from(m_reg[s]);
            }
        }
    }
}
