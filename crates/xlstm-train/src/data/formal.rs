//! The formal-language tasks of the xLSTM paper (Chomsky-hierarchy experiment, Sec. 4.1 and
//! App. D.1), generated as the official `experiments/data/formal_language/tasks/*.py` do.
//!
//! An example of length `n` is `n` tokens: `n - 1` question tokens and the answer at position
//! `n - 1`. The model reads the question (the official code replaces the answer by the pad
//! token 0 and shifts by one) and is scored only where it predicts the answer, i.e. at input
//! position `n - 2`. Trailing pad tokens after the answer never reach a causal model's loss, so
//! a batch is cut at its longest question instead of the official fixed context of 256.
//!
//! Token 0 is `[PAD]` in every task.

use super::Example;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// One formal-language task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormalTask {
    /// Parity (regular): bits `1, 2`; the answer is `(#2s mod 2) + 1`. Vocabulary 3.
    Parity,
    /// Even pairs (regular): symbols `1, 2`; the answer is `|last - first| + 1`, i.e. `1`
    /// when the string has an even number of `ab`/`ba` pairs. Vocabulary 3.
    EvenPairs,
    /// Cycle navigation (regular): moves `1 = stay, 2 = +1, 3 = -1` on a cycle of 5;
    /// the answer is the final position `+ 4`. Vocabulary 9.
    CycleNavigation,
    /// Modular arithmetic without brackets (regular): `n op n op ... n = r` with
    /// `+ - *` (`*` binds tighter) modulo 5; tokens `1 + 2 - 3 * 4 =`, numbers `5..=9`.
    /// Vocabulary 10. Lengths are odd.
    ModArithmetic,
    /// Modular arithmetic with brackets (context-free), as Delétang et al. (2023) define it:
    /// a random bracketed expression of exactly the asked length over `+ - *` and unary
    /// minus, modulo 5; tokens `1 + 2 - 3 * 4 = 5 ( 6 )`, numbers `7..=11`. Vocabulary 12.
    /// (The official xLSTM code does not ship this task; this is our generator.)
    ModArithmeticBrackets,
}

const MODULUS: i64 = 5;

impl FormalTask {
    /// All tasks, in the paper's table order.
    pub const ALL: [FormalTask; 5] = [
        FormalTask::EvenPairs,
        FormalTask::ModArithmetic,
        FormalTask::Parity,
        FormalTask::CycleNavigation,
        FormalTask::ModArithmeticBrackets,
    ];

    /// Vocabulary size (pad included).
    pub fn vocab_size(self) -> usize {
        match self {
            FormalTask::Parity | FormalTask::EvenPairs => 3,
            FormalTask::CycleNavigation => 9,
            FormalTask::ModArithmetic => 10,
            FormalTask::ModArithmeticBrackets => 12,
        }
    }

    /// Number of possible answers (chance accuracy is `1 / classes`).
    pub fn answer_classes(self) -> usize {
        match self {
            FormalTask::Parity | FormalTask::EvenPairs => 2,
            _ => MODULUS as usize,
        }
    }

    /// Samples a length in `lo..=hi` the way the official generator does (odd lengths for
    /// modular arithmetic: `2 k - 1` with `k` uniform in `ceil(lo/2)..=ceil(hi/2)`).
    pub fn sample_length(self, lo: usize, hi: usize, rng: &mut Rng) -> usize {
        match self {
            FormalTask::ModArithmetic => {
                let k = rng.range((lo as u64).div_ceil(2).max(2), (hi as u64).div_ceil(2));
                2 * k as usize - 1
            }
            _ => rng.range(lo as u64, hi as u64) as usize,
        }
    }

