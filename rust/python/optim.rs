//! Bindings of the optimiser updates (`rconv.optim` calls them; private to the package).

use super::args::{compute_in_place, dispatch, expect_kind, kind_of, ndarray, readonly, PyReal};
use crate::optim::{adam_step, sgd_step, Adam, Sgd};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// `obj` as a writeable, C-contiguous array of dtype `T` (the optimiser's parameters and state
/// are updated in place).
fn writeable<'py, T: PyReal>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<PyReadwriteArrayDyn<'py, T>> {
    ndarray(obj, arg)?;
    let arr = obj
        .cast::<PyArrayDyn<T>>()
        .map_err(|_| PyTypeError::new_err(format!("{arg} must be a {} array", T::NAME)))?;
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{arg} must be C-contiguous to be updated in place")));
    }
    arr.try_readwrite().map_err(|e| PyValueError::new_err(format!("{arg} cannot be written: {e}")))
}

#[allow(clippy::too_many_arguments)]
fn sgd_typed<T: PyReal>(py: Python<'_>, param: &Bound<'_, PyAny>, grad: &Bound<'_, PyAny>, buf: Option<&Bound<'_, PyAny>>, first: bool, h: Sgd) -> PyResult<()> {
    let mut p = writeable::<T>(param, "param")?;
    let g = readonly::<T>(grad, "grad")?;
    let g = g.as_array().as_standard_layout().into_owned();
    let mut b = buf.map(|b| writeable::<T>(b, "momentum_buffer")).transpose()?;
    let p = p.as_slice_mut().expect("checked contiguous");
    let g = g.as_slice().expect("standard layout");
    let b = match b.as_mut() {
        Some(b) => b.as_slice_mut().expect("checked contiguous"),
        None => &mut [],
    };
    compute_in_place(py, || sgd_step(&h, p, g, b, first))
}

/// SGD's update of `param` in place (see `crate::optim::sgd_step`).
#[pyfunction]
#[pyo3(signature = (param, grad, momentum_buffer, first, lr, momentum, dampening, weight_decay, nesterov))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn _sgd_step(
    py: Python<'_>,
    param: &Bound<'_, PyAny>,
    grad: &Bound<'_, PyAny>,
    momentum_buffer: Option<&Bound<'_, PyAny>>,
    first: bool,
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
) -> PyResult<()> {
    let kind = kind_of(param, "param")?;
    expect_kind(grad, "grad", kind, "param")?;
    let buf = momentum_buffer.filter(|b| !b.is_none());
    if let Some(b) = buf {
        expect_kind(b, "momentum_buffer", kind, "param")?;
    }
    let h = Sgd { lr, momentum, dampening, weight_decay, nesterov };
    dispatch!(kind, sgd_typed(py, param, grad, buf, first, h))
}

fn adam_typed<T: PyReal>(py: Python<'_>, param: &Bound<'_, PyAny>, grad: &Bound<'_, PyAny>, m: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>, h: Adam) -> PyResult<()> {
    let mut p = writeable::<T>(param, "param")?;
    let g = readonly::<T>(grad, "grad")?;
    let g = g.as_array().as_standard_layout().into_owned();
    let (mut m, mut v) = (writeable::<T>(m, "exp_avg")?, writeable::<T>(v, "exp_avg_sq")?);
    let p = p.as_slice_mut().expect("checked contiguous");
    let g = g.as_slice().expect("standard layout");
    let (m, v) = (m.as_slice_mut().expect("checked contiguous"), v.as_slice_mut().expect("checked contiguous"));
    compute_in_place(py, || adam_step(&h, p, g, m, v))
}

/// Adam's update of `param` in place (see `crate::optim::adam_step`).
#[pyfunction]
#[pyo3(signature = (param, grad, exp_avg, exp_avg_sq, step_size, bias2_sqrt, beta1, beta2, eps, weight_decay))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn _adam_step(
    py: Python<'_>,
    param: &Bound<'_, PyAny>,
    grad: &Bound<'_, PyAny>,
    exp_avg: &Bound<'_, PyAny>,
    exp_avg_sq: &Bound<'_, PyAny>,
    step_size: f64,
    bias2_sqrt: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
) -> PyResult<()> {
    let kind = kind_of(param, "param")?;
    for (arr, name) in [(grad, "grad"), (exp_avg, "exp_avg"), (exp_avg_sq, "exp_avg_sq")] {
        expect_kind(arr, name, kind, "param")?;
    }
    let h = Adam { step_size, bias2_sqrt, beta1, beta2, eps, weight_decay };
    dispatch!(kind, adam_typed(py, param, grad, exp_avg, exp_avg_sq, h))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_sgd_step, m)?)?;
    m.add_function(wrap_pyfunction!(_adam_step, m)?)?;
    Ok(())
}
