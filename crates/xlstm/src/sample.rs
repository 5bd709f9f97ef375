//! Choosing the next token from logits: greedy, or sampling with temperature, top-k, top-p.

use xlstm_train::rng::Rng;

/// Sampling settings; `temperature == 0` is greedy.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub rng: Rng,
}

impl Sampler {
    /// The next token for one row of logits.
    pub fn pick(&mut self, logits: &[f32]) -> usize {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                })
                .0
        };
        if self.temperature <= 0.0 {
            return argmax();
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = self.top_k {
            order.truncate(k.max(1));
        }
        let top = logits[order[0]];
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| (((logits[i] - top) / self.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(p) = self.top_p {
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|&q| {
                    cum += q;
                    cum >= p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            order.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut x = self.rng.unit() * total;
        for (i, q) in order.iter().zip(&probs) {
            if x < *q {
                return *i;
            }
            x -= q;
        }
        *order.last().unwrap_or(&argmax())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p() {
        let logits = [0.0, 3.0, 1.0, 2.9];
        let mut s = Sampler {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            rng: Rng::new(0),
        };
        assert_eq!(s.pick(&logits), 1);
        s.temperature = 1.0;
        s.top_k = Some(1);
        assert!((0..50).all(|_| s.pick(&logits) == 1));
        s.top_k = Some(2);
        let picks: Vec<usize> = (0..200).map(|_| s.pick(&logits)).collect();
        assert!(picks.iter().all(|&t| t == 1 || t == 3) && picks.contains(&3));
        s.top_k = None;
        s.top_p = Some(0.3);
        assert!((0..50).all(|_| s.pick(&logits) == 1));
    }
}
