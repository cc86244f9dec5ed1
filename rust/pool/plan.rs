//! The row machinery every fast pooling kernel shares.
//!
//! A plane is seen as rows: the flattened `(z, y)` rows of the 3-D internal layout, each `W`
//! long (1-D and 2-D pools have `D = 1`, 1-D also `H = 1`). A window is then a list of in-bounds
//! input rows (`Axis::taps` in z, then in y: PyTorch's scan order) times a list of column taps.
//!
//! Column taps are read from a row split into `stride` phases: phase `j` holds the padded row's
//! columns `j, j + s, j + 2s, ...` (padding filled with -inf for max, 0 for average), so tap `kx`
//! of every output of a row is one contiguous slice, `phase[(kx * d) % s][(kx * d) / s ..]`, and
//! the kernels are plain element-wise loops over slices that the compiler vectorises (with AVX2
//! or SSE4.1 where `simd::level` says so).

use crate::element::{Real, SendPtr};
use crate::params::PoolGeometry;
use crate::parallel;

/// One spatial dimension of a strided pool.
#[derive(Clone, Copy, Debug)]
pub(super) struct Axis {
    pub size: usize,
    pub out: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
    pub d: usize,
}

impl Axis {
    pub fn of(geo: &PoolGeometry, dim: usize) -> Axis {
        Axis {
            size: geo.input[dim],
            out: geo.output[dim],
            k: geo.kernel[dim],
            s: geo.stride[dim],
            p: geo.pad[dim],
            d: geo.dilation[dim],
        }
    }

    /// Span of the dilated kernel.
    pub fn ext(&self) -> usize {
        (self.k - 1) * self.d + 1
    }

    /// Position of tap `j` of output `o` in padded coordinates (input position + `p`).
    #[inline]
    pub fn padded_pos(&self, o: usize, j: usize) -> usize {
        o * self.s + j * self.d
    }

    /// The taps `[lo, hi)` of output `o` that fall inside the input (`lo == hi` when none).
    #[inline]
    pub fn taps(&self, o: usize) -> (usize, usize) {
        let start = o * self.s; // padded coordinates: input position = start + j * d - p
        let lo = if start >= self.p { 0 } else { (self.p - start).div_ceil(self.d) };
        // Last in-bounds tap: start + j * d - p <= size - 1.
        let hi = if start + 1 > self.size + self.p { 0 } else { ((self.size + self.p - 1 - start) / self.d + 1).min(self.k) };
        (lo.min(hi), hi)
    }

    /// Input position of tap `j` of output `o` (the tap must be in bounds).
    #[inline]
    pub fn pos(&self, o: usize, j: usize) -> usize {
        self.padded_pos(o, j) - self.p
    }

    /// The window size average pooling's `count_include_pad` divides by: the window clipped to
    /// `[-p, size + p)` (a `ceil_mode` overhang past the padding does not count).
    #[inline]
    pub fn padded_len(&self, o: usize) -> usize {
        let start = o * self.s; // padded coordinates
        // `size + 2p` passes usize::MAX with a padding of half a huge kernel (then the window
        // ends first): saturating, not wrapping. `2p <= k` fits.
        start.saturating_add(self.k).min(self.size.saturating_add(2 * self.p)) - start
    }

    /// How many distinct input positions the windows' taps can take along this axis at once:
    /// the span of a window, or the whole axis when that is shorter. Positions modulo this are
    /// distinct within a window.
    pub fn rows_mod(&self) -> usize {
        self.ext().min(self.size).max(1)
    }

    /// The outputs whose window span meets the input positions `[lo, hi]`.
    pub fn touching(&self, lo: usize, hi: usize) -> std::ops::Range<usize> {
        // Window of o spans [o*s - p, o*s - p + ext).
        let first = (lo + self.p + 1).saturating_sub(self.ext()).div_ceil(self.s);
        let last = ((hi + self.p) / self.s + 1).min(self.out);
        first.min(last)..last
    }
}

