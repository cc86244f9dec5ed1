//! Winograd F(4x4, 3x3): 2-D 3x3 convolutions at stride 1, dilation 1, one group, any zero
//! padding. Each 4x4 block of outputs ("tile") is computed from the 6x6 block of inputs under it
//! as `A^T [ sum over c of (G g G^T) .* (B^T d B) ] A`: the elementwise products at the 36
//! points of the transformed tile, summed over input channels, are 36 independent GEMMs
//! `(K x C) x (C x tiles)`, with 36 multiplies per 16 outputs and channel pair instead of
//! 9 * 16 = 144: a 4x cut in multiply-adds, spent in `T::gemm`.
//!
//! Work is done in blocks of `block` tiles taken in order over (image, tile row, tile column), so
//! a block can span images: per block, the input transform of every channel (`V`, 36 x C x
//! block), 36 GEMMs (`M`, 36 x K x block), the output transform (+ bias) into the tiles' outputs.
//! The buffers are per thread and bounded (`MAX_BLOCK` tiles, `MAX_BLOCK_ELEMS` elements), not
//! proportional to the batch.
//! Edge tiles read zeros outside the input (that is the zero padding, never materialised) and
//! write only the outputs that exist. Blocks are independent tasks whose split depends only on
//! the shapes; each output is computed by one block in a fixed order, so results are bitwise
//! identical for any thread count.
//!
//! The gradient of the input of such a convolution is itself one (of the output gradient with
//! the kernel flipped and its channel axes swapped, padding `2 - pad`), so `backward_input` runs
//! the same code. The gradient of the weight is left to im2col.
//!
//! Accuracy. The transforms multiply by up to 8 (A) and divide by up to 24 (G), so float32 loses
//! more than direct summation. Measured max |error| / max |output| against the float64
//! convolution (im2col in f64) of the same float32 data, inputs and weights uniform in [-0.5, 0.5) (`measure_float32_error` below):
//!
//! | shape                                                 | forward | input gradient |
//! |-------------------------------------------------------|---------|----------------|
//! | res_3x3_64 (N=32, C=K=64, 56x56, pad 1)               | 8.9e-6  | 8.1e-6         |
//! | 200 random: N 1..=3, C, K 1..=40, 4..=30 px, pad 0..=2 | 6.4e-6  | 6.0e-6         |
//! | res_3x3_64 by im2col in float32, for comparison       | 5.0e-7  |                |
//!
//! The worst element uses 5-8 % of the tolerance the tests hold float32 to (1e-4 of the largest
//! output plus 1e-4 of its own value), so F(4x4, 3x3) is kept rather than the more accurate
//! but slower F(2x2, 3x3) (2.25x fewer multiplies instead of 4x). float64 agrees with direct
//! summation to ~1e-15.

use super::depthwise::has_avx2_fma;
use crate::element::{scratch, Real, SendPtr};
use crate::parallel;
use crate::params::ConvGeometry;

/// Outputs per tile side.
const M: usize = 4;
/// Inputs per tile side: M + 3 - 1.
const A: usize = 6;
/// Points of a transformed tile, one GEMM each.
const POINTS: usize = A * A;
/// Tiles transformed together, one per vector lane (8 f32 fill an AVX2 register).
const LANES: usize = 8;
/// Tiles per block: as many as possible up to MAX_BLOCK, since `T::gemm` packs both operands
/// on every call and a wider block amortises the packing of U[p] (K x C) over more tiles
/// (measured on one thread, res_3x3_64: blocks of 32 / 64 / 128 tiles 47 / 41 / 37 ms; at
/// C = K = 256: 69 / 55 / 47 ms), even though the buffers (36 x (C + K) x block) then exceed
/// L2. Bounded below so the GEMMs stay wide enough to run at speed.
const MIN_BLOCK: usize = 16;
const MAX_BLOCK: usize = 128;
/// Blocks to aim for at least, when there are enough tiles: small batches of small images
/// still spread over up to this many threads.
const MIN_BLOCKS: usize = 8;
/// Most elements in one thread's block buffers (16 MiB of f32): caps the block for very wide
/// layers.
const MAX_BLOCK_ELEMS: usize = 1 << 22;

/// Whether `geo` is a convolution this module computes: 3x3, stride 1, dilation 1, one group,
/// 2-D (a 3-D geometry qualifies only when its depth is 1 everywhere).
pub(crate) fn applies(geo: &ConvGeometry) -> bool {
    geo.kernel == [1, 3, 3]
        && geo.stride == [1; 3]
        && geo.dilation == [1; 3]
        && geo.groups == 1
        && geo.input[0] == 1
        && geo.output[0] == 1
        && geo.pad_lo[0] == 0
}

