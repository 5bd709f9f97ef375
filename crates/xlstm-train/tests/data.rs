//! Data: determinism and the labels of every task, checked against independent definitions.

use xlstm_train::data::{Batch, Dataset, FormalTask, MqarConfig, TaskConfig};
use xlstm_train::rng::Rng;

fn question_and_answer(task: FormalTask, seed: u64, len: usize) -> (Vec<u32>, u32) {
    let e = task.example(len, &mut Rng::new(seed));
    assert_eq!(e.input.len(), len - 1);
    assert_eq!(e.length, len);
    // Only the last input position is scored.
    assert!(e.target[..len - 2].iter().all(|&t| t == -1));
    (e.input.clone(), e.target[len - 2] as u32)
}

#[test]
fn batches_are_a_function_of_seed_and_position() {
    for task in FormalTask::ALL {
        let a = Dataset::new(TaskConfig::formal(task), 3).unwrap();
        let b = Dataset::new(TaskConfig::formal(task), 3).unwrap();
        let c = Dataset::new(TaskConfig::formal(task), 4).unwrap();
        assert_eq!(a.train_batch(10, 5), b.train_batch(10, 5));
        assert_ne!(a.train_batch(10, 5), c.train_batch(10, 5));
        // Examples do not depend on the batch they are drawn in.
        let whole = a.train_batch(0, 4);
        let part = a.train_batch(2, 2);
        let row = |b: &Batch, r: usize| b.inputs[r * b.seq_len..(r + 1) * b.seq_len].to_vec();
        assert_eq!(
            &row(&whole, 2)[..part.seq_len.min(whole.seq_len)],
            &row(&part, 0)[..part.seq_len.min(whole.seq_len)]
        );
        // Evaluation streams differ from training.
        assert_ne!(a.eval_example(0, 0), a.train_example(0));
    }
}

#[test]
fn lengths_follow_the_paper_ranges() {
    let d = Dataset::new(TaskConfig::formal(FormalTask::Parity), 1).unwrap();
    let lens: Vec<usize> = (0..2000).map(|i| d.train_example(i).length).collect();
    assert_eq!(*lens.iter().min().unwrap(), 3);
    assert_eq!(*lens.iter().max().unwrap(), 40);
    let names: Vec<String> = d.buckets().iter().map(|b| b.name.clone()).collect();
    assert_eq!(names, ["3-40", "41-64", "65-128", "129-256"]);
    for (i, b) in d.buckets().iter().enumerate() {
        for k in 0..50 {
            let l = d.eval_example(i, k).length;
            assert!(b.min_len <= l && l <= b.max_len, "{l} outside {b:?}");
        }
    }
    let m = Dataset::new(TaskConfig::formal(FormalTask::ModArithmetic), 1).unwrap();
    assert!((0..500).all(|i| m.train_example(i).length % 2 == 1));
}

#[test]
fn parity_answer_is_the_parity_of_the_twos() {
    for seed in 0..200 {
        let len = 3 + (seed as usize % 60);
        let (q, a) = question_and_answer(FormalTask::Parity, seed, len);
        assert!(q.iter().all(|&t| t == 1 || t == 2));
        let ones_of_b = q.iter().filter(|&&t| t == 2).count();
        assert_eq!(a, if ones_of_b % 2 == 0 { 1 } else { 2 }, "{q:?}");
    }
}

#[test]
fn even_pairs_answer_counts_ab_and_ba() {
    for seed in 0..200 {
        let (q, a) = question_and_answer(FormalTask::EvenPairs, seed, 3 + seed as usize % 50);
        let changes = q.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(a, if changes % 2 == 0 { 1 } else { 2 }, "{q:?}");
    }
}

#[test]
fn cycle_navigation_answer_is_the_final_position() {
    for seed in 0..200 {
        let (q, a) = question_and_answer(FormalTask::CycleNavigation, seed, 3 + seed as usize % 50);
        let mut pos = 0i32;
        for &t in &q {
            pos = (pos + [0, 0, 1, -1][t as usize] + 5) % 5;
        }
        assert_eq!(a as i32, pos + 4, "{q:?}");
    }
}

/// Evaluates `n op n op ... n` with `*` before `+ -` by reducing products first.
fn eval_flat(tokens: &[u32], number_base: u32) -> i64 {
    let mut terms: Vec<(i64, i64)> = vec![(1, tokens[0] as i64 - number_base as i64)];
    for pair in tokens[1..].chunks(2) {
        let n = pair[1] as i64 - number_base as i64;
        match pair[0] {
            1 => terms.push((1, n)),
            2 => terms.push((-1, n)),
            3 => terms.last_mut().unwrap().1 *= n,
            t => panic!("operator token {t}"),
        }
    }
    terms.iter().map(|(s, v)| s * v).sum::<i64>().rem_euclid(5)
}

