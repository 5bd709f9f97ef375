//! `slstm_cell`: the official vanilla sLSTM recurrence, all states per step, all gradients.

use burn::tensor::Tensor;
use xlstm_cells::slstm::{self, SlstmWeights};
use xlstm_golden::{Array, Case, TestAutodiffBackend as B};

use super::{Report, GRAD_BOUND, OUTPUT_BOUND};

pub fn check(case: &Case, report: &mut Report) {
    let device = Default::default();
    // input.x is [S, B, 4H]; the cell takes [B, S, 4H].
    let x: Tensor<B, 3> = case
        .get("input.x")
        .to_tensor::<B, 3>(&device)
        .require_grad();
    let r: Tensor<B, 3> = case
        .get("input.R")
        .to_tensor::<B, 3>(&device)
        .require_grad();
    let bias: Tensor<B, 1> = case
        .get("input.b")
        .to_tensor::<B, 1>(&device)
        .require_grad();
    let weights = SlstmWeights::from_official(r.clone(), bias.clone());
    let wx = x.clone().swap_dims(0, 1);
    let [batch, s, width] = wx.dims();

    let (h, _) = slstm::sequence(wx.clone(), &weights, None).unwrap();
    let y = h.swap_dims(0, 1); // [S, B, H]
    report.compare(
        &case.name,
        "output.y",
        &Array::from_tensor(y.clone()),
        case.get("output.y"),
        OUTPUT_BOUND,
    );

    // Every state of every step, through the single-step form.
    let mut state = None;
    let (mut cs, mut ns, mut ms) = (vec![], vec![], vec![]);
    for t in 0..s {
        let (_, next) = slstm::step(
            wx.clone().narrow(1, t, 1).reshape([batch, width]),
            &weights,
            state,
        )
        .unwrap();
        cs.push(next.c.clone());
        ns.push(next.n.clone());
        ms.push(next.m.clone());
        state = Some(next);
    }
    for (name, states) in [("c", cs), ("n", ns), ("m", ms)] {
        let got: Tensor<B, 3> = Tensor::stack(states, 0);
        let key = format!("output.{name}");
        report.compare(
            &case.name,
            &key,
            &Array::from_tensor(got),
            case.get(&key),
            OUTPUT_BOUND,
        );
    }

    let grad_y: Tensor<B, 3> = case.get("input.grad_y").to_tensor(&device);
    let grads = (y * grad_y).sum().backward();
    let pairs = [
        ("grad.x", Array::from_tensor(x.grad(&grads).unwrap())),
        ("grad.R", Array::from_tensor(r.grad(&grads).unwrap())),
        ("grad.b", Array::from_tensor(bias.grad(&grads).unwrap())),
    ];
    for (key, got) in pairs {
        report.compare(&case.name, key, &got, case.get(key), GRAD_BOUND);
    }
}
