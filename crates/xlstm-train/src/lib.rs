//! Training xLSTM language models with burn: the paper's formal-language tasks, MQAR and
//! byte-level text ([`data`]); AdamW with the official weight-decay groups ([`optim`]);
//! linear warmup + cosine decay ([`schedule`]); global-norm clipping ([`clip`]); the loop with
//! gradient accumulation, NaN/Inf skipping and evaluation per length bucket ([`trainer`]);
//! atomic, exactly resumable checkpoints ([`checkpoint`]); metrics files ([`metrics`]);
//! data-parallel replicas over several devices (`distributed`, feature `collective`).
//!
//! The loop is generic over the backend and over any [`LanguageModel`].

pub mod checkpoint;
pub mod clip;
pub mod data;
#[cfg(feature = "collective")]
pub mod distributed;
pub mod error;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod rng;
pub mod schedule;
pub mod trainer;

pub use data::{Batch, Bucket, Dataset, FormalTask, MqarConfig, TaskConfig};
pub use error::TrainError;
pub use model::LanguageModel;
pub use optim::AdamWSettings;
pub use schedule::WarmupCosine;
pub use trainer::{evaluate, load_model, BucketResult, Replica, StepReport, TrainConfig, Trainer};
