//! The fused sLSTM kernel against the tensor-op reference (`xlstm_cells::slstm::sequence` on
//! ndarray), forward, final state and every gradient, on awkward shapes; and the golden
//! `slstm_cell` cases through the kernel.
//!
//! `cargo test -p xlstm-kernels --features wgpu` runs the wgpu tests (lavapipe on a CPU-only
//! machine); with `--features cuda` the CUDA ones. `XLSTM_SLSTM_LONG=1` adds the long shapes
//! (S up to 4096, B 64, DH 256) meant for a real GPU.
#![cfg(feature = "cube")]

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{FloatDType, Tensor, TensorData};
use xlstm_cells::slstm::{SlstmState, SlstmWeights};
use xlstm_golden::{rel_l2, Array};
use xlstm_kernels::slstm::cube::{BATCH_BLOCK_ENV, R_CACHE_ENV};
use xlstm_kernels::SlstmBackend;

mod common;
use common::Rng;

type Reference = Autodiff<NdArray<f32>>;

/// One problem: sizes, inputs and the weights of a random linear loss on every output.
struct Problem {
    batch: usize,
    seq: usize,
    nh: usize,
    dh: usize,
    wx: Vec<f32>,
    r: Vec<f32>,
    b: Vec<f32>,
    /// h, c, n, m, each `[B, H]`.
    state: Option<[Vec<f32>; 4]>,
    /// Loss weights of `h [B, S, H]` and of the final h, c, n, m.
    w_h: Vec<f32>,
    w_state: [Vec<f32>; 4],
}

impl Problem {
    fn new(seed: u64, batch: usize, seq: usize, nh: usize, dh: usize, with_state: bool) -> Self {
        let mut rng = Rng::new(seed);
        let hid = nh * dh;
        let scale = 1.0 / (dh as f32).sqrt();
        let state = with_state.then(|| {
            // n > 0 except in batch row 0, whose state is zero in n: the per-element first
            // step must apply there and only there.
            let mut n = rng.uniform(batch * hid, 0.2, 2.0);
            n[..hid].iter_mut().for_each(|v| *v = 0.0);
            [
                rng.uniform(batch * hid, -1.0, 1.0),
                rng.uniform(batch * hid, -1.0, 1.0),
                n,
                rng.uniform(batch * hid, -2.0, 2.0),
            ]
        });
        Self {
            batch,
            seq,
            nh,
            dh,
            wx: rng.uniform(batch * seq * 4 * hid, -2.0, 2.0),
            r: rng.uniform(nh * dh * 4 * dh, -scale, scale),
            b: rng.uniform(4 * hid, -1.0, 1.0),
            state,
            w_h: rng.uniform(batch * seq * hid, -1.0, 1.0),
            w_state: [0, 1, 2, 3].map(|_| rng.uniform(batch * hid, -1.0, 1.0)),
        }
    }
}

