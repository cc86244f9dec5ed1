//! Fully connected layers: `y = x W^T + b`.

use crate::element::{standard, transpose, zeros, Real, SendPtr};
use crate::error::{check_grad_output, check_shape_fits, shape_str, Error, Result};
use crate::parallel;
use ndarray::{ArrayD, ArrayViewD, Axis};

/// Rows of the output per parallel task.
const ROW_BLOCK: usize = 64;
/// Output features per parallel task (a block of W^T that stays in cache).
const COL_BLOCK: usize = 256;
/// Multiply-adds a task should have at least; a small layer is split into columns down to it
/// (LeNet-5's 64 x 400 x 120 layer: 4 tasks instead of one, 113 -> 93 us on 2 threads).
const MIN_TASK_WORK: usize = 1 << 19;

/// The column block for a GEMM of `row_blocks` row blocks, `cols` columns and `work`
/// multiply-adds: COL_BLOCK, or narrower (a multiple of 16) when that gives tasks of at least
/// MIN_TASK_WORK where there would be fewer than 4. A function of the shapes only; each output
/// element is the same dot product whatever the split.
fn col_block(row_blocks: usize, cols: usize, work: usize) -> usize {
    let wanted = (work / MIN_TASK_WORK).clamp(1, 4);
    if row_blocks >= wanted {
        return COL_BLOCK;
    }
    cols.div_ceil(wanted.div_ceil(row_blocks)).next_multiple_of(16).clamp(16, COL_BLOCK)
}

/// A task transposes its operand blocks when they have at most this many elements together
/// (4 MiB of f32).
const TRANSPOSE_MAX_ELEMS: usize = 1 << 20;

/// `m (rows, cols)` transposed to `(cols, rows)` into `t`.
fn transposed_into<T: Real>(m: &[T], rows: usize, cols: usize, t: &mut Vec<T>) {
    t.resize(m.len(), T::zero());
    transpose(m, rows, cols, cols, t, rows);
}

/// Validates `input (*, in_features)` against `weight (out_features, in_features)` and returns
/// `(out_features, in_features, output shape (*, out_features))`.
fn shapes(input: &[usize], weight: &[usize]) -> Result<(usize, usize, Vec<usize>)> {
    let &[out_f, in_f] = weight else {
        return Err(Error::invalid(
            "weight",
            format!("weight must have shape (out_features, in_features) or (in_features,), got {}", shape_str(weight)),
        ));
    };
    if input.last() != Some(&in_f) {
        return Err(Error::invalid(
            "input",
            format!("input of shape {} must end in in_features = {in_f} to match weight {}", shape_str(input), shape_str(weight)),
        ));
    }
    let mut out_shape = input.to_vec();
    *out_shape.last_mut().expect("input has a last dimension") = out_f;
    check_shape_fits(&out_shape, "weight")?;
    Ok((out_f, in_f, out_shape))
}

/// A weight `(in_features,)` as PyTorch takes it: one output feature whose axis is dropped, so
/// `input (*, in_features)` gives `(*,)`. Its bias, if any, is 0-d. Returns the weight as
/// `(1, in_features)` and the bias as `(1,)`.
#[allow(clippy::type_complexity)]
fn one_feature<'a, 'b, T>(
    weight: ArrayViewD<'a, T>,
    bias: Option<ArrayViewD<'b, T>>,
) -> Result<(ArrayViewD<'a, T>, Option<ArrayViewD<'b, T>>)> {
    let bias = match bias {
        Some(b) if b.ndim() != 0 => {
            return Err(Error::invalid(
                "bias",
                format!("bias must be 0-d (shape ()) with a weight of shape {}, got {}", shape_str(weight.shape()), shape_str(b.shape())),
            ))
        }
        b => b.map(|b| b.insert_axis(Axis(0))),
    };
    Ok((weight.insert_axis(Axis(0)), bias))
}

