//! Rotary position embeddings in the rotate-half (GPT-NeoX) layout.
//!
//! The frequencies follow the reference: `inv_freq[i] = 1 / base^(2i/d)` and `θ = pos · inv_freq[i]`
//! in f32, then cos/sin of that f32 angle (computed in f64 and rounded once).

/// cos/sin of every position up to a maximum, for one head width.
pub struct RotaryTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RotaryTable {
    /// A table for `positions` positions and heads of width `head_dim`.
    pub fn new(head_dim: usize, base: f64, positions: usize) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0f32 / (base as f32).powf(exponent)
            })
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for &f in &inv_freq {
                let theta = pos as f32 * f;
                cos.push((theta as f64).cos() as f32);
                sin.push((theta as f64).sin() as f32);
            }
        }
        RotaryTable { half, cos, sin }
    }

    /// The cos and sin tables, `positions × half` each (the GPU uploads them).
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// Number of positions covered.
    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates one head vector `x` (width `2·half`) for position `pos`:
    /// `out[i] = x[i]·cos − x[i+h]·sin`, `out[i+h] = x[i+h]·cos + x[i]·sin`.
    #[inline]
    pub fn rotate(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let cos = &self.cos[pos * h..(pos + 1) * h];
        let sin = &self.sin[pos * h..(pos + 1) * h];
        let (lo, hi) = x.split_at_mut(h);
        for i in 0..h {
            let (a, b) = (lo[i], hi[i]);
            lo[i] = a * cos[i] - b * sin[i];
            hi[i] = b * cos[i] + a * sin[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_pairs_are_half_apart() {
        let table = RotaryTable::new(4, 20000.0, 3);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        table.rotate(&mut x, 0);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        // Position 1, pair (x0, x2) turns by θ = 1 (inv_freq[0] = 1).
        let mut x = [1.0, 0.0, 0.0, 0.0];
        table.rotate(&mut x, 1);
        assert!((x[0] - 1f32.cos()).abs() < 1e-7 && (x[2] - 1f32.sin()).abs() < 1e-7);
        assert_eq!(x[1], 0.0);
        // Pair (x1, x3) turns by 1/√20000.
        let mut x = [0.0, 1.0, 0.0, 0.0];
        table.rotate(&mut x, 2);
        let theta = 2.0 / 20000f64.sqrt();
        assert!((x[3] as f64 - theta.sin()).abs() < 1e-6);
    }
}