/// Outputs and gradients, as f64: h, c, n, m, then d wx, d r, d b, d h0, d c0, d n0, d m0.
type Results = Vec<(&'static str, Vec<f64>)>;

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Runs the problem through `B::slstm_sequence` with inputs cast to `dtype`, or through the
/// tensor-op reference `xlstm_cells::slstm::sequence` when `reference` (ndarray's own
/// `slstm_sequence` is its fused CPU loop, itself checked against the reference in
/// `slstm_cpu.rs`).
fn run<B: AutodiffBackend + SlstmBackend>(
    p: &Problem,
    device: &B::Device,
    dtype: FloatDType,
    reference: bool,
) -> Results {
    let hid = p.nh * p.dh;
    let leaf = |v: &[f32], shape: Vec<usize>| {
        Tensor::<B, 3>::from_data(
            TensorData::new(v.to_vec(), [shape[0], shape[1], shape[2]]),
            device,
        )
        .require_grad()
    };
    let wx = leaf(&p.wx, vec![p.batch, p.seq, 4 * hid]);
    let r = leaf(&p.r, vec![p.nh, p.dh, 4 * p.dh]);
    let b =
        Tensor::<B, 1>::from_data(TensorData::new(p.b.clone(), [4 * hid]), device).require_grad();
    let state: Option<Vec<Tensor<B, 2>>> = p.state.as_ref().map(|s| {
        s.iter()
            .map(|v| {
                Tensor::<B, 1>::from_data(TensorData::new(v.clone(), [v.len()]), device)
                    .reshape([p.batch, hid])
                    .require_grad()
            })
            .collect()
    });
    let cast2 = |t: Tensor<B, 2>| t.cast(dtype);
    let weights = SlstmWeights {
        r: r.clone().cast(dtype),
        b: b.clone().cast(dtype),
    };
    let state_in = state.as_ref().map(|s| SlstmState {
        h: cast2(s[0].clone()),
        c: cast2(s[1].clone()),
        n: cast2(s[2].clone()),
        m: cast2(s[3].clone()),
    });
    let (h, last) = if reference {
        xlstm_cells::slstm::sequence(wx.clone().cast(dtype), &weights, state_in)
    } else {
        B::slstm_sequence(wx.clone().cast(dtype), &weights, state_in)
    }
    .unwrap();
    let h = h.cast(FloatDType::F32);
    let finals = [last.h, last.c, last.n, last.m].map(|t| t.cast(FloatDType::F32));
    let weight = |v: &[f32], shape: [usize; 3]| {
        Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device).reshape(shape)
    };
    let mut loss = (h.clone() * weight(&p.w_h, [p.batch, p.seq, hid])).sum();
    for (f, w) in finals.iter().zip(&p.w_state) {
        loss = loss + (f.clone() * weight(w, [p.batch, hid, 1]).reshape([p.batch, hid])).sum();
    }
    let grads = loss.backward();
    let mut out: Results = vec![("h", values(h))];
    for (name, f) in ["c_S", "n_S", "m_S"]
        .into_iter()
        .zip(finals.into_iter().skip(1))
    {
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

/// Rounds the inputs through bf16, so that the reference sees what the kernel sees.
#[cfg(feature = "cuda")]
fn round_bf16(p: &mut Problem) {
    let round = |v: &mut Vec<f32>| {
        let data = TensorData::new(v.clone(), [v.len()]).convert_dtype(burn::tensor::DType::BF16);
        *v = data.convert::<f32>().to_vec().unwrap();
    };
    round(&mut p.wx);
    round(&mut p.r);
    round(&mut p.b);
    if let Some(s) = p.state.as_mut() {
        s.iter_mut().for_each(round);
    }
}

/// Compares the backend `B` with the reference on `p`, panicking with every error over bound.
fn check<B: AutodiffBackend + SlstmBackend>(
    name: &str,
    p: &Problem,
    device: &B::Device,
    dtype: FloatDType,
    bounds: (f64, f64),
    dr_bound: f64,
) {
    let want = run::<Reference>(p, &Default::default(), FloatDType::F32, true);
    let got = run::<B>(p, device, dtype, false);
    let mut failures = vec![];
    for ((what, g), (_, w)) in got.iter().zip(&want) {
        let bound = match *what {
            "d r" => dr_bound,
            w if w.starts_with('d') => bounds.1,
            _ => bounds.0,
        };
        let err = rel_l2(g, w);
        if err.is_nan() || err > bound {
            failures.push(format!(
                "{what}: rel {err:.2e} > {bound:.0e} (got {:?}, want {:?})",
                &g[..g.len().min(6)],
                &w[..w.len().min(6)]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name} (B{} S{} NH{} DH{}): {}",
        p.batch,
        p.seq,
        p.nh,
        p.dh,
        failures.join("; ")
    );
}

/// The shapes: (batch, seq, NH, DH, with initial state, batch rows per cube or 0 = auto).
const SHORT: &[(usize, usize, usize, usize, bool, usize)] = &[
    (1, 1, 1, 8, false, 0),
    (1, 1, 1, 8, true, 0),
    (2, 2, 1, 8, true, 0),
    (3, 37, 2, 12, true, 0),
    (5, 64, 3, 33, true, 2),
    (2, 16, 1, 256, true, 0),
    (7, 21, 2, 16, true, 4),
    (2, 9, 1, 300, true, 0),
    (2, 1001, 2, 16, true, 0),
    (64, 12, 1, 8, true, 8),
];

const LONG: &[(usize, usize, usize, usize, bool, usize)] = &[
    (64, 129, 8, 24, true, 0),
    (4, 4096, 2, 64, true, 0),
    (16, 257, 4, 192, true, 0),
    (3, 300, 1, 256, true, 1),
];

fn shapes() -> Vec<(usize, usize, usize, usize, bool, usize)> {
    let mut v = SHORT.to_vec();
    if std::env::var_os("XLSTM_SLSTM_LONG").is_some() {
        v.extend_from_slice(LONG);
    }
    v
}

/// `dr_bound`: the bound on `dR`, which is a matmul over batch and time after the kernel; on
/// CUDA burn's f32 matmul runs on TF32 tensor cores (rel ~2e-4), elsewhere in f32.
fn random_shapes<B: AutodiffBackend + SlstmBackend>(
    backend: &str,
    device: &B::Device,
    dr_bound: f64,
) {
    for (i, &(batch, seq, nh, dh, state, bb)) in shapes().iter().enumerate() {
        set_batch_block(bb);
        set_r_cache(i);
        let p = Problem::new(i as u64 + 1, batch, seq, nh, dh, state);
        check::<B>(
            &format!("{backend} f32 #{i}"),
            &p,
            device,
            FloatDType::F32,
            (1e-5, 1e-4),
            dr_bound,
        );
    }
    set_batch_block(0);
    std::env::remove_var(R_CACHE_ENV);
}

#[cfg(feature = "cuda")]
fn random_shapes_bf16<B: AutodiffBackend + SlstmBackend>(backend: &str, device: &B::Device) {
    for (i, &(batch, seq, nh, dh, state, bb)) in shapes().iter().enumerate() {
        set_batch_block(bb);
        set_r_cache(i);
        let mut p = Problem::new(100 + i as u64, batch, seq.min(300), nh, dh, state);
        round_bf16(&mut p);
        check::<B>(
            &format!("{backend} bf16 #{i}"),
            &p,
            device,
            FloatDType::BF16,
            (1e-2, 1e-2),
            1e-2,
        );
    }
    set_batch_block(0);
    std::env::remove_var(R_CACHE_ENV);
}

/// Fixes the kernel's batch rows per cube (0: its own choice). Tests set it from one thread
/// at a time per binary; a concurrent reader only gets another valid block size.
fn set_batch_block(bb: usize) {
    match bb {
        0 => std::env::remove_var(BATCH_BLOCK_ENV),
        bb => std::env::set_var(BATCH_BLOCK_ENV, bb.to_string()),
    }
}

/// Cycles the shared memory the kernels may hold `R` in over the shapes: the kernels' own
/// choice (all of `R` for small heads), none, and 20 KiB (part of `R`: one of the two blocks
/// per slice at DH 33 in f32), so that all three paths of the reductions run.
fn set_r_cache(shape: usize) {
    match shape % 3 {
        0 => std::env::remove_var(R_CACHE_ENV),
        1 => std::env::set_var(R_CACHE_ENV, "20"),
        _ => std::env::set_var(R_CACHE_ENV, "0"),
    }
}

/// The golden `slstm_cell` cases (official code) through `B::slstm_sequence`.
fn golden<B: AutodiffBackend + SlstmBackend>(device: &B::Device, dr_bound: f64) {
    let cases = xlstm_golden::cases(&xlstm_golden::golden_dir()).unwrap();
    let mut seen = 0;
    for case in cases.iter().filter(|c| c.kind == "slstm_cell") {
        seen += 1;
        let x: Tensor<B, 3> = case.get("input.x").to_tensor::<B, 3>(device).require_grad();
        let r: Tensor<B, 3> = case.get("input.R").to_tensor::<B, 3>(device).require_grad();
        let bias: Tensor<B, 1> = case.get("input.b").to_tensor::<B, 1>(device).require_grad();
        let weights = SlstmWeights::from_official(r.clone(), bias.clone());
        let (h, _) = B::slstm_sequence(x.clone().swap_dims(0, 1), &weights, None).unwrap();
        let y = h.swap_dims(0, 1);
        let grad_y: Tensor<B, 3> = case.get("input.grad_y").to_tensor(device);
        let grads = (y.clone() * grad_y).sum().backward();
        let pairs = [
            ("output.y", Array::from_tensor(y), 1e-5),
            ("grad.x", Array::from_tensor(x.grad(&grads).unwrap()), 1e-4),
            (
                "grad.R",
                Array::from_tensor(r.grad(&grads).unwrap()),
                dr_bound,
            ),
            (
                "grad.b",
                Array::from_tensor(bias.grad(&grads).unwrap()),
                1e-4,
            ),
        ];
        for (key, got, bound) in pairs {
            let want = case.get(key);
            assert_eq!(got.shape, want.shape, "{} {key}", case.name);
            let err = rel_l2(&got.values, &want.values);
            assert!(
                err <= bound,
                "{} {key}: rel {err:.2e} > {bound:.0e}",
                case.name
            );
        }
    }
    assert!(seen > 0, "no slstm_cell golden case found");
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    type B = Autodiff<burn::backend::Wgpu<f32, i32>>;

    #[test]
    fn wgpu_random_shapes_f32() {
        random_shapes::<B>("wgpu", &Default::default(), 1e-4);
    }

    #[test]
    fn wgpu_golden_slstm_cell() {
        golden::<B>(&Default::default(), 1e-4);
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    type B = Autodiff<burn::backend::Cuda<f32, i32>>;
    /// burn's CUDA f32 matmul (used for dR) runs on TF32 tensor cores.
    const TF32_BOUND: f64 = 1e-3;

    #[test]
    fn cuda_random_shapes_f32() {
        random_shapes::<B>("cuda", &Default::default(), TF32_BOUND);
    }

    #[test]
    fn cuda_random_shapes_bf16() {
        random_shapes_bf16::<B>("cuda", &Default::default());
    }

    #[test]
    fn cuda_golden_slstm_cell() {
        golden::<B>(&Default::default(), TF32_BOUND);
    }
}
