//! The training loop: gradient accumulation, global-norm clipping, AdamW groups, the
//! schedule, NaN/Inf skipping, evaluation per length bucket, and exact resumption.

use crate::checkpoint::{self, StateFile, TrainState};
use crate::clip::{clip_global_norm, global_grad_norm};
use crate::data::{Batch, Bucket, Dataset, Example};
use crate::error::TrainError;
use crate::loss::{correct_per_row, masked_cross_entropy};
use crate::model::LanguageModel;
use crate::optim::{AdamWSettings, GroupedAdamW, GroupedRecord};
use crate::schedule::WarmupCosine;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, ElementConversion, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Settings of a training run (official defaults where the paper's configs give them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of `lr` (official `lr_decay_factor`: 0.001).
    pub lr_decay_factor: f64,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub clip_norm: Option<f64>,
    /// AdamW settings.
    pub adamw: AdamWSettings,
    /// Seed of initialisation and data.
    pub seed: u64,
}

impl TrainConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad(format!(
                "batch_size ({}) and grad_accum ({}) must be at least 1",
                self.batch_size, self.grad_accum
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be a positive number, got {}", self.lr));
        }
        if let Some(c) = self.clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("clip_norm must be positive, got {c}"));
            }
        }
        Ok(())
    }

    /// The schedule of these settings (decay until the last step, as the official configs).
    pub fn schedule(&self) -> WarmupCosine {
        WarmupCosine {
            warmup_steps: self.warmup_steps,
            decay_until_step: self.steps.max(self.warmup_steps),
            max_lr: self.lr,
            min_lr: self.lr * self.lr_decay_factor,
        }
    }
}

/// What one optimiser step did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step just taken (1-based).
    pub step: usize,
    /// Mean loss over the micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Input tokens processed.
    pub tokens: usize,
    /// True when the loss or a gradient was NaN/Inf and the update was skipped.
    pub skipped: bool,
}

/// Accuracy and loss of one evaluation bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketResult {
    /// The bucket.
    pub bucket: Bucket,
    /// Fraction of scored positions predicted right.
    pub accuracy: f64,
    /// Mean loss per batch.
    pub loss: f64,
    /// Examples evaluated.
    pub examples: usize,
}

/// Counts NaN/Inf weights.
struct NonFinite<B: Backend> {
    count: Option<Tensor<B, 1, burn::tensor::Int>>,
}

impl<B: Backend> ModuleVisitor<B> for NonFinite<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let bad = param.val().is_finite().bool_not().int().sum();
        self.count = Some(match self.count.take() {
            Some(c) => c + bad,
            None => bad,
        });
    }
}

/// Number of NaN/Inf weights of `module`.
pub fn count_non_finite<B: Backend, M: Module<B>>(module: &M) -> usize {
    let mut v = NonFinite::<B> { count: None };
    module.visit(&mut v);
    v.count
        .map(|c| c.into_scalar().elem::<i64>() as usize)
        .unwrap_or(0)
}

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

/// A model, its optimiser and the loop state.
pub struct Trainer<B: AutodiffBackend, M: AutodiffModule<B> + LanguageModel<B>> {
    model: Option<M>,
    optim: GroupedAdamW<M, B>,
    config: TrainConfig,
    state: TrainState,
    device: B::Device,
    replica: Replica,
}

/// This trainer's place among data-parallel replicas: `rank` of `world` (rank 0 of 1 alone).
///
/// Each replica takes rows `rank·b/world .. (rank+1)·b/world` of every global micro-batch of
/// `b = batch_size` rows, weights its loss by its share of the scored tokens, and the
/// gradients are summed over replicas (burn's collective all-reduce) before clipping and the
/// optimiser step, which every replica then applies identically: the update is that of one
/// device on the whole global batch, up to floating-point order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica {
    /// This replica's index, `0..world`.
    pub rank: usize,
    /// How many replicas train together.
    pub world: usize,
}

impl Replica {
    /// A trainer on its own.
    pub const ALONE: Replica = Replica { rank: 0, world: 1 };
}

