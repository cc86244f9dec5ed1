//! The one error type of the crate. Every user mistake becomes a variant here (never a panic), and
//! the Python bindings map each variant to one exception class (see `python/error.rs`).

use std::fmt;

/// What went wrong with a call. Each variant names the argument at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An argument has a bad value, or a shape that does not fit the other arguments.
    /// Python: `ValueError`.
    InvalidArgument { arg: &'static str, msg: String },
    /// An argument has an element type the operation does not take. Python: `TypeError`.
    DType { arg: &'static str, msg: String },
    /// A result or work buffer is too large to allocate (or its size overflows `usize`).
    /// Python: `MemoryError`.
    Alloc { what: &'static str, msg: String },
    /// The calling thread's interrupt check stopped the call (`parallel::with_interrupt_check`).
    /// Python: the exception the signal handler raised (KeyboardInterrupt for Ctrl-C).
    Interrupted,
}

/// The crate's `Result`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(arg: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { arg, msg: msg.into() }
    }

    pub(crate) fn alloc(what: &'static str, msg: impl Into<String>) -> Self {
        Error::Alloc { what, msg: msg.into() }
    }

    /// The argument (or buffer) the error is about.
    pub fn arg(&self) -> &'static str {
        match self {
            Error::InvalidArgument { arg, .. } | Error::DType { arg, .. } => arg,
            Error::Alloc { what, .. } => what,
            Error::Interrupted => "call",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { msg, .. } | Error::DType { msg, .. } | Error::Alloc { msg, .. } => {
                f.write_str(msg)
            }
            Error::Interrupted => f.write_str("the call was interrupted"),
        }
    }
}

impl std::error::Error for Error {}

/// Stops the computation in progress with `err`, from anywhere inside it.
///
/// Kernels run deep inside parallel calls whose items return nothing, so a failure found there
/// (a scratch buffer that cannot be allocated) cannot travel back as a `Result`. It unwinds
/// instead, with `err` as the payload: `resume_unwind` skips the panic hook (nothing is
/// printed), the parallel pool carries the payload from a helper thread to the caller, and the
/// public entry point turns it back into `Err(err)` with `catch`.
pub(crate) fn raise(err: Error) -> ! {
    std::panic::resume_unwind(Box::new(err))
}

/// Runs `f`, turning an `Error` raised inside it (`raise`) into `Err`. Any other panic keeps
/// unwinding: it is a bug, not a user's mistake.
pub(crate) fn catch<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => match payload.downcast::<Error>() {
            Ok(err) => Err(*err),
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

/// Formats a shape the way NumPy prints it: `(2, 3)`, `(5,)`, `()`.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [one] => format!("({one},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// Checks that a backward's `grad_output` has the shape its forward returned; the error names
/// `grad_output` and shows the expected shape and the forward's input shape.
pub(crate) fn check_grad_output(shape: &[usize], expected: &[usize], input: &[usize]) -> Result<()> {
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

/// Checks that an array of `shape` can exist: ndarray and NumPy need the product of its non-zero
/// dimensions to fit `isize`, also when another dimension is 0 (an empty batch, where nothing is
/// allocated). The error names `arg`, the argument that made the shape so large.
pub(crate) fn check_shape_fits(shape: &[usize], arg: &'static str) -> Result<()> {
    let len = shape.iter().filter(|&&d| d != 0).try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match len {
        Some(len) if len <= isize::MAX as usize => Ok(()),
        _ => Err(Error::invalid(
            arg,
            format!("{arg} gives an output of shape {}, more elements than an array can hold", shape_str(shape)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_errors_are_caught_and_other_panics_pass() {
        let err = catch::<()>(|| raise(Error::alloc("scratch", "too large"))).unwrap_err();
        assert_eq!(err.arg(), "scratch");
        assert_eq!(catch(|| Ok(3)), Ok(3));
        let other = std::panic::catch_unwind(|| catch::<()>(|| std::panic::resume_unwind(Box::new(7u8))));
        assert_eq!(other.unwrap_err().downcast::<u8>().ok().map(|b| *b), Some(7));
    }

    #[test]
    fn shapes_print_like_numpy() {
        assert_eq!(shape_str(&[]), "()");
        assert_eq!(shape_str(&[5]), "(5,)");
        assert_eq!(shape_str(&[2, 3, 4]), "(2, 3, 4)");
    }

    #[test]
    fn shapes_whose_size_overflows_are_refused_also_when_empty() {
        assert!(check_shape_fits(&[0, 1, 1 << 31, 1 << 31], "x").is_ok());
        assert_eq!(check_shape_fits(&[0, 1, 1 << 32, 1 << 31], "output_size").unwrap_err().arg(), "output_size");
        assert!(check_shape_fits(&[3, usize::MAX], "x").is_err());
        assert!(check_shape_fits(&[], "x").is_ok());
    }
}