/// The column side of a plan: how a row is split into phases and where each tap reads.
pub(super) struct Columns {
    pub w: usize,
    pub wo: usize,
    pub s: usize,
    pub p: usize,
    /// Width of the padded row that covers every window: `(wo - 1) * s + ext`.
    pub wp: usize,
    /// Length of each phase buffer: `ceil(wp / s)`.
    pub plen: usize,
    /// Per column tap `kx`: (phase, offset) so that its value for output `o` is
    /// `phase[offset + o]`.
    pub taps: Vec<(usize, usize)>,
    /// Per output column: `o * s - p`, the input column of tap 0.
    pub base_col: Vec<i32>,
    /// Per output column: the first in-bounds input column of its window (0 when none).
    pub first_col: Vec<i32>,
    /// The row can be read in place: stride 1, no padding, no overhang.
    pub direct: bool,
    pub axis: Axis,
}

impl Columns {
    pub fn new(axis: Axis) -> Columns {
        let (w, wo, s, p, d) = (axis.size, axis.out, axis.s, axis.p, axis.d);
        let wp = (wo - 1) * s + axis.ext();
        let plen = wp.div_ceil(s);
        let taps = (0..axis.k).map(|kx| ((kx * d) % s, (kx * d) / s)).collect();
        // Column indices fit i32 where they are read: only the max kernels' index plans read
        // them, for planes below i32::MAX (`max::fits`). Elsewhere (average pooling, wider
        // planes) they wrap, unread.
        let base_col = (0..wo).map(|o| ((o * s) as i32).wrapping_sub(p as i32)).collect();
        let first_col = (0..wo)
            .map(|o| {
                let (lo, hi) = axis.taps(o);
                if lo < hi {
                    axis.pos(o, lo) as i32
                } else {
                    0
                }
            })
            .collect();
        Columns { w, wo, s, p, wp, plen, taps, base_col, first_col, direct: s == 1 && p == 0 && wp <= w, axis }
    }

    /// A phase buffer with every padding position set to `fill`.
    pub fn phase_buffer<T: Real>(&self, fill: T) -> Vec<T> {
        vec![fill; self.s * self.plen]
    }

    /// Splits input row `row` (length `w`) into the phases of `buf` (from `phase_buffer`);
    /// padding positions are never written, so they keep their fill.
    #[inline(always)]
    pub fn split<T: Real>(&self, row: &[T], buf: &mut [T]) {
        let (s, p, plen) = (self.s, self.p, self.plen);
        // Input columns i with i + p < wp land in the buffer.
        let n = self.w.min(self.wp - p.min(self.wp));
        let row = &row[..n];
        match s {
            1 => buf[p..p + n].copy_from_slice(row),
            2 => {
                // Input parity q goes to phase (q + p) % 2 at offset (q + p) / 2.
                let (ph0, ph1) = buf.split_at_mut(plen);
                let (even, odd) = if p % 2 == 0 { (ph0, ph1) } else { (ph1, ph0) };
                let (e0, o0) = (p / 2, p.div_ceil(2));
                let pairs = n / 2;
                let even = &mut even[e0..e0 + pairs + n % 2];
                let odd = &mut odd[o0..o0 + pairs];
                for ((pair, e), o) in row.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if n % 2 == 1 {
                    even[pairs] = row[n - 1];
                }
            }
            _ => {
                for q in 0..s.min(n) {
                    let (ph, off) = ((q + p) % s, (q + p) / s);
                    let dst = &mut buf[ph * plen + off..(ph + 1) * plen];
                    for (d, &v) in dst.iter_mut().zip(row[q..].iter().step_by(s)) {
                        *d = v;
                    }
                }
            }
        }
    }

