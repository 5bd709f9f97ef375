//! Cross-entropy and accuracy on the scored positions (targets `>= 0`; `-1` is ignored, as
//! `ignore_index=-1` in the official training script).

use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor};

/// Mean cross-entropy over scored positions: logits `[B, S, V]`, targets `[B, S]`
/// (`-1` = not scored). Returns a 1-element tensor; 0 when nothing is scored.
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    let [b, s, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * s, v]), 1); // [N, V]
    let targets = targets.reshape([b * s, 1]); // [N, 1]
    let scored = targets.clone().greater_equal_elem(0); // [N, 1]
    let index = targets.clamp_min(0);
    let picked = logp.gather(1, index); // [N, 1]
    let weight = scored.float();
    let count = weight.clone().sum().clamp_min(1.0);
    (picked * weight).sum().neg() / count
}

/// `(correct, scored)` counts of argmax predictions over scored positions, per row `[B]`.
pub fn correct_per_row<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> (Vec<usize>, Vec<usize>) {
    let [b, s, _] = logits.dims();
    let predicted = logits.argmax(2).reshape([b, s]); // [B, S]
    let scored = targets.clone().greater_equal_elem(0);
    let hit = predicted.equal(targets).int() * scored.clone().int();
    let hits: Vec<i64> = hit
        .sum_dim(1)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .expect("int data");
    let counts: Vec<i64> = scored
        .int()
        .sum_dim(1)
        .into_data()
        .convert::<i64>()
        .to_vec()
        .expect("int data");
    (
        hits.into_iter().map(|x| x as usize).collect(),
        counts.into_iter().map(|x| x as usize).collect(),
    )
}
