//! Direct depthwise convolution: one input channel per group (`groups == C`), `K = m * C`
//! output channels (channel multiplier `m`, output channel `k` reads input channel `k / m`),
//! any kernel size, stride, dilation and zero padding, in 1, 2 and 3 dimensions.
//!
//! A depthwise convolution does `kernel volume` multiply-adds per output: as im2col + GEMM it
//! becomes a matrix-vector product per channel that spends its time building the im2col matrix.
//! Here every output row is computed straight from the input rows under it. The zero padding is
//! never materialised: each tap's range of valid output columns is clipped at the borders, and
//! the columns where every tap is valid (the interior) are computed `LANES` at a time in a
//! register accumulator that LLVM vectorises; the few border columns are done one by one.
//!
//! The per-row loops are written once, generically, and compiled twice: as they are (portable
//! x86-64, SSE2) and inside a `#[target_feature(enable = "avx2,fma")]` wrapper that is chosen at
//! run time, so one binary runs everywhere and uses 256-bit vectors where it can. Both copies do
//! the same unfused multiply-adds in the same order, so they give bitwise identical results.
//!
//! Parallel split (shape only, never the thread count): forward and the gradient of the input
//! over (sample, channel, block of rows); the gradient of the weight over output channels, each
//! summing its samples and positions in a fixed order.

use crate::element::{filled, scratch, with_capacity, Real};
use crate::parallel;
use crate::params::ConvGeometry;

/// Outputs computed together in one register accumulator: 8 f32 fill one AVX2 register (f64
/// takes two), and the chunk is short enough that narrow images still have an interior.
const LANES: usize = 8;

/// Outputs per parallel task in forward and backward-input: about 16 Ki outputs (64 KiB of f32)
/// is a few hundred microseconds of work, large enough to amortise the task, small enough that
/// one big image still splits into many tasks.
const TASK_OUTPUTS: usize = 1 << 14;

/// Whether the AVX2 + FMA copies of the kernels may run on this CPU (the check is cached by std).
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this module serves `geo`: one input channel per group (any number of groups).
pub(crate) fn applies(geo: &ConvGeometry) -> bool {
    geo.c_in_per_group() == 1
}

/// A single-channel correlation between planes: `dst[o] = init + sum over pairs and taps t of
/// w[t] * src[o * stride + t * dilation + origin]`, reads outside `src` being zero. Forward is
/// one such correlation per output channel (`origin = -pad`); the gradient of the input at
/// stride 1 is one with the flipped kernel over the gradient of the output.
#[derive(Clone, Copy, Debug)]
struct Corr {
    src: [usize; 3],
    dst: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    dilation: [usize; 3],
    origin: [isize; 3],
}

impl Corr {
    fn forward(geo: &ConvGeometry) -> Corr {
        Corr {
            src: geo.input,
            dst: geo.output,
            kernel: geo.kernel,
            stride: geo.stride,
            dilation: geo.dilation,
            origin: geo.pad_lo.map(|p| -(p as isize)),
        }
    }

    /// The adjoint of a stride-1 forward: output gradient -> input gradient, kernel flipped.
    /// dx[i] = sum_t w[t] dy[i + pad - t*dil] = sum_t' w[kext - 1 - t'] dy[i + t'*dil + pad - (k-1)*dil].
    fn adjoint_stride1(geo: &ConvGeometry) -> Corr {
        let origin = std::array::from_fn(|d| geo.pad_lo[d] as isize - ((geo.kernel[d] - 1) * geo.dilation[d]) as isize);
        Corr { src: geo.output, dst: geo.input, kernel: geo.kernel, stride: [1; 3], dilation: geo.dilation, origin }
    }
}

/// The outputs `o` in `0..n` whose read `o * s + t` lies in `0..len`, as `(lo, hi)` (empty when
/// `lo == hi`).
#[inline(always)]
fn valid_range(t: isize, s: usize, len: usize, n: usize) -> (usize, usize) {
    let s = s as isize;
    let lo = if t >= 0 { 0 } else { (-t + s - 1) / s };
    let top = len as isize - t; // o * s < top
    let hi = if top <= 0 { 0 } else { (top + s - 1) / s };
    let hi = hi.clamp(0, n as isize) as usize;
    ((lo as usize).min(hi), hi)
}

/// `(rows per task, tasks per plane)` for planes of `rows` rows of `width` outputs.
fn row_blocks(rows: usize, width: usize) -> (usize, usize) {
    let per = (TASK_OUTPUTS / width.max(1)).clamp(1, rows.max(1));
    (per, rows.div_ceil(per))
}

