//! Argument parsing shared by the bindings: NumPy arrays and their dtype, ints and tuples of
//! ints, padding, and running a computation with the GIL released.

use crate::element::Real;
use crate::params::Padding;
use numpy::{Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyList, PyString, PyTuple};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A float type rconv computes in and NumPy can hold.
pub(crate) trait PyReal: Real + Element {}
impl PyReal for f32 {}
impl PyReal for f64 {}

/// The float dtype of a call, taken from its first array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    F32,
    F64,
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => format!("{} array of shape {}", dtype_name(a), crate::error::shape_str(a.shape())),
        Err(_) => obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into()),
    }
}

fn dtype_name(a: &Bound<'_, PyUntypedArray>) -> String {
    a.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into())
}

/// The dtype of `obj`, which must be a float32 or float64 ndarray (TypeError otherwise).
pub(crate) fn kind_of(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<Kind> {
    let py = obj.py();
    let Ok(arr) = obj.cast::<PyUntypedArray>() else {
        return Err(PyTypeError::new_err(format!(
            "{arg} must be a numpy.ndarray of float32 or float64, got {}",
            describe(obj)
        )));
    };
    let dt = arr.dtype();
    if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Ok(Kind::F32)
    } else if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Ok(Kind::F64)
    } else {
        Err(PyTypeError::new_err(format!(
            "{arg} must be a float32 or float64 array, got {} (convert it with .astype(numpy.float32))",
            describe(obj)
        )))
    }
}

/// Checks that `obj` is an ndarray of the call's dtype `kind` (set by `first`).
pub(crate) fn expect_kind(obj: &Bound<'_, PyAny>, arg: &str, kind: Kind, first: &str) -> PyResult<()> {
    let k = kind_of(obj, arg)?;
    if k == kind {
        return Ok(());
    }
    let name = |k: Kind| if k == Kind::F32 { "float32" } else { "float64" };
    Err(PyTypeError::new_err(format!(
        "{arg} is {} but {first} is {}: mixed dtypes are not supported, convert one of them with .astype()",
        name(k),
        name(kind)
    )))
}

/// A read-only view of an ndarray already checked to be of dtype `T`.
pub(crate) fn readonly<'py, T: PyReal>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    let arr = obj
        .cast::<PyArrayDyn<T>>()
        .map_err(|_| PyTypeError::new_err(format!("{arg} must be a {} array, got {}", T::NAME, describe(obj))))?;
    arr.try_readonly().map_err(|e| PyValueError::new_err(format!("{arg} cannot be read: {e}")))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// One int argument: a Python int (or NumPy integer), at least `min`.
fn one_int(obj: &Bound<'_, PyAny>, arg: &str, min: usize) -> PyResult<usize> {
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!("{arg} must be an int, got bool")));
    }
    let v: i128 = obj
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{arg} must be an int or a tuple of ints, got {}", type_name(obj))))?;
    if v < min as i128 {
        return Err(PyValueError::new_err(format!("{arg} must be at least {min}, got {v}")));
    }
    usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{arg} = {v} is too large")))
}

/// An int or a tuple/list of `dims` ints, each at least `min`; `None` gives `default`.
pub(crate) fn ints(obj: Option<&Bound<'_, PyAny>>, arg: &str, dims: usize, default: usize, min: usize) -> PyResult<Vec<usize>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(vec![default; dims]);
    };
    if obj.is_instance_of::<PyTuple>() || obj.is_instance_of::<PyList>() {
        let items: Vec<Bound<'_, PyAny>> = obj.try_iter()?.collect::<PyResult<_>>()?;
        if items.len() == 1 && dims > 1 {
            // PyTorch's _ntuple: a one-element sequence is broadcast like a scalar.
            return Ok(vec![one_int(&items[0], arg, min)?; dims]);
        }
        if items.len() != dims {
            return Err(PyValueError::new_err(format!(
                "{arg} must be an int or a tuple of {dims} ints for a {dims}-D operation, got {} values",
                items.len()
            )));
        }
        return items.iter().map(|i| one_int(i, arg, min)).collect();
    }
    Ok(vec![one_int(obj, arg, min)?; dims])
}

/// `padding`: an int, a tuple of ints, `"valid"` or `"same"`.
pub(crate) fn padding(obj: Option<&Bound<'_, PyAny>>, dims: usize) -> PyResult<Padding> {
    if let Some(s) = obj.and_then(|o| o.cast::<PyString>().ok()) {
        return Ok(s.to_cow()?.parse::<Padding>()?);
    }
    Ok(Padding::Explicit(ints(obj, "padding", dims, 0, 0)?))
}

/// `output_size` of an adaptive pool: an int, or a tuple of ints and `None`s.
pub(crate) fn output_size(obj: &Bound<'_, PyAny>, dims: usize) -> PyResult<Vec<Option<usize>>> {
    if obj.is_instance_of::<PyTuple>() || obj.is_instance_of::<PyList>() {
        let items: Vec<Bound<'_, PyAny>> = obj.try_iter()?.collect::<PyResult<_>>()?;
        if items.len() != dims {
            return Err(PyValueError::new_err(format!(
                "output_size must be an int or a tuple of {dims} values for a {dims}-D pool, got {} values",
                items.len()
            )));
        }
        return items.iter().map(|i| if i.is_none() { Ok(None) } else { one_int(i, "output_size", 1).map(Some) }).collect();
    }
    Ok(vec![Some(one_int(obj, "output_size", 1)?); dims])
}

/// Runs `f` with the GIL released. An error raised inside the computation (`error::raise`)
/// becomes its exception; a panic (a bug in rconv, never a user error) becomes a RuntimeError
/// instead of tearing down the interpreter.
///
/// On the main thread a signal stops the call: between work items, every 10 ms at most, the
/// thread takes the GIL for a moment and runs Python's signal handlers (`interp::signal_raised`);
/// when one raises (KeyboardInterrupt for Ctrl-C), the call stops, its partial output is
/// dropped, and that exception is returned. A thread that ends its computation while Python
/// exits never comes back (see `interp`).
pub(crate) fn compute<R: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<R> + Send) -> PyResult<R> {
    let interruptible = super::interp::is_main_thread();
    run_detached(py, interruptible, f)
}

/// As `compute`, for a call that updates arrays in place: it is never stopped halfway, so a
/// signal takes effect when it returns (an optimiser step takes micro- to milliseconds).
pub(crate) fn compute_in_place<R: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<R> + Send) -> PyResult<R> {
    run_detached(py, false, f)
}

fn run_detached<R: Send>(py: Python<'_>, interruptible: bool, f: impl FnOnce() -> crate::Result<R> + Send) -> PyResult<R> {
    let result = py.detach(|| {
        let result = catch_unwind(AssertUnwindSafe(|| {
            if interruptible {
                crate::parallel::with_interrupt_check(super::interp::signal_raised, f)
            } else {
                crate::error::catch(f)
            }
        }));
        super::interp::before_reattach();
        result
    });
    super::interp::reattached();
    match result {
        Ok(Err(crate::Error::Interrupted)) => Err(super::interp::take_signal_error()),
        Ok(result) => Ok(result?),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(PyRuntimeError::new_err(format!("rconv internal error (please report it): {what}")))
        }
    }
}

/// Calls a generic function with the type parameter matching `kind`.
macro_rules! dispatch {
    ($kind:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $kind {
            $crate::python::args::Kind::F32 => $f::<f32>($($arg),*),
            $crate::python::args::Kind::F64 => $f::<f64>($($arg),*),
        }
    };
}
pub(crate) use dispatch;
