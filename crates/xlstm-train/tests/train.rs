//! The loop: schedule, global clipping, AdamW groups, accumulation, resumption, NaN skipping.

mod common;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use common::{flat_params, tiny, AB, B, POISON};
use xlstm_train::clip::{clip_global_norm, global_grad_norm};
use xlstm_train::data::{Batch, Example};
use xlstm_train::loss::masked_cross_entropy;
use xlstm_train::optim::{weight_decay_groups, GroupedAdamW};
use xlstm_train::{
    AdamWSettings, Dataset, FormalTask, LanguageModel, TaskConfig, TrainConfig, TrainError,
    Trainer, WarmupCosine,
};

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 8,
        grad_accum: 1,
        lr: 1e-2,
        warmup_steps: 2,
        lr_decay_factor: 0.1,
        clip_norm: Some(1.0),
        adamw: AdamWSettings::default(),
        seed: 0,
    }
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("xlstm-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn schedule_matches_the_official_formula() {
    let s = WarmupCosine {
        warmup_steps: 10,
        decay_until_step: 110,
        max_lr: 1e-3,
        min_lr: 1e-6,
    };
    assert_eq!(s.lr(0), 0.0);
    assert!((s.lr(5) - 5e-4).abs() < 1e-15);
    assert!((s.lr(10) - 1e-3).abs() < 1e-15);
    // Half way through the decay: the mean of max and min.
    assert!((s.lr(60) - (1e-3 + 1e-6) / 2.0).abs() < 1e-15);
    // A quarter: min + (max - min) (1 + cos(pi/4)) / 2.
    let q = 1e-6 + (1e-3 - 1e-6) * (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0;
    assert!((s.lr(35) - q).abs() < 1e-15);
    assert_eq!(s.lr(110), 1e-6);
    assert_eq!(s.lr(500), 1e-6);
}

fn grads_of(model: &common::Tiny<AB>, batch: &Batch) -> GradientsParams {
    let (x, y) = batch.to_tensors::<AB>(&Default::default());
    let loss = masked_cross_entropy(model.logits(x).unwrap(), y);
    GradientsParams::from_grads(loss.backward(), model)
}

fn grad_vectors(model: &common::Tiny<AB>, grads: &GradientsParams) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let g = |id| {
        grads
            .get::<B, 2>(id)
            .map(|t| t.into_data().to_vec::<f32>().unwrap())
    };
    let g1 = |id| {
        grads
            .get::<B, 1>(id)
            .map(|t| t.into_data().to_vec::<f32>().unwrap())
    };
    out.extend(g(model.token_embedding.weight.id));
    out.extend(g1(model.norm.gamma.id));
    out.extend(g1(model.norm.beta.as_ref().unwrap().id));
    out.extend(g(model.proj.weight.id));
    out.extend(g1(model.proj.bias.as_ref().unwrap().id));
    out.extend(g(model.head.weight.id));
    out.extend(g1(model.head.bias.as_ref().unwrap().id));
    out
}

#[test]
fn global_norm_is_over_all_gradients_and_clipping_reaches_it() {
    let model = tiny(3, 1);
    let data = Dataset::new(TaskConfig::formal(FormalTask::Parity), 0).unwrap();
    let batch = data.train_batch(0, 8);
    let mut grads = grads_of(&model, &batch);
    let vectors = grad_vectors(&model, &grads);
    assert_eq!(vectors.len(), 7, "every parameter has a gradient");
    let want: f64 = vectors
        .iter()
        .flatten()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let norm = global_grad_norm(&model, &grads);
    assert!((norm - want).abs() <= 1e-5 * want, "{norm} vs {want}");

    let max = want / 4.0;
    let factor = clip_global_norm(&model, &mut grads, norm, max);
    assert!((factor - max / (norm + 1e-6)).abs() < 1e-12);
    let after = global_grad_norm(&model, &grads);
    assert!((after - max).abs() <= 1e-4 * max, "{after} vs {max}");
    // The direction is kept: every gradient scaled by the same factor.
    let scaled = grad_vectors(&model, &grads);
    for (a, b) in vectors.iter().flatten().zip(scaled.iter().flatten()) {
        assert!((*a as f64 * factor - *b as f64).abs() <= 1e-6 + 1e-5 * b.abs() as f64);
    }
    // Below the bound nothing changes.
    assert_eq!(
        clip_global_norm(&model, &mut grads, after, 10.0 * want),
        1.0
    );
}

