//! The element types rconv computes in (f32 and f64) and the fallible buffers it computes into.

use crate::error::{Error, Result};
use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};
use num_traits::{Float, FromPrimitive};
use std::fmt::Debug;
use std::alloc::Layout;
use std::any::TypeId;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// A floating-point element type: `f32` or `f64`. Kernels are generic over it; only the GEMM call
/// differs between the two.
pub trait Real:
    Float
    + FromPrimitive
    + Default
    + Debug
    + Send
    + Sync
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + crate::simd::Vectors
    + 'static
{
    /// `"float32"` or `"float64"`, for messages.
    const NAME: &'static str;

    /// `C = alpha * A B + beta * C` for an (m, k) A, a (k, n) B and an (m, n) C given by pointers
    /// and element strides (row stride, column stride). With `beta == 0`, C is not read.
    ///
    /// # Safety
    /// Every element addressed through the pointers and strides must be inside its allocation,
    /// and C must not overlap A or B.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize, k: usize, n: usize, alpha: Self,
        a: *const Self, rsa: isize, csa: isize,
        b: *const Self, rsb: isize, csb: isize,
        beta: Self, c: *mut Self, rsc: isize, csc: isize,
    );
}

impl Real for f32 {
    const NAME: &'static str = "float32";

    unsafe fn gemm(
        m: usize, k: usize, n: usize, alpha: f32,
        a: *const f32, rsa: isize, csa: isize,
        b: *const f32, rsb: isize, csb: isize,
        beta: f32, c: *mut f32, rsc: isize, csc: isize,
    ) {
        // SAFETY: the caller guarantees the pointers and strides describe valid, non-overlapping
        // matrices, which is matrixmultiply's contract.
        unsafe { matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

impl Real for f64 {
    const NAME: &'static str = "float64";

    unsafe fn gemm(
        m: usize, k: usize, n: usize, alpha: f64,
        a: *const f64, rsa: isize, csa: isize,
        b: *const f64, rsb: isize, csb: isize,
        beta: f64, c: *mut f64, rsc: isize, csc: isize,
    ) {
        // SAFETY: as for f32.
        unsafe { matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

/// The sum of `v` in a fixed order that vectorises: 16 running sums over consecutive elements,
/// added pairwise at the end, then the tail. (A plain `.sum()` is one chain of dependent adds,
/// 4 cycles each; this is several times faster and no less accurate.)
pub(crate) fn sum<T: Real>(v: &[T]) -> T {
    const L: usize = 16;
    let mut acc = [T::zero(); L];
    let chunks = v.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut n = L;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            let right = acc[i + n];
            acc[i] += right;
        }
    }
    tail.iter().fold(acc[0], |s, &x| s + x)
}

/// `dst[c * dst_ld + r] = src[r * src_ld + c]` for `r < rows`, `c < cols`: a transpose between
/// row-major matrices with leading dimensions `src_ld` and `dst_ld`.
///
/// matrixmultiply packs an operand whose inner dimension is contiguous by copying runs, but
/// one whose inner dimension is strided one element at a time (about 3.5 cycles each here, and
/// the left operand again for every 1,024 columns of the right one). A GEMM whose operand comes
/// in the wrong layout (the weights of a forward im2col, the two operands of a weight gradient,
/// a linear layer's input and weights) is faster with the operand transposed here first, in
/// 8x8 (f32) or 4x4 (f64) blocks of AVX shuffles; the compiler's own code for the blocks went
/// through the stack one element at a time.
pub(crate) fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, src_ld: usize, dst: &mut [T], dst_ld: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(src_ld >= cols && dst_ld >= rows, "transpose: leading dimensions shorter than the rows");
    assert!(src.len() >= (rows - 1) * src_ld + cols && dst.len() >= (cols - 1) * dst_ld + rows, "transpose: slices too short");
    #[cfg(target_arch = "x86_64")]
    {
        let size = std::mem::size_of::<T>();
        if (size == 4 || size == 8) && std::arch::is_x86_feature_detected!("avx") {
            let b = 32 / size;
            let (full_r, full_c) = (rows - rows % b, cols - cols % b);
            for r0 in (0..full_r).step_by(b) {
                for c0 in (0..full_c).step_by(b) {
                    let (from, to) = (src[r0 * src_ld + c0..].as_ptr(), dst[c0 * dst_ld + r0..].as_mut_ptr());
                    // SAFETY: this CPU has AVX; the block's rows `r0..r0 + b` and columns
                    // `c0..c0 + b` are inside both matrices (asserted bounds), and `T` is 4 or 8
                    // bytes, moved as bits.
                    unsafe {
                        if size == 4 {
                            simd_transpose::block_8x8_f32(from.cast(), src_ld, to.cast(), dst_ld)
                        } else {
                            simd_transpose::block_4x4_f64(from.cast(), src_ld, to.cast(), dst_ld)
                        }
                    }
                }
            }
            transpose_edges(src, rows, cols, src_ld, dst, dst_ld, full_r, full_c);
            return;
        }
    }
    transpose_edges(src, rows, cols, src_ld, dst, dst_ld, 0, 0);
}

/// The elements of `transpose` outside the blocks `rows < full_r`, `cols < full_c`.
#[allow(clippy::too_many_arguments)]
fn transpose_edges<T: Copy>(src: &[T], rows: usize, cols: usize, src_ld: usize, dst: &mut [T], dst_ld: usize, full_r: usize, full_c: usize) {
    for r in 0..rows {
        for c in if r < full_r { full_c } else { 0 }..cols {
            dst[c * dst_ld + r] = src[r * src_ld + c];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd_transpose {
    use std::arch::x86_64::*;

    /// Transposes the 8x8 block of f32 at `src` (rows `ld` apart) into `dst` (rows `dst_ld`
    /// apart): pairs of rows interleaved, then quads, then the 128-bit halves swapped.
    ///
    /// # Safety
    /// This CPU has AVX; 8 rows of 8 elements are readable at `src` and writable at `dst`.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn block_8x8_f32(src: *const f32, ld: usize, dst: *mut f32, dst_ld: usize) {
        // SAFETY: as the function's contract.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ld)));
            let t: [__m256; 8] = std::array::from_fn(|i| {
                let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                if i % 2 == 0 { _mm256_unpacklo_ps(a, b) } else { _mm256_unpackhi_ps(a, b) }
            });
            // s[j] holds columns j and j + 4 of rows 0-3 (j < 4) or 4-7 (j >= 4).
            let s: [__m256; 8] = std::array::from_fn(|j| {
                let (q, k) = (j / 4, j % 4);
                let (a, b) = (t[4 * q + k / 2], t[4 * q + k / 2 + 2]);
                if k % 2 == 0 { _mm256_shuffle_ps::<0x44>(a, b) } else { _mm256_shuffle_ps::<0xee>(a, b) }
            });
            for j in 0..4 {
                _mm256_storeu_ps(dst.add(j * dst_ld), _mm256_permute2f128_ps::<0x20>(s[j], s[j + 4]));
                _mm256_storeu_ps(dst.add((j + 4) * dst_ld), _mm256_permute2f128_ps::<0x31>(s[j], s[j + 4]));
            }
        }
    }

    /// Transposes the 4x4 block of f64 at `src` into `dst`, as `block_8x8_f32`.
    ///
    /// # Safety
    /// This CPU has AVX; 4 rows of 4 elements are readable at `src` and writable at `dst`.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn block_4x4_f64(src: *const f64, ld: usize, dst: *mut f64, dst_ld: usize) {
        // SAFETY: as the function's contract.
        unsafe {
            let r: [__m256d; 4] = std::array::from_fn(|i| _mm256_loadu_pd(src.add(i * ld)));
            let (t0, t1) = (_mm256_unpacklo_pd(r[0], r[1]), _mm256_unpackhi_pd(r[0], r[1]));
            let (t2, t3) = (_mm256_unpacklo_pd(r[2], r[3]), _mm256_unpackhi_pd(r[2], r[3]));
            _mm256_storeu_pd(dst, _mm256_permute2f128_pd::<0x20>(t0, t2));
            _mm256_storeu_pd(dst.add(dst_ld), _mm256_permute2f128_pd::<0x20>(t1, t3));
            _mm256_storeu_pd(dst.add(2 * dst_ld), _mm256_permute2f128_pd::<0x31>(t0, t2));
            _mm256_storeu_pd(dst.add(3 * dst_ld), _mm256_permute2f128_pd::<0x31>(t1, t3));
        }
    }
}

/// The number of elements of `shape`, or an `Alloc` error when it (or its byte size) overflows.
pub(crate) fn checked_len<T>(shape: &[usize], what: &'static str) -> Result<usize> {
    let too_big = || {
        Error::alloc(what, format!("{what} of shape {} is too large to allocate", crate::error::shape_str(shape)))
    };
    let len = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(too_big)?;
    match len.checked_mul(std::mem::size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(len),
        _ => Err(too_big()),
    }
}

/// Buffers at least this large are advised to use transparent huge pages.
pub(crate) const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// A zero-filled vector of `len` elements; an `Alloc` error (not an abort) when memory runs out.
///
/// Outputs and gradients are large and written once, so much of their cost is the OS handing out
/// fresh pages. For the plain number types the buffer comes from `calloc` (fresh pages arrive
/// zeroed: no memset pass on the calling thread; the kernels' threads then fault them in
/// parallel), and on Linux large buffers are advised to use huge pages (one fault per 2 MiB
/// instead of per 4 KiB: 6.5 ms instead of 44 ms to touch 103 MB, measured here).
pub(crate) fn zeros_vec<T: 'static + Clone + Default>(len: usize, what: &'static str) -> Result<Vec<T>> {
    let too_big = || alloc_error::<T>(what, len);
    // calloc's zero bytes are the value zero only for these types; any other type takes the
    // plain path.
    let zero_bits_ok = [TypeId::of::<f32>(), TypeId::of::<f64>(), TypeId::of::<i64>(), TypeId::of::<i32>()]
        .contains(&TypeId::of::<T>());
    if len == 0 || !zero_bits_ok {
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|_| too_big())?;
        v.resize(len, T::default());
        return Ok(v);
    }
    let layout = Layout::array::<T>(len).map_err(|_| too_big())?;
    // SAFETY: `layout` has a non-zero size (len > 0 and T is one of the sized number types above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(too_big());
    }
    advise_huge_pages(ptr.cast::<u8>(), layout.size());
    // SAFETY: `ptr` comes from the global allocator with the layout of `[T; len]`, the layout a
    // `Vec<T>` of capacity `len` frees with; all `len` elements are initialised, as the all-zero
    // bit pattern is the value 0 of f32, f64, i64 and i32.
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
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
        // SAFETY: [start, end) is page-aligned and inside the allocation just made, which this
        // thread owns. MADV_HUGEPAGE only hints how to back the pages: it changes no contents or
        // permissions, and its failure (a kernel without THP) is harmless, so it is ignored.
        unsafe {
            madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _bytes: usize) {}

/// The `Alloc` error for a buffer of `len` elements of `T`.
fn alloc_error<T>(what: &'static str, len: usize) -> Error {
    Error::alloc(what, format!("cannot allocate {what}: {len} elements of {} bytes", std::mem::size_of::<T>()))
}

// Kernels run inside parallel calls whose items return nothing, so the buffers they allocate
// there (scratch, packed operands, partial sums) cannot return an error. These allocate with
// `try_reserve` and, when memory runs out, unwind with the `Alloc` error (`error::raise`),
// which the pool carries to the calling thread and the public entry point returns as `Err`:
// a MemoryError in Python, where an infallible `vec!` would abort the process.

/// `zeros_vec` inside a kernel: raises `Alloc` instead of returning it.
pub(crate) fn scratch<T: 'static + Clone + Default>(len: usize, what: &'static str) -> Vec<T> {
    zeros_vec(len, what).unwrap_or_else(|e| crate::error::raise(e))
}

