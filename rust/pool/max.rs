//! Max pooling on whole rows: forward (values, or values and indices) and backward.
//!
//! Each input row is reduced horizontally once (its phases' taps folded into one row of
//! per-window maxima, and their columns), cached while the output rows that share it need it,
//! and the output row is the vertical fold of its window's row maxima. Folding rows of a window
//! in order, each already folded in order, is exactly the scan order of the definition (z, y,
//! x): the NaN-propagating select is associative over contiguous runs, so values, NaN payloads,
//! signed zeros and argmax ties all come out as PyTorch's loops give them.
//!
//! Positions are tracked as i32 flat positions in the plane; the caller sends planes of
//! `i32::MAX` elements or more to the generic loops.

use super::plan::{for_each_block, row_span, rows_fit, window_work, Columns, RowCache, RowPlan};
use super::simd::{level, multiversion};
use crate::element::Real;
use crate::error::{shape_str, Error, Result};
use crate::params::PoolGeometry;
use std::sync::atomic::{AtomicBool, Ordering};

/// The geometry of a max pool as the row kernels see it.
pub(super) struct MaxPlan {
    rows: RowPlan,
    /// Some output column's window has no in-bounds column (possible with dilation).
    empty_col: bool,
}

impl MaxPlan {
    pub fn new(geo: &PoolGeometry) -> MaxPlan {
        let rows = RowPlan::new(geo);
        let ax = rows.cols.axis;
        let empty_col = (0..ax.out).any(|o| {
            let (lo, hi) = ax.taps(o);
            lo == hi
        });
        MaxPlan { rows, empty_col }
    }
}

/// Whether the row kernels take this pool with positions: their buffers fit (`rows_fit`) and
/// their i32 positions reach every element of a plane (a padded row's columns run from `-p` to
/// at most `4 * w + 4096`, `rows_fit`'s bound).
pub(super) fn fits(geo: &PoolGeometry) -> bool {
    rows_fit(geo) && geo.input_len().saturating_add(geo.input[2].saturating_mul(8)).saturating_add(8192) < i32::MAX as usize
}

/// Whether `v` replaces `best` in a scan: greater, or NaN (PyTorch lets NaN win; a later NaN
/// wins over an earlier one, and the first of equal maxima stays).
#[inline(always)]
fn takes<T: Real>(best: T, v: T) -> bool {
    (v > best) | v.is_nan()
}

/// Whether `forward_pairs` serves `geo`: 2x2 windows at stride 2, no padding or dilation.
fn is_pair_pool(geo: &PoolGeometry) -> bool {
    geo.kernel == [1, 2, 2]
        && geo.stride == [1, 2, 2]
        && geo.pad == [0; 3]
        && geo.dilation == [1; 3]
        && geo.input[0] == 1
        && geo.output[1] * 2 <= geo.input[1]
        && geo.output[2] * 2 <= geo.input[2]
}

/// 2x2 stride-2 max pooling (the most common pool), one output row from two input rows with no
/// row plan: measured faster than the general path at every width (LeNet's 28 columns: 12x
/// with indices; the suite's 112: 1.7x values only, 1.4x with indices). Tie and NaN rules are
/// `takes`'s, so values and indices are bitwise those of the general path.
fn forward_pairs<T: Real>(geo: &PoolGeometry, x: &[T], out: &mut [T], idx: Option<&mut [i64]>) {
    let [_, ih, iw] = geo.input;
    let [_, oh, ow] = geo.output;
    let (in_len, out_len) = (ih * iw, oh * ow);
    let with_idx = idx.is_some();
    let work = out.len() * 4;
    let level = level();
    for_each_block(out, idx, out_len, out_len, work, |plane, _, o, ids| {
        let xp = &x[plane * in_len..][..in_len];
        for oy in 0..oh {
            let (r0, r1) = (&xp[2 * oy * iw..][..iw], &xp[(2 * oy + 1) * iw..][..iw]);
            let orow = &mut o[oy * ow..][..ow];
            if !with_idx {
                pair_row_values(level, r0, r1, orow);
            } else {
                let irow = &mut ids[oy * ow..][..ow];
                pair_row(level, r0, r1, orow, irow, (2 * oy * iw) as i64, iw as i64);
            }
        }
    });
}

