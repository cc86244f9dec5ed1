//! Optimiser updates, in place over a parameter's values: SGD (momentum, dampening, Nesterov,
//! L2 weight decay) and Adam (bias-corrected, L2 weight decay), as `torch.optim` defines them.
//!
//! One pass over each parameter instead of the half-dozen NumPy expressions (and their
//! temporaries) per parameter that a Python step takes. Each element is computed with the same
//! operations in the same order as `torch.optim`'s formulas written out elementwise, every
//! hyper-parameter first rounded to the element type, so a float32 step equals NumPy's float32
//! arithmetic on the same formula bit for bit (no fused multiply-adds).

use crate::element::Real;
use crate::error::{Error, Result};

/// SGD's hyper-parameters, in f64 as the caller holds them.
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// Adam's hyper-parameters for one step `t`: `step_size = lr / (1 - beta1^t)` and
/// `bias2_sqrt = sqrt(1 - beta2^t)`, computed by the caller in f64.
#[derive(Clone, Copy, Debug)]
pub struct Adam {
    pub step_size: f64,
    pub bias2_sqrt: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

fn check_len(name: &'static str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(Error::invalid(name, format!("{name} has {len} elements, the parameter {want}")));
    }
    Ok(())
}

fn cast<T: Real>(v: f64) -> T {
    T::from_f64(v).expect("a float converts to f32 or f64")
}

/// One SGD step on `param` with gradient `grad`:
/// `g = grad + wd * p`; with momentum, `buf = g` on the first step (`first`), else
/// `buf = momentum * buf + (1 - dampening) * g`, then `g = g + momentum * buf` (Nesterov) or
/// `g = buf`; finally `p = p - lr * g`. `buf` is unused (may be empty) without momentum.
pub fn sgd_step<T: Real>(h: &Sgd, param: &mut [T], grad: &[T], buf: &mut [T], first: bool) -> Result<()> {
    check_len("grad", grad.len(), param.len())?;
    let momentum = h.momentum != 0.0;
    if momentum {
        check_len("momentum_buffer", buf.len(), param.len())?;
    }
    let (lr, mu, keep, wd) = (cast::<T>(h.lr), cast::<T>(h.momentum), cast::<T>(1.0 - h.dampening), cast::<T>(h.weight_decay));
    let decay = h.weight_decay != 0.0;
    for (i, (p, &gr)) in param.iter_mut().zip(grad).enumerate() {
        let mut g = if decay { gr + wd * *p } else { gr };
        if momentum {
            let b = &mut buf[i];
            *b = if first { g } else { *b * mu + keep * g };
            g = if h.nesterov { g + mu * *b } else { *b };
        }
        *p -= lr * g;
    }
    Ok(())
}

/// One Adam step on `param` with gradient `grad` and moments `m`, `v`:
/// `g = grad + wd * p`, `m = beta1 * m + (1 - beta1) * g`, `v = beta2 * v + (1 - beta2) * g^2`,
/// `p = p - step_size * m / (sqrt(v) / bias2_sqrt + eps)`.
pub fn adam_step<T: Real>(h: &Adam, param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T]) -> Result<()> {
    check_len("grad", grad.len(), param.len())?;
    check_len("exp_avg", m.len(), param.len())?;
    check_len("exp_avg_sq", v.len(), param.len())?;
    let (b1, b2, k1, k2) = (cast::<T>(h.beta1), cast::<T>(h.beta2), cast::<T>(1.0 - h.beta1), cast::<T>(1.0 - h.beta2));
    let (step, bias2, eps, wd) = (cast::<T>(h.step_size), cast::<T>(h.bias2_sqrt), cast::<T>(h.eps), cast::<T>(h.weight_decay));
    let decay = h.weight_decay != 0.0;
    for (((p, &gr), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = if decay { gr + wd * *p } else { gr };
        *m = *m * b1 + k1 * g;
        *v = *v * b2 + k2 * (g * g);
        let denom = v.sqrt() / bias2 + eps;
        *p -= step * (*m / denom);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_follows_the_formula() {
        let h = Sgd { lr: 0.1, momentum: 0.9, dampening: 0.5, weight_decay: 0.01, nesterov: false };
        let (mut p, g, mut buf) = (vec![1.0f64, -2.0], vec![0.5, 0.25], vec![0.0; 2]);
        sgd_step(&h, &mut p, &g, &mut buf, true).unwrap();
        // First step: buf = g + wd p; p -= lr buf.
        let b0 = [0.5 + 0.01, 0.25 - 0.02];
        assert_eq!(buf, b0);
        assert_eq!(p, [1.0 - 0.1 * b0[0], -2.0 - 0.1 * b0[1]]);
        let p1 = p.clone();
        sgd_step(&h, &mut p, &g, &mut buf, false).unwrap();
        for i in 0..2 {
            let gi = g[i] + 0.01 * p1[i];
            let bi = b0[i] * 0.9 + 0.5 * gi;
            assert_eq!(buf[i], bi);
            assert_eq!(p[i], p1[i] - 0.1 * bi);
        }
        // Nesterov, no momentum buffer needed without momentum.
        let plain = Sgd { lr: 0.5, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false };
        let mut q = vec![1.0f32];
        sgd_step(&plain, &mut q, &[2.0], &mut [], false).unwrap();
        assert_eq!(q, [0.0]);
        assert!(sgd_step(&h, &mut q, &[1.0, 2.0], &mut [0.0], false).is_err());
    }

    #[test]
    fn adam_follows_the_formula() {
        let h = Adam { step_size: 0.01 / (1.0 - 0.9), bias2_sqrt: (1.0f64 - 0.999).sqrt(), beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let (mut p, g, mut m, mut v) = (vec![1.0f64, 1.0], vec![0.3, -4.0], vec![0.0; 2], vec![0.0; 2]);
        adam_step(&h, &mut p, &g, &mut m, &mut v).unwrap();
        // First step: p moves by lr * sign(g) (up to eps).
        assert!((p[0] - 0.99).abs() < 1e-7 && (p[1] - 1.01).abs() < 1e-7, "{p:?}");
        assert!(adam_step(&h, &mut p, &g, &mut m, &mut [0.0]).is_err());
    }
}
