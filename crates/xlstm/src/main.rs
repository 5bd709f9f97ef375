//! `xlstm`: train, evaluate, generate and benchmark xLSTM models.
//!
//! `xlstm train` with no arguments trains the embedded default (parity, `xLSTM[0:1]`) and
//! prints accuracy per length bucket. Errors are one line on stderr and a non-zero exit.

mod allocator;
#[macro_use]
mod backend;
mod bench;
mod generate;
mod model_args;
mod plot;
#[cfg(feature = "distributed")]
mod replicas;
mod sample;
mod train_cmd;

use clap::{Parser, Subcommand};

/// xLSTM (Beck et al. 2024) on burn: train, evaluate, generate, benchmark.
#[derive(Parser, Debug)]
#[command(name = "xlstm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model (no arguments: parity with xLSTM[0:1], a few minutes on a CPU).
    Train(train_cmd::TrainArgs),
    /// Evaluate a checkpoint on its task: accuracy per length bucket.
    Eval(train_cmd::EvalArgs),
    /// Generate tokens from a checkpoint, streaming them as they come.
    Generate(generate::GenerateArgs),
    /// Measure training or generation throughput (last line: JSON).
    Bench(bench::BenchArgs),
}

fn main() {
    allocator::tune_for_tensors();
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal failure: {msg}{at}");
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train_cmd::train(a),
        Command::Eval(a) => train_cmd::eval(a),
        Command::Generate(a) => generate::generate(a),
        Command::Bench(a) => bench::bench(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
