//! Direct convolution (any kernel, stride, dilation, zero padding and groups, 1-3 D),
//! register-blocked with explicit SIMD vectors (`crate::simd`).
//!
//! im2col copies every input patch and the GEMM then packs it again; when a layer has few
//! channels or small maps (LeNet, a first layer), those copies cost more than the arithmetic.
//! Here the input is copied once, into a zero-padded buffer, and the kernel reads it in place.
//!
//! The trick that makes stride-1 convolution a dense loop: compute the output on the *wide*
//! grid, whose rows are as long as the padded input's (`padded[2]` columns, of which the last
//! `kernel - 1` are discarded). On that grid the input under output position `p` for kernel tap
//! `o` is at `p + off[o]` for every `p`, so `VB` vectors of consecutive positions times `KB`
//! output channels accumulate in registers, with one load per vector and one broadcast per
//! weight for each (input channel, tap).
//!
//! A stride `s` splits each input channel into its `s^dims` phases (`Plane`), each correlated at
//! stride 1 with the taps that fall on it, so strided layers run the same dense loops.
//!
//! At stride 1, rows whose kernel rows fall partly on the zero padding skip those taps: the
//! output's rows are split into bands of equal valid taps, each with its own packed weights
//! (`Plane::row_taps`). The input gradient of a small map pads it by the kernel's extent, so
//! this skips most of its zeros (LeNet-5's second layer: 50 of 70 kernel rows are kept).
//!
//! The gradient of the input (at stride 1) is the same correlation applied to the gradient of
//! the output with the kernel flipped and transposed (`Plane::transposed`); at larger strides it
//! is left to im2col. The gradient of the weight is a dot product per (output channel, input
//! channel, tap) over the wide positions; it runs `KB` output channels by `OB` taps in registers.
//!
//! Every output is one fused multiply-add chain in a fixed order (channels, then taps), the
//! same for every instruction set and any split of the work, so results never depend on the
//! thread count (nor, for the forward and the input gradient, on AVX2 against AVX-512). The
//! weight gradient's sum splits into sample chunks whose count depends only on the shapes,
//! added in chunk order; within a chunk it runs in vector lanes, so its rounding differs between
//! instruction sets, not between thread counts.

use crate::element::{filled, reserve, resize, scratch, with_capacity, Real, SendPtr};
use crate::params::ConvGeometry;
use crate::parallel;
use crate::simd::{Isa, Vector};

/// Position vectors per forward block: `KB * VB` accumulators plus `VB` loads and a broadcast
/// fit the 16 AVX2 registers for `KB <= 6` and leave room in AVX-512's 32.
const VB: usize = 2;

/// Output channels per forward block, by instruction set, largest first: the block that wastes
/// the fewest padded channels is taken.
const KB_AVX512: [usize; 3] = [8, 6, 4];
const KB_AVX2: [usize; 2] = [6, 4];

/// Source elements one forward task copies and reads (512 KiB of f32: a core's L2). Output
/// rows per task follow from it; a task always has at least one row.
const TASK_SOURCE_ELEMS: usize = 1 << 17;

/// Fewest wide positions in a weight-gradient unit (rows of a sample, or whole samples), even
/// past WEIGHT_BUFFER_ELEMS: res_3x3_s2 (512 phase rows of 225 positions) ran 4x slower in units
/// of 8 rows than of 5 samples.
const MIN_UNIT_POSITIONS: usize = 1024;

/// Most sample chunks of the weight gradient (each owns a partial gradient, summed in order).
const MAX_WEIGHT_CHUNKS: usize = 8;
/// Fewest multiply-adds per weight-gradient chunk: each chunk zeroes, fills and sums its own
/// accumulators (LeNet's first layer, 7.5 M multiply-adds, takes 4 chunks).
const MIN_CHUNK_WORK: usize = 1 << 20;

/// Elements of the padded inputs and wide output gradients that a weight-gradient kernel call
/// reads (512 KiB of f32), so that they stay in L2 while every (channel block, tap block)
/// pass re-reads them: measured 2x faster on conv1d_k7 than 4 MiB, which spilled to L3.
const WEIGHT_BUFFER_ELEMS: usize = 1 << 17;

/// Whether the direct kernels run on this CPU (AVX2 or AVX-512). They serve the forward and the
/// weight gradient of every geometry, the input gradient at stride 1 (`input_gradient_applies`).
pub(crate) fn available() -> bool {
    Isa::detect().is_some()
}

/// Most source elements one task may hold even when it has a single output row (16 MiB of
/// f32): a geometry whose single row with its halo needs more (a very long 1-D signal with many
/// channels, a large 3-D volume) goes to im2col, whose buffers are bounded tiles.
const MAX_TASK_SOURCE_ELEMS: usize = 1 << 22;

/// Source elements of one output row of `plane` with its halo, for `channels` channels.
fn row_source(plane: &Plane, channels: usize) -> usize {
    // Saturating: a stride as large as the input makes the phase count as large as the volume.
    channels.saturating_mul(plane.phases()).saturating_mul(plane.padded[2] + plane.max_offset() + 64)
}

/// Whether the direct kernels serve `geo` (forward, and the input gradient where
/// `input_gradient_applies`): on this CPU, with tasks of bounded size.
pub(crate) fn fits(geo: &ConvGeometry) -> bool {
    available()
        && row_source(&Plane::forward(geo), geo.c_in_per_group()) <= MAX_TASK_SOURCE_ELEMS
        && row_source(&Plane::transposed(geo), geo.c_out_per_group()) <= MAX_TASK_SOURCE_ELEMS
}

/// Whether `backward_weight` serves `geo`: when a unit of MIN_UNIT_POSITIONS positions of every
/// input phase and output channel fits twice WEIGHT_BUFFER_ELEMS. With more channels (res_3x3_s2:
/// 4 x 128 phases and 256 outputs) the passes over the unit stream from L3, and im2col's GEMM,
/// which blocks for the caches, was 2.3x faster.
pub(crate) fn weight_gradient_applies(geo: &ConvGeometry) -> bool {
    let plane = Plane::forward(geo);
    let rows = geo.c_in_per_group().saturating_mul(plane.phases()).saturating_add(geo.c_out_per_group());
    let unit = row_source(&plane, geo.c_in_per_group()).saturating_add(geo.c_out_per_group() * (plane.padded[2] + 64));
    available() && rows.saturating_mul(MIN_UNIT_POSITIONS) <= 2 * WEIGHT_BUFFER_ELEMS && unit <= MAX_TASK_SOURCE_ELEMS
}

