//! The command line: errors are one clear line on stderr and a non-zero exit.

use std::process::Command;

fn xlstm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xlstm"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fails_with(args: &[&str], needle: &str) {
    let (code, _, err) = xlstm(args);
    assert_ne!(code, 0, "{args:?} should fail");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line for {args:?}: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{args:?}: {err}"
    );
    assert!(
        !err.contains("backtrace") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_one_line_errors() {
    fails_with(&["train", "--slstm-at", "1,x"], "--slstm-at");
    fails_with(&["train", "--slstm-at", "5"], "slstm_at");
    fails_with(&["train", "--heads", "3"], "num_heads");
    fails_with(&["train", "--task", "text"], "--text FILE");
    fails_with(
        &["train", "--task", "text", "--text", "/nonexistent/file"],
        "cannot read",
    );
    fails_with(&["train", "--lr=-1"], "lr");
    fails_with(&["train", "--vocab", "2"], "vocabulary");
    fails_with(
        &["train", "--task", "mqar", "--kv-pairs", "200"],
        "kv_pairs",
    );
    fails_with(&["train", "--config", "/nonexistent.json"], "--config");
    fails_with(&["eval", "--checkpoint", "/nonexistent"], "no checkpoint");
    fails_with(
        &["generate", "--checkpoint", "/nonexistent", "--prompt", "a"],
        "no checkpoint",
    );
    fails_with(
        &[
            "generate",
            "--checkpoint",
            "/x",
            "--prompt",
            "a",
            "--top-p",
            "2",
        ],
        "--top-p",
    );
    fails_with(&["bench", "train", "--seq-len", "0"], "at least 1");
}

#[test]
fn unknown_flags_are_rejected_by_clap() {
    let (code, _, err) = xlstm(&["train", "--task", "sorting"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid value 'sorting'"), "{err}");
}

#[test]
fn train_resume_eval_and_generate_end_to_end() {
    let out = std::env::temp_dir().join(format!("xlstm-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = out.to_str().unwrap();
    let small = [
        "--blocks",
        "1",
        "--slstm-at",
        "all",
        "--embedding-dim",
        "8",
        "--batch",
        "4",
        "--train-max",
        "6",
        "--eval-max",
        "9",
        "--eval-examples",
        "4",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
    ];
    let mut args = vec!["train", "--steps", "2", "--out", o];
    args.extend(small);
    let (code, stdout, err) = xlstm(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("3-6") && stdout.contains("7-8") && stdout.contains("accuracy"),
        "{stdout}"
    );
    for f in [
        "metrics.jsonl",
        "metrics.csv",
        "metrics.png",
        "results.json",
        "checkpoints/LATEST",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let mut args = vec!["train", "--steps", "4", "--resume", "--out", o];
    args.extend(small);
    let (code, _, err) = xlstm(&args);
    assert_eq!(code, 0, "{err}");
    let jsonl = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = jsonl
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4], "resumed at step 3");

    let (code, stdout, err) = xlstm(&["eval", "--checkpoint", o, "--examples", "4"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("9-9") || stdout.contains("accuracy"),
        "{stdout}"
    );
    let (code, stdout, err) = xlstm(&[
        "generate",
        "--checkpoint",
        o,
        "--prompt",
        "1 2 1",
        "--tokens",
        "5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout.split_whitespace().count(), 5, "{stdout}");
    fails_with(
        &["generate", "--checkpoint", o, "--prompt", "1 7"],
        "not a token id",
    );
    std::fs::remove_dir_all(out).unwrap();
}

/// The training losses of a run, from its `metrics.jsonl`.
#[cfg(feature = "distributed")]
fn train_losses(out: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[cfg(feature = "distributed")]
#[test]
fn two_replicas_train_like_one_device_on_the_global_batch() {
    let run = |devices: &str| {
        let out = std::env::temp_dir().join(format!("xlstm-dp{devices}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let args = [
            "train",
            "--devices",
            devices,
            "--steps",
            "3",
            "--blocks",
            "2",
            "--slstm-at",
            "1",
            "--embedding-dim",
            "8",
            "--batch",
            "6",
            "--grad-accum",
            "2",
            "--train-max",
            "9",
            "--eval-max",
            "9",
            "--eval-examples",
            "4",
            "--out",
            out.to_str().unwrap(),
        ];
        let (code, _, err) = xlstm(&args);
        assert_eq!(code, 0, "--devices {devices}: {err}");
        let losses = train_losses(&out);
        std::fs::remove_dir_all(&out).unwrap();
        losses
    };
    let (one, two) = (run("1"), run("2"));
    assert_eq!(one.len(), 3);
    for (a, b) in one.iter().zip(&two) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "one device {one:?}, two {two:?}"
        );
    }
    fails_with(
        &["train", "--devices", "4", "--batch", "6"],
        "multiple of --devices",
    );
}

#[cfg(not(feature = "distributed"))]
#[test]
fn several_devices_need_the_distributed_feature() {
    fails_with(&["train", "--devices", "2"], "distributed");
}
