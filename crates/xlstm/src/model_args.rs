//! The model flags shared by `train` and `bench`, and the paper's `xLSTM[a:b]` naming.

use clap::Args;
use std::path::PathBuf;
use xlstm_blocks::XlstmLmConfig;

/// Model settings: a JSON config file (`XlstmLmConfig`), overridden by flags.
#[derive(Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// JSON file with an `XlstmLmConfig` (flags below override its fields).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Number of blocks.
    #[arg(long)]
    pub blocks: Option<usize>,
    /// Indices of the sLSTM blocks, comma-separated (`none` for an mLSTM-only model,
    /// `all` for sLSTM-only).
    #[arg(long, value_name = "LIST")]
    pub slstm_at: Option<String>,
    /// Embedding (model) width.
    #[arg(long)]
    pub embedding_dim: Option<usize>,
    /// Heads of the mLSTM and sLSTM layers.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Vocabulary size (default: the task's).
    #[arg(long)]
    pub vocab: Option<usize>,
}

/// Defaults when neither a file nor a flag says otherwise (each command sets its own; `train`:
/// 2 blocks, width 64, one head, both blocks sLSTM: `xLSTM[0:1]`).
pub struct Defaults {
    pub vocab: usize,
    pub blocks: usize,
    pub slstm_at: &'static str,
    pub embedding_dim: usize,
    pub heads: usize,
}

impl ModelArgs {
    /// The model config these flags describe.
    pub fn resolve(&self, d: &Defaults) -> Result<XlstmLmConfig, String> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--config {}: {e}", path.display()))?;
                serde_json::from_str::<XlstmLmConfig>(&text).map_err(|e| {
                    format!("--config {}: not an XlstmLmConfig: {e}", path.display())
                })?
            }
            None => {
                let mut c = XlstmLmConfig::new(d.vocab, d.embedding_dim, d.blocks);
                c.slstm_at = parse_slstm_at(d.slstm_at, d.blocks)?;
                c.mlstm.num_heads = d.heads;
                c.slstm.num_heads = d.heads;
                c
            }
        };
        if let Some(v) = self.vocab {
            cfg.vocab_size = v;
        }
        if let Some(b) = self.blocks {
            cfg.num_blocks = b;
        }
        if let Some(e) = self.embedding_dim {
            cfg.embedding_dim = e;
        }
        if let Some(h) = self.heads {
            cfg.mlstm.num_heads = h;
            cfg.slstm.num_heads = h;
        }
        if let Some(s) = &self.slstm_at {
            cfg.slstm_at = parse_slstm_at(s, cfg.num_blocks)?;
        } else if self.config.is_none() && self.blocks.is_some() {
            cfg.slstm_at = parse_slstm_at(d.slstm_at, cfg.num_blocks)?;
        }
        cfg.validate().map_err(|e| format!("model config: {e}"))?;
        Ok(cfg)
    }
}

/// `"1,3"`, `"none"` or `"all"` → block indices.
pub fn parse_slstm_at(s: &str, blocks: usize) -> Result<Vec<usize>, String> {
    match s.trim() {
        "" | "none" => Ok(Vec::new()),
        "all" => Ok((0..blocks).collect()),
        list => list
            .split(',')
            .map(|x| {
                x.trim().parse::<usize>().map_err(|_| {
                    format!("--slstm-at: '{x}' is not a block index (use e.g. 1,3 or none or all)")
                })
            })
            .collect(),
    }
}

/// The paper's name of a block mix, `xLSTM[m:s]` reduced (`[1:1]`, `[0:1]`, `[7:1]`).
pub fn paper_name(cfg: &XlstmLmConfig) -> String {
    let s = cfg.slstm_at.len();
    let m = cfg.num_blocks - s;
    let g = gcd(m, s).max(1);
    format!("xLSTM[{}:{}]", m / g, s / g)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
