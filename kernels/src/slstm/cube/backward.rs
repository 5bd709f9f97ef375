//! The fused sLSTM backward kernel: backpropagation through time in one launch.
//!
//! Same grid and the same two phases per step as the forward: the time loop runs backwards;
//! the reduction `dh_t += Σ_col R[j, col] · dgates_{t+1}[col]` over the `4·DH` columns is split
//! over `split` threads per unit (partial sums through shared memory), then the pointwise
//! backward of step `t` runs over all threads, each carrying `dc, dn, dm` of its items in
//! registers, with the step's saved inputs prefetched one step ahead. The gate gradients of
//! step `t + 1` sit in shared memory for the reduction. The kernel writes the
//! pre-activation gradients `dgates [B, S, 4H]` (= the gradient of `W x`), the gradient of
//! the initial state, and per batch row the sum over time of `dgates` (the bias gradient,
//! accumulated in registers). `dR = Σ_{b,t} h_{t-1}ᵀ dgates_t` is done after, as one matmul
//! batched over (head, row) of `h_{t-1}` (saved head-major by the forward) and `dgates`
//! (written a second time head-major, `dgh`), then a sum over rows
//! (`SlstmBackend::slstm_fused_backward` in `mod.rs`).
//!
//! The gradients are those of the reference's autodiff: `max(lhs, ĩ)` sends the gradient to
//! `lhs = log σ(f̃) + m_{t-1}` on ties, `min(x, 1)` passes it where `x ≤ 1`, and the first-step
//! rule `m_t = ĩ` (where `n_{t-1} = 0`) sends it to `ĩ`.

use cubecl::prelude::*;

use super::forward::{log_sigmoid, sigmoid, tanh_clamped};