/// `vec![value; len]` inside a kernel: raises `Alloc` instead of aborting.
pub(crate) fn filled<T: Clone>(len: usize, value: T, what: &'static str) -> Vec<T> {
    let mut v = Vec::new();
    resize(&mut v, len, value, what);
    v
}

/// An empty vector with room for `len` elements, inside a kernel: raises `Alloc` instead of
/// aborting.
pub(crate) fn with_capacity<T>(len: usize, what: &'static str) -> Vec<T> {
    let mut v = Vec::new();
    if v.try_reserve_exact(len).is_err() {
        crate::error::raise(alloc_error::<T>(what, len));
    }
    v
}

/// `v.reserve(additional)` inside a kernel: raises `Alloc` instead of aborting.
pub(crate) fn reserve<T>(v: &mut Vec<T>, additional: usize, what: &'static str) {
    if v.try_reserve(additional).is_err() {
        crate::error::raise(alloc_error::<T>(what, v.len().saturating_add(additional)));
    }
}

/// `v.resize(len, value)` for a kernel's reused scratch buffer: raises `Alloc` instead of
/// aborting.
pub(crate) fn resize<T: Clone>(v: &mut Vec<T>, len: usize, value: T, what: &'static str) {
    reserve(v, len.saturating_sub(v.len()), what);
    v.resize(len, value);
}