/// Whether `backward_input` serves `geo`: stride 1 (the input gradient of a strided
/// convolution is not one correlation).
pub(crate) fn input_gradient_applies(geo: &ConvGeometry) -> bool {
    geo.stride == [1; 3] && fits(geo)
}

/// A correlation between channel volumes: `dst[k, q] = sum over c, taps t of w[k, c, t] *
/// padded[c, q * stride + t * dilation]`, where `padded` is the source placed at `lo` in a zero
/// volume (`lo` may be negative: the source is then cropped).
///
/// A stride is made dense by splitting each channel into its `phases` (one per residue of the
/// position modulo the stride, per dimension): tap `t` reads phase `(t * dilation) % stride` at
/// offset `(t * dilation) / stride`, a stride-1 correlation. The phases are `padded` in size.
#[derive(Clone, Copy, Debug)]
struct Plane {
    src: [usize; 3],
    lo: [isize; 3],
    out: [usize; 3],
    kernel: [usize; 3],
    dilation: [usize; 3],
    stride: [usize; 3],
    padded: [usize; 3],
}

impl Plane {
    fn new(src: [usize; 3], lo: [isize; 3], out: [usize; 3], kernel: [usize; 3], dilation: [usize; 3], stride: [usize; 3]) -> Plane {
        let padded = std::array::from_fn(|d| out[d] + (kernel[d] - 1) * dilation[d] / stride[d]);
        Plane { src, lo, out, kernel, dilation, stride, padded }
    }

    /// The forward convolution of `geo`: the input, padded as `geo` says.
    fn forward(geo: &ConvGeometry) -> Plane {
        let lo = geo.pad_lo.map(|p| p as isize);
        Plane::new(geo.input, lo, geo.output, geo.kernel, geo.dilation, geo.stride)
    }

    /// The gradient of the input of `geo` (stride 1): the output gradient, padded by the
    /// dilated kernel extent less the forward padding, correlated with the flipped kernel.
    fn transposed(geo: &ConvGeometry) -> Plane {
        let lo = std::array::from_fn(|d| ((geo.kernel[d] - 1) * geo.dilation[d]) as isize - geo.pad_lo[d] as isize);
        Plane::new(geo.output, lo, geo.input, geo.kernel, geo.dilation, [1; 3])
    }

    fn phases(&self) -> usize {
        self.stride.iter().fold(1usize, |p, &s| p.saturating_mul(s))
    }

    /// For each kernel tap, in weight order: its phase and its flat offset inside that phase.
    fn taps(&self) -> Vec<(usize, usize)> {
        let [_, ph, pw] = self.padded;
        let [kd, kh, kw] = self.kernel;
        let (s, d) = (self.stride, self.dilation);
        let mut taps = with_capacity(kd * kh * kw, "direct taps");
        for z in 0..kd {
            for y in 0..kh {
                for x in 0..kw {
                    let (z, y, x) = (z * d[0], y * d[1], x * d[2]);
                    let phase = ((z % s[0]) * s[1] + y % s[1]) * s[2] + x % s[2];
                    taps.push((phase, ((z / s[0]) * ph + y / s[1]) * pw + x / s[2]));
                }
            }
        }
        taps
    }

    /// The offsets of `taps` into one channel's phases laid out `phase_len` apart, into `offs`.
    fn offsets(taps: &[(usize, usize)], phase_len: usize, offs: &mut Vec<usize>) {
        offs.clear();
        reserve(offs, taps.len(), "direct tap offsets");
        offs.extend(taps.iter().map(|&(phase, off)| phase * phase_len + off));
    }

    /// The largest offset of a tap inside its phase.
    /// A tap's offset grows with each of its coordinates, so the last tap has the largest.
    fn max_offset(&self) -> usize {
        let [_, ph, pw] = self.padded;
        let last = |d: usize| (self.kernel[d] - 1) * self.dilation[d] / self.stride[d];
        (last(0) * ph + last(1)) * pw + last(2)
    }