/// One output row of 2x2 pooling with indices, from input rows `r0` and `r1` (row `r1` starts
/// `iw` after `r0`, which starts at flat position `base`). Each row's pair first, then the two
/// rows: the scan-order fold regrouped, which picks the same winner because `takes` is
/// associative here (the first of equal maxima, the last NaN). Written as selects over
/// bounds-check-free pairs so it vectorises; the plain scan's branches mispredict on real data.
#[inline(always)]
fn pair_row_body<T: Real>(r0: &[T], r1: &[T], out: &mut [T], idx: &mut [i64], base: i64, iw: i64) {
    let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
    for (c, (((a, b), v), at)) in pairs.zip(out.iter_mut()).zip(idx.iter_mut()).enumerate() {
        let (t0, t1) = (takes(a[0], a[1]), takes(b[0], b[1]));
        let m0 = if t0 { a[1] } else { a[0] };
        let m1 = if t1 { b[1] } else { b[0] };
        let t = takes(m0, m1);
        *v = if t { m1 } else { m0 };
        let col = base + 2 * c as i64;
        *at = col + if t { iw + t1 as i64 } else { t0 as i64 };
    }
}

/// `pair_row_body` without the indices.
#[inline(always)]
fn pair_row_values_body<T: Real>(r0: &[T], r1: &[T], out: &mut [T]) {
    for ((a, b), v) in r0.chunks_exact(2).zip(r1.chunks_exact(2)).zip(out.iter_mut()) {
        let m0 = if takes(a[0], a[1]) { a[1] } else { a[0] };
        let m1 = if takes(b[0], b[1]) { b[1] } else { b[0] };
        *v = if takes(m0, m1) { m1 } else { m0 };
    }
}

/// `pair_grad_row_body` runs its first `vector_windows(n)` windows in a loop the compiler
/// vectorises, and the rest as single stores: the compiler's own remainder loop branched on
/// each of the four selects (10-15 ns a window on random data), and LeNet-5's rows (14 and 5
/// windows) are mostly remainder.
fn vector_windows(n: usize) -> usize {
    n - n % 8
}

/// The gradient of input rows `r0` and `r1` (`d0`, `d1`, zero on entry) for one output row of
/// 2x2 pooling: each window's gradient at its maximum, picked as `pair_row_body` picks it, and
/// zero at the window's other three elements. The windows do not overlap, so each element receives at most
/// one gradient: written, not added, as `+0.0 + g` (what adding it to a zeroed gradient gives,
/// `-0.0` included).
#[inline(always)]
fn pair_grad_row_body<T: Real>(r0: &[T], r1: &[T], g: &[T], d0: &mut [T], d1: &mut [T]) {
    let full = vector_windows(g.len());
    let (w, z) = (2 * full, T::zero());
    let rows = r0[..w].chunks_exact(2).zip(r1[..w].chunks_exact(2));
    let grads = d0[..w].chunks_exact_mut(2).zip(d1[..w].chunks_exact_mut(2));
    for (((a, b), &gv), (da, db)) in rows.zip(&g[..full]).zip(grads) {
        let (t0, t1) = (takes(a[0], a[1]), takes(b[0], b[1]));
        let m0 = if t0 { a[1] } else { a[0] };
        let m1 = if t1 { b[1] } else { b[0] };
        let t = takes(m0, m1);
        let gv = z + gv;
        da[0] = if !t & !t0 { gv } else { z };
        da[1] = if !t & t0 { gv } else { z };
        db[0] = if t & !t1 { gv } else { z };
        db[1] = if t & t1 { gv } else { z };
    }
    // The rest: `d0` and `d1` are zero on entry, so only the winner's element is written.
    let rows = r0[w..].chunks_exact(2).zip(r1[w..].chunks_exact(2));
    let grads = d0[w..].chunks_exact_mut(2).zip(d1[w..].chunks_exact_mut(2));
    for (((a, b), &gv), (da, db)) in rows.zip(&g[full..]).zip(grads) {
        let (t0, t1) = (takes(a[0], a[1]), takes(b[0], b[1]));
        let m0 = [a[0], a[1]][t0 as usize];
        let m1 = [b[0], b[1]][t1 as usize];
        let t = takes(m0, m1);
        let dst = if t { db } else { da };
        dst[[t0, t1][t as usize] as usize] = z + gv;
    }
}

