//! Bindings of the max, average and adaptive average pools.

use super::args::{compute, dispatch, expect_kind, flag, int_in, ints, ints_or, kind_of, ndarray, output_size, readonly, Arg, PyReal};
use super::{add_batch, batch_grad, drop_batch};
use crate::params::PoolParams;
use crate::pool::{
    adaptive_avg_pool_backward, adaptive_avg_pool_forward, avg_pool_backward, avg_pool_forward, max_pool_backward,
    max_pool_backward_indices, max_pool_forward, max_pool_forward_values,
};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

fn pool_params(
    dims: usize,
    kernel_size: &Bound<'_, PyAny>,
    stride: &Arg<'_>,
    padding: &Arg<'_>,
    dilation: &Arg<'_>,
    ceil_mode: &Arg<'_>,
    divisor_override: &Arg<'_>,
) -> PyResult<PoolParams> {
    let kernel = ints(kernel_size, "kernel_size", dims, 1)?;
    // None, left out, or (as PyTorch) an empty tuple: the kernel size.
    let stride = match stride.or_none() {
        Some(s) if s.len().map_or(true, |n| n > 0) => ints(s, "stride", dims, 1)?,
        _ => kernel.clone(),
    };
    Ok(PoolParams {
        stride,
        padding: ints_or(padding, "padding", dims, 0, 0)?,
        dilation: ints_or(dilation, "dilation", dims, 1, 1)?,
        ceil_mode: flag(ceil_mode, "ceil_mode", false)?,
        // Any int64 but 0 (which the geometry refuses by name), as PyTorch; None: no override.
        divisor_override: divisor_override
            .or_none()
            .map(|d| int_in(d, "divisor_override", i64::MIN as i128, i64::MAX as i128).map(|d| d as i64))
            .transpose()?,
        kernel,
    })
}

fn max_typed<'py, T: PyReal>(
    py: Python<'py>,
    dims: usize,
    input: &Bound<'py, PyAny>,
    params: &PoolParams,
    return_indices: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let x = readonly::<T>(input, "input")?;
    let (x, unbatched) = add_batch(x.as_array(), dims);
    if return_indices {
        let (out, idx) = compute(py, || max_pool_forward(x, params))?;
        let out = drop_batch(out, unbatched).into_pyarray(py).into_any();
        let idx = drop_batch(idx, unbatched).into_pyarray(py).into_any();
        Ok(PyTuple::new(py, [out, idx])?.into_any())
    } else {
        // Without indices the kernel neither tracks nor writes them (8 bytes per output).
        let out = compute(py, || max_pool_forward_values(x, params))?;
        Ok(drop_batch(out, unbatched).into_pyarray(py).into_any())
    }
}

/// `indices` of a max-pool backward: an int64 ndarray, as `max_pool*d(..., return_indices=True)`
/// returns it.
fn read_indices<'py>(obj: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArrayDyn<'py, i64>> {
    ndarray(obj, "indices")?;
    let arr = obj.cast::<PyArrayDyn<i64>>().map_err(|_| {
        let got = match obj.cast::<PyUntypedArray>() {
            Ok(a) => format!(
                "{} array of shape {}",
                a.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into()),
                crate::error::shape_str(a.shape())
            ),
            Err(_) => obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into()),
        };
        PyTypeError::new_err(format!(
            "indices must be the int64 numpy.ndarray max_pool returns with return_indices=True, got {got}"
        ))
    })?;
    arr.try_readonly().map_err(|e| PyValueError::new_err(format!("indices cannot be read: {e}")))
}

fn avg_typed<'py, T: PyReal>(
    py: Python<'py>,
    dims: usize,
    input: &Bound<'py, PyAny>,
    params: &PoolParams,
    count_include_pad: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let x = readonly::<T>(input, "input")?;
    let (x, unbatched) = add_batch(x.as_array(), dims);
    let out = compute(py, || avg_pool_forward(x, params, count_include_pad))?;
    Ok(drop_batch(out, unbatched).into_pyarray(py).into_any())
}

