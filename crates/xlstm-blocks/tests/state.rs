//! Prefill + step equals one forward; padded batches equal their unpadded sequences; both for
//! the NeurIPS LM and xLSTM-7B, on awkward shapes.

mod common;

use burn::tensor::{Int, Tensor};
use common::{device, ints, rel, tokens, B};
use xlstm_blocks::large::{WeightMode, XlstmLargeConfig};
use xlstm_blocks::lm::masked_cross_entropy;
use xlstm_blocks::{MlstmLayerConfig, Padding, SlstmLayerConfig, XlstmLmConfig};

const TOL: f64 = 2e-5;

fn lm_configs() -> Vec<XlstmLmConfig> {
    vec![
        // xLSTM[1:1], one head everywhere, chunk smaller than the sequence.
        XlstmLmConfig::new(11, 8, 2)
            .with_slstm_at(vec![1])
            .with_mlstm(MlstmLayerConfig::new().with_num_heads(1).with_chunk_size(3))
            .with_slstm(SlstmLayerConfig::new().with_num_heads(1)),
        // Three heads, kernel size 1, tied weights, biases, sLSTM first.
        XlstmLmConfig::new(7, 12, 3)
            .with_slstm_at(vec![0])
            .with_tie_weights(true)
            .with_bias(true)
            .with_mlstm(
                MlstmLayerConfig::new()
                    .with_num_heads(2)
                    .with_conv1d_kernel_size(1)
                    .with_chunk_size(2),
            )
            .with_slstm(
                SlstmLayerConfig::new()
                    .with_num_heads(3)
                    .with_conv1d_kernel_size(2),
            ),
        // sLSTM without convolution only, no post norm.
        XlstmLmConfig::new(5, 6, 1)
            .with_slstm_at(vec![0])
            .with_add_post_blocks_norm(false)
            .with_slstm(
                SlstmLayerConfig::new()
                    .with_num_heads(2)
                    .with_conv1d_kernel_size(0),
            ),
    ]
}

fn large_configs() -> Vec<XlstmLargeConfig> {
    vec![
        XlstmLargeConfig::new(16, 2, 2, 13).with_chunk_size(3),
        XlstmLargeConfig::new(12, 1, 1, 9)
            .with_chunk_size(4)
            .with_weight_mode(WeightMode::Fused)
            .with_use_bias(true)
            .with_gate_soft_cap(None),
    ]
}

#[test]
fn lm_prefill_then_step_equals_forward() {
    for (ci, config) in lm_configs().into_iter().enumerate() {
        let model = config.init::<B>(&device()).unwrap();
        let (batch, len, prefix) = (2, 7, 4);
        let ids = tokens(batch, len, config.vocab_size);
        let (full, _) = model.forward(ids.clone(), None, None).unwrap();

        // Prefill in one chunkwise pass, continue token by token.
        let (pre, mut state) = model
            .forward(ids.clone().narrow(1, 0, prefix), None, None)
            .unwrap();
        assert!(
            rel(pre, full.clone().narrow(1, 0, prefix)) < TOL,
            "config {ci}: prefill"
        );
        for t in prefix..len {
            let (l, next) = model
                .step(ids.clone().narrow(1, t, 1).reshape([batch]), Some(state))
                .unwrap();
            let want: Tensor<B, 2> = full
                .clone()
                .narrow(1, t, 1)
                .reshape([batch, config.vocab_size]);
            let err = rel(l, want);
            assert!(err < TOL, "config {ci}: step {t}: rel {err:e}");
            state = next;
        }
        // Two forwards with the state in between.
        let (_, state) = model
            .forward(ids.clone().narrow(1, 0, prefix), None, None)
            .unwrap();
        let (rest, _) = model
            .forward(
                ids.clone().narrow(1, prefix, len - prefix),
                Some(state),
                None,
            )
            .unwrap();
        assert!(
            rel(rest, full.clone().narrow(1, prefix, len - prefix)) < TOL,
            "config {ci}: split forward"
        );
        // Step from scratch.
        let mut state = None;
        for t in 0..len {
            let (l, next) = model
                .step(ids.clone().narrow(1, t, 1).reshape([batch]), state)
                .unwrap();
            let want: Tensor<B, 2> = full
                .clone()
                .narrow(1, t, 1)
                .reshape([batch, config.vocab_size]);
            assert!(rel(l, want) < TOL, "config {ci}: step from scratch {t}");
            state = Some(next);
        }
    }
}

#[test]
fn large_prefill_then_step_equals_forward() {
    for (ci, config) in large_configs().into_iter().enumerate() {
        let model = config.init::<B>(&device()).unwrap();
        let (batch, len, prefix) = (1, 6, 5);
        let ids = tokens(batch, len, config.vocab_size);
        let (full, _) = model.forward(ids.clone(), None, None).unwrap();
        let (_, mut state) = model
            .forward(ids.clone().narrow(1, 0, prefix), None, None)
            .unwrap();
        for t in prefix..len {
            let (l, next) = model
                .step(ids.clone().narrow(1, t, 1).reshape([batch]), Some(state))
                .unwrap();
            let want: Tensor<B, 2> = full
                .clone()
                .narrow(1, t, 1)
                .reshape([batch, config.vocab_size]);
            assert!(rel(l, want) < TOL, "config {ci}: step {t}");
            state = next;
        }
        let mut state = None;
        for t in 0..len {
            let (l, next) = model
                .step(ids.clone().narrow(1, t, 1).reshape([batch]), state)
                .unwrap();
            let want: Tensor<B, 2> = full
                .clone()
                .narrow(1, t, 1)
                .reshape([batch, config.vocab_size]);
            assert!(rel(l, want) < TOL, "config {ci}: step from scratch {t}");
            state = Some(next);
        }
    }
}

