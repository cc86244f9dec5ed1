//! Bindings of ReLU, softmax, log-softmax, cross-entropy, linear, and the thread count.

use super::args::{compute, dispatch, expect_kind, int_in, kind_of, ndarray, readonly, Arg, PyReal};
use crate::act;
use crate::linear::{linear_backward, linear_forward};
use crate::parallel;
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods, PyArrayDescrMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

fn relu_typed<'py, T: PyReal>(py: Python<'py>, input: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let x = readonly::<T>(input, "input")?;
    let x = x.as_array();
    Ok(compute(py, || act::relu(x))?.into_pyarray(py).into_any())
}

/// `max(input, 0)` element-wise.
#[pyfunction]
pub(crate) fn relu<'py>(py: Python<'py>, input: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    dispatch!(kind_of(input, "input")?, relu_typed(py, input))
}

fn softmax_typed<'py, T: PyReal>(py: Python<'py>, input: &Bound<'py, PyAny>, axis: isize, log: bool) -> PyResult<Bound<'py, PyAny>> {
    let x = readonly::<T>(input, "input")?;
    let x = x.as_array();
    let out = compute(py, || if log { act::log_softmax(x, axis) } else { act::softmax(x, axis) })?;
    Ok(out.into_pyarray(py).into_any())
}

/// `axis` of a softmax: an int (not a bool), -1 when left out. One beyond `isize` is out of
/// range for any input.
fn axis_arg(axis: &Arg<'_>) -> PyResult<isize> {
    match axis {
        Arg::Missing => Ok(-1),
        Arg::Given(v) => Ok(int_in(v, "axis", isize::MIN as i128, isize::MAX as i128)? as isize),
    }
}

/// Softmax along `axis`.
#[pyfunction]
#[pyo3(signature = (input, axis=Arg::Missing), text_signature = "(input, axis=-1)")]
pub(crate) fn softmax<'py>(py: Python<'py>, input: &Bound<'py, PyAny>, axis: Arg<'py>) -> PyResult<Bound<'py, PyAny>> {
    let kind = kind_of(input, "input")?;
    dispatch!(kind, softmax_typed(py, input, axis_arg(&axis)?, false))
}

/// Log-softmax along `axis`.
#[pyfunction]
#[pyo3(signature = (input, axis=Arg::Missing), text_signature = "(input, axis=-1)")]
pub(crate) fn log_softmax<'py>(py: Python<'py>, input: &Bound<'py, PyAny>, axis: Arg<'py>) -> PyResult<Bound<'py, PyAny>> {
    let kind = kind_of(input, "input")?;
    dispatch!(kind, softmax_typed(py, input, axis_arg(&axis)?, true))
}

/// `target` as an int64 array: any integer dtype is accepted, nothing else.
pub(crate) fn class_indices<'py>(target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
    let Some(arr) = ndarray(target, "target")? else {
        return Err(PyTypeError::new_err(format!(
            "target must be a numpy.ndarray of integer class indices, got {}",
            target.get_type().name()?
        )));
    };
    let kind = arr.dtype().kind();
    if kind != b'i' && kind != b'u' {
        return Err(PyTypeError::new_err(format!(
            "target must hold integer class indices, got {} array of shape {}",
            arr.dtype().str()?,
            crate::error::shape_str(arr.shape())
        )));
    }
    if arr.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "target must have shape (N,), got {}",
            crate::error::shape_str(arr.shape())
        )));
    }
    // Values above i64::MAX (uint64 only) wrap to negatives and are rejected as out of range.
    let converted = target.call_method1("astype", ("int64",))?;
    Ok(converted.cast_into::<PyArrayDyn<i64>>()?)
}

fn cross_entropy_typed<'py, T: PyReal>(py: Python<'py>, logits: &Bound<'py, PyAny>, target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let x = readonly::<T>(logits, "logits")?;
    let t = class_indices(target)?;
    let t = t.try_readonly().map_err(|e| PyValueError::new_err(format!("target cannot be read: {e}")))?;
    let (x, t) = (x.as_array(), t.as_array());
    let t = t.into_dimensionality::<ndarray::Ix1>().expect("checked to be 1-D");
    let loss = compute(py, || act::cross_entropy(x, t))?;
    Ok(ndarray::arr0(loss).into_dyn().into_pyarray(py).into_any())
}

/// Mean softmax cross-entropy of `logits (N, C)` against integer `target (N,)`; a 0-d array.
#[pyfunction]
pub(crate) fn cross_entropy<'py>(py: Python<'py>, logits: &Bound<'py, PyAny>, target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    dispatch!(kind_of(logits, "logits")?, cross_entropy_typed(py, logits, target))
}