multiversion!(pub(super) fn pair_row_values[T: Real][T](r0: &[T], r1: &[T], out: &mut [T]) = pair_row_values_body);
multiversion!(pub(super) fn pair_row[T: Real][T](r0: &[T], r1: &[T], out: &mut [T], idx: &mut [i64], base: i64, iw: i64) = pair_row_body);
multiversion!(pub(super) fn pair_grad_row[T: Real][T](r0: &[T], r1: &[T], g: &[T], d0: &mut [T], d1: &mut [T]) = pair_grad_row_body);

/// 2x2 stride-2 max pooling backward with the maxima found again, one output row at a time:
/// no row plan and no scatter (the general path takes 20-30x longer on LeNet-5's maps). Rows
/// and columns that no window covers (an odd size) stay zero.
fn backward_pairs<T: Real>(geo: &PoolGeometry, x: &[T], dy: &[T], dx: &mut [T]) {
    let [_, ih, iw] = geo.input;
    let [_, oh, ow] = geo.output;
    let (in_len, out_len) = (ih * iw, oh * ow);
    let level = level();
    for_each_block(dx, None, in_len, in_len, dy.len() * 8, |plane, _, d, _| {
        let (xp, g) = (&x[plane * in_len..][..in_len], &dy[plane * out_len..][..out_len]);
        for oy in 0..oh {
            let (r0, r1) = (&xp[2 * oy * iw..][..iw], &xp[(2 * oy + 1) * iw..][..iw]);
            let (d0, d1) = d[2 * oy * iw..][..2 * iw].split_at_mut(iw);
            pair_grad_row(level, r0, r1, &g[oy * ow..][..ow], d0, d1);
        }
    });
}

/// A fold operand: values, their positions (empty without indices) and an offset to add to
/// the positions.
type Src<'a, T> = (&'a [T], &'a [i32], i32);

/// One pass: `out[i] = fold(init[i], s[0][i], ..., s[N-1][i])`, positions alongside with `IDX`.
/// Out of place, and every operand loaded unconditionally, so the compiler emits compares and
/// blends (an in-place `b = if t { x } else { b }` becomes a masked store, slow on AMD).
#[inline(always)]
fn pass<T: Real, const IDX: bool, const N: usize>(out: &mut [T], out_at: &mut [i32], init: Src<'_, T>, s: [Src<'_, T>; N]) {
    let n = out.len();
    let iv = &init.0[..n];
    let sv: [&[T]; N] = s.map(|x| &x.0[..n]);
    if IDX {
        let (out_at, ia) = (&mut out_at[..n], &init.1[..n]);
        let sa: [&[i32]; N] = s.map(|x| &x.1[..n]);
        for i in 0..n {
            let (mut b, mut a) = (iv[i], ia[i].wrapping_add(init.2));
            for j in 0..N {
                let (x, xa) = (sv[j][i], sa[j][i].wrapping_add(s[j].2));
                let t = takes(b, x);
                b = if t { x } else { b };
                a = if t { xa } else { a };
            }
            out[i] = b;
            out_at[i] = a;
        }
    } else {
        for i in 0..n {
            let mut b = iv[i];
            for v in &sv {
                let x = v[i];
                b = if takes(b, x) { x } else { b };
            }
            out[i] = b;
        }
    }
}

/// `out = fold(init, src(0), ..., src(n-1))` in passes of up to three operands, alternating
/// between `out` and `tmp` so the last pass writes `out`.
#[inline(always)]
fn fold_chain<'a, T: Real, const IDX: bool>(
    out: &mut [T],
    out_at: &mut [i32],
    tmp: &mut [T],
    tmp_at: &mut [i32],
    init: Src<'a, T>,
    n: usize,
    src: impl Fn(usize) -> Src<'a, T>,
) {
    let passes = n.div_ceil(3).max(1);
    for j in 0..passes {
        let (lo, hi) = (3 * j, (3 * j + 3).min(n));
        let to_out = (passes - 1 - j).is_multiple_of(2);
        let (dst, dst_at, from): (&mut [T], &mut [i32], Src<'_, T>) = match (j, to_out) {
            (0, true) => (out, out_at, init),
            (0, false) => (tmp, tmp_at, init),
            (_, true) => (&mut *out, &mut *out_at, (&*tmp, &*tmp_at, 0)),
            (_, false) => (&mut *tmp, &mut *tmp_at, (&*out, &*out_at, 0)),
        };
        match hi - lo {
            0 => pass::<T, IDX, 0>(dst, dst_at, from, []),
            1 => pass::<T, IDX, 1>(dst, dst_at, from, [src(lo)]),
            2 => pass::<T, IDX, 2>(dst, dst_at, from, [src(lo), src(lo + 1)]),
            _ => pass::<T, IDX, 3>(dst, dst_at, from, [src(lo), src(lo + 1), src(lo + 2)]),
        }
    }
}

