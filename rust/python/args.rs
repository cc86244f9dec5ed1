//! Argument parsing shared by the bindings: NumPy arrays and their dtype, ints and tuples of
//! ints, padding, and running a computation with the GIL released.

use crate::element::Real;
use crate::params::{Padding, PaddingMode};
use numpy::{Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyList, PyString, PyTuple};
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

/// The most dimensions an array argument may have: rust-numpy makes views of at most 32 (NumPy's
/// own limit before 2.0) and panics past that, so this is checked before any view is made.
const MAX_NDIM: usize = 32;

/// `obj` as an ndarray, or None when it is not one. Every array argument is looked at through
/// here before anything else, so one of more than `MAX_NDIM` dimensions is a ValueError naming
/// `arg`, never a panic.
pub(crate) fn ndarray<'a, 'py>(obj: &'a Bound<'py, PyAny>, arg: &str) -> PyResult<Option<&'a Bound<'py, PyUntypedArray>>> {
    let Ok(arr) = obj.cast::<PyUntypedArray>() else {
        return Ok(None);
    };
    if arr.ndim() > MAX_NDIM {
        return Err(PyValueError::new_err(format!(
            "{arg} has {} dimensions; rconv takes arrays of at most {MAX_NDIM}",
            arr.ndim()
        )));
    }
    Ok(Some(arr))
}

