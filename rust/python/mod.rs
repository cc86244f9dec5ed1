//! The Python extension module `rconv._rconv`: argument parsing, dtype dispatch, GIL release
//! and error mapping only. All numerics live in the crate's core modules.

mod args;
mod conv;
mod error;
mod interp;
mod ops;
mod optim;
mod pool;

use ndarray::{ArrayD, ArrayViewD, Axis};
use pyo3::prelude::*;

/// Accepts unbatched input `(C, *spatial)` as PyTorch does: returns a batched view and whether a
/// batch axis was added.
fn add_batch<T>(x: ArrayViewD<'_, T>, dims: usize) -> (ArrayViewD<'_, T>, bool) {
    if x.ndim() == dims + 1 {
        (x.insert_axis(Axis(0)), true)
    } else {
        (x, false)
    }
}

/// `grad_output` batched the same way as the input: unbatched exactly when the input is.
fn batch_grad<'a, T>(g: ArrayViewD<'a, T>, dims: usize, unbatched: bool) -> PyResult<ArrayViewD<'a, T>> {
    if !unbatched {
        return Ok(g);
    }
    if g.ndim() != dims + 1 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "grad_output must be unbatched like the input ({} dimensions), got shape {}",
            dims + 1,
            crate::error::shape_str(g.shape())
        )));
    }
    Ok(g.insert_axis(Axis(0)))
}

/// Removes the batch axis `add_batch` added.
fn drop_batch<T>(out: ArrayD<T>, unbatched: bool) -> ArrayD<T> {
    if unbatched {
        out.index_axis_move(Axis(0), 0)
    } else {
        out
    }
}

/// Frees the blocks rconv's allocator keeps for reuse (see `crate::alloc`); the benchmark's
/// peak-memory measurement calls it first, so that the memory a call needs is counted.
#[pyfunction]
fn _release_cached_memory() {
    crate::ALLOCATOR.release();
}

/// Bytes rconv's allocator keeps for reuse.
#[pyfunction]
fn _cached_memory_bytes() -> usize {
    crate::ALLOCATOR.cached_bytes()
}

#[pymodule]
fn _rconv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    if let Some(warning) = crate::parallel::init_from_env() {
        // A bad RCONV_NUM_THREADS must not stop the import, also where warnings are errors.
        let _ = PyErr::warn(m.py(), m.py().get_type::<pyo3::exceptions::PyRuntimeWarning>().as_any(), &std::ffi::CString::new(warning).unwrap_or_default(), 1);
    }
    crate::fork::hold_across_forks::<crate::alloc::CacheLock>();
    interp::register(m)?;
    conv::register(m)?;
    pool::register(m)?;
    ops::register(m)?;
    optim::register(m)?;
    m.add_function(wrap_pyfunction!(_release_cached_memory, m)?)?;
    m.add_function(wrap_pyfunction!(_cached_memory_bytes, m)?)?;
    Ok(())
}
