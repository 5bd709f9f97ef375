//! The batched products of the chunkwise mLSTM (forward `chunk_matmul.rs`, backward
//! `backward.rs`) on tensor cores, through burn's matmul kernels (cubek) with a tiling chosen
//! per product shape rather than burn's single default (`SimpleCyclicCmma`).
//!
//! Why: on the H200 at B8 NH8 S8192 DQK256 DV512 (chunks of 64, bf16 operands, f32 results)
//! burn's default tiling took 3.83 ms for `Q C₀` (64 × 512 × 256 per chunk) and 1.15 ms for
//! each `(D∘P) V` (64 × 512 × 64), where the TMA tilings that burn's autotune picked took 1.21
//! and 0.57 ms. burn's autotune itself is off in this workspace (`autotune` feature): it times
//! ~20 candidates for every matmul of every new shape, minutes at these sizes.
//!
//! So the first large product of each shape times the few [`TILINGS`] once (each launched
//! once, then timed round-robin as the fastest of [`TIMED_RUNS`] synced runs: one run each, or
//! one tiling after another, chose differently from process to process at B32 NH4 S2048 D192,
//! while the clocks ramp up from idle) and keeps the fastest for that shape; small products take
//! the first tiling that launches. The TMA tilings are tried only where the runtime lists TMA
//! (CUDA on Hopper or later); burn's default is last, so every device runs the products.
//!
//! Two switches for tuning and testing: `XLSTM_MATMUL_LOG` prints every timed choice (each
//! tiling's time), `XLSTM_MATMUL_TILING=i` makes every product take `TILINGS[i]`, so that the
//! tests, whose products are too small to be timed, can check each tiling the timed choice may
//! pick at scale. What else was tried (session 12, docs/kernels.md): fixed cubek blocks sized
//! for 192-wide products, and a kernel of our own for the one-chunk products; neither beat the
//! specialized TMA tiling.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::future::block_on;
use cubecl::ir::features::Tma;
use cubek::matmul::components::tile::TileMatmulKind;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::{launch_ref, Strategy};
use cubek::matmul::routines::simple::SimpleArgs;
use cubek::matmul::routines::specialized::SpecializedStrategy;
use cubek::matmul::routines::BlueprintStrategy;
use cubek::std::InputBinding;

/// The candidate tilings (cubek strategies), in the order tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tiling {
    /// TMA loads, one stage, `mma` tiles over several rows per plane.
    SimpleTmaMmaRows,
    /// TMA loads, one stage, `cmma` tiles.
    SimpleTmaCmma,
    /// TMA loads, producer and consumer planes, `mma` tiles.
    SpecializedTmaMma,
    /// TMA loads, producer and consumer planes, `cmma` tiles.
    SpecializedTmaCmma,
    /// burn's default (`SimpleCyclicCmma`; any device with `cmma`).
    Default,
}

const TILINGS: [Tiling; 5] = [
    Tiling::SimpleTmaMmaRows,
    Tiling::SimpleTmaCmma,
    Tiling::SpecializedTmaMma,
    Tiling::SpecializedTmaCmma,
    Tiling::Default,
];

/// Products with fewer multiply-adds than this take the first tiling that launches, untimed.
const TIMED_WORK: usize = 1 << 32;
/// Set, the timed choice of each product prints every tiling's time to stderr (for tuning).
const LOG_VAR: &str = "XLSTM_MATMUL_LOG";
/// Set to an index into [`TILINGS`], every product takes that tiling, or fails over to f32
/// tensor ops where it does not launch (for testing each tiling at small shapes, where the
/// first that launches is used otherwise).
const FORCE_VAR: &str = "XLSTM_MATMUL_TILING";
/// Runs per timed tiling (the fastest counts).
const TIMED_RUNS: usize = 3;

impl Tiling {
    /// Whether the tiling loads through the Tensor Memory Accelerator (Hopper or later, CUDA).
    fn uses_tma(self) -> bool {
        self != Tiling::Default
    }

    fn strategy(self) -> Strategy {
        let simple = |tile_matmul, multi_rows| {
            BlueprintStrategy::Inferred(SimpleArgs {
                tile_matmul,
                multi_rows,
            })
        };
        let specialized =
            |tile_matmul| BlueprintStrategy::Inferred(SpecializedStrategy { tile_matmul });
        match self {
            Tiling::SimpleTmaMmaRows => Strategy::SimpleTmaMma(simple(TileMatmulKind::Mma, true)),
            Tiling::SimpleTmaCmma => Strategy::SimpleTmaCmma(simple(TileMatmulKind::Cmma, false)),
            Tiling::SpecializedTmaMma => {
                Strategy::SpecializedTmaMma(specialized(TileMatmulKind::Mma))
            }
            Tiling::SpecializedTmaCmma => {
                Strategy::SpecializedTmaCmma(specialized(TileMatmulKind::Cmma))
            }
            Tiling::Default => Strategy::Auto,
        }
    }
}

/// What a chosen tiling is kept for: the product's sizes, operand layouts and float types.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ProductKey {
    batch: usize,
    mnk: [usize; 3],
    /// Whether each operand's last dim is contiguous (row-major) rather than its second-last.
    row_major: [bool; 2],
    dtypes: [DType; 2],
}

static CHOSEN: Mutex<Option<HashMap<ProductKey, Tiling>>> = Mutex::new(None);