/// The dtype of `obj`, which must be a float32 or float64 ndarray (TypeError otherwise).
pub(crate) fn kind_of(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<Kind> {
    let py = obj.py();
    let Some(arr) = ndarray(obj, arg)? else {
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
    ndarray(obj, arg)?;
    let arr = obj
        .cast::<PyArrayDyn<T>>()
        .map_err(|_| PyTypeError::new_err(format!("{arg} must be a {} array, got {}", T::NAME, describe(obj))))?;
    arr.try_readonly().map_err(|e| PyValueError::new_err(format!("{arg} cannot be read: {e}")))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    if obj.is_none() {
        return "None".into();
    }
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// An optional argument as the caller passed it. Unlike `Option`, a `None` passed explicitly is
/// a value (`Given(None)`), which the arguments that have no use for None refuse; `Missing` (left
/// out) takes the default.
pub(crate) enum Arg<'py> {
    Missing,
    Given(Bound<'py, PyAny>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Arg<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Arg::Given(obj.to_owned()))
    }
}

impl<'py> Arg<'py> {
    /// The value, if one was passed; `None` passed explicitly counts as left out (for the
    /// arguments whose default is None, such as a pool's stride).
    pub(crate) fn or_none(&self) -> Option<&Bound<'py, PyAny>> {
        match self {
            Arg::Given(v) if !v.is_none() => Some(v),
            _ => None,
        }
    }
}

/// A Python bool or a NumPy bool: refused where an int is expected (as PyTorch does).
fn is_bool(obj: &Bound<'_, PyAny>) -> bool {
    if obj.is_instance_of::<PyInt>() {
        return obj.is_instance_of::<PyBool>();
    }
    let ty = obj.get_type();
    ty.module().is_ok_and(|m| m.to_cow().is_ok_and(|m| m == "numpy"))
        && ty.name().is_ok_and(|n| n.to_cow().is_ok_and(|n| n == "bool_" || n == "bool"))
}

/// An int of any size or kind (Python, NumPy) or a bool: what `int_in` judges by value.
fn is_int_like(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyInt>() || is_bool(obj) || obj.extract::<i128>().is_ok()
}

/// One int argument in `[min, max]`: a Python int or a NumPy integer, never a bool. An int
/// outside the range is a ValueError naming `arg` (not Python's OverflowError), anything else a
/// TypeError naming it.
pub(crate) fn int_in(obj: &Bound<'_, PyAny>, arg: &str, min: i128, max: i128) -> PyResult<i128> {
    if is_bool(obj) {
        return Err(PyTypeError::new_err(format!("{arg} must be an int, got bool")));
    }
    let v = match obj.extract::<i128>() {
        Ok(v) => v,
        // Past i128: an int still, just far too large (or small).
        Err(_) if obj.is_instance_of::<PyInt>() => {
            if obj.lt(0)? {
                i128::MIN
            } else {
                i128::MAX
            }
        }
        Err(_) => return Err(PyTypeError::new_err(format!("{arg} must be an int, got {}", type_name(obj)))),
    };
    if v < min {
        let shown = if v == i128::MIN { obj.to_string() } else { v.to_string() };
        return Err(PyValueError::new_err(format!("{arg} must be at least {min}, got {shown}")));
    }
    if v > max {
        let shown = if v == i128::MAX { obj.to_string() } else { v.to_string() };
        return Err(PyValueError::new_err(format!("{arg} = {shown} is too large (at most {max})")));
    }
    Ok(v)
}

/// One size-like int argument (a kernel size, stride, padding, ...): at least `min`, at most
/// `usize::MAX`.
fn one_int(obj: &Bound<'_, PyAny>, arg: &str, min: usize) -> PyResult<usize> {
    Ok(int_in(obj, arg, min as i128, usize::MAX as i128)? as usize)
}

/// An int or a tuple/list of `dims` ints, each at least `min`.
pub(crate) fn ints(obj: &Bound<'_, PyAny>, arg: &str, dims: usize, min: usize) -> PyResult<Vec<usize>> {
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
    if !is_int_like(obj) {
        return Err(PyTypeError::new_err(format!(
            "{arg} must be an int or a tuple of {dims} ints, got {}",
            type_name(obj)
        )));
    }
    Ok(vec![one_int(obj, arg, min)?; dims])
}

/// `ints` of an optional argument: `default` in every dimension when left out.
pub(crate) fn ints_or(obj: &Arg<'_>, arg: &str, dims: usize, default: usize, min: usize) -> PyResult<Vec<usize>> {
    match obj {
        Arg::Missing => Ok(vec![default; dims]),
        Arg::Given(v) => ints(v, arg, dims, min),
    }
}

/// `padding`: an int, a tuple of ints, `"valid"` or `"same"`; 0 when left out.
pub(crate) fn padding(obj: &Arg<'_>, dims: usize) -> PyResult<Padding> {
    match obj {
        Arg::Given(v) => match v.cast::<PyString>() {
            Ok(s) => Ok(s.to_cow()?.parse::<Padding>()?),
            Err(_) => Ok(Padding::Explicit(ints(v, "padding", dims, 0)?)),
        },
        Arg::Missing => Ok(Padding::Explicit(vec![0; dims])),
    }
}

/// `padding_mode`: one of the mode strings; "zeros" when left out.
pub(crate) fn padding_mode(obj: &Arg<'_>) -> PyResult<PaddingMode> {
    match obj {
        Arg::Missing => Ok(PaddingMode::Zeros),
        Arg::Given(v) => match v.cast::<PyString>() {
            Ok(s) => Ok(s.to_cow()?.parse::<PaddingMode>()?),
            Err(_) => Err(PyTypeError::new_err(format!(
                "padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', got {}",
                type_name(v)
            ))),
        },
    }
}

/// A flag: a bool or a NumPy bool (as PyTorch accepts); `default` when left out. Anything else,
/// None and the ints 0 and 1 included, is a TypeError naming `arg`.
pub(crate) fn flag(obj: &Arg<'_>, arg: &str, default: bool) -> PyResult<bool> {
    match obj {
        Arg::Missing => Ok(default),
        Arg::Given(v) if is_bool(v) => Ok(v.extract::<bool>()?),
        Arg::Given(v) => Err(PyTypeError::new_err(format!("{arg} must be a bool, got {}", type_name(v)))),
    }
}

/// A positive int argument that is not a size per dimension (`groups`); `default` when left out.
pub(crate) fn count(obj: &Arg<'_>, arg: &str, default: usize) -> PyResult<usize> {
    match obj {
        Arg::Missing => Ok(default),
        Arg::Given(v) => one_int(v, arg, 1),
    }
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
    if !is_int_like(obj) {
        return Err(PyTypeError::new_err(format!(
            "output_size must be an int or a tuple of {dims} ints (or None), got {}",
            type_name(obj)
        )));
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