    /// The full sequence of `len >= 3` tokens, the answer last.
    pub fn sequence(self, len: usize, rng: &mut Rng) -> Vec<u32> {
        assert!(len >= 3, "formal-language examples have at least 3 tokens");
        match self {
            FormalTask::Parity => {
                let mut s: Vec<u32> = (0..len - 1).map(|_| rng.range(1, 2) as u32).collect();
                let twos = s.iter().filter(|&&t| t == 2).count();
                s.push((twos % 2) as u32 + 1);
                s
            }
            FormalTask::EvenPairs => {
                let mut s: Vec<u32> = (0..len - 1).map(|_| rng.range(1, 2) as u32).collect();
                let answer = s[len - 2].abs_diff(s[0]) + 1;
                s.push(answer);
                s
            }
            FormalTask::CycleNavigation => {
                let mut s: Vec<u32> = (0..len - 1).map(|_| rng.range(1, 3) as u32).collect();
                let total: i64 = s
                    .iter()
                    .map(|&t| match t {
                        1 => 0,
                        2 => 1,
                        _ => -1,
                    })
                    .sum();
                s.push(total.rem_euclid(MODULUS) as u32 + 4);
                s
            }
            FormalTask::ModArithmetic => mod_arithmetic(len, rng),
            FormalTask::ModArithmeticBrackets => {
                let (mut s, value) = bracket_expression(len - 2, rng);
                s.push(4);
                s.push(value as u32 + 7);
                s
            }
        }
    }

    /// One training/evaluation example of length `len`: the question as input, the answer as
    /// the only target (at input position `len - 2`).
    pub fn example(self, len: usize, rng: &mut Rng) -> Example {
        let seq = self.sequence(len, rng);
        let input: Vec<u32> = seq[..len - 1].to_vec();
        let mut target = vec![-1i64; len - 1];
        target[len - 2] = seq[len - 1] as i64;
        Example {
            input,
            target,
            length: len,
        }
    }
}

/// `n0 op n1 op ... nk = r`, `len` odd: numbers are tokens `5..=9`, operators `1 + 2 - 3 *`.
fn mod_arithmetic(len: usize, rng: &mut Rng) -> Vec<u32> {
    assert!(len % 2 == 1, "modular arithmetic lengths are odd");
    let mut s = Vec::with_capacity(len);
    for i in 0..len - 2 {
        s.push(if i % 2 == 0 {
            rng.range(5, 9) as u32
        } else {
            rng.range(1, 3) as u32
        });
    }
    // `*` binds tighter: sum of signed products (the official loop, computed modulo 5).
    let (mut total, mut product, mut sign) = (0i64, (s[0] as i64 - 5), 1i64);
    for pair in s[1..].chunks(2) {
        let (op, number) = (pair[0], pair[1] as i64 - 5);
        if op == 3 {
            product = product * number % MODULUS;
        } else {
            total = (total + sign * product) % MODULUS;
            product = number;
            sign = if op == 2 { -1 } else { 1 };
        }
    }
    total += sign * product;
    s.push(4);
    s.push(total.rem_euclid(MODULUS) as u32 + 5);
    s
}

/// A random bracketed expression of exactly `len` tokens and its value modulo 5
/// (Delétang et al. 2023): `n`, `-n`, `(n)`, `(-n)` for lengths 1-4, otherwise
/// `(left op right)` with the length split at random.
fn bracket_expression(len: usize, rng: &mut Rng) -> (Vec<u32>, i64) {
    const PLUS: u32 = 1;
    const MINUS: u32 = 2;
    const OPEN: u32 = 5;
    const CLOSE: u32 = 6;
    let number = |rng: &mut Rng| rng.range(0, MODULUS as u64 - 1) as i64;
    let token = |n: i64| n as u32 + 7;
    match len {
        1 => {
            let n = number(rng);
            (vec![token(n)], n)
        }
        2 => {
            let n = number(rng);
            (vec![MINUS, token(n)], (-n).rem_euclid(MODULUS))
        }
        3 => {
            let n = number(rng);
            (vec![OPEN, token(n), CLOSE], n)
        }
        4 => {
            let n = number(rng);
            (vec![OPEN, MINUS, token(n), CLOSE], (-n).rem_euclid(MODULUS))
        }
        _ => {
            let left_len = rng.range(1, len as u64 - 4) as usize;
            let (left, a) = bracket_expression(left_len, rng);
            let (right, b) = bracket_expression(len - 3 - left_len, rng);
            let op = rng.range(1, 3) as u32;
            let value = match op {
                PLUS => a + b,
                MINUS => a - b,
                _ => a * b,
            }
            .rem_euclid(MODULUS);
            let mut s = Vec::with_capacity(len);
            s.push(OPEN);
            s.extend(left);
            s.push(op);
            s.extend(right);
            s.push(CLOSE);
            debug_assert_eq!(s.len(), len);
            (s, value)
        }
    }
}