/// Scratch of one task: the row cache (one slot per row of a window, so a whole window is
/// resident at once), a phase buffer, the window's slots, and ping-pong rows for long folds.
struct Scratch<T> {
    cache: RowCache<T>,
    phases: Vec<T>,
    rows: Vec<(usize, i32)>,
    tmp: Vec<T>,
    tmp_at: Vec<i32>,
    neg_inf: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new(plan: &RowPlan, with_idx: bool) -> Self {
        let wo = plan.wo;
        Scratch {
            cache: RowCache::whole_windows(wo, with_idx, plan.az.rows_mod(), plan.ay.rows_mod()),
            phases: if plan.cols.direct { Vec::new() } else { plan.cols.phase_buffer(T::neg_infinity()) },
            rows: Vec::with_capacity(plan.az.rows_mod() * plan.ay.rows_mod()),
            tmp: vec![T::zero(); wo],
            tmp_at: vec![0; if with_idx { wo } else { 0 }],
            neg_inf: vec![T::neg_infinity(); if with_idx { wo } else { 0 }],
        }
    }
}

/// The windows' maxima along one input row into `hv` (and, with `IDX`, the input column of
/// each into `hi`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_max<T: Real, const IDX: bool>(
    cols: &Columns,
    row: &[T],
    phases: &mut [T],
    neg_inf: &[T],
    tmp: &mut [T],
    tmp_at: &mut [i32],
    hv: &mut [T],
    hi: &mut [i32],
) {
    let src: &[T] = if cols.direct {
        row
    } else {
        cols.split(row, phases);
        phases
    };
    let k = cols.taps.len();
    let d = cols.axis.d as i32;
    if IDX {
        // Start from -inf at the first in-bounds column, as the definition does: a window of
        // -inf (or of padding only) reports its first in-bounds position.
        let tap = |kx: usize| (cols.tap(src, kx), &cols.base_col[..], kx as i32 * d);
        fold_chain::<T, true>(hv, hi, tmp, tmp_at, (neg_inf, &cols.first_col, 0), k, tap);
    } else {
        let tap = |kx: usize| (cols.tap(src, kx + 1), &[][..], 0);
        fold_chain::<T, false>(hv, hi, tmp, tmp_at, (cols.tap(src, 0), &[], 0), k - 1, tap);
    }
}

/// Output row `r` (flat `(oz, oy)`) of a plane `x`: maxima into `v`, with `IDX` their flat
/// positions in the plane into `vi`.
#[inline(always)]
fn out_row<T: Real, const IDX: bool>(plan: &RowPlan, x: &[T], r: usize, scratch: &mut Scratch<T>, v: &mut [T], vi: &mut [i32]) {
    let (oz, oy) = (r / plan.ho, r % plan.ho);
    let ((lz, hz), (ly, hy)) = (plan.az.taps(oz), plan.ay.taps(oy));
    let w = plan.w;
    let Scratch { cache, phases, rows, tmp, tmp_at, neg_inf } = scratch;
    rows.clear();
    for kz in lz..hz {
        let z = plan.az.pos(oz, kz);
        for ky in ly..hy {
            let y = plan.ay.pos(oy, ky);
            let flat = z * plan.h + y;
            let (s, hit) = cache.slot(z, y, flat);
            if !hit {
                let (hv, hi) = cache.get_mut(s);
                row_max::<T, IDX>(&plan.cols, &x[flat * w..][..w], phases, neg_inf, tmp, tmp_at, hv, hi);
            }
            rows.push((s, (flat * w) as i32));
        }
    }
    if rows.is_empty() {
        // No input row in the window: -inf, at the definition's first position.
        v.fill(T::neg_infinity());
        if IDX {
            let fz = if lz < hz { plan.az.pos(oz, lz) } else { 0 };
            let fy = if ly < hy { plan.ay.pos(oy, ly) } else { 0 };
            let base = ((fz * plan.h + fy) * w) as i32;
            for (d, &c) in vi.iter_mut().zip(&plan.cols.first_col) {
                *d = c.wrapping_add(base);
            }
        }
        return;
    }
    let cache = &*cache;
    let row = |j: usize| {
        let (s, base) = rows[j];
        let (hv, hi) = cache.get(s);
        (hv, hi, base)
    };
    fold_chain::<T, IDX>(v, vi, tmp, tmp_at, row(0), rows.len() - 1, |j| row(j + 1));
}