    /// Output rows (depth x height) of one channel.
    fn rows(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// Where output row `r` starts on the wide grid.
    fn wide_row(&self, r: usize) -> usize {
        let (z, y) = (r / self.out[1], r % self.out[1]);
        (z * self.padded[1] + y) * self.padded[2]
    }

    /// The wide positions `[start, end)` that hold output rows `r0 .. r1`.
    fn wide_span(&self, r0: usize, r1: usize) -> (usize, usize) {
        (self.wide_row(r0), self.wide_row(r1 - 1) + self.out[2])
    }

    /// Which taps of output row `r` read a row of the source, not of the zero padding: every
    /// tap at a stride (its phases mix rows), else those whose depth and height land inside
    /// the source. A tap that reads only padding adds `w * 0.0`, which leaves the sum unchanged
    /// (it starts at `+0.0`, and with round-to-nearest a sum of products is never `-0.0`), so
    /// skipping it gives the same bits.
    fn row_taps(&self, r: usize) -> Vec<bool> {
        let [kd, kh, kw] = self.kernel;
        if self.stride != [1; 3] {
            return filled(kd * kh * kw, true, "direct row taps");
        }
        let (z, y) = (r / self.out[1], r % self.out[1]);
        let inside = |d: usize, at: usize, k: usize| {
            let i = (at + k * self.dilation[d]) as isize - self.lo[d];
            i >= 0 && i < self.src[d] as isize
        };
        let mut taps = with_capacity(kd * kh * kw, "direct row taps");
        for a in 0..kd {
            for b in 0..kh {
                taps.extend(std::iter::repeat_n(inside(0, z, a) && inside(1, y, b), kw));
            }
        }
        taps
    }

    fn src_len(&self) -> usize {
        self.src.iter().product()
    }

    fn out_len(&self) -> usize {
        self.out.iter().product()
    }

    /// Copies positions `start .. start + phase_len` of every phase of one source channel
    /// into `dst` (phases `phase_len` apart; zero where the padded volume has no source
    /// element, and past its end).
    fn fill<T: Real>(&self, src: &[T], start: usize, phase_len: usize, dst: &mut [T]) {
        // No padding, no stride and rows as long as the source's: the padded volume is the
        // source itself (then zeros), one copy instead of a run per row.
        if self.lo == [0; 3] && self.stride == [1; 3] && self.padded[1..] == self.src[1..] {
            let n = src.len().saturating_sub(start).min(dst.len());
            dst[..n].copy_from_slice(&src[start..][..n]);
            dst[n..].fill(T::zero());
            return;
        }
        let [_, s1, s2] = self.stride;
        for (phase, dst) in dst.chunks_exact_mut(phase_len).enumerate() {
            self.fill_phase(src, [phase / (s1 * s2), phase / s2 % s1, phase % s2], start, dst);
        }
    }

    /// One phase of `fill`: element `(z, y, x)` of the phase is padded position
    /// `(z, y, x) * stride + phase`.
    fn fill_phase<T: Real>(&self, src: &[T], phase: [usize; 3], start: usize, dst: &mut [T]) {
        let [_, ph, pw] = self.padded;
        let [sd, sh, sw] = self.src;
        let [_, _, sx] = self.stride;
        let at = |d: usize, i: usize| (i * self.stride[d] + phase[d]) as isize - self.lo[d];
        let mut f = start;
        let mut rest = dst;
        while !rest.is_empty() {
            let (row, col) = (f / pw, f % pw);
            let run = (pw - col).min(rest.len());
            let (piece, tail) = rest.split_at_mut(run);
            rest = tail;
            f += run;
            let (z, y) = (at(0, row / ph), at(1, row % ph));
            if z < 0 || z >= sd as isize || y < 0 || y >= sh as isize {
                piece.fill(T::zero());
                continue;
            }
            // Piece element i holds source column x0 + i * sx; those in [a, b) exist. A piece
            // may end inside the left padding (a == run) or start past the source (b == a).
            let x0 = at(2, col);
            let a = ((-x0).max(0) as usize).div_ceil(sx).min(run);
            let b = if x0 >= sw as isize { a } else { ((sw as isize - x0) as usize).div_ceil(sx).clamp(a, run) };
            piece[..a].fill(T::zero());
            piece[b..].fill(T::zero());
            if a == b {
                continue;
            }
            let row_src = &src[(z as usize * sh + y as usize) * sw..][..sw];
            let first = (x0 + (a * sx) as isize) as usize;
            if sx == 1 {
                piece[a..b].copy_from_slice(&row_src[first..][..b - a]);
            } else {
                for (i, d) in piece[a..b].iter_mut().enumerate() {
                    *d = row_src[first + i * sx];
                }
            }
        }
    }
}

/// Weights `w (groups * kout, cin, taps)` regrouped per group into blocks of `kb` output
/// channels: `[group][block][c][tap][j]`, zero for channels past `kout`. With `transpose`, the
/// weights are read as `w (groups * cin, kout, taps)` with the taps reversed (the gradient of
/// the input: output channel `j` of the correlation is the forward's input channel).
fn pack_weights<T: Real>(w: &[T], groups: usize, cin: usize, kout: usize, taps: usize, kb: usize, transpose: bool) -> Vec<T> {
    let blocks = kout.div_ceil(kb);
    let mut packed = scratch(groups * blocks * kb * cin * taps, "direct packed weights");
    for g in 0..groups {
        for b in 0..blocks {
            for c in 0..cin {
                for t in 0..taps {
                    for j in 0..kb.min(kout - b * kb) {
                        let k = b * kb + j;
                        let at = (((g * blocks + b) * cin + c) * taps + t) * kb + j;
                        packed[at] = if transpose {
                            w[((g * cin + c) * kout + k) * taps + (taps - 1 - t)]
                        } else {
                            w[((g * kout + k) * cin + c) * taps + t]
                        };
                    }
                }
            }
        }
    }
    packed
}

/// The taps of `mask` of packed weights `[unit][tap][j]` (`units` units of `mask.len()` taps
/// of `kb` weights), as `[unit][selected tap][j]`.
fn select_taps<T: Real>(packed: &[T], units: usize, mask: &[bool], kb: usize) -> Vec<T> {
    let taps = mask.len();
    let mut out = with_capacity(units * mask.iter().filter(|&&m| m).count() * kb, "direct band weights");
    for unit in packed.chunks_exact(taps * kb).take(units) {
        for (t, w) in unit.chunks_exact(kb).enumerate() {
            if mask[t] {
                out.extend_from_slice(w);
            }
        }
    }
    out
}

/// The output-channel block for `kout` channels: the fewest padded channels, then the largest.
fn block_rows(isa: Isa, kout: usize) -> usize {
    let choices: &[usize] = match isa {
        Isa::Avx512 => &KB_AVX512,
        Isa::Avx2 => &KB_AVX2,
    };
    let waste = |kb: usize| kout.div_ceil(kb) * kb - kout;
    choices.iter().copied().min_by_key(|&kb| (waste(kb), usize::MAX - kb)).expect("non-empty")
}

fn lanes<T: Real>(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 64 / std::mem::size_of::<T>(),
        Isa::Avx2 => 32 / std::mem::size_of::<T>(),
    }
}

