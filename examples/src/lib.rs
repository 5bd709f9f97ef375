//! Runnable examples: see `cargo run --release -p xlstm-examples --example NAME`.
