//! Mean pooling over token spans, and the finishing steps: truncate, then L2-normalise.
//!
//! Pooling produces sums rather than means so that the parts of one output that come from
//! several windows (long late chunking) can be added before dividing. Sums are kept in f64.

use crate::tokenize::{Plan, Sequence};

/// The sum of the token vectors of one span, and how many tokens it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanSum {
    /// Output the span belongs to.
    pub output: usize,
    /// Sum of the span's token vectors.
    pub sum: Vec<f64>,
    /// Number of tokens summed.
    pub count: usize,
}

/// Sums each span of `sequence`, whose token vectors are the rows of `states` (`len × hidden`).
pub fn sum_spans(sequence: &Sequence, states: &[f32], hidden: usize) -> Vec<SpanSum> {
    sequence
        .spans
        .iter()
        .map(|span| {
            let mut sum = vec![0f64; hidden];
            for row in span.range.clone() {
                for (s, v) in sum
                    .iter_mut()
                    .zip(&states[row * hidden..(row + 1) * hidden])
                {
                    *s += *v as f64;
                }
            }
            SpanSum {
                output: span.output,
                sum,
                count: span.range.len(),
            }
        })
        .collect()
}

/// How pooled vectors become embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    /// Keep the first `dimensions` values (Matryoshka); `None` keeps all.
    pub dimensions: Option<usize>,
    /// Divide by the L2 norm (clamped below at 1e-12).
    pub normalized: bool,
}

/// Combines the span sums of a plan into one embedding per output: mean (all zeros for an
/// empty span), truncate to `dimensions`, then L2-normalise.
pub fn finish(
    plan: &Plan,
    sums: impl IntoIterator<Item = SpanSum>,
    hidden: usize,
    finish: Finish,
) -> Vec<Vec<f32>> {
    let mut totals = vec![(vec![0f64; hidden], 0usize); plan.outputs];
    for part in sums {
        let (sum, count) = &mut totals[part.output];
        for (t, v) in sum.iter_mut().zip(&part.sum) {
            *t += v;
        }
        *count += part.count;
    }
    totals
        .into_iter()
        .map(|(sum, count)| {
            let mean: Vec<f32> = sum
                .iter()
                .map(|s| {
                    if count == 0 {
                        0.0
                    } else {
                        (s / count as f64) as f32
                    }
                })
                .collect();
            finish_vector(mean, finish)
        })
        .collect()
}

/// Truncates, then (optionally) normalises one pooled vector.
pub fn finish_vector(mut v: Vec<f32>, finish: Finish) -> Vec<f32> {
    if let Some(d) = finish.dimensions {
        v.truncate(d);
    }
    if finish.normalized {
        let norm = v
            .iter()
            .map(|&x| x as f64 * x as f64)
            .sum::<f64>()
            .sqrt()
            .max(1e-12) as f32;
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_then_normalise() {
        let v = finish_vector(
            vec![3.0, 4.0, 100.0],
            Finish {
                dimensions: Some(2),
                normalized: true,
            },
        );
        assert_eq!(v, vec![0.6, 0.8]);
        let zero = finish_vector(
            vec![0.0; 4],
            Finish {
                dimensions: None,
                normalized: true,
            },
        );
        assert_eq!(zero, vec![0.0; 4]);
    }
}