    /// The inverse of `split`: input row `row` from the phases of `buf`. Columns past the
    /// padded width (never in a window) are left as they are.
    #[inline(always)]
    pub fn merge<T: Real>(&self, buf: &[T], row: &mut [T]) {
        let (s, p, plen) = (self.s, self.p, self.plen);
        let n = self.w.min(self.wp - p.min(self.wp));
        let row = &mut row[..n];
        match s {
            1 => row.copy_from_slice(&buf[p..p + n]),
            2 => {
                let (ph0, ph1) = buf.split_at(plen);
                let (even, odd) = if p % 2 == 0 { (ph0, ph1) } else { (ph1, ph0) };
                let (e0, o0) = (p / 2, p.div_ceil(2));
                let pairs = n / 2;
                let even = &even[e0..e0 + pairs + n % 2];
                let odd = &odd[o0..o0 + pairs];
                for ((pair, &e), &o) in row.chunks_exact_mut(2).zip(even).zip(odd) {
                    pair[0] = e;
                    pair[1] = o;
                }
                if n % 2 == 1 {
                    row[n - 1] = even[pairs];
                }
            }
            _ => {
                for q in 0..s.min(n) {
                    let (ph, off) = ((q + p) % s, (q + p) / s);
                    let src = &buf[ph * plen + off..(ph + 1) * plen];
                    for (d, &v) in row[q..].iter_mut().step_by(s).zip(src) {
                        *d = v;
                    }
                }
            }
        }
    }

    /// Where input column `c` lives in a split row.
    #[inline]
    pub fn phase_pos(&self, c: usize) -> usize {
        let c = c + self.p;
        (c % self.s) * self.plen + c / self.s
    }

    /// The range of a split row tap `kx` covers for outputs `0..wo`.
    #[inline]
    pub fn tap_range(&self, kx: usize) -> std::ops::Range<usize> {
        let (ph, off) = self.taps[kx];
        let start = ph * self.plen + off;
        start..start + self.wo
    }

    /// The slice tap `kx` reads for outputs `0..wo`, from a split row (or the row itself when
    /// `direct`).
    #[inline(always)]
    pub fn tap<'a, T>(&self, src: &'a [T], kx: usize) -> &'a [T] {
        let (ph, off) = self.taps[kx];
        &src[ph * self.plen + off..][..self.wo]
    }

    /// The outputs `o` whose tap `kx` is in bounds: `0 <= o * s + kx * d - p < w`.
    #[cfg(test)]
    pub fn in_bounds(&self, kx: usize) -> std::ops::Range<usize> {
        let off = kx * self.axis.d;
        let lo = if off >= self.p { 0 } else { (self.p - off).div_ceil(self.s) };
        let hi = if off >= self.w + self.p { 0 } else { ((self.w + self.p - 1 - off) / self.s + 1).min(self.wo) };
        lo.min(hi)..hi
    }
}

/// The geometry of a strided pool as the row kernels see it (max and average pooling share it):
/// the z and y axes, the column side, and the plane's rows.
pub(super) struct RowPlan {
    pub az: Axis,
    pub ay: Axis,
    pub cols: Columns,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
}

impl RowPlan {
    pub fn new(geo: &PoolGeometry) -> RowPlan {
        RowPlan {
            az: Axis::of(geo, 0),
            ay: Axis::of(geo, 1),
            cols: Columns::new(Axis::of(geo, 2)),
            h: geo.input[1],
            w: geo.input[2],
            ho: geo.output[1],
            wo: geo.output[2],
        }
    }

    /// Output rows per forward task; each output row reads a window of input rows.
    pub fn forward_rows_per_task(&self, planes: usize) -> usize {
        rows_per_task(planes, self.az.out * self.ho, self.w.saturating_mul(self.az.rows_mod() * self.ay.rows_mod()), 1)
    }

    /// Input rows per backward task, a multiple of the y stride where a plane is one slab.
    pub fn backward_rows_per_task(&self, planes: usize) -> usize {
        let align = if self.az.size == 1 { self.ay.s } else { 1 };
        rows_per_task(planes, self.az.size * self.h, self.w, align)
    }
}

