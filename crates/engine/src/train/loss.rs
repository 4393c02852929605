//! The InfoNCE loss with in-batch negatives, as sentence-transformers'
//! `MultipleNegativesRankingLoss` computes it, its symmetric form and its Matryoshka sum, with
//! the gradient of each pooled vector.
//!
//! For every trained width `d`, each pooled vector is cut to its first `d` components and
//! L2-normalised (`x / max(‖x‖, 1e-12)`), then with `B` queries `q`, their `B` positives `p`
//! and `K` hard negatives `n`:
//! `S[i, j] = scale · q_i · c_j` over `c = (p_0 … p_{B−1}, n_0 … n_{K−1})`, and
//! `L_fwd = mean_i (logsumexp_j S[i, j] − S[i, i])`. The symmetric form adds the passages'
//! view, `T[i, j] = scale · p_i · q_j` over the queries only, and takes `(L_fwd + L_bwd) / 2`
//! (`MultipleNegativesSymmetricRankingLoss`). The loss is the sum over the widths
//! (`MatryoshkaLoss` with unit weights). Everything is computed in f64.

/// sentence-transformers' default scale: cosine similarities times 20 (temperature 0.05).
pub const DEFAULT_SCALE: f32 = 20.0;

/// The loss's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InfoNce {
    /// Multiplies the cosine similarities (1 / temperature).
    pub scale: f32,
    /// Also the passages-to-queries direction, averaged with the forward one.
    pub symmetric: bool,
    /// The widths the loss is summed over (Matryoshka); empty: the full width only.
    pub dims: Vec<usize>,
}

impl Default for InfoNce {
    fn default() -> Self {
        InfoNce {
            scale: DEFAULT_SCALE,
            symmetric: false,
            dims: Vec::new(),
        }
    }
}

/// The loss of one batch and its gradient with respect to each pooled (un-normalised) vector.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The loss (summed over the Matryoshka widths).
    pub loss: f64,
    /// `dL/dq` per query.
    pub d_queries: Vec<Vec<f32>>,
    /// `dL/dp` per positive.
    pub d_positives: Vec<Vec<f32>>,
    /// `dL/dn` per hard negative.
    pub d_negatives: Vec<Vec<f32>>,
}

impl InfoNce {
    /// The loss of `queries` against `positives` (one each, same order) and the batch's hard
    /// `negatives`, from the pooled vectors (all the same width).
    pub fn compute(
        &self,
        queries: &[Vec<f32>],
        positives: &[Vec<f32>],
        negatives: &[Vec<f32>],
    ) -> LossOutput {
        assert_eq!(queries.len(), positives.len(), "one positive per query");
        assert!(!queries.is_empty(), "a batch has at least one pair");
        let width = queries[0].len();
        let (q, p, n) = (widen(queries), widen(positives), widen(negatives));
        let mut dq = vec![vec![0f64; width]; q.len()];
        let mut dp = vec![vec![0f64; width]; p.len()];
        let mut dn = vec![vec![0f64; width]; n.len()];
        let dims = if self.dims.is_empty() {
            vec![width]
        } else {
            self.dims.clone()
        };
        let mut loss = 0.0;
        for &d in &dims {
            assert!(
                d >= 1 && d <= width,
                "a Matryoshka width within the model's"
            );
            loss += self.at_width(d, (&q, &p, &n), (&mut dq, &mut dp, &mut dn));
        }
        LossOutput {
            loss,
            d_queries: narrow(dq),
            d_positives: narrow(dp),
            d_negatives: narrow(dn),
        }
    }

    /// The part of the (forward, non-symmetric) loss that rows `targets` of a batch of `batch`
    /// queries contribute, with their gradients: each query's term depends on itself and the
    /// batch's candidates only, so a chunk of queries is differentiated without the others'
    /// vectors (query-side training needs no GradCache pass). Summed over the chunks of a
    /// batch, equal to [`InfoNce::compute`].
    pub fn query_rows(
        &self,
        queries: &[Vec<f32>],
        targets: &[usize],
        batch: usize,
        positives: &[Vec<f32>],
        negatives: &[Vec<f32>],
    ) -> (f64, Vec<Vec<f32>>) {
        assert!(
            !self.symmetric,
            "the symmetric loss couples every query of the batch"
        );
        assert_eq!(queries.len(), targets.len(), "one target per query");
        let width = queries.first().map_or(0, Vec::len);
        let (q, c) = (widen(queries), widen(&[positives, negatives].concat()));
        let mut dq = vec![vec![0f64; width]; q.len()];
        let dims = if self.dims.is_empty() {
            vec![width]
        } else {
            self.dims.clone()
        };
        let mut loss = 0.0;
        for &d in &dims {
            let uq: Vec<Unit> = q.iter().map(|x| Unit::new(&x[..d])).collect();
            let uc: Vec<Unit> = c.iter().map(|x| Unit::new(&x[..d])).collect();
            let (a, b): (Vec<&Unit>, Vec<&Unit>) = (uq.iter().collect(), uc.iter().collect());
            let mut ga = vec![vec![0f64; d]; q.len()];
            let mut gb = vec![vec![0f64; d]; c.len()];
            let scale = self.scale as f64;
            loss += cross_entropy_rows(scale, &a, &b, targets, batch, &mut ga, &mut gb, 1.0);
            for (i, g) in ga.iter().enumerate() {
                uq[i].backward(g, &mut dq[i][..d]);
            }
        }
        (loss, narrow(dq))
    }