/// One Winograd convolution: `src (n, c_src, src_h, src_w)` -> `dst (n, c_dst, dst_h, dst_w)`,
/// the 3x3 window of output `(y, x)` starting at source `(y + off_y, x + off_x)`.
#[derive(Clone, Copy, Debug)]
struct Plan {
    n: usize,
    c_src: usize,
    c_dst: usize,
    src: [usize; 2],
    dst: [usize; 2],
    off: [isize; 2],
    tiles_h: usize,
    tiles_w: usize,
    block: usize,
}

impl Plan {
    fn new(n: usize, c_src: usize, c_dst: usize, src: [usize; 2], dst: [usize; 2], off: [isize; 2]) -> Plan {
        let (tiles_h, tiles_w) = (dst[0].div_ceil(M), dst[1].div_ceil(M));
        let tiles = n * tiles_h * tiles_w;
        let per_tile = POINTS * (c_src + c_dst);
        let block = (tiles / MIN_BLOCKS).min(MAX_BLOCK_ELEMS / per_tile.max(1)).clamp(MIN_BLOCK, MAX_BLOCK) / LANES * LANES;
        Plan { n, c_src, c_dst, src, dst, off, tiles_h, tiles_w, block }
    }

    fn tiles(&self) -> usize {
        self.n * self.tiles_h * self.tiles_w
    }
}

/// `out (N, K, H', W') = conv(x (N, C, H, W), w (K, C, 3, 3)) + bias`, zero padding `geo.pad_lo`.
pub(crate) fn forward<T: Real>(x: &[T], w: &[T], bias: Option<&[T]>, geo: &ConvGeometry, out: &mut [T]) {
    let (c, k) = (geo.c_in, geo.c_out);
    let plan = Plan::new(
        geo.n,
        c,
        k,
        [geo.input[1], geo.input[2]],
        [geo.output[1], geo.output[2]],
        [-(geo.pad_lo[1] as isize), -(geo.pad_lo[2] as isize)],
    );
    let u = filter_transform(k, c, |kk, cc, ky, kx| w[(kk * c + cc) * 9 + ky * 3 + kx]);
    run(x, &u, bias, &plan, out);
}

/// `dx (N, C, H, W)` from `dy (N, K, H', W')`: the convolution of `dy` with `w'[c][k] =
/// flip(w[k][c])`, padding `2 - pad`: dx[y] = sum_ky w[ky] dy[y + pad - ky] = sum_j w[2 - j]
/// dy[y + j + pad - 2]. Every element of `dx` is written.
pub(crate) fn backward_input<T: Real>(dy: &[T], w: &[T], geo: &ConvGeometry, dx: &mut [T]) {
    let (c, k) = (geo.c_in, geo.c_out);
    let plan = Plan::new(
        geo.n,
        k,
        c,
        [geo.output[1], geo.output[2]],
        [geo.input[1], geo.input[2]],
        [geo.pad_lo[1] as isize - 2, geo.pad_lo[2] as isize - 2],
    );
    let u = filter_transform(c, k, |cc, kk, ky, kx| w[(kk * c + cc) * 9 + (2 - ky) * 3 + (2 - kx)]);
    run(dy, &u, None, &plan, dx);
}

/// `U[p][d][s] = (G g G^T)[p]` for every destination channel `d` and source channel `s`, with
/// `g[ky][kx] = kernel(d, s, ky, kx)`: 36 row-major (c_dst x c_src) matrices. Computed in f64
/// and rounded once, which keeps float32 a little closer to the exact result.
fn filter_transform<T: Real>(c_dst: usize, c_src: usize, kernel: impl Fn(usize, usize, usize, usize) -> T + Sync) -> Vec<T> {
    const G: [[f64; 3]; A] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    let pairs = c_dst * c_src;
    let mut u: Vec<T> = scratch(POINTS * pairs, "winograd transformed weights");
    // Index loops: the matrix products read best in the notation of the formula.
    let u_ptr = SendPtr(u.as_mut_ptr());
    parallel::for_each(c_dst, pairs * POINTS * 8, |d| {
        for s in 0..c_src {
            let g: [[f64; 3]; 3] = std::array::from_fn(|ky| std::array::from_fn(|kx| kernel(d, s, ky, kx).to_f64().unwrap_or(f64::NAN)));
            // G g (6 x 3), then (G g) G^T (6 x 6).
            let gg: [[f64; 3]; A] = std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|t| G[i][t] * g[t][j]).sum()));
            #[allow(clippy::needless_range_loop)]
            for i in 0..A {
                for j in 0..A {
                    let v: f64 = (0..3).map(|t| gg[i][t] * G[j][t]).sum();
                    // SAFETY: task d writes only rows d of the 36 (c_dst x c_src) matrices:
                    // index (i*6 + j) * pairs + d * c_src + s < 36 * pairs, disjoint between tasks.
                    unsafe { *u_ptr.get().add((i * A + j) * pairs + d * c_src + s) = T::from_f64(v).unwrap_or_else(T::nan) };
                }
            }
        }
    });
    u
}