/// `out (N, K, *output) = depthwise conv(x (N, C, *input), w (K, 1, *kernel)) + bias`.
pub(crate) fn forward<T: Real>(x: &[T], w: &[T], bias: Option<&[T]>, geo: &ConvGeometry, out: &mut [T]) {
    let (kg, kvol) = (geo.c_out_per_group(), geo.kernel_volume());
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    if out.is_empty() || out_len == 0 {
        return;
    }
    let corr = Corr::forward(geo);
    let width = geo.output[2];
    let (per, _) = row_blocks(geo.output[0] * geo.output[1], width);
    let simd = has_avx2_fma();
    let total = out.len() * kvol;
    parallel::for_each_chunk(out, out_len, total, |nk, plane| {
        let (n, k) = (nk / geo.c_out, nk % geo.c_out);
        let src = &x[(n * geo.c_in + k / kg) * in_len..][..in_len];
        let wk = &w[k * kvol..][..kvol];
        let init = bias.map_or(T::zero(), |b| b[k]);
        parallel::for_each_chunk(plane, per * width, out_len * kvol, |b, rows| {
            corr_rows(simd, &corr, src, in_len, 1, wk, init, b * per, rows);
        });
    });
}

/// `dx (N, C, *input)` from `dy (N, K, *output)`: at stride 1 a correlation of `dy` with the
/// flipped kernel (gathered, vectorised like forward); at larger strides the transpose of
/// forward's reads, scattered. Every element of `dx` is written.
pub(crate) fn backward_input<T: Real>(dy: &[T], w: &[T], geo: &ConvGeometry, dx: &mut [T]) {
    let (kg, kvol) = (geo.c_out_per_group(), geo.kernel_volume());
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    if dx.is_empty() || in_len == 0 {
        return;
    }
    let simd = has_avx2_fma();
    if geo.stride == [1; 3] {
        let corr = Corr::adjoint_stride1(geo);
        let width = geo.input[2];
        let (per, _) = row_blocks(geo.input[0] * geo.input[1], width);
        let total = dx.len() * kg * kvol;
        parallel::for_each_chunk(dx, in_len, total, |nc, plane| {
            let (n, c) = (nc / geo.c_in, nc % geo.c_in);
            // The kg output channels of this input channel: consecutive planes of dy.
            let src = &dy[(n * geo.c_out + c * kg) * out_len..][..kg * out_len];
            let mut flipped = with_capacity(kg * kvol, "depthwise flipped weights");
            flipped.extend((0..kg * kvol).map(|i| w[c * kg * kvol + (i / kvol) * kvol + kvol - 1 - i % kvol]));
            parallel::for_each_chunk(plane, per * width, in_len * kg * kvol, |b, rows| {
                corr_rows(simd, &corr, src, out_len, kg, &flipped, T::zero(), b * per, rows);
            });
        });
    } else {
        let corr = Corr::forward(geo);
        let total = dy.len() * kvol;
        parallel::for_each_chunk(dx, in_len, total, |nc, plane| {
            let (n, c) = (nc / geo.c_in, nc % geo.c_in);
            plane.fill(T::zero());
            for j in 0..kg {
                let k = c * kg + j;
                let g = &dy[(n * geo.c_out + k) * out_len..][..out_len];
                scatter_plane(simd, &corr, g, &w[k * kvol..][..kvol], plane);
            }
        });
    }
}

/// `dw (K, 1, *kernel)`: per output channel, the sum over samples (in order) of each sample's
/// per-tap dot products. Parallel over output channels only, so every sum has a fixed order.
pub(crate) fn backward_weight<T: Real>(x: &[T], dy: &[T], geo: &ConvGeometry, dw: &mut [T]) {
    let (kg, kvol) = (geo.c_out_per_group(), geo.kernel_volume());
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    if dw.is_empty() || out_len == 0 {
        return;
    }
    let corr = Corr::forward(geo);
    let simd = has_avx2_fma();
    let total = dy.len() * kvol;
    parallel::for_each_chunk(dw, kvol, total, |k, dwk| {
        let c = k / kg;
        let mut lanes = filled(kvol, [T::zero(); LANES], "depthwise weight lanes");
        let mut tails = scratch(kvol, "depthwise weight tails");
        let mut total = scratch(kvol, "depthwise weight sums");
        for n in 0..geo.n {
            let src = &x[(n * geo.c_in + c) * in_len..][..in_len];
            let g = &dy[(n * geo.c_out + k) * out_len..][..out_len];
            lanes.iter_mut().for_each(|l| *l = [T::zero(); LANES]);
            tails.fill(T::zero());
            weight_plane(simd, &corr, src, g, &mut lanes, &mut tails);
            // One sample's sum per tap, then the running total: a fixed order.
            for ((t, l), &tail) in total.iter_mut().zip(&lanes).zip(&tails) {
                *t += l.iter().copied().fold(T::zero(), |a, b| a + b) + tail;
            }
        }
        dwk.copy_from_slice(&total);
    });
}

