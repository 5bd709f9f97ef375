//! The three mLSTM schedules agree, state carry-over is exact, and the sLSTM sequence form
//! equals repeated steps — on awkward random shapes, with non-zero initial states.

use crate::common::*;
use burn::tensor::{backend::Backend, Tensor};
use xlstm_cells::mlstm::{self, MlstmInputs, MlstmState};
use xlstm_cells::slstm;
use xlstm_golden::{TestAutodiffBackend, TestBackend as B};

const BOUND: f64 = 2e-5;

fn recurrent<B: Backend>(
    x: &MlstmInputs<B>,
    state: Option<MlstmState<B>>,
) -> (Tensor<B, 4>, MlstmState<B>) {
    let [b, nh, s, dqk, dv] = x.dims().unwrap();
    let mut state = state;
    let mut hs = vec![];
    for t in 0..s {
        let tok = x.narrow(t, 1);
        let (h, next) = mlstm::step(
            tok.q.reshape([b, nh, dqk]),
            tok.k.reshape([b, nh, dqk]),
            tok.v.reshape([b, nh, dv]),
            tok.i_preact.reshape([b, nh]),
            tok.f_preact.reshape([b, nh]),
            state,
        )
        .unwrap();
        hs.push(h);
        state = Some(next);
    }
    (Tensor::stack(hs, 2), state.unwrap())
}

fn assert_states_close<B: Backend>(what: &str, got: MlstmState<B>, want: MlstmState<B>) {
    assert_close(&format!("{what}: m"), got.m.clone(), want.m.clone(), BOUND);
    assert_close(&format!("{what}: C"), got.c, want.c, BOUND);
    assert_close(&format!("{what}: n"), got.n, want.n, BOUND);
}

#[test]
fn parallel_chunkwise_and_recurrent_agree_from_a_given_state() {
    let device = Default::default();
    for (seed, &(b, nh, s, dqk, dv, chunk)) in MLSTM_SHAPES.iter().enumerate() {
        B::seed(&device, seed as u64);
        let x = mlstm_inputs::<B>(b, nh, s, dqk, dv, &device);
        let state = mlstm_state::<B>(b, nh, dqk, dv, &device);
        let what = format!("B{b} NH{nh} S{s} DQK{dqk} DV{dv} chunk{chunk}");
        let (h_rec, st_rec) = recurrent(&x, Some(state.clone()));
        let (h_par, st_par) = mlstm::parallel(&x, Some(state.clone())).unwrap();
        let (h_chk, st_chk) = mlstm::chunkwise(&x, Some(state), chunk).unwrap();
        assert_close(
            &format!("{what}: parallel vs recurrent h"),
            h_par,
            h_rec.clone(),
            BOUND,
        );
        assert_close(
            &format!("{what}: chunkwise vs recurrent h"),
            h_chk,
            h_rec,
            BOUND,
        );
        assert_states_close(&format!("{what}: parallel state"), st_par, st_rec.clone());
        assert_states_close(&format!("{what}: chunkwise state"), st_chk, st_rec);
    }
}

#[test]
fn chunkwise_and_recurrent_agree_from_the_official_zero_state() {
    let device = Default::default();
    for (seed, &(b, nh, s, dqk, dv, chunk)) in MLSTM_SHAPES.iter().enumerate() {
        B::seed(&device, 100 + seed as u64);
        let x = mlstm_inputs::<B>(b, nh, s, dqk, dv, &device);
        let (h_rec, st_rec) = recurrent(&x, None);
        let (h_chk, st_chk) = mlstm::chunkwise(&x, None, chunk).unwrap();
        assert_close(&format!("S{s} chunk{chunk}: h"), h_chk, h_rec, BOUND);
        assert_states_close(&format!("S{s} chunk{chunk}"), st_chk, st_rec);
    }
}

#[test]
fn chunkwise_over_two_pieces_equals_one_pass() {
    let device = Default::default();
    for (seed, &(b, nh, s, dqk, dv, chunk)) in
        MLSTM_SHAPES.iter().enumerate().filter(|(_, sh)| sh.2 > 1)
    {
        B::seed(&device, 200 + seed as u64);
        let x = mlstm_inputs::<B>(b, nh, s, dqk, dv, &device);
        let split = s / 2 + 1; // odd splits, not aligned to the chunk
        let (h_all, st_all) = mlstm::chunkwise(&x, None, chunk).unwrap();
        let (h1, st1) = mlstm::chunkwise(&x.narrow(0, split), None, chunk).unwrap();
        let (h2, st2) = mlstm::chunkwise(&x.narrow(split, s - split), Some(st1), chunk).unwrap();
        assert_close(
            &format!("S{s} split {split}: h"),
            Tensor::cat(vec![h1, h2], 2),
            h_all,
            BOUND,
        );
        assert_states_close(&format!("S{s} split {split}"), st2, st_all);
    }
}

