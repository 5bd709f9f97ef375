//! `xlstm train` and `xlstm eval`.

use crate::backend::{BackendKind, DeviceIndex};
use crate::model_args::{paper_name, Defaults, ModelArgs};
use burn::tensor::backend::Backend;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;
use xlstm_blocks::XlstmLmConfig;
use xlstm_train::metrics::{Event, MetricsWriter};
use xlstm_train::{
    AdamWSettings, BucketResult, Dataset, FormalTask, MqarConfig, TaskConfig, TrainConfig,
    TrainError, Trainer,
};

/// The task to train on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TaskKind {
    Parity,
    EvenPairs,
    CycleNavigation,
    ModArithmetic,
    ModArithmeticBrackets,
    Mqar,
    Text,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Task.
    #[arg(long, value_enum, default_value_t = TaskKind::Parity)]
    pub task: TaskKind,
    /// Text file for `--task text` (byte-level).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Sequence length for `--task text` and `--task mqar`.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Key-value pairs for `--task mqar`.
    #[arg(long, default_value_t = 8)]
    pub kv_pairs: usize,
    /// Longest training length of a formal task (paper: 40).
    #[arg(long, default_value_t = 40)]
    pub train_max: usize,
    /// Longest evaluation length of a formal task (paper: 256).
    #[arg(long, default_value_t = 256)]
    pub eval_max: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::default())]
    pub backend: BackendKind,
    /// Optimiser steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Warmup steps (default: 10 % of the steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Weight decay of the decayed group (official: 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Seed of initialisation and data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory (checkpoints, metrics.jsonl/csv, metrics.png, results.json).
    #[arg(long, default_value = "runs/xlstm")]
    pub out: PathBuf,
    /// Continue from the newest checkpoint in `--out` (same settings; `--steps` may grow).
    #[arg(long)]
    pub resume: bool,
    /// Evaluate every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Evaluation examples per length bucket.
    #[arg(long, default_value_t = 128)]
    pub eval_examples: usize,
    /// Checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: usize,
    /// Data-parallel training on the backend's first N devices (`--batch` is the global
    /// batch, split evenly; needs the `distributed` feature, on by default with cuda/wgpu).
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run's output directory or a checkpoint directory.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Evaluation examples per length bucket.
    #[arg(long, default_value_t = 256)]
    pub examples: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::default())]
    pub backend: BackendKind,
}

impl TrainArgs {
    fn task_config(&self) -> Result<TaskConfig, String> {
        let formal = |task| TaskConfig::Formal {
            task,
            train_min: 3,
            train_max: self.train_max,
            eval_max: self.eval_max,
        };
        Ok(match self.task {
            TaskKind::Parity => formal(FormalTask::Parity),
            TaskKind::EvenPairs => formal(FormalTask::EvenPairs),
            TaskKind::CycleNavigation => formal(FormalTask::CycleNavigation),
            TaskKind::ModArithmetic => formal(FormalTask::ModArithmetic),
            TaskKind::ModArithmeticBrackets => formal(FormalTask::ModArithmeticBrackets),
            TaskKind::Mqar => TaskConfig::Mqar(MqarConfig {
                vocab_size: self.model.vocab.unwrap_or(256),
                seq_len: self.seq_len,
                kv_pairs: self.kv_pairs,
                power_a: 0.01,
            }),
            TaskKind::Text => TaskConfig::Text {
                path: self.text.clone().ok_or("--task text needs --text FILE")?,
                seq_len: self.seq_len,
            },
        })
    }

    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            steps: self.steps,
            batch_size: self.batch,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup_steps: self.warmup.unwrap_or(self.steps / 10),
            lr_decay_factor: 0.001,
            clip_norm: (self.clip > 0.0).then_some(self.clip),
            adamw: AdamWSettings {
                weight_decay: self.weight_decay,
                ..AdamWSettings::default()
            },
            seed: self.seed,
        }
    }
}

pub fn train(args: TrainArgs) -> Result<(), String> {
    let task = args.task_config()?;
    let data = Dataset::new(task.clone(), args.seed)?;
    let model_cfg = args.model.resolve(&Defaults {
        vocab: data.vocab_size(),
        blocks: 2,
        slstm_at: "all",
        embedding_dim: 64,
        heads: 1,
    })?;
    if model_cfg.vocab_size < data.vocab_size() {
        return Err(format!(
            "--vocab {} is smaller than the task's vocabulary {}",
            model_cfg.vocab_size,
            data.vocab_size()
        ));
    }
    let config = args.train_config();
    if args.devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    if args.devices > 1 {
        if !cfg!(feature = "distributed") {
            return Err(format!(
                "--devices {}: this build has no data-parallel training (cargo feature `distributed`)",
                args.devices
            ));
        }
        if !args.batch.is_multiple_of(args.devices) {
            return Err(format!(
                "--batch {} must be a multiple of --devices {}",
                args.batch, args.devices
            ));
        }
    }
    with_backend!(args.backend, |device, AB, IB| run_training::<AB>(
        &args, &data, &model_cfg, config, device
    ))
}