// ---- dispatch: each kernel below runs as its AVX2 + FMA copy when the CPU has them, and is
// instantiated for the common column strides (1, 2) and kernel width (3) so those loops have
// compile-time trip counts and strides; `0` means "read it at run time".

macro_rules! dispatch {
    ($simd:expr, $avx2:path, $portable:path, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        if $simd {
            // SAFETY: `$simd` is true only when `has_avx2_fma()` found AVX2 and FMA on this CPU,
            // the features the AVX2 copy is compiled for.
            return unsafe { $avx2($($arg),*) };
        }
        let _ = $simd;
        $portable($($arg),*)
    }};
}

/// Declares `$name::<T, SX, KW>`, the AVX2 + FMA copy of `$body::<T, SX, KW>`.
macro_rules! avx2_copy {
    ($name:ident, $body:ident, ($($p:ident: $t:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<T: Real, const SX: usize, const KW: usize>($($p: $t),*) {
            $body::<T, SX, KW>($($p),*)
        }
    };
}

/// Calls `$body::<T, SX, KW>` (or its AVX2 copy `$avx2`) for the stride and width at hand.
macro_rules! specialised {
    ($simd:expr, $sx:expr, $kw:expr, $avx2:ident, $body:ident, $($arg:expr),*) => {
        match ($sx, $kw) {
            (1, 3) => dispatch!($simd, $avx2::<T, 1, 3>, $body::<T, 1, 3>, $($arg),*),
            (1, _) => dispatch!($simd, $avx2::<T, 1, 0>, $body::<T, 1, 0>, $($arg),*),
            (2, 3) => dispatch!($simd, $avx2::<T, 2, 3>, $body::<T, 2, 3>, $($arg),*),
            _ => dispatch!($simd, $avx2::<T, 0, 0>, $body::<T, 0, 0>, $($arg),*),
        }
    };
}

/// Rows `row0 ..` (flattened `(z, y)` rows of `corr.dst`) of one destination plane, in `dst`
/// (whole rows). `src` holds `pairs` source planes `pair_stride` apart, `w` their kernels
/// (`kernel volume` each).
#[allow(clippy::too_many_arguments)]
fn corr_rows<T: Real>(simd: bool, corr: &Corr, src: &[T], pair_stride: usize, pairs: usize, w: &[T], init: T, row0: usize, dst: &mut [T]) {
    specialised!(simd, corr.stride[2], corr.kernel[2], corr_rows_avx2, corr_rows_impl, corr, src, pair_stride, pairs, w, init, row0, dst)
}

avx2_copy!(corr_rows_avx2, corr_rows_impl, (corr: &Corr, src: &[T], pair_stride: usize, pairs: usize, w: &[T], init: T, row0: usize, dst: &mut [T]));

/// See `corr_rows`. `SX` / `KW`: the column stride / kernel width when fixed at compile time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn corr_rows_impl<T: Real, const SX: usize, const KW: usize>(
    corr: &Corr, src: &[T], pair_stride: usize, pairs: usize, w: &[T], init: T, row0: usize, dst: &mut [T],
) {
    let [kd, kh, kw] = corr.kernel;
    let kvol = kd * kh * kw;
    let [sd, sh, sw] = corr.src;
    let [_, oh, ow] = corr.dst;
    let [oz0, oy0, _] = corr.origin;
    let (xlo, xhi) = Row::<T, SX, KW>::new(corr, &[], src, w, init).interior(ow);
    let mut taps: Vec<(usize, usize)> = with_capacity(pairs * kd * kh, "depthwise taps");
    for (r, out_row) in dst.chunks_exact_mut(ow).enumerate() {
        let (oz, oy) = ((row0 + r) / oh, (row0 + r) % oh);
        // (start of the source row, offset of its kernel row in `w`) for each tap row that
        // reads inside the source, in the fixed order (pair, kz, ky).
        taps.clear();
        for j in 0..pairs {
            for kz in 0..kd {
                let iz = (oz * corr.stride[0] + kz * corr.dilation[0]) as isize + oz0;
                if iz < 0 || iz >= sd as isize {
                    continue;
                }
                for ky in 0..kh {
                    let iy = (oy * corr.stride[1] + ky * corr.dilation[1]) as isize + oy0;
                    if iy < 0 || iy >= sh as isize {
                        continue;
                    }
                    taps.push((j * pair_stride + (iz as usize * sh + iy as usize) * sw, j * kvol + (kz * kh + ky) * kw));
                }
            }
        }
        let row = Row::<T, SX, KW>::new(corr, &taps, src, w, init);
        for (ox, o) in out_row.iter_mut().enumerate().take(xlo) {
            *o = row.single(ox);
        }
        if xhi - xlo >= LANES {
            // Four chunks at a time keep four independent sums in flight (one chunk's sum is a
            // chain of dependent adds), then single chunks, then one overlapping the previous.
            let mut ox = xlo;
            while ox + 4 * LANES <= xhi {
                row.chunks::<4>(ox, &mut out_row[ox..ox + 4 * LANES]);
                ox += 4 * LANES;
            }
            while ox + 2 * LANES <= xhi {
                row.chunks::<2>(ox, &mut out_row[ox..ox + 2 * LANES]);
                ox += 2 * LANES;
            }
            if ox < xhi {
                // At most two more chunks, the last ending at xhi; overlapped outputs are
                // recomputed to the same values (each is computed from scratch).
                if xhi - ox <= LANES {
                    row.chunks::<1>(xhi - LANES, &mut out_row[xhi - LANES..xhi]);
                } else if xhi - xlo >= 2 * LANES {
                    row.chunks::<2>(xhi - 2 * LANES, &mut out_row[xhi - 2 * LANES..xhi]);
                } else {
                    row.chunks::<1>(ox, &mut out_row[ox..ox + LANES]);
                    row.chunks::<1>(xhi - LANES, &mut out_row[xhi - LANES..xhi]);
                }
            }
        } else {
            for (ox, o) in out_row.iter_mut().enumerate().take(xhi).skip(xlo) {
                *o = row.single(ox);
            }
        }
        for (ox, o) in out_row.iter_mut().enumerate().skip(xhi) {
            *o = row.single(ox);
        }
    }
}

/// One destination row's inputs: the source rows it reads (`taps`: start of the row in `src`,
/// offset of its kernel row in `w`), and the column arithmetic `ix = ox * sx + kx * dil +
/// origin`, valid when `0 <= ix < len`. Methods rather than closures, so that they inline into
/// the AVX2 copy and are compiled with its features.
struct Row<'a, T, const SX: usize, const KW: usize> {
    taps: &'a [(usize, usize)],
    src: &'a [T],
    w: &'a [T],
    init: T,
    sx: usize,
    kw: usize,
    dil: usize,
    origin: isize,
    len: usize,
}