/// Caches per-input-row results (a horizontal max or a split row) across the output rows whose
/// windows share input rows. A slot's tag is the row it holds; a miss just recomputes.
pub(super) struct RowCache<T> {
    pub len: usize,
    slots: usize,
    md: usize,
    mh: usize,
    tags: Vec<usize>,
    pub vals: Vec<T>,
    pub idx: Vec<i32>,
}

/// Bytes a task may spend on cached rows; beyond it, rows are recomputed instead.
const CACHE_BYTES: usize = 256 << 10;

impl<T: Real> RowCache<T> {
    /// A cache of at most `CACHE_BYTES`, for windows whose rows are distinct modulo `md` in z and
    /// `mh` in y (`Axis::rows_mod`).
    pub fn new(len: usize, with_idx: bool, md: usize, mh: usize) -> RowCache<T> {
        let per_slot = len * (std::mem::size_of::<T>() + if with_idx { 4 } else { 0 });
        let slots = (CACHE_BYTES / per_slot.max(1)).clamp(1, md.saturating_mul(mh));
        RowCache {
            len,
            slots,
            md,
            mh,
            tags: vec![usize::MAX; slots],
            vals: vec![T::zero(); slots * len],
            idx: if with_idx { vec![0; slots * len] } else { Vec::new() },
        }
    }

    /// The slot for input row `(z, y)` (flat row `flat`) and whether it already holds it. Rows
    /// of one window get distinct slots whenever all of a window fits.
    /// A cache with a slot for every row a window can hold (`md * mh`, at most the plane's
    /// rows), so a whole window is resident at once.
    pub fn whole_windows(len: usize, with_idx: bool, md: usize, mh: usize) -> RowCache<T> {
        let slots = md * mh;
        RowCache {
            len,
            slots,
            md,
            mh,
            tags: vec![usize::MAX; slots],
            vals: vec![T::zero(); slots * len],
            idx: if with_idx { vec![0; slots * len] } else { Vec::new() },
        }
    }

    #[inline]
    pub fn slot(&mut self, z: usize, y: usize, flat: usize) -> (usize, bool) {
        let s = if self.slots == self.md * self.mh {
            (z % self.md) * self.mh + y % self.mh
        } else {
            flat % self.slots
        };
        let hit = self.tags[s] == flat;
        self.tags[s] = flat;
        (s, hit)
    }

    /// Slot `s`'s values and indices.
    #[inline]
    pub fn get(&self, s: usize) -> (&[T], &[i32]) {
        let v = &self.vals[s * self.len..][..self.len];
        let i = if self.idx.is_empty() { &[][..] } else { &self.idx[s * self.len..][..self.len] };
        (v, i)
    }

    #[inline]
    pub fn get_mut(&mut self, s: usize) -> (&mut [T], &mut [i32]) {
        let v = &mut self.vals[s * self.len..][..self.len];
        let i = if self.idx.is_empty() { &mut [][..] } else { &mut self.idx[s * self.len..][..self.len] };
        (v, i)
    }
}

/// Whether the row kernels' buffers stay proportional to the input: a split row (the padded
/// width covering every window, plus a stride) at most a few input rows long. Only kernels,
/// paddings or strides far larger than the input fail this (PyTorch allows a padding of half
/// an arbitrarily large kernel); the generic loops take those.
pub(super) fn rows_fit(geo: &PoolGeometry) -> bool {
    let a = Axis::of(geo, 2);
    let wp = (a.out - 1).checked_mul(a.s).and_then(|v| v.checked_add(a.ext())).and_then(|v| v.checked_add(a.s));
    matches!(wp, Some(wp) if wp <= a.size.saturating_mul(4).saturating_add(4096))
}

