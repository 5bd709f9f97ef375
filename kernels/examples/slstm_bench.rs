//! sLSTM benchmark: the fused kernel against the tensor-op reference, forward and
//! forward+backward, on every cube backend compiled in (features `cuda`, `wgpu`).
//!
//! `cargo run --release -p xlstm-kernels --features cuda,wgpu --example slstm_bench`
//!
//! Cases (the issue's, measured as `../shared/perf/peer_h200.py` does): the recurrence alone,
//! `B16 T1024` with NH12 DH64, NH24 DH32 and NH4 DH192; the whole sLSTM layer of the official
//! `sLSTMLayer` (causal conv 4 + SiLU, the head-wise gate projections, the recurrence, the
//! head-wise group norm) at H768 NH4 for B16 S1024, B1 S1024, B64 S1024, B16 S4096.
//! Forward runs without autodiff; forward+backward runs on `Autodiff<_>` and backpropagates
//! `sum(y)` to the input and every parameter (seeded with its gradient, ones). Times are medians over repeated runs after
//! warm-up, each closed by `B::sync`. bf16 where the backend has it (CUDA), else f32.
//!
//! Env: `XLSTM_BENCH_BACKENDS` (e.g. `cuda` or `wgpu`, default all compiled in),
//! `XLSTM_BENCH_REF=cuda` runs the (slow) reference on CUDA only (`none`: nowhere), `XLSTM_BENCH_QUICK=1` runs the first case only,
//! `XLSTM_BENCH_CASES=1,2` runs the cases of these indices (in the order of `CASES`),
//! `XLSTM_BENCH_REPS=5` times that many runs (default 15) after 3 warm-ups.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, FloatDType, Tensor};
use xlstm_cells::slstm::SlstmWeights;
use xlstm_kernels::SlstmBackend;

/// Which cell the layer runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cell {
    Kernel,
    Reference,
}

/// One benchmark case.
#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    batch: usize,
    seq: usize,
    nh: usize,
    dh: usize,
    /// The whole layer (projections, conv, norm) or the recurrence alone.
    layer: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "layer",
        batch: 16,
        seq: 1024,
        nh: 4,
        dh: 192,
        layer: true,
    },
    Case {
        name: "recurrence",
        batch: 16,
        seq: 1024,
        nh: 12,
        dh: 64,
        layer: false,
    },
    Case {
        name: "recurrence",
        batch: 16,
        seq: 1024,
        nh: 24,
        dh: 32,
        layer: false,
    },
    Case {
        name: "recurrence",
        batch: 16,
        seq: 1024,
        nh: 4,
        dh: 192,
        layer: false,
    },
    Case {
        name: "layer",
        batch: 1,
        seq: 1024,
        nh: 4,
        dh: 192,
        layer: true,
    },
    Case {
        name: "layer",
        batch: 64,
        seq: 1024,
        nh: 4,
        dh: 192,
        layer: true,
    },
    Case {
        name: "layer",
        batch: 16,
        seq: 4096,
        nh: 4,
        dh: 192,
        layer: true,
    },
];

/// The parameters of one sLSTM layer (or of the recurrence alone), `H = NH·DH`.
struct Params<B: Backend> {
    /// Depth-wise causal conv `[4, H]`.
    conv: Tensor<B, 2>,
    /// Head-wise projections to (i, f) from the conv path and to (z, o) from the input,
    /// each `[NH, DH, 2·DH]`.
    w_if: Tensor<B, 3>,
    w_zo: Tensor<B, 3>,
    weights: SlstmWeights<B>,
    /// Group-norm weight `[H]`.
    norm: Tensor<B, 1>,
}

