//! The chunkwise mLSTM forward in two kernels, in the manner of TFLA (Beck et al. 2025).
//!
//! The sequence is cut into chunks of `L` tokens (the last one may be partial: tokens past
//! `S` are masked). Within a chunk, with the chunk-local inclusive sums `F_t = Σ_{u≤t} log f_u`
//! and the chunk-start state `(C₀, n₀, m₀)` (the math of `xlstm_cells::mlstm`, docs/equations.md):
//!
//! 1. [`mlstm_chunk_states_kernel`]: the chunk-boundary states, recurrently over chunks. One
//!    cube owns a `TK × TV` tile of `C` (in registers, 16×16 units, `RM × RN` entries each) for
//!    one head and walks the chunks: it stores the chunk-start tile, then
//!    `m₁ = max(F_L + m₀, max_s(ĩ_s + F_L - F_s))`,
//!    `C₁ = e^{F_L+m₀-m₁} C₀ + Σ_s e^{ĩ_s+F_L-F_s-m₁} k_s v_sᵀ` (likewise `n₁`).
//! 2. [`mlstm_chunk_outputs_kernel`]: all chunks in parallel. One cube per `(chunk, TV columns
//!    of h, head)` computes `P = Q Kᵀ` and `Q C₀` over `DQK` in slices of `TA`, the
//!    stabilised gate matrix `D_ts = e^{F_t - F_s + ĩ_s - stab_t}` (`s ≤ t`), with
//!    `stab_t = max(m₀ + F_t, max_{s≤t}(F_t - F_s + ĩ_s))`, then
//!    `h_t = ((D∘P) V + e^{m₀+F_t-stab_t} q_t C₀) / (max(|rowsum(D∘P) + e^{…} q_t·n₀|, e^{-stab_t}) + eps)`.
//!
//! Both kernels compute the gate sums of a chunk the same way ([`chunk_gates`]), so they agree
//! bit for bit. All arithmetic is f32; inputs are `F` (f32, bf16, f16), states `S`.

use cubecl::prelude::*;

use super::step_kernel::log_sigmoid;

/// Units per cube along each axis (the cube is `UNITS × UNITS`).
pub(crate) const UNITS: u32 = 16;
/// Tokens per shared-memory slice in the state kernel (divides every chunk size).
pub(crate) const SUB: usize = 16;
// PAD: the input-gate value `-1e30` given to tokens past the end of the sequence, so that
// `e^{PAD + x} = 0` (written as a literal: cube code takes no Rust constants of float type).