/// How many rows one parallel task takes. Enough work per task (`TASK_ELEMS` input elements) to
/// amortise its setup, and at least `MIN_TASKS` tasks per call so a batch of one image still
/// uses every core. Depends only on shapes, so results never depend on the thread count.
pub(super) fn rows_per_task(planes: usize, rows: usize, row_elems: usize, align: usize) -> usize {
    /// About 0.1 ms of streaming per task.
    const TASK_ELEMS: usize = 1 << 16;
    /// Tasks per call, so up to this many threads get work.
    const MIN_TASKS: usize = 64;
    let by_work = (TASK_ELEMS / row_elems.max(1)).max(1); // row_elems may saturate: then 1
    let blocks = MIN_TASKS.div_ceil(planes.max(1));
    let by_count = rows.div_ceil(blocks).max(1);
    let r = by_work.min(by_count).clamp(1, rows.max(1));
    // Round to a multiple of `align` (the stride) so neighbouring tasks share few windows.
    if r >= rows || align <= 1 {
        r
    } else {
        (r.div_ceil(align) * align).min(rows)
    }
}

/// What average pooling divides a window's sum by: the window's size (counting the padding in it
/// or not, PyTorch's `count_include_pad`), or PyTorch's `divisor_override` for every window.
#[derive(Clone, Copy, Debug)]
pub(super) struct Divide {
    pub count_include_pad: bool,
    pub divisor_override: Option<i64>,
}

impl Divide {
    /// The fixed divisor, if `divisor_override` gives one.
    #[inline]
    pub fn fixed<T: Real>(&self) -> Option<T> {
        self.divisor_override.map(|d| T::from_i64(d).expect("an int converts to a float"))
    }
}

/// Average pooling's divisor `zy * x` (`zy` the exact product of the z and y counts) as a float,
/// rounded once from the exact product. The counts of a window clipped to a padding of half a
/// huge kernel can each be near `usize::MAX`, where a saturating `usize` product was wrong by
/// orders of magnitude; the exact product fits `u128` unless all three are past 2^42, and
/// beyond that a float product is within a few ulps.
#[inline]
pub(super) fn divisor<T: Real>(zy: u128, x: usize) -> T {
    match zy.checked_mul(x as u128) {
        // The common case, as `from_usize` always converted it.
        Some(n) if n <= u64::MAX as u128 => T::from_u64(n as u64),
        Some(n) => T::from_u128(n),
        None => T::from_f64(zy as f64 * x as f64),
    }
    .expect("a count converts to a float")
}

/// Rough element operations of visiting the windows of `outputs` outputs, for the parallel
/// helpers' `work`. Saturating: a kernel may be far larger than the input.
pub(super) fn window_work(geo: &PoolGeometry, outputs: usize) -> usize {
    geo.kernel.iter().fold(outputs, |w, &k| w.saturating_mul(k))
}

/// Calls `f(plane, block, dst, idx)` for every `block_len`-element block of every
/// `plane_len`-element plane of `dst` (a plane's last block may be shorter), with the same
/// elements of `idx` (empty without it). Planes, then the blocks of a plane, run in parallel
/// when their `work` (element operations of the whole call) is worth it, else on the calling
/// thread; the blocks depend only on the lengths, so results never depend on the thread count.
pub(super) fn for_each_block<T: Send>(
    dst: &mut [T],
    idx: Option<&mut [i64]>,
    plane_len: usize,
    block_len: usize,
    work: usize,
    f: impl Fn(usize, usize, &mut [T], &mut [i64]) + Sync + Send,
) {
    if let Some(idx) = &idx {
        assert_eq!(idx.len(), dst.len(), "indices have the layout of the values");
    }
    let idx = idx.map(|i| SendPtr(i.as_mut_ptr()));
    let (plane_len, block_len) = (plane_len.max(1), block_len.max(1));
    let plane_work = work / dst.len().div_ceil(plane_len).max(1);
    parallel::for_each_chunk(dst, plane_len, work, |plane, d| {
        parallel::for_each_chunk(d, block_len, plane_work, |b, block| match idx {
            None => f(plane, b, block, &mut []),
            Some(ptr) => {
                // SAFETY: `idx` is as long as `dst` (asserted), and this range is the one `block`
                // covers in `dst`: disjoint between calls, and alive for the whole call.
                let at = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(plane * plane_len + b * block_len), block.len()) };
                f(plane, b, block, at)
            }
        })
    });
}