    /// `L_d`, adding its gradient to the full-width gradients.
    fn at_width(&self, d: usize, (q, p, n): Sets, (dq, dp, dn): SetsMut) -> f64 {
        let unit = |v: &[Vec<f64>]| -> Vec<Unit> { v.iter().map(|x| Unit::new(&x[..d])).collect() };
        let (uq, up, un) = (unit(q), unit(p), unit(n));
        let candidates: Vec<&Unit> = up.iter().chain(&un).collect();
        let scale = self.scale as f64;
        let half = if self.symmetric { 0.5 } else { 1.0 };
        // Gradients of the normalised vectors, pushed through the normalisation at the end.
        let mut gq = vec![vec![0f64; d]; q.len()];
        let mut gc = vec![vec![0f64; d]; candidates.len()];
        let queries: Vec<&Unit> = uq.iter().collect();
        let mut loss = half * cross_entropy(scale, &queries, &candidates, &mut gq, &mut gc, half);
        if self.symmetric {
            let positives: Vec<&Unit> = up.iter().collect();
            let mut gp = vec![vec![0f64; d]; p.len()];
            loss += half * cross_entropy(scale, &positives, &queries, &mut gp, &mut gq, half);
            for (c, g) in gc.iter_mut().zip(&gp) {
                add(c, g);
            }
        }
        for (i, g) in gq.iter().enumerate() {
            uq[i].backward(g, &mut dq[i][..d]);
        }
        for (j, g) in gc.iter().enumerate() {
            if j < p.len() {
                up[j].backward(g, &mut dp[j][..d]);
            } else {
                un[j - p.len()].backward(g, &mut dn[j - p.len()][..d]);
            }
        }
        loss
    }
}

fn widen(v: &[Vec<f32>]) -> Vec<Vec<f64>> {
    v.iter()
        .map(|x| x.iter().map(|&a| a as f64).collect())
        .collect()
}

fn narrow(v: Vec<Vec<f64>>) -> Vec<Vec<f32>> {
    v.into_iter()
        .map(|x| x.into_iter().map(|a| a as f32).collect())
        .collect()
}

/// Queries, positives and negatives, widened to f64.
type Sets<'a> = (&'a [Vec<f64>], &'a [Vec<f64>], &'a [Vec<f64>]);
/// Their gradients.
type SetsMut<'a> = (&'a mut [Vec<f64>], &'a mut [Vec<f64>], &'a mut [Vec<f64>]);

/// `mean_i CE(scale · a_i · b_j over j, target i)`, adding `weight ·` its gradient to `ga`, `gb`.
fn cross_entropy(
    scale: f64,
    a: &[&Unit],
    b: &[&Unit],
    ga: &mut [Vec<f64>],
    gb: &mut [Vec<f64>],
    weight: f64,
) -> f64 {
    let targets: Vec<usize> = (0..a.len()).collect();
    cross_entropy_rows(scale, a, b, &targets, a.len(), ga, gb, weight)
}

/// Rows `a` of a cross-entropy over `rows` rows in all, row `i`'s target being `b[targets[i]]`:
/// `sum_i CE_i / rows`, adding `weight ·` its gradient to `ga` and `gb`.
#[allow(clippy::too_many_arguments)]
fn cross_entropy_rows(
    scale: f64,
    a: &[&Unit],
    b: &[&Unit],
    targets: &[usize],
    rows: usize,
    ga: &mut [Vec<f64>],
    gb: &mut [Vec<f64>],
    weight: f64,
) -> f64 {
    let rows = rows as f64;
    let mut total = 0.0;
    for ((i, ai), &target) in a.iter().enumerate().zip(targets) {
        let logits: Vec<f64> = b.iter().map(|bj| scale * dot(&ai.e, &bj.e)).collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logits.iter().map(|s| (s - max).exp()).sum();
        total += max + sum.ln() - logits[target];
        for (j, (bj, s)) in b.iter().zip(&logits).enumerate() {
            let softmax = (s - max).exp() / sum;
            let ds = weight * (softmax - if target == j { 1.0 } else { 0.0 }) / rows * scale;
            axpy(&mut ga[i], ds, &bj.e);
            axpy(&mut gb[j], ds, &ai.e);
        }
    }
    total / rows
}