/// Per-thread buffers of one block.
struct Scratch<T> {
    /// Transformed inputs: 36 row-major (c_src x block) matrices, row stride `plan.stride()`.
    v: Vec<T>,
    /// GEMM results: 36 row-major (c_dst x block) matrices, row stride `plan.stride()`.
    m: Vec<T>,
    /// Six zero-padded source rows (input transform) or four output rows (output transform).
    rows: Vec<T>,
    /// Half-transformed tiles of one segment: 36 rows of `plan.cap()`.
    half: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new(plan: &Plan) -> Self {
        let (stride, cap) = (plan.stride(), plan.cap());
        Scratch {
            v: scratch(POINTS * plan.c_src * stride, "winograd input tiles"),
            m: scratch(POINTS * plan.c_dst * stride, "winograd output tiles"),
            rows: scratch(A * (M * cap + M), "winograd rows"),
            half: scratch(POINTS * cap, "winograd half transforms"),
        }
    }
}

impl Plan {
    /// Row stride of the V and M matrices: the block plus slack, as a segment's transforms run
    /// over whole multiples of LANES tiles (the extra columns are overwritten by the next
    /// segment, or never read).
    fn stride(&self) -> usize {
        self.block + LANES
    }

    /// Most tiles in one segment (one tile row), rounded up to LANES.
    fn cap(&self) -> usize {
        self.tiles_w.min(self.block).div_ceil(LANES) * LANES
    }

    /// The runs of tiles `t0 .. t0 + count` that lie in one tile row, in order.
    #[inline(always)]
    fn segments(&self, t0: usize, count: usize) -> Segments {
        Segments { tiles_h: self.tiles_h, tiles_w: self.tiles_w, t0, t: t0, end: t0 + count }
    }
}

/// One run of tiles in one tile row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    img: usize,
    ty: usize,
    tx: usize,
    /// Tiles in the run.
    n: usize,
    /// Column of its first tile in the block's matrices.
    col: usize,
}

/// Iterator over `Plan::segments` (an iterator rather than a callback, so that the loop body
/// is compiled inside the AVX2 transform that runs it).
struct Segments {
    tiles_h: usize,
    tiles_w: usize,
    t0: usize,
    t: usize,
    end: usize,
}

impl Iterator for Segments {
    type Item = Segment;

    #[inline(always)]
    fn next(&mut self) -> Option<Segment> {
        if self.t >= self.end {
            return None;
        }
        let per_image = self.tiles_h * self.tiles_w;
        let (img, r) = (self.t / per_image, self.t % per_image);
        let (ty, tx) = (r / self.tiles_w, r % self.tiles_w);
        let n = (self.tiles_w - tx).min(self.end - self.t);
        let seg = Segment { img, ty, tx, n, col: self.t - self.t0 };
        self.t += n;
        Some(seg)
    }
}

fn run<T: Real>(src: &[T], u: &[T], bias: Option<&[T]>, plan: &Plan, dst: &mut [T]) {
    run_with(has_avx2_fma(), src, u, bias, plan, dst)
}

/// `run` with the AVX2 copies of the transforms on (`simd`, only where the CPU has them) or off.
fn run_with<T: Real>(simd: bool, src: &[T], u: &[T], bias: Option<&[T]>, plan: &Plan, dst: &mut [T]) {
    let tiles = plan.tiles();
    if tiles == 0 || dst.is_empty() {
        return;
    }
    let (bt, stride) = (plan.block, plan.stride());
    let blocks = tiles.div_ceil(bt);
    let dst = SendPtr(dst.as_mut_ptr());
    let work = tiles * POINTS * plan.c_src * plan.c_dst;
    parallel::for_each_init(
        blocks,
        work,
        || Scratch::new(plan),
        |s: &mut Scratch<T>, b| {
            let t0 = b * bt;
            let count = bt.min(tiles - t0);
            input_transform(simd, src, plan, t0, count, s);
            for p in 0..POINTS {
                let a = &u[p * plan.c_dst * plan.c_src..][..plan.c_dst * plan.c_src];
                let vb = &s.v[p * plan.c_src * stride..][..plan.c_src * stride];
                let mb = &mut s.m[p * plan.c_dst * stride..][..plan.c_dst * stride];
                // SAFETY: A = U[p] (c_dst x c_src, row-major), B = V[p] (c_src x count, row
                // stride `stride` >= count), C = M[p] (c_dst x count, same stride): all inside
                // their buffers, and C is a separate buffer from A and B.
                unsafe {
                    T::gemm(
                        plan.c_dst, plan.c_src, count, T::one(),
                        a.as_ptr(), plan.c_src as isize, 1,
                        vb.as_ptr(), stride as isize, 1,
                        T::zero(), mb.as_mut_ptr(), stride as isize, 1,
                    );
                }
            }
            output_transform(simd, bias, plan, t0, count, s, dst);
        },
    );
}

