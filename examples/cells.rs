//! The two xLSTM cells on random data: the three mLSTM schedules agree, a sequence can be
//! processed in pieces with the state carried over, and the sLSTM runs step by step.
//!
//! `cargo run --release -p xlstm-examples --example cells`

use burn::backend::NdArray;
use burn::tensor::{backend::Backend, Distribution, Tensor};
use xlstm_cells::{mlstm, slstm};

type B = NdArray<f32>;

fn max_abs_diff<const D: usize>(a: &Tensor<B, D>, b: &Tensor<B, D>) -> f32 {
    (a.clone() - b.clone()).abs().max().into_scalar()
}

fn main() -> Result<(), xlstm_cells::CellError> {
    let device = Default::default();
    B::seed(&device, 0);
    let (batch, heads, len, dqk, dv) = (2, 4, 1000, 32, 64);
    let normal =
        |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let gates = |mean: f64| {
        Tensor::<B, 3>::random(
            [batch, heads, len],
            Distribution::Normal(mean, 1.0),
            &device,
        )
    };
    let x = mlstm::MlstmInputs {
        q: normal([batch, heads, len, dqk]),
        k: normal([batch, heads, len, dqk]),
        v: normal([batch, heads, len, dv]),
        i_preact: gates(0.0),
        f_preact: gates(3.0),
    };
    println!("mLSTM, B{batch} NH{heads} S{len} DQK{dqk} DV{dv}:");
    let zero = mlstm::MlstmState::zeros(batch, heads, dqk, dv, &device);
    let (h_par, _) = mlstm::parallel(&x, Some(zero))?;
    let (h_chunk, state) = mlstm::chunkwise(&x, None, 64)?;
    println!(
        "  parallel vs chunkwise(64): max |diff| {:.2e}",
        max_abs_diff(&h_par, &h_chunk)
    );
    let (h_a, mid) = mlstm::chunkwise(&x.narrow(0, 333), None, 64)?;
    let (h_b, state_b) = mlstm::chunkwise(&x.narrow(333, len - 333), Some(mid), 64)?;
    let h_pieces = Tensor::cat(vec![h_a, h_b], 2);
    println!(
        "  one pass vs two pieces with the state carried: max |diff| {:.2e}",
        max_abs_diff(&h_chunk, &h_pieces)
    );
    println!(
        "  final memory C: max |diff| {:.2e}",
        max_abs_diff(&state.c, &state_b.c)
    );

    let (nh, dh) = (4, 16);
    let hidden = nh * dh;
    let weights = slstm::SlstmWeights::<B> {
        r: Tensor::random([nh, dh, 4 * dh], Distribution::Normal(0.0, 0.25), &device),
        b: Tensor::random([4 * hidden], Distribution::Normal(0.0, 0.5), &device),
    };
    let wx = Tensor::<B, 3>::random(
        [batch, 200, 4 * hidden],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let (h, last) = slstm::sequence(wx.clone(), &weights, None)?;
    let (h_step, _) = slstm::step(
        wx.narrow(1, 0, 1).reshape([batch, 4 * hidden]),
        &weights,
        None,
    )?;
    println!(
        "sLSTM, B{batch} S200 NH{nh} DH{dh}: h {:?}, final n in [{:.3}, {:.3}]",
        h.dims(),
        last.n.clone().min().into_scalar(),
        last.n.max().into_scalar()
    );
    println!(
        "  first step vs sequence: max |diff| {:.2e}",
        max_abs_diff(&h.narrow(1, 0, 1).reshape([batch, hidden]), &h_step)
    );
    Ok(())
}