/// `out (N, groups * kout, *plane.out) = correlation of src (N, groups * cin, *plane.src)` with
/// packed weights, plus `bias`.
#[allow(clippy::too_many_arguments)]
fn correlate<T: Real>(
    isa: Isa,
    src: &[T],
    n: usize,
    groups: usize,
    cin: usize,
    kout: usize,
    plane: &Plane,
    packed: &[T],
    kb: usize,
    bias: Option<&[T]>,
    out: &mut [T],
) {
    let tap_list = plane.taps();
    let (taps, phases) = (tap_list.len(), plane.phases());
    let lanes = lanes::<T>(isa);
    let (rows, width) = (plane.rows(), plane.out[2]);
    let (src_len, out_len) = (plane.src_len(), plane.out_len());
    let budget = (TASK_SOURCE_ELEMS / (cin * phases).max(1)).saturating_sub(plane.max_offset());
    let chunks = rows.div_ceil((budget / plane.padded[2]).clamp(1, rows));
    // Balanced: 28 rows in chunks of at most 27 are two of 14, not 27 and 1.
    let task_rows = rows.div_ceil(chunks);
    let blocks = kout.div_ceil(kb);
    let kernel = forward_kernel::<T>(isa, kb);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let work = n * groups * kout * out_len * cin * taps;
    // Rows whose taps read the same source rows form a band, with the weights of those taps
    // packed on their own. A large padding leaves many taps on zeros: LeNet-5's second layer's
    // input gradient pads a 10x10 map by 4, and its 14 rows read 50 of their 70 kernel rows.
    let mut masks: Vec<Vec<bool>> = Vec::new();
    let row_band: Vec<usize> = (0..rows)
        .map(|r| {
            let m = plane.row_taps(r);
            masks.iter().position(|b| *b == m).unwrap_or_else(|| {
                masks.push(m);
                masks.len() - 1
            })
        })
        .collect();
    let band_weights: Vec<Vec<T>> = masks.iter().map(|m| select_taps(packed, groups * blocks * cin, m, kb)).collect();
    let band_taps: Vec<usize> = masks.iter().map(|m| m.iter().filter(|&&t| t).count()).collect();
    // Where each band's offsets start in a task's `offs`, after the full list.
    let band_offs_at: Vec<usize> = band_taps.iter().scan(taps, |at, &n| Some(std::mem::replace(at, *at + n))).collect();
    type Scratch<T> = (Vec<T>, Vec<T>, Vec<usize>, Vec<usize>, Vec<(usize, usize, usize)>);
    let scratch = || (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    parallel::for_each_init(n * groups * chunks, work, scratch, |(xs, wide, offs, row_starts, runs): &mut Scratch<T>, item| {
        let (ng, chunk) = (item / chunks, item % chunks);
        let (s, g) = (ng / groups, ng % groups);
        let (r0, r1) = (chunk * task_rows, ((chunk + 1) * task_rows).min(rows));
        let start = plane.wide_row(r0);
        // The rows of each depth slice and band are one run of the wide grid; the padded rows
        // between slices (3-D) are skipped. Each run is computed in whole vectors; where that
        // reaches into the next run's rows, the next run (computed later) overwrites them.
        runs.clear();
        let mut ra = r0;
        while ra < r1 {
            let slice_end = r1.min((ra / plane.out[1] + 1) * plane.out[1]);
            let rb = (ra + 1..slice_end).find(|&r| row_band[r] != row_band[ra]).unwrap_or(slice_end);
            let (from, to) = plane.wide_span(ra, rb);
            runs.push((from - start, (to - from).div_ceil(lanes) * lanes, row_band[ra]));
            ra = rb;
        }
        let span = runs.iter().map(|&(from, len, _)| from + len).max().unwrap_or(0);
        let phase_len = span + plane.max_offset();
        let stride = phases * phase_len;
        // Every tap's offset, then each band's (at `band_offs_at`).
        Plane::offsets(&tap_list, phase_len, offs);
        reserve(offs, band_taps.iter().sum(), "direct tap offsets");
        for m in &masks {
            for t in 0..taps {
                if m[t] {
                    offs.push(offs[t]);
                }
            }
        }
        resize(xs, cin * stride, T::zero(), "direct xs");
        resize(wide, kb * span, T::zero(), "direct wide");
        row_starts.clear();
        row_starts.extend((r0..r1).map(|r| plane.wide_row(r) - start));
        for c in 0..cin {
            let channel = &src[((s * groups + g) * cin + c) * src_len..][..src_len];
            plane.fill(channel, start, phase_len, &mut xs[c * stride..][..stride]);
        }
        for b in 0..blocks {
            for &(from, len, band) in runs.iter() {
                let nt = band_taps[band];
                let band_offs = &offs[band_offs_at[band]..][..nt];
                let w = &band_weights[band][((g * blocks + b) * cin * nt) * kb..][..cin * nt * kb];
                // SAFETY: `kernel` was chosen for `isa`, which this CPU has. It reads `cin`
                // channels of `stride` elements from `xs` at positions `p + band_offs[t]` with
                // `from <= p < from + len <= span` and `band_offs[t] <= (phases - 1) * phase_len
                // + max_offset`, all inside `xs`; `cin * nt * kb` weights; and writes
                // positions `from .. from + len` of `kb` rows of `span` elements in `wide`.
                unsafe { kernel(xs.as_ptr(), stride, cin, band_offs, w.as_ptr(), span, wide.as_mut_ptr(), from, len) };
            }
            for j in 0..kb.min(kout - b * kb) {
                let k = g * kout + b * kb + j;
                let add = bias.map_or(T::zero(), |bias| bias[k]);
                let wide_j = &wide[j * span..][..span];
                // SAFETY: task (s, g, chunk) writes rows r0..r1 of its group's channels of sample
                // s only: disjoint between tasks and inside `out`.
                let to = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(((s * groups * kout + k) * rows + r0) * width), (r1 - r0) * width) };
                for (&from, to) in row_starts.iter().zip(to.chunks_exact_mut(width)) {
                    for (o, &v) in to.iter_mut().zip(&wide_j[from..from + width]) {
                        *o = v + add;
                    }
                }
            }
        }
    });
}

/// `out (N, K, *out) = conv(x (N, C, *in), w (K, C / groups, *kernel)) + bias`.
pub(crate) fn forward<T: Real>(x: &[T], w: &[T], bias: Option<&[T]>, geo: &ConvGeometry, out: &mut [T]) {
    let isa = Isa::detect().expect("direct::available checked the CPU");
    let (cg, kg) = (geo.c_in_per_group(), geo.c_out_per_group());
    let kb = block_rows(isa, kg);
    let packed = pack_weights(w, geo.groups, cg, kg, geo.kernel_volume(), kb, false);
    correlate(isa, x, geo.n, geo.groups, cg, kg, &Plane::forward(geo), &packed, kb, bias, out);
}

/// `dx (N, C, *in)`: the gradient of the input for `dy (N, K, *out)`, at stride 1.
pub(crate) fn backward_input<T: Real>(dy: &[T], w: &[T], geo: &ConvGeometry, dx: &mut [T]) {
    let isa = Isa::detect().expect("direct::available checked the CPU");
    let (cg, kg) = (geo.c_in_per_group(), geo.c_out_per_group());
    let kb = block_rows(isa, cg);
    let packed = pack_weights(w, geo.groups, kg, cg, geo.kernel_volume(), kb, true);
    correlate(isa, dy, geo.n, geo.groups, kg, cg, &Plane::transposed(geo), &packed, kb, None, dx);
}

