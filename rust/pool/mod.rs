//! Max, average and adaptive average pooling in 1, 2 and 3 spatial dimensions.
//!
//! Every (sample, channel) plane is pooled independently, so planes are the parallel tasks.
//! Windows are described per dimension as lists of in-bounds input positions (`Windows`), built
//! once per call; the kernels then only walk those lists.

use crate::element::{standard, zeros, Real};
use crate::error::{shape_str, Error, Result};
use crate::params::{adaptive_geometry, adaptive_window, PoolGeometry, PoolParams, MAX_DIMS};
use crate::parallel;
use ndarray::{ArrayD, ArrayViewD};
use rayon::prelude::*;

/// For each dimension and each output position: the in-bounds input positions of its window,
/// and the divisor size average pooling with `count_include_pad` uses.
struct Windows {
    taps: [Vec<Vec<usize>>; MAX_DIMS],
    padded_len: [Vec<usize>; MAX_DIMS],
}

impl Windows {
    /// Windows of a strided, padded, dilated pool (PyTorch's max and average pools).
    fn strided(geo: &PoolGeometry) -> Windows {
        let mut taps: [Vec<Vec<usize>>; MAX_DIMS] = Default::default();
        let mut padded_len: [Vec<usize>; MAX_DIMS] = Default::default();
        for d in 0..MAX_DIMS {
            let (size, k, s, p, dil) = (geo.input[d] as isize, geo.kernel[d], geo.stride[d], geo.pad[d] as isize, geo.dilation[d]);
            for o in 0..geo.output[d] {
                let start = (o * s) as isize - p;
                taps[d].push(
                    (0..k).map(|j| start + (j * dil) as isize).filter(|&i| i >= 0 && i < size).map(|i| i as usize).collect(),
                );
                // Average pooling's padded window: [start, min(start + k, size + p)).
                padded_len[d].push(((start + k as isize).min(size + p) - start) as usize);
            }
        }
        Windows { taps, padded_len }
    }

    /// Windows of an adaptive pool: `[floor(o * in / out), ceil((o + 1) * in / out))`.
    fn adaptive(geo: &PoolGeometry) -> Windows {
        let mut taps: [Vec<Vec<usize>>; MAX_DIMS] = Default::default();
        for d in 0..MAX_DIMS {
            for o in 0..geo.output[d] {
                let (a, b) = adaptive_window(o, geo.output[d], geo.input[d]);
                taps[d].push((a..b).collect());
            }
        }
        let padded_len = taps.clone().map(|t| t.iter().map(Vec::len).collect());
        Windows { taps, padded_len }
    }
}

/// Max pooling forward (PyTorch's `max_pool1d/2d/3d`).
///
/// Shapes: `input (N, C, *in)` -> `(output (N, C, *out), indices (N, C, *out))`, where each index
/// is the flat position of the maximum inside its input plane (`(z * H + y) * W + x`), as
/// PyTorch's `return_indices`. Padding counts as -inf; a NaN in a window makes its output NaN.
pub fn max_pool_forward<T: Real>(input: ArrayViewD<'_, T>, params: &PoolParams) -> Result<(ArrayD<T>, ArrayD<i64>)> {
    let geo = params.geometry(input.shape())?;
    let mut out = zeros::<T>(&geo.output_shape(), "output")?;
    let mut idx = crate::element::zeros_vec::<i64>(out.len(), "indices")?;
    if !out.is_empty() {
        let x = standard(input, "input copy")?;
        let x = x.as_slice().expect("standard layout");
        let win = Windows::strided(&geo);
        let (in_len, out_len) = (geo.input_len(), geo.output_len());
        let [_, h, w] = geo.input;
        let dst = out.as_slice_mut().expect("fresh array");
        parallel::install(|| {
            dst.par_chunks_mut(out_len)
                .zip(idx.par_chunks_mut(out_len))
                .zip(x.par_chunks(in_len))
                .for_each(|((o_plane, i_plane), x_plane)| {
                    let mut o = 0;
                    for zs in &win.taps[0] {
                        for ys in &win.taps[1] {
                            for xs in &win.taps[2] {
                                let mut best = T::neg_infinity();
                                let mut best_at = first_tap(zs, ys, xs, h, w);
                                for &z in zs {
                                    for &y in ys {
                                        let row = (z * h + y) * w;
                                        for &xx in xs {
                                            let v = x_plane[row + xx];
                                            // `v > best` alone would skip NaN; PyTorch lets NaN win.
                                            if v > best || v.is_nan() {
                                                best = v;
                                                best_at = row + xx;
                                            }
                                        }
                                    }
                                }
                                o_plane[o] = best;
                                i_plane[o] = best_at as i64;
                                o += 1;
                            }
                        }
                    }
                });
        });
    }
    let idx = ArrayD::from_shape_vec(out.raw_dim(), idx).expect("same length as output");
    Ok((out, idx))
}

