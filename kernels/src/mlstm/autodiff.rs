//! `MlstmBackend` for `Autodiff<B>`: the inner backend's chunkwise forward as two autodiff
//! nodes whose one backward is `B::mlstm_chunkwise_backward`.
//!
//! burn's nodes have one output each, and the chunkwise form has two: `h` and the final state.
//! The **state node** has the eight parents (`q, k, v, ĩ, f̃` and the initial `C, n, m`) and
//! outputs the final state packed per (batch entry, head), `[B, NH, DQK·DV + DQK + 1]` in the
//! state's float type. The **output node** outputs `h` in the inputs' float type; its one parent
//! is the state node, so burn runs its backward first. That backward only hands `dh` over
//! (through a shared slot) and registers a zero gradient for the state node, whose backward then
//! runs the whole chunkwise backward with `dh` and `dstate`. (One node that packed `h` with the
//! state cost an f32 copy of `h` each way, ≈ 5 ms of 52 at the first benchmark shape.)

use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    Tensor, TensorPrimitive,
};
use xlstm_cells::mlstm::{MlstmInputs, MlstmState};
use xlstm_cells::CellError;

use super::{ChunkStates, MlstmBackend};

/// `dh`, handed from the output node's backward to the state node's backward.
type Handoff<B> = Arc<Mutex<Option<Tensor<B, 4>>>>;

/// The state node of one chunkwise call: its backward is the whole chunkwise backward.
#[derive(Debug)]
struct ChunkwiseBackward;

/// What the backward reads: the inputs, the initial state, the output `h` and the chunk size
/// (the chunk-boundary states are recomputed), and the slot the output node fills with `dh`.
#[derive(Debug, Clone)]
struct ChunkwiseSaved<B: Backend> {
    x: MlstmInputs<B>,
    state: MlstmState<B>,
    h: Tensor<B, 4>,
    states: Option<ChunkStates<B>>,
    chunk_size: usize,
    dh: Handoff<B>,
}

impl<B: MlstmBackend> Backward<B, 8> for ChunkwiseBackward {
    type State = ChunkwiseSaved<B>;

    fn backward(self, ops: Ops<Self::State, 8>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dout = grads.consume::<B>(&ops.node);
        let ChunkwiseSaved {
            x,
            state,
            h,
            states,
            chunk_size,
            dh,
        } = ops.state;
        let dout = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(dout));
        let dstate = unpack(dout, x.v.dims()[3], state.dims()[2]);
        // No `dh` where `h` is not in the loss (the output node's backward did not run).
        let taken = dh
            .lock()
            .expect("the slot is only locked to move dh")
            .take();
        let dh = taken.unwrap_or_else(|| h.zeros_like());
        let (dx, ds) = B::mlstm_chunkwise_backward(&x, state, chunk_size, h, states, dh, dstate);
        let prim4 = |t: Tensor<B, 4>| t.into_primitive().tensor();
        let prim3 = |t: Tensor<B, 3>| t.into_primitive().tensor();
        let all = [
            prim4(dx.q),
            prim4(dx.k),
            prim4(dx.v),
            prim3(dx.i_preact),
            prim3(dx.f_preact),
            prim4(ds.c),
            prim3(ds.n),
            ds.m.into_primitive().tensor(),
        ];
        for (parent, grad) in ops.parents.iter().zip(all) {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, grad);
            }
        }
    }
}

/// The output node of one chunkwise call: its backward hands `dh` to the state node's.
#[derive(Debug)]
struct OutputBackward;

/// The slot for `dh` and the packed state, whose shape the zero gradient takes.
#[derive(Debug, Clone)]
struct OutputSaved<B: Backend> {
    dh: Handoff<B>,
    packed: [usize; 3],
}