fn run_training<AB>(
    args: &TrainArgs,
    data: &Dataset,
    model_cfg: &XlstmLmConfig,
    config: TrainConfig,
    device: AB::Device,
) -> Result<(), String>
where
    AB: burn::tensor::backend::AutodiffBackend + xlstm_kernels::XlstmBackend,
    AB::InnerBackend: xlstm_kernels::XlstmBackend,
    AB::Device: DeviceIndex,
{
    let e = |e: TrainError| e.to_string();
    let ckpt_dir = args.out.join("checkpoints");
    let device = match args.devices {
        1 => device,
        _ => AB::Device::nth(0),
    };
    AB::seed(&device, args.seed);
    let model = model_cfg
        .init::<AB>(&device)
        .map_err(|e| format!("model config: {e}"))?;
    let meta = json!({"model": model_cfg, "task": data.config(), "train": config});
    #[cfg(feature = "distributed")]
    let followers = if args.devices > 1 {
        let plan = crate::replicas::Plan {
            world: args.devices,
            config: config.clone(),
            data: data.clone(),
            resume: args.resume.then(|| ckpt_dir.clone()),
        };
        crate::replicas::check_devices::<AB>(args.devices)?;
        // Registration waits for every replica: start the followers first.
        let followers = crate::replicas::spawn_followers::<AB>(plan, &model);
        xlstm_train::distributed::join::<AB>(0, args.devices, device.clone()).map_err(e)?;
        followers
    } else {
        Vec::new()
    };
    let trainer = if args.resume {
        let (t, stored) = Trainer::resume(model, config, &ckpt_dir, device.clone()).map_err(e)?;
        if stored["model"] != meta["model"] || stored["task"] != meta["task"] {
            return Err(format!(
                "--resume: the checkpoint in {} was made for another model or task (pass the same settings)",
                ckpt_dir.display()
            ));
        }
        t
    } else {
        Trainer::new(model, config, device.clone()).map_err(e)?
    };
    #[cfg(feature = "distributed")]
    let trainer = trainer
        .into_replica(xlstm_train::Replica {
            rank: 0,
            world: args.devices,
        })
        .map_err(e)?;
    let mut trainer = trainer;
    let mut metrics = MetricsWriter::create(&args.out, args.resume).map_err(e)?;
    let io = |err: std::io::Error| format!("metrics in {}: {err}", args.out.display());
    let name = paper_name(model_cfg);
    eprintln!(
        "{name} ({} blocks, width {}, sLSTM at {:?}) on {}: {} steps x {} examples, lr {}, {:?} backend -> {}",
        model_cfg.num_blocks,
        model_cfg.embedding_dim,
        model_cfg.slstm_at,
        task_name(data.config()),
        args.steps,
        args.batch * args.grad_accum,
        args.lr,
        args.backend,
        args.out.display()
    );
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_position(trainer.state().step as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} step {pos}/{len}  {msg}  [{elapsed_precise}, ETA {eta_precise}]",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let mut last_eval: Vec<BucketResult> = Vec::new();
    while !trainer.finished() {
        let t0 = Instant::now();
        let report = trainer.step(data).map_err(e)?;
        let tokens_per_s = report.tokens as f64 / t0.elapsed().as_secs_f64();
        if report.skipped {
            say(
                &bar,
                format!(
                    "step {}: loss {} / gradient norm {} not finite; update skipped",
                    report.step, report.loss, report.grad_norm
                ),
            );
        }
        bar.set_message(format!(
            "loss {:.4}  {:.0} tok/s",
            report.loss, tokens_per_s
        ));
        bar.inc(1);
        let step = report.step;
        metrics
            .log(Event::Train {
                report,
                tokens_per_s,
            })
            .map_err(io)?;
        let last = trainer.finished();
        if step % args.eval_every.max(1) == 0 || last {
            bar.set_message("evaluating");
            last_eval = trainer
                .evaluate(data, args.eval_examples, args.batch.max(16))
                .map_err(e)?;
            let line: Vec<String> = last_eval
                .iter()
                .map(|r| format!("{} {:.3}", r.bucket.name, r.accuracy))
                .collect();
            say(&bar, format!("step {step}: accuracy {}", line.join(", ")));
            for result in &last_eval {
                metrics
                    .log(Event::Eval {
                        step,
                        result: result.clone(),
                    })
                    .map_err(io)?;
            }
            metrics.flush().map_err(io)?;
        }
        if step % args.checkpoint_every.max(1) == 0 || last {
            match trainer.save(&ckpt_dir, &meta) {
                Ok(_) => {}
                Err(err @ TrainError::NonFiniteWeights { .. }) => say(&bar, err.to_string()),
                Err(err) => return Err(err.to_string()),
            }
        }
    }
    bar.finish_and_clear();
    #[cfg(feature = "distributed")]
    if args.devices > 1 {
        xlstm_train::distributed::leave::<AB>(0).map_err(e)?;
        for follower in followers {
            follower
                .join()
                .map_err(|_| "a data-parallel replica panicked".to_string())?;
        }
    }
    metrics.flush().map_err(io)?;
    let elapsed = started.elapsed();
    let plot_path = args.out.join("metrics.png");
    crate::plot::write(&plot_path, metrics.events())?;
    let results = json!({
        "model": name, "model_config": model_cfg, "task": data.config(),
        "steps": trainer.state().step, "skipped_steps": trainer.state().skipped_steps,
        "train_seconds": elapsed.as_secs_f64(), "accuracy": last_eval,
    });
    xlstm_train::checkpoint::write_atomic(
        &args.out.join("results.json"),
        serde_json::to_string_pretty(&results)
            .expect("json")
            .as_bytes(),
    )
    .map_err(e)?;
    println!(
        "\n{name} on {} after {} steps ({:.0} s; {} skipped)",
        task_name(data.config()),
        trainer.state().step,
        elapsed.as_secs_f64(),
        trainer.state().skipped_steps
    );
    print_table(&last_eval, data.chance_accuracy());
    println!(
        "\nwrote {}/metrics.jsonl, metrics.csv, metrics.png, results.json, checkpoints/",
        args.out.display()
    );
    Ok(())
}