fn adaptive_typed<'py, T: PyReal>(
    py: Python<'py>,
    dims: usize,
    input: &Bound<'py, PyAny>,
    size: &[Option<usize>],
) -> PyResult<Bound<'py, PyAny>> {
    let x = readonly::<T>(input, "input")?;
    let (x, unbatched) = add_batch(x.as_array(), dims);
    let out = compute(py, || adaptive_avg_pool_forward(x, size))?;
    Ok(drop_batch(out, unbatched).into_pyarray(py).into_any())
}

/// Which pool a backward call differentiates (a max pool with the forward's indices, if given).
#[derive(Clone, Copy)]
enum Backward<'a, 'py> {
    Max(&'a PoolParams, Option<&'a Bound<'py, PyAny>>),
    Avg(&'a PoolParams, bool),
    Adaptive,
}

fn backward_typed<'py, T: PyReal>(
    py: Python<'py>,
    dims: usize,
    grad_output: &Bound<'py, PyAny>,
    input: &Bound<'py, PyAny>,
    which: Backward<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let g = readonly::<T>(grad_output, "grad_output")?;
    let x = readonly::<T>(input, "input")?;
    let (x, unbatched) = add_batch(x.as_array(), dims);
    let g = batch_grad(g.as_array(), dims, unbatched)?;
    let idx = match which {
        Backward::Max(_, Some(obj)) if !obj.is_none() => Some(read_indices(obj)?),
        _ => None,
    };
    let idx = match &idx {
        Some(i) if unbatched => {
            let i = i.as_array();
            if i.ndim() != dims + 1 {
                return Err(PyValueError::new_err(format!(
                    "indices must be unbatched like the input ({} dimensions), got shape {}",
                    dims + 1,
                    crate::error::shape_str(i.shape())
                )));
            }
            Some(i.insert_axis(ndarray::Axis(0)))
        }
        Some(i) => Some(i.as_array()),
        None => None,
    };
    // The work without the Python objects, so it can run with the GIL released.
    let (max, avg) = match which {
        Backward::Max(p, _) => (Some(p), None),
        Backward::Avg(p, count_include_pad) => (None, Some((p, count_include_pad))),
        Backward::Adaptive => (None, None),
    };
    let dx = compute(py, || match (max, avg, idx) {
        (Some(p), _, Some(idx)) => max_pool_backward_indices(g, idx, x.shape(), p),
        (Some(p), _, None) => max_pool_backward(g, x, p),
        (None, Some((p, count_include_pad)), _) => avg_pool_backward(g, x, p, count_include_pad),
        (None, None, _) => adaptive_avg_pool_backward(g, x),
    })?;
    Ok(drop_batch(dx, unbatched).into_pyarray(py).into_any())
}

fn backward_nd<'py>(
    py: Python<'py>,
    dims: usize,
    grad_output: &Bound<'py, PyAny>,
    input: &Bound<'py, PyAny>,
    which: Backward<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let kind = kind_of(input, "input")?;
    expect_kind(grad_output, "grad_output", kind, "input")?;
    dispatch!(kind, backward_typed(py, dims, grad_output, input, which))
}