// ---- transforms: separable, so each is done along x then y (input) or y then x (output) over
// a whole segment of tiles at once, as plain loops over the tiles that LLVM vectorises; run as
// their AVX2 + FMA copies when the CPU has them -------------------------------------------------

#[inline(always)]
fn lit<T: Real>(v: f64) -> T {
    T::from_f64(v).unwrap_or_else(T::nan)
}

/// `B^T d` of six values.
#[inline(always)]
fn bt6<T: Real>(d: [T; A]) -> [T; A] {
    let (two, four, five) = (lit::<T>(2.0), lit::<T>(4.0), lit::<T>(5.0));
    let [d0, d1, d2, d3, d4, d5] = d;
    let (t1, t2) = (d4 - four * d2, d3 - four * d1);
    let (t3, t4) = (d4 - d2, two * (d3 - d1));
    [four * d0 - five * d2 + d4, t1 + t2, t1 - t2, t3 + t4, t3 - t4, four * d1 - five * d3 + d5]
}

/// `A^T m` of six values.
#[inline(always)]
fn at6<T: Real>(m: [T; A]) -> [T; M] {
    let (two, four, eight) = (lit::<T>(2.0), lit::<T>(4.0), lit::<T>(8.0));
    let (a, b) = (m[1] + m[2], m[1] - m[2]);
    let (c, d) = (m[3] + m[4], m[3] - m[4]);
    [m[0] + a + c, b + two * d, a + four * c, b + eight * d + m[5]]
}

/// Six rows `at, at + step, ...` of `buf`, `len` long, mutable at once.
#[inline(always)]
fn rows6_mut<T>(buf: &mut [T], at: usize, step: usize, len: usize) -> [&mut [T]; A] {
    let (r0, rest) = buf[at..].split_at_mut(step);
    let (r1, rest) = rest.split_at_mut(step);
    let (r2, rest) = rest.split_at_mut(step);
    let (r3, rest) = rest.split_at_mut(step);
    let (r4, rest) = rest.split_at_mut(step);
    [&mut r0[..len], &mut r1[..len], &mut r2[..len], &mut r3[..len], &mut r4[..len], &mut rest[..len]]
}

/// Six rows `at, at + step, ...` of `buf`, `len` long.
#[inline(always)]
fn rows6<T>(buf: &[T], at: usize, step: usize, len: usize) -> [&[T]; A] {
    [
        &buf[at..][..len],
        &buf[at + step..][..len],
        &buf[at + 2 * step..][..len],
        &buf[at + 3 * step..][..len],
        &buf[at + 4 * step..][..len],
        &buf[at + 5 * step..][..len],
    ]
}

type Lanes<T> = [T; LANES];

/// `B^T` across six lane vectors.
#[inline(always)]
fn bt6_lanes<T: Real>(d: &[Lanes<T>; A]) -> [Lanes<T>; A] {
    let mut r = [[T::zero(); LANES]; A];
    for l in 0..LANES {
        let v = bt6([d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]]);
        for (ri, vi) in r.iter_mut().zip(v) {
            ri[l] = vi;
        }
    }
    r
}

/// `A^T` across six lane vectors.
#[inline(always)]
fn at6_lanes<T: Real>(m: &[Lanes<T>; A]) -> [Lanes<T>; M] {
    let mut r = [[T::zero(); LANES]; M];
    for l in 0..LANES {
        let v = at6([m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]]);
        for (ri, vi) in r.iter_mut().zip(v) {
            ri[l] = vi;
        }
    }
    r
}

/// `LANES` consecutive elements of `s` from `at`, as an array (one vector load).
#[inline(always)]
fn load<T: Real>(s: &[T], at: usize) -> Lanes<T> {
    s[at..at + LANES].try_into().expect("LANES long")
}

/// `load` from each of six rows (no closures here: they would not inherit the AVX2 features).
#[inline(always)]
fn load6<T: Real>(src: &[&[T]; A], at: usize) -> [Lanes<T>; A] {
    [load(src[0], at), load(src[1], at), load(src[2], at), load(src[3], at), load(src[4], at), load(src[5], at)]
}

// The loops below go LANES tiles at a time through fixed-size arrays: all loads, then the
// arithmetic, then all stores, which LLVM turns into vector code without the run-time overlap
// checks that a plain loop over twelve slices would need (and that it gives up on).