/// The kernel. Shapes (`H = NH·DH`, all contiguous): `rt [NH, 4DH, DH]` (R transposed per
/// head), `gates [B, S, 4H]` and `states [4, B, S, H]` (f32, saved by the forward; planes 0–2
/// read here),
/// `state0 [4, B, H]`, `dout [B, S+3, H]` (gradient of the packed forward output);
/// outputs `dgates [B, S, 4H]`, the same head-major in f32 `dgh [NH, B, S, 4DH]` (the right
/// operand of the `dR` matmul), `dstate0 [4, B, H]` and `dbias [B, 4H]` (f32, `Σ_t dgates_t`
/// per batch row: the bias gradient before the sum over rows).
///
/// Layout (comptime) as the forward's: `ut · split` threads; thread `tid` reduces for the units
/// `j = tid % ut + u·ut` over the slice `tid / ut` of the `4·DH` columns (its first
/// `cached · unroll` columns of Rᵀ from shared memory), and owns the
/// pointwise items `(k, j) = tid + i·ut·split`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn slstm_backward_kernel<F: Float>(
    rt: &Tensor<F>,
    gates: &Tensor<f32>,
    states: &Tensor<f32>,
    state0: &Tensor<F>,
    dout: &Tensor<F>,
    dgates: &mut Tensor<F>,
    dgh: &mut Tensor<f32>,
    dstate0: &mut Tensor<F>,
    dbias: &mut Tensor<f32>,
    #[comptime] dh: usize,
    #[comptime] bb: usize,
    #[comptime] ut: usize,
    #[comptime] split: usize,
    #[comptime] unroll: usize,
    #[comptime] cached: usize,
    #[define(F)] _dtype: StorageType,
) {
    let g4 = comptime!(4 * dh);
    let nt = comptime!(ut * split);
    let upt = comptime!(dh.div_ceil(ut));
    let slice = comptime!(g4.div_ceil(split).div_ceil(unroll) * unroll);
    let blocks = comptime!(slice / unroll);
    // Gate gradients are stored padded to `split · slice` columns per row, the padding zero.
    let kp = comptime!(slice * split);
    let items = comptime!(bb * dh);
    let ipt = comptime!(items.div_ceil(nt));
    let last_col = comptime!(g4 - 1);

    let tid = UNIT_POS_X as usize;
    let ju = tid % ut;
    let sl = tid / ut;
    let c0 = sl * slice;
    let head = CUBE_POS_Y as usize;
    let b0 = CUBE_POS_X as usize * bb;
    let batch = dout.shape(0);
    let seq = dout.shape(1) - 3;
    let hid = rt.shape(0) * dh;
    let rt_base = head * 4 * dh * dh;
    let plane0 = batch * hid;
    let plane = batch * seq * hid;

    // dgates_{t+1} of the bb rows (zero before the last step); partial sums [split, bb, DH].
    let mut dg_buf = SharedMemory::<f32>::new(comptime!(bb * kp));
    let mut part = SharedMemory::<f32>::new(comptime!(split * bb * dh));
    // The first `cached` blocks of `unroll` columns of every slice of Rᵀ, `[split,
    // cached·unroll, DH]` in the I/O dtype, loaded once: read from shared memory every step
    // instead of L2.
    let cw = comptime!(cached * unroll);
    let cache_len = comptime!(split * cw * dh);
    let mut r_cache = SharedMemory::<F>::new(comptime!(cache_len.max(1)));
    // Per owned item: the carried dc, dn, dm; c, n, m after step t; and this step's inputs
    // (pre-activations, the state before the step, dh from the output), prefetched one step
    // ahead into `*_nxt`.
    let mut dc_reg = Array::<f32>::new(ipt);
    let mut dn_reg = Array::<f32>::new(ipt);
    let mut dm_reg = Array::<f32>::new(ipt);
    let mut db_reg = Array::<f32>::new(comptime!(4 * ipt));
    let mut st = Array::<f32>::new(comptime!(3 * ipt));
    let mut in_cur = Array::<f32>::new(comptime!(8 * ipt));
    let mut in_nxt = Array::<f32>::new(comptime!(8 * ipt));
    let mut acc = Array::<f32>::new(bb);
    let mut wv = Array::<f32>::new(unroll);

    for p in 0..comptime!((bb * kp).div_ceil(nt)) {
        let x = tid + p * nt;
        if x < bb * kp {
            dg_buf[x] = 0.0;
        }
    }
    #[unroll]
    for i in 0..ipt {
        let item = tid + i * nt;
        let b = b0 + item / dh;
        dc_reg[i] = 0.0;
        dn_reg[i] = 0.0;
        dm_reg[i] = 0.0;
        #[unroll]
        for g in 0..4usize {
            db_reg[4 * i + g] = 0.0;
        }
        #[unroll]
        for x in 0..3usize {
            st[3 * i + x] = 0.0;
        }
        #[unroll]
        for x in 0..8usize {
            in_cur[8 * i + x] = 0.0;
            in_nxt[8 * i + x] = 0.0;
        }
        if item < items && b < batch {
            let j = item % dh;
            // The gradients of the final c, n, m; c, n, m after the last step.
            let o = (b * (seq + 3) + seq) * hid + head * dh + j;
            dc_reg[i] = f32::cast_from(dout[o]);
            dn_reg[i] = f32::cast_from(dout[o + hid]);
            dm_reg[i] = f32::cast_from(dout[o + 2 * hid]);
            let so = (b * seq + seq - 1) * hid + head * dh + j;
            st[3 * i] = states[so];
            st[3 * i + 1] = states[plane + so];
            st[3 * i + 2] = states[2 * plane + so];
            load_step_inputs(
                gates,
                states,
                state0,
                dout,
                &mut in_cur,
                i,
                b,
                j,
                seq - 1,
                head,
                dh,
                hid,
                seq,
                batch,
            );
        }
    }
    if comptime!(cached > 0) {
        for p in 0..comptime!(cache_len.div_ceil(nt)) {
            let x = tid + p * nt;
            if x < cache_len {
                let row = x / dh;
                let col = (row / cw) * slice + row % cw;
                r_cache[x] = rt[rt_base + clamp_max(col, last_col) * dh + x % dh];
            }
        }
    }
    // Publishes the zeroed gate gradients and the cached columns of Rᵀ.
    sync_cube();

    // Step `step` computes dh_t (t = S - 1 - step) from dgates_{t+1}, then step t's gradients;
    // the extra last step (step = S) computes dh_0 and writes the initial state's gradients.
    for step in 0..seq + 1 {
        let tp1 = seq - step;
        if step + 1 < seq {
            #[unroll]
            for i in 0..ipt {
                let item = tid + i * nt;
                let b = b0 + item / dh;
                if item < items && b < batch {
                    load_step_inputs(
                        gates,
                        states,
                        state0,
                        dout,
                        &mut in_nxt,
                        i,
                        b,
                        item % dh,
                        tp1 - 2,
                        head,
                        dh,
                        hid,
                        seq,
                        batch,
                    );
                }
            }
        }
        // Σ_col R[j, col] dgates_{t+1}[col] over this thread's slice of columns.
        #[unroll]
        for u in 0..upt {
            let j = ju + u * ut;
            if j < dh {
                #[unroll]
                for k in 0..bb {
                    acc[k] = 0.0;
                }
                for blk in 0..cached {
                    let cb = c0 + blk * unroll;
                    let base = (sl * cw + blk * unroll) * dh + j;
                    #[unroll]
                    for x in 0..unroll {
                        wv[x] = f32::cast_from(r_cache[base + x * dh]);
                    }
                    #[unroll]
                    for x in 0..unroll {
                        #[unroll]
                        for k in 0..bb {
                            acc[k] += dg_buf[k * kp + cb + x] * wv[x];
                        }
                    }
                }
                for blk in cached..blocks {
                    let cb = c0 + blk * unroll;
                    #[unroll]
                    for x in 0..unroll {
                        wv[x] = f32::cast_from(rt[rt_base + clamp_max(cb + x, last_col) * dh + j]);
                    }
                    #[unroll]
                    for x in 0..unroll {
                        #[unroll]
                        for k in 0..bb {
                            acc[k] += dg_buf[k * kp + cb + x] * wv[x];
                        }
                    }
                }
                #[unroll]
                for k in 0..bb {
                    part[(sl * bb + k) * dh + j] = acc[k];
                }
            }
        }
        // Publishes the partial sums; orders this step's reads of dgates_{t+1} before the
        // writes of dgates_t below.
        sync_cube();

        #[unroll]
        for i in 0..ipt {
            let item = tid + i * nt;
            let k = item / dh;
            let j = item % dh;
            let b = b0 + k;
            if item < items && b < batch {
                let mut dh_rec = 0.0f32;
                #[unroll]
                for s in 0..split {
                    dh_rec += part[(s * bb + k) * dh + j];
                }
                if step < seq {
                    let t = tp1 - 1;
                    let ir = in_cur[8 * i];
                    let fr = in_cur[8 * i + 1];
                    let zr = in_cur[8 * i + 2];
                    let or = in_cur[8 * i + 3];
                    let c_prev = in_cur[8 * i + 4];
                    let n_prev = in_cur[8 * i + 5];
                    let m_prev = in_cur[8 * i + 6];
                    let c = st[3 * i];
                    let n = st[3 * i + 1];
                    let m = st[3 * i + 2];
                    // Recompute the forward step's intermediates.
                    let lhs = log_sigmoid(fr) + m_prev;
                    let ei = f32::exp(ir - m);
                    let ef = f32::exp(lhs - m);
                    let ig = f32::min(ei, 1.0);
                    let fg = f32::min(ef, 1.0);
                    let zt = tanh_clamped(zr);
                    let og = sigmoid(or);

                    // h = (σ(õ) c) / n
                    let dh_t = in_cur[8 * i + 7] + dh_rec;
                    let dc = dc_reg[i] + dh_t * og / n;
                    let dn = dn_reg[i] - dh_t * og * c / (n * n);
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
                    dc_reg[i] = dc * fg;
                    dn_reg[i] = dn * fg;
                    // i = exp(ĩ - m), f = exp(lhs - m)
                    let da = dei * ei;
                    let db = def * ef;
                    let dm = dm_reg[i] - da - db;
                    let mut dir = da;
                    let mut dlhs = db;
                    if n_prev == 0.0 || lhs < ir {
                        dir += dm;
                    } else {
                        dlhs += dm;
                    }
                    dm_reg[i] = dlhs;
                    let dfr = dlhs * sigmoid(-fr);

                    let bo = k * kp + j;
                    dg_buf[bo] = dir;
                    dg_buf[bo + dh] = dfr;
                    dg_buf[bo + 2 * dh] = dzr;
                    dg_buf[bo + 3 * dh] = dor;
                    let go = (b * seq + t) * 4 * hid + head * dh + j;
                    dgates[go] = F::cast_from(dir);
                    dgates[go + hid] = F::cast_from(dfr);
                    dgates[go + 2 * hid] = F::cast_from(dzr);
                    dgates[go + 3 * hid] = F::cast_from(dor);
                    let ho = ((head * batch + b) * seq + t) * 4 * dh + j;
                    dgh[ho] = dir;
                    dgh[ho + dh] = dfr;
                    dgh[ho + 2 * dh] = dzr;
                    dgh[ho + 3 * dh] = dor;
                    db_reg[4 * i] += dir;
                    db_reg[4 * i + 1] += dfr;
                    db_reg[4 * i + 2] += dzr;
                    db_reg[4 * i + 3] += dor;
                    // The state after step t - 1 is the one before step t.
                    st[3 * i] = c_prev;
                    st[3 * i + 1] = n_prev;
                    st[3 * i + 2] = m_prev;
                } else {
                    let o = b * hid + head * dh + j;
                    dstate0[o] = F::cast_from(dh_rec);
                    dstate0[plane0 + o] = F::cast_from(dc_reg[i]);
                    dstate0[2 * plane0 + o] = F::cast_from(dn_reg[i]);
                    dstate0[3 * plane0 + o] = F::cast_from(dm_reg[i]);
                    let bo = b * 4 * hid + head * dh + j;
                    #[unroll]
                    for g in 0..4usize {
                        dbias[bo + g * hid] = db_reg[4 * i + g];
                    }
                }
            }
            #[unroll]
            for x in 0..8usize {
                in_cur[8 * i + x] = in_nxt[8 * i + x];
            }
        }
        // Publishes dgates_t for the next step; orders this step's reads of the partial sums
        // before the next step overwrites them.
        sync_cube();
    }
}

