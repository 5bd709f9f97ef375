//! `mlstm_cell`: the three official mLSTM schedules and the gradients of the parallel one.

use burn::tensor::Tensor;
use xlstm_cells::mlstm::{self, MlstmInputs};
use xlstm_golden::{Array, Case, TestAutodiffBackend as B};

use super::{Report, GRAD_BOUND, OUTPUT_BOUND};

pub fn check(case: &Case, report: &mut Report) {
    let device = Default::default();
    let gates = |name: &str| -> Tensor<B, 3> {
        let t: Tensor<B, 4> = case.get(name).to_tensor(&device);
        let [b, nh, s, _] = t.dims();
        t.reshape([b, nh, s]).require_grad()
    };
    let x = MlstmInputs::<B> {
        q: case
            .get("input.q")
            .to_tensor::<B, 4>(&device)
            .require_grad(),
        k: case
            .get("input.k")
            .to_tensor::<B, 4>(&device)
            .require_grad(),
        v: case
            .get("input.v")
            .to_tensor::<B, 4>(&device)
            .require_grad(),
        i_preact: gates("input.igate_preact"),
        f_preact: gates("input.fgate_preact"),
    };
    let [b, nh, s, dqk, dv] = x.dims().expect("golden shapes agree");

    for output in case.names("output.") {
        let want = case.get(&format!("output.{output}"));
        match output.as_str() {
            "h_parallel" => {
                let (h, _) = mlstm::parallel(&x, None).unwrap();
                report.compare(
                    &case.name,
                    "output.h_parallel",
                    &Array::from_tensor(h.clone()),
                    want,
                    OUTPUT_BOUND,
                );
                let grad_h: Tensor<B, 4> = case.get("input.grad_h").to_tensor(&device);
                let grads = (h * grad_h).sum().backward();
                let pairs: [(&str, Array); 5] = [
                    ("q", Array::from_tensor(x.q.grad(&grads).unwrap())),
                    ("k", Array::from_tensor(x.k.grad(&grads).unwrap())),
                    ("v", Array::from_tensor(x.v.grad(&grads).unwrap())),
                    (
                        "igate_preact",
                        Array::from_tensor(x.i_preact.grad(&grads).unwrap().reshape([b, nh, s, 1])),
                    ),
                    (
                        "fgate_preact",
                        Array::from_tensor(x.f_preact.grad(&grads).unwrap().reshape([b, nh, s, 1])),
                    ),
                ];
                for (name, got) in pairs {
                    let key = format!("grad.{name}");
                    report.compare(&case.name, &key, &got, case.get(&key), GRAD_BOUND);
                }
            }
            "h_recurrent" => {
                let mut state = None;
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
                let state = state.expect("S >= 1");
                let h: Tensor<B, 4> = Tensor::stack(hs, 2);
                report.compare(
                    &case.name,
                    "output.h_recurrent",
                    &Array::from_tensor(h),
                    want,
                    OUTPUT_BOUND,
                );
                let last = [
                    ("c_last", Array::from_tensor(state.c)),
                    (
                        "n_last",
                        Array::from_tensor(state.n.reshape([b, nh, dqk, 1])),
                    ),
                    ("m_last", Array::from_tensor(state.m.reshape([b, nh, 1, 1]))),
                ];
                for (name, got) in last {
                    let key = format!("output.{name}");
                    report.compare(&case.name, &key, &got, case.get(&key), OUTPUT_BOUND);
                }
            }
            "c_last" | "n_last" | "m_last" => {} // checked with h_recurrent
            other => {
                let chunk: usize = other
                    .strip_prefix("h_chunkwise_cs")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("{}: unknown output `{other}`", case.name));
                let (h, _) = mlstm::chunkwise(&x, None, chunk).unwrap();
                report.compare(
                    &case.name,
                    &format!("output.{other}"),
                    &Array::from_tensor(h),
                    want,
                    OUTPUT_BOUND,
                );
            }
        }
    }
}