/// Output rows `r0..` of one plane into `out` (whole rows), with `IDX` positions into `idx`.
#[inline(always)]
fn forward_rows<T: Real, const IDX: bool>(plan: &MaxPlan, x: &[T], r0: usize, out: &mut [T], idx: &mut [i64]) {
    let wo = plan.rows.wo;
    let mut scratch = Scratch::new(&plan.rows, IDX);
    let mut vi = vec![0i32; if IDX { wo } else { 0 }];
    for (i, o_row) in out.chunks_exact_mut(wo).enumerate() {
        out_row::<T, IDX>(&plan.rows, x, r0 + i, &mut scratch, o_row, &mut vi);
        if IDX {
            for (d, &s) in idx[i * wo..][..wo].iter_mut().zip(&vi) {
                *d = s as i64;
            }
        }
    }
}

multiversion!(pub(super) fn forward_task[T: Real, const IDX: bool][T, IDX](plan: &MaxPlan, x: &[T], r0: usize, out: &mut [T], idx: &mut [i64]) = forward_rows);

/// Max pooling forward of every plane. With `idx`, also the flat position of each maximum.
pub(super) fn forward<T: Real>(geo: &PoolGeometry, x: &[T], out: &mut [T], idx: Option<&mut [i64]>) {
    if is_pair_pool(geo) {
        return forward_pairs(geo, x, out, idx);
    }
    let plan = MaxPlan::new(geo);
    let (in_len, out_len, wo) = (geo.input_len(), geo.output_len(), plan.rows.wo);
    let rpt = plan.rows.forward_rows_per_task(geo.n * geo.c);
    let work = window_work(geo, out.len());
    let (level, plan, with_idx) = (level(), &plan, idx.is_some());
    for_each_block(out, idx, out_len, rpt * wo, work, |plane, b, o, i| {
        let x_plane = &x[plane * in_len..][..in_len];
        if with_idx {
            forward_task::<T, true>(level, plan, x_plane, b * rpt, o, i)
        } else {
            forward_task::<T, false>(level, plan, x_plane, b * rpt, o, i)
        }
    });
}

/// Gradient of input rows `a..` of one plane (`dx`, whole rows, zero on entry). Every output
/// row whose window meets them is recomputed (maxima and positions, as the forward); each
/// gradient is added at its position, outputs in order, so every element sums its gradients
/// in the definition's order whatever the rows of the task.
///
/// The task accumulates its rows split into phases, like the forward reads them: tap `kx` of a
/// row of outputs is then one contiguous slice, and adding `grad` where the position is that
/// tap (`+0.0` elsewhere, which leaves a sum that started at `+0.0` unchanged) is a vector
/// loop. Taps go from last to first, so an element shared by neighbouring windows gets its
/// outputs in increasing order. The rows are merged back into `dx` at the end.
#[inline(always)]
fn backward_rows<T: Real>(plan: &MaxPlan, x: &[T], dy: &[T], a: usize, dx: &mut [T]) {
    let (w, wo, cols) = (plan.rows.w, plan.rows.wo, &plan.rows.cols);
    let b = a + dx.len() / w;
    let ((z0, z1), (y0, y1)) = row_span(a, b, plan.rows.h);
    let span = cols.s * cols.plen;
    let mut acc = vec![T::zero(); (b - a) * span];
    let mut scratch = Scratch::new(&plan.rows, true);
    let (mut v, mut vi, mut rel) = (vec![T::zero(); wo], vec![0i32; wo], vec![0i32; wo]);
    let d = cols.axis.d as i32;
    for oz in plan.rows.az.touching(z0, z1) {
        for oy in plan.rows.ay.touching(y0, y1) {
            let r = oz * plan.rows.ho + oy;
            out_row::<T, true>(&plan.rows, x, r, &mut scratch, &mut v, &mut vi);
            let g = &dy[r * wo..][..wo];
            let ((lz, hz), (ly, hy)) = (plan.rows.az.taps(oz), plan.rows.ay.taps(oy));
            if plan.empty_col || lz == hz || ly == hy {
                // Some window has no in-bounds tap in a dimension, and its position is the
                // definition's fallback, not a tap: add each gradient where it points.
                for (&at, &gv) in vi.iter().zip(g) {
                    let at = at as u32 as usize;
                    let row = at / w;
                    if row >= a && row < b {
                        acc[(row - a) * span + cols.phase_pos(at % w)] += gv;
                    }
                }
                continue;
            }
            for kz in lz..hz {
                let z = plan.rows.az.pos(oz, kz);
                for ky in ly..hy {
                    let flat = z * plan.rows.h + plan.rows.ay.pos(oy, ky);
                    if flat < a || flat >= b {
                        continue;
                    }
                    let base = (flat * w) as i32;
                    for (rl, &at) in rel.iter_mut().zip(&vi) {
                        *rl = at.wrapping_sub(base);
                    }
                    let ph = &mut acc[(flat - a) * span..][..span];
                    for kx in (0..cols.taps.len()).rev() {
                        let kxd = kx as i32 * d;
                        let dst = &mut ph[cols.tap_range(kx)];
                        for (((t, &rl), &bc), &gv) in dst.iter_mut().zip(&rel).zip(&cols.base_col).zip(g) {
                            *t += if rl == bc.wrapping_add(kxd) { gv } else { T::zero() };
                        }
                    }
                }
            }
        }
    }
    for (row, ph) in dx.chunks_exact_mut(w).zip(acc.chunks_exact(span)) {
        cols.merge(ph, row);
    }
}

