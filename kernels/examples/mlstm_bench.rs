//! Times the mLSTM kernels the way `../shared/perf/peer_h200.py` times the official ones:
//! warm-up, a device sync around every timed region, the median of the repeats.
//!
//! `cargo run --release -p xlstm-kernels --features cuda,wgpu --example mlstm_bench`
//! (`MLSTM_BENCH_BACKENDS=cuda` or `wgpu` picks one; `MLSTM_BENCH_QUICK=1` uses small shapes;
//! `MLSTM_BENCH_SHAPES=2` times only the second chunkwise shape (a comma list of 1-based
//! indices; all by default); `MLSTM_BENCH_REFERENCE=1` also times the tensor-op reference,
//! which with burn's autotuning spends minutes tuning its many shapes; `MLSTM_BENCH_PRODUCTS=1`
//! also times the chunkwise schedule's batched products alone at the first shape, per operand
//! layout; `MLSTM_BENCH_CHUNKS=64` sets the chunk sizes of the bf16 chunkwise rows, a comma
//! list, `64,128` by default: 64 is the official kernels' default, which the peer rows ran
//! with; every chunk size computes the same function). The library's own switches apply too:
//! `XLSTM_MLSTM_FUSED_STATES=0` times without the fused state kernel (`state_mma_kernel.rs`),
//! `XLSTM_MLSTM_FUSED_OUTPUTS=0` without the fused output kernel (`output_mma_kernel.rs`), `=1`
//! with it at every `DV` (by default up to 256). `MLSTM_BENCH_BACK_TO_BACK=1` adds, per bf16
//! forward row, the mean of ten forwards between two syncs: where it is well under the row's
//! own time, the per-call time is the host's (launches and the sync), not the device's. Every
//! bf16 chunkwise row also comes timed by the peers' own method (`triton.testing.do_bench`: an
//! L2 flush before each call, no sync between calls), the row marked "do_bench method"; that
//! is the figure to hold against the peers' (see [`time_like_do_bench`]).
//! Prints one line per measurement and a table last.
#![cfg_attr(not(feature = "cube"), allow(dead_code, unused_imports))]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, DType, Distribution, Tensor};
use xlstm_cells::mlstm::{self, MlstmInputs, MlstmState};
use xlstm_kernels::MlstmBackend;