/// Fills `fs[0..l]` with the chunk-local inclusive sums of `log σ(f̃)` and `is[0..l]` with `ĩ`
/// for the tokens `t0..t0 + l` (tokens past `seq` get `log f = 0` and `ĩ = PAD`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn chunk_gates<F: Float>(
    i_pre: &Tensor<F>,
    f_pre: &Tensor<F>,
    batch: usize,
    head: usize,
    t0: usize,
    seq: usize,
    fs: &mut SharedMemory<f32>,
    is: &mut SharedMemory<f32>,
    #[comptime] l: usize,
) {
    let tid = UNIT_POS as usize;
    if tid < l {
        let t = t0 + tid;
        let mut lf = 0.0f32;
        let mut ig = f32::new(-1.0e30); // PAD
        if t < seq {
            lf = log_sigmoid(f32::cast_from(
                f_pre[batch * f_pre.stride(0) + head * f_pre.stride(1) + t * f_pre.stride(2)],
            ));
            ig = f32::cast_from(
                i_pre[batch * i_pre.stride(0) + head * i_pre.stride(1) + t * i_pre.stride(2)],
            );
        }
        fs[tid] = lf;
        is[tid] = ig;
    }
    // Protects: the log gates are written before the scan reads them.
    sync_cube();
    // Hillis–Steele inclusive scan over the l entries.
    let mut offset = 1usize;
    while offset < l {
        let mut add = 0.0f32;
        if tid < l && tid >= offset {
            add = fs[tid - offset];
        }
        // Protects: every unit has read its addend before any entry is overwritten.
        sync_cube();
        if tid < l {
            fs[tid] += add;
        }
        // Protects: this round's sums are written before the next round reads them.
        sync_cube();
        offset *= 2;
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlstm_chunk_states_kernel<F: Float, S: Float>(
    k: &Tensor<F>,             // [B, NH, S, DQK]
    v: &Tensor<F>,             // [B, NH, S, DV]
    i_pre: &Tensor<F>,         // [B, NH, S]
    f_pre: &Tensor<F>,         // [B, NH, S]
    c0: &Tensor<S>,            // [B, NH, DQK, DV]
    n0: &Tensor<S>,            // [B, NH, DQK]
    m0: &Tensor<S>,            // [B, NH]
    c_start: &mut Tensor<f32>, // [G, NH, NC, DQK, DV], G batch entries from batch_offset
    n_start: &mut Tensor<f32>, // [G, NH, NC, DQK]
    m_start: &mut Tensor<f32>, // [G, NH, NC]
    c_out: &mut Tensor<S>,     // [B, NH, DQK, DV]
    n_out: &mut Tensor<S>,     // [B, NH, DQK]
    m_out: &mut Tensor<S>,     // [B, NH]
    key_scale: f32,
    batch_offset: u32,
    #[comptime] l: usize,
    #[comptime] rm: usize,
    #[comptime] rn: usize,
    #[define(F, S)] _dtypes: [StorageType; 2],
) {
    let units = UNITS as usize;
    let tk = comptime!(16 * rm);
    let tv = comptime!(16 * rn);
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let tid = UNIT_POS as usize;
    let head = CUBE_POS_Y as usize;
    let group = CUBE_POS_Z as usize; // batch entry within this launch's group
    let batch = group + batch_offset as usize;
    let seq = k.shape(2);
    let dqk = k.shape(3);
    let dv = v.shape(3);
    let tiles_v = dv.div_ceil(tv);
    let a0 = (CUBE_POS_X as usize / tiles_v) * tk;
    let d0 = (CUBE_POS_X as usize % tiles_v) * tv;
    let first_v = d0 == 0;
    let first_tile = a0 == 0 && first_v;

    // The state tile in registers: rows a0 + ty + 16 r, columns d0 + tx + 16 j.
    let mut acc = Array::<f32>::new(comptime!(rm * rn));
    let mut n_acc = Array::<f32>::new(rm);
    #[unroll]
    for r in 0..rm {
        let a = a0 + ty + r * units;
        let mut n_val = 0.0f32;
        if a < dqk {
            n_val =
                f32::cast_from(n0[batch * n0.stride(0) + head * n0.stride(1) + a * n0.stride(2)]);
        }
        n_acc[r] = n_val;
        #[unroll]
        for j in 0..rn {
            let d = d0 + tx + j * units;
            let mut c_val = 0.0f32;
            if a < dqk && d < dv {
                c_val = f32::cast_from(
                    c0[batch * c0.stride(0)
                        + head * c0.stride(1)
                        + a * c0.stride(2)
                        + d * c0.stride(3)],
                );
            }
            acc[r * rn + j] = c_val;
        }
    }
    let mut m_run = f32::cast_from(m0[batch * m0.stride(0) + head * m0.stride(1)]);

    let mut ks = SharedMemory::<f32>::new(comptime!(SUB * 16 * rm));
    let mut vs = SharedMemory::<f32>::new(comptime!(SUB * 16 * rn));
    let mut kr = Array::<f32>::new(rm);
    let mut vr = Array::<f32>::new(rn);
    let mut fs = SharedMemory::<f32>::new(l);
    let mut is = SharedMemory::<f32>::new(l);

    let chunks = seq.div_ceil(l);
    let cs_base = group * c_start.stride(0) + head * c_start.stride(1);
    let ns_base = group * n_start.stride(0) + head * n_start.stride(1);
    for c in 0..chunks {
        // The chunk-start state.
        #[unroll]
        for r in 0..rm {
            let a = a0 + ty + r * units;
            if a < dqk {
                #[unroll]
                for j in 0..rn {
                    let d = d0 + tx + j * units;
                    if d < dv {
                        c_start[cs_base
                            + c * c_start.stride(2)
                            + a * c_start.stride(3)
                            + d * c_start.stride(4)] = acc[r * rn + j];
                    }
                }
                if first_v && tx == 0 {
                    n_start[ns_base + c * n_start.stride(2) + a * n_start.stride(3)] = n_acc[r];
                }
            }
        }
        if first_tile && tid == 0 {
            m_start[group * m_start.stride(0) + head * m_start.stride(1) + c * m_start.stride(2)] =
                m_run;
        }

        let t0 = c * l;
        chunk_gates::<F>(i_pre, f_pre, batch, head, t0, seq, &mut fs, &mut is, l);
        let f_last = fs[l - 1];
        let mut m_loc = f32::new(-1.0e30); // PAD
        for s in 0..l {
            m_loc = m_loc.max(is[s] + f_last - fs[s]);
        }
        let m_new = (f_last + m_run).max(m_loc);
        let decay = (f_last + m_run - m_new).exp();

        #[unroll]
        for r in 0..rm {
            n_acc[r] *= decay;
            #[unroll]
            for j in 0..rn {
                acc[r * rn + j] *= decay;
            }
        }

        // The chunk's tokens in slices of `SUB`: weighted keys e^{ĩ_s+F_L-F_s-m₁} k_s / sqrt(DQK)
        // and values of this cube's tile into shared memory, then the rank-SUB update.
        let sub = SUB;
        let mut s0 = 0usize;
        while s0 < l {
            let mut e = tid;
            while e < sub * tk {
                let s = s0 + e / tk;
                let a = a0 + e % tk;
                let t = t0 + s;
                let mut val = 0.0f32;
                if t < seq && a < dqk {
                    val = f32::cast_from(
                        k[batch * k.stride(0)
                            + head * k.stride(1)
                            + t * k.stride(2)
                            + a * k.stride(3)],
                    ) * key_scale
                        * (is[s] + f_last - fs[s] - m_new).exp();
                }
                ks[e] = val;
                e += units * units;
            }
            let mut e = tid;
            while e < sub * tv {
                let t = t0 + s0 + e / tv;
                let d = d0 + e % tv;
                let mut val = 0.0f32;
                if t < seq && d < dv {
                    val = f32::cast_from(
                        v[batch * v.stride(0)
                            + head * v.stride(1)
                            + t * v.stride(2)
                            + d * v.stride(3)],
                    );
                }
                vs[e] = val;
                e += units * units;
            }
            // Protects: the key and value slices are complete before the products read them.
            sync_cube();
            for s in 0..sub {
                #[unroll]
                for r in 0..rm {
                    kr[r] = ks[s * tk + ty + r * units];
                    n_acc[r] += kr[r];
                }
                #[unroll]
                for j in 0..rn {
                    vr[j] = vs[s * tv + tx + j * units];
                }
                #[unroll]
                for r in 0..rm {
                    #[unroll]
                    for j in 0..rn {
                        acc[r * rn + j] += kr[r] * vr[j];
                    }
                }
            }
            // Protects: every unit is done with the slices before the next ones overwrite them.
            sync_cube();
            s0 += sub;
        }
        m_run = m_new;
    }

    // The final state.
    #[unroll]
    for r in 0..rm {
        let a = a0 + ty + r * units;
        if a < dqk {
            #[unroll]
            for j in 0..rn {
                let d = d0 + tx + j * units;
                if d < dv {
                    c_out[batch * c_out.stride(0)
                        + head * c_out.stride(1)
                        + a * c_out.stride(2)
                        + d * c_out.stride(3)] = S::cast_from(acc[r * rn + j]);
                }
            }
            if first_v && tx == 0 {
                n_out[batch * n_out.stride(0) + head * n_out.stride(1) + a * n_out.stride(2)] =
                    S::cast_from(n_acc[r]);
            }
        }
    }
    if first_tile && tid == 0 {
        m_out[batch * m_out.stride(0) + head * m_out.stride(1)] = S::cast_from(m_run);
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlstm_chunk_outputs_kernel<F: Float>(
    q: &Tensor<F>,         // [B, NH, S, DQK]
    k: &Tensor<F>,         // [B, NH, S, DQK]
    v: &Tensor<F>,         // [B, NH, S, DV]
    i_pre: &Tensor<F>,     // [B, NH, S]
    f_pre: &Tensor<F>,     // [B, NH, S]
    c_start: &Tensor<f32>, // [G, NH, NC, DQK, DV], G batch entries from batch_offset
    n_start: &Tensor<f32>, // [G, NH, NC, DQK]
    m_start: &Tensor<f32>, // [G, NH, NC]
    h: &mut Tensor<F>,     // [B, NH, S, DV]
    key_scale: f32,
    eps: f32,
    batch_offset: u32,
    #[comptime] l: usize,
    #[comptime] rn: usize,
    #[comptime] ta: usize,
    #[define(F)] _dtype: StorageType,
) {
    let units = UNITS as usize;
    let rm = comptime!(l / 16);
    let tv = comptime!(16 * rn);
    let qk_stride = comptime!(ta + 1); // padded rows: no bank conflicts on the key reads
    let p_stride = comptime!(l + 1);
    let tx = UNIT_POS_X as usize;
    let ty = UNIT_POS_Y as usize;
    let tid = UNIT_POS as usize;
    let head = CUBE_POS_Y as usize;
    let group = CUBE_POS_Z as usize; // batch entry within this launch's group
    let batch = group + batch_offset as usize;
    let seq = q.shape(2);
    let dqk = q.shape(3);
    let dv = v.shape(3);
    let tiles_v = dv.div_ceil(tv);
    let c = CUBE_POS_X as usize / tiles_v;
    let d0 = (CUBE_POS_X as usize % tiles_v) * tv;
    let t0 = c * l;

    let mut qs = SharedMemory::<f32>::new(comptime!(l * (ta + 1)));
    let mut ks = SharedMemory::<f32>::new(comptime!(l * (ta + 1)));
    let mut cs = SharedMemory::<f32>::new(comptime!(ta * 16 * rn)); // C₀ slices, then V slices
    let mut ns = SharedMemory::<f32>::new(ta);
    let mut ps = SharedMemory::<f32>::new(comptime!(l * (l + 1)));
    let mut fs = SharedMemory::<f32>::new(l);
    let mut is = SharedMemory::<f32>::new(l);
    let mut stab = SharedMemory::<f32>::new(l);
    let mut start_scale = SharedMemory::<f32>::new(l);
    let mut den = SharedMemory::<f32>::new(l);

    chunk_gates::<F>(i_pre, f_pre, batch, head, t0, seq, &mut fs, &mut is, l);
    let m0 = m_start[group * m_start.stride(0) + head * m_start.stride(1) + c * m_start.stride(2)];

    // P = Q Kᵀ (rows t = ty + 16 r, columns s = tx + 16 j) and Q C₀ (columns d0 + tx + 16 j).
    let mut acc_p = Array::<f32>::new(comptime!(rm * rm));
    let mut acc_start = Array::<f32>::new(comptime!(rm * rn));
    let mut acc_out = Array::<f32>::new(comptime!(rm * rn));
    #[unroll]
    for x in 0..rm * rm {
        acc_p[x] = 0.0;
    }
    #[unroll]
    for x in 0..rm * rn {
        acc_start[x] = 0.0;
        acc_out[x] = 0.0;
    }
    let mut qn = 0.0f32; // q_t·n₀ for t = tid < l
    let q_base = batch * q.stride(0) + head * q.stride(1);
    let k_base = batch * k.stride(0) + head * k.stride(1);
    let cs_base = group * c_start.stride(0) + head * c_start.stride(1) + c * c_start.stride(2);
    let ns_base = group * n_start.stride(0) + head * n_start.stride(1) + c * n_start.stride(2);
    let mut qr = Array::<f32>::new(rm);
    let mut kr = Array::<f32>::new(rm);
    let mut cr = Array::<f32>::new(rn);
    let mut a0 = 0usize;
    while a0 < dqk {
        let mut e = tid;
        while e < l * ta {
            let s = e / ta;
            let a = a0 + e % ta;
            let t = t0 + s;
            let mut qv = 0.0f32;
            let mut kv = 0.0f32;
            if t < seq && a < dqk {
                qv = f32::cast_from(q[q_base + t * q.stride(2) + a * q.stride(3)]);
                kv = f32::cast_from(k[k_base + t * k.stride(2) + a * k.stride(3)]) * key_scale;
            }
            qs[s * qk_stride + e % ta] = qv;
            ks[s * qk_stride + e % ta] = kv;
            e += units * units;
        }
        let mut e = tid;
        while e < ta * tv {
            let a = a0 + e / tv;
            let d = d0 + e % tv;
            let mut cv = 0.0f32;
            if a < dqk && d < dv {
                cv = c_start[cs_base + a * c_start.stride(3) + d * c_start.stride(4)];
            }
            cs[e] = cv;
            e += units * units;
        }
        if tid < ta {
            let a = a0 + tid;
            let mut nv = 0.0f32;
            if a < dqk {
                nv = n_start[ns_base + a * n_start.stride(3)];
            }
            ns[tid] = nv;
        }
        // Protects: the Q, K, C₀ and n₀ slices are complete before the products read them.
        sync_cube();
        for x in 0..ta {
            #[unroll]
            for r in 0..rm {
                qr[r] = qs[(ty + r * units) * qk_stride + x];
                kr[r] = ks[(tx + r * units) * qk_stride + x];
            }
            #[unroll]
            for j in 0..rn {
                cr[j] = cs[x * tv + tx + j * units];
            }
            #[unroll]
            for r in 0..rm {
                #[unroll]
                for j in 0..rm {
                    acc_p[r * rm + j] += qr[r] * kr[j];
                }
                #[unroll]
                for j in 0..rn {
                    acc_start[r * rn + j] += qr[r] * cr[j];
                }
            }
        }
        if tid < l {
            for x in 0..ta {
                qn += qs[tid * qk_stride + x] * ns[x];
            }
        }
        // Protects: every unit is done with the slices before the next ones overwrite them.
        sync_cube();
        a0 += ta;
    }

    // Row stabilisers stab_t and the start-state scale e^{m₀+F_t-stab_t}.
    if tid < l {
        let f_t = fs[tid];
        let mut mx = m0 + f_t;
        for s in 0..tid + 1 {
            mx = mx.max(f_t - fs[s] + is[s]);
        }
        stab[tid] = mx;
        start_scale[tid] = (m0 + f_t - mx).exp();
    }
    // Protects: stab is complete before the gate matrix uses it.
    sync_cube();

    // D∘P into shared memory (zero above the diagonal and for tokens past the end).
    #[unroll]
    for r in 0..rm {
        let t = ty + r * units;
        #[unroll]
        for j in 0..rm {
            let s = tx + j * units;
            let mut val = 0.0f32;
            if s <= t {
                val = acc_p[r * rm + j] * (fs[t] - fs[s] + is[s] - stab[t]).exp();
            }
            ps[t * p_stride + s] = val;
        }
    }
    // Protects: D∘P is complete before the row sums and the product with V read it.
    sync_cube();
    if tid < l {
        let mut row = 0.0f32;
        for s in 0..l {
            row += ps[tid * p_stride + s];
        }
        den[tid] = (row + start_scale[tid] * qn).abs().max((-stab[tid]).exp()) + eps;
    }

    // (D∘P) V over the chunk's tokens in slices of ta.
    let v_base = batch * v.stride(0) + head * v.stride(1);
    let mut pr = Array::<f32>::new(rm);
    let mut vr = Array::<f32>::new(rn);
    let mut s0 = 0usize;
    while s0 < l {
        let mut e = tid;
        while e < ta * tv {
            let t = t0 + s0 + e / tv;
            let d = d0 + e % tv;
            let mut val = 0.0f32;
            if t < seq && d < dv {
                val = f32::cast_from(v[v_base + t * v.stride(2) + d * v.stride(3)]);
            }
            cs[e] = val;
            e += units * units;
        }
        // Protects: the V slice (and, the first time, den) is complete before it is read.
        sync_cube();
        for x in 0..ta {
            #[unroll]
            for r in 0..rm {
                pr[r] = ps[(ty + r * units) * p_stride + s0 + x];
            }
            #[unroll]
            for j in 0..rn {
                vr[j] = cs[x * tv + tx + j * units];
            }
            #[unroll]
            for r in 0..rm {
                #[unroll]
                for j in 0..rn {
                    acc_out[r * rn + j] += pr[r] * vr[j];
                }
            }
        }
        // Protects: every unit is done with the V slice before the next one overwrites it.
        sync_cube();
        s0 += ta;
    }

    let h_base = batch * h.stride(0) + head * h.stride(1);
    #[unroll]
    for r in 0..rm {
        let tl = ty + r * units;
        let t = t0 + tl;
        if t < seq {
            let scale = start_scale[tl];
            let inv = 1.0f32 / den[tl];
            #[unroll]
            for j in 0..rn {
                let d = d0 + tx + j * units;
                if d < dv {
                    h[h_base + t * h.stride(2) + d * h.stride(3)] =
                        F::cast_from((acc_out[r * rn + j] + scale * acc_start[r * rn + j]) * inv);
                }
            }
        }
    }
}