/// Calls `f(output position, z taps, y taps, x taps, divisor)` for every output position of a
/// plane, in order. The divisor counts the padding when `count_include_pad`.
fn each_window(win: &Windows, count_include_pad: bool, mut f: impl FnMut(usize, &[usize], &[usize], &[usize], usize)) {
    let mut o = 0;
    for (zi, zs) in win.taps[0].iter().enumerate() {
        for (yi, ys) in win.taps[1].iter().enumerate() {
            for (xi, xs) in win.taps[2].iter().enumerate() {
                let count = if count_include_pad {
                    win.padded_len[0][zi] * win.padded_len[1][yi] * win.padded_len[2][xi]
                } else {
                    zs.len() * ys.len() * xs.len()
                };
                f(o, zs, ys, xs, count);
                o += 1;
            }
        }
    }
}

fn first_tap(zs: &[usize], ys: &[usize], xs: &[usize], h: usize, w: usize) -> usize {
    let first = |t: &[usize]| t.first().copied().unwrap_or(0);
    (first(zs) * h + first(ys)) * w + first(xs)
}

/// Average pooling forward (PyTorch's `avg_pool1d/2d/3d`).
///
/// Shapes: `input (N, C, *in)` -> `(N, C, *out)`. With `count_include_pad` the divisor counts
/// the zero padding inside the window (but not a `ceil_mode` overhang past it); without, only
/// the input elements.
pub fn avg_pool_forward<T: Real>(input: ArrayViewD<'_, T>, params: &PoolParams, count_include_pad: bool) -> Result<ArrayD<T>> {
    let geo = params.geometry(input.shape())?;
    mean_pool(input, &geo, Windows::strided, count_include_pad)
}

/// Adaptive average pooling forward (PyTorch's `adaptive_avg_pool1d/2d/3d`).
///
/// Shapes: `input (N, C, *in)` -> `(N, C, *output_size)`; a `None` size keeps the input's.
pub fn adaptive_avg_pool_forward<T: Real>(input: ArrayViewD<'_, T>, output_size: &[Option<usize>]) -> Result<ArrayD<T>> {
    let geo = adaptive_geometry(input.shape(), output_size)?;
    mean_pool(input, &geo, Windows::adaptive, false)
}

/// Shared by average and adaptive pooling. The windows are built only after the output is
/// allocated, so an absurd output size fails cleanly before any per-position table is made.
fn mean_pool<T: Real>(
    input: ArrayViewD<'_, T>,
    geo: &PoolGeometry,
    windows: fn(&PoolGeometry) -> Windows,
    count_include_pad: bool,
) -> Result<ArrayD<T>> {
    let mut out = zeros::<T>(&geo.output_shape(), "output")?;
    if out.is_empty() {
        return Ok(out);
    }
    let win = windows(geo);
    let x = standard(input, "input copy")?;
    let x = x.as_slice().expect("standard layout");
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let [_, h, w] = geo.input;
    let dst = out.as_slice_mut().expect("fresh array");
    parallel::install(|| {
        dst.par_chunks_mut(out_len).zip(x.par_chunks(in_len)).for_each(|(o_plane, x_plane)| {
            each_window(&win, count_include_pad, |o, zs, ys, xs, count| {
                let mut sum = T::zero();
                for &z in zs {
                    for &y in ys {
                        let row = &x_plane[(z * h + y) * w..][..w];
                        for &xx in xs {
                            sum += row[xx];
                        }
                    }
                }
                o_plane[o] = sum / T::from_usize(count).expect("window size fits a float");
            });
        });
    });
    Ok(out)
}

/// Max pooling backward: `grad_input (N, C, *in)` receives each `grad_output` element at the
/// position of its window's maximum (recomputed from `input` exactly as the forward picks it).
pub fn max_pool_backward<T: Real>(grad_output: ArrayViewD<'_, T>, input: ArrayViewD<'_, T>, params: &PoolParams) -> Result<ArrayD<T>> {
    let geo = params.geometry(input.shape())?;
    check_grad_output(grad_output.shape(), &geo.output_shape(), &geo.input_shape())?;
    let (_, idx) = max_pool_forward(input, params)?;
    let mut grad_input = zeros::<T>(&geo.input_shape(), "grad_input")?;
    if grad_input.is_empty() || idx.is_empty() {
        return Ok(grad_input);
    }
    let dy = standard(grad_output, "grad_output copy")?;
    let dy = dy.as_slice().expect("standard layout");
    let idx = idx.as_slice().expect("fresh array");
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let dx = grad_input.as_slice_mut().expect("fresh array");
    parallel::install(|| {
        dx.par_chunks_mut(in_len).zip(dy.par_chunks(out_len).zip(idx.par_chunks(out_len))).for_each(|(dx_plane, (g, at))| {
            for (&v, &i) in g.iter().zip(at) {
                dx_plane[i as usize] += v;
            }
        });
    });
    Ok(grad_input)
}

