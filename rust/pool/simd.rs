//! Run-time choice of the instruction set.
//!
//! The kernels are written once, as plain loops over slices, and compiled three times: inside an
//! `#[target_feature(enable = "avx2,fma")]` function, inside an `sse4.1` one (for x86-64 CPUs
//! without AVX, such as low-end Pentium and Celeron parts: `blendvps` keeps the argmax folds
//! vectorised, where baseline SSE2 code is several times slower), and as the portable baseline.
//! `multiversion!` generates all three and the dispatch, so one wheel runs on every x86-64
//! without a target-cpu flag.

/// The instruction sets the kernels are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Level {
    /// AVX2 and FMA.
    Avx2,
    /// SSE4.1.
    Sse41,
    /// The target's baseline (SSE2 on x86-64).
    Portable,
}

/// The best instruction set this CPU runs.
#[inline]
pub(super) fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Level::Avx2;
        }
        if std::arch::is_x86_feature_detected!("sse4.1") {
            return Level::Sse41;
        }
    }
    Level::Portable
}

/// Every level this CPU runs (the tests compare them).
#[cfg(test)]
pub(super) fn levels() -> Vec<Level> {
    match level() {
        Level::Avx2 => vec![Level::Portable, Level::Sse41, Level::Avx2],
        Level::Sse41 => vec![Level::Portable, Level::Sse41],
        Level::Portable => vec![Level::Portable],
    }
}

/// `multiversion!(fn name[T: Real, const X: bool][T, X](args) -> ret = body_fn);` defines
/// `name(level, args)`, which runs `body_fn` (an `#[inline(always)]` function, so the loops it
/// calls are compiled into each copy) built for `level`, which must come from `level()` (or be
/// a level it allows). The two bracket lists are the generics as declared and as passed on.
macro_rules! multiversion {
    ($vis:vis fn $name:ident [$($decl:tt)*] [$($use:tt)*] ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$($decl)*>(level: $crate::pool::simd::Level, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn with_avx2<$($decl)*>($($arg: $ty),*) $(-> $ret)? {
                    $body::<$($use)*>($($arg),*)
                }
                #[target_feature(enable = "sse4.1")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn with_sse41<$($decl)*>($($arg: $ty),*) $(-> $ret)? {
                    $body::<$($use)*>($($arg),*)
                }
                match level {
                    // SAFETY: `level` comes from `simd::level()`: this CPU has AVX2 and FMA.
                    $crate::pool::simd::Level::Avx2 => return unsafe { with_avx2::<$($use)*>($($arg),*) },
                    // SAFETY: as above, this CPU has SSE4.1.
                    $crate::pool::simd::Level::Sse41 => return unsafe { with_sse41::<$($use)*>($($arg),*) },
                    $crate::pool::simd::Level::Portable => {}
                }
            }
            let _ = level;
            $body::<$($use)*>($($arg),*)
        }
    };
}
pub(super) use multiversion;