#[test]
fn weight_decay_groups_follow_the_official_names() {
    let model = tiny(3, 0);
    let groups: Vec<(String, bool)> = weight_decay_groups::<AB, _>(&model, false)
        .into_iter()
        .map(|(n, _, d)| (n, d))
        .collect();
    let expect = [
        ("token_embedding.weight", false),
        ("norm.gamma", false),
        ("norm.beta", false),
        ("proj.weight", true),
        ("proj.bias", false),
        ("head.weight", true),
        ("head.bias", false),
    ];
    let expect: Vec<(String, bool)> = expect.iter().map(|(n, d)| (n.to_string(), *d)).collect();
    assert_eq!(groups, expect);
    let with_emb = weight_decay_groups::<AB, _>(&model, true);
    assert!(with_emb[0].2, "embedding decayed when asked");
    assert!(!xlstm_train::optim::decays(
        "blocks.0.norm_mlstm.weight",
        false
    ));
}

#[test]
fn only_the_decayed_group_shrinks_under_zero_gradients() {
    // With zero gradients Adam's update is 0, so only decoupled decay moves weights:
    // decayed weights become w (1 - lr wd), the others stay.
    let model = tiny(3, 2);
    let settings = AdamWSettings {
        weight_decay: 0.5,
        ..AdamWSettings::default()
    };
    let mut optim = GroupedAdamW::new(&model, &settings);
    let batch = Dataset::new(TaskConfig::formal(FormalTask::Parity), 0)
        .unwrap()
        .train_batch(0, 4);
    let (x, y) = batch.to_tensors::<AB>(&Default::default());
    let loss = masked_cross_entropy(model.logits(x).unwrap(), y) * 0.0;
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let before = flat_params(&model.valid());
    let after = flat_params(&optim.step(0.1, model, grads).valid());
    let decayed = [false, false, false, true, false, true, false];
    for ((b, a), d) in before.iter().zip(&after).zip(decayed) {
        let f = if d { 1.0 - 0.1 * 0.5 } else { 1.0 };
        for (x, y) in b.iter().zip(a) {
            assert!((x * f - y).abs() <= 1e-6, "decayed={d}: {x} -> {y}");
        }
    }
}

#[test]
fn accumulating_two_half_batches_equals_one_batch() {
    let data = Dataset::new(TaskConfig::formal(FormalTask::Parity), 0).unwrap();
    let mut whole = Trainer::<AB, _>::new(tiny(3, 5), config(3), Default::default()).unwrap();
    let mut halves = Trainer::<AB, _>::new(
        tiny(3, 5),
        TrainConfig {
            batch_size: 4,
            grad_accum: 2,
            ..config(3)
        },
        Default::default(),
    )
    .unwrap();
    for _ in 0..3 {
        let a = whole.step(&data).unwrap();
        let b = halves.step(&data).unwrap();
        assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
        assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1e-3));
    }
    assert_eq!(whole.state().examples_seen, halves.state().examples_seen);
}

