//! The fused CPU mLSTM step (`NdArray<f32>`, kernels/src/mlstm/cpu.rs) against the tensor-op
//! reference `xlstm_cells::mlstm::step`: `h` and the new state over chains of steps, from the
//! zero state and from a random one, on awkward shapes; and a state the caller still holds
//! stays unchanged (the step updates in place only what it is handed).

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use xlstm_cells::mlstm::MlstmState;
use xlstm_golden::rel_l2;
use xlstm_kernels::MlstmBackend;

mod common;
use common::Rng;

type Cpu = NdArray<f32>;

fn tensor<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> Tensor<Cpu, D> {
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

fn values<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

fn random_state(rng: &mut Rng, b: usize, nh: usize, dqk: usize, dv: usize) -> MlstmState<Cpu> {
    MlstmState {
        c: tensor(rng.uniform(b * nh * dqk * dv, -1.0, 1.0), [b, nh, dqk, dv]),
        n: tensor(rng.uniform(b * nh * dqk, -1.0, 1.0), [b, nh, dqk]),
        m: tensor(rng.uniform(b * nh, -3.0, 3.0), [b, nh]),
    }
}

/// `steps` tokens through the fused step and the reference, compared after every step.
fn chain(seed: u64, (b, nh, dqk, dv): (usize, usize, usize, usize), steps: usize, start: bool) {
    let mut rng = Rng::new(seed);
    let initial = start.then(|| random_state(&mut rng, b, nh, dqk, dv));
    let (mut fused, mut reference) = (initial.clone(), initial);
    for t in 0..steps {
        let q = tensor(rng.uniform(b * nh * dqk, -1.0, 1.0), [b, nh, dqk]);
        let k = tensor(rng.uniform(b * nh * dqk, -1.0, 1.0), [b, nh, dqk]);
        let v = tensor(rng.uniform(b * nh * dv, -1.0, 1.0), [b, nh, dv]);
        // Forget pre-activations from strongly closed to open, input ones up to e^8.
        let i = tensor(rng.uniform(b * nh, -8.0, 8.0), [b, nh]);
        let f = tensor(rng.uniform(b * nh, -6.0, 8.0), [b, nh]);
        let (h, s) =
            Cpu::mlstm_step(q.clone(), k.clone(), v.clone(), i.clone(), f.clone(), fused).unwrap();
        let (h_ref, s_ref) = xlstm_cells::mlstm::step(q, k, v, i, f, reference).unwrap();
        for (name, got, want) in [
            ("h", values(h), values(h_ref)),
            ("C", values(s.c.clone()), values(s_ref.c.clone())),
            ("n", values(s.n.clone()), values(s_ref.n.clone())),
            ("m", values(s.m.clone()), values(s_ref.m.clone())),
        ] {
            // Both sides are f32 with different summation orders (the reference's `q C'` is a
            // blocked GEMM): the project's f32 bound.
            let err = rel_l2(&got, &want);
            assert!(
                err <= 1e-5,
                "{name} at step {t}: rel L2 {err:.2e}, shape {:?}, initial state {start}",
                (b, nh, dqk, dv)
            );
        }
        (fused, reference) = (Some(s), Some(s_ref));
    }
}

#[test]
fn cpu_step_matches_the_reference_on_awkward_shapes() {
    for (seed, dims, steps) in [
        (1, (1, 1, 1, 1), 3),
        (2, (1, 4, 64, 64), 9),
        (3, (3, 2, 7, 5), 6),
        (4, (2, 3, 16, 33), 5),
        (5, (5, 1, 33, 8), 4),
    ] {
        chain(seed, dims, steps, false);
        chain(seed + 100, dims, steps, true);
    }
}

#[test]
fn a_state_the_caller_keeps_is_left_unchanged() {
    let mut rng = Rng::new(9);
    let (b, nh, dqk, dv) = (2, 2, 8, 6);
    let kept = random_state(&mut rng, b, nh, dqk, dv);
    let before = [
        values(kept.c.clone()),
        values(kept.n.clone()),
        values(kept.m.clone()),
    ];
    let q = tensor(rng.uniform(b * nh * dqk, -1.0, 1.0), [b, nh, dqk]);
    let k = tensor(rng.uniform(b * nh * dqk, -1.0, 1.0), [b, nh, dqk]);
    let v = tensor(rng.uniform(b * nh * dv, -1.0, 1.0), [b, nh, dv]);
    let i = tensor(rng.uniform(b * nh, -2.0, 2.0), [b, nh]);
    let f = tensor(rng.uniform(b * nh, -2.0, 2.0), [b, nh]);
    let (_, new) = Cpu::mlstm_step(q, k, v, i, f, Some(kept.clone())).unwrap();
    assert!(
        rel_l2(&values(new.c), &before[0]) > 1e-3,
        "the step changed C"
    );
    let after = [values(kept.c), values(kept.n), values(kept.m)];
    assert_eq!(after, before, "the caller's state was modified");
}
