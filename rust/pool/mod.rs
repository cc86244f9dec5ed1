//! Max, average and adaptive average pooling in 1, 2 and 3 spatial dimensions, forward and
//! backward.
//!
//! The kernels work on whole rows (`plan.rs`): a window is a list of input rows times a list of
//! column taps, and each tap of a row of outputs is one contiguous slice of the input row split
//! into `stride` phases, so the inner loops are element-wise over slices and vectorise (AVX2 or
//! SSE4.1 chosen at run time, `simd.rs`). Max and average pooling keep the definition's scan
//! order (z, y, x, as PyTorch's CPU loops), so their results are bitwise those of the generic
//! loops in `windows.rs`: NaN payloads, signed zeros, argmax ties and rounding of sums included.
//! Adaptive pooling sums columns first (see `avg.rs`).
//!
//! Parallel tasks are (plane, block of rows) (`plan::for_each_block`), and a call too small to
//! be worth waking the pool runs them on the calling thread; the blocks depend only on the
//! shapes, and no result depends on the blocks, so every result is bitwise identical for any
//! thread count. Outputs are calloc'd and huge-page advised (`element::zeros_vec`): at these
//! sizes, handing out fresh pages costs as much as the pooling itself.

mod avg;
mod max;
mod plan;
mod simd;
mod windows;

use crate::element::{standard, zeros, zeros_vec as zeroed, Real};
use crate::error::{check_grad_output, shape_str, Error, Result};
use crate::params::{adaptive_geometry, PoolGeometry, PoolParams};
use ndarray::{ArrayD, ArrayViewD};

/// Max pooling forward (PyTorch's `max_pool1d/2d/3d` with `return_indices=True`).
///
/// Shapes: `input (N, C, *in)` -> `(output (N, C, *out), indices (N, C, *out))`, where each index
/// is the flat position of the maximum inside its input plane (`(z * H + y) * W + x`), as
/// PyTorch's `return_indices`. Padding counts as -inf; a NaN in a window makes its output NaN
/// (the last NaN in scan order, at its position); of equal maxima the first wins.
pub fn max_pool_forward<T: Real>(input: ArrayViewD<'_, T>, params: &PoolParams) -> Result<(ArrayD<T>, ArrayD<i64>)> {
    let geo = max_geometry(input.shape(), params)?;
    let mut out = zeros::<T>(&geo.output_shape(), "output")?;
    let mut idx = zeroed::<i64>(out.len(), "indices")?;
    if !out.is_empty() {
        let x = standard(input, "input copy")?;
        let x = x.as_slice().expect("standard layout");
        let dst = out.as_slice_mut().expect("fresh array");
        if max::fits(&geo) {
            max::forward(&geo, x, dst, Some(&mut idx));
        } else {
            windows::max_forward(&geo, x, dst, &mut idx);
        }
    }
    let idx = ArrayD::from_shape_vec(out.raw_dim(), idx).expect("same length as output");
    Ok((out, idx))
}

/// Max pooling forward without the indices (PyTorch's `max_pool1d/2d/3d` with
/// `return_indices=False`): the same values as [`max_pool_forward`], without the cost of
/// finding and writing the positions.
///
/// Shapes: `input (N, C, *in)` -> `(N, C, *out)`.
pub fn max_pool_forward_values<T: Real>(input: ArrayViewD<'_, T>, params: &PoolParams) -> Result<ArrayD<T>> {
    let geo = max_geometry(input.shape(), params)?;
    let mut out = zeros::<T>(&geo.output_shape(), "output")?;
    if !out.is_empty() {
        let x = standard(input, "input copy")?;
        let (x, dst) = (x.as_slice().expect("standard layout"), out.as_slice_mut().expect("fresh array"));
        if plan::rows_fit(&geo) {
            max::forward(&geo, x, dst, None);
        } else {
            let mut idx = zeroed::<i64>(dst.len(), "indices")?;
            windows::max_forward(&geo, x, dst, &mut idx);
        }
    }
    Ok(out)
}