/// The inputs of step `t` for item `i` (row `b`, unit `j`) into `dst[8i..8i+8]`: the four
/// pre-activations, `c, n, m` before the step (the initial state at `t = 0`), and the gradient
/// of `h_t` from the output.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_step_inputs<F: Float>(
    gates: &Tensor<f32>,
    states: &Tensor<f32>,
    state0: &Tensor<F>,
    dout: &Tensor<F>,
    dst: &mut Array<f32>,
    i: usize,
    b: usize,
    j: usize,
    t: usize,
    head: usize,
    #[comptime] dh: usize,
    hid: usize,
    seq: usize,
    batch: usize,
) {
    let go = (b * seq + t) * 4 * hid + head * dh + j;
    dst[8 * i] = gates[go];
    dst[8 * i + 1] = gates[go + hid];
    dst[8 * i + 2] = gates[go + 2 * hid];
    dst[8 * i + 3] = gates[go + 3 * hid];
    if t > 0 {
        let so = (b * seq + t - 1) * hid + head * dh + j;
        let plane = batch * seq * hid;
        dst[8 * i + 4] = states[so];
        dst[8 * i + 5] = states[plane + so];
        dst[8 * i + 6] = states[2 * plane + so];
    } else {
        let o = b * hid + head * dh + j;
        let plane0 = batch * hid;
        dst[8 * i + 4] = f32::cast_from(state0[plane0 + o]);
        dst[8 * i + 5] = f32::cast_from(state0[2 * plane0 + o]);
        dst[8 * i + 6] = f32::cast_from(state0[3 * plane0 + o]);
    }
    dst[8 * i + 7] = f32::cast_from(dout[(b * (seq + 3) + t) * hid + head * dh + j]);
}
