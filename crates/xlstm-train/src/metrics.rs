//! Metrics files of a run: `metrics.jsonl` (one JSON object per event) and `metrics.csv`
//! (the same events as rows: `kind,step,loss,grad_norm,lr,tokens_per_s,skipped,bucket,accuracy`).

use crate::error::TrainError;
use crate::trainer::{BucketResult, StepReport};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// One logged event.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// An optimiser step.
    Train {
        /// The step's report.
        #[serde(flatten)]
        report: StepReport,
        /// Input tokens per second of this step.
        tokens_per_s: f64,
    },
    /// Accuracy of one evaluation bucket after `step` steps.
    Eval {
        /// The step.
        step: usize,
        /// The bucket's result.
        #[serde(flatten)]
        result: BucketResult,
    },
}

/// Appends events to `metrics.jsonl` and `metrics.csv` in a directory.
pub struct MetricsWriter {
    jsonl: BufWriter<File>,
    csv: BufWriter<File>,
    events: Vec<Event>,
}

impl MetricsWriter {
    /// Creates (or, when `append`, continues) the two files in `dir`.
    pub fn create(dir: &Path, append: bool) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io("cannot create", dir, e))?;
        let open = |name: &str| {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&path)
                .map_err(|e| TrainError::io("cannot open", &path, e))
        };
        let jsonl = BufWriter::new(open("metrics.jsonl")?);
        let csv_file = open("metrics.csv")?;
        let fresh = csv_file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        let mut csv = BufWriter::new(csv_file);
        if fresh {
            writeln!(
                csv,
                "kind,step,loss,grad_norm,lr,tokens_per_s,skipped,bucket,accuracy"
            )
            .map_err(|e| TrainError::io("cannot write", dir, e))?;
        }
        Ok(Self {
            jsonl,
            csv,
            events: Vec::new(),
        })
    }

    /// Logs one event (kept in memory too, for the plot).
    pub fn log(&mut self, event: Event) -> std::io::Result<()> {
        writeln!(
            self.jsonl,
            "{}",
            serde_json::to_string(&event).expect("event serialises")
        )?;
        match &event {
            Event::Train {
                report,
                tokens_per_s,
            } => writeln!(
                self.csv,
                "train,{},{},{},{},{:.1},{},,",
                report.step, report.loss, report.grad_norm, report.lr, tokens_per_s, report.skipped
            )?,
            Event::Eval { step, result } => writeln!(
                self.csv,
                "eval,{},{},,,,,{},{}",
                step, result.loss, result.bucket.name, result.accuracy
            )?,
        }
        self.events.push(event);
        Ok(())
    }

    /// Flushes both files.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.jsonl.flush()?;
        self.csv.flush()
    }

    /// The events logged so far by this writer.
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}
