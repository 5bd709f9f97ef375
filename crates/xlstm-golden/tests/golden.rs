//! Conformance with the official xLSTM: every golden case in `golden_dir()`, dispatched on
//! its `kind`. Prints the relative L2 error of every output and gradient it checks.

mod kinds;

use kinds::Report;
use xlstm_golden::{cases, golden_dir};

#[test]
fn golden() {
    let dir = golden_dir();
    let cases = cases(&dir).unwrap_or_else(|e| panic!("reading golden cases: {e}"));
    assert!(!cases.is_empty(), "no golden case in {}", dir.display());
    let mut report = Report::default();
    for case in &cases {
        match case.kind.as_str() {
            "mlstm_cell" => kinds::mlstm_cell::check(case, &mut report),
            "slstm_cell" => kinds::slstm_cell::check(case, &mut report),
            // The models need `XlstmBackend` for the test backend, which xlstm-kernels
            // provides for ndarray; on wgpu only once its cube kernels are enabled here.
            #[cfg(not(feature = "wgpu"))]
            "xlstm_lm" => kinds::xlstm_lm::check(case, &mut report),
            #[cfg(not(feature = "wgpu"))]
            "xlstm_large" => kinds::xlstm_large::check(case, &mut report),
            other => report.skip(&case.name, other),
        }
    }
    report.finish();
}
