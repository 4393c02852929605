//! Row-wise LayerNorm (with the residual add fused in) and the exact erf GELU.

use rayon::prelude::*;

use super::cpu::{vectorized, Cpu};

/// Rows per parallel task: enough work per task to amortise the scheduling.
const ROWS_PER_TASK: usize = 16;

/// `x = LayerNorm(x + residual)` row by row, in place (post-LN block).
pub fn add_residual_layer_norm(
    x: &mut [f32],
    residual: &[f32],
    width: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    cpu: Cpu,
) {
    assert_eq!(x.len(), residual.len());
    x.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(residual.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(xs, rs)| {
            for (row, res) in xs.chunks_exact_mut(width).zip(rs.chunks_exact(width)) {
                for (v, r) in row.iter_mut().zip(res) {
                    *v += *r;
                }
                normalize_row(row, weight, bias, eps, cpu);
            }
        });
}

/// `x = LayerNorm(x)` row by row, in place.
pub fn layer_norm_in_place(
    x: &mut [f32],
    width: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    cpu: Cpu,
) {
    x.par_chunks_mut(width * ROWS_PER_TASK).for_each(|xs| {
        for row in xs.chunks_exact_mut(width) {
            normalize_row(row, weight, bias, eps, cpu);
        }
    });
}

/// One LayerNorm row: mean and biased variance accumulated in f64 (more exact than the
/// reference's f32, so the two differ by rounding only), then `(x - mean) / sqrt(var + eps)`.
fn normalize_row(row: &mut [f32], weight: &[f32], bias: &[f32], eps: f32, cpu: Cpu) {
    vectorized!(cpu, fn(row: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) { normalize_row_generic(row, weight, bias, eps) })
}

/// f64 lanes of the row sums: one chain of additions per lane, so that the sums vectorise
/// instead of waiting on each other (a single chain took 7 % of a bf16 forward pass).
const SUM_LANES: usize = 16;

#[inline(always)]
fn normalize_row_generic(row: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = row.len() as f64;
    let mean = lane_sum(row, |v| v as f64) / n;
    let var = lane_sum(row, |v| (v as f64 - mean).powi(2)) / n;
    let inv_std = (1.0 / (var + eps as f64).sqrt()) as f32;
    let mean = mean as f32;
    for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
        *v = (*v - mean) * inv_std * w + b;
    }
}

/// `Σ term(v)` over `row`, in [`SUM_LANES`] independent f64 sums.
#[inline(always)]
fn lane_sum(row: &[f32], term: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; SUM_LANES];
    let mut chunks = row.chunks_exact(SUM_LANES);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += term(v);
        }
    }
    chunks.remainder().iter().map(|&v| term(v)).sum::<f64>() + lanes.iter().sum::<f64>()
}

/// Exact GELU, `x · Φ(x) = 0.5 · x · (1 + erf(x / √2))`, in place (not the tanh approximation).
///
/// erf is the Abramowitz–Stegun 7.1.26 rational form (absolute error ≤ 1.5e-7), the same one
/// PyTorch's vectorised CPU GELU uses, so it vectorises and tracks the reference closely.
pub fn gelu_erf_in_place(x: &mut [f32], cpu: Cpu) {
    x.par_chunks_mut(1 << 14)
        .for_each(|chunk| gelu_slice(chunk, cpu));
}

/// [`gelu_erf_in_place`] on one thread (product epilogues call it on each output block).
pub fn gelu_slice(chunk: &mut [f32], cpu: Cpu) {
    vectorized!(cpu, fn(chunk: &mut [f32]) { gelu_generic(chunk) })
}

#[inline(always)]
fn gelu_generic(chunk: &mut [f32]) {
    for v in chunk {
        *v = gelu_fast(*v);
    }
}

