//! Retrieval figures of a query set against its own corpus: each query has one relevant
//! passage (its positive) among every positive and negative of the set.

use serde::{Deserialize, Serialize};

/// recall@1, recall@10, MRR@10 and nDCG@10 (binary relevance, one relevant passage per query).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    /// Queries scored.
    pub queries: usize,
    /// Passages ranked for each (distinct positives and negatives).
    pub corpus: usize,
    /// Fraction of queries whose positive ranks first.
    pub recall_at_1: f64,
    /// Fraction of queries whose positive ranks first.
    pub recall_at_10: f64,
    /// Mean reciprocal rank, 0 beyond rank 10.
    pub mrr_at_10: f64,
    /// Mean `1 / log2(rank + 1)`, 0 beyond rank 10.
    pub ndcg_at_10: f64,
}

impl RetrievalMetrics {
    /// Ranks `corpus` by dot product for each query (L2-normalised vectors: cosine) and scores
    /// the rank of `relevant[i]` for query `i`. Ties rank the lower corpus index first.
    pub fn compute(queries: &[Vec<f32>], corpus: &[Vec<f32>], relevant: &[usize]) -> Self {
        assert_eq!(
            queries.len(),
            relevant.len(),
            "one relevant passage per query"
        );
        let (mut r1, mut r10, mut mrr, mut ndcg) = (0.0, 0.0, 0.0, 0.0);
        for (q, &want) in queries.iter().zip(relevant) {
            let score =
                |d: &Vec<f32>| -> f64 { q.iter().zip(d).map(|(a, b)| *a as f64 * *b as f64).sum() };
            let target = score(&corpus[want]);
            let above = corpus
                .iter()
                .enumerate()
                .filter(|(j, d)| {
                    let s = score(d);
                    s > target || (s == target && *j < want)
                })
                .count();
            let rank = above + 1;
            if rank == 1 {
                r1 += 1.0;
            }
            if rank <= 10 {
                r10 += 1.0;
                mrr += 1.0 / rank as f64;
                ndcg += 1.0 / ((rank + 1) as f64).log2();
            }
        }
        let n = queries.len().max(1) as f64;
        RetrievalMetrics {
            queries: queries.len(),
            corpus: corpus.len(),
            recall_at_1: r1 / n,
            recall_at_10: r10 / n,
            mrr_at_10: mrr / n,
            ndcg_at_10: ndcg / n,
        }
    }

    /// `recall@1 0.812  recall@10 0.990  MRR@10 0.871  nDCG@10 0.900`.
    pub fn summary(&self) -> String {
        format!(
            "recall@1 {:.3}  recall@10 {:.3}  MRR@10 {:.3}  nDCG@10 {:.3}",
            self.recall_at_1, self.recall_at_10, self.mrr_at_10, self.ndcg_at_10
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_give_the_textbook_figures() {
        let corpus: Vec<Vec<f32>> = (0..12).map(|i| vec![1.0 - i as f32 * 0.05, 0.0]).collect();
        // Every query is the same direction: passage 0 ranks 1st, passage 2 ranks 3rd, 11 ranks 12th.
        let q = vec![vec![1.0, 0.0]; 3];
        let m = RetrievalMetrics::compute(&q, &corpus, &[0, 2, 11]);
        assert_eq!(m.recall_at_1, 1.0 / 3.0);
        assert_eq!(m.recall_at_10, 2.0 / 3.0);
        assert!((m.mrr_at_10 - (1.0 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((m.ndcg_at_10 - (1.0 + 0.5) / 3.0).abs() < 1e-12);
    }
}
