//! Plain float64 scalar loops of the two recurrences, independent of burn: the "float64
//! evaluation of the same formula" the edge tests compare with. Inputs are flat row-major
//! slices; states start from the official zero state.

/// mLSTM recurrence (eqs. 15–21), `q, k [B, NH, S, DQK]`, `v [B, NH, S, DV]`,
/// gates `[B, NH, S]`; returns `h [B, NH, S, DV]` and the final `m [B, NH]`.
#[allow(clippy::too_many_arguments)]
pub fn mlstm(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    ig: &[f64],
    fg: &[f64],
    (b, nh, s, dqk, dv): (usize, usize, usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let mut h = vec![0.0; b * nh * s * dv];
    let mut m_last = vec![0.0; b * nh];
    let scale = 1.0 / (dqk as f64).sqrt();
    for (bh, m_out) in m_last.iter_mut().enumerate() {
        let (mut c, mut n, mut m) = (vec![0.0; dqk * dv], vec![0.0; dqk], 0.0f64);
        for t in 0..s {
            let g = bh * s + t;
            let log_f = log_sigmoid(fg[g]);
            let m_new = (log_f + m).max(ig[g]);
            let (fi, ii) = ((log_f + m - m_new).exp(), (ig[g] - m_new).exp());
            let (qt, kt, vt) = (
                &q[g * dqk..][..dqk],
                &k[g * dqk..][..dqk],
                &v[g * dv..][..dv],
            );
            for a in 0..dqk {
                n[a] = fi * n[a] + ii * kt[a] * scale;
                for e in 0..dv {
                    c[a * dv + e] = fi * c[a * dv + e] + ii * kt[a] * scale * vt[e];
                }
            }
            let qn: f64 = (0..dqk).map(|a| qt[a] * n[a]).sum();
            let den = qn.abs().max((-m_new).exp()) + 1e-6;
            for e in 0..dv {
                h[g * dv + e] = (0..dqk).map(|a| qt[a] * c[a * dv + e]).sum::<f64>() / den;
            }
            m = m_new;
        }
        *m_out = m;
    }
    (h, m_last)
}

/// sLSTM recurrence (eqs. 8–17), `wx [B, S, 4·H]` (gate, head, unit), `r [NH, DH, 4·DH]`,
/// `bias [4·H]`; returns `h [B, S, H]` and the final `n [B, H]`.
pub fn slstm(
    wx: &[f64],
    r: &[f64],
    bias: &[f64],
    (b, s, nh, dh): (usize, usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let hid = nh * dh;
    let mut out = vec![0.0; b * s * hid];
    let mut n_last = vec![0.0; b * hid];
    for bi in 0..b {
        let (mut h, mut c, mut n, mut m) = (
            vec![0.0; hid],
            vec![0.0; hid],
            vec![0.0; hid],
            vec![0.0; hid],
        );
        for t in 0..s {
            let x = &wx[(bi * s + t) * 4 * hid..][..4 * hid];
            let mut raw = [
                vec![0.0; hid],
                vec![0.0; hid],
                vec![0.0; hid],
                vec![0.0; hid],
            ];
            for (gate, raw_g) in raw.iter_mut().enumerate() {
                for head in 0..nh {
                    for j in 0..dh {
                        let unit = head * dh + j;
                        let rec: f64 = (0..dh)
                            .map(|u| h[head * dh + u] * r[(head * dh + u) * 4 * dh + gate * dh + j])
                            .sum();
                        raw_g[unit] = x[gate * hid + unit] + rec + bias[gate * hid + unit];
                    }
                }
            }
            for u in 0..hid {
                let log_fm = m[u] + log_sigmoid(raw[1][u]);
                let m_new = if n[u] == 0.0 {
                    raw[0][u]
                } else {
                    raw[0][u].max(log_fm)
                };
                let i = (raw[0][u] - m_new).exp().min(1.0);
                let f = (log_fm - m_new).exp().min(1.0);
                c[u] = f * c[u] + i * raw[2][u].tanh();
                n[u] = f * n[u] + i;
                m[u] = m_new;
                h[u] = c[u] / n[u] / (1.0 + (-raw[3][u]).exp());
                out[(bi * s + t) * hid + u] = h[u];
            }
        }
        n_last[bi * hid..][..hid].copy_from_slice(&n);
    }
    (out, n_last)
}

fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}