impl<B: Backend> Params<B> {
    fn new(c: &Case, dtype: FloatDType, device: &B::Device) -> Self {
        let hid = c.nh * c.dh;
        let s = 1.0 / (c.dh as f64).sqrt();
        let rand2 = |shape: [usize; 2], a: f64| {
            Tensor::<B, 2>::random(shape, Distribution::Uniform(-a, a), device).cast(dtype)
        };
        let rand3 = |shape: [usize; 3], a: f64| {
            Tensor::<B, 3>::random(shape, Distribution::Uniform(-a, a), device).cast(dtype)
        };
        Self {
            conv: rand2([4, hid], 0.5),
            w_if: rand3([c.nh, c.dh, 2 * c.dh], s),
            w_zo: rand3([c.nh, c.dh, 2 * c.dh], s),
            weights: SlstmWeights {
                r: rand3([c.nh, c.dh, 4 * c.dh], s),
                b: Tensor::<B, 1>::random([4 * hid], Distribution::Uniform(-1.0, 1.0), device)
                    .cast(dtype),
            },
            norm: Tensor::<B, 1>::ones([hid], device).cast(dtype),
        }
    }
}

impl<B: SlstmBackend> Params<B> {
    /// The same parameters on `Autodiff<B>`, each a leaf that requires its gradient.
    fn tracked(&self) -> Params<Autodiff<B>> {
        Params {
            conv: Tensor::from_inner(self.conv.clone()).require_grad(),
            w_if: Tensor::from_inner(self.w_if.clone()).require_grad(),
            w_zo: Tensor::from_inner(self.w_zo.clone()).require_grad(),
            weights: SlstmWeights {
                r: Tensor::from_inner(self.weights.r.clone()).require_grad(),
                b: Tensor::from_inner(self.weights.b.clone()).require_grad(),
            },
            norm: Tensor::from_inner(self.norm.clone()).require_grad(),
        }
    }
}

/// Head-wise projection `[B, S, H]` × `[NH, DH, 2·DH]` → `[B·S, 2, NH, DH]`: one matmul
/// batched over (head, row), the weight broadcast over rows, so that the weight's gradient is
/// `B` products contracting over `S` (then a sum over rows) rather than one product
/// contracting over `B·S`, which burn's matmul runs on too few output tiles (1.05 ms for each
/// projection at B16 on the H200, 4 ms at B64).
fn headwise<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 3>, nh: usize) -> Tensor<B, 4> {
    let [batch, seq, hid] = x.dims();
    let dh = hid / nh;
    x.reshape([batch, seq, nh, dh])
        .permute([2, 0, 1, 3])
        .matmul(w.unsqueeze_dim::<4>(1))
        .reshape([nh, batch * seq, 2, dh])
        .permute([1, 2, 0, 3])
}

/// The layer: `x [B, S, H]` → `y [B, S, H]` (or the recurrence alone: `x [B, S, 4·H]`).
fn forward<B: SlstmBackend>(p: &Params<B>, x: Tensor<B, 3>, c: &Case, cell: Cell) -> Tensor<B, 3> {
    let [batch, seq, _] = x.dims();
    let hid = c.nh * c.dh;
    let wx = if c.layer {
        // Causal depth-wise conv of width 4, then SiLU.
        let padded = Tensor::cat(vec![x.clone().narrow(1, 0, 3).zeros_like(), x.clone()], 1);
        let mut conv =
            padded.clone().narrow(1, 0, seq) * p.conv.clone().narrow(0, 0, 1).unsqueeze::<3>();
        for k in 1..4 {
            conv = conv
                + padded.clone().narrow(1, k, seq)
                    * p.conv.clone().narrow(0, k, 1).unsqueeze::<3>();
        }
        let x_conv = silu(conv);
        let gates_if = headwise(x_conv, p.w_if.clone(), c.nh);
        let gates_zo = headwise(x, p.w_zo.clone(), c.nh);
        Tensor::cat(vec![gates_if, gates_zo], 1).reshape([batch, seq, 4 * hid])
    } else {
        x
    };
    let h = match cell {
        Cell::Kernel => B::slstm_sequence(wx, &p.weights, None),
        Cell::Reference => xlstm_cells::slstm::sequence(wx, &p.weights, None),
    }
    .expect("valid shapes")
    .0;
    if !c.layer {
        return h;
    }
    // Head-wise group norm (eps 1e-5), weight only.
    let h = h.reshape([batch, seq, c.nh, c.dh]);
    let mean = h.clone().mean_dim(3);
    let centered = h - mean;
    let var = centered.clone().powi_scalar(2).mean_dim(3);
    let y = centered / (var + 1e-5).sqrt();
    y.reshape([batch, seq, hid]) * p.norm.clone().unsqueeze::<3>()
}