impl<B: MlstmBackend> Backward<B, 1> for OutputBackward {
    type State = OutputSaved<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dh = grads.consume::<B>(&ops.node);
        let OutputSaved { dh: slot, packed } = ops.state;
        let dh = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(dh));
        let device = dh.device();
        *slot.lock().expect("the slot is only locked to move dh") = Some(dh);
        if let Some(parent) = &ops.parents[0] {
            let zeros = Tensor::<B, 3>::zeros(packed, &device);
            grads.register::<B>(parent.id, zeros.into_primitive().tensor());
        }
    }
}

/// The final state from the packed `[B, NH, DQK·DV + DQK + 1]`.
fn unpack<B: Backend>(out: Tensor<B, 3>, dv: usize, dqk: usize) -> MlstmState<B> {
    let [b, nh, _] = out.dims();
    let part = |from: usize, len: usize| out.clone().narrow(2, from, len);
    MlstmState {
        c: part(0, dqk * dv).reshape([b, nh, dqk, dv]),
        n: part(dqk * dv, dqk),
        m: part(dqk * dv + dqk, 1).reshape([b, nh]),
    }
}

/// `h` and the final state under `Autodiff<B, C>`.
type Output<B, C> = (Tensor<Autodiff<B, C>, 4>, MlstmState<Autodiff<B, C>>);

/// The chunkwise form of `B` as the two nodes of `Autodiff<B>` (module doc).
fn chunkwise_node<B: MlstmBackend, C: CheckpointStrategy>(
    x: &MlstmInputs<Autodiff<B, C>>,
    state: Option<MlstmState<Autodiff<B, C>>>,
    chunk_size: usize,
) -> Result<Output<B, C>, CellError> {
    let [b, nh, s, dqk, dv] = x.dims()?;
    if s == 0 || chunk_size == 0 {
        // The reference names the offending field.
        return xlstm_cells::mlstm::chunkwise(x, state, chunk_size);
    }
    let state = MlstmState::given_or_zeros(state, [b, nh, dqk, dv], &x.q.device())?;
    let inner_x = MlstmInputs {
        q: x.q.clone().inner(),
        k: x.k.clone().inner(),
        v: x.v.clone().inner(),
        i_preact: x.i_preact.clone().inner(),
        f_preact: x.f_preact.clone().inner(),
    };
    let inner_state0 = inner_state(state.clone());
    let (h, end, states) =
        B::mlstm_chunkwise_keeping_states(&inner_x, Some(inner_state0.clone()), chunk_size)?;
    let state_dtype = end.c.dtype();
    let packed = Tensor::cat(
        vec![
            end.c.reshape([b, nh, dqk * dv]),
            end.n.cast(state_dtype),
            end.m.reshape([b, nh, 1]).cast(state_dtype),
        ],
        2,
    );
    let packed_dims = packed.dims();
    let packed = packed.into_primitive().tensor();
    let nodes = [
        x.q.clone().into_primitive().tensor().node,
        x.k.clone().into_primitive().tensor().node,
        x.v.clone().into_primitive().tensor().node,
        x.i_preact.clone().into_primitive().tensor().node,
        x.f_preact.clone().into_primitive().tensor().node,
        state.c.into_primitive().tensor().node,
        state.n.into_primitive().tensor().node,
        state.m.into_primitive().tensor().node,
    ];
    let slot: Handoff<B> = Arc::new(Mutex::new(None));
    let end = match ChunkwiseBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            ChunkwiseSaved {
                x: inner_x,
                state: inner_state0,
                h: h.clone(),
                states,
                chunk_size,
                dh: slot.clone(),
            },
            packed,
        ),
        OpsKind::UnTracked(prep) => prep.finish(packed),
    };
    let h = h.into_primitive().tensor();
    let h = match OutputBackward
        .prepare::<C>([end.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            OutputSaved {
                dh: slot,
                packed: packed_dims,
            },
            h,
        ),
        OpsKind::UnTracked(prep) => prep.finish(h),
    };
    let end = Tensor::<Autodiff<B, C>, 3>::from_primitive(TensorPrimitive::Float(end));
    let h = Tensor::<Autodiff<B, C>, 4>::from_primitive(TensorPrimitive::Float(h));
    Ok((h, unpack(end, dv, dqk)))
}