macro_rules! pool_backward_fns {
    ($max:ident, $adaptive:ident, $dims:literal) => {
        /// Gradient of max pooling with respect to its input; see `rconv.functional`.
        ///
        /// `indices` (keyword, optional): the int64 indices the forward returned with
        /// `return_indices=True`, shaped like `grad_output`. Given, each gradient goes to its
        /// index and the maxima are not recomputed from `input` (which then only supplies the
        /// shape); an index outside its input plane is a ValueError naming `indices`. Omitted,
        /// the argmax is recomputed from `input` exactly as the forward picks it.
        #[pyfunction]
        #[pyo3(signature = (grad_output, input, kernel_size, stride=Arg::Missing, padding=Arg::Missing, dilation=Arg::Missing, ceil_mode=Arg::Missing, *, indices=None),
               text_signature = "(grad_output, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *, indices=None)")]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $max<'py>(
            py: Python<'py>,
            grad_output: &Bound<'py, PyAny>,
            input: &Bound<'py, PyAny>,
            kernel_size: &Bound<'py, PyAny>,
            stride: Arg<'py>,
            padding: Arg<'py>,
            dilation: Arg<'py>,
            ceil_mode: Arg<'py>,
            indices: Option<&Bound<'py, PyAny>>,
        ) -> PyResult<Bound<'py, PyAny>> {
            let params = pool_params($dims, kernel_size, &stride, &padding, &dilation, &ceil_mode, &Arg::Missing)?;
            backward_nd(py, $dims, grad_output, input, Backward::Max(&params, indices))
        }

        /// Gradient of adaptive average pooling with respect to its input; see `rconv.functional`.
        #[pyfunction]
        #[pyo3(signature = (grad_output, input))]
        pub(crate) fn $adaptive<'py>(
            py: Python<'py>,
            grad_output: &Bound<'py, PyAny>,
            input: &Bound<'py, PyAny>,
        ) -> PyResult<Bound<'py, PyAny>> {
            backward_nd(py, $dims, grad_output, input, Backward::Adaptive)
        }
    };
}

pool_backward_fns!(max_pool1d_backward, adaptive_avg_pool1d_backward, 1);
pool_backward_fns!(max_pool2d_backward, adaptive_avg_pool2d_backward, 2);
pool_backward_fns!(max_pool3d_backward, adaptive_avg_pool3d_backward, 3);

macro_rules! pool_fns {
    ($max:ident, $adaptive:ident, $dims:literal) => {
        /// Max pooling over channels-first volumes; see `rconv.functional`.
        #[pyfunction]
        #[pyo3(signature = (input, kernel_size, stride=Arg::Missing, padding=Arg::Missing, dilation=Arg::Missing, ceil_mode=Arg::Missing, return_indices=Arg::Missing),
               text_signature = "(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False)")]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $max<'py>(
            py: Python<'py>,
            input: &Bound<'py, PyAny>,
            kernel_size: &Bound<'py, PyAny>,
            stride: Arg<'py>,
            padding: Arg<'py>,
            dilation: Arg<'py>,
            ceil_mode: Arg<'py>,
            return_indices: Arg<'py>,
        ) -> PyResult<Bound<'py, PyAny>> {
            let kind = kind_of(input, "input")?;
            let params = pool_params($dims, kernel_size, &stride, &padding, &dilation, &ceil_mode, &Arg::Missing)?;
            let return_indices = flag(&return_indices, "return_indices", false)?;
            dispatch!(kind, max_typed(py, $dims, input, &params, return_indices))
        }

        /// Adaptive average pooling to a fixed output size; see `rconv.functional`.
        #[pyfunction]
        #[pyo3(signature = (input, output_size))]
        pub(crate) fn $adaptive<'py>(
            py: Python<'py>,
            input: &Bound<'py, PyAny>,
            output_size: &Bound<'py, PyAny>,
        ) -> PyResult<Bound<'py, PyAny>> {
            let kind = kind_of(input, "input")?;
            let size = self::output_size(output_size, $dims)?;
            dispatch!(kind, adaptive_typed(py, $dims, input, &size))
        }
    };
}

pool_fns!(max_pool1d, adaptive_avg_pool1d, 1);
pool_fns!(max_pool2d, adaptive_avg_pool2d, 2);
pool_fns!(max_pool3d, adaptive_avg_pool3d, 3);

/// An average pool's forward (`grad_output` None) or backward, from the Python arguments.
#[allow(clippy::too_many_arguments)]
fn avg_nd<'py>(
    py: Python<'py>,
    dims: usize,
    grad_output: Option<&Bound<'py, PyAny>>,
    input: &Bound<'py, PyAny>,
    kernel_size: &Bound<'py, PyAny>,
    stride: &Arg<'py>,
    padding: &Arg<'py>,
    ceil_mode: &Arg<'py>,
    count_include_pad: &Arg<'py>,
    divisor_override: &Arg<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let kind = kind_of(input, "input")?;
    let params = pool_params(dims, kernel_size, stride, padding, &Arg::Missing, ceil_mode, divisor_override)?;
    let count_include_pad = flag(count_include_pad, "count_include_pad", true)?;
    match grad_output {
        None => dispatch!(kind, avg_typed(py, dims, input, &params, count_include_pad)),
        Some(g) => backward_nd(py, dims, g, input, Backward::Avg(&params, count_include_pad)),
    }
}