/// A line above the progress bar, or on stderr when the bar is hidden (not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn task_name(task: &TaskConfig) -> String {
    match task {
        TaskConfig::Formal { task, .. } => format!("{task:?}"),
        TaskConfig::Mqar(m) => format!(
            "MQAR ({} key-value pairs, {} tokens)",
            m.kv_pairs, m.seq_len
        ),
        TaskConfig::Text { path, .. } => format!("bytes of {}", path.display()),
    }
}

/// The accuracy table: one row per length bucket.
pub fn print_table(results: &[BucketResult], chance: f64) {
    println!("{:<12} {:<10} {:>9}", "lengths", "split", "accuracy");
    for r in results {
        println!(
            "{:<12} {:<10} {:>9.3}",
            r.bucket.name,
            if r.bucket.in_train {
                "train"
            } else {
                "extrapol."
            },
            r.accuracy
        );
    }
    println!(
        "(chance {chance:.3}; {} examples per bucket)",
        results.first().map_or(0, |r| r.examples)
    );
}

pub fn eval(args: EvalArgs) -> Result<(), String> {
    with_backend!(args.backend, |device, AB, IB| run_eval::<IB>(&args, device))
}

fn run_eval<B: Backend + xlstm_kernels::XlstmBackend>(
    args: &EvalArgs,
    device: B::Device,
) -> Result<(), String> {
    let (model, meta, _) = load_checkpoint::<B>(&args.checkpoint, &device)?;
    let task: TaskConfig = serde_json::from_value(meta["task"].clone())
        .map_err(|e| format!("checkpoint task: {e}"))?;
    let seed = meta["train"]["seed"].as_u64().unwrap_or(0);
    let data = Dataset::new(task, seed)?;
    let results = xlstm_train::evaluate(&model, &data, args.examples, args.batch, &device)
        .map_err(|e| e.to_string())?;
    print_table(&results, data.chance_accuracy());
    Ok(())
}

/// The model of a checkpoint (a run directory or a `step-*` directory) and its metadata.
pub fn load_checkpoint<B: Backend + xlstm_kernels::XlstmBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<
    (
        xlstm_blocks::lm::XlstmLm<B>,
        serde_json::Value,
        XlstmLmConfig,
    ),
    String,
> {
    let dir = xlstm_train::checkpoint::latest(dir).map_err(|e| e.to_string())?;
    let state = xlstm_train::checkpoint::read_state(&dir).map_err(|e| e.to_string())?;
    let cfg: XlstmLmConfig = serde_json::from_value(state.meta["model"].clone())
        .map_err(|e| format!("checkpoint {}: no model config: {e}", dir.display()))?;
    let model = cfg
        .init::<B>(device)
        .map_err(|e| format!("model config: {e}"))?;
    let (model, state) = xlstm_train::load_model(model, &dir, device).map_err(|e| e.to_string())?;
    Ok((model, state.meta, cfg))
}
