//! AdamW with the official weight-decay groups.
//!
//! The official rule (`xlstm/utils.py::WeightDecayOptimGroupMixin` and
//! `xLSTMLMModel._create_weight_decay_optim_groups`): a parameter is decayed when its name
//! contains `weight` and not `norm`; the token embedding is decayed only when asked
//! (`weight_decay_on_embedding`). Names are the module paths burn reports while visiting
//! (`blocks.0.proj_up.weight`), matched case-insensitively; any path component containing
//! `embedding` marks the embedding. Biases, norm scales, gate biases and recurrent kernels
//! (whose names have no `weight`) are not decayed.
//!
//! burn's AdamW has one decay rate, so two AdamW optimisers share the step: one sees the
//! gradients of the decayed group, the other those of the rest.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor};
use std::collections::HashSet;

/// Whether the parameter at `path` is weight-decayed (see the module docs).
pub fn decays(path: &str, decay_on_embedding: bool) -> bool {
    let p = path.to_ascii_lowercase();
    if p.contains("norm") {
        return false;
    }
    if p.split('.').any(|c| c.contains("embedding")) {
        return decay_on_embedding;
    }
    p.contains("weight")
}

/// Collects parameter paths and their group.
struct Groups {
    path: Vec<String>,
    decay_on_embedding: bool,
    params: Vec<(String, ParamId, bool)>,
}

impl<B: Backend> ModuleVisitor<B> for Groups {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.path.join(".");
        let decay = decays(&name, self.decay_on_embedding);
        self.params.push((name, param.id, decay));
    }
}

/// Every float parameter of `module` as `(path, id, decayed)`, in visiting order.
pub fn weight_decay_groups<B: Backend, M: burn::module::Module<B>>(
    module: &M,
    decay_on_embedding: bool,
) -> Vec<(String, ParamId, bool)> {
    let mut g = Groups {
        path: Vec::new(),
        decay_on_embedding,
        params: Vec::new(),
    };
    module.visit(&mut g);
    g.params
}

/// Moves the gradients of the parameters in `ids` from `from` into a new set.
struct Split<'a> {
    from: &'a mut GradientsParams,
    to: GradientsParams,
    ids: &'a HashSet<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.ids.contains(&param.id) {
            if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
                self.to.register(param.id, g);
            }
        }
    }
}

/// AdamW hyper-parameters (torch defaults for betas and epsilon).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWSettings {
    /// β₁.
    pub beta_1: f32,
    /// β₂.
    pub beta_2: f32,
    /// ε (torch: 1e-8).
    pub epsilon: f32,
    /// Decoupled weight decay of the decayed group (official: 0.1).
    pub weight_decay: f32,
    /// Decay the token embedding too (official `weight_decay_on_embedding`, default false).
    pub decay_on_embedding: bool,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.1,
            decay_on_embedding: false,
        }
    }
}

/// The two optimiser states' records (decayed group, other group).
pub type GroupedRecord<M, B> = (
    <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
    <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
);

/// AdamW over two parameter groups: decayed and not decayed.
pub struct GroupedAdamW<M: AutodiffModule<B>, B: AutodiffBackend> {
    decayed: OptimizerAdaptor<AdamW, M, B>,
    plain: OptimizerAdaptor<AdamW, M, B>,
    decay_ids: HashSet<ParamId>,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> GroupedAdamW<M, B> {
    /// Builds the optimiser and the groups of `module`.
    pub fn new(module: &M, s: &AdamWSettings) -> Self {
        let base = AdamWConfig::new()
            .with_beta_1(s.beta_1)
            .with_beta_2(s.beta_2)
            .with_epsilon(s.epsilon);
        let decay_ids = weight_decay_groups::<B, M>(module, s.decay_on_embedding)
            .into_iter()
            .filter(|(_, _, d)| *d)
            .map(|(_, id, _)| id)
            .collect();
        Self {
            decayed: base.clone().with_weight_decay(s.weight_decay).init(),
            plain: base.with_weight_decay(0.0).init(),
            decay_ids,
        }
    }

    /// One AdamW step with learning rate `lr`.
    pub fn step(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        let mut split = Split {
            from: &mut grads,
            to: GradientsParams::new(),
            ids: &self.decay_ids,
        };
        module.visit(&mut split);
        let decayed = split.to;
        let module = self.decayed.step(lr, module, decayed);
        self.plain.step(lr, module, grads)
    }

    /// The optimiser state.
    pub fn to_record(&self) -> GroupedRecord<M, B> {
        (self.decayed.to_record(), self.plain.to_record())
    }

    /// Restores the optimiser state.
    pub fn load_record(mut self, record: GroupedRecord<M, B>) -> Self {
        self.decayed = self.decayed.load_record(record.0);
        self.plain = self.plain.load_record(record.1);
        self
    }
}
