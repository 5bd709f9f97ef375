//! `DenseBackend` for `Autodiff<B>`: the inner backend's fused forward, with its fused backward
//! registered as one autodiff node of two parents (`x`, `w`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{check, reference, DenseBackend};

/// The autodiff node of one fused headwise matmul; its state is the inner `(x, w)`.
#[derive(Debug)]
struct HeadwiseBackward;

impl<B: DenseBackend> Backward<B, 2> for HeadwiseBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let (x, w) = ops.state;
        let d = B::headwise_fused_backward(x, w, g);
        let [px, pw] = ops.parents;
        if let Some(p) = px {
            grads.register::<B>(p.id, d.x);
        }
        if let Some(p) = pw {
            grads.register::<B>(p.id, d.w);
        }
    }
}

impl<B: DenseBackend, C: CheckpointStrategy> DenseBackend for Autodiff<B, C> {
    fn headwise_matmul<const D: usize>(x: Tensor<Self, D>, w: Tensor<Self, 3>) -> Tensor<Self, D> {
        check(&x, &w);
        let xp = x.clone().into_primitive().tensor();
        let wp = w.clone().into_primitive().tensor();
        let Some(out) = B::headwise_fused_forward(xp.primitive.clone(), wp.primitive.clone())
        else {
            return reference(x, w);
        };
        let nodes = [xp.node.clone(), wp.node.clone()];
        let out = match HeadwiseBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((xp.primitive, wp.primitive), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}