impl<B, M> Trainer<B, M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + LanguageModel<B>,
    M::InnerModule: LanguageModel<B::InnerBackend>,
{
    /// A fresh run for `model` (initialised by the caller with `config.seed`).
    pub fn new(model: M, config: TrainConfig, device: B::Device) -> Result<Self, TrainError> {
        config.validate()?;
        let optim = GroupedAdamW::new(&model, &config.adamw);
        let state = TrainState {
            step: 0,
            examples_seen: 0,
            skipped_steps: 0,
            seed: config.seed,
            schedule: config.schedule(),
        };
        Ok(Self {
            model: Some(model),
            optim,
            config,
            state,
            device,
            replica: Replica::ALONE,
        })
    }

    /// Makes this trainer replica `replica.rank` of `replica.world` data-parallel replicas
    /// (see [`Replica`]); every replica must have been registered with burn's collective
    /// (`crate::distributed`). `batch_size` must be a multiple of the world size.
    #[cfg(feature = "collective")]
    pub fn into_replica(mut self, replica: Replica) -> Result<Self, TrainError> {
        if replica.world == 0 || replica.rank >= replica.world {
            return Err(TrainError::Config(format!(
                "replica rank {} must be below the world size {} (≥ 1)",
                replica.rank, replica.world
            )));
        }
        if !self.config.batch_size.is_multiple_of(replica.world) {
            return Err(TrainError::Config(format!(
                "batch_size ({}) must be a multiple of the number of devices ({})",
                self.config.batch_size, replica.world
            )));
        }
        self.replica = replica;
        Ok(self)
    }

    /// Continues from checkpoint `dir` (a `step-*` directory or a folder with `LATEST`):
    /// `model` is a freshly built model of the same architecture whose weights are replaced.
    /// `config.steps` may extend the run; the schedule is the checkpoint's.
    pub fn resume(
        model: M,
        config: TrainConfig,
        dir: &Path,
        device: B::Device,
    ) -> Result<(Self, serde_json::Value), TrainError> {
        config.validate()?;
        let dir = checkpoint::latest(dir)?;
        let StateFile { state, meta, .. } = checkpoint::read_state(&dir)?;
        let rec = Rec::new();
        let model_path = dir.join("model");
        let record = Recorder::<B>::load(&rec, model_path.clone(), &device).map_err(|e| {
            TrainError::Record {
                path: model_path,
                message: e.to_string(),
            }
        })?;
        let model = model.load_record(record);
        let optim_path = dir.join("optim");
        let optim_record: GroupedRecord<M, B> =
            Recorder::<B>::load(&rec, optim_path.clone(), &device).map_err(|e| {
                TrainError::Record {
                    path: optim_path,
                    message: e.to_string(),
                }
            })?;
        let optim = GroupedAdamW::new(&model, &config.adamw).load_record(optim_record);
        Ok((
            Self {
                model: Some(model),
                optim,
                config,
                state,
                device,
                replica: Replica::ALONE,
            },
            meta,
        ))
    }

    /// The model.
    pub fn model(&self) -> &M {
        self.model.as_ref().expect("model present between steps")
    }

    /// The loop state.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// True once `config.steps` steps are done.
    pub fn finished(&self) -> bool {
        self.state.step >= self.config.steps
    }

    /// One optimiser step on the next `grad_accum` micro-batches of `data` (this replica's
    /// rows of them; see [`Replica`]).
    pub fn step(&mut self, data: &Dataset) -> Result<StepReport, TrainError> {
        let Replica { rank, world } = self.replica;
        let (global, accum) = (self.config.batch_size, self.config.grad_accum);
        let rows = global / world;
        let micro: Vec<(Batch, f64)> = (0..accum)
            .map(|k| {
                let first = self.state.examples_seen + (k * global) as u64;
                if world == 1 {
                    return (data.train_batch(first, global), 1.0 / accum as f64);
                }
                // This shard's share of the micro-batch's scored tokens, so that the summed
                // loss is the mean over the whole global micro-batch.
                let examples = data.train_examples(first, global);
                let shard = Batch::collate(&examples[rank * rows..(rank + 1) * rows]);
                let total: usize = examples.iter().map(Example::scored).sum();
                let weight = shard.scored() as f64 / total.max(1) as f64;
                (shard, weight / accum as f64)
            })
            .collect();
        let micro: Vec<(&Batch, f64)> = micro.iter().map(|(b, w)| (b, *w)).collect();
        self.step_weighted(&micro, (accum * global) as u64)
    }

    /// One optimiser step on the given micro-batches (their mean loss), on this trainer alone.
    pub fn step_on(&mut self, batches: &[Batch]) -> Result<StepReport, TrainError> {
        let n = batches.len() as f64;
        let micro: Vec<(&Batch, f64)> = batches.iter().map(|b| (b, 1.0 / n)).collect();
        let examples = batches.iter().map(|b| b.batch as u64).sum();
        self.step_weighted(&micro, examples)
    }

    /// One optimiser step on `Σ_k weight_k · loss(batch_k)`, summed over the replicas;
    /// `examples` rows of data are consumed in all.
    fn step_weighted(
        &mut self,
        micro: &[(&Batch, f64)],
        examples: u64,
    ) -> Result<StepReport, TrainError> {
        let model = self.model.take().expect("model present between steps");
        let result = self.accumulate(&model, micro);
        let (loss, tokens, mut grads) = match result {
            Ok(r) => r,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        let (loss, tokens) = match self.all_reduce(loss, tokens, &mut grads) {
            Ok(r) => r,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        self.state.examples_seen += examples;
        let grad_norm = global_grad_norm(&model, &grads);
        let lr = self.state.schedule.lr(self.state.step);
        self.state.step += 1;
        let skipped = !(loss.is_finite() && grad_norm.is_finite());
        let model = if skipped {
            self.state.skipped_steps += 1;
            model
        } else {
            if let Some(max) = self.config.clip_norm {
                clip_global_norm(&model, &mut grads, grad_norm, max);
            }
            self.optim.step(lr, model, grads)
        };
        self.model = Some(model);
        Ok(StepReport {
            step: self.state.step,
            loss,
            grad_norm,
            lr,
            tokens,
            skipped,
        })
    }

    /// Sums the loss, the token count and the gradients over the replicas (nothing alone).
    #[cfg_attr(not(feature = "collective"), allow(unused_variables))]
    fn all_reduce(
        &self,
        loss: f64,
        tokens: usize,
        grads: &mut GradientsParams,
    ) -> Result<(f64, usize), TrainError> {
        if self.replica.world == 1 {
            return Ok((loss, tokens));
        }
        #[cfg(feature = "collective")]
        {
            let summed = crate::distributed::all_reduce_grads::<B>(
                self.replica,
                std::mem::take(grads),
                &[loss, tokens as f64],
                &self.device,
            )?;
            *grads = summed.0;
            Ok((summed.1[0], summed.1[1] as usize))
        }
        #[cfg(not(feature = "collective"))]
        unreachable!("a replica of several exists only with the `collective` feature")
    }

    /// Forward and backward over the micro-batches: `(Σ weight·loss, tokens, Σ weight·∇loss)`.
    fn accumulate(
        &mut self,
        model: &M,
        micro: &[(&Batch, f64)],
    ) -> Result<(f64, usize, GradientsParams), TrainError> {
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut single: Option<GradientsParams> = None;
        for (batch, weight) in micro {
            let (x, y) = batch.to_tensors::<B>(&self.device);
            let loss = masked_cross_entropy(model.logits(x).map_err(TrainError::Model)?, y);
            loss_sum += weight * loss.clone().into_scalar().elem::<f64>();
            let grads = GradientsParams::from_grads(loss.mul_scalar(*weight).backward(), model);
            if micro.len() == 1 {
                single = Some(grads);
            } else {
                accumulator.accumulate(model, grads);
            }
            tokens += batch.batch * batch.seq_len;
        }
        Ok((
            loss_sum,
            tokens,
            single.unwrap_or_else(|| accumulator.grads()),
        ))
    }

    /// Accuracy per evaluation bucket on `examples` examples each, in batches of `batch`
    /// (sorted by length to limit padding).
    pub fn evaluate(
        &self,
        data: &Dataset,
        examples: usize,
        batch: usize,
    ) -> Result<Vec<BucketResult>, TrainError> {
        evaluate(&self.model().valid(), data, examples, batch, &self.device)
    }

    /// Writes a checkpoint under `root` (see [`checkpoint`]); refuses when a weight is not
    /// finite. `meta` is stored in `state.json` for the caller.
    pub fn save(&self, root: &Path, meta: &serde_json::Value) -> Result<PathBuf, TrainError> {
        let bad = count_non_finite::<B, M>(self.model());
        if bad > 0 {
            return Err(TrainError::NonFiniteWeights {
                step: self.state.step,
                count: bad,
            });
        }
        checkpoint::publish(root, self.state.step, |dir| {
            let rec = Rec::new();
            let record_err = |path: PathBuf, e: burn::record::RecorderError| TrainError::Record {
                path,
                message: e.to_string(),
            };
            let model_path = dir.join("model");
            Recorder::<B>::record(&rec, self.model().clone().into_record(), model_path.clone())
                .map_err(|e| record_err(model_path, e))?;
            let optim_path = dir.join("optim");
            Recorder::<B>::record(&rec, self.optim.to_record(), optim_path.clone())
                .map_err(|e| record_err(optim_path, e))?;
            let state = StateFile::new(self.state.clone(), meta.clone());
            let text = serde_json::to_string_pretty(&state).expect("state serialises");
            checkpoint::write_atomic(&dir.join("state.json"), text.as_bytes())
        })
    }
}

/// Accuracy per evaluation bucket of `model` (see [`Trainer::evaluate`]).
pub fn evaluate<B: Backend, M: LanguageModel<B>>(
    model: &M,
    data: &Dataset,
    examples: usize,
    batch: usize,
    device: &B::Device,
) -> Result<Vec<BucketResult>, TrainError> {
    data.buckets()
        .into_iter()
        .enumerate()
        .map(|(b, bucket)| {
            let mut all: Vec<_> = (0..examples as u64)
                .map(|i| data.eval_example(b, i))
                .collect();
            all.sort_by_key(|e| e.input.len());
            let (mut correct, mut scored, mut loss, mut batches) = (0usize, 0usize, 0.0, 0usize);
            for chunk in all.chunks(batch.max(1)) {
                let (x, y) = Batch::collate(chunk).to_tensors::<B>(device);
                let logits = model.logits(x).map_err(TrainError::Model)?;
                loss += masked_cross_entropy(logits.clone(), y.clone())
                    .into_scalar()
                    .elem::<f64>();
                let (hits, counts) = correct_per_row(logits, y);
                correct += hits.iter().sum::<usize>();
                scored += counts.iter().sum::<usize>();
                batches += 1;
            }
            Ok(BucketResult {
                bucket,
                accuracy: correct as f64 / scored.max(1) as f64,
                loss: loss / batches.max(1) as f64,
                examples,
            })
        })
        .collect()
}

/// Loads the weights of the newest checkpoint under `dir` (see [`checkpoint::latest`]) into
/// `model` (same architecture, any backend) and returns them with the checkpoint's state.
pub fn load_model<B: Backend, M: Module<B>>(
    model: M,
    dir: &Path,
    device: &B::Device,
) -> Result<(M, StateFile), TrainError> {
    let dir = checkpoint::latest(dir)?;
    let state = checkpoint::read_state(&dir)?;
    let path = dir.join("model");
    let record =
        Recorder::<B>::load(&Rec::new(), path.clone(), device).map_err(|e| TrainError::Record {
            path,
            message: e.to_string(),
        })?;
    Ok((model.load_record(record), state))
}
