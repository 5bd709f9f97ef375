//! Training and evaluation data: the paper's formal languages, MQAR, and byte-level text.
//!
//! Every example is a pure function of `(seed, stream, index)` (see [`crate::rng`]): training
//! batch `k` of size `b` holds examples `k b .. (k + 1) b` of the training stream, and each
//! evaluation bucket is its own stream. Targets are `-1` where no loss is taken.

pub mod formal;
pub mod mqar;
pub mod text;

pub use formal::FormalTask;
pub use mqar::MqarConfig;
pub use text::ByteText;

use crate::rng::Rng;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// One example: input token ids and per-position targets (`-1` = no loss).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Input token ids.
    pub input: Vec<u32>,
    /// Target token ids, `-1` where the position is not scored; same length as `input`.
    pub target: Vec<i64>,
    /// The task's length of the example (formal languages: question + answer).
    pub length: usize,
}

impl Example {
    /// Scored positions (targets `≥ 0`).
    pub fn scored(&self) -> usize {
        self.target.iter().filter(|&&t| t >= 0).count()
    }
}

/// A batch of examples, padded on the right (inputs with 0, targets with -1).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Input ids, row-major `[batch, seq_len]`.
    pub inputs: Vec<i64>,
    /// Targets, row-major `[batch, seq_len]`, `-1` = not scored.
    pub targets: Vec<i64>,
    /// Rows.
    pub batch: usize,
    /// Columns (the longest input of the batch).
    pub seq_len: usize,
}

impl Batch {
    /// Pads and stacks examples.
    pub fn collate(examples: &[Example]) -> Self {
        let seq_len = examples.iter().map(|e| e.input.len()).max().unwrap_or(0);
        let mut inputs = vec![0i64; examples.len() * seq_len];
        let mut targets = vec![-1i64; examples.len() * seq_len];
        for (r, e) in examples.iter().enumerate() {
            for (c, (&x, &t)) in e.input.iter().zip(&e.target).enumerate() {
                inputs[r * seq_len + c] = x as i64;
                targets[r * seq_len + c] = t;
            }
        }
        Self {
            inputs,
            targets,
            batch: examples.len(),
            seq_len,
        }
    }

    /// Number of scored positions.
    pub fn scored(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }

    /// `(inputs, targets)` as `[B, S]` int tensors.
    pub fn to_tensors<B: Backend>(
        &self,
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
        let shape = [self.batch, self.seq_len];
        let inputs = Tensor::from_data(TensorData::new(self.inputs.clone(), shape), device);
        let targets = Tensor::from_data(TensorData::new(self.targets.clone(), shape), device);
        (inputs, targets)
    }
}

/// What to train on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskConfig {
    /// A formal-language task: train on lengths `train_min..=train_max`, evaluate on buckets
    /// up to `eval_max` (paper: 3-40 and 40-256).
    Formal {
        /// The task.
        task: FormalTask,
        /// Shortest training length (paper: 3).
        train_min: usize,
        /// Longest training length (paper: 40).
        train_max: usize,
        /// Longest evaluation length (paper: 256).
        eval_max: usize,
    },
    /// Multi-query associative recall.
    Mqar(MqarConfig),
    /// Byte-level text from a file.
    Text {
        /// The file.
        path: std::path::PathBuf,
        /// Input tokens per window.
        seq_len: usize,
    },
}

impl TaskConfig {
    /// The paper's setting of a formal-language task (train 3-40, evaluate up to 256).
    pub fn formal(task: FormalTask) -> Self {
        TaskConfig::Formal {
            task,
            train_min: 3,
            train_max: 40,
            eval_max: 256,
        }
    }
}

/// A range of example lengths evaluated together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Display name, e.g. `"41-64"`.
    pub name: String,
    /// Shortest length.
    pub min_len: usize,
    /// Longest length.
    pub max_len: usize,
    /// Whether these lengths were seen in training.
    pub in_train: bool,
}

/// A task made concrete: generates training batches and evaluation buckets.
#[derive(Clone, Debug)]
pub struct Dataset {
    config: TaskConfig,
    seed: u64,
    text: Option<ByteText>,
}

const TRAIN_STREAM: u64 = 0;

