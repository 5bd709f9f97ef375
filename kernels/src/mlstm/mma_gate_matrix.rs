//! The chunk's gate matrix over the `mma` accumulators of `S = Q Kᵀ`, as the forward's output
//! kernel (`output_mma_kernel.rs`) and the backward's score gradients
//! (`score_grads_mma_kernel.rs`) both form it, so that the backward's `P` is the forward's.
//!
//! A plane holds 16 rows (tokens `row0..row0 + 16`) of `S` as [`TOKEN_TILES`] accumulator tiles
//! of `16 × 8`; each lane holds entries of two rows, `top = row0 + lane / 4` and
//! `bottom = top + 8`, and the four lanes of a group share them. Within a chunk (eq. 21):
//! `log D_ts = F_t - F_s + ĩ_s` for `s ≤ t` (`F` the chunk's cumulative `log f`),
//! `stab_t = max(max_s log D_ts, m₀ + F_t)` and `P = S/√DQK ∘ e^{log D - stab}`.

use cubecl::cmma::MmaDefinition;
use cubecl::ir::MatrixIdent;
use cubecl::prelude::*;

use super::mma_tiles::{FragC, MMA_N};

/// `8`-column accumulator tiles over a chunk's 64 token columns.
pub(crate) const TOKEN_TILES: usize = 8;
/// Below every log gate (padding tokens carry `ĩ = -1e30`): the row maxima start here.
const BELOW: f32 = -3.0e38;

/// `F_t` (the cumulative `log f`, summed in token order) into `f_cum` and `ĩ_s` into `i_log`,
/// zero past `len`, for the chunk whose gates start at `gate_base` of `log_f, log_i [G, L]`.
/// Every unit of the cube calls it; the sums are seen after the caller's next synchronisation.
#[cube]
pub(crate) fn chunk_gate_sums(
    log_f: &Tensor<f32>,
    log_i: &Tensor<f32>,
    gate_base: usize,
    f_cum: &mut SharedMemory<f32>,
    i_log: &mut SharedMemory<f32>,
    #[comptime] len: usize,
    #[comptime] rows: usize,
) {
    let mut f_log = SharedMemory::<f32>::new(rows);
    let u = UNIT_POS as usize;
    if u < rows {
        let mut f_u = 0.0f32;
        let mut i_u = 0.0f32;
        if u < len {
            f_u = log_f[gate_base + u];
            i_u = log_i[gate_base + u];
        }
        f_log[u] = f_u;
        i_log[u] = i_u;
    }
    // Protects: every log f is in shared memory before the sums read them.
    sync_cube();
    if u < rows {
        let mut acc = 0.0f32;
        for j in 0..u + 1 {
            acc += f_log[j];
        }
        f_cum[u] = acc;
    }
}

/// `log D_ts = F_t - F_s + ĩ_s` (for `s ≤ t`).
#[cube]
pub(crate) fn log_gate(
    f_cum: &SharedMemory<f32>,
    i_log: &SharedMemory<f32>,
    t: usize,
    s: usize,
) -> f32 {
    f_cum[t] - f_cum[s] + i_log[s]
}