impl<'a, T: Real, const SX: usize, const KW: usize> Row<'a, T, SX, KW> {
    #[inline(always)]
    fn new(corr: &Corr, taps: &'a [(usize, usize)], src: &'a [T], w: &'a [T], init: T) -> Self {
        let (sx, kw, dil, origin, len) = (corr.stride[2], corr.kernel[2], corr.dilation[2], corr.origin[2], corr.src[2]);
        Row { taps, src, w, init, sx, kw, dil, origin, len }
    }

    #[inline(always)]
    fn sx(&self) -> usize {
        if SX == 0 { self.sx } else { SX }
    }

    #[inline(always)]
    fn kw(&self) -> usize {
        if KW == 0 { self.kw } else { KW }
    }

    /// The columns `(lo, hi)` of a `width`-wide destination row where the first and the last
    /// tap (hence every tap) read inside the source row.
    #[inline(always)]
    fn interior(&self, width: usize) -> (usize, usize) {
        let (a0, a1) = valid_range(self.origin, self.sx(), self.len, width);
        let (b0, b1) = valid_range(((self.kw() - 1) * self.dil) as isize + self.origin, self.sx(), self.len, width);
        let lo = a0.max(b0);
        (lo, a1.min(b1).max(lo))
    }

    /// One output from scratch, skipping reads outside the row; the same order of sums as
    /// `chunk`, so an output's value does not depend on which of the two computed it.
    #[inline(always)]
    fn single(&self, ox: usize) -> T {
        let mut acc = self.init;
        for &(rb, wo) in self.taps {
            for kx in 0..self.kw() {
                let ix = (ox * self.sx() + kx * self.dil) as isize + self.origin;
                if ix >= 0 && ix < self.len as isize {
                    acc += self.w[wo + kx] * self.src[rb + ix as usize];
                }
            }
        }
        acc
    }

