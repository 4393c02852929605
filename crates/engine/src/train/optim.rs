//! AdamW (decoupled weight decay) over an adapter's tensors, exactly as `torch.optim.AdamW`
//! steps (f32 state, the same order of operations), and the learning-rate schedule of
//! transformers' `get_linear_schedule_with_warmup`.

use crate::adapters::AdapterWeights;

/// AdamW's hyper-parameters; the defaults are PyTorch's, with sentence-transformers' lr scale.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Decoupled weight decay (per unit of learning rate).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The optimizer's state: first and second moments per tensor, and the step count.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    /// The hyper-parameters.
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: u64,
    /// First moments, one per tensor of [`AdapterWeights::tensors`].
    pub m: Vec<Vec<f32>>,
    /// Second moments, likewise.
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    /// Fresh state for tensors shaped like `params`.
    pub fn new(config: AdamWConfig, params: &AdapterWeights) -> Self {
        let zeros: Vec<Vec<f32>> = params
            .tensors()
            .iter()
            .map(|t| vec![0.0; t.len()])
            .collect();
        AdamW {
            config,
            step: 0,
            m: zeros.clone(),
            v: zeros,
        }
    }

    /// One step at learning rate `lr` (the schedule's value for this step) from `grads`.
    pub fn step(&mut self, params: &mut AdapterWeights, grads: &AdapterWeights, lr: f32) {
        self.step += 1;
        let c = self.config;
        let step = self.step as i32;
        let bias1 = 1.0 - (c.beta1 as f64).powi(step);
        let bias2_sqrt = (1.0 - (c.beta2 as f64).powi(step)).sqrt() as f32;
        let step_size = (lr as f64 / bias1) as f32;
        let decay = 1.0 - lr * c.weight_decay;
        let grads = grads.tensors();
        let params = params.tensors_mut();
        assert_eq!(params.len(), self.m.len(), "state for every tensor");
        for (((p, g), m), v) in params
            .into_iter()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p *= decay;
                *m += (g - *m) * (1.0 - c.beta1);
                *v = *v * c.beta2 + (1.0 - c.beta2) * g * g;
                let denom = v.sqrt() / bias2_sqrt + c.eps;
                *p -= step_size * (*m / denom);
            }
        }
    }
}

/// Linear warm-up from 0 to the peak over `warmup` steps, then linear decay to 0 at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Learning rate at the end of the warm-up.
    pub peak: f32,
    /// Warm-up steps.
    pub warmup: u64,
    /// Steps of the whole run.
    pub total: u64,
}

impl Schedule {
    /// The learning rate of step `step` (from 0), as `LambdaLR` gives it before that step.
    pub fn lr(&self, step: u64) -> f32 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            let rest = self.total.saturating_sub(self.warmup).max(1) as f64;
            (self.total.saturating_sub(step) as f64 / rest).max(0.0)
        };
        (self.peak as f64 * factor) as f32
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut AdapterWeights, max_norm: f32) -> f32 {
    let total: f64 = grads
        .tensors()
        .iter()
        .flat_map(|t| t.iter())
        .map(|&g| g as f64 * g as f64)
        .sum();
    let norm = total.sqrt() as f32;
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        for t in grads.tensors_mut() {
            t.iter_mut().for_each(|g| *g *= factor);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let s = Schedule {
            peak: 1.0,
            warmup: 2,
            total: 6,
        };
        let lrs: Vec<f32> = (0..7).map(|i| s.lr(i)).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
        let flat = Schedule {
            peak: 2.0,
            warmup: 0,
            total: 2,
        };
        assert_eq!((flat.lr(0), flat.lr(1)), (2.0, 1.0));
    }
}