/// The row maxima of `log D` over `s ≤ t` for this lane's two rows, taken across its group, and
/// the first column where each is taken (the column `max_dim_with_indices` sends a max's
/// gradient to): `(max_top, arg_top, max_bottom, arg_bottom)`. Only the tiles `nt / 2 ≤ plane`
/// hold columns at or below the plane's rows.
#[cube]
pub(crate) fn row_maxima<F: Float>(
    def: MmaDefinition<F, F, f32>,
    f_cum: &SharedMemory<f32>,
    i_log: &SharedMemory<f32>,
    row0: usize,
    plane: usize,
) -> (f32, u32, f32, u32) {
    let nc = def.vectors_per_lane(MatrixIdent::Accumulator);
    let sc = def.vector_size(MatrixIdent::Accumulator);
    let lane = UNIT_POS_X;
    let mut max_top = f32::new(BELOW);
    let mut max_bottom = f32::new(BELOW);
    let mut arg_top = u32::new(64);
    let mut arg_bottom = u32::new(64);
    #[unroll]
    for nt in 0..TOKEN_TILES {
        if nt / 2 <= plane {
            #[unroll]
            for i in 0..nc {
                #[unroll]
                for e in 0..sc {
                    let (r, col) =
                        def.position_of_nth(lane, (i * sc + e) as u32, MatrixIdent::Accumulator);
                    let t = row0 + r as usize;
                    let s = nt * MMA_N + col as usize;
                    if s <= t {
                        let log_d = log_gate(f_cum, i_log, t, s);
                        // Columns rise with (nt, e) within a lane: `>` keeps the first.
                        if r < 8 {
                            if log_d > max_top {
                                max_top = log_d;
                                arg_top = s as u32;
                            }
                        } else if log_d > max_bottom {
                            max_bottom = log_d;
                            arg_bottom = s as u32;
                        }
                    }
                }
            }
        }
    }
    // Across the group's four lanes: the larger maximum, at a tie the first column.
    #[unroll]
    for step in 0..2u32 {
        let mask = 1u32 << step;
        let other = plane_shuffle_xor(max_top, mask);
        let other_arg = plane_shuffle_xor(arg_top, mask);
        if other > max_top || (other == max_top && other_arg < arg_top) {
            max_top = other;
            arg_top = other_arg;
        }
        let other = plane_shuffle_xor(max_bottom, mask);
        let other_arg = plane_shuffle_xor(arg_bottom, mask);
        if other > max_bottom || (other == max_bottom && other_arg < arg_bottom) {
            max_bottom = other;
            arg_bottom = other_arg;
        }
    }
    (max_top, arg_top, max_bottom, arg_bottom)
}

/// `P = S · scale · e^{log D - stab}` in place over `scores` (zero above the diagonal) and its
/// row sums across this lane's group, `(sum_top, sum_bottom)`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn probabilities_in_place<F: Float>(
    def: MmaDefinition<F, F, f32>,
    scores: &mut Array<Vector<f32, FragC>>,
    f_cum: &SharedMemory<f32>,
    i_log: &SharedMemory<f32>,
    row0: usize,
    plane: usize,
    stab_top: f32,
    stab_bottom: f32,
    scale: f32,
) -> (f32, f32) {
    let nc = def.vectors_per_lane(MatrixIdent::Accumulator);
    let sc = def.vector_size(MatrixIdent::Accumulator);
    let lane = UNIT_POS_X;
    let mut sum_top = 0.0f32;
    let mut sum_bottom = 0.0f32;
    #[unroll]
    for nt in 0..TOKEN_TILES {
        if nt / 2 <= plane {
            #[unroll]
            for i in 0..nc {
                let mut value = scores[nt * nc + i];
                #[unroll]
                for e in 0..sc {
                    let (r, col) =
                        def.position_of_nth(lane, (i * sc + e) as u32, MatrixIdent::Accumulator);
                    let t = row0 + r as usize;
                    let s = nt * MMA_N + col as usize;
                    let mut p = 0.0f32;
                    if s <= t {
                        let mut stab = stab_top;
                        if r >= 8 {
                            stab = stab_bottom;
                        }
                        p = value[e] * scale * (log_gate(f_cum, i_log, t, s) - stab).exp();
                    }
                    value[e] = p;
                    if r < 8 {
                        sum_top += p;
                    } else {
                        sum_bottom += p;
                    }
                }
                scores[nt * nc + i] = value;
            }
        }
    }
    sum_top += plane_shuffle_xor(sum_top, 1);
    sum_top += plane_shuffle_xor(sum_top, 2);
    sum_bottom += plane_shuffle_xor(sum_bottom, 1);
    sum_bottom += plane_shuffle_xor(sum_bottom, 2);
    (sum_top, sum_bottom)
}