/// Flat input rows `[a, b)` as ranges of z and y positions that cover them.
pub(super) fn row_span(a: usize, b: usize, h: usize) -> ((usize, usize), (usize, usize)) {
    let (z0, z1) = (a / h, (b - 1) / h);
    let ys = if z0 == z1 { (a % h, (b - 1) % h) } else { (0, h - 1) };
    ((z0, z1), ys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(size: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> Axis {
        let out = crate::params::pool_output_size(size, k, s, p, d, ceil).unwrap();
        Axis { size, out, k, s, p, d }
    }

    #[test]
    fn taps_are_the_in_bounds_ones() {
        for &(size, k, s, p, d, ceil) in
            &[(7, 3, 2, 1, 1, true), (5, 2, 2, 1, 1, true), (9, 3, 1, 1, 3, false), (4, 4, 3, 2, 1, true), (1, 1, 1, 0, 1, false)]
        {
            let a = axis(size, k, s, p, d, ceil);
            for o in 0..a.out {
                let want: Vec<usize> = (0..k).filter(|&j| (o * s + j * d) >= p && o * s + j * d - p < size).collect();
                let (lo, hi) = a.taps(o);
                assert_eq!((lo..hi).collect::<Vec<_>>(), want, "{a:?} o={o}");
            }
        }
    }

    #[test]
    fn touching_covers_every_window_that_meets_a_span() {
        let a = axis(11, 3, 2, 1, 2, true);
        for lo in 0..11 {
            for hi in lo..11 {
                let r = a.touching(lo, hi);
                for o in 0..a.out {
                    let meets = (0..a.k).any(|j| {
                        let q = a.padded_pos(o, j) as isize - a.p as isize;
                        q >= lo as isize && q <= hi as isize
                    });
                    assert!(!meets || r.contains(&o), "{lo}..={hi} o={o} {r:?}");
                }
            }
        }
    }

    #[test]
    fn split_places_columns_in_their_phase() {
        for &(w, k, s, p, d, ceil) in &[
            (9, 3, 2, 1, 1, true),
            (8, 2, 2, 0, 1, false),
            (9, 2, 2, 1, 1, false),
            (10, 4, 3, 2, 1, true),
            (7, 3, 1, 1, 2, false),
            (11, 2, 3, 0, 1, false),
        ] {
            let cols = Columns::new(axis(w, k, s, p, d, ceil));
            let row: Vec<f64> = (0..w).map(|i| i as f64).collect();
            let mut buf = cols.phase_buffer(-1.0);
            cols.split(&row, &mut buf);
            for kx in 0..k {
                let t = cols.tap(&buf, kx);
                let r = cols.in_bounds(kx);
                for (o, &got) in t.iter().enumerate() {
                    let c = (o * s + kx * d) as isize - p as isize;
                    let want = if c >= 0 && (c as usize) < w { c as f64 } else { -1.0 };
                    assert_eq!(got, want, "w={w} k={k} s={s} p={p} kx={kx} o={o}");
                    assert_eq!(r.contains(&o), got >= 0.0);
                }
            }
            let mut back = vec![-2.0; w];
            cols.merge(&buf, &mut back);
            for c in 0..w {
                let covered = c + p < cols.wp;
                assert_eq!(back[c], if covered { c as f64 } else { -2.0 }, "merge w={w} k={k} s={s} p={p} c={c}");
                if covered {
                    assert_eq!(buf[cols.phase_pos(c)], c as f64);
                }
            }
        }
    }

    #[test]
    fn task_rows_depend_on_shape_only() {
        assert_eq!(rows_per_task(2048, 56, 224, 1), 56);
        assert!(rows_per_task(1, 1000, 2000, 2).is_multiple_of(2));
        assert_eq!(rows_per_task(1, 1, 10, 2), 1);
    }
}