#[test]
fn resuming_reproduces_the_uninterrupted_losses_exactly() {
    let data = Dataset::new(TaskConfig::formal(FormalTask::Parity), 11).unwrap();
    let dir = tmpdir("resume");
    let mut straight = Trainer::<AB, _>::new(tiny(3, 7), config(6), Default::default()).unwrap();
    let want: Vec<f64> = (0..6).map(|_| straight.step(&data).unwrap().loss).collect();

    let mut first = Trainer::<AB, _>::new(tiny(3, 7), config(6), Default::default()).unwrap();
    let mut got: Vec<f64> = (0..3).map(|_| first.step(&data).unwrap().loss).collect();
    let meta = serde_json::json!({"model": "tiny"});
    let saved = first.save(&dir, &meta).unwrap();
    assert!(saved.ends_with("step-000003"));
    drop(first);

    // A differently initialised model: every weight must come from the checkpoint.
    let (mut resumed, meta_back) =
        Trainer::<AB, _>::resume(tiny(3, 99), config(6), &dir, Default::default()).unwrap();
    assert_eq!(meta_back, meta);
    assert_eq!(resumed.state().step, 3);
    assert_eq!(resumed.state().examples_seen, 24);
    while !resumed.finished() {
        got.push(resumed.step(&data).unwrap().loss);
    }
    assert_eq!(got, want, "bit-identical losses after resuming");
    assert_eq!(
        flat_params(&resumed.model().valid()),
        flat_params(&straight.model().valid())
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn poisoned_batch() -> Batch {
    let ex = |poison: bool| Example {
        input: vec![1, 2, if poison { POISON as u32 } else { 1 }],
        target: vec![-1, -1, 2],
        length: 4,
    };
    Batch::collate(&[ex(false), ex(true), ex(false)])
}

#[test]
fn a_non_finite_loss_skips_the_step_and_never_reaches_a_checkpoint() {
    let dir = tmpdir("nan");
    let data = Dataset::new(TaskConfig::formal(FormalTask::Parity), 0).unwrap();
    let mut t = Trainer::<AB, _>::new(tiny(3, 3), config(10), Default::default()).unwrap();
    t.step(&data).unwrap();
    t.step(&data).unwrap();
    t.save(&dir, &serde_json::Value::Null).unwrap();
    let before = flat_params(&t.model().valid());

    let r = t.step_on(&[poisoned_batch()]).unwrap();
    assert!(r.skipped, "{r:?}");
    assert!(!r.loss.is_finite() || !r.grad_norm.is_finite());
    assert_eq!(t.state().skipped_steps, 1);
    assert_eq!(flat_params(&t.model().valid()), before, "weights untouched");
    let r = t.step(&data).unwrap();
    assert!(!r.skipped && r.loss.is_finite());

    // Weights made non-finite by hand: saving refuses and the last checkpoint stays.
    let (bad, _) =
        Trainer::<AB, _>::resume(tiny(3, 3), config(10), &dir, Default::default()).unwrap();
    let mut poisoned = bad.model().clone();
    poisoned.proj.bias = poisoned
        .proj
        .bias
        .map(|b| b.map(|t| t.mul_scalar(f32::NAN)));
    let nan_trainer = Trainer::<AB, _>::new(poisoned, config(10), Default::default()).unwrap();
    match nan_trainer.save(&dir, &serde_json::Value::Null) {
        Err(TrainError::NonFiniteWeights { count, .. }) => assert_eq!(count, 16),
        other => panic!("expected NonFiniteWeights, got {other:?}"),
    }
    let latest = xlstm_train::checkpoint::latest(&dir).unwrap();
    assert!(latest.ends_with("step-000002"));
    let (ok, _) =
        Trainer::<AB, _>::resume(tiny(3, 5), config(10), &dir, Default::default()).unwrap();
    assert_eq!(
        xlstm_train::trainer::count_non_finite::<AB, _>(ok.model()),
        0
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn evaluation_reports_every_bucket() {
    let data = Dataset::new(
        TaskConfig::Formal {
            task: FormalTask::Parity,
            train_min: 3,
            train_max: 10,
            eval_max: 20,
        },
        0,
    )
    .unwrap();
    let t = Trainer::<AB, _>::new(tiny(3, 3), config(1), Default::default()).unwrap();
    let r = t.evaluate(&data, 12, 5).unwrap();
    let names: Vec<&str> = r.iter().map(|b| b.bucket.name.as_str()).collect();
    assert_eq!(names, ["3-10", "11-16", "17-20"]);
    for b in &r {
        assert!((0.0..=1.0).contains(&b.accuracy) && b.loss.is_finite() && b.examples == 12);
    }
}

#[test]
fn bad_settings_are_named() {
    let e = Trainer::<AB, _>::new(
        tiny(3, 0),
        TrainConfig {
            lr: -1.0,
            ..config(1)
        },
        Default::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("lr"), "{e}");
    let e = Trainer::<AB, _>::resume(tiny(3, 0), config(1), &tmpdir("none"), Default::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("no checkpoint"), "{e}");
}