/// A zero-filled array of `shape`, allocated fallibly.
pub(crate) fn zeros<T: Real>(shape: &[usize], what: &'static str) -> Result<ArrayD<T>> {
    let len = checked_len::<T>(shape, what)?;
    let v = zeros_vec::<T>(len, what)?;
    Ok(ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches shape"))
}

/// `view` in standard (C-contiguous) layout: borrowed when it already is, else a fallible copy.
pub(crate) fn standard<'a, T: Real>(view: ArrayViewD<'a, T>, what: &'static str) -> Result<CowArray<'a, T, IxDyn>> {
    if view.is_standard_layout() {
        return Ok(CowArray::from(view));
    }
    let mut out = zeros::<T>(view.shape(), what)?;
    out.assign(&view);
    Ok(CowArray::from(out))
}

/// A raw pointer that may cross threads. Used where parallel tasks write provably disjoint parts
/// of one output buffer that cannot be split into safe chunks (e.g. column tiles of a matrix).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);

// SAFETY: the pointer is only dereferenced by tasks that write disjoint elements, as each use
// site documents; the pointee (f32/f64) is Send.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; shared references to the wrapper only copy the pointer out.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The wrapped pointer. A method (not field access) so closures capture the whole
    /// `SendPtr`, which is `Sync`, rather than the bare pointer field.
    #[inline]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_transpose<T: Copy + PartialEq + std::fmt::Debug>(of: impl Fn(usize) -> T, unset: T) {
        // Whole blocks, ragged edges on both sides, and leading dimensions past the width.
        for (rows, cols, src_ld, dst_ld) in [(16, 24, 24, 16), (13, 21, 25, 15), (7, 3, 3, 9), (1, 1, 1, 1), (9, 8, 11, 9), (0, 3, 3, 1)] {
            let src: Vec<T> = (0..rows * src_ld).map(&of).collect();
            let mut dst = vec![unset; cols * dst_ld];
            transpose(&src, rows, cols, src_ld, &mut dst, dst_ld);
            for c in 0..cols {
                for r in 0..dst_ld {
                    let want = if r < rows { of(r * src_ld + c) } else { unset };
                    assert_eq!(dst[c * dst_ld + r], want, "{rows}x{cols} ld {src_ld}/{dst_ld} at ({c}, {r})");
                }
            }
        }
    }

    #[test]
    fn transpose_moves_every_element_once() {
        // 4- and 8-byte elements take the AVX blocks (moved as bits: NaN patterns included),
        // others the plain loops.
        check_transpose(|i| i as u32 | 0xffc0_0000, 0);
        check_transpose(|i| i as u64 | 0xfff8_0000_0000_0000, 0);
        check_transpose(|i| i as u16, u16::MAX);
    }

    #[test]
    fn checked_len_catches_overflow() {
        assert_eq!(checked_len::<f32>(&[2, 3, 4], "x").unwrap(), 24);
        assert!(matches!(checked_len::<f32>(&[usize::MAX, 2], "x"), Err(Error::Alloc { .. })));
        assert!(matches!(checked_len::<f64>(&[1 << 61], "x"), Err(Error::Alloc { .. })));
    }

    #[test]
    fn huge_allocation_is_an_error_not_an_abort() {
        assert!(matches!(zeros_vec::<f32>(1 << 60, "x"), Err(Error::Alloc { .. })));
        assert!(matches!(zeros_vec::<f64>(usize::MAX / 4, "x"), Err(Error::Alloc { .. })));
        assert!(matches!(zeros_vec::<u8>(usize::MAX / 2, "x"), Err(Error::Alloc { .. })));
    }

    #[test]
    fn zeroed_buffers_are_zero() {
        let v = zeros_vec::<f32>(3 << 20, "x").unwrap();
        assert!(v.iter().all(|&x| x == 0.0 && x.is_sign_positive()));
        assert_eq!(zeros_vec::<i64>(5, "x").unwrap(), vec![0; 5]);
        assert_eq!(zeros_vec::<u16>(3, "x").unwrap(), vec![0; 3]);
        assert!(zeros_vec::<f64>(0, "x").unwrap().is_empty());
    }

    #[test]
    fn gemm_small() {
        // [1 2; 3 4] * [5; 6] = [17; 39]
        let a = [1.0f64, 2.0, 3.0, 4.0];
        let b = [5.0f64, 6.0];
        let mut c = [0.0f64; 2];
        unsafe { f64::gemm(2, 2, 1, 1.0, a.as_ptr(), 2, 1, b.as_ptr(), 1, 1, 0.0, c.as_mut_ptr(), 1, 1) };
        assert_eq!(c, [17.0, 39.0]);
    }
}