impl Dataset {
    /// Checks `config` (and reads the text file) and seeds the data streams with `seed`.
    pub fn new(config: TaskConfig, seed: u64) -> Result<Self, String> {
        let text = match &config {
            TaskConfig::Formal {
                train_min,
                train_max,
                eval_max,
                ..
            } => {
                if !(3 <= *train_min && train_min <= train_max && train_max <= eval_max) {
                    return Err(format!(
                        "formal task lengths need 3 <= train_min ({train_min}) <= train_max ({train_max}) <= eval_max ({eval_max})"
                    ));
                }
                None
            }
            TaskConfig::Mqar(m) => {
                m.validate()?;
                None
            }
            TaskConfig::Text { path, seq_len } => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("text: cannot read {}: {e}", path.display()))?;
                Some(ByteText::new(bytes, *seq_len)?)
            }
        };
        Ok(Self { config, seed, text })
    }

    /// The task.
    pub fn config(&self) -> &TaskConfig {
        &self.config
    }

    /// Vocabulary size the model needs.
    pub fn vocab_size(&self) -> usize {
        match &self.config {
            TaskConfig::Formal { task, .. } => task.vocab_size(),
            TaskConfig::Mqar(m) => m.vocab_size,
            TaskConfig::Text { .. } => 256,
        }
    }

    /// Example `index` of the training stream.
    pub fn train_example(&self, index: u64) -> Example {
        let mut rng = Rng::for_example(self.seed, TRAIN_STREAM, index);
        match &self.config {
            TaskConfig::Formal {
                task,
                train_min,
                train_max,
                ..
            } => {
                let len = task.sample_length(*train_min, *train_max, &mut rng);
                task.example(len, &mut rng)
            }
            TaskConfig::Mqar(m) => m.example(&mut rng),
            TaskConfig::Text { .. } => self
                .text
                .as_ref()
                .expect("text loaded")
                .example(false, &mut rng),
        }
    }

    /// Training examples `first .. first + batch`.
    pub fn train_batch(&self, first: u64, batch: usize) -> Batch {
        Batch::collate(&self.train_examples(first, batch))
    }

    /// Training examples `first .. first + n`.
    pub fn train_examples(&self, first: u64, n: usize) -> Vec<Example> {
        (first..first + n as u64)
            .map(|i| self.train_example(i))
            .collect()
    }

    /// The evaluation buckets: formal tasks split the training range and the extrapolation
    /// range (`train_max+1..=eval_max`, at powers of two: 41-64, 65-128, 129-256);
    /// MQAR and text have one bucket.
    pub fn buckets(&self) -> Vec<Bucket> {
        match &self.config {
            TaskConfig::Formal {
                train_min,
                train_max,
                eval_max,
                ..
            } => {
                let mut out = vec![Bucket {
                    name: format!("{train_min}-{train_max}"),
                    min_len: *train_min,
                    max_len: *train_max,
                    in_train: true,
                }];
                let mut lo = train_max + 1;
                while lo <= *eval_max {
                    let hi = lo.next_power_of_two().min(*eval_max);
                    out.push(Bucket {
                        name: format!("{lo}-{hi}"),
                        min_len: lo,
                        max_len: hi,
                        in_train: false,
                    });
                    lo = hi + 1;
                }
                out
            }
            TaskConfig::Mqar(m) => vec![Bucket {
                name: format!("kv{}", m.kv_pairs),
                min_len: m.seq_len,
                max_len: m.seq_len,
                in_train: true,
            }],
            TaskConfig::Text { seq_len, .. } => vec![Bucket {
                name: "held-out".into(),
                min_len: *seq_len,
                max_len: *seq_len,
                in_train: false,
            }],
        }
    }

    /// Example `index` of evaluation bucket `bucket` (its own stream, disjoint from training).
    pub fn eval_example(&self, bucket: usize, index: u64) -> Example {
        let mut rng = Rng::for_example(self.seed, 1 + bucket as u64, index);
        match &self.config {
            TaskConfig::Formal { task, .. } => {
                let b = &self.buckets()[bucket];
                let len = task.sample_length(b.min_len, b.max_len, &mut rng);
                task.example(len, &mut rng)
            }
            TaskConfig::Mqar(m) => m.example(&mut rng),
            TaskConfig::Text { .. } => self
                .text
                .as_ref()
                .expect("text loaded")
                .example(true, &mut rng),
        }
    }

    /// Accuracy of always answering the most common class (formal tasks: `1 / classes`).
    pub fn chance_accuracy(&self) -> f64 {
        match &self.config {
            TaskConfig::Formal { task, .. } => 1.0 / task.answer_classes() as f64,
            TaskConfig::Mqar(m) => 1.0 / (m.vocab_size - m.vocab_size / 2) as f64,
            TaskConfig::Text { .. } => 1.0 / 256.0,
        }
    }
}