/// Median milliseconds of `reps` runs of `f` (each `inner` calls, then a sync), after warm-up.
fn time<B: Backend>(dev: &B::Device, reps: usize, inner: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    B::sync(dev).expect("sync");
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..inner {
                f();
            }
            B::sync(dev).expect("sync");
            t.elapsed().as_secs_f64() * 1e3 / inner as f64
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Median milliseconds per call as `triton.testing.do_bench` (the peers' method) takes them:
/// the L2 cache flushed (a 256 MB write) before every call and no sync between calls, so the
/// host issues the next launches while the device works. do_bench reads device events around
/// each call; burn exposes none, so each repeat times `inner` flushes and calls between two
/// syncs, then `inner` flushes alone, and takes the difference. Also returns the median host
/// time per call (until `f` returns), of the same repeats.
fn time_like_do_bench<B: Backend>(
    dev: &B::Device,
    reps: usize,
    inner: usize,
    mut f: impl FnMut(),
) -> (f64, f64) {
    let flush = || drop(Tensor::<B, 1>::zeros([64 << 20], dev));
    for _ in 0..2 {
        flush();
        f();
    }
    B::sync(dev).expect("sync");
    let mut per_call = Vec::with_capacity(reps);
    let mut host = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let mut issuing = 0.0;
        for _ in 0..inner {
            flush();
            let issued = Instant::now();
            f();
            issuing += issued.elapsed().as_secs_f64();
        }
        B::sync(dev).expect("sync");
        let with_calls = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..inner {
            flush();
        }
        B::sync(dev).expect("sync");
        let flushes = t.elapsed().as_secs_f64();
        per_call.push((with_calls - flushes) * 1e3 / inner as f64);
        host.push(issuing * 1e3 / inner as f64);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(per_call), median(host))
}

/// The row of `what` timed by [`time_like_do_bench`] with `[reps, inner]`, printed as it is
/// measured (no time where `f` panics: a shape or dtype the path does not take).
fn do_bench_row<B: Backend>(
    backend: &'static str,
    what: String,
    peer: &'static str,
    dev: &B::Device,
    [reps, inner]: [usize; 2],
    f: impl FnMut(),
) -> Row {
    let timed = catch_unwind(AssertUnwindSafe(|| {
        time_like_do_bench::<B>(dev, reps, inner, f)
    }))
    .ok();
    let what = format!("{what}, do_bench method");
    println!("{backend} {what}: {timed:?} ms (per call, host)");
    Row {
        backend,
        what: format!(
            "{what} (host {:.3} ms per call)",
            timed.map_or(f64::NAN, |t| t.1)
        ),
        ms: timed.map(|t| t.0),
        peer,
    }
}

/// Whether `MLSTM_BENCH_BACK_TO_BACK=1` asks for the forwards timed ten per sync.
fn back_to_back() -> bool {
    std::env::var("MLSTM_BENCH_BACK_TO_BACK").is_ok_and(|v| v == "1")
}

fn inputs<B: Backend>(dims: [usize; 5], dtype: DType, dev: &B::Device) -> MlstmInputs<B> {
    let [b, nh, s, dqk, dv] = dims;
    let n = Distribution::Normal(0.0, 1.0);
    MlstmInputs {
        q: Tensor::<B, 4>::random([b, nh, s, dqk], n, dev).cast(dtype),
        k: Tensor::<B, 4>::random([b, nh, s, dqk], n, dev).cast(dtype),
        v: Tensor::<B, 4>::random([b, nh, s, dv], n, dev).cast(dtype),
        i_preact: Tensor::<B, 3>::random([b, nh, s], n, dev).cast(dtype),
        f_preact: (Tensor::<B, 3>::random([b, nh, s], n, dev) + 3.0).cast(dtype),
    }
}

/// Runs `f`, turning a panic into `None` (a shape or dtype the path does not take).
fn guarded(f: impl FnOnce() -> f64) -> Option<f64> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

struct Row {
    backend: &'static str,
    what: String,
    ms: Option<f64>,
    peer: &'static str,
}

fn run<B: MlstmBackend>(
    backend: &'static str,
    dev: &B::Device,
    quick: bool,
    reference: bool,
    rows: &mut Vec<Row>,
) where
    Autodiff<B>: MlstmBackend,
{
    let chunks = chunk_sizes();
    let shapes: [([usize; 5], &str, &str); 2] = if quick {
        [
            ([1, 2, 256, 64, 128], "B1 NH2 S256 DQK64 DV128", "-"),
            ([2, 2, 130, 48, 48], "B2 NH2 S130 D48", "-"),
        ]
    } else {
        [
            (
                [8, 8, 8192, 256, 512],
                "B8 NH8 S8192 DQK256 DV512",
                "TFLA 6.71 / 22.37; native 34.96 / 312.5",
            ),
            (
                [32, 4, 2048, 192, 192],
                "B32 NH4 S2048 D192",
                "TFLA 1.03 / 3.78",
            ),
        ]
    };
    // The half type of the device (WGSL has none: there the kernels run on f32 inputs; SPIR-V
    // on Vulkan has f16, with cooperative matrices where the driver has them).
    let (dtype, dname) = if B::supports_dtype(dev, DType::BF16) {
        (DType::BF16, "bf16")
    } else if B::supports_dtype(dev, DType::F16) {
        (DType::F16, "f16")
    } else {
        (DType::F32, "f32")
    };
    for (n, (dims, name, peer)) in shapes.iter().enumerate() {
        if !shape_wanted(n + 1) {
            continue;
        }
        for (c, &chunk) in chunks.iter().enumerate() {
            // bf16 runs as batched matmuls on tensor cores where the device has them; f32 runs
            // the fused kernels (exact f32, chunks of at most 64), timed at the first chunk size.
            let fw_dtypes = if dtype == DType::F32 || c > 0 {
                vec![(dtype, dname)]
            } else {
                vec![(dtype, dname), (DType::F32, "f32")]
            };
            for (fw_dtype, fw_name) in fw_dtypes {
                let x = inputs::<B>(*dims, fw_dtype, dev);
                let fw = guarded(|| {
                    time::<B>(dev, 10, 1, || {
                        let _ = B::mlstm_chunkwise(&x, None, chunk).unwrap();
                    })
                });
                println!("{backend} fw {name} {fw_name} chunk {chunk}: {fw:?} ms");
                rows.push(Row {
                    backend,
                    what: format!("fw {name} {fw_name} chunk {chunk}"),
                    ms: fw,
                    peer,
                });
                if back_to_back() && fw_dtype == dtype {
                    let mean = guarded(|| {
                        time::<B>(dev, 5, 10, || {
                            let _ = B::mlstm_chunkwise(&x, None, chunk).unwrap();
                        })
                    });
                    println!(
                        "{backend} fw {name} {fw_name} chunk {chunk}, 10 per sync: {mean:?} ms"
                    );
                    rows.push(Row {
                        backend,
                        what: format!("fw {name} {fw_name} chunk {chunk}, 10 per sync"),
                        ms: mean,
                        peer: "",
                    });
                }
                if fw_dtype == dtype {
                    let what = format!("fw {name} {fw_name} chunk {chunk}");
                    rows.push(do_bench_row::<B>(
                        backend,
                        what,
                        peer,
                        dev,
                        [11, 10],
                        || {
                            let _ = B::mlstm_chunkwise(&x, None, chunk).unwrap();
                        },
                    ));
                }
            }

            let xa = inputs::<B>(*dims, dtype, dev);
            let xa = MlstmInputs::<Autodiff<B>> {
                q: Tensor::from_inner(xa.q).require_grad(),
                k: Tensor::from_inner(xa.k).require_grad(),
                v: Tensor::from_inner(xa.v).require_grad(),
                i_preact: Tensor::from_inner(xa.i_preact).require_grad(),
                f_preact: Tensor::from_inner(xa.f_preact).require_grad(),
            };
            // Under autodiff the kernel forward is one node whose backward is TFLA's (f32
            // state).
            let fwbw = guarded(|| {
                time::<B>(dev, 5, 1, || {
                    let (h, _) = Autodiff::<B>::mlstm_chunkwise(&xa, None, chunk).unwrap();
                    let _ = h.sum().backward();
                })
            });
            println!("{backend} fw+bw {name} {dname} chunk {chunk}: {fwbw:?} ms");
            rows.push(Row {
                backend,
                what: format!("fw+bw {name} {dname} chunk {chunk}"),
                ms: fwbw,
                peer: "",
            });
            let what = format!("fw+bw {name} {dname} chunk {chunk}");
            rows.push(do_bench_row::<B>(backend, what, peer, dev, [5, 5], || {
                let (h, _) = Autodiff::<B>::mlstm_chunkwise(&xa, None, chunk).unwrap();
                let _ = h.sum().backward();
            }));
        }

        if n == 0 && reference {
            // The tensor-op reference (xlstm-cells) on the same backend, f32 and bf16 inputs.
            let dtypes = if dtype == DType::F32 {
                vec![dtype]
            } else {
                vec![DType::F32, dtype]
            };
            for dtype in dtypes {
                let xr = inputs::<B>(*dims, dtype, dev);
                let state = (dtype == DType::BF16).then(|| {
                    let [b, nh, _, dqk, dv] = *dims;
                    let s = MlstmState::<B>::zeros(b, nh, dqk, dv, dev);
                    MlstmState {
                        c: s.c.cast(dtype),
                        n: s.n.cast(dtype),
                        m: s.m.cast(dtype),
                    }
                });
                let r = guarded(|| {
                    time::<B>(dev, 3, 1, || {
                        let _ = mlstm::chunkwise(&xr, state.clone(), chunks[0]).unwrap();
                    })
                });
                println!("{backend} reference fw {name} {dtype:?}: {r:?} ms");
                rows.push(Row {
                    backend,
                    what: format!("reference (tensor ops) fw {name} {dtype:?}"),
                    ms: r,
                    peer: "native 34.96",
                });
            }
        }
    }

    if std::env::var("MLSTM_BENCH_PRODUCTS").is_ok_and(|v| v == "1") {
        products::<B>(backend, dev, quick, dtype, rows);
    }

    let (nh, dqk, dv) = if quick { (2, 64, 128) } else { (8, 256, 512) };
    for (b, peer) in [
        (1, "triton 0.025"),
        (16, "triton 0.052"),
        (256, "triton 0.571"),
    ] {
        let n = Distribution::Normal(0.0, 1.0);
        let bf = |shape: [usize; 3]| Tensor::<B, 3>::random(shape, n, dev).cast(dtype);
        let (q, k, v) = (bf([b, nh, dqk]), bf([b, nh, dqk]), bf([b, nh, dv]));
        let i = Tensor::<B, 2>::random([b, nh], n, dev).cast(dtype);
        let f = (Tensor::<B, 2>::random([b, nh], n, dev) + 3.0).cast(dtype);
        let state = MlstmState::<B> {
            c: Tensor::random([b, nh, dqk, dv], n, dev),
            n: Tensor::random([b, nh, dqk], n, dev),
            m: Tensor::zeros([b, nh], dev),
        };
        // The caller keeps the state (a new one is written each call) ...
        let ms = guarded(|| {
            time::<B>(dev, 20, 50, || {
                let _ = B::mlstm_step(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    i.clone(),
                    f.clone(),
                    Some(state.clone()),
                )
                .unwrap();
            })
        });
        let what = format!("step B{b} NH{nh} DQK{dqk} DV{dv} ({dname} in, f32 state)");
        println!("{backend} {what}: {ms:?} ms");
        rows.push(Row {
            backend,
            what,
            ms,
            peer,
        });
        // ... or hands it over, as generation does (updated in place).
        let mut held = Some(state);
        let ms = guarded(|| {
            time::<B>(dev, 20, 50, || {
                let (_, next) = B::mlstm_step(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    i.clone(),
                    f.clone(),
                    held.take(),
                )
                .unwrap();
                held = Some(next);
            })
        });
        let what = format!("step B{b} in place (state handed over)");
        println!("{backend} {what}: {ms:?} ms");
        rows.push(Row {
            backend,
            what,
            ms,
            peer,
        });
    }
}

/// The batched products of the chunkwise schedule (`[B, NH, NC]` batches of one chunk each) at
/// the first shape, with their operands as the schedule lays them out (a transposed operand is
/// a `swap_dims` view) and stored the other way, through `MlstmBackend::mlstm_matmul`.
fn products<B: MlstmBackend>(
    backend: &'static str,
    dev: &B::Device,
    quick: bool,
    dtype: DType,
    rows: &mut Vec<Row>,
) {
    let (b, nh, nc, l, dqk, dv) = if quick {
        (1, 2, 4, 64, 64, 128)
    } else {
        (8, 8, 128, 64, 256, 512)
    };
    let n = Distribution::Normal(0.0, 1.0);
    let rand =
        |d3: usize, d4: usize| Tensor::<B, 5>::random([b, nh, nc, d3, d4], n, dev).cast(dtype);
    let (k, v, q, c, dnum) = (
        rand(l, dqk),
        rand(l, dv),
        rand(l, dqk),
        rand(dqk, dv),
        rand(l, dv),
    );
    let (k_t, c_t) = (rand(dqk, l), rand(dv, dqk));
    type Case<'a, B> = (&'a str, Box<dyn Fn() -> Tensor<B, 5> + 'a>);
    let cases: Vec<Case<B>> = vec![
        (
            "Kᵀ V (K stored [L, DQK]) → work type",
            Box::new(|| B::mlstm_matmul(k.clone().swap_dims(3, 4), v.clone(), dtype)),
        ),
        (
            "Kᵀ V (Kᵀ stored [DQK, L]) → work type",
            Box::new(|| B::mlstm_matmul(k_t.clone(), v.clone(), dtype)),
        ),
        (
            "Kᵀ V (Kᵀ from a multiply of the view) → work type",
            Box::new(|| B::mlstm_matmul(k.clone().swap_dims(3, 4) * 1.5, v.clone(), dtype)),
        ),
        (
            "Kᵀ V (K stored [L, DQK]) → f32",
            Box::new(|| B::mlstm_matmul(k.clone().swap_dims(3, 4), v.clone(), DType::F32)),
        ),
        (
            "Q C₀ → f32",
            Box::new(|| B::mlstm_matmul(q.clone(), c.clone(), DType::F32)),
        ),
        (
            "dnum C₀ᵀ (C₀ stored [DQK, DV]) → f32",
            Box::new(|| B::mlstm_matmul(dnum.clone(), c.clone().swap_dims(3, 4), DType::F32)),
        ),
        (
            "dnum C₀ᵀ (C₀ᵀ stored [DV, DQK]) → f32",
            Box::new(|| B::mlstm_matmul(dnum.clone(), c_t.clone(), DType::F32)),
        ),
        (
            "Q Kᵀ → f32",
            Box::new(|| B::mlstm_matmul(q.clone(), k.clone().swap_dims(3, 4), DType::F32)),
        ),
        (
            "K_w dC → f32",
            Box::new(|| B::mlstm_matmul(k.clone(), c.clone(), DType::F32)),
        ),
    ];
    for (what, product) in cases {
        let ms = guarded(|| {
            time::<B>(dev, 10, 1, || {
                let _ = product();
            })
        });
        let what = format!("product {what} [B{b} NH{nh} NC{nc}, L{l} DQK{dqk} DV{dv}]");
        println!("{backend} {what}: {ms:?} ms");
        rows.push(Row {
            backend,
            what,
            ms,
            peer: "",
        });
    }
}

/// Whether `item` is in the comma list of the environment variable `var` (everything is, where
/// `var` is unset).
fn listed(var: &str, item: &str) -> bool {
    match std::env::var(var) {
        Ok(list) => list.split(',').any(|entry| entry.trim() == item),
        Err(_) => true,
    }
}

/// The chunk sizes of the chunkwise runs: `MLSTM_BENCH_CHUNKS` (a comma list), `64,128` by
/// default.
fn chunk_sizes() -> Vec<usize> {
    let list = std::env::var("MLSTM_BENCH_CHUNKS").unwrap_or_else(|_| "64,128".into());
    let sizes: Vec<usize> = list
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert!(
        !sizes.is_empty() && !sizes.contains(&0),
        "MLSTM_BENCH_CHUNKS must list chunk sizes of at least 1, got {list:?}"
    );
    sizes
}

fn shape_wanted(index: usize) -> bool {
    listed("MLSTM_BENCH_SHAPES", &index.to_string())
}

fn wanted(name: &str) -> bool {
    listed("MLSTM_BENCH_BACKENDS", name)
}

fn main() {
    let quick = std::env::var("MLSTM_BENCH_QUICK").is_ok_and(|v| v == "1");
    let reference = std::env::var("MLSTM_BENCH_REFERENCE").is_ok_and(|v| v == "1");
    let mut rows = vec![];
    #[cfg(feature = "cuda")]
    if wanted("cuda") {
        run::<burn::backend::Cuda>("CUDA", &Default::default(), quick, reference, &mut rows);
    }
    #[cfg(feature = "wgpu")]
    if wanted("wgpu") {
        let backend = if cfg!(feature = "vulkan") {
            "Vulkan(SPIR-V)"
        } else {
            "Vulkan(wgpu)"
        };
        run::<burn::backend::Wgpu>(backend, &Default::default(), quick, reference, &mut rows);
    }
    println!("\n| backend | case | ms (median) | peer (H200) |\n| --- | --- | --- | --- |");
    for r in rows {
        let ms = r.ms.map_or("failed".to_string(), |m| format!("{m:.3}"));
        println!("| {} | {} | {} | {} |", r.backend, r.what, ms, r.peer);
    }
}