/// GELU with the vectorisable erf.
#[inline(always)]
pub fn gelu_fast(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_as(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf by Abramowitz–Stegun 7.1.26: `1 − t·P(t)·e^(−z²)`, `t = 1 / (1 + 0.3275911·|z|)`.
#[inline(always)]
fn erf_as(z: f32) -> f32 {
    erf_as_with(z, super::softmax::exp(-z * z))
}

/// [`erf_as`] with `e^(−z²)` given (the GELU backward shares it with the normal density).
#[inline(always)]
fn erf_as_with(z: f32, exp_minus_z2: f32) -> f32 {
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    let r = 1.0 - poly * exp_minus_z2;
    if z < 0.0 {
        -r
    } else {
        r
    }
}

/// The exact GELU's backward, in place: `dg[i] ·= GELU'(u[i]) = Φ(u) + u·φ(u)`, `Φ` from the
/// forward's erf and `φ(u) = e^(−u²/2)/√(2π)` from the same exponential (so one `exp` per
/// value), vectorised as the forward is. Relative to the f64 formula: ≤ 3e-7 (test below).
pub fn gelu_backward_in_place(u: &[f32], dg: &mut [f32], cpu: Cpu) {
    assert_eq!(u.len(), dg.len(), "one gradient per activation");
    dg.par_chunks_mut(1 << 14)
        .zip(u.par_chunks(1 << 14))
        .for_each(|(dg, u)| {
            vectorized!(cpu, fn(dg: &mut [f32], u: &[f32]) { gelu_backward_generic(dg, u) })
        });
}

#[inline(always)]
fn gelu_backward_generic(dg: &mut [f32], u: &[f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for (g, &u) in dg.iter_mut().zip(u) {
        let e = super::softmax::exp(-0.5 * u * u);
        let cdf = 0.5 * (1.0 + erf_as_with(u * std::f32::consts::FRAC_1_SQRT_2, e));
        *g *= cdf + u * e * INV_SQRT_2PI;
    }
}

/// Exact GELU of one value.
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    // erf in f64 (musl's, via the `libm` crate), rounded once at the end.
    let erf = libm::erf(x as f64 * std::f64::consts::FRAC_1_SQRT_2);
    (0.5 * x as f64 * (1.0 + erf)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gelu_backward_matches_the_f64_derivative_on_every_variant() {
        let u: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) / 250.0).collect();
        let dg: Vec<f32> = (0..u.len()).map(|i| 1.0 - (i % 5) as f32 * 0.5).collect();
        let host = Cpu::detected();
        for isa in host.test_variants() {
            crate::kernels::cpu::record_variant("elementwise::gelu_backward", isa);
            let cpu = host.capped(isa);
            let mut got = dg.clone();
            gelu_backward_in_place(&u, &mut got, cpu);
            for ((&u, &g), &dg) in u.iter().zip(&got).zip(&dg) {
                let x = u as f64;
                let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let want = dg as f64 * (cdf + x * pdf);
                assert!(
                    (g as f64 - want).abs() <= 3e-7 * (1.0 + want.abs()),
                    "{}: u {u}: {g} against {want}",
                    cpu.level()
                );
            }
        }
    }

    #[test]
    fn erf_matches_known_values() {
        // erf values from tables (to 15 digits).
        let cases = [
            (0.0, 0.0),
            (0.1, 0.112462916018285),
            (0.5, 0.520499877813047),
            (1.0, 0.842700792949715),
            (2.0, 0.995322265018953),
            (3.5, 0.999999256901628),
            (5.0, 0.999999999998463),
            (-1.0, -0.842700792949715),
        ];
        for (x, want) in cases {
            assert!(
                (libm::erf(x) - want).abs() < 1e-13,
                "erf({x}) = {}",
                libm::erf(x)
            );
        }
    }

    #[test]
    fn gelu_is_exact_not_tanh() {
        // gelu(1) = 0.5 · (1 + erf(1/√2)) = 0.841344746…; the tanh form gives 0.841191…
        assert!((gelu_erf(1.0) - 0.841_344_8).abs() < 1e-7);
        assert!((gelu_erf(-3.0) - (-0.004_049_694)).abs() < 1e-8);
    }

    #[test]
    fn fast_gelu_tracks_the_exact_one() {
        let mut worst = 0f32;
        let mut x = -12.0f32;
        while x < 12.0 {
            let mut v = [x];
            gelu_erf_in_place(&mut v, Cpu::detected());
            worst = worst.max((v[0] - gelu_erf(x)).abs() / x.abs().max(1.0));
            x += 0.0037;
        }
        assert!(worst < 2e-7, "worst scaled difference {worst:e}");
    }

    #[test]
    fn layer_norm_matches_definition() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm_in_place(&mut x, 4, &[1.0; 4], &[0.5; 4], 1e-5, Cpu::detected());
        let inv = 1.0 / (1.25f64 + 1e-5).sqrt();
        for (v, raw) in x.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((*v as f64 - ((raw - 2.5) * inv + 0.5)).abs() < 1e-6);
        }
    }
}