/// `lhs [.., m, k] @ rhs [.., k, n]` (same leading dims, same float type) accumulated in f32,
/// written into `product [.., m, n]` (its float type is the result's); `false` where no tiling
/// takes it.
pub(crate) fn batched_matmul<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    product: &CubeTensor<R>,
) -> bool {
    if let Some(tiling) = forced_tiling() {
        return launch(tiling, lhs, rhs, product);
    }
    let shape = lhs.meta.shape();
    let rank = shape.num_dims();
    let (m, k) = (shape[rank - 2], shape[rank - 1]);
    let n = rhs.meta.shape()[rank - 1];
    let batch = (0..rank - 2).map(|d| shape[d]).product::<usize>();
    let row_major = |t: &CubeTensor<R>| t.meta.strides()[rank - 1] == 1;
    let key = ProductKey {
        batch,
        mnk: [m, n, k],
        row_major: [row_major(lhs), row_major(rhs)],
        dtypes: [lhs.dtype, product.dtype],
    };
    let known = CHOSEN
        .lock()
        .expect("tiling table")
        .as_ref()
        .and_then(|t| t.get(&key).copied());
    if let Some(tiling) = known {
        if launch(tiling, lhs, rhs, product) {
            return true;
        }
    }
    let timed = batch * m * n * k >= TIMED_WORK;
    // The TMA tilings only where the runtime lists TMA: elsewhere (SPIR-V on Vulkan) their
    // launch succeeds and the kernel then fails to compile, leaving the product unwritten.
    let tma = lhs.client.properties().features.tma.contains(Tma::Base);
    // Every tiling that launches (this compiles it); small products keep the first.
    let mut launched = vec![];
    for tiling in TILINGS.into_iter().filter(|t| tma || !t.uses_tma()) {
        if launch(tiling, lhs, rhs, product) {
            launched.push(tiling);
            if !timed {
                break;
            }
        }
    }
    // Timed round-robin, the fastest run of each counting: the clocks ramp up from idle
    // during the first runs, which timing one tiling after another charged to the first ones.
    let mut fastest = vec![f64::INFINITY; launched.len()];
    if timed {
        for _ in 0..TIMED_RUNS {
            for (tiling, best) in launched.iter().zip(&mut fastest) {
                let _ = block_on(lhs.client.sync());
                let start = Instant::now();
                launch(*tiling, lhs, rhs, product);
                let _ = block_on(lhs.client.sync());
                *best = best.min(start.elapsed().as_secs_f64());
            }
        }
    }
    let best = launched
        .iter()
        .zip(&fastest)
        .min_by(|a, b| a.1.total_cmp(b.1));
    let Some((&tiling, _)) = best else {
        return false;
    };
    if timed && std::env::var_os(LOG_VAR).is_some() {
        let times: Vec<String> = launched
            .iter()
            .zip(&fastest)
            .map(|(t, s)| format!("{t:?} {:.3} ms", s * 1e3))
            .collect();
        eprintln!(
            "matmul {batch} x [{m} x {k}] @ [{k} x {n}] {:?} -> {:?}: {}; chose {tiling:?}",
            key.dtypes[0],
            key.dtypes[1],
            times.join(", ")
        );
    }
    CHOSEN
        .lock()
        .expect("tiling table")
        .get_or_insert_with(HashMap::new)
        .insert(key, tiling);
    // The product of the last tiling run is in `product`; the chosen one writes it again.
    launched.len() == 1 || launch(tiling, lhs, rhs, product)
}

/// The tiling that [`FORCE_VAR`] names, if any (read once per process, as the half-schedule
/// switch in `cube.rs`: every product asks).
fn forced_tiling() -> Option<Tiling> {
    static FORCED: OnceLock<Option<Tiling>> = OnceLock::new();
    *FORCED.get_or_init(|| {
        let index = std::env::var(FORCE_VAR).ok()?.parse::<usize>().ok()?;
        TILINGS.get(index).copied()
    })
}

/// `lhs [.., m, k] @ rhs [.., k, n]` of f32 operands in exact f32 arithmetic, written into
/// `product [.., m, n]` (its float type is the result's); `false` where it does not launch.
/// cubek's unit matmul (no tensor cores): burn's default matmul rounds f32 operands through
/// tf32 on devices that have it (the H200), ≈ 1e-3 relative per product.
pub(crate) fn exact_f32_matmul<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    product: &CubeTensor<R>,
) -> bool {
    launch_strategy(&Strategy::SimpleUnit(Default::default()), lhs, rhs, product)
}

/// Launches `tiling` for the product; `false` where it does not take these operands.
fn launch<R: CubeRuntime>(
    tiling: Tiling,
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    product: &CubeTensor<R>,
) -> bool {
    launch_strategy(&tiling.strategy(), lhs, rhs, product)
}

/// Launches cubek's `strategy` for the product; `false` where it does not take these operands.
fn launch_strategy<R: CubeRuntime>(
    strategy: &Strategy,
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    product: &CubeTensor<R>,
) -> bool {
    let dtype = lhs.dtype;
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: dtype.into(),
        rhs: dtype.into(),
        out: product.dtype.into(),
    });
    launch_ref(
        strategy,
        &lhs.client,
        InputBinding::new(lhs.clone().binding(), dtype.into()),
        InputBinding::new(rhs.clone().binding(), dtype.into()),
        product.clone().binding(),
        &mut dtypes,
    )
    .is_ok()
}