/// Linear layer forward (PyTorch's `linear`).
///
/// Shapes: `input (*, in_features)`, `weight (out_features, in_features)`, `bias (out_features,)`
/// -> `(*, out_features)`; or, as PyTorch, `weight (in_features,)` and a 0-d `bias` -> `(*,)`.
pub fn linear_forward<T: Real>(
    input: ArrayViewD<'_, T>,
    weight: ArrayViewD<'_, T>,
    bias: Option<ArrayViewD<'_, T>>,
) -> Result<ArrayD<T>> {
    if weight.ndim() == 1 {
        let (weight, bias) = one_feature(weight, bias)?;
        let out = linear_forward(input, weight, bias)?;
        let last = Axis(out.ndim() - 1);
        return Ok(out.index_axis_move(last, 0));
    }
    let shape = input.shape().to_vec();
    let (out_f, in_f, out_shape) = shapes(&shape, weight.shape())?;
    if let Some(b) = &bias {
        if b.shape() != [out_f] {
            return Err(Error::invalid(
                "bias",
                format!("bias must have shape ({out_f},) to match weight {}, got {}", shape_str(weight.shape()), shape_str(b.shape())),
            ));
        }
    }
    let mut out = zeros::<T>(&out_shape, "output")?;
    let rows = shape[..shape.len() - 1].iter().product::<usize>();
    if out.is_empty() {
        return Ok(out);
    }
    let x = standard(input, "input copy")?;
    let w = standard(weight, "weight copy")?;
    let bias = bias.map(|b| b.iter().copied().collect::<Vec<T>>());
    let (x, w) = (x.as_slice().expect("standard"), w.as_slice().expect("standard"));
    let out_ptr = SendPtr(out.as_mut_ptr());
    let row_blocks = rows.div_ceil(ROW_BLOCK);
    // Multiply-adds, for the work split only; saturating, as a broadcast input can be huge.
    let work = rows.saturating_mul(in_f).saturating_mul(out_f);
    let cblock = col_block(row_blocks, out_f, work);
    let col_blocks = out_f.div_ceil(cblock);
    // Both operands run along in_features, which matrixmultiply packs one element at a time:
    // each task transposes its blocks first (LeNet-5's 64 x 400 x 120 layer: packing was half
    // the time), unless they are too large to copy.
    let transpose_blocks = in_f * (ROW_BLOCK + cblock) <= TRANSPOSE_MAX_ELEMS;
    {
        parallel::for_each_init(row_blocks * col_blocks, work, || (Vec::new(), Vec::new()), |(xt, wt): &mut (Vec<T>, Vec<T>), item| {
            let (r0, c0) = ((item / col_blocks) * ROW_BLOCK, (item % col_blocks) * cblock);
            let (m, n) = (ROW_BLOCK.min(rows - r0), cblock.min(out_f - c0));
            // SAFETY: task (r, c) writes rows r0..r0+m, columns c0..c0+n of the (rows, out_f)
            // output: disjoint between tasks and inside the buffer.
            let c = unsafe { out_ptr.get().add(r0 * out_f + c0) };
            let beta = match &bias {
                Some(b) => {
                    for i in 0..m {
                        // SAFETY: row i of this task's block, as above.
                        unsafe { std::slice::from_raw_parts_mut(c.add(i * out_f), n) }.copy_from_slice(&b[c0..c0 + n]);
                    }
                    T::one()
                }
                None => T::zero(),
            };
            let (xb, wb) = (&x[r0 * in_f..][..m * in_f], &w[c0 * in_f..][..n * in_f]);
            let ((a, rsa, csa), (b, rsb, csb)) = if transpose_blocks {
                transposed_into(xb, m, in_f, xt);
                transposed_into(wb, n, in_f, wt);
                ((xt.as_ptr(), 1, m as isize), (wt.as_ptr(), n as isize, 1))
            } else {
                ((xb.as_ptr(), in_f as isize, 1), (wb.as_ptr(), 1, in_f as isize))
            };
            // SAFETY: A = x rows r0.. (m, in_f) and B = W^T columns c0.. (in_f, n), read through
            // their strides inside this task's blocks of `x` and `w` or their transposes; C is
            // this task's block of the output, disjoint from both.
            unsafe { T::gemm(m, in_f, n, T::one(), a, rsa, csa, b, rsb, csb, beta, c, out_f as isize, 1) };
        });
    }
    Ok(out)
}

