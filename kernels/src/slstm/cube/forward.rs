//! The fused sLSTM forward kernel: the whole time loop in one launch.
//!
//! One cube per (batch block of `bb` rows, head). Per step, two phases split by barriers:
//!
//! 1. the recurrent reduction `Σ_q h_{t-1}[q] R[q, g·DH + j]` (eqs. 11–14) for the four gates
//!    of every unit `j` and row: `split` threads share one unit, each summing one slice of `q`
//!    (so a thread's dependent chain is `DH / split` long, not `DH`), `unroll` rows of `R` loaded
//!    before they are used so the loads overlap; `R` is read from global memory where
//!    consecutive threads read consecutive columns (coalesced) and stays in L1/L2 across steps;
//!    the partial sums go to shared memory;
//! 2. the pointwise cell (eqs. 8–10, 15–17), the `bb · DH` items spread over all threads:
//!    sum the partials, add `W x_t + b` (`W x_t` prefetched one step ahead), update `c, n, m`
//!    (registers) and write `h_t` to shared memory and to the output.
//!
//! State and accumulation are f32 whatever the I/O dtype `F`.

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
/// pre-activations) and `states [4, B, S, H]`, both f32: planes 0–2 hold `c_t, n_t, m_t`
/// `[B, S, H]`, plane 3 holds `h_{t-1}` head-major `[NH, B, S, DH]` (the left operand of the
/// backward's `dR` matmul, batched over heads and rows).
///
/// Layout (comptime): `ut · split` threads; thread `tid` reduces for the units
/// `j = tid % ut + u·ut` over the slice `tid / ut` of `q` (`slice` long, a multiple of
/// `unroll`; its first `cached · unroll` rows of R come from shared memory), and owns the pointwise items `(k, j) = tid + i·ut·split` (row-major over
/// `[bb, DH]`).
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
    #[comptime] ut: usize,
    #[comptime] split: usize,
    #[comptime] unroll: usize,
    #[comptime] cached: usize,
    #[comptime] save: bool,
    #[define(F)] _dtype: StorageType,
) {
    let nt = comptime!(ut * split);
    let upt = comptime!(dh.div_ceil(ut));
    let slice = comptime!(dh.div_ceil(split).div_ceil(unroll) * unroll);
    let blocks = comptime!(slice / unroll);
    // h is stored padded to `split · slice` entries per row, the padding zero, so the
    // unrolled reduction needs no bounds checks on h (R's row index is clamped instead).
    let dhp = comptime!(slice * split);
    let items = comptime!(bb * dh);
    let ipt = comptime!(items.div_ceil(nt));
    let last_q = comptime!(dh - 1);

    let tid = UNIT_POS_X as usize;
    let ju = tid % ut;
    let sl = tid / ut;
    let q0 = sl * slice;
    let head = CUBE_POS_Y as usize;
    let b0 = CUBE_POS_X as usize * bb;
    let batch = wx.shape(0);
    let seq = wx.shape(1);
    let hid = r.shape(0) * dh;
    let r_base = head * dh * 4 * dh;
    let plane0 = batch * hid;
    let plane = batch * seq * hid;

    // h_{t-1} of the bb rows; partial sums [split, bb, 4, DH] of the reduction.
    let mut h_buf = SharedMemory::<f32>::new(comptime!(bb * dhp));
    let mut part = SharedMemory::<f32>::new(comptime!(split * bb * 4 * dh));
    // The first `cached` blocks of `unroll` rows of R of every slice, `[split, cached·unroll,
    // 4·DH]` in the I/O dtype, loaded once: read from shared memory every step instead of L2.
    let cw = comptime!(cached * unroll);
    let cache_len = comptime!(split * cw * 4 * dh);
    let mut r_cache = SharedMemory::<F>::new(comptime!(cache_len.max(1)));
    // Per owned item: h, c, n, m, the bias, W x of this step and of the next.
    let mut h_reg = Array::<f32>::new(ipt);
    let mut c_reg = Array::<f32>::new(ipt);
    let mut n_reg = Array::<f32>::new(ipt);
    let mut m_reg = Array::<f32>::new(ipt);
    let mut b_reg = Array::<f32>::new(comptime!(4 * ipt));
    let mut x_cur = Array::<f32>::new(comptime!(4 * ipt));
    let mut x_nxt = Array::<f32>::new(comptime!(4 * ipt));
    let mut acc = Array::<f32>::new(comptime!(4 * bb));
    let mut rv = Array::<f32>::new(comptime!(4 * unroll));

    for p in 0..comptime!((bb * dhp).div_ceil(nt)) {
        let x = tid + p * nt;
        if x < bb * dhp && x % dhp >= dh {
            h_buf[x] = 0.0;
        }
    }
    #[unroll]
    for i in 0..ipt {
        let item = tid + i * nt;
        let k = item / dh;
        let j = item % dh;
        let b = b0 + k;
        h_reg[i] = 0.0;
        c_reg[i] = 0.0;
        n_reg[i] = 0.0;
        m_reg[i] = 0.0;
        #[unroll]
        for g in 0..4usize {
            b_reg[4 * i + g] = 0.0;
            x_cur[4 * i + g] = 0.0;
            x_nxt[4 * i + g] = 0.0;
        }
        if item < items {
            let mut h = 0.0f32;
            if b < batch {
                let o = b * hid + head * dh + j;
                h = f32::cast_from(state0[o]);
                c_reg[i] = f32::cast_from(state0[plane0 + o]);
                n_reg[i] = f32::cast_from(state0[2 * plane0 + o]);
                m_reg[i] = f32::cast_from(state0[3 * plane0 + o]);
                let xo = b * seq * 4 * hid + head * dh + j;
                #[unroll]
                for g in 0..4usize {
                    b_reg[4 * i + g] = f32::cast_from(bias[head * dh + j + g * hid]);
                    x_cur[4 * i + g] = f32::cast_from(wx[xo + g * hid]);
                }
            }
            h_buf[k * dhp + j] = h;
            h_reg[i] = h;
        }
    }
    if comptime!(cached > 0) {
        for p in 0..comptime!(cache_len.div_ceil(nt)) {
            let x = tid + p * nt;
            if x < cache_len {
                let row = x / comptime!(4 * dh);
                let q = (row / cw) * slice + row % cw;
                r_cache[x] = r[r_base + clamp_max(q, last_q) * 4 * dh + x % comptime!(4 * dh)];
            }
        }
    }
    // Publishes h_0 (and the cached rows of R) to every thread before the first step reads it.
    sync_cube();

    for t in 0..seq {
        // Prefetch W x_{t+1}: its latency hides behind this step.
        if t + 1 < seq {
            #[unroll]
            for i in 0..ipt {
                let item = tid + i * nt;
                let b = b0 + item / dh;
                if item < items && b < batch {
                    let xo = (b * seq + t + 1) * 4 * hid + head * dh + item % dh;
                    #[unroll]
                    for g in 0..4usize {
                        x_nxt[4 * i + g] = f32::cast_from(wx[xo + g * hid]);
                    }
                }
            }
        }
        // R h_{t-1} for the four gates of unit j (eqs. 11–14, recurrent part), this thread's
        // slice of q: `unroll` rows of R loaded at once so the loads overlap.
        #[unroll]
        for u in 0..upt {
            let j = ju + u * ut;
            if j < dh {
                #[unroll]
                for x in 0..comptime!(4 * bb) {
                    acc[x] = 0.0;
                }
                for blk in 0..cached {
                    let qb = q0 + blk * unroll;
                    let base = (sl * cw + blk * unroll) * 4 * dh + j;
                    #[unroll]
                    for x in 0..unroll {
                        #[unroll]
                        for g in 0..4usize {
                            rv[4 * x + g] = f32::cast_from(r_cache[base + x * 4 * dh + g * dh]);
                        }
                    }
                    #[unroll]
                    for x in 0..unroll {
                        #[unroll]
                        for k in 0..bb {
                            let hq = h_buf[k * dhp + qb + x];
                            #[unroll]
                            for g in 0..4usize {
                                acc[4 * k + g] += hq * rv[4 * x + g];
                            }
                        }
                    }
                }
                for blk in cached..blocks {
                    let qb = q0 + blk * unroll;
                    #[unroll]
                    for x in 0..unroll {
                        let row = r_base + clamp_max(qb + x, last_q) * 4 * dh + j;
                        #[unroll]
                        for g in 0..4usize {
                            rv[4 * x + g] = f32::cast_from(r[row + g * dh]);
                        }
                    }
                    #[unroll]
                    for x in 0..unroll {
                        #[unroll]
                        for k in 0..bb {
                            let hq = h_buf[k * dhp + qb + x];
                            #[unroll]
                            for g in 0..4usize {
                                acc[4 * k + g] += hq * rv[4 * x + g];
                            }
                        }
                    }
                }
                #[unroll]
                for k in 0..bb {
                    #[unroll]
                    for g in 0..4usize {
                        part[((sl * bb + k) * 4 + g) * dh + j] = acc[4 * k + g];
                    }
                }
            }
        }
        // Publishes the partial sums; orders this step's reads of h_{t-1} before the writes
        // of h_t below.
        sync_cube();

        #[unroll]
        for i in 0..ipt {
            let item = tid + i * nt;
            let k = item / dh;
            let j = item % dh;
            let b = b0 + k;
            if item < items && b < batch {
                let mut pre = Array::<f32>::new(4usize);
                #[unroll]
                for g in 0..4usize {
                    let mut sum = 0.0f32;
                    #[unroll]
                    for s in 0..split {
                        sum += part[((s * bb + k) * 4 + g) * dh + j];
                    }
                    pre[g] = (x_cur[4 * i + g] + sum) + b_reg[4 * i + g];
                }
                let ir = pre[0];
                let fr = pre[1];
                let zr = pre[2];
                let or = pre[3];
                let c_prev = c_reg[i];
                let n_prev = n_reg[i];
                let m_prev = m_reg[i];
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
                c_reg[i] = c;
                n_reg[i] = n;
                m_reg[i] = m;
                h_buf[k * dhp + j] = h;
                out[(b * (seq + 3) + t) * hid + head * dh + j] = F::cast_from(h);
                if save {
                    let xo = (b * seq + t) * 4 * hid + head * dh + j;
                    gates[xo] = ir;
                    gates[xo + hid] = fr;
                    gates[xo + 2 * hid] = zr;
                    gates[xo + 3 * hid] = or;
                    let so = (b * seq + t) * hid + head * dh + j;
                    states[so] = c;
                    states[plane + so] = n;
                    states[2 * plane + so] = m;
                    states[3 * plane + ((head * batch + b) * seq + t) * dh + j] = h_reg[i];
                }
                h_reg[i] = h;
            }
            #[unroll]
            for g in 0..4usize {
                x_cur[4 * i + g] = x_nxt[4 * i + g];
            }
        }
        // Publishes h_t for step t + 1; orders this step's reads of the partial sums before
        // step t + 1 overwrites them.
        sync_cube();
    }

    #[unroll]
    for i in 0..ipt {
        let item = tid + i * nt;
        let b = b0 + item / dh;
        if item < items && b < batch {
            let o = (b * (seq + 3) + seq) * hid + head * dh + item % dh;
            out[o] = F::cast_from(c_reg[i]);
            out[o + hid] = F::cast_from(n_reg[i]);
            out[o + 2 * hid] = F::cast_from(m_reg[i]);
        }
    }
}
