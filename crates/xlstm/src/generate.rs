//! `xlstm generate`: prompt the model (parallel forward), then one recurrent step per token,
//! printing each token as soon as it is chosen.

use crate::backend::BackendKind;
use crate::sample::Sampler;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use xlstm_train::rng::Rng;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A run's output directory or a checkpoint directory.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// The prompt: bytes for a byte-level model (vocabulary 256), otherwise token ids
    /// separated by spaces.
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to p.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::default())]
    pub backend: BackendKind,
}

pub fn generate(args: GenerateArgs) -> Result<(), String> {
    if args.temperature < 0.0 || !args.temperature.is_finite() {
        return Err(format!(
            "--temperature must be >= 0, got {}",
            args.temperature
        ));
    }
    if let Some(p) = args.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!("--top-p must be in (0, 1], got {p}"));
        }
    }
    with_backend!(args.backend, |device, AB, IB| run::<IB>(&args, device))
}

fn run<B: Backend + xlstm_kernels::XlstmBackend>(
    args: &GenerateArgs,
    device: B::Device,
) -> Result<(), String> {
    let (model, _, cfg) = crate::train_cmd::load_checkpoint::<B>(&args.checkpoint, &device)?;
    let bytes = cfg.vocab_size == 256;
    let prompt: Vec<i64> = if bytes {
        args.prompt.bytes().map(|b| b as i64).collect()
    } else {
        args.prompt
            .split_whitespace()
            .map(|t| {
                t.parse::<i64>()
                    .ok()
                    .filter(|&x| x >= 0 && (x as usize) < cfg.vocab_size)
                    .ok_or_else(|| {
                        format!("--prompt: '{t}' is not a token id below {}", cfg.vocab_size)
                    })
            })
            .collect::<Result<_, _>>()?
    };
    if prompt.is_empty() {
        return Err("--prompt is empty".into());
    }
    let mut sampler = Sampler {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        rng: Rng::new(args.seed),
    };
    let ids =
        Tensor::<B, 2, Int>::from_data(TensorData::new(prompt.clone(), [1, prompt.len()]), &device);
    let (logits, mut state) = model.forward(ids, None, None).map_err(|e| e.to_string())?;
    let s = prompt.len();
    let mut last: Vec<f32> = logits
        .slice([0..1, s - 1..s])
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| format!("{e:?}"))?;
    let mut out = std::io::stdout().lock();
    let emit = |out: &mut std::io::StdoutLock, t: usize| {
        let _ = if bytes {
            out.write_all(&[t as u8])
        } else {
            write!(out, "{t} ")
        };
        let _ = out.flush();
    };
    if bytes {
        let _ = out.write_all(args.prompt.as_bytes());
    }
    for _ in 0..args.tokens {
        let t = sampler.pick(&last);
        emit(&mut out, t);
        let id = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![t as i64], [1]), &device);
        let (logits, next) = model.step(id, Some(state)).map_err(|e| e.to_string())?;
        state = next;
        last = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| format!("{e:?}"))?;
    }
    let _ = writeln!(out);
    Ok(())
}