/// Median milliseconds of `f` over `reps` runs after `warmup` runs, each closed by a sync.
fn time<B: Backend>(device: &B::Device, warmup: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
        B::sync(device).expect("sync");
    }
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            B::sync(device).expect("sync");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms[ms.len() / 2]
}

/// `(fw, fwbw)` ms of one case with one cell.
fn measure<B: SlstmBackend>(
    c: &Case,
    cell: Cell,
    dtype: FloatDType,
    device: &B::Device,
) -> (f64, f64) {
    let hid = c.nh * c.dh;
    let width = if c.layer { hid } else { 4 * hid };
    let reps = std::env::var("XLSTM_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let (warmup, reps) = match cell {
        Cell::Kernel => (3, reps),
        Cell::Reference => (1, 2),
    };
    let p = Params::<B>::new(c, dtype, device);
    let x = Tensor::<B, 3>::random(
        [c.batch, c.seq, width],
        Distribution::Normal(0.0, 1.0),
        device,
    )
    .cast(dtype);
    let fw = time::<B>(device, warmup, reps, || {
        let _ = forward(&p, x.clone(), c, cell);
    });
    let fwbw = {
        let p = p.tracked();
        let x = Tensor::<Autodiff<B>, 3>::from_inner(x).require_grad();
        time::<B>(device, warmup, reps, || {
            // The gradient of `sum(y)` is ones: backpropagating `y` itself seeds exactly that
            // (burn's `backward` starts from ones of the root's shape) without burn's
            // full-sum kernel, which took 0.56 ms at B16 H768 on the H200.
            let _ = forward(&p, x.clone(), c, cell).backward();
        })
    };
    (fw, fwbw)
}

fn run_backend<B: SlstmBackend>(
    backend: &str,
    dtype: FloatDType,
    device: &B::Device,
    rows: &mut Vec<String>,
) {
    let with_ref = std::env::var("XLSTM_BENCH_REF")
        .map(|v| v.contains(backend))
        .unwrap_or(true);
    let quick = std::env::var_os("XLSTM_BENCH_QUICK").is_some();
    let picked: Option<Vec<usize>> = std::env::var("XLSTM_BENCH_CASES")
        .ok()
        .map(|v| v.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    let cases = CASES.iter().enumerate().filter(|(i, _)| match &picked {
        Some(picked) => picked.contains(i),
        None => !quick || *i == 0,
    });
    for (i, c) in cases {
        let (kf, kb) = measure::<B>(c, Cell::Kernel, dtype, device);
        // The reference loops over time in ~30 tensor ops per step: measured on one case.
        let (rf, rb) = if with_ref && i == 1 {
            measure::<B>(c, Cell::Reference, dtype, device)
        } else {
            (f64::NAN, f64::NAN)
        };
        let row = format!(
            "| {backend} | {:?} | {} | B{} S{} NH{} DH{} | {kf:.3} | {kb:.3} | {:.2} | {rf:.1} | {rb:.1} |",
            dtype,
            c.name,
            c.batch,
            c.seq,
            c.nh,
            c.dh,
            kf * 1e3 / c.seq as f64,
        );
        println!("{row}");
        rows.push(row);
    }
}

fn main() {
    let pick = std::env::var("XLSTM_BENCH_BACKENDS").unwrap_or_else(|_| "cuda,wgpu".into());
    let mut rows: Vec<String> = vec![];
    #[cfg(feature = "cuda")]
    if pick.contains("cuda") {
        run_backend::<burn::backend::Cuda<f32, i32>>(
            "cuda",
            FloatDType::BF16,
            &Default::default(),
            &mut rows,
        );
    }
    #[cfg(feature = "wgpu")]
    if pick.contains("wgpu") {
        run_backend::<burn::backend::Wgpu<f32, i32>>(
            "wgpu",
            FloatDType::F32,
            &Default::default(),
            &mut rows,
        );
    }
    println!();
    println!("| backend | dtype | what | shape | kernel fw ms | kernel fw+bw ms | fw µs/step | reference fw ms | reference fw+bw ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        println!("{row}");
    }
    let _ = pick;
}