/// `dw (K, C / groups, *kernel)`: the gradient of the weight for input `x` and `dy`. Sample
/// chunks (a count fixed by the shapes) each sum into their own partial
/// gradient; the partials are added in chunk order.
pub(crate) fn backward_weight<T: Real>(x: &[T], dy: &[T], geo: &ConvGeometry, dw: &mut [T]) {
    let isa = Isa::detect().expect("direct::available checked the CPU");
    let block = weight_block(isa, geo.c_out_per_group(), geo.kernel_volume());
    backward_weight_with(isa, block, x, dy, geo, dw);
}

/// `backward_weight` with a given instruction set and block (`weight_block`'s choice, or any
/// block of `isa` in the tests).
fn backward_weight_with<T: Real>(isa: Isa, (kb, ob): (usize, usize), x: &[T], dy: &[T], geo: &ConvGeometry, dw: &mut [T]) {
    let plane = Plane::forward(geo);
    let (cg, kg, groups) = (geo.c_in_per_group(), geo.c_out_per_group(), geo.groups);
    let tap_list = plane.taps();
    let (taps, phases) = (tap_list.len(), plane.phases());
    let kernel = weight_kernel::<T>(isa, (kb, ob));
    let kpad = kg.div_ceil(kb) * kb;
    let (lanes, tap_blocks) = (lanes::<T>(isa), taps.div_ceil(ob));
    let tile = VB * lanes;
    let acc_len = kpad * cg * tap_blocks * ob * lanes;
    let (in_len, out_len, rows, width) = (plane.src_len(), plane.out_len(), plane.rows(), plane.out[2]);
    // A unit of work is some output rows of some samples whose padded inputs and wide output
    // gradients fit WEIGHT_BUFFER_ELEMS: several whole samples when they are small, else the
    // rows of one sample that fit (at least one).
    let budget = (WEIGHT_BUFFER_ELEMS / (cg * phases + kpad)).saturating_sub(plane.max_offset() + tile);
    // At least a few halos' worth of rows, else the halo (max_offset) is copied many times over;
    // and at least MIN_UNIT_POSITIONS, else each accumulator block does too little between its
    // load and store (many channels on a small map).
    let halo_rows = 4 * plane.max_offset() / plane.padded[2];
    let min_rows = MIN_UNIT_POSITIONS.div_ceil(plane.padded[2]);
    let row_chunks = rows.div_ceil((budget / plane.padded[2]).max(halo_rows).max(min_rows).clamp(1, rows));
    let unit_rows = rows.div_ceil(row_chunks);
    let work = geo.n * geo.c_out * out_len * cg * taps;
    // A power of two (even splits on 2 or 4 threads), each with enough work to pay its partial.
    let chunks = (work / MIN_CHUNK_WORK).clamp(1, geo.n.min(MAX_WEIGHT_CHUNKS));
    let chunks = 1 << chunks.ilog2();
    let per_chunk = geo.n.div_ceil(chunks);
    let (start, end) = plane.wide_span(0, rows);
    let sample_elems = (cg * phases + kpad) * ((end - start).div_ceil(tile) * tile + plane.max_offset());
    let min_samples = MIN_UNIT_POSITIONS.div_ceil(end - start);
    let batch = if row_chunks > 1 { 1 } else { (WEIGHT_BUFFER_ELEMS / sample_elems).max(min_samples).clamp(1, per_chunk) };
    let mut partials = scratch(chunks * dw.len(), "direct partial weight gradients");
    parallel::for_each_chunk(&mut partials, dw.len(), work, |chunk, partial| {
        let (mut xs, mut dys, mut offs) = (Vec::new(), Vec::new(), Vec::new());
        let mut acc = scratch(groups * acc_len, "direct weight accumulators");
        let samples = chunk * per_chunk..((chunk + 1) * per_chunk).min(geo.n);
        for first in samples.clone().step_by(batch) {
            let count = batch.min(samples.end - first);
            for rc in 0..row_chunks {
                let (r0, r1) = (rc * unit_rows, ((rc + 1) * unit_rows).min(rows));
                let (start, end) = plane.wide_span(r0, r1);
                let span = (end - start).div_ceil(tile) * tile;
                let phase_len = span + plane.max_offset();
                let stride = phases * phase_len;
                Plane::offsets(&tap_list, phase_len, &mut offs);
                resize(&mut xs, count * cg * stride, T::zero(), "direct xs");
                resize(&mut dys, count * kpad * span, T::zero(), "direct dys");
                for g in 0..groups {
                    for i in 0..count {
                        let s = first + i;
                        for c in 0..cg {
                            let channel = &x[((s * groups + g) * cg + c) * in_len..][..in_len];
                            plane.fill(channel, start, phase_len, &mut xs[(i * cg + c) * stride..][..stride]);
                        }
                        // The wide grid's discarded columns and the channels past `kg` are zero.
                        let wide = &mut dys[i * kpad * span..][..kpad * span];
                        wide.fill(T::zero());
                        for k in 0..kg {
                            let grad = &dy[((s * groups + g) * kg + k) * out_len..][..out_len];
                            for r in r0..r1 {
                                let at = k * span + plane.wide_row(r) - start;
                                wide[at..][..width].copy_from_slice(&grad[r * width..][..width]);
                            }
                        }
                    }
                    let acc = &mut acc[g * acc_len..][..acc_len];
                    // SAFETY: `kernel` was chosen for `isa`, which this CPU has. For `count` samples
                    // it reads `cg` rows of `stride` elements of `xs` at `p + offs[t]` (`p < span`,
                    // `offs[t] < stride - span`) and `kpad` rows of `span` elements of `dys`, and
                    // adds into the `kpad * cg * tap_blocks * ob` vectors of `acc`.
                    unsafe { kernel(xs.as_ptr(), dys.as_ptr(), count, cg, kpad, stride, span, &offs, acc.as_mut_ptr()) };
                }
            }
        }
        // The lanes of each accumulator, summed once per chunk, then put in weight order.
        let mut sums = scratch(acc.len() / lanes, "direct weight sums");
        match lanes {
            16 => lane_sums::<T, 16>(&acc, &mut sums),
            8 => lane_sums::<T, 8>(&acc, &mut sums),
            _ => lane_sums::<T, 4>(&acc, &mut sums),
        }
        for (g, sums) in sums.chunks_exact(acc_len / lanes).enumerate() {
            for k in 0..kg {
                let (b, j) = (k / kb, k % kb);
                for c in 0..cg {
                    for t in 0..taps {
                        let (tb, o) = (t / ob, t % ob);
                        partial[((g * kg + k) * cg + c) * taps + t] = sums[(((b * cg + c) * tap_blocks + tb) * kb + j) * ob + o];
                    }
                }
            }
        }
    });
    let len = dw.len();
    for (i, d) in dw.iter_mut().enumerate() {
        *d = (0..chunks).fold(T::zero(), |acc, c| acc + partials[c * len + i]);
    }
}

