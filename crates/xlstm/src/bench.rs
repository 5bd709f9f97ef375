//! `xlstm bench train|generate`: throughput of a training step (AdamW, batch × seq tokens)
//! and of recurrent generation, on random tokens. The last line is JSON.

use crate::backend::BackendKind;
use crate::model_args::{paper_name, Defaults, ModelArgs};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Int, Tensor, TensorData};
use clap::{Args, ValueEnum};
use std::time::Instant;
use xlstm_train::data::{Batch, Example};
use xlstm_train::rng::Rng;
use xlstm_train::{AdamWSettings, TrainConfig, Trainer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchKind {
    /// Forward, backward and AdamW step on `--batch` × `--seq-len` tokens.
    Train,
    /// `--tokens` recurrent steps (greedy) at batch `--batch`.
    Generate,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub what: BenchKind,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sequences per batch (default: 8 for train, 1 for generate).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per sequence (train).
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Tokens to generate (generate).
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Timed training steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::default())]
    pub backend: BackendKind,
}

pub fn bench(args: BenchArgs) -> Result<(), String> {
    let cfg = args.model.resolve(&Defaults {
        vocab: 256,
        blocks: 4,
        slstm_at: "1",
        embedding_dim: 128,
        heads: 4,
    })?;
    if args.seq_len == 0 || args.tokens == 0 || args.steps == 0 || args.batch == Some(0) {
        return Err("--seq-len, --tokens, --steps and --batch must be at least 1".into());
    }
    eprintln!(
        "{} ({} blocks, width {}, sLSTM at {:?}, {} heads, vocab {}) on {:?}",
        paper_name(&cfg),
        cfg.num_blocks,
        cfg.embedding_dim,
        cfg.slstm_at,
        cfg.mlstm.num_heads,
        cfg.vocab_size,
        args.backend
    );
    with_backend!(args.backend, |device, AB, IB| match args.what {
        BenchKind::Train => train::<AB>(&args, &cfg, device),
        BenchKind::Generate => generate::<IB>(&args, &cfg, device),
    })
}

fn train<AB>(
    args: &BenchArgs,
    cfg: &xlstm_blocks::XlstmLmConfig,
    device: AB::Device,
) -> Result<(), String>
where
    AB: AutodiffBackend + xlstm_kernels::XlstmBackend,
    AB::InnerBackend: xlstm_kernels::XlstmBackend,
{
    let (b, s, v) = (args.batch.unwrap_or(8), args.seq_len, cfg.vocab_size);
    AB::seed(&device, 0);
    let model = cfg.init::<AB>(&device).map_err(|e| e.to_string())?;
    let config = TrainConfig {
        steps: args.steps + 1,
        batch_size: b,
        grad_accum: 1,
        lr: 1e-3,
        warmup_steps: 0,
        lr_decay_factor: 1.0,
        clip_norm: None,
        adamw: AdamWSettings::default(),
        seed: 0,
    };
    let mut trainer = Trainer::new(model, config, device).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(0);
    let examples: Vec<Example> = (0..b)
        .map(|_| {
            let seq: Vec<u32> = (0..=s).map(|_| rng.below(v) as u32).collect();
            Example {
                input: seq[..s].to_vec(),
                target: seq[1..].iter().map(|&t| t as i64).collect(),
                length: s,
            }
        })
        .collect();
    let batch = Batch::collate(&examples);
    trainer
        .step_on(std::slice::from_ref(&batch))
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    for _ in 0..args.steps {
        trainer
            .step_on(std::slice::from_ref(&batch))
            .map_err(|e| e.to_string())?;
    }
    let dt = t.elapsed().as_secs_f64() / args.steps as f64;
    eprintln!(
        "{:.1} ms per step (batch {b} x {s} tokens, mean of {})",
        dt * 1e3,
        args.steps
    );
    println!("{{\"train_tokens_per_s\": {:.1}}}", (b * s) as f64 / dt);
    Ok(())
}

fn generate<B: Backend + xlstm_kernels::XlstmBackend>(
    args: &BenchArgs,
    cfg: &xlstm_blocks::XlstmLmConfig,
    device: B::Device,
) -> Result<(), String> {
    let b = args.batch.unwrap_or(1);
    B::seed(&device, 0);
    let model = cfg.init::<B>(&device).map_err(|e| e.to_string())?;
    let mut ids = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64; b], [b]), &device);
    let mut state = None;
    let step = |ids: Tensor<B, 1, Int>, state: Option<_>| {
        let (logits, state) = model.step(ids, state).map_err(|e| e.to_string())?;
        // Greedy choice, read back to the host as a generator must.
        let next: Vec<i64> = logits
            .argmax(1)
            .reshape([b])
            .into_data()
            .convert::<i64>()
            .to_vec()
            .map_err(|e| format!("{e:?}"))?;
        Ok::<_, String>((
            Tensor::<B, 1, Int>::from_data(TensorData::new(next, [b]), &device),
            state,
        ))
    };
    for _ in 0..8 {
        (ids, state) = step(ids, state).map(|(i, s)| (i, Some(s)))?;
    }
    let t = Instant::now();
    for _ in 0..args.tokens {
        (ids, state) = step(ids, state).map(|(i, s)| (i, Some(s)))?;
    }
    let dt = t.elapsed().as_secs_f64();
    eprintln!(
        "{:.3} ms per step at batch {b}",
        dt * 1e3 / args.tokens as f64
    );
    println!(
        "{{\"generate_tokens_per_s\": {:.1}}}",
        (b * args.tokens) as f64 / dt
    );
    Ok(())
}