#[test]
fn chunkwise_gradients_equal_parallel_gradients() {
    type A = TestAutodiffBackend;
    let device = Default::default();
    for (seed, &(b, nh, s, dqk, dv, chunk)) in MLSTM_SHAPES.iter().enumerate() {
        A::seed(&device, 300 + seed as u64);
        let x = mlstm_inputs::<A>(b, nh, s, dqk, dv, &device);
        let st = mlstm_state::<A>(b, nh, dqk, dv, &device);
        let tracked = |x: &MlstmInputs<A>| MlstmInputs {
            q: x.q.clone().detach().require_grad(),
            k: x.k.clone().detach().require_grad(),
            v: x.v.clone().detach().require_grad(),
            i_preact: x.i_preact.clone().detach().require_grad(),
            f_preact: x.f_preact.clone().detach().require_grad(),
        };
        let weights: Tensor<A, 4> = normal([b, nh, s, dv], 1.0, &device);
        let run = |chunked: bool| {
            let x = tracked(&x);
            let c0 = st.c.clone().detach().require_grad();
            let state = MlstmState {
                c: c0.clone(),
                n: st.n.clone(),
                m: st.m.clone(),
            };
            let (h, last) = if chunked {
                mlstm::chunkwise(&x, Some(state), chunk).unwrap()
            } else {
                mlstm::parallel(&x, Some(state)).unwrap()
            };
            // The loss reads the outputs and the final memory, so gradients flow through both.
            let loss = (h * weights.clone()).sum() + last.c.sum() * 0.1;
            let g = loss.backward();
            [
                x.q.grad(&g).unwrap(),
                x.k.grad(&g).unwrap(),
                x.v.grad(&g).unwrap(),
                x.i_preact.grad(&g).unwrap().unsqueeze_dim(3),
                x.f_preact.grad(&g).unwrap().unsqueeze_dim(3),
                c0.grad(&g).unwrap(),
            ]
        };
        let (par, chk) = (run(false), run(true));
        for (name, (p, c)) in ["q", "k", "v", "i", "f", "C0"]
            .iter()
            .zip(par.into_iter().zip(chk))
        {
            assert_close(&format!("S{s} chunk{chunk}: grad {name}"), c, p, 1e-4);
        }
    }
}

#[test]
fn slstm_sequence_equals_repeated_steps_and_pieces() {
    let device = Default::default();
    for (seed, &(b, s, nh, dh)) in SLSTM_SHAPES.iter().enumerate() {
        B::seed(&device, 400 + seed as u64);
        let hidden = nh * dh;
        let weights = slstm_weights::<B>(nh, dh, &device);
        let wx: Tensor<B, 3> = normal([b, s, 4 * hidden], 1.0, &device);
        let state = slstm_state::<B>(b, hidden, &device);
        let what = format!("B{b} S{s} NH{nh} DH{dh}");

        let (h_seq, st_seq) = slstm::sequence(wx.clone(), &weights, Some(state.clone())).unwrap();
        let mut st = state;
        let mut hs = vec![];
        for t in 0..s {
            let (h, next) = slstm::step(
                wx.clone().narrow(1, t, 1).reshape([b, 4 * hidden]),
                &weights,
                Some(st),
            )
            .unwrap();
            hs.push(h);
            st = next;
        }
        assert_close(
            &format!("{what}: h"),
            h_seq.clone(),
            Tensor::stack(hs, 1),
            1e-6,
        );
        assert_close(&format!("{what}: c"), st_seq.c.clone(), st.c, 1e-6);

        if s > 1 {
            let split = s / 2;
            let (h1, st1) =
                slstm::sequence(wx.clone().narrow(1, 0, split), &weights, None).unwrap();
            let (h2, st2) =
                slstm::sequence(wx.clone().narrow(1, split, s - split), &weights, Some(st1))
                    .unwrap();
            let (h_all, st_all) = slstm::sequence(wx, &weights, None).unwrap();
            assert_close(
                &format!("{what}: pieces h"),
                Tensor::cat(vec![h1, h2], 1),
                h_all,
                1e-6,
            );
            assert_close(&format!("{what}: pieces n"), st2.n, st_all.n, 1e-6);
            assert_close(&format!("{what}: pieces m"), st2.m, st_all.m, 1e-6);
        }
    }
}