fn linear_typed<'py, T: PyReal>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let x = readonly::<T>(input, "input")?;
    let w = readonly::<T>(weight, "weight")?;
    let b = bias.map(|b| readonly::<T>(b, "bias")).transpose()?;
    let (x, w, b) = (x.as_array(), w.as_array(), b.as_ref().map(|b| b.as_array()));
    Ok(compute(py, || linear_forward(x, w, b))?.into_pyarray(py).into_any())
}

/// `input @ weight.T + bias`.
#[pyfunction]
#[pyo3(signature = (input, weight, bias=None))]
pub(crate) fn linear<'py>(
    py: Python<'py>,
    input: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let kind = kind_of(input, "input")?;
    expect_kind(weight, "weight", kind, "input")?;
    let bias = bias.filter(|b| !b.is_none());
    if let Some(b) = bias {
        expect_kind(b, "bias", kind, "input")?;
    }
    dispatch!(kind, linear_typed(py, input, weight, bias))
}

fn relu_backward_typed<'py, T: PyReal>(py: Python<'py>, grad_output: &Bound<'py, PyAny>, input: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let g = readonly::<T>(grad_output, "grad_output")?;
    let x = readonly::<T>(input, "input")?;
    let (g, x) = (g.as_array(), x.as_array());
    Ok(compute(py, || act::relu_backward(g, x))?.into_pyarray(py).into_any())
}

/// Gradient of ReLU: `grad_output` where `input > 0`, else 0.
#[pyfunction]
pub(crate) fn relu_backward<'py>(py: Python<'py>, grad_output: &Bound<'py, PyAny>, input: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let kind = kind_of(input, "input")?;
    expect_kind(grad_output, "grad_output", kind, "input")?;
    dispatch!(kind, relu_backward_typed(py, grad_output, input))
}

fn linear_backward_typed<'py, T: PyReal>(
    py: Python<'py>,
    grad_output: &Bound<'py, PyAny>,
    input: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    let g = readonly::<T>(grad_output, "grad_output")?;
    let x = readonly::<T>(input, "input")?;
    let w = readonly::<T>(weight, "weight")?;
    let (g, x, w) = (g.as_array(), x.as_array(), w.as_array());
    let (dx, dw, db) = compute(py, || linear_backward(g, x, w))?;
    PyTuple::new(py, [dx.into_pyarray(py).into_any(), dw.into_pyarray(py).into_any(), db.into_pyarray(py).into_any()])
}

/// Gradients of `linear`: `(grad_input, grad_weight, grad_bias)`.
#[pyfunction(name = "linear_backward")]
pub(crate) fn linear_backward_py<'py>(
    py: Python<'py>,
    grad_output: &Bound<'py, PyAny>,
    input: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    let kind = kind_of(input, "input")?;
    expect_kind(grad_output, "grad_output", kind, "input")?;
    expect_kind(weight, "weight", kind, "input")?;
    dispatch!(kind, linear_backward_typed(py, grad_output, input, weight))
}

fn cross_entropy_backward_typed<'py, T: PyReal>(py: Python<'py>, logits: &Bound<'py, PyAny>, target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let x = readonly::<T>(logits, "logits")?;
    let t = class_indices(target)?;
    let t = t.try_readonly().map_err(|e| PyValueError::new_err(format!("target cannot be read: {e}")))?;
    let (x, t) = (x.as_array(), t.as_array());
    let t = t.into_dimensionality::<ndarray::Ix1>().expect("checked to be 1-D");
    Ok(compute(py, || act::cross_entropy_backward(x, t))?.into_pyarray(py).into_any())
}

/// Gradient of the mean cross-entropy with respect to `logits`.
#[pyfunction]
pub(crate) fn cross_entropy_backward<'py>(py: Python<'py>, logits: &Bound<'py, PyAny>, target: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    dispatch!(kind_of(logits, "logits")?, cross_entropy_backward_typed(py, logits, target))
}

/// Sets the number of threads rconv computes with (1 to `parallel::MAX_THREADS`).
#[pyfunction]
pub(crate) fn set_num_threads(n: &Bound<'_, PyAny>) -> PyResult<()> {
    let n = int_in(n, "n", 1, i128::MAX)?;
    if n > parallel::MAX_THREADS as i128 {
        return Err(PyValueError::new_err(format!("set_num_threads: n must be between 1 and {}, got {n}", parallel::MAX_THREADS)));
    }
    Ok(parallel::set_num_threads(n as usize)?)
}

/// The number of threads rconv computes with.
#[pyfunction]
pub(crate) fn get_num_threads() -> usize {
    parallel::get_num_threads()
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(relu, m)?)?;
    m.add_function(wrap_pyfunction!(softmax, m)?)?;
    m.add_function(wrap_pyfunction!(log_softmax, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(linear, m)?)?;
    m.add_function(wrap_pyfunction!(relu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(linear_backward_py, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_backward, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    Ok(())
}