multiversion!(pub(super) fn backward_task[T: Real][T](plan: &MaxPlan, x: &[T], dy: &[T], a: usize, dx: &mut [T]) = backward_rows);

/// Max pooling backward with the argmax recomputed from `x`; `dx` must be zero on entry.
pub(super) fn backward<T: Real>(geo: &PoolGeometry, x: &[T], dy: &[T], dx: &mut [T]) {
    if is_pair_pool(geo) {
        return backward_pairs(geo, x, dy, dx);
    }
    let plan = MaxPlan::new(geo);
    let (in_len, out_len, w) = (geo.input_len(), geo.output_len(), plan.rows.w);
    let rpt = plan.rows.backward_rows_per_task(geo.n * geo.c);
    // Each task recomputes the maxima of the windows that meet its rows, then scatters.
    let work = window_work(geo, dy.len()).saturating_add(dx.len());
    let (level, plan) = (level(), &plan);
    for_each_block(dx, None, in_len, rpt * w, work, |plane, b, d, _| {
        backward_task::<T>(level, plan, &x[plane * in_len..][..in_len], &dy[plane * out_len..][..out_len], b * rpt, d)
    });
}

/// Max pooling backward from the forward's indices (flat positions in each input plane); `dx`
/// must be zero on entry. An index outside the plane is an error naming `indices`.
pub(super) fn backward_from_indices<T: Real>(geo: &PoolGeometry, dy: &[T], idx: &[i64], dx: &mut [T]) -> Result<()> {
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let planes = geo.n * geo.c;
    // An index may point anywhere in its plane, so a task owning part of a plane scans all of
    // the plane's indices: split planes only when there are too few of them for the cores.
    let rows = geo.input[0] * geo.input[1];
    let blocks = if planes >= 16 { 1 } else { 16usize.div_ceil(planes).min(8).min(rows) };
    let span = rows.div_ceil(blocks) * geo.input[2];
    // Every block of a plane scans all of the plane's gradients and indices.
    let work = dy.len().saturating_mul(blocks).saturating_add(dx.len());
    let bad = AtomicBool::new(false);
    for_each_block(dx, None, in_len, span, work, |plane, b, d, _| {
        let (g, at) = (&dy[plane * out_len..][..out_len], &idx[plane * out_len..][..out_len]);
        let lo = b * span;
        let mut ok = true;
        for (&v, &i) in g.iter().zip(at) {
            ok &= i >= 0 && (i as u64) < in_len as u64;
            let i = (i as usize).wrapping_sub(lo);
            if i < d.len() {
                d[i] += v;
            }
        }
        if !ok {
            bad.store(true, Ordering::Relaxed);
        }
    });
    if !bad.into_inner() {
        Ok(())
    } else {
        Err(Error::invalid(
            "indices",
            format!(
                "indices must hold positions in [0, {in_len}) of the input's spatial plane {} (as max_pool returns them)",
                shape_str(&geo.input[3 - geo.dims..])
            ),
        ))
    }
}
