//! Element-wise and row-wise activations: ReLU, softmax, log-softmax, and softmax cross-entropy.

use crate::element::{standard, zeros, zeros_vec, Real};
use crate::error::{check_grad_output, shape_str, Error, Result};
use crate::parallel;
use ndarray::{ArrayD, ArrayView1, ArrayViewD, Axis};

/// Elements per parallel task of element-wise operations (large enough to amortise the split).
const ELEMWISE_CHUNK: usize = 1 << 15;

/// `max(x, 0)` element-wise; NaN stays NaN (as PyTorch). Any shape.
pub fn relu<T: Real>(input: ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
    let x = standard(input, "input copy")?;
    let mut out = zeros::<T>(x.shape(), "output")?;
    let src = x.as_slice().expect("standard layout");
    let dst = out.as_slice_mut().expect("fresh array");
    let len = dst.len();
    parallel::for_each_chunk(dst, ELEMWISE_CHUNK, len, |i, d| {
        for (o, &v) in d.iter_mut().zip(&src[i * ELEMWISE_CHUNK..]) {
            *o = if v > T::zero() || v.is_nan() { v } else { T::zero() };
        }
    });
    Ok(out)
}

/// ReLU backward: 0 where `input <= 0`, else `grad_output` (PyTorch's rule: a NaN input passes
/// its gradient through). Both of one shape.
pub fn relu_backward<T: Real>(grad_output: ArrayViewD<'_, T>, input: ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
    check_grad_output(grad_output.shape(), input.shape(), input.shape())?;
    let (g, x) = (standard(grad_output, "grad_output copy")?, standard(input, "input copy")?);
    let mut out = zeros::<T>(x.shape(), "grad_input")?;
    let (g, x) = (g.as_slice().expect("standard layout"), x.as_slice().expect("standard layout"));
    let dst = out.as_slice_mut().expect("fresh array");
    let len = dst.len();
    parallel::for_each_chunk(dst, ELEMWISE_CHUNK, len, |i, d| {
        let (g, x) = (&g[i * ELEMWISE_CHUNK..], &x[i * ELEMWISE_CHUNK..]);
        for ((o, &gv), &xv) in d.iter_mut().zip(g).zip(x) {
            *o = if xv <= T::zero() { T::zero() } else { gv };
        }
    });
    Ok(out)
}

/// Softmax along `axis` (negative counts from the end). Any shape; a 0-d input is taken as one
/// element along axis 0 or -1 (PyTorch's rule), so its softmax is 1 and its log-softmax 0.
pub fn softmax<T: Real>(input: ArrayViewD<'_, T>, axis: isize) -> Result<ArrayD<T>> {
    normalize_along(input, axis, false)
}

/// Log-softmax along `axis`: `x - max - log(sum(exp(x - max)))`, stable for large inputs.
pub fn log_softmax<T: Real>(input: ArrayViewD<'_, T>, axis: isize) -> Result<ArrayD<T>> {
    normalize_along(input, axis, true)
}

fn resolve_axis(axis: isize, ndim: usize, shape: &[usize]) -> Result<usize> {
    let resolved = if axis < 0 { axis + ndim as isize } else { axis };
    if resolved < 0 || resolved >= ndim as isize {
        return Err(Error::invalid(
            "axis",
            format!("axis {axis} is out of range for input of shape {}", shape_str(shape)),
        ));
    }
    Ok(resolved as usize)
}

fn normalize_along<T: Real>(input: ArrayViewD<'_, T>, axis: isize, log: bool) -> Result<ArrayD<T>> {
    if input.ndim() == 0 {
        // A scalar is one element along axis 0 (or -1), as PyTorch wraps dims of 0-d tensors.
        resolve_axis(axis, 1, input.shape())?;
        let out = normalize_along(input.insert_axis(Axis(0)), 0, log)?;
        return Ok(out.index_axis_move(Axis(0), 0));
    }
    let shape = input.shape().to_vec();
    let axis = resolve_axis(axis, shape.len(), &shape)?;
    let x = standard(input, "input copy")?;
    let mut out = zeros::<T>(&shape, "output")?;
    let (len, inner): (usize, usize) = (shape[axis], shape[axis + 1..].iter().product());
    let block = len * inner;
    if block == 0 {
        return Ok(out);
    }
    let src = x.as_slice().expect("standard layout");
    let dst = out.as_slice_mut().expect("fresh array");
    let work = dst.len() * 8;
    parallel::for_each_chunk(dst, block, work, |b, d| {
        let s = &src[b * block..][..block];
        {
            for i in 0..inner {
                // Column i of the (len, inner) block: elements i, i + inner, ...
                let at = |j: usize| s[j * inner + i];
                let m = (0..len).map(at).fold(T::neg_infinity(), |m, v| if v > m { v } else { m });
                let sum: T = (0..len).map(|j| (at(j) - m).exp()).sum();
                if log {
                    let lse = m + sum.ln();
                    for j in 0..len {
                        d[j * inner + i] = at(j) - lse;
                    }
                } else {
                    for j in 0..len {
                        d[j * inner + i] = (at(j) - m).exp() / sum;
                    }
                }
            }
        }
    });
    Ok(out)
}