/// Average pooling forward and backward. PyTorch's avg_pool1d has no divisor_override; avg_pool2d
/// and avg_pool3d take it (the optional last ident).
macro_rules! avg_pool_fns {
    ($avg:ident, $avg_backward:ident, $dims:literal, $sig:literal, $backward_sig:literal $(, $over:ident)?) => {
        /// Average pooling over channels-first volumes; see `rconv.functional`.
        #[pyfunction]
        #[pyo3(signature = (input, kernel_size, stride=Arg::Missing, padding=Arg::Missing, ceil_mode=Arg::Missing, count_include_pad=Arg::Missing $(, $over=Arg::Missing)?),
               text_signature = $sig)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $avg<'py>(
            py: Python<'py>,
            input: &Bound<'py, PyAny>,
            kernel_size: &Bound<'py, PyAny>,
            stride: Arg<'py>,
            padding: Arg<'py>,
            ceil_mode: Arg<'py>,
            count_include_pad: Arg<'py>,
            $($over: Arg<'py>,)?
        ) -> PyResult<Bound<'py, PyAny>> {
            let divisor_override = None $(.or(Some($over)))?.unwrap_or(Arg::Missing);
            avg_nd(py, $dims, None, input, kernel_size, &stride, &padding, &ceil_mode, &count_include_pad, &divisor_override)
        }

        /// Gradient of average pooling with respect to its input; see `rconv.functional`.
        #[pyfunction]
        #[pyo3(signature = (grad_output, input, kernel_size, stride=Arg::Missing, padding=Arg::Missing, ceil_mode=Arg::Missing, count_include_pad=Arg::Missing $(, $over=Arg::Missing)?),
               text_signature = $backward_sig)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $avg_backward<'py>(
            py: Python<'py>,
            grad_output: &Bound<'py, PyAny>,
            input: &Bound<'py, PyAny>,
            kernel_size: &Bound<'py, PyAny>,
            stride: Arg<'py>,
            padding: Arg<'py>,
            ceil_mode: Arg<'py>,
            count_include_pad: Arg<'py>,
            $($over: Arg<'py>,)?
        ) -> PyResult<Bound<'py, PyAny>> {
            let divisor_override = None $(.or(Some($over)))?.unwrap_or(Arg::Missing);
            avg_nd(py, $dims, Some(grad_output), input, kernel_size, &stride, &padding, &ceil_mode, &count_include_pad, &divisor_override)
        }
    };
}

avg_pool_fns!(
    avg_pool1d,
    avg_pool1d_backward,
    1,
    "(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)",
    "(grad_output, input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True)"
);
avg_pool_fns!(
    avg_pool2d,
    avg_pool2d_backward,
    2,
    "(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None)",
    "(grad_output, input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None)",
    divisor_override
);
avg_pool_fns!(
    avg_pool3d,
    avg_pool3d_backward,
    3,
    "(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None)",
    "(grad_output, input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None)",
    divisor_override
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(max_pool1d, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool2d, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool3d, m)?)?;
    m.add_function(wrap_pyfunction!(avg_pool1d, m)?)?;
    m.add_function(wrap_pyfunction!(avg_pool2d, m)?)?;
    m.add_function(wrap_pyfunction!(avg_pool3d, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_avg_pool1d, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_avg_pool2d, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_avg_pool3d, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool1d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool3d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(avg_pool1d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(avg_pool2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(avg_pool3d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_avg_pool1d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_avg_pool2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(adaptive_avg_pool3d_backward, m)?)?;
    Ok(())
}