/// Under autodiff, inputs that carry no gradient (inference, generation) run the inner
/// backend's primitive — the kernels on cube backends. Tracked inputs run it as one node with
/// the backward of `B::mlstm_chunkwise_backward` where `B::CHUNKWISE_NODE` (the cube
/// backends), else the tensor-op reference, whose backward autodiff derives.
impl<B: MlstmBackend, C: CheckpointStrategy> MlstmBackend for Autodiff<B, C> {
    fn mlstm_max_buffer_bytes(device: &Self::Device) -> usize {
        B::mlstm_max_buffer_bytes(device)
    }

    fn mlstm_chunkwise(
        x: &MlstmInputs<Self>,
        state: Option<MlstmState<Self>>,
        chunk_size: usize,
    ) -> Result<(Tensor<Self, 4>, MlstmState<Self>), CellError> {
        let tracked = [&x.q, &x.k, &x.v].iter().any(|t| in_graph(t))
            || [&x.i_preact, &x.f_preact].iter().any(|t| in_graph(t))
            || state.as_ref().is_some_and(state_tracked);
        if tracked && B::CHUNKWISE_NODE {
            return chunkwise_node(x, state, chunk_size);
        }
        if tracked {
            return xlstm_cells::mlstm::chunkwise(x, state, chunk_size);
        }
        let inner = MlstmInputs {
            q: x.q.clone().inner(),
            k: x.k.clone().inner(),
            v: x.v.clone().inner(),
            i_preact: x.i_preact.clone().inner(),
            f_preact: x.f_preact.clone().inner(),
        };
        let (h, state) = B::mlstm_chunkwise(&inner, state.map(inner_state), chunk_size)?;
        Ok((Tensor::from_inner(h), outer_state(state)))
    }

    fn mlstm_step(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        i_preact: Tensor<Self, 2>,
        f_preact: Tensor<Self, 2>,
        state: Option<MlstmState<Self>>,
    ) -> Result<(Tensor<Self, 3>, MlstmState<Self>), CellError> {
        let tracked = [&q, &k, &v].iter().any(|t| in_graph(t))
            || [&i_preact, &f_preact].iter().any(|t| in_graph(t))
            || state.as_ref().is_some_and(state_tracked);
        if tracked {
            return xlstm_cells::mlstm::step(q, k, v, i_preact, f_preact, state);
        }
        let (h, state) = B::mlstm_step(
            q.inner(),
            k.inner(),
            v.inner(),
            i_preact.inner(),
            f_preact.inner(),
            state.map(inner_state),
        )?;
        Ok((Tensor::from_inner(h), outer_state(state)))
    }
}

/// Whether `t` takes part in the autodiff graph: a tracked leaf *or* computed from one.
/// (`Tensor::is_require_grad` is true for leaves only, so it misses every activation.)
fn in_graph<B: Backend, C: CheckpointStrategy, const D: usize>(
    t: &Tensor<Autodiff<B, C>, D>,
) -> bool {
    !t.clone()
        .into_primitive()
        .tensor()
        .node
        .requirement
        .is_none()
}

fn state_tracked<B: Backend, C: CheckpointStrategy>(s: &MlstmState<Autodiff<B, C>>) -> bool {
    in_graph(&s.c) || in_graph(&s.n) || in_graph(&s.m)
}

fn inner_state<B: AutodiffBackend>(s: MlstmState<B>) -> MlstmState<B::InnerBackend> {
    MlstmState {
        c: s.c.inner(),
        n: s.n.inner(),
        m: s.m.inner(),
    }
}

fn outer_state<B: AutodiffBackend>(s: MlstmState<B::InnerBackend>) -> MlstmState<B> {
    MlstmState {
        c: Tensor::from_inner(s.c),
        n: Tensor::from_inner(s.n),
        m: Tensor::from_inner(s.m),
    }
}
