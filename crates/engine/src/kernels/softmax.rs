//! The pieces of an online softmax over one row of scores: scale-and-max, then exp-and-sum.
//!
//! `exp` is the hot spot of long-sequence attention (16 heads × n² calls per layer), so it is a
//! polynomial that the compiler vectorises, compiled once per instruction set and picked at run
//! time: Cephes' `expf` reduction (x = n·ln2 + r, |r| ≤ ln2/2) with its degree-6 polynomial,
//! relative error under 2e-7 (checked against `f64::exp` in the tests).

/// Lanes of the partial reductions (one AVX-512 register of f32).
const LANES: usize = 16;

use super::cpu::{vectorized, Cpu};

/// Multiplies `row` by `scale` in place and returns its maximum.
pub fn scale_and_max(row: &mut [f32], scale: f32, cpu: Cpu) -> f32 {
    vectorized!(cpu, fn(row: &mut [f32], scale: f32) -> f32 { scale_and_max_generic(row, scale) })
}

/// Replaces each `s` of `row` by `exp(s − max)` and returns their sum.
pub fn exp_and_sum(row: &mut [f32], max: f32, cpu: Cpu) -> f32 {
    vectorized!(cpu, fn(row: &mut [f32], max: f32) -> f32 { exp_and_sum_generic(row, max) })
}

#[inline(always)]
fn scale_and_max_generic(row: &mut [f32], scale: f32) -> f32 {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (m, s) in max.iter_mut().zip(chunk.iter_mut()) {
            *s *= scale;
            *m = if *s > *m { *s } else { *m };
        }
    }
    let mut best = f32::NEG_INFINITY;
    for s in chunks.into_remainder() {
        *s *= scale;
        best = best.max(*s);
    }
    max.iter().fold(best, |a, &b| a.max(b))
}

#[inline(always)]
fn exp_and_sum_generic(row: &mut [f32], max: f32) -> f32 {
    let mut sum = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (acc, s) in sum.iter_mut().zip(chunk.iter_mut()) {
            *s = exp(*s - max);
            *acc += *s;
        }
    }
    let mut total = 0f32;
    for s in chunks.into_remainder() {
        *s = exp(*s - max);
        total += *s;
    }
    sum.iter().sum::<f32>() + total
}

/// Below this, `exp` returns exactly 0: e^-60 ≈ 9e-27 is far under f32's precision next to the
/// row maximum's 1, and letting such values through makes `P·V` produce subnormal numbers, which
/// cost a microcode assist per operation on Intel CPUs (seen: attention 5× slower).
const EXP_CUTOFF: f32 = -60.0;

/// `e^x` for x ≤ 0 (scores minus their maximum); exactly 0 below [`EXP_CUTOFF`].
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest with the 1.5·2^23 trick: no call, so the loop vectorises.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // 2^n through the exponent bits; n is in [-126, 127] after the clamp. Adding 1.5·2^23 + 127
    // puts the integer n + 127 in the low mantissa bits: pure bit operations, where `n as i32`
    // (a saturating cast) would be compiled lane by lane and cost more than the polynomial.
    let biased = (n + (ROUND + 127.0)).to_bits() & 0x3F_FFFF;
    let e = y * f32::from_bits(biased << 23);
    if x < EXP_CUTOFF {
        0.0
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -59.9f32;
        while x <= 10.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
            x += 0.001_7;
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-61.0), 0.0);
        assert_eq!(exp(-200.0), 0.0);
    }

    #[test]
    fn row_helpers_match_scalar_loops() {
        for len in [0, 1, 15, 16, 17, 100, 257] {
            let mut row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let plain: Vec<f32> = row.iter().map(|v| v * 0.125).collect();
            let max = scale_and_max(&mut row, 0.125, Cpu::detected());
            assert_eq!(row, plain);
            assert_eq!(max, plain.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
            let sum = exp_and_sum(&mut row, max, Cpu::detected());
            let want: f64 = plain.iter().map(|v| ((v - max) as f64).exp()).sum();
            assert!(
                (sum as f64 - want).abs() <= 1e-6 * want.max(1.0),
                "len {len}: {sum} vs {want}"
            );
        }
    }
}