type ForwardFn<T> = unsafe fn(*const T, usize, usize, &[usize], *const T, usize, *mut T, usize, usize);
type WeightFn<T> = unsafe fn(*const T, *const T, usize, usize, usize, usize, usize, &[usize], *mut T);

/// The forward block kernel for `isa` and `kb` output channels.
fn forward_kernel<T: Real>(isa: Isa, kb: usize) -> ForwardFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx512<T: Real, const KB: usize>(xs: *const T, stride: usize, cin: usize, offs: &[usize], w: *const T, span: usize, wide: *mut T, from: usize, len: usize) {
            // SAFETY: forwarded from the caller (this CPU has AVX-512F).
            unsafe { forward_block::<T::V512, KB>(xs, stride, cin, offs, w, span, wide, from, len) }
        }
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx2<T: Real, const KB: usize>(xs: *const T, stride: usize, cin: usize, offs: &[usize], w: *const T, span: usize, wide: *mut T, from: usize, len: usize) {
            // SAFETY: forwarded from the caller (this CPU has AVX2 and FMA).
            unsafe { forward_block::<T::V256, KB>(xs, stride, cin, offs, w, span, wide, from, len) }
        }
        match (isa, kb) {
            (Isa::Avx512, 8) => avx512::<T, 8>,
            (Isa::Avx512, 6) => avx512::<T, 6>,
            (Isa::Avx512, 4) => avx512::<T, 4>,
            (Isa::Avx2, 6) => avx2::<T, 6>,
            (Isa::Avx2, 4) => avx2::<T, 4>,
            _ => unreachable!("block_rows returns one of the instantiated blocks"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("Isa::detect finds no instruction set off x86-64")
}

/// `wide[j][p] = sum over c, t of w[c][t][j] * xs[c][p + offs[t]]` for `j < KB` and
/// `from <= p < from + len` (`len` a multiple of `V::LANES`, `wide`'s rows `span` long): tiles
/// of `VB` vectors, and one of a single vector where `len` leaves less (a narrow map's wide rows
/// round up to fewer discarded positions).
///
/// # Safety
/// This CPU has `V`'s instruction set; the pointers cover what the caller of `forward_kernel`
/// documents.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_block<V: Vector, const KB: usize>(
    xs: *const V::Elem,
    stride: usize,
    cin: usize,
    offs: &[usize],
    w: *const V::Elem,
    span: usize,
    wide: *mut V::Elem,
    from: usize,
    len: usize,
) {
    let step = VB * V::LANES;
    let full = from + len / step * step;
    // SAFETY (whole body): every tile lies inside `from .. from + len`, within `0..span`, as
    // the caller documents.
    unsafe {
        for p in (from..full).step_by(step) {
            forward_tile::<V, KB, VB>(xs, stride, cin, offs, w, span, wide, p);
        }
        for p in (full..from + len).step_by(V::LANES) {
            forward_tile::<V, KB, 1>(xs, stride, cin, offs, w, span, wide, p);
        }
    }
}

/// One tile of `forward_block`: positions `p .. p + NV * V::LANES`.
///
/// # Safety
/// As `forward_block`, with the tile inside `0..span`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_tile<V: Vector, const KB: usize, const NV: usize>(
    xs: *const V::Elem,
    stride: usize,
    cin: usize,
    offs: &[usize],
    w: *const V::Elem,
    span: usize,
    wide: *mut V::Elem,
    p: usize,
) {
    // SAFETY (whole body): every pointer stays inside the ranges the caller documents.
    unsafe {
        let mut acc = [[V::zero(); NV]; KB];
        let mut wp = w;
        for c in 0..cin {
            let base = xs.add(c * stride + p);
            for &off in offs {
                let at = base.add(off);
                let xv: [V; NV] = std::array::from_fn(|v| V::load(at.add(v * V::LANES)));
                for row in acc.iter_mut() {
                    let wv = V::splat(*wp);
                    wp = wp.add(1);
                    for v in 0..NV {
                        row[v] = wv.mul_add(xv[v], row[v]);
                    }
                }
            }
        }
        for (j, row) in acc.iter().enumerate() {
            for (v, r) in row.iter().enumerate() {
                r.store(wide.add(j * span + p + v * V::LANES));
            }
        }
    }
}

/// Weight-gradient blocks (output channels, taps) by instruction set: `KB * OB` accumulators,
/// `KB` gradient vectors and one input vector fit the 32 (AVX-512) or 16 (AVX2) registers.
const WEIGHT_BLOCKS_AVX512: [(usize, usize); 5] = [(4, 6), (4, 5), (3, 7), (3, 5), (6, 4)];
const WEIGHT_BLOCKS_AVX2: [(usize, usize); 4] = [(2, 6), (2, 5), (1, 7), (3, 3)];

/// The weight-gradient block for `kout` channels and `taps` taps: the least padded work
/// (channels and taps rounded up to the block), then the largest block.
fn weight_block(isa: Isa, kout: usize, taps: usize) -> (usize, usize) {
    let blocks: &[(usize, usize)] = match isa {
        Isa::Avx512 => &WEIGHT_BLOCKS_AVX512,
        Isa::Avx2 => &WEIGHT_BLOCKS_AVX2,
    };
    let padded = |(kb, ob): (usize, usize)| kout.div_ceil(kb) * kb * taps.div_ceil(ob) * ob;
    blocks.iter().copied().min_by_key(|&b| (padded(b), usize::MAX - b.0 * b.1)).expect("non-empty")
}

