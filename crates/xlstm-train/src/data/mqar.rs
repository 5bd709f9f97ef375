//! Multi-query associative recall (MQAR; Arora et al. 2024, "Zoology"), as its reference
//! generator `multiquery_ar` builds it.
//!
//! An example of `seq_len` input tokens starts with `kv` key-value pairs `k1 v1 ... kN vN`
//! (keys distinct, from `1..V/2`; values from `V/2..V`). Each key is then queried once, at
//! a position drawn from a power law over the remaining slots (queries cluster near the
//! pairs); the target at a query is its value. Every other slot holds a random token.

use super::Example;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// MQAR parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MqarConfig {
    /// Vocabulary size `V` (keys `1..V/2`, values `V/2..V`).
    pub vocab_size: usize,
    /// Input tokens per example.
    pub seq_len: usize,
    /// Key-value pairs per example.
    pub kv_pairs: usize,
    /// Exponent `a` of the query-gap distribution `p(g) ∝ a g^(a-1)` (Zoology: 0.01).
    pub power_a: f64,
}

impl MqarConfig {
    /// Checks that the keys, values and queries fit.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size / 2 <= self.kv_pairs {
            return Err(format!(
                "mqar: vocab_size / 2 - 1 = {} keys cannot hold kv_pairs = {}",
                (self.vocab_size / 2).saturating_sub(1),
                self.kv_pairs
            ));
        }
        if self.seq_len < 4 * self.kv_pairs {
            return Err(format!(
                "mqar: seq_len = {} must be at least 4 * kv_pairs = {}",
                self.seq_len,
                4 * self.kv_pairs
            ));
        }
        Ok(())
    }

    /// One example.
    pub fn example(&self, rng: &mut Rng) -> Example {
        let (v, n, s) = (self.vocab_size, self.kv_pairs, self.seq_len);
        let half = v / 2;
        // Distinct keys: a partial Fisher-Yates shuffle of 1..half.
        let mut keys: Vec<u32> = (1..half as u32).collect();
        for i in 0..n {
            let j = i + rng.below(keys.len() - i);
            keys.swap(i, j);
        }
        keys.truncate(n);
        let values: Vec<u32> = (0..n)
            .map(|_| rng.range(half as u64, v as u64 - 1) as u32)
            .collect();

        // The full sequence has s + 1 tokens: pairs, then query slots at even offsets.
        let context = 2 * n;
        let space = (s - context) / 2;
        let weights: Vec<f64> = (1..=space)
            .map(|g| self.power_a * (g as f64).powf(self.power_a - 1.0))
            .collect();
        let gaps = sample_without_replacement(&weights, n, rng);

        let mut full = vec![0u32; s + 1];
        let mut target_full = vec![-1i64; s + 1];
        for i in 0..n {
            full[2 * i] = keys[i];
            full[2 * i + 1] = values[i];
            let q = context + 2 * gaps[i];
            full[q] = keys[i];
            target_full[q + 1] = values[i] as i64;
        }
        let mut input: Vec<u32> = full[..s].to_vec();
        for t in input.iter_mut().skip(context) {
            if *t == 0 {
                *t = rng.below(v) as u32;
            }
        }
        let target = target_full[1..].to_vec();
        Example {
            input,
            target,
            length: s,
        }
    }
}

/// `k` distinct indices drawn one after another with probability proportional to `weights`
/// (numpy's `choice(replace=False, p=weights)`).
fn sample_without_replacement(weights: &[f64], k: usize, rng: &mut Rng) -> Vec<usize> {
    let mut w = weights.to_vec();
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        let total: f64 = w.iter().sum();
        let mut x = rng.unit() * total;
        let mut pick = w.iter().rposition(|&p| p > 0.0).unwrap_or(0);
        for (i, &p) in w.iter().enumerate() {
            if p > 0.0 && x < p {
                pick = i;
                break;
            }
            x -= p;
        }
        w[pick] = 0.0;
        out.push(pick);
    }
    out
}