/// `dst[j][t] = (B^T d)[j]` with `d = src[4t .. 4t + 6]`: the x-direction input transform of
/// `n` tiles (a multiple of LANES) along one row. `src` holds `4n + 4` elements.
#[inline(always)]
fn bt_along_row<T: Real>(src: &[T], dst: [&mut [T]; A], n: usize) {
    let mut dst = dst;
    for t in (0..n).step_by(LANES) {
        let s: &[T; M * LANES + M] = src[M * t..M * t + M * LANES + M].try_into().expect("long enough");
        let mut d = [[T::zero(); LANES]; A];
        for (k, dk) in d.iter_mut().enumerate() {
            for (l, v) in dk.iter_mut().enumerate() {
                *v = s[M * l + k];
            }
        }
        let r = bt6_lanes(&d);
        for (o, ri) in dst.iter_mut().zip(&r) {
            o[t..t + LANES].copy_from_slice(ri);
        }
    }
}

/// `dst[i][t] = (B^T (src[0][t], ..., src[5][t]))[i]`: the transform across six rows.
#[inline(always)]
fn bt_across_rows<T: Real>(src: [&[T]; A], dst: [&mut [T]; A], n: usize) {
    let mut dst = dst;
    for t in (0..n).step_by(LANES) {
        let r = bt6_lanes(&load6(&src, t));
        for (o, ri) in dst.iter_mut().zip(&r) {
            o[t..t + LANES].copy_from_slice(ri);
        }
    }
}

/// `dst[i][t] = (A^T (src[0][t], ..., src[5][t]))[i]` for i < 4: the output transform across
/// six rows.
#[inline(always)]
fn at_across_rows<T: Real>(src: [&[T]; A], dst: [&mut [T]; A], n: usize) {
    let mut dst = dst;
    for t in (0..n).step_by(LANES) {
        let r = at6_lanes(&load6(&src, t));
        for (o, ri) in dst.iter_mut().zip(&r) {
            o[t..t + LANES].copy_from_slice(ri);
        }
    }
}

/// `dst[4t + q] = (A^T (src[0][t], ..., src[5][t]))[q] + bias`: one output row of `n` tiles.
#[inline(always)]
fn at_along_row<T: Real>(src: [&[T]; A], dst: &mut [T], n: usize, bias: T) {
    for t in (0..n).step_by(LANES) {
        let r = at6_lanes(&load6(&src, t));
        let o: &mut [T; M * LANES] = (&mut dst[M * t..M * t + M * LANES]).try_into().expect("long enough");
        for l in 0..LANES {
            for q in 0..M {
                o[M * l + q] = r[q][l] + bias;
            }
        }
    }
}