/// The weight-gradient kernel for `isa` and a block from `weight_block`.
fn weight_kernel<T: Real>(isa: Isa, (kb, ob): (usize, usize)) -> WeightFn<T> {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx512<T: Real, const KB: usize, const OB: usize>(
            xs: *const T, dys: *const T, count: usize, cin: usize, kpad: usize, stride: usize, span: usize, offs: &[usize], acc: *mut T,
        ) {
            // SAFETY: forwarded from the caller (this CPU has AVX-512F).
            unsafe { weight_blocks::<T::V512, KB, OB>(xs, dys, count, cin, kpad, stride, span, offs, acc) }
        }
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx2<T: Real, const KB: usize, const OB: usize>(
            xs: *const T, dys: *const T, count: usize, cin: usize, kpad: usize, stride: usize, span: usize, offs: &[usize], acc: *mut T,
        ) {
            // SAFETY: forwarded from the caller (this CPU has AVX2 and FMA).
            unsafe { weight_blocks::<T::V256, KB, OB>(xs, dys, count, cin, kpad, stride, span, offs, acc) }
        }
        match (isa, kb, ob) {
            (Isa::Avx512, 4, 6) => avx512::<T, 4, 6>,
            (Isa::Avx512, 4, 5) => avx512::<T, 4, 5>,
            (Isa::Avx512, 3, 7) => avx512::<T, 3, 7>,
            (Isa::Avx512, 3, 5) => avx512::<T, 3, 5>,
            (Isa::Avx512, 6, 4) => avx512::<T, 6, 4>,
            (Isa::Avx2, 2, 6) => avx2::<T, 2, 6>,
            (Isa::Avx2, 2, 5) => avx2::<T, 2, 5>,
            (Isa::Avx2, 1, 7) => avx2::<T, 1, 7>,
            (Isa::Avx2, 3, 3) => avx2::<T, 3, 3>,
            _ => unreachable!("weight_block returns one of the instantiated blocks"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("Isa::detect finds no instruction set off x86-64")
}

/// Adds `dys[i][k][p] * xs[i][c][p + offs[t]]` over samples `i < count` and positions
/// `p < span` into the lane accumulators `acc[b][c][tb][j][o]` (one vector each) of channel
/// `k = b * KB + j`, input channel `c` and tap `t = tb * OB + o`, `KB` channels by `OB` taps at a
/// time. Lane `l` of an accumulator sums the positions `p = l (mod LANES)` in order; taps past
/// the end repeat tap 0 and their accumulators are ignored by the caller.
///
/// # Safety
/// This CPU has `V`'s instruction set; `xs` holds `count * cin` rows of `stride`, `dys` `count *
/// kpad` rows of `span` (a multiple of `V::LANES`), `acc` `kpad * cin * taps.div_ceil(OB) * OB`
/// vectors.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_blocks<V: Vector, const KB: usize, const OB: usize>(
    xs: *const V::Elem,
    dys: *const V::Elem,
    count: usize,
    cin: usize,
    kpad: usize,
    stride: usize,
    span: usize,
    offs: &[usize],
    acc: *mut V::Elem,
) {
    let tap_blocks = offs.len().div_ceil(OB);
    // SAFETY (whole body): every pointer stays inside the ranges the caller documents.
    unsafe {
        for b in 0..kpad / KB {
            for c in 0..cin {
                for tb in 0..tap_blocks {
                    let off: [usize; OB] = std::array::from_fn(|o| offs.get(tb * OB + o).copied().unwrap_or(0));
                    let at = acc.add((((b * cin + c) * tap_blocks + tb) * KB * OB) * V::LANES);
                    let mut sums: [[V; OB]; KB] = std::array::from_fn(|j| std::array::from_fn(|o| V::load(at.add((j * OB + o) * V::LANES))));
                    for i in 0..count {
                        let x = xs.add((i * cin + c) * stride);
                        let d = dys.add((i * kpad + b * KB) * span);
                        for p in (0..span).step_by(V::LANES) {
                            let dv: [V; KB] = std::array::from_fn(|j| V::load(d.add(j * span + p)));
                            for o in 0..OB {
                                let xv = V::load(x.add(p + off[o]));
                                for j in 0..KB {
                                    sums[j][o] = xv.mul_add(dv[j], sums[j][o]);
                                }
                            }
                        }
                    }
                    for (j, row) in sums.iter().enumerate() {
                        for (o, v) in row.iter().enumerate() {
                            v.store(at.add((j * OB + o) * V::LANES));
                        }
                    }
                }
            }
        }
    }
}

/// Sums the `L` lanes of each accumulator in `acc` into `out`, each as a fixed pairwise tree.
fn lane_sums<T: Real, const L: usize>(acc: &[T], out: &mut [T]) {
    for (o, lanes) in out.iter_mut().zip(acc.chunks_exact(L)) {
        let mut v: [T; L] = lanes.try_into().expect("L lanes");
        let mut n = L;
        while n > 1 {
            n /= 2;
            for i in 0..n {
                v[i] += v[i + n];
            }
        }
        *o = v[0];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::testutil;
    use crate::params::{ConvParams, Padding, PaddingMode};

    fn geometry(x: &[usize], w: &[usize], pad: usize, dil: usize, groups: usize, stride: usize) -> ConvGeometry {
        let dims = x.len() - 2;
        let params = ConvParams {
            stride: vec![stride; dims],
            padding: Padding::Explicit(vec![pad; dims]),
            dilation: vec![dil; dims],
            groups,
            padding_mode: PaddingMode::Zeros,
        };
        params.geometry(x, w).unwrap()
    }

    /// (input, weight, padding, dilation, groups, stride)
    type Case = (&'static [usize], &'static [usize], usize, usize, usize, usize);

    const CASES: [Case; 21] = [
        (&[2, 3, 12, 11], &[6, 3, 5, 5], 0, 1, 1, 1),
        (&[3, 6, 14, 14], &[16, 6, 5, 5], 2, 1, 1, 1),
        (&[1, 4, 9, 13], &[6, 2, 3, 3], 1, 2, 2, 1),
        (&[2, 5, 37], &[7, 5, 7], 3, 1, 1, 1),
        (&[1, 3, 5, 6, 7], &[9, 3, 3, 3, 3], 1, 1, 1, 1),
        (&[2, 2, 6, 5], &[3, 2, 2, 4], 4, 1, 1, 1),
        (&[1, 1, 40, 3], &[17, 1, 3, 1], 1, 1, 1, 1),
        (&[2, 12, 7, 7], &[4, 12, 1, 2], 0, 3, 1, 1),
        (&[1, 2, 3, 3], &[13, 2, 3, 3], 0, 1, 1, 1),
        // Several weight-gradient chunks; then rows of one sample split into units.
        (&[8, 8, 60, 70], &[8, 8, 3, 3], 1, 1, 1, 1),
        (&[4, 16, 80, 80], &[4, 16, 3, 3], 1, 1, 1, 1),
        // Strides: phases of unequal sizes, strides above the kernel, with dilation and groups.
        (&[2, 3, 15, 16], &[8, 3, 3, 3], 1, 1, 1, 2),
        (&[1, 4, 11, 10], &[6, 2, 3, 2], 2, 2, 2, 3),
        (&[2, 5, 29], &[4, 5, 4], 1, 1, 1, 3),
        (&[1, 2, 7, 8, 9], &[3, 2, 3, 3, 3], 1, 1, 1, 2),
        (&[1, 3, 9, 9], &[5, 3, 2, 2], 0, 1, 1, 4),
        (&[2, 16, 28, 28], &[12, 16, 3, 3], 1, 1, 1, 2),
        // Row bands: LeNet-5's second layer (its input gradient pads by 4), and paddings past
        // the dilated kernel, where some rows (and depth slices) read no source row at all.
        (&[2, 6, 14, 14], &[16, 6, 5, 5], 0, 1, 1, 1),
        (&[1, 2, 3, 4], &[3, 2, 2, 2], 3, 2, 1, 1),
        (&[1, 2, 3, 4, 5], &[2, 2, 2, 3, 2], 3, 1, 1, 1),
        // Many channels leave one task a few rows, and its source ends inside a row's left
        // padding (this panicked: a slice from column -1).
        (&[1, 128, 29, 29], &[4, 128, 7, 7], 3, 1, 1, 1),
    ];

    /// The direct kernels against im2col (which the other tests check against the definition),
    /// for each instruction set, in f64 (tight) and f32.
    #[test]
    fn direct_matches_im2col() {
        for isa in Isa::available() {
            for (i, &(xs, ws, pad, dil, groups, stride)) in CASES.iter().enumerate() {
                let geo = geometry(xs, ws, pad, dil, groups, stride);
                let x = testutil::filled(xs.iter().product(), 1 + i as u64);
                let w = testutil::filled(ws.iter().product(), 2 + i as u64);
                let y_len: usize = geo.output_shape().iter().product();
                let dy = testutil::filled(y_len, 3 + i as u64);
                let bias = testutil::filled(geo.c_out, 4 + i as u64);
                let (cg, kg) = (geo.c_in_per_group(), geo.c_out_per_group());

                let mut want = vec![0.0; y_len];
                crate::conv::im2col::forward(&x, &w, Some(&bias), &geo, &mut want);
                let kb = block_rows(isa, kg);
                let packed = pack_weights(&w, geo.groups, cg, kg, geo.kernel_volume(), kb, false);
                let mut got = vec![0.0; y_len];
                correlate(isa, &x, geo.n, geo.groups, cg, kg, &Plane::forward(&geo), &packed, kb, Some(&bias), &mut got);
                assert_close(&got, &want, 1e-12, &format!("forward case {i} {isa:?}"));

                if stride == 1 {
                    let mut want = vec![0.0; x.len()];
                    crate::conv::im2col::backward_input(&dy, &w, &geo, &mut want);
                    let kb = block_rows(isa, cg);
                    let packed = pack_weights(&w, geo.groups, kg, cg, geo.kernel_volume(), kb, true);
                    let mut got = vec![0.0; x.len()];
                    correlate(isa, &dy, geo.n, geo.groups, kg, cg, &Plane::transposed(&geo), &packed, kb, None, &mut got);
                    assert_close(&got, &want, 1e-12, &format!("backward input case {i} {isa:?}"));
                }

                let mut want = vec![0.0; w.len()];
                crate::conv::im2col::backward_weight(&x, &dy, &geo, &mut want);
                let blocks: &[(usize, usize)] = match isa {
                    Isa::Avx512 => &WEIGHT_BLOCKS_AVX512,
                    Isa::Avx2 => &WEIGHT_BLOCKS_AVX2,
                };
                for &block in blocks {
                    let mut got = vec![0.0; w.len()];
                    backward_weight_with(isa, block, &x, &dy, &geo, &mut got);
                    assert_close(&got, &want, 1e-12, &format!("backward weight case {i} {isa:?} {block:?}"));
                }

                if isa == Isa::detect().unwrap() {

                    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                    let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
                    let mut got32 = vec![0.0f32; y_len];
                    forward(&x32, &w32, None, &geo, &mut got32);
                    let mut want = vec![0.0; y_len];
                    crate::conv::im2col::forward(&x, &w, None, &geo, &mut want);
                    let got: Vec<f64> = got32.iter().map(|&v| v as f64).collect();
                    assert_close(&got, &want, 1e-5, &format!("forward f32 case {i}"));
                }
            }
        }
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= tol * scale, "{what}: max error {err} (scale {scale})");
    }

    #[test]
    fn blocks_waste_the_fewest_channels() {
        assert_eq!(block_rows(Isa::Avx512, 16), 8);
        assert_eq!(block_rows(Isa::Avx512, 6), 6);
        assert_eq!(block_rows(Isa::Avx512, 3), 4);
        assert_eq!(block_rows(Isa::Avx2, 16), 4);
        assert_eq!(block_rows(Isa::Avx2, 12), 6);
        assert_eq!(weight_block(Isa::Avx512, 6, 25), (3, 5));
        assert_eq!(weight_block(Isa::Avx512, 16, 25), (4, 5));
        assert_eq!(weight_block(Isa::Avx512, 64, 7), (3, 7));
        assert_eq!(weight_block(Isa::Avx2, 6, 25), (2, 5));
    }
}