    /// Outputs `ox .. ox + C * LANES` (all in the interior) into `out`: `C` independent
    /// register accumulators of `LANES` outputs each.
    #[inline(always)]
    fn chunks<const C: usize>(&self, ox: usize, out: &mut [T]) {
        let (sx, kw) = (self.sx(), self.kw());
        // Source elements one tap row reads for these outputs.
        let span = (kw - 1) * self.dil + (C * LANES - 1) * sx + 1;
        let mut acc = [[self.init; LANES]; C];
        for &(rb, wo) in self.taps {
            // In the interior the first read is at or after the row start, the last before its end.
            let start = (rb as isize + (ox * sx) as isize + self.origin) as usize;
            let seg = &self.src[start..start + span];
            let wr = &self.w[wo..wo + kw];
            for (kx, &wv) in wr.iter().enumerate() {
                let off = kx * self.dil;
                for (c, acc) in acc.iter_mut().enumerate() {
                    for (l, a) in acc.iter_mut().enumerate() {
                        // SAFETY: off + (c * LANES + l) * sx <= (kw - 1) * dil + (C * LANES - 1) * sx
                        // < span = seg.len().
                        let v = unsafe { *seg.get_unchecked(off + (c * LANES + l) * sx) };
                        *a += wv * v;
                    }
                }
            }
        }
        for (o, a) in out.chunks_exact_mut(LANES).zip(&acc) {
            o.copy_from_slice(a);
        }
    }
}

