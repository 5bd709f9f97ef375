//! `SlstmBackend` for `Autodiff<B>`: the inner backend's fused forward, with its fused
//! backward registered as one autodiff node of four parents (`wx`, `r`, `b`, `state0`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorPrimitive};
use xlstm_cells::slstm::{SlstmState, SlstmWeights};
use xlstm_cells::CellError;

use super::{check_inputs, pack_state, unpack_output, SlstmBackend, SlstmSaved};

/// The autodiff node of one fused sLSTM call.
#[derive(Debug)]
struct SlstmBackward;

impl<B: SlstmBackend> Backward<B, 4> for SlstmBackward {
    type State = SlstmSaved<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = grads.consume::<B>(&ops.node);
        let g = B::slstm_fused_backward(ops.state, dout);
        for (parent, grad) in ops.parents.iter().zip([g.wx, g.r, g.b, g.state0]) {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, grad);
            }
        }
    }
}

impl<B: SlstmBackend, C: CheckpointStrategy> SlstmBackend for Autodiff<B, C> {
    fn slstm_sequence(
        wx: Tensor<Self, 3>,
        weights: &SlstmWeights<Self>,
        state: Option<SlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, SlstmState<Self>), CellError> {
        let (_, seq, nh, dh) = check_inputs(&wx, weights, state.as_ref())?;
        let state0 = pack_state(state.clone(), &wx, nh * dh);
        let inputs = [
            wx.clone().into_primitive().tensor(),
            weights.r.clone().into_primitive().tensor(),
            weights.b.clone().into_primitive().tensor(),
            state0.into_primitive().tensor(),
        ];
        let tracked = inputs.iter().any(|t| !t.node.requirement.is_none());
        let fused = B::slstm_fused_forward(
            inputs[0].primitive.clone(),
            inputs[1].primitive.clone(),
            inputs[2].primitive.clone(),
            inputs[3].primitive.clone(),
            tracked,
        );
        let Some(fused) = fused else {
            return xlstm_cells::slstm::sequence(wx, weights, state);
        };
        let nodes = inputs.map(|t| t.node.clone());
        let out = match SlstmBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => match fused.saved {
                Some(saved) => prep.finish(saved, fused.out),
                None => unreachable!("the fused forward was asked to save its state"),
            },
            OpsKind::UnTracked(prep) => prep.finish(fused.out),
        };
        Ok(unpack_output(
            Tensor::from_primitive(TensorPrimitive::Float(out)),
            seq,
        ))
    }
}