/// Right-padded batch of sequences with `lengths` (padding tokens random) and the sequences.
fn padded_batch(
    lengths: &[usize],
    len: usize,
    vocab: usize,
) -> (Tensor<B, 2, Int>, Vec<Tensor<B, 2, Int>>) {
    let ids = tokens(lengths.len(), len, vocab);
    let seqs = lengths
        .iter()
        .enumerate()
        .map(|(b, &l)| ids.clone().narrow(0, b, 1).narrow(1, 0, l.max(1)))
        .collect();
    (ids, seqs)
}

#[test]
fn lm_padding_neither_changes_state_nor_counts_in_the_loss() {
    let lengths = [6, 3, 1, 0];
    for (ci, config) in lm_configs().into_iter().enumerate() {
        let model = config.init::<B>(&device()).unwrap();
        let v = config.vocab_size;
        let (ids, seqs) = padded_batch(&lengths, 6, v);
        let padding = Padding::new(lengths.to_vec(), 6, &device()).unwrap();
        let (logits, state) = model.forward(ids.clone(), None, Some(&padding)).unwrap();
        // The next token after each sequence's end.
        let next = ints(vec![1, 2, 3, 4], [4, 1]);
        let (after, _) = model.forward(next.clone(), Some(state), None).unwrap();
        for (b, &l) in lengths.iter().enumerate() {
            let st = (l > 0).then(|| {
                let (lg, st) = model.forward(seqs[b].clone(), None, None).unwrap();
                let got = logits.clone().narrow(0, b, 1).narrow(1, 0, l);
                assert!(rel(got, lg) < TOL, "config {ci}: logits of sequence {b}");
                st
            });
            let (want, _) = model
                .forward(next.clone().narrow(0, b, 1), st, None)
                .unwrap();
            let err = rel(after.clone().narrow(0, b, 1), want);
            assert!(
                err < TOL,
                "config {ci}: state after sequence {b} (length {l}): rel {err:e}"
            );
        }
        // The loss counts real tokens only.
        let targets = tokens(4, 6, v);
        let loss: f64 = masked_cross_entropy(logits.clone(), targets.clone(), Some(&padding))
            .into_scalar() as f64;
        let mut total = 0.0;
        for (b, &l) in lengths.iter().enumerate().filter(|(_, l)| **l > 0) {
            let lb = masked_cross_entropy(
                logits.clone().narrow(0, b, 1).narrow(1, 0, l),
                targets.clone().narrow(0, b, 1).narrow(1, 0, l),
                None,
            );
            total += lb.into_scalar() as f64 * l as f64;
        }
        let want = total / lengths.iter().sum::<usize>() as f64;
        assert!(
            (loss - want).abs() < 1e-5 * want.abs(),
            "config {ci}: loss {loss} vs {want}"
        );
    }
}

#[test]
fn large_padding_keeps_the_state() {
    let lengths = [5, 2];
    for (ci, config) in large_configs().into_iter().enumerate() {
        let model = config.init::<B>(&device()).unwrap();
        let (ids, seqs) = padded_batch(&lengths, 5, config.vocab_size);
        let padding = Padding::new(lengths.to_vec(), 5, &device()).unwrap();
        let (logits, state) = model.forward(ids, None, Some(&padding)).unwrap();
        let next = ints(vec![3, 4], [2, 1]);
        let (after, _) = model.forward(next.clone(), Some(state), None).unwrap();
        for (b, &l) in lengths.iter().enumerate() {
            let (lg, st) = model.forward(seqs[b].clone(), None, None).unwrap();
            assert!(
                rel(logits.clone().narrow(0, b, 1).narrow(1, 0, l), lg) < TOL,
                "config {ci}: {b}"
            );
            let (want, _) = model
                .forward(next.clone().narrow(0, b, 1), Some(st), None)
                .unwrap();
            assert!(
                rel(after.clone().narrow(0, b, 1), want) < TOL,
                "config {ci}: state {b}"
            );
        }
    }
}

#[test]
fn mismatched_padding_and_state_are_errors() {
    let config = &lm_configs()[0];
    let model = config.init::<B>(&device()).unwrap();
    let padding = Padding::new(vec![2, 2], 3, &device()).unwrap();
    let err = model
        .forward(tokens(2, 4, 11), None, Some(&padding))
        .unwrap_err();
    assert!(err.to_string().contains("padding"), "{err}");
    assert!(Padding::<B>::new(vec![5], 3, &device()).is_err());
    let (_, state) = model.forward(tokens(3, 2, 11), None, None).unwrap();
    assert!(model.forward(tokens(2, 2, 11), Some(state), None).is_err());
}
