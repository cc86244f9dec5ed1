//! Output buffers for the pooling kernels.
//!
//! Pool outputs and gradients are large (a (32, 64, 112, 112) float32 gradient is 103 MB) and
//! are written once, so most of their cost is the kernel handing out fresh pages. Two things keep
//! that low: the buffer comes from `calloc` (fresh pages arrive zeroed, no `memset` pass on the
//! calling thread; the kernels' threads then touch them in parallel), and on Linux large buffers
//! are advised to use transparent huge pages (one fault per 2 MiB instead of per 4 KiB: measured
//! 6.5 ms instead of 44 ms to touch 103 MB on the benchmark machine).

use crate::element::{checked_len, Real};
use crate::error::{Error, Result};
use std::alloc::Layout;
use std::any::TypeId;

/// Buffers at least this large are advised to use huge pages.
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// A zero-filled vector of `len` elements; an `Alloc` error (not an abort) when memory runs out.
pub(super) fn zeroed<T: 'static + Clone + Default>(len: usize, what: &'static str) -> Result<Vec<T>> {
    // calloc's zero bytes are the value zero only for these types; anything else (a user's own
    // `Real`) takes the plain path.
    let zero_bits_ok = [TypeId::of::<f32>(), TypeId::of::<f64>(), TypeId::of::<i64>(), TypeId::of::<i32>()]
        .contains(&TypeId::of::<T>());
    if len == 0 || !zero_bits_ok {
        return crate::element::zeros_vec(len, what);
    }
    let too_big = || Error::alloc(what, format!("cannot allocate {what}: {len} elements of {} bytes", std::mem::size_of::<T>()));
    let layout = Layout::array::<T>(len).map_err(|_| too_big())?;
    // SAFETY: `layout` has a non-zero size (len > 0 and T is one of the non-zero-sized types
    // above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(too_big());
    }
    advise_huge_pages(ptr.cast::<u8>(), layout.size());
    // SAFETY: `ptr` comes from the global allocator with the layout of `[T; len]`, which is the
    // layout a `Vec<T>` of capacity `len` frees with; all `len` elements are initialised, as the
    // all-zero bit pattern is a valid value (0) of f32, f64, i64 and i32.
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// A zero-filled array of `shape` (see `zeroed`).
pub(super) fn zeros<T: Real>(shape: &[usize], what: &'static str) -> Result<ndarray::ArrayD<T>> {
    let len = checked_len::<T>(shape, what)?;
    let v = zeroed::<T>(len, what)?;
    Ok(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), v).expect("length matches shape"))
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    const PAGE: usize = 4096;
    const MADV_HUGEPAGE: i32 = 14;
    extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    if bytes < HUGE_PAGE_MIN_BYTES {
        return;
    }
    let start = (ptr as usize).next_multiple_of(PAGE);
    let end = (ptr as usize + bytes) & !(PAGE - 1);
    if end > start {
        // SAFETY: [start, end) is page-aligned and lies inside the allocation just made, which
        // this thread owns. MADV_HUGEPAGE is only a hint about how to back the pages: it changes
        // no contents and no permissions, and its failure (e.g. a kernel without THP) is harmless,
        // so the result is ignored.
        unsafe {
            madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_are_zero() {
        let v = zeroed::<f32>(3 << 20, "x").unwrap();
        assert!(v.iter().all(|&x| x == 0.0 && x.is_sign_positive()));
        assert_eq!(zeroed::<i64>(5, "x").unwrap(), vec![0; 5]);
        assert!(zeroed::<f64>(0, "x").unwrap().is_empty());
    }

    #[test]
    fn absurd_sizes_are_errors() {
        assert!(matches!(zeroed::<f64>(usize::MAX / 4, "x"), Err(Error::Alloc { .. })));
        assert!(matches!(zeroed::<f32>(1 << 60, "x"), Err(Error::Alloc { .. })));
    }
}