/// A vector cut to a width and normalised, with what its backward needs.
struct Unit {
    e: Vec<f64>,
    norm: f64,
}

impl Unit {
    fn new(x: &[f64]) -> Self {
        let norm = dot(x, x).sqrt().max(1e-12);
        Unit {
            e: x.iter().map(|v| v / norm).collect(),
            norm,
        }
    }

    /// `dx += (de − e·(e·de)) / ‖x‖`.
    fn backward(&self, de: &[f64], dx: &mut [f64]) {
        let along = dot(&self.e, de);
        for ((d, &g), &e) in dx.iter_mut().zip(de).zip(&self.e) {
            *d += (g - e * along) / self.norm;
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(y: &mut [f64], alpha: f64, x: &[f64]) {
    for (a, b) in y.iter_mut().zip(x) {
        *a += alpha * b;
    }
}

fn add(y: &mut [f64], x: &[f64]) {
    axpy(y, 1.0, x);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(count: usize, width: usize, seed: f32) -> Vec<Vec<f32>> {
        (0..count)
            .map(|i| {
                (0..width)
                    .map(|j| ((i * width + j) as f32 * 0.37 + seed).sin())
                    .collect()
            })
            .collect()
    }

    /// The analytic gradient of every form equals central differences of the loss.
    #[test]
    fn gradients_match_finite_differences() {
        let (q, p, n) = (vectors(3, 8, 0.1), vectors(3, 8, 1.3), vectors(2, 8, 2.9));
        for loss in [
            InfoNce::default(),
            InfoNce {
                symmetric: true,
                dims: vec![4, 8],
                ..InfoNce::default()
            },
        ] {
            let out = loss.compute(&q, &p, &n);
            let h = 1e-3f32;
            for (which, analytic) in [
                (0, &out.d_queries),
                (1, &out.d_positives),
                (2, &out.d_negatives),
            ] {
                for (row, grad) in analytic.iter().enumerate() {
                    for col in 0..8 {
                        let at = |delta: f32| {
                            let mut sets = [q.clone(), p.clone(), n.clone()];
                            sets[which][row][col] += delta;
                            loss.compute(&sets[0], &sets[1], &sets[2]).loss
                        };
                        let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
                        let err = (numeric - grad[col] as f64).abs();
                        assert!(
                            err < 2e-3,
                            "set {which} row {row} col {col}: {numeric} vs {}",
                            grad[col]
                        );
                    }
                }
            }
        }
    }

    /// Chunks of queries, each with its own rows, add up to the whole batch's loss and gradient.
    #[test]
    fn query_rows_add_up_to_the_batch() {
        let (q, p, n) = (vectors(5, 8, 0.1), vectors(5, 8, 1.3), vectors(3, 8, 2.9));
        let loss = InfoNce {
            dims: vec![4, 8],
            ..InfoNce::default()
        };
        let whole = loss.compute(&q, &p, &n);
        let (a, da) = loss.query_rows(&q[..2], &[0, 1], 5, &p, &n);
        let (b, db) = loss.query_rows(&q[2..], &[2, 3, 4], 5, &p, &n);
        assert!((a + b - whole.loss).abs() < 1e-12);
        for (x, y) in da.iter().chain(&db).zip(&whole.d_queries) {
            assert!(x.iter().zip(y).all(|(u, v)| (u - v).abs() < 1e-7));
        }
    }

    /// Perfectly separated pairs at scale 20 cost almost nothing; identical candidates cost ln(B+K).
    #[test]
    fn loss_values_at_the_extremes() {
        let basis: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..3).map(|j| (i == j) as u8 as f32).collect())
            .collect();
        let separated = InfoNce::default().compute(&basis, &basis, &[]).loss;
        assert!(separated < 1e-7, "{separated}");
        let same = vec![vec![1.0, 0.0, 0.0]; 3];
        let tied = InfoNce::default().compute(&same, &same, &same[..2]).loss;
        assert!((tied - 5f64.ln()).abs() < 1e-9, "{tied}");
    }
}