/// `dx_plane += transpose of corr` applied to one gradient plane `g` with kernel `w`: each
/// output's gradient is added to the inputs it read. Used for strides > 1, where the gather
/// form would need a different tap set per input column.
fn scatter_plane<T: Real>(simd: bool, corr: &Corr, g: &[T], w: &[T], dx: &mut [T]) {
    dispatch!(simd, scatter_plane_avx2, scatter_plane_impl, corr, g, w, dx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scatter_plane_avx2<T: Real>(corr: &Corr, g: &[T], w: &[T], dx: &mut [T]) {
    scatter_plane_impl(corr, g, w, dx)
}

#[inline(always)]
fn scatter_plane_impl<T: Real>(corr: &Corr, g: &[T], w: &[T], dx: &mut [T]) {
    let [kd, kh, kw] = corr.kernel;
    let [sd, sh, sw] = corr.src;
    let [od, oh, ow] = corr.dst;
    let [st_z, st_y, sx] = corr.stride;
    let [dz, dy, dxl] = corr.dilation;
    let [oz0, oy0, ox0] = corr.origin;
    for oz in 0..od {
        for oy in 0..oh {
            let g_row = &g[(oz * oh + oy) * ow..][..ow];
            for kz in 0..kd {
                let iz = (oz * st_z + kz * dz) as isize + oz0;
                if iz < 0 || iz >= sd as isize {
                    continue;
                }
                for ky in 0..kh {
                    let iy = (oy * st_y + ky * dy) as isize + oy0;
                    if iy < 0 || iy >= sh as isize {
                        continue;
                    }
                    let dx_row = &mut dx[(iz as usize * sh + iy as usize) * sw..][..sw];
                    for kx in 0..kw {
                        let wv = w[(kz * kh + ky) * kw + kx];
                        let t = (kx * dxl) as isize + ox0;
                        let (lo, hi) = valid_range(t, sx, sw, ow);
                        for (ox, &g) in g_row.iter().enumerate().take(hi).skip(lo) {
                            let ix = ((ox * sx) as isize + t) as usize;
                            dx_row[ix] += wv * g;
                        }
                    }
                }
            }
        }
    }
}

/// Per-tap partial sums of the weight gradient: `lanes[tap]` (`LANES` partial sums, vector
/// part) and `tails[tap]` (the scalar part) gain `g[o] * src[o * stride + tap offset]` over the
/// outputs `o` whose read is inside `src`, in a fixed pattern.
fn weight_plane<T: Real>(simd: bool, corr: &Corr, src: &[T], g: &[T], lanes: &mut [[T; LANES]], tails: &mut [T]) {
    specialised!(simd, corr.stride[2], corr.kernel[2], weight_plane_avx2, weight_plane_impl, corr, src, g, lanes, tails)
}

avx2_copy!(weight_plane_avx2, weight_plane_impl, (corr: &Corr, src: &[T], g: &[T], lanes: &mut [[T; LANES]], tails: &mut [T]));

#[inline(always)]
fn weight_plane_impl<T: Real, const SX: usize, const KW: usize>(corr: &Corr, src: &[T], g: &[T], lanes: &mut [[T; LANES]], tails: &mut [T]) {
    let [kd, kh, kw] = corr.kernel;
    let [sd, sh, sw] = corr.src;
    let [od, oh, ow] = corr.dst;
    let [oz0, oy0, ox0] = corr.origin;
    let row = Row::<T, SX, KW>::new(corr, &[], src, &[], T::zero());
    let (sx, dil) = (row.sx(), row.dil);
    let (xlo, xhi) = row.interior(ow);
    for oz in 0..od {
        for oy in 0..oh {
            let g_row = &g[(oz * oh + oy) * ow..][..ow];
            for kz in 0..kd {
                let iz = (oz * corr.stride[0] + kz * corr.dilation[0]) as isize + oz0;
                if iz < 0 || iz >= sd as isize {
                    continue;
                }
                for ky in 0..kh {
                    let iy = (oy * corr.stride[1] + ky * corr.dilation[1]) as isize + oy0;
                    if iy < 0 || iy >= sh as isize {
                        continue;
                    }
                    let src_row = &src[(iz as usize * sh + iy as usize) * sw..][..sw];
                    let tap0 = (kz * kh + ky) * kw;
                    let read = |ox: usize, kx: usize| (ox * sx + kx * dil) as isize + ox0;
                    // Border columns, where some taps read outside the row: one by one.
                    for ox in (0..xlo).chain(xhi..ow) {
                        for kx in 0..kw {
                            let ix = read(ox, kx);
                            if ix >= 0 && ix < sw as isize {
                                tails[tap0 + kx] += g_row[ox] * src_row[ix as usize];
                            }
                        }
                    }
                    let len = xhi - xlo;
                    if len < LANES {
                        for ox in xlo..xhi {
                            for kx in 0..kw {
                                tails[tap0 + kx] += g_row[ox] * src_row[read(ox, kx) as usize];
                            }
                        }
                        continue;
                    }
                    if KW != 0 {
                        // All taps of the row at once: one load of `g` feeds KW accumulators
                        // that stay in registers for the whole row.
                        let mut acc = [[T::zero(); LANES]; KW];
                        let span = (KW - 1) * dil + (LANES - 1) * sx + 1;
                        let mut ox = xlo;
                        loop {
                            let last = ox + LANES > xhi;
                            // The last chunk ends at xhi and overlaps the previous one; its
                            // overlapped lanes add zero.
                            let (at, skip) = if last { (xhi - LANES, ox - (xhi - LANES)) } else { (ox, 0) };
                            let gs: &[T; LANES] = g_row[at..at + LANES].try_into().expect("LANES long");
                            let start = read(at, 0) as usize;
                            let seg = &src_row[start..start + span];
                            for (kx, a) in acc.iter_mut().enumerate() {
                                for l in 0..LANES {
                                    // SAFETY: kx * dil + l * sx <= (KW - 1) * dil + (LANES - 1) * sx < span.
                                    let v = unsafe { *seg.get_unchecked(kx * dil + l * sx) };
                                    let p = if l >= skip { gs[l] * v } else { T::zero() };
                                    a[l] += p;
                                }
                            }
                            if last || ox + LANES == xhi {
                                break;
                            }
                            ox += LANES;
                        }
                        for (kx, a) in acc.iter().enumerate() {
                            for (s, &v) in lanes[tap0 + kx].iter_mut().zip(a) {
                                *s += v;
                            }
                        }
                    } else {
                        for kx in 0..kw {
                            let mut acc = lanes[tap0 + kx];
                            let start = read(xlo, kx) as usize;
                            let mut i = 0;
                            loop {
                                let last = i + LANES > len;
                                let (at, skip) = if last { (len - LANES, i - (len - LANES)) } else { (i, 0) };
                                let gs: &[T; LANES] = g_row[xlo + at..xlo + at + LANES].try_into().expect("LANES long");
                                let seg = &src_row[start + at * sx..start + (at + LANES - 1) * sx + 1];
                                for l in 0..LANES {
                                    let v = seg[l * sx];
                                    let p = if l >= skip { gs[l] * v } else { T::zero() };
                                    acc[l] += p;
                                }
                                if last || i + LANES == len {
                                    break;
                                }
                                i += LANES;
                            }
                            lanes[tap0 + kx] = acc;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::im2col;
    use crate::conv::testutil::{filled, max_abs};
    use crate::params::{ConvParams, Padding, PaddingMode};


    /// Compares depthwise with im2col on one geometry, in f64 (to 1e-10) and f32 (to 1e-4 of
    /// the largest value), forward (with bias), input gradient and weight gradient.
    fn check(input: &[usize], weight: &[usize], params: &ConvParams) {
        let geo = params.geometry(input, weight).unwrap();
        assert!(applies(&geo), "{input:?} {weight:?}");
        let x = filled(geo.input_shape().iter().product(), 1);
        let w = filled(geo.weight_shape().iter().product(), 2);
        let b = filled(geo.c_out, 3);
        let out_len: usize = geo.output_shape().iter().product();
        let dy = filled(out_len, 4);
        let run = |strategy_depthwise: bool| -> [Vec<f64>; 3] {
            let mut y = vec![0.0; out_len];
            let mut dx = vec![0.0; x.len()];
            let mut dw = vec![0.0; w.len()];
            if strategy_depthwise {
                y.fill(f64::NAN); // every element must be written
                dx.fill(f64::NAN);
                forward(&x, &w, Some(&b), &geo, &mut y);
                backward_input(&dy, &w, &geo, &mut dx);
                backward_weight(&x, &dy, &geo, &mut dw);
            } else {
                im2col::forward(&x, &w, Some(&b), &geo, &mut y);
                im2col::backward_input(&dy, &w, &geo, &mut dx);
                im2col::backward_weight(&x, &dy, &geo, &mut dw);
            }
            [y, dx, dw]
        };
        let got = run(true);
        let want = run(false);
        for (i, name) in ["forward", "grad input", "grad weight"].iter().enumerate() {
            let err = got[i].iter().zip(&want[i]).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-10 * (1.0 + max_abs(&want[i])), "f64 {name} {input:?} {weight:?} {params:?}: error {err}");
        }
        // f32: the same computation in single precision, against the f64 result.
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, w32, b32, dy32) = (f(&x), f(&w), f(&b), f(&dy));
        let mut y = vec![0.0f32; out_len];
        let mut dx = vec![0.0f32; x.len()];
        let mut dw = vec![0.0f32; w.len()];
        forward(&x32, &w32, Some(&b32), &geo, &mut y);
        backward_input(&dy32, &w32, &geo, &mut dx);
        backward_weight(&x32, &dy32, &geo, &mut dw);
        for (i, got) in [y, dx, dw].iter().enumerate() {
            let scale = 1.0 + max_abs(&want[i]);
            let err = got.iter().zip(&want[i]).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
            assert!(err <= 1e-5 * scale, "f32 output {i} {input:?} {weight:?} {params:?}: error {err}");
        }
    }

    fn params(dims: usize, stride: usize, pad: usize, dil: usize, groups: usize) -> ConvParams {
        ConvParams {
            stride: vec![stride; dims],
            padding: Padding::Explicit(vec![pad; dims]),
            dilation: vec![dil; dims],
            groups,
            padding_mode: PaddingMode::Zeros,
        }
    }

    #[test]
    fn matches_im2col_2d() {
        for &(h, w) in &[(1, 1), (3, 5), (7, 9), (8, 8), (13, 11), (17, 33), (5, 40)] {
            for &k in &[1, 2, 3, 5] {
                for &s in &[1, 2, 3] {
                    for &p in &[0, 1, 2] {
                        for &d in &[1, 2] {
                            if h + 2 * p < d * (k - 1) + 1 || w + 2 * p < d * (k - 1) + 1 {
                                continue;
                            }
                            for &(n, c, m) in &[(1, 1, 1), (2, 3, 1), (1, 4, 2), (2, 1, 3)] {
                                check(&[n, c, h, w], &[c * m, 1, k, k], &params(2, s, p, d, c));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matches_im2col_many_channels_and_odd_shapes() {
        for c in [5, 16, 20] {
            check(&[1, c, 23, 19], &[c, 1, 3, 3], &params(2, 1, 1, 1, c));
            check(&[2, c, 12, 30], &[c, 1, 3, 5], &params(2, 2, 2, 1, c));
        }
        // Asymmetric 'same' padding (the extra at the end) and rectangular kernels.
        let same = ConvParams { padding: Padding::Same, ..params(2, 1, 0, 1, 3) };
        check(&[2, 3, 10, 9], &[3, 1, 4, 2], &same);
        let same_s2 = ConvParams { padding: Padding::Same, ..params(2, 2, 0, 1, 3) };
        check(&[1, 3, 11, 10], &[6, 1, 4, 3], &same_s2);
        // Padding larger than the kernel: the adjoint origin is positive.
        check(&[1, 2, 6, 20], &[2, 1, 1, 1], &params(2, 1, 3, 1, 2));
        check(&[1, 2, 6, 20], &[2, 1, 2, 3], &params(2, 1, 4, 1, 2));
    }

    #[test]
    fn matches_im2col_1d_and_3d() {
        for &(l, k, s, p, d) in &[(1, 1, 1, 0, 1), (30, 3, 1, 1, 1), (64, 7, 1, 3, 1), (33, 5, 2, 2, 2), (9, 4, 3, 1, 1)] {
            check(&[2, 3, l], &[3, 1, k], &params(1, s, p, d, 3));
            check(&[1, 2, l], &[4, 1, k], &params(1, s, p, d, 2));
        }
        check(&[2, 3, 5, 6, 17], &[3, 1, 3, 3, 3], &params(3, 1, 1, 1, 3));
        check(&[1, 2, 4, 9, 10], &[4, 1, 2, 3, 3], &params(3, 2, 1, 1, 2));
        check(&[1, 2, 6, 6, 6], &[2, 1, 3, 3, 3], &params(3, 1, 2, 2, 2));
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let p = params(2, 1, 1, 1, 8);
        let geo = p.geometry(&[3, 8, 40, 37], &[8, 1, 3, 3]).unwrap();
        let x: Vec<f32> = filled(3 * 8 * 40 * 37, 5).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = filled(72, 6).iter().map(|&v| v as f32).collect();
        let run = |threads: usize| {
            crate::parallel::set_num_threads(threads).unwrap();
            let mut y = vec![0.0f32; x.len()];
            let mut dx = vec![0.0f32; x.len()];
            let mut dw = vec![0.0f32; w.len()];
            forward(&x, &w, None, &geo, &mut y);
            backward_input(&y, &w, &geo, &mut dx);
            backward_weight(&x, &y, &geo, &mut dw);
            (y, dx, dw)
        };
        let before = crate::parallel::get_num_threads();
        let (one, three) = (run(1), run(3));
        crate::parallel::set_num_threads(before).unwrap();
        assert!(one == three, "results differ between 1 and 3 threads");
    }

    #[test]
    fn portable_and_simd_copies_agree_bitwise() {
        // Both copies run the same unfused arithmetic in the same order.
        if !has_avx2_fma() {
            return;
        }
        let p = params(2, 1, 1, 1, 2);
        let geo = p.geometry(&[1, 2, 9, 29], &[2, 1, 3, 3]).unwrap();
        let corr = Corr::forward(&geo);
        let x: Vec<f32> = filled(2 * 9 * 29, 7).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = filled(9, 8).iter().map(|&v| v as f32).collect();
        let mut a = vec![0.0f32; 9 * 29];
        let mut b = vec![0.0f32; 9 * 29];
        corr_rows(false, &corr, &x, 0, 1, &w, 0.5, 0, &mut a);
        corr_rows(true, &corr, &x, 0, 1, &w, 0.5, 0, &mut b);
        assert_eq!(a, b);
        let (mut la, mut ta) = (vec![[0.0f32; LANES]; 9], vec![0.0f32; 9]);
        let (mut lb, mut tb) = (vec![[0.0f32; LANES]; 9], vec![0.0f32; 9]);
        weight_plane(false, &corr, &x, &a, &mut la, &mut ta);
        weight_plane(true, &corr, &x, &a, &mut lb, &mut tb);
        assert_eq!((la, ta), (lb, tb));
    }

    #[test]
    fn valid_ranges() {
        assert_eq!(valid_range(-1, 1, 5, 5), (1, 5));
        assert_eq!(valid_range(1, 1, 5, 5), (0, 4));
        assert_eq!(valid_range(-3, 2, 5, 4), (2, 4));
        assert_eq!(valid_range(7, 1, 5, 5), (0, 0));
        assert_eq!(valid_range(-9, 1, 5, 5), (5, 5));
    }
}