/// Linear layer backward: `(grad_input (*, in), grad_weight (out, in), grad_bias (out,))` for
/// `grad_output (*, out)`; with a weight `(in,)`, `grad_output (*,)` gives `grad_weight (in,)` and a
/// 0-d `grad_bias`.
///
/// `grad_weight = grad_output^T input` sums over every row; each task owns a block of
/// `grad_weight` and sums all rows in order, so no partial sums depend on the thread count.
pub fn linear_backward<T: Real>(
    grad_output: ArrayViewD<'_, T>,
    input: ArrayViewD<'_, T>,
    weight: ArrayViewD<'_, T>,
) -> Result<(ArrayD<T>, ArrayD<T>, ArrayD<T>)> {
    if weight.ndim() == 1 {
        // grad_output (*,) of a weight (in_features,): the one feature's axis put back.
        let (w, _) = one_feature::<T>(weight, None)?;
        let mut expected = input.shape().to_vec();
        expected.pop();
        check_grad_output(grad_output.shape(), &expected, input.shape())?;
        let last = Axis(grad_output.ndim());
        let g = grad_output.insert_axis(last);
        let (dx, dw, db) = linear_backward(g, input, w)?;
        return Ok((dx, dw.index_axis_move(Axis(0), 0), db.index_axis_move(Axis(0), 0)));
    }
    let shape = input.shape().to_vec();
    let (out_f, in_f, expected) = shapes(&shape, weight.shape())?;
    check_grad_output(grad_output.shape(), &expected, &shape)?;
    let rows: usize = shape[..shape.len() - 1].iter().product();
    let mut grad_input = zeros::<T>(&shape, "grad_input")?;
    let mut grad_weight = zeros::<T>(&[out_f, in_f], "grad_weight")?;
    let mut grad_bias = zeros::<T>(&[out_f], "grad_bias")?;
    if rows == 0 || out_f == 0 {
        return Ok((grad_input, grad_weight, grad_bias));
    }
    let dy = standard(grad_output, "grad_output copy")?;
    let x = standard(input, "input copy")?;
    let w = standard(weight, "weight copy")?;
    let (dy, x, w) = (dy.as_slice().expect("standard"), x.as_slice().expect("standard"), w.as_slice().expect("standard"));
    let (dx_ptr, dw_ptr) = (SendPtr(grad_input.as_mut_ptr()), SendPtr(grad_weight.as_mut_ptr()));
    let db = grad_bias.as_slice_mut().expect("fresh array");
    // Without input features grad_input and grad_weight are empty, but grad_bias still sums
    // grad_output (as PyTorch: linear_backward(ones((3, 2)), zeros((3, 0)), ...) gives [3, 3]).
    if in_f > 0 {
        let work = rows.saturating_mul(in_f).saturating_mul(out_f);
        // grad_input (rows, in) = dy (rows, out) x W (out, in), in (row, column) blocks.
        let rb = rows.div_ceil(ROW_BLOCK);
        let cblock = col_block(rb, in_f, work);
        let cb = in_f.div_ceil(cblock);
        // As in the forward: A (dy) runs along out_features; each task transposes its rows.
        let transpose_blocks = out_f * ROW_BLOCK <= TRANSPOSE_MAX_ELEMS;
        parallel::for_each_init(rb * cb, work, Vec::new, |dyt: &mut Vec<T>, item| {
            let (r0, c0) = ((item / cb) * ROW_BLOCK, (item % cb) * cblock);
            let (m, n) = (ROW_BLOCK.min(rows - r0), cblock.min(in_f - c0));
            let dyb = &dy[r0 * out_f..][..m * out_f];
            let (a, rsa, csa) = if transpose_blocks {
                transposed_into(dyb, m, out_f, dyt);
                (dyt.as_ptr(), 1, m as isize)
            } else {
                (dyb.as_ptr(), out_f as isize, 1)
            };
            // SAFETY: this task's (m, n) block of grad_input, disjoint from the others; A (dy
            // rows r0.., through its strides) and B are read-only inputs.
            unsafe {
                T::gemm(
                    m, out_f, n, T::one(),
                    a, rsa, csa,
                    w[c0..].as_ptr(), in_f as isize, 1,
                    T::zero(), dx_ptr.get().add(r0 * in_f + c0), in_f as isize, 1,
                );
            }
        });
        // grad_weight (out, in) = dy^T (out, rows) x x (rows, in), in (out, in) blocks.
        let (ob, ib) = (out_f.div_ceil(ROW_BLOCK), in_f.div_ceil(COL_BLOCK));
        parallel::for_each(ob * ib, work, |item| {
            let (o0, i0) = ((item / ib) * ROW_BLOCK, (item % ib) * COL_BLOCK);
            let (m, n) = (ROW_BLOCK.min(out_f - o0), COL_BLOCK.min(in_f - i0));
            // SAFETY: this task's (m, n) block of grad_weight; dy^T is read through strides.
            unsafe {
                T::gemm(
                    m, rows, n, T::one(),
                    dy[o0..].as_ptr(), 1, out_f as isize,
                    x[i0..].as_ptr(), in_f as isize, 1,
                    T::zero(), dw_ptr.get().add(o0 * in_f + i0), in_f as isize, 1,
                );
            }
        });
    }
    parallel::for_each_chunk(db, 1, rows * out_f, |o, d| {
        d[0] = (0..rows).map(|r| dy[r * out_f + o]).sum();
    });
    Ok((grad_input, grad_weight, grad_bias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, arr2};

    #[test]
    fn small_linear() {
        let x = arr2(&[[1.0f64, 2.0], [3.0, 4.0], [5.0, 6.0]]).into_dyn();
        let w = arr2(&[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]);
        let b = arr1(&[0.5, -0.5, 0.0]);
        let y = linear_forward(x.view(), w.view().into_dyn(), Some(b.view().into_dyn())).unwrap();
        assert_eq!(y, arr2(&[[1.5, 1.5, 3.0], [3.5, 3.5, 7.0], [5.5, 5.5, 11.0]]).into_dyn());
        assert_eq!(linear_forward(x.view(), w.t().into_dyn(), None).unwrap_err().arg(), "input");
    }

    #[test]
    fn bias_gradient_without_input_features() {
        let dy = ndarray::Array2::<f64>::ones((3, 2)).into_dyn();
        let x = ndarray::Array2::<f64>::zeros((3, 0)).into_dyn();
        let w = ndarray::Array2::<f64>::zeros((2, 0)).into_dyn();
        let (dx, dw, db) = linear_backward(dy.view(), x.view(), w.view()).unwrap();
        assert_eq!((dx.shape(), dw.shape()), (&[3, 0][..], &[2, 0][..]));
        assert_eq!(db, arr1(&[3.0, 3.0]).into_dyn());
    }

    #[test]
    fn a_1d_weight_is_one_feature_without_its_axis() {
        let x = arr2(&[[1.0f64, 2.0], [3.0, 4.0], [5.0, 6.0]]).into_dyn();
        let w = arr1(&[1.0, -1.0]).into_dyn();
        let b = ndarray::arr0(0.5).into_dyn();
        let y = linear_forward(x.view(), w.view(), Some(b.view())).unwrap();
        assert_eq!(y, arr1(&[-0.5, -0.5, -0.5]).into_dyn());
        let dy = arr1(&[1.0, 2.0, 3.0]).into_dyn();
        let (dx, dw, db) = linear_backward(dy.view(), x.view(), w.view()).unwrap();
        assert_eq!(dx, arr2(&[[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]]).into_dyn());
        assert_eq!(dw, arr1(&[22.0, 28.0]).into_dyn());
        assert_eq!(db, ndarray::arr0(6.0).into_dyn());
        assert_eq!(linear_forward(x.view(), w.view(), Some(arr1(&[0.5]).view().into_dyn())).unwrap_err().arg(), "bias");
    }

    /// Blocks past TRANSPOSE_MAX_ELEMS keep their layout (the forward of the 400,000- and
    /// 600,000-feature shapes, grad_input of the 20,000-output one); the results are the same
    /// sums.
    #[test]
    fn large_and_small_operands_give_the_definition() {
        for (rows, in_f, out_f) in [(3, 5, 4), (70, 9, 300), (2, 400_000, 3), (3, 600_000, 2), (2, 3, 20_000)] {
            let f = |i: usize, seed: usize| (i * 7 + seed) % 13;
            let x = ndarray::Array2::from_shape_fn((rows, in_f), |(r, i)| (f(i, r) as f64) - 6.0);
            let w = ndarray::Array2::from_shape_fn((out_f, in_f), |(o, i)| (f(i, 3 * o + 1) as f64) * 0.5 - 3.0);
            let dy = ndarray::Array2::from_shape_fn((rows, out_f), |(r, o)| (r * out_f + o) as f64 - 2.5);
            let y = linear_forward(x.view().into_dyn(), w.view().into_dyn(), None).unwrap();
            let (dx, dw, _) = linear_backward(dy.view().into_dyn(), x.view().into_dyn(), w.view().into_dyn()).unwrap();
            // Small integers and halves: every sum is exact in f64, whatever its order.
            assert_eq!(y, x.dot(&w.t()).into_dyn(), "{rows}x{in_f}x{out_f} forward");
            assert_eq!(dx, dy.dot(&w).into_dyn(), "{rows}x{in_f}x{out_f} grad_input");
            assert_eq!(dw, dy.t().dot(&x).into_dyn(), "{rows}x{in_f}x{out_f} grad_weight");
        }
    }
}
