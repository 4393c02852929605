//! Plain-loop references for the fast kernels: obviously correct, slow, used by the tests.

use super::attention::SequenceRange;

/// `x[rows × k] · w[n × k]ᵀ (+ bias)` with f64 accumulation.
pub fn matmul_transposed(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    for r in 0..rows {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|kk| x[r * k + kk] as f64 * w[j * k + kk] as f64)
                .sum();
            out[r * n + j] = (dot + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    out
}

/// Attention with the full score matrix materialised per head, as the official code does.
pub fn attention(qkv: &[f32], sequences: &[SequenceRange], heads: usize, d: usize) -> Vec<f32> {
    let hidden = heads * d;
    let stride = 3 * hidden;
    let tokens: usize = sequences.iter().map(|s| s.start + s.len).max().unwrap_or(0);
    let mut ctx = vec![0f32; tokens * hidden];
    let scale = 1.0 / (d as f64).sqrt();
    for seq in sequences {
        for h in 0..heads {
            for i in 0..seq.len {
                let q = &qkv[(seq.start + i) * stride + h * d..][..d];
                let scores: Vec<f64> = (0..seq.len)
                    .map(|j| {
                        let k = &qkv[(seq.start + j) * stride + hidden + h * d..][..d];
                        q.iter()
                            .zip(k)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for c in 0..d {
                    let v: f64 = (0..seq.len)
                        .map(|j| {
                            exps[j] * qkv[(seq.start + j) * stride + 2 * hidden + h * d + c] as f64
                        })
                        .sum();
                    ctx[(seq.start + i) * hidden + h * d + c] = (v / total) as f32;
                }
            }
        }
    }
    ctx
}

/// A deterministic pseudo-random vector in [-1, 1): test data for the kernels' tests.
#[cfg(test)]
pub(crate) fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::cpu::{record_variant, Cpu};
    use super::super::resolve::AttentionKernel;
    use super::super::{attention, matmul_transposed, MatmulInit};
    use super::*;

    #[test]
    fn matmul_matches_reference_on_awkward_shapes() {
        for &(rows, k, n) in &[
            (1, 1, 1),
            (0, 4, 3),
            (3, 0, 2),
            (7, 13, 5),
            (17, 64, 33),
            (65, 127, 129),
            (128, 256, 96),
        ] {
            let x = noise(rows * k, 1);
            let w = noise(n * k, 2);
            let bias = noise(n, 3);
            let mut out = vec![f32::NAN; rows * n];
            matmul_transposed(
                &x,
                k,
                rows,
                k,
                &w,
                n,
                &mut out,
                MatmulInit::Bias(&bias),
                true,
            );
            let want = super::matmul_transposed(&x, rows, k, &w, n, Some(&bias));
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + k as f32).sqrt(),
                    "shape {rows}x{k}x{n} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn thin_matmul_matches_reference() {
        use super::super::matmul_thin;
        for &(rows, k, n) in &[
            (1, 1, 1),
            (0, 8, 4),
            (3, 17, 4),
            (40, 1024, 4),
            (7, 1027, 6),
            (2, 33, 8),
            (5000, 64, 2),
            (9, 100, 0),
        ] {
            let x = noise(rows * k, 4);
            let w = noise(n * k, 5);
            let want = super::matmul_transposed(&x, rows, k, &w, n, None);
            let cpu = Cpu::detected();
            for isa in cpu.test_variants() {
                record_variant("reference::thin_matmul_matches_reference", isa);
                let mut out = vec![f32::NAN; rows * n];
                matmul_thin(&x, rows, k, &w, n, &mut out, cpu.capped(isa));
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + k as f32).sqrt(),
                        "{isa}: shape {rows}x{k}x{n} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn tiled_attention_matches_reference() {
        let (heads, d) = (2, 64);
        // Lengths around the tiles (64 queries, 256 keys), packed back to back.
        let lens = [1, 2, 63, 64, 65, 255, 257, 300, 600];
        let mut sequences = Vec::new();
        let mut start = 0;
        for len in lens {
            sequences.push(SequenceRange { start, len });
            start += len;
        }
        let qkv: Vec<f32> = noise(start * 3 * heads * d, 7)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let want = super::attention(&qkv, &sequences, heads, d);
        // f32 holds rounding error; bf16 rounds Q, K, P and V to 8 significant bits, and these
        // scores reach ±50, so a logit moves by up to ~0.2 (values here are up to 3).
        let cpu = Cpu::detected();
        for isa in cpu.test_variants() {
            record_variant("reference::tiled_attention_matches_reference", isa);
            let capped = cpu.capped(isa);
            for bf16 in [false, true] {
                let plan = crate::kernels::KernelPlan::resolve(
                    if bf16 {
                        crate::Precision::Bf16
                    } else {
                        crate::Precision::F32
                    },
                    capped,
                    true,
                );
                let kernel = plan.attention;
                let tolerance = if kernel.bf16() { 6e-2 } else { 1e-5 };
                let mut ctx = vec![f32::NAN; start * heads * d];
                attention(&qkv, &mut ctx, &sequences, heads, d, (kernel, capped));
                let worst = ctx
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < tolerance,
                    "{isa}: {kernel}: max abs difference {worst}"
                );
            }
        }
        // Every kernel family this CPU can run, whatever the plan would pick.
        let families = [AttentionKernel::Reference, AttentionKernel::Gemm];
        for kernel in families {
            let mut ctx = vec![f32::NAN; start * heads * d];
            attention(&qkv, &mut ctx, &sequences, heads, d, (kernel, cpu));
            let worst = ctx
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "{kernel}: max abs difference {worst}");
        }
    }
}
