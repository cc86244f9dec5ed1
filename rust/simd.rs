//! Explicit SIMD vectors for the kernels that need register blocking (`conv::direct`).
//!
//! Loops that LLVM vectorises well stay plain Rust (pooling, depthwise, Winograd transforms).
//! A register-blocked kernel, though, must keep a fixed grid of accumulators in registers, which
//! only explicit vectors guarantee. `Vector` is the handful of operations such a kernel uses; it
//! is implemented for 512-bit (AVX-512F) and 256-bit (AVX2 + FMA) registers of f32 and f64.
//! Kernels are written once, generic over `Vector` and `#[inline(always)]`, and compiled inside
//! a `#[target_feature]` function per instruction set, picked at run time (`Isa::detect`), so
//! one wheel runs on every x86-64 CPU.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The instruction sets the explicit-SIMD kernels are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F: 32 registers of 512 bits.
    Avx512,
    /// AVX2 and FMA: 16 registers of 256 bits.
    Avx2,
}

impl Isa {
    /// The best instruction set of this CPU, or `None` when it has neither (the callers then use
    /// their portable strategies). std caches the CPU check.
    pub(crate) fn detect() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Some(Isa::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Some(Isa::Avx2);
            }
        }
        None
    }

    /// Every instruction set this CPU runs (the tests compare them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        match Isa::detect() {
            Some(Isa::Avx512) => vec![Isa::Avx2, Isa::Avx512],
            Some(Isa::Avx2) => vec![Isa::Avx2],
            None => vec![],
        }
    }
}

/// A register of `LANES` elements.
///
/// # Safety
/// Every method may only run on a CPU with the vector's instruction set, inside a function
/// compiled with it (`#[target_feature]`), so that the intrinsics inline. Pointers must be valid
/// for `LANES` elements (unaligned is fine).
pub trait Vector: Copy {
    type Elem: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: Self::Elem) -> Self;
    unsafe fn load(p: *const Self::Elem) -> Self;
    unsafe fn store(self, p: *mut Self::Elem);
    /// `self * b + c` with one rounding.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
}

/// Implements `Vector` for a newtype over an x86 register type.
macro_rules! vector {
    ($name:ident, $reg:ty, $elem:ty, $lanes:expr, $zero:ident, $set1:ident, $loadu:ident, $storeu:ident, $fmadd:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[derive(Clone, Copy)]
        pub struct $name($reg);

        #[cfg(target_arch = "x86_64")]
        impl Vector for $name {
            type Elem = $elem;
            const LANES: usize = $lanes;
            #[inline(always)]
            unsafe fn zero() -> Self {
                // SAFETY: the trait's contract: this CPU has the instruction set.
                Self(unsafe { $zero() })
            }
            #[inline(always)]
            unsafe fn splat(x: $elem) -> Self {
                // SAFETY: as above.
                Self(unsafe { $set1(x) })
            }
            #[inline(always)]
            unsafe fn load(p: *const $elem) -> Self {
                // SAFETY: as above, and `p` is valid for LANES elements.
                Self(unsafe { $loadu(p) })
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut $elem) {
                // SAFETY: as above.
                unsafe { $storeu(p, self.0) }
            }
            #[inline(always)]
            unsafe fn mul_add(self, b: Self, c: Self) -> Self {
                // SAFETY: as above.
                Self(unsafe { $fmadd(self.0, b.0, c.0) })
            }
        }
    };
}

vector!(F32x16, __m512, f32, 16, _mm512_setzero_ps, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_fmadd_ps);
vector!(F64x8, __m512d, f64, 8, _mm512_setzero_pd, _mm512_set1_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_fmadd_pd);
vector!(F32x8, __m256, f32, 8, _mm256_setzero_ps, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps);
vector!(F64x4, __m256d, f64, 4, _mm256_setzero_pd, _mm256_set1_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_fmadd_pd);

/// The vector types of an element type, one per `Isa` (a supertrait of `Real`; public only
/// because `Real` is, and unreachable outside the crate).
#[cfg(target_arch = "x86_64")]
pub trait Vectors: Sized {
    type V512: Vector<Elem = Self>;
    type V256: Vector<Elem = Self>;
}

/// No explicit vectors off x86-64 (`Isa::detect` finds none there).
#[cfg(not(target_arch = "x86_64"))]
pub trait Vectors {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> Vectors for T {}

#[cfg(target_arch = "x86_64")]
impl Vectors for f32 {
    type V512 = F32x16;
    type V256 = F32x8;
}

#[cfg(target_arch = "x86_64")]
impl Vectors for f64 {
    type V512 = F64x8;
    type V256 = F64x4;
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn round_trip_avx2() -> ([f32; 8], [f64; 4]) {
        // SAFETY: this function runs only where the test found AVX2 and FMA.
        unsafe {
            let mut single = [0.0f32; 8];
            let a = F32x8::load([1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0].as_ptr());
            a.mul_add(F32x8::splat(2.0), F32x8::splat(1.0)).store(single.as_mut_ptr());
            let mut double = [0.0f64; 4];
            F64x4::splat(0.5).mul_add(F64x4::load([2.0, 4.0, 6.0, 8.0].as_ptr()), F64x4::zero()).store(double.as_mut_ptr());
            (single, double)
        }
    }

    #[test]
    fn vectors_compute_what_they_say() {
        if Isa::detect().is_none() {
            return;
        }
        // SAFETY: detect() found at least AVX2 and FMA.
        let (single, double) = unsafe { round_trip_avx2() };
        assert_eq!(single, [3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0, 17.0]);
        assert_eq!(double, [1.0, 2.0, 3.0, 4.0]);
    }
}