/// Average pooling forward (PyTorch's `avg_pool1d/2d/3d`).
///
/// Shapes: `input (N, C, *in)` -> `(N, C, *out)`. With `count_include_pad` the divisor counts
/// the zero padding inside the window (but not a `ceil_mode` overhang past it); without, only
/// the input elements. `params.divisor_override` (PyTorch's: nonzero, negative allowed as
/// there) replaces the divisor of every window.
pub fn avg_pool_forward<T: Real>(input: ArrayViewD<'_, T>, params: &PoolParams, count_include_pad: bool) -> Result<ArrayD<T>> {
    let div = plan::Divide { count_include_pad, divisor_override: params.divisor_override };
    let geo = geometry(input.shape(), params)?;
    let mut out = zeros::<T>(&geo.output_shape(), "output")?;
    if !out.is_empty() {
        let x = standard(input, "input copy")?;
        let (x, dst) = (x.as_slice().expect("standard layout"), out.as_slice_mut().expect("fresh array"));
        if plan::rows_fit(&geo) {
            avg::forward(&geo, x, dst, div);
        } else {
            windows::avg_forward(&geo, x, dst, div);
        }
    }
    Ok(out)
}

/// Adaptive average pooling forward (PyTorch's `adaptive_avg_pool1d/2d/3d`).
///
/// Shapes: `input (N, C, *in)` -> `(N, C, *output_size)`; a `None` size keeps the input's.
/// Window `i` of a dimension is `[floor(i * in / out), ceil((i + 1) * in / out))`.
pub fn adaptive_avg_pool_forward<T: Real>(input: ArrayViewD<'_, T>, output_size: &[Option<usize>]) -> Result<ArrayD<T>> {
    let geo = adaptive_geometry(input.shape(), output_size)?;
    let mut out = zeros::<T>(&geo.output_shape(), "output")?;
    if !out.is_empty() {
        let x = standard(input, "input copy")?;
        avg::adaptive_forward(&geo, x.as_slice().expect("standard layout"), out.as_slice_mut().expect("fresh array"));
    }
    Ok(out)
}

/// Max pooling backward: `grad_input (N, C, *in)` receives each `grad_output (N, C, *out)`
/// element at the position of its window's maximum, recomputed from `input` exactly as the
/// forward picks it (no index array is stored: each task finds the maxima of the windows that
/// meet its rows and adds the gradients in output order).
pub fn max_pool_backward<T: Real>(grad_output: ArrayViewD<'_, T>, input: ArrayViewD<'_, T>, params: &PoolParams) -> Result<ArrayD<T>> {
    let geo = max_geometry(input.shape(), params)?;
    check_grad_output(grad_output.shape(), &geo.output_shape(), &geo.input_shape())?;
    let mut grad_input = zeros::<T>(&geo.input_shape(), "grad_input")?;
    if grad_input.is_empty() {
        return Ok(grad_input);
    }
    let dy = standard(grad_output, "grad_output copy")?;
    let dy = dy.as_slice().expect("standard layout");
    let x = standard(input, "input copy")?;
    let x = x.as_slice().expect("standard layout");
    let dx = grad_input.as_slice_mut().expect("fresh array");
    if max::fits(&geo) {
        max::backward(&geo, x, dy, dx);
    } else {
        let mut out = zeroed::<T>(dy.len(), "output")?;
        let mut idx = zeroed::<i64>(dy.len(), "indices")?;
        windows::max_forward(&geo, x, &mut out, &mut idx);
        max::backward_from_indices(&geo, dy, &idx, dx)?;
    }
    Ok(grad_input)
}

/// Max pooling backward from the indices [`max_pool_forward`] returned, so a layer that kept
/// them need not recompute the maxima. `grad_output` and `indices` have the output's shape
/// `(N, C, *out)`; `input_shape` is the forward input's `(N, C, *in)`. Each index must be a
/// position in `[0, prod(in))` of its plane (an `indices` error otherwise); gradients that meet
/// at one position are added in output order.
pub fn max_pool_backward_indices<T: Real>(
    grad_output: ArrayViewD<'_, T>,
    indices: ArrayViewD<'_, i64>,
    input_shape: &[usize],
    params: &PoolParams,
) -> Result<ArrayD<T>> {
    let geo = max_geometry(input_shape, params)?;
    check_grad_output(grad_output.shape(), &geo.output_shape(), &geo.input_shape())?;
    if indices.shape() != grad_output.shape() {
        return Err(Error::invalid(
            "indices",
            format!(
                "indices must have the forward output's shape {} (as max_pool returns them), got {}",
                shape_str(&geo.output_shape()),
                shape_str(indices.shape())
            ),
        ));
    }
    let mut grad_input = zeros::<T>(&geo.input_shape(), "grad_input")?;
    if grad_input.is_empty() || indices.is_empty() {
        return Ok(grad_input);
    }
    let dy = standard(grad_output, "grad_output copy")?;
    let idx = if indices.is_standard_layout() { ndarray::CowArray::from(indices) } else { ndarray::CowArray::from(indices.as_standard_layout().into_owned()) };
    max::backward_from_indices(
        &geo,
        dy.as_slice().expect("standard layout"),
        idx.as_slice().expect("standard layout"),
        grad_input.as_slice_mut().expect("fresh array"),
    )?;
    Ok(grad_input)
}