/// `V[p][c][col ..]` = `B^T d B` of the 6x6 input window of each of the block's tiles (zero
/// outside the source), for every source channel.
fn input_transform<T: Real>(simd: bool, src: &[T], plan: &Plan, t0: usize, count: usize, s: &mut Scratch<T>) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when `has_avx2_fma()` found AVX2 and FMA on this CPU.
        return unsafe { input_transform_avx2(src, plan, t0, count, s) };
    }
    let _ = simd;
    input_transform_impl(src, plan, t0, count, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_transform_avx2<T: Real>(src: &[T], plan: &Plan, t0: usize, count: usize, s: &mut Scratch<T>) {
    input_transform_impl(src, plan, t0, count, s)
}

#[inline(always)]
fn input_transform_impl<T: Real>(src: &[T], plan: &Plan, t0: usize, count: usize, s: &mut Scratch<T>) {
    let [h, w] = plan.src;
    let (stride, cap) = (plan.stride(), plan.cap());
    let row_len = M * cap + M;
    let Scratch { v, rows, half, .. } = s;
    for c in 0..plan.c_src {
        let ch = &src[c * h * w..];
        for Segment { img, ty, tx, n, col } in plan.segments(t0, count) {
            let np = n.div_ceil(LANES) * LANES;
            let ch = &ch[img * plan.c_src * h * w..][..h * w];
            // The six source rows under the segment, zero outside the source.
            let y0 = (ty * M) as isize + plan.off[0];
            let x0 = (tx * M) as isize + plan.off[1];
            let span = M * np + M;
            for (i, row) in rows.chunks_exact_mut(row_len).enumerate() {
                let row = &mut row[..span];
                let y = y0 + i as isize;
                if y < 0 || y >= h as isize {
                    row.fill(T::zero());
                    continue;
                }
                // Columns x0 .. x0 + span of the source row: [lo, hi) of them are inside it.
                let lo = (-x0).clamp(0, span as isize) as usize;
                let hi = (w as isize - x0).clamp(lo as isize, span as isize) as usize;
                let from = ((y as usize * w) as isize + x0 + lo as isize) as usize;
                row[..lo].fill(T::zero());
                for (d, &v) in row[lo..hi].iter_mut().zip(&ch[from..from + (hi - lo)]) {
                    *d = v;
                }
                row[hi..].fill(T::zero());
            }
            // Along x: half[i][j][t] = (B^T applied to row i's six values under tile t)[j].
            for (i, row) in rows.chunks_exact(row_len).enumerate() {
                bt_along_row(row, rows6_mut(half, i * A * cap, cap, np), np);
            }
            // Along y: V[i * 6 + j][c][col + t] = (B^T applied to half[0..6][j][t])[i].
            for j in 0..A {
                let dst = rows6_mut(v, (j * plan.c_src + c) * stride + col, A * plan.c_src * stride, np);
                bt_across_rows(rows6(half, j * cap, A * cap, np), dst, np);
            }
        }
    }
}

/// The outputs of the block's tiles: `A^T M A + bias` per destination channel, clipped to the
/// destination. Writes only those outputs, through `dst`.
fn output_transform<T: Real>(simd: bool, bias: Option<&[T]>, plan: &Plan, t0: usize, count: usize, s: &mut Scratch<T>, dst: SendPtr<T>) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when `has_avx2_fma()` found AVX2 and FMA on this CPU.
        return unsafe { output_transform_avx2(bias, plan, t0, count, s, dst) };
    }
    let _ = simd;
    output_transform_impl(bias, plan, t0, count, s, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform_avx2<T: Real>(bias: Option<&[T]>, plan: &Plan, t0: usize, count: usize, s: &mut Scratch<T>, dst: SendPtr<T>) {
    output_transform_impl(bias, plan, t0, count, s, dst)
}

#[inline(always)]
fn output_transform_impl<T: Real>(bias: Option<&[T]>, plan: &Plan, t0: usize, count: usize, s: &mut Scratch<T>, dst: SendPtr<T>) {
    let [h, w] = plan.dst;
    let (stride, cap) = (plan.stride(), plan.cap());
    let Scratch { m, rows, half, .. } = s;
    for k in 0..plan.c_dst {
        let b = bias.map_or(T::zero(), |b| b[k]);
        for Segment { img, ty, tx, n, col } in plan.segments(t0, count) {
            let np = n.div_ceil(LANES) * LANES;
            // Along y: half[i][j][t] = (A^T applied to M[0..6][j][k][col + t])[i], i < 4.
            for j in 0..A {
                let src = rows6(m, (j * plan.c_dst + k) * stride + col, A * plan.c_dst * stride, np);
                at_across_rows(src, rows6_mut(half, j * cap, A * cap, np), np);
            }
            // Along x: output row i of the segment, tile t's four columns.
            let (y0, x0) = (ty * M, tx * M);
            for i in 0..M.min(h.saturating_sub(y0)) {
                let row = &mut rows[..M * np];
                at_along_row(rows6(half, i * A * cap, cap, np), row, np, b);
                let len = (M * n).min(w - x0);
                let at = (img * plan.c_dst + k) * h * w + (y0 + i) * w + x0;
                // SAFETY: the block's tiles own their outputs: this row piece (outputs of tiles
                // tx .. tx + n, row y0 + i, channel k, image img, clipped to the width) is
                // written by this task only, and lies inside `dst` (N x c_dst x h x w).
                let out = unsafe { std::slice::from_raw_parts_mut(dst.get().add(at), len) };
                for (o, &r) in out.iter_mut().zip(&row[..len]) {
                    *o = r;
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


    fn max_err<A: Copy + Into<f64>>(got: &[A], want: &[f64]) -> f64 {
        got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| m.max((a.into() - b).abs()))
    }

    fn geometry(n: usize, c: usize, k: usize, h: usize, w: usize, padding: Padding) -> ConvGeometry {
        let p = ConvParams { stride: vec![1; 2], padding, dilation: vec![1; 2], groups: 1, padding_mode: PaddingMode::Zeros };
        p.geometry(&[n, c, h, w], &[k, c, 3, 3]).unwrap()
    }

    /// Winograd against im2col in f64 (to 1e-10 relative) and f32 (against the f64 result, to
    /// the tests' 1e-4), forward with bias and input gradient. Returns the f32 relative errors.
    fn check(geo: &ConvGeometry) -> (f64, f64) {
        assert!(applies(geo));
        let x = filled(geo.input_shape().iter().product(), 1);
        let w = filled(geo.weight_shape().iter().product(), 2);
        let b = filled(geo.c_out, 3);
        let out_len: usize = geo.output_shape().iter().product();
        let dy = filled(out_len, 4);
        let mut want_y = vec![0.0; out_len];
        let mut want_dx = vec![0.0; x.len()];
        im2col::forward(&x, &w, Some(&b), geo, &mut want_y);
        im2col::backward_input(&dy, &w, geo, &mut want_dx);
        let mut y = vec![f64::NAN; out_len];
        let mut dx = vec![f64::NAN; x.len()];
        forward(&x, &w, Some(&b), geo, &mut y);
        backward_input(&dy, &w, geo, &mut dx);
        let (ey, edx) = (max_err(&y, &want_y), max_err(&dx, &want_dx));
        assert!(ey <= 1e-10 * (1.0 + max_abs(&want_y)), "f64 forward {geo:?}: {ey}");
        assert!(edx <= 1e-10 * (1.0 + max_abs(&want_dx)), "f64 grad input {geo:?}: {edx}");
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let mut y32 = vec![f32::NAN; out_len];
        let mut dx32 = vec![f32::NAN; x.len()];
        forward(&f(&x), &f(&w), Some(&f(&b)), geo, &mut y32);
        backward_input(&f(&dy), &f(&w), geo, &mut dx32);
        // The reference is the f64 result of the f32-rounded data, as the tests compare.
        let (x, w, b, dy) = (f(&x), f(&w), f(&b), f(&dy));
        let g = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let mut ref_y = vec![0.0; out_len];
        let mut ref_dx = vec![0.0; x.len()];
        im2col::forward(&g(&x), &g(&w), Some(&g(&b)), geo, &mut ref_y);
        im2col::backward_input(&g(&dy), &g(&w), geo, &mut ref_dx);
        let rel_y = max_err(&y32, &ref_y) / max_abs(&ref_y).max(f64::MIN_POSITIVE);
        let rel_dx = max_err(&dx32, &ref_dx) / max_abs(&ref_dx).max(f64::MIN_POSITIVE);
        for (got, want, name) in [(&y32, &ref_y, "forward"), (&dx32, &ref_dx, "grad input")] {
            let mag = max_abs(want).max(1.0);
            for (&a, &r) in got.iter().zip(want.iter()) {
                assert!((a as f64 - r).abs() <= 1e-4 * mag + 1e-4 * r.abs(), "f32 {name} {geo:?}: {a} vs {r}");
            }
        }
        (rel_y, rel_dx)
    }

    #[test]
    fn matches_im2col_over_many_shapes() {
        let mut worst: f64 = 0.0;
        for &(h, w) in &[(3, 3), (4, 4), (5, 7), (8, 8), (9, 13), (16, 11), (23, 30)] {
            for p in 0..=2 {
                for &(n, c, k) in &[(1, 1, 1), (2, 3, 5), (1, 20, 7), (3, 16, 16), (1, 5, 20)] {
                    let geo = geometry(n, c, k, h, w, Padding::Explicit(vec![p; 2]));
                    let (ey, edx) = check(&geo);
                    worst = worst.max(ey).max(edx);
                }
            }
        }
        // Asymmetric 'same' padding (none here, 3x3 is odd, but padding > 1 on small images) and
        // a block boundary inside an image (N * tiles > block).
        check(&geometry(2, 4, 3, 10, 9, Padding::Same));
        check(&geometry(3, 2, 2, 41, 37, Padding::Explicit(vec![1; 2])));
        // Padding wider than the kernel (the input gradient's offset turns positive), and rows
        // of more tiles than a block holds.
        check(&geometry(1, 3, 4, 6, 5, Padding::Explicit(vec![3; 2])));
        check(&geometry(2, 2, 3, 4, 9, Padding::Explicit(vec![4; 2])));
        check(&geometry(1, 16, 16, 5, 700, Padding::Explicit(vec![1; 2])));
        // Measured at most ~7e-6 (see the module doc); 2e-5 leaves room for other GEMM kernels.
        assert!(worst < 2e-5, "float32 relative error {worst}");
    }

    #[test]
    fn thread_count_does_not_change_results() {
        let geo = geometry(3, 16, 24, 30, 29, Padding::Explicit(vec![1; 2]));
        let x: Vec<f32> = filled(geo.input_shape().iter().product(), 5).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = filled(geo.weight_shape().iter().product(), 6).iter().map(|&v| v as f32).collect();
        let out_len: usize = geo.output_shape().iter().product();
        let run = |threads: usize| {
            crate::parallel::set_num_threads(threads).unwrap();
            let mut y = vec![0.0f32; out_len];
            let mut dx = vec![0.0f32; x.len()];
            forward(&x, &w, None, &geo, &mut y);
            backward_input(&y, &w, &geo, &mut dx);
            (y, dx)
        };
        let before = crate::parallel::get_num_threads();
        let (one, three) = (run(1), run(3));
        crate::parallel::set_num_threads(before).unwrap();
        assert!(one == three, "results differ between 1 and 3 threads");
    }

    #[test]
    fn portable_and_simd_transforms_agree_bitwise() {
        if !has_avx2_fma() {
            return;
        }
        let geo = geometry(2, 3, 5, 13, 21, Padding::Explicit(vec![1; 2]));
        let plan = Plan::new(2, 3, 5, [13, 21], [13, 21], [-1, -1]);
        let x: Vec<f32> = filled(geo.input_shape().iter().product(), 7).iter().map(|&v| v as f32).collect();
        let w: Vec<f32> = filled(geo.weight_shape().iter().product(), 8).iter().map(|&v| v as f32).collect();
        let u = filter_transform(5, 3, |k, c, ky, kx| w[(k * 3 + c) * 9 + ky * 3 + kx]);
        let mut a = vec![0.0f32; geo.output_shape().iter().product()];
        let mut b = a.clone();
        let bias = [0.5, -0.25, 1.0, 0.0, 2.0];
        run_with(false, &x, &u, Some(&bias), &plan, &mut a);
        run_with(true, &x, &u, Some(&bias), &plan, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn segments_cover_the_block_in_order() {
        let plan = Plan::new(3, 16, 16, [10, 10], [10, 10], [-1, -1]);
        let seen: Vec<_> = plan.segments(5, 20).map(|s| (s.img, s.ty, s.tx, s.n, s.col)).collect();
        // 3 x 3 tiles per image: tile 5 is image 0, row 1, column 2.
        assert_eq!(seen, [(0, 1, 2, 1, 0), (0, 2, 0, 3, 1), (1, 0, 0, 3, 4), (1, 1, 0, 3, 7), (1, 2, 0, 3, 10), (2, 0, 0, 3, 13), (2, 1, 0, 3, 16), (2, 2, 0, 1, 19)]);
    }

    /// The float32 error of the module doc's table (slow: N=32 suite shape in f64). Run with
    /// `cargo test --release measure_float32_error -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_float32_error() {
        fn one(n: usize, c: usize, k: usize, h: usize, w: usize, p: usize) -> [f64; 4] {
            let geo = geometry(n, c, k, h, w, Padding::Explicit(vec![p; 2]));
            let f = |v: Vec<f64>| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (x, wt) = (f(filled(n * c * h * w, 1)), f(filled(k * c * 9, 2)));
            let out_len: usize = geo.output_shape().iter().product();
            let dy = f(filled(out_len, 3));
            let d = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let (mut y64, mut dx64) = (vec![0.0; out_len], vec![0.0; x.len()]);
            im2col::forward(&d(&x), &d(&wt), None, &geo, &mut y64);
            im2col::backward_input(&d(&dy), &d(&wt), &geo, &mut dx64);
            let (mut y, mut dx) = (vec![0.0f32; out_len], vec![0.0f32; x.len()]);
            forward(&x, &wt, None, &geo, &mut y);
            backward_input(&dy, &wt, &geo, &mut dx);
            // (max error / max |ref|, worst error / the tests' tolerance) for each.
            let stats = |got: &[f32], want: &[f64]| {
                let m = max_abs(want);
                let tol = got.iter().zip(want).fold(0.0f64, |a, (&g, &r)| a.max((g as f64 - r).abs() / (1e-4 * (m.max(1.0) + r.abs()))));
                (max_err(got, want) / m, tol)
            };
            let ((ey, ty), (edx, tdx)) = (stats(&y, &y64), stats(&dx, &dx64));
            [ey, edx, ty, tdx]
        }
        let r = one(32, 64, 64, 56, 56, 1);
        {
            // im2col in float32 on the same data, for comparison.
            let geo = geometry(32, 64, 64, 56, 56, Padding::Explicit(vec![1; 2]));
            let f = |v: Vec<f64>| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (x, wt) = (f(filled(32 * 64 * 56 * 56, 1)), f(filled(64 * 64 * 9, 2)));
            let d = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let (mut y64, mut y) = (vec![0.0; x.len()], vec![0.0f32; x.len()]);
            im2col::forward(&d(&x), &d(&wt), None, &geo, &mut y64);
            im2col::forward(&x, &wt, None, &geo, &mut y);
            eprintln!("res_3x3_64 by im2col: forward {:.1e}", max_err(&y, &y64) / max_abs(&y64));
        }
        eprintln!("res_3x3_64: forward {:.1e}, input gradient {:.1e}; worst / tolerance {:.3}, {:.3}", r[0], r[1], r[2], r[3]);
        assert!(r[2] < 0.5 && r[3] < 0.5);
        let mut worst = [0.0f64; 4];
        let mut seed = 12345u64;
        let mut rnd = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        for _ in 0..200 {
            let (n, c, k, h, w, p) = (1 + rnd(3), 1 + rnd(40), 1 + rnd(40), 4 + rnd(27), 4 + rnd(27), rnd(3));
            for (wi, ri) in worst.iter_mut().zip(one(n, c, k, h, w, p)) {
                *wi = wi.max(ri);
            }
        }
        eprintln!("random shapes: forward {:.1e}, input gradient {:.1e}; worst / tolerance {:.3}, {:.3}", worst[0], worst[1], worst[2], worst[3]);
        assert!(worst[2] < 0.5 && worst[3] < 0.5);
    }
}
