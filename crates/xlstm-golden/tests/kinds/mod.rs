pub mod mlstm_cell;
pub mod slstm_cell;
#[cfg(not(feature = "wgpu"))]
pub mod xlstm_large;
#[cfg(not(feature = "wgpu"))]
pub mod xlstm_lm;

use xlstm_golden::{rel_l2, Array};

/// Bound on the relative L2 error of outputs (f32 against the float64 reference).
pub const OUTPUT_BOUND: f64 = 1e-5;
/// Bound on the relative L2 error of gradients.
pub const GRAD_BOUND: f64 = 1e-4;

/// Collects one line per comparison and fails at the end if any was out of bounds.
#[derive(Default)]
pub struct Report {
    checked: usize,
    skipped: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    /// Compares `got` with the golden `want` (shapes must match exactly).
    pub fn compare(&mut self, case: &str, what: &str, got: &Array, want: &Array, bound: f64) {
        let line = if got.shape != want.shape {
            format!(
                "{case:>16} {what:<40} shape {:?} != golden {:?}",
                got.shape, want.shape
            )
        } else {
            let err = rel_l2(&got.values, &want.values);
            let line = format!("{case:>16} {what:<40} rel L2 {err:.2e} (bound {bound:.0e})");
            if err <= bound {
                println!("{line}");
                self.checked += 1;
                return;
            }
            line
        };
        println!("{line}  FAILED");
        self.failures.push(line);
    }

    /// A golden tensor that has no counterpart in the model: a failure.
    #[cfg_attr(feature = "wgpu", allow(dead_code))]
    pub fn missing(&mut self, case: &str, what: &str) {
        let line = format!("{case:>16} {what:<40} no such parameter / gradient in the model");
        println!("{line}  FAILED");
        self.failures.push(line);
    }

    pub fn skip(&mut self, case: &str, kind: &str) {
        let line = format!("{case:>16} SKIPPED: no implementation of kind `{kind}` yet");
        println!("{line}");
        self.skipped.push(line);
    }

    pub fn finish(self) {
        println!(
            "golden: {} comparisons passed, {} failed, {} cases skipped",
            self.checked,
            self.failures.len(),
            self.skipped.len()
        );
        assert!(
            self.failures.is_empty(),
            "golden comparisons failed:\n{}",
            self.failures.join("\n")
        );
        assert!(self.checked > 0, "no golden comparison ran");
    }
}
