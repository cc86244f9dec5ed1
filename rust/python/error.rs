//! Maps the crate's `Error` to Python exceptions: one arm per variant.

use crate::error::Error;
use pyo3::exceptions::{PyKeyboardInterrupt, PyMemoryError, PyTypeError, PyValueError};
use pyo3::PyErr;

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::InvalidArgument { msg, .. } => PyValueError::new_err(msg),
            Error::DType { msg, .. } => PyTypeError::new_err(msg),
            Error::Alloc { msg, .. } => PyMemoryError::new_err(msg),
            // `compute` returns the exception the signal handler raised instead; this is for a
            // check that stopped a call without one.
            Error::Interrupted => PyKeyboardInterrupt::new_err("the call was interrupted"),
        }
    }
}
