//! Bad shapes are reported as errors naming the argument, never as panics.

use burn::tensor::Tensor;
use xlstm_cells::mlstm::{self, MlstmInputs, MlstmState};
use xlstm_cells::slstm::{self, SlstmState, SlstmWeights};
use xlstm_golden::TestBackend as B;

fn inputs(s: usize, dqk: usize, dv: usize) -> MlstmInputs<B> {
    let d = Default::default();
    MlstmInputs {
        q: Tensor::zeros([2, 3, s, dqk], &d),
        k: Tensor::zeros([2, 3, s, dqk], &d),
        v: Tensor::zeros([2, 3, s, dv], &d),
        i_preact: Tensor::zeros([2, 3, s], &d),
        f_preact: Tensor::zeros([2, 3, s], &d),
    }
}

#[test]
fn mlstm_names_the_misshaped_argument() {
    let d = Default::default();
    let mut x = inputs(5, 4, 6);
    x.k = Tensor::zeros([2, 3, 5, 5], &d);
    assert_eq!(mlstm::parallel(&x, None).unwrap_err().field, "k");

    let mut x = inputs(5, 4, 6);
    x.f_preact = Tensor::zeros([2, 3, 4], &d);
    assert_eq!(mlstm::chunkwise(&x, None, 2).unwrap_err().field, "f_preact");

    let x = inputs(5, 4, 6);
    let mut state = MlstmState::<B>::zeros(2, 3, 4, 6, &d);
    state.c = Tensor::zeros([2, 3, 6, 4], &d); // DQK and DV swapped
    let err = mlstm::chunkwise(&x, Some(state), 2).unwrap_err();
    assert_eq!(err.field, "state.c");
    assert!(err.to_string().contains("[2, 3, 4, 6]"), "{err}");

    assert_eq!(
        mlstm::chunkwise(&x, None, 0).unwrap_err().field,
        "chunk_size"
    );
    assert_eq!(
        mlstm::parallel(&inputs(0, 4, 6), None).unwrap_err().field,
        "q"
    );

    let err = mlstm::step::<B>(
        Tensor::zeros([2, 3, 4], &d),
        Tensor::zeros([2, 3, 4], &d),
        Tensor::zeros([2, 3, 6], &d),
        Tensor::zeros([2, 3], &d),
        Tensor::zeros([2, 2], &d),
        None,
    )
    .unwrap_err();
    assert_eq!(err.field, "f_preact");
}

#[test]
fn slstm_names_the_misshaped_argument() {
    let d = Default::default();
    let weights = SlstmWeights::<B> {
        r: Tensor::zeros([2, 3, 12], &d),
        b: Tensor::zeros([24], &d),
    };
    // Width 4·H must be 24.
    let err = slstm::sequence(Tensor::zeros([1, 5, 20], &d), &weights, None).unwrap_err();
    assert_eq!(err.field, "wx");

    let bad_r = SlstmWeights::<B> {
        r: Tensor::zeros([2, 3, 10], &d),
        b: Tensor::zeros([24], &d),
    };
    assert_eq!(
        slstm::step(Tensor::zeros([1, 24], &d), &bad_r, None)
            .unwrap_err()
            .field,
        "r"
    );

    let bad_b = SlstmWeights::<B> {
        r: Tensor::zeros([2, 3, 12], &d),
        b: Tensor::zeros([12], &d),
    };
    assert_eq!(
        slstm::step(Tensor::zeros([1, 24], &d), &bad_b, None)
            .unwrap_err()
            .field,
        "b"
    );

    let mut state = SlstmState::<B>::zeros(1, 6, &d);
    state.m = Tensor::zeros([2, 6], &d);
    let err = slstm::step(Tensor::zeros([1, 24], &d), &weights, Some(state)).unwrap_err();
    assert_eq!(err.field, "state.m");
}