/// Checks `logits (N, C)` and integer `target (N,)` for cross-entropy.
fn check_cross_entropy(logits: &[usize], target: &[i64]) -> Result<()> {
    if logits.len() != 2 {
        return Err(Error::invalid(
            "logits",
            format!("logits must have shape (N, C), got {}", shape_str(logits)),
        ));
    }
    let (n, c) = (logits[0], logits[1]);
    if target.len() != n {
        return Err(Error::invalid(
            "target",
            format!("target must have shape ({n},) to match logits {}, got ({},)", shape_str(logits), target.len()),
        ));
    }
    if n == 0 {
        return Err(Error::invalid("logits", "cross_entropy needs at least one sample, got logits of shape (0, C)"));
    }
    if let Some((i, &t)) = target.iter().enumerate().find(|(_, &t)| t < 0 || t as u64 >= c as u64) {
        return Err(Error::invalid(
            "target",
            format!("target[{i}] = {t} is not a class index in [0, {c}) (logits shape {})", shape_str(logits)),
        ));
    }
    Ok(())
}

/// Mean softmax cross-entropy of `logits (N, C)` against class indices `target (N,)`.
///
/// The per-sample losses are summed in a fixed order (in f64), so the result does not depend on
/// the thread count.
pub fn cross_entropy<T: Real>(logits: ArrayViewD<'_, T>, target: ArrayView1<'_, i64>) -> Result<T> {
    let target = target.to_vec();
    check_cross_entropy(logits.shape(), &target)?;
    let n = logits.shape()[0];
    let mut losses = zeros_vec::<f64>(n, "losses")?;
    let work = logits.len() * 8;
    parallel::for_each_chunk(&mut losses, 1, work, |i, loss| {
        let row = logits.index_axis(Axis(0), i);
        let m = row.iter().fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
        let sum: T = row.iter().map(|&v| (v - m).exp()).sum();
        let lse = m + sum.ln();
        loss[0] = (lse - row[target[i] as usize]).to_f64().unwrap_or(f64::NAN);
    });
    let total: f64 = losses.iter().sum();
    Ok(T::from_f64(total / n as f64).expect("float conversion"))
}

/// Gradient of the mean cross-entropy with respect to `logits (N, C)`:
/// `(softmax(logits) - onehot(target)) / N`.
pub fn cross_entropy_backward<T: Real>(logits: ArrayViewD<'_, T>, target: ArrayView1<'_, i64>) -> Result<ArrayD<T>> {
    let target = target.to_vec();
    check_cross_entropy(logits.shape(), &target)?;
    let mut grad = softmax(logits, -1)?;
    let (n, c) = (grad.shape()[0], grad.shape()[1]);
    let scale = T::one() / T::from_usize(n).expect("batch size fits a float");
    let dst = grad.as_slice_mut().expect("fresh array");
    let work = dst.len();
    parallel::for_each_chunk(dst, c, work, |i, row| {
        row[target[i] as usize] -= T::one();
        for v in row.iter_mut() {
            *v *= scale;
        }
    });
    Ok(grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, arr2, IxDyn};

    #[test]
    fn relu_keeps_nan() {
        let x = ArrayD::from_shape_vec(IxDyn(&[4]), vec![-1.0, 0.0, 2.0, f32::NAN]).unwrap();
        let y = relu(x.view()).unwrap();
        assert_eq!(&y.as_slice().unwrap()[..3], &[0.0, 0.0, 2.0]);
        assert!(y[3].is_nan());
    }

    #[test]
    fn relu_backward_passes_the_gradient_where_input_is_nan() {
        let x = ArrayD::from_shape_vec(IxDyn(&[4]), vec![f64::NAN, 0.0, -1.0, 2.0]).unwrap();
        let g = ArrayD::from_shape_vec(IxDyn(&[4]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(relu_backward(g.view(), x.view()).unwrap().as_slice().unwrap(), &[1.0, 0.0, 0.0, 4.0]);
    }

    #[test]
    fn softmax_of_a_scalar_is_one() {
        let x = ndarray::arr0(2.5f32).into_dyn();
        assert_eq!(softmax(x.view(), -1).unwrap(), ndarray::arr0(1.0f32).into_dyn());
        assert_eq!(log_softmax(x.view(), 0).unwrap(), ndarray::arr0(0.0f32).into_dyn());
        assert_eq!(softmax(x.view(), 1).unwrap_err().arg(), "axis");
    }

    #[test]
    fn softmax_rows_sum_to_one_and_log_matches() {
        let x = arr2(&[[1.0f64, 2.0, 3.0], [1000.0, 1000.0, 1000.0]]).into_dyn();
        let s = softmax(x.view(), -1).unwrap();
        let l = log_softmax(x.view(), 1).unwrap();
        for r in 0..2 {
            let sum: f64 = (0..3).map(|c| s[[r, c]]).sum();
            assert!((sum - 1.0).abs() < 1e-12);
            for c in 0..3 {
                assert!((l[[r, c]] - s[[r, c]].ln()).abs() < 1e-12);
            }
        }
        let s0 = softmax(x.view(), 0).unwrap();
        assert!((s0[[0, 0]] + s0[[1, 0]] - 1.0).abs() < 1e-12);
        assert_eq!(softmax(x.view(), 2).unwrap_err().arg(), "axis");
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_c() {
        let x = arr2(&[[0.0f64, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]]);
        let loss = cross_entropy(x.view().into_dyn(), arr1(&[1i64, 3]).view()).unwrap();
        assert!((loss - 4f64.ln()).abs() < 1e-12);
        assert_eq!(cross_entropy(x.view().into_dyn(), arr1(&[1i64, 4]).view()).unwrap_err().arg(), "target");
        assert_eq!(cross_entropy(x.view().into_dyn(), arr1(&[1i64]).view()).unwrap_err().arg(), "target");
    }
}
