//! The training loop: gradient accumulation, global-norm clipping, AdamW groups, the
//! schedule, NaN/Inf skipping, evaluation per length bucket, and exact resumption.

use crate::checkpoint::{self, StateFile, TrainState};
use crate::clip::{clip_global_norm, global_grad_norm};
use crate::data::{Batch, Bucket, Dataset};
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
        })
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
        let StateFile { state, meta } = checkpoint::read_state(&dir)?;
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

    /// One optimiser step on the next `grad_accum` micro-batches of `data`.
    pub fn step(&mut self, data: &Dataset) -> Result<StepReport, TrainError> {
        let batches: Vec<Batch> = (0..self.config.grad_accum)
            .map(|k| {
                let first = self.state.examples_seen + (k * self.config.batch_size) as u64;
                data.train_batch(first, self.config.batch_size)
            })
            .collect();
        self.step_on(&batches)
    }

    /// One optimiser step on the given micro-batches (their mean loss).
    pub fn step_on(&mut self, batches: &[Batch]) -> Result<StepReport, TrainError> {
        let model = self.model.take().expect("model present between steps");
        let result = self.accumulate(&model, batches);
        let (loss, tokens, mut grads) = match result {
            Ok(r) => r,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
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

    /// Forward and backward over the micro-batches: `(mean loss, tokens, summed gradients
    /// of the loss divided by the number of micro-batches)`.
    fn accumulate(
        &mut self,
        model: &M,
        batches: &[Batch],
    ) -> Result<(f64, usize, GradientsParams), TrainError> {
        let n = batches.len() as f64;
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut single: Option<GradientsParams> = None;
        for batch in batches {
            let (x, y) = batch.to_tensors::<B>(&self.device);
            let loss = masked_cross_entropy(model.logits(x).map_err(TrainError::Model)?, y);
            loss_sum += loss.clone().into_scalar().elem::<f64>();
            let grads = GradientsParams::from_grads(loss.div_scalar(n).backward(), model);
            if batches.len() == 1 {
                single = Some(grads);
            } else {
                accumulator.accumulate(model, grads);
            }
            tokens += batch.batch * batch.seq_len;
            self.state.examples_seen += batch.batch as u64;
        }
        Ok((
            loss_sum / n,
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
            let state = StateFile {
                state: self.state.clone(),
                meta: meta.clone(),
            };
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