/// Average pooling backward: each `grad_output` element is spread evenly (by the forward's
/// divisor) over its window's input positions. Shapes as `avg_pool_forward`.
pub fn avg_pool_backward<T: Real>(
    grad_output: ArrayViewD<'_, T>,
    input: ArrayViewD<'_, T>,
    params: &PoolParams,
    count_include_pad: bool,
) -> Result<ArrayD<T>> {
    let geo = params.geometry(input.shape())?;
    mean_pool_backward(grad_output, &geo, Windows::strided, count_include_pad)
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
    mean_pool_backward(grad_output, &geo, Windows::adaptive, false)
}

fn mean_pool_backward<T: Real>(
    grad_output: ArrayViewD<'_, T>,
    geo: &PoolGeometry,
    windows: fn(&PoolGeometry) -> Windows,
    count_include_pad: bool,
) -> Result<ArrayD<T>> {
    check_grad_output(grad_output.shape(), &geo.output_shape(), &geo.input_shape())?;
    let mut grad_input = zeros::<T>(&geo.input_shape(), "grad_input")?;
    if grad_input.is_empty() {
        return Ok(grad_input);
    }
    let win = windows(geo);
    let dy = standard(grad_output, "grad_output copy")?;
    let dy = dy.as_slice().expect("standard layout");
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let [_, h, w] = geo.input;
    let dx = grad_input.as_slice_mut().expect("fresh array");
    parallel::install(|| {
        dx.par_chunks_mut(in_len).zip(dy.par_chunks(out_len)).for_each(|(dx_plane, g)| {
            each_window(&win, count_include_pad, |o, zs, ys, xs, count| {
                let share = g[o] / T::from_usize(count).expect("window size fits a float");
                for &z in zs {
                    for &y in ys {
                        let row = &mut dx_plane[(z * h + y) * w..][..w];
                        for &xx in xs {
                            row[xx] += share;
                        }
                    }
                }
            });
        });
    });
    Ok(grad_input)
}

fn check_grad_output(shape: &[usize], expected: &[usize], input: &[usize]) -> Result<()> {
    if shape == expected {
        Ok(())
    } else {
        Err(Error::invalid(
            "grad_output",
            format!(
                "grad_output must have the forward output's shape {} for input {}, got {}",
                shape_str(expected),
                shape_str(input),
                shape_str(shape)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn plane(h: usize, w: usize) -> ArrayD<f64> {
        ArrayD::from_shape_fn(IxDyn(&[1, 1, h, w]), |i| ((i[2] * 7 + i[3] * 3) % 11) as f64)
    }

    #[test]
    fn max_pool_2x2_and_indices() {
        let x = plane(4, 4);
        let (out, idx) = max_pool_forward(x.view(), &PoolParams::new(vec![2, 2])).unwrap();
        for oy in 0..2 {
            for ox in 0..2 {
                let mut best = (f64::NEG_INFINITY, 0);
                for y in 2 * oy..2 * oy + 2 {
                    for xx in 2 * ox..2 * ox + 2 {
                        if x[[0, 0, y, xx]] > best.0 {
                            best = (x[[0, 0, y, xx]], y * 4 + xx);
                        }
                    }
                }
                assert_eq!(out[[0, 0, oy, ox]], best.0);
                assert_eq!(idx[[0, 0, oy, ox]], best.1 as i64);
            }
        }
    }

    #[test]
    fn max_pool_propagates_nan() {
        let mut x = plane(4, 4);
        x[[0, 0, 1, 1]] = f64::NAN;
        let (out, idx) = max_pool_forward(x.view(), &PoolParams::new(vec![2, 2])).unwrap();
        assert!(out[[0, 0, 0, 0]].is_nan());
        assert_eq!(idx[[0, 0, 0, 0]], 5);
        assert!(!out[[0, 0, 1, 1]].is_nan());
    }

    #[test]
    fn avg_pool_divisors() {
        let x = ArrayD::<f64>::ones(IxDyn(&[1, 1, 3, 3]));
        let mut p = PoolParams::new(vec![2, 2]);
        p.padding = vec![1, 1];
        // Corner window covers 1 input element and 3 padding zeros.
        assert_eq!(avg_pool_forward(x.view(), &p, true).unwrap()[[0, 0, 0, 0]], 0.25);
        assert_eq!(avg_pool_forward(x.view(), &p, false).unwrap()[[0, 0, 0, 0]], 1.0);
    }

    #[test]
    fn adaptive_average_of_whole_plane() {
        let x = plane(5, 7);
        let out = adaptive_avg_pool_forward(x.view(), &[Some(1), Some(1)]).unwrap();
        assert!((out[[0, 0, 0, 0]] - x.mean().unwrap()).abs() < 1e-12);
    }
}