#[test]
fn modular_arithmetic_answer_respects_precedence() {
    for seed in 0..200 {
        let len = 2 * (2 + seed as usize % 20) - 1;
        let (q, a) = question_and_answer(FormalTask::ModArithmetic, seed, len);
        assert_eq!(q[len - 2], 4, "'=' before the answer");
        assert_eq!(a as i64 - 5, eval_flat(&q[..len - 2], 5), "{q:?}");
    }
    // 2 + 3 * 4 - 1 = 13 = 3 (mod 5)
    assert_eq!(eval_flat(&[7, 1, 8, 3, 9, 2, 6], 5), 3);
}

/// Recursive-descent evaluation of the bracketed grammar (tokens 1 + 2 - 3 * 5 ( 6 ), 7.. n).
fn eval_brackets(t: &[u32], i: &mut usize) -> i64 {
    match t[*i] {
        2 => {
            *i += 1;
            -eval_brackets(t, i)
        }
        5 => {
            *i += 1;
            let mut v = eval_brackets(t, i);
            if t[*i] != 6 {
                let op = t[*i];
                *i += 1;
                let r = eval_brackets(t, i);
                v = match op {
                    1 => v + r,
                    2 => v - r,
                    3 => v * r,
                    o => panic!("operator {o}"),
                };
            }
            assert_eq!(t[*i], 6, "closing bracket");
            *i += 1;
            v
        }
        n => {
            *i += 1;
            n as i64 - 7
        }
    }
}

#[test]
fn modular_arithmetic_with_brackets_is_a_valid_expression_with_its_value() {
    for seed in 0..300 {
        let len = 3 + seed as usize % 80;
        let (q, a) = question_and_answer(FormalTask::ModArithmeticBrackets, seed, len);
        assert_eq!(q[len - 2], 4);
        let expr = &q[..len - 2];
        let mut i = 0;
        let v = eval_brackets(expr, &mut i).rem_euclid(5);
        assert_eq!(i, expr.len(), "the whole expression parses: {expr:?}");
        assert_eq!(a as i64 - 7, v, "{expr:?}");
    }
}

#[test]
fn mqar_targets_are_the_values_of_the_queried_keys() {
    let cfg = MqarConfig {
        vocab_size: 64,
        seq_len: 48,
        kv_pairs: 6,
        power_a: 0.01,
    };
    let d = Dataset::new(TaskConfig::Mqar(cfg.clone()), 9).unwrap();
    for i in 0..50 {
        let e = d.train_example(i);
        assert_eq!(e.input.len(), 48);
        let pairs: std::collections::HashMap<u32, u32> =
            e.input[..12].chunks(2).map(|p| (p[0], p[1])).collect();
        assert_eq!(pairs.len(), 6, "distinct keys");
        let scored: Vec<usize> = (0..48).filter(|&p| e.target[p] >= 0).collect();
        assert_eq!(scored.len(), 6, "one query per key");
        for p in scored {
            assert!(p >= 12);
            assert_eq!(pairs[&e.input[p]] as i64, e.target[p], "query at {p}");
        }
    }
    let bad = MqarConfig {
        kv_pairs: 40,
        ..cfg
    };
    assert!(Dataset::new(TaskConfig::Mqar(bad), 0)
        .unwrap_err()
        .contains("kv_pairs"));
}

#[test]
fn text_windows_come_from_the_file() {
    let dir = std::env::temp_dir().join(format!("xlstm-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.txt");
    let text: Vec<u8> = (0..2000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(&path, &text).unwrap();
    let d = Dataset::new(
        TaskConfig::Text {
            path: path.clone(),
            seq_len: 16,
        },
        0,
    )
    .unwrap();
    let e = d.train_example(3);
    for p in 0..16 {
        assert_eq!(
            (e.input[p] as u8 - b'a' + 1) % 26,
            (e.target[p] as u8 - b'a')
        );
    }
    let err = Dataset::new(
        TaskConfig::Text {
            path: path.clone(),
            seq_len: 500,
        },
        0,
    )
    .unwrap_err();
    assert!(err.contains("seq_len"), "{err}");
    let err = Dataset::new(
        TaskConfig::Text {
            path: dir.join("missing"),
            seq_len: 8,
        },
        0,
    )
    .unwrap_err();
    assert!(err.contains("cannot read"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
