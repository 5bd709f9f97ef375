//! The fused CPU sLSTM (`NdArray<f32>`, kernels/src/slstm/cpu.rs) against the tensor-op
//! reference `xlstm_cells::slstm::sequence`: outputs, final state and every gradient (through
//! `Autodiff<NdArray<f32>>`), on awkward shapes, with and without an initial state.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use xlstm_cells::slstm::{SlstmState, SlstmWeights};
use xlstm_golden::rel_l2;
use xlstm_kernels::SlstmBackend;

mod common;
use common::Rng;

type Cpu = NdArray<f32>;
type Ad = Autodiff<Cpu>;

fn tensor<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<Ad, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Named outputs and gradients of one run.
type Results = Vec<(&'static str, Vec<f64>)>;

/// Runs one problem through the fused path (`fused`) or the reference, with a random linear
/// loss on `h` and on the final state, and returns outputs and gradients.
fn run(seed: u64, shape: (usize, usize, usize, usize), with_state: bool, fused: bool) -> Results {
    let (batch, seq, nh, dh) = shape;
    let hid = nh * dh;
    let mut rng = Rng::new(seed);
    let scale = 1.0 / (dh as f32).sqrt();
    let wx = tensor(
        &rng.uniform(batch * seq * 4 * hid, -2.0, 2.0),
        [batch, seq, 4 * hid],
    )
    .require_grad();
    let r = tensor(
        &rng.uniform(nh * dh * 4 * dh, -scale, scale),
        [nh, dh, 4 * dh],
    )
    .require_grad();
    let b = tensor(&rng.uniform(4 * hid, -1.0, 1.0), [4 * hid]).require_grad();
    let state: Option<[Tensor<Ad, 2>; 4]> = with_state.then(|| {
        // n = 0 in batch row 0 only: the per-element first step applies there and only there.
        let mut n = rng.uniform(batch * hid, 0.2, 2.0);
        n[..hid].iter_mut().for_each(|v| *v = 0.0);
        let h = rng.uniform(batch * hid, -1.0, 1.0);
        let c = rng.uniform(batch * hid, -1.0, 1.0);
        let m = rng.uniform(batch * hid, -2.0, 2.0);
        [h, c, n, m].map(|v| tensor(&v, [batch, hid]).require_grad())
    });
    let weights = SlstmWeights {
        r: r.clone(),
        b: b.clone(),
    };
    let state_in = state.clone().map(|[h, c, n, m]| SlstmState { h, c, n, m });
    let (h, last) = if fused {
        Ad::slstm_sequence(wx.clone(), &weights, state_in)
    } else {
        xlstm_cells::slstm::sequence(wx.clone(), &weights, state_in)
    }
    .unwrap();
    let w_h = tensor(
        &rng.uniform(batch * seq * hid, -1.0, 1.0),
        [batch, seq, hid],
    );
    let mut loss = (h.clone() * w_h).sum();
    let finals = [last.h, last.c, last.n, last.m];
    for f in &finals {
        loss =
            loss + (f.clone() * tensor(&rng.uniform(batch * hid, -1.0, 1.0), [batch, hid])).sum();
    }
    let grads = loss.backward();
    let mut out: Results = vec![("h", values(h))];
    for (name, f) in ["h_S", "c_S", "n_S", "m_S"].into_iter().zip(finals) {
        out.push((name, values(f)));
    }
    out.push(("d wx", values(wx.grad(&grads).unwrap())));
    out.push(("d r", values(r.grad(&grads).unwrap())));
    out.push(("d b", values(b.grad(&grads).unwrap())));
    if let Some(s) = state {
        for (name, t) in ["d h0", "d c0", "d n0", "d m0"].into_iter().zip(s) {
            out.push((name, values(t.grad(&grads).unwrap())));
        }
    }
    out
}

#[test]
fn cpu_fused_matches_reference_on_awkward_shapes() {
    // (batch, seq, NH, DH), with initial state
    let cases = [
        ((1, 1, 1, 8), false),
        ((1, 1, 1, 8), true),
        ((2, 2, 1, 5), true),
        ((3, 37, 2, 12), true),
        ((5, 64, 3, 33), true),
        ((1, 17, 4, 32), false),
        ((7, 21, 2, 16), true),
        ((2, 301, 1, 7), true),
    ];
    let mut failures = vec![];
    for (i, &(shape, with_state)) in cases.iter().enumerate() {
        let got = run(i as u64 + 1, shape, with_state, true);
        let want = run(i as u64 + 1, shape, with_state, false);
        assert_eq!(got.len(), want.len());
        for ((what, g), (_, w)) in got.iter().zip(&want) {
            let bound = if what.starts_with('d') { 1e-5 } else { 2e-6 };
            let err = rel_l2(g, w);
            if err.is_nan() || err > bound {
                failures.push(format!(
                    "{shape:?} state {with_state}: {what} rel {err:.2e}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cpu_fused_without_autodiff_matches_reference() {
    let (batch, seq, nh, dh) = (3, 29, 2, 9);
    let hid = nh * dh;
    let mut rng = Rng(7);
    let dev = Default::default();
    let t = |v: Vec<f32>, shape: [usize; 3]| {
        Tensor::<Cpu, 3>::from_data(TensorData::new(v, shape), &dev)
    };
    let wx = t(
        rng.uniform(batch * seq * 4 * hid, -2.0, 2.0),
        [batch, seq, 4 * hid],
    );
    let weights = SlstmWeights {
        r: t(rng.uniform(nh * dh * 4 * dh, -0.3, 0.3), [nh, dh, 4 * dh]),
        b: Tensor::from_data(
            TensorData::new(rng.uniform(4 * hid, -1.0, 1.0), [4 * hid]),
            &dev,
        ),
    };
    let (h1, s1) = Cpu::slstm_sequence(wx.clone(), &weights, None).unwrap();
    let (h2, s2) = xlstm_cells::slstm::sequence(wx, &weights, None).unwrap();
    let v = |t: Tensor<Cpu, 3>| t.into_data().iter::<f64>().collect::<Vec<_>>();
    assert!(rel_l2(&v(h1), &v(h2)) < 2e-6);
    for (a, b) in [(s1.c, s2.c), (s1.n, s2.n), (s1.m, s2.m)] {
        assert!(rel_l2(&v(a.unsqueeze()), &v(b.unsqueeze())) < 2e-6);
    }
}