/// Average pooling backward: each `grad_output` element is spread evenly (by the forward's
/// divisor) over its window's input positions. Shapes and arguments as [`avg_pool_forward`].
pub fn avg_pool_backward<T: Real>(
    grad_output: ArrayViewD<'_, T>,
    input: ArrayViewD<'_, T>,
    params: &PoolParams,
    count_include_pad: bool,
) -> Result<ArrayD<T>> {
    let div = plan::Divide { count_include_pad, divisor_override: params.divisor_override };
    let geo = geometry(input.shape(), params)?;
    check_grad_output(grad_output.shape(), &geo.output_shape(), &geo.input_shape())?;
    let mut grad_input = zeros::<T>(&geo.input_shape(), "grad_input")?;
    if !grad_input.is_empty() {
        let dy = standard(grad_output, "grad_output copy")?;
        let (dy, dx) = (dy.as_slice().expect("standard layout"), grad_input.as_slice_mut().expect("fresh array"));
        if plan::rows_fit(&geo) {
            avg::backward(&geo, dy, dx, div);
        } else {
            windows::avg_backward(&geo, dy, dx, div);
        }
    }
    Ok(grad_input)
}

/// Adaptive average pooling backward; the output size is `grad_output`'s spatial shape.
pub fn adaptive_avg_pool_backward<T: Real>(grad_output: ArrayViewD<'_, T>, input: ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
    let (g, x) = (grad_output.shape(), input.shape());
    if g.len() != x.len() || g.len() < 3 || g[..2] != x[..2] {
        return Err(Error::invalid(
            "grad_output",
            format!("grad_output of shape {} does not match input of shape {}: expected (N, C, *output_size)", shape_str(g), shape_str(x)),
        ));
    }
    let size: Vec<Option<usize>> = g[2..].iter().map(|&o| Some(o)).collect();
    if size.contains(&Some(0)) {
        return Err(Error::invalid("grad_output", format!("grad_output of shape {} has an empty spatial dimension", shape_str(g))));
    }
    let geo = adaptive_geometry(x, &size)?;
    check_grad_output(g, &geo.output_shape(), &geo.input_shape())?;
    let mut grad_input = zeros::<T>(&geo.input_shape(), "grad_input")?;
    if !grad_input.is_empty() {
        let dy = standard(grad_output, "grad_output copy")?;
        avg::adaptive_backward(&geo, dy.as_slice().expect("standard layout"), grad_input.as_slice_mut().expect("fresh array"));
    }
    Ok(grad_input)
}

/// The geometry of a max pool, which has no divisor to override.
fn max_geometry(input: &[usize], params: &PoolParams) -> Result<PoolGeometry> {
    if let Some(d) = params.divisor_override {
        return Err(Error::invalid("divisor_override", format!("divisor_override={d} is for average pooling; a max pool has no divisor")));
    }
    geometry(input, params)
}

/// The validated geometry of a strided pool; an input with an empty spatial dimension is an
/// error (as in PyTorch), even where padding would give it a window.
fn geometry(input: &[usize], params: &PoolParams) -> Result<PoolGeometry> {
    let geo = params.geometry(input)?;
    if input[2..].contains(&0) {
        return Err(Error::invalid(
            "input",
            format!("pooling needs a non-empty input in every spatial dimension, got shape {}", shape_str(input)),
        ));
    }
    Ok(geo)
}

#[cfg(test)]
mod tests;
