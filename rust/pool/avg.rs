//! Average and adaptive average pooling on whole rows, forward and backward.
//!
//! Average pooling sums each window in the definition's order (z, y, then x, starting from 0)
//! with whole rows of outputs at once: for every input row of the window and every column tap,
//! one vector add of the tap's slice of the split row (padding holds +0.0, which leaves a sum
//! that started at +0.0 unchanged). The result is bitwise the generic loop's, whose order is
//! PyTorch's CPU loops' order.
//!
//! The backward spreads `grad / divisor` over each window, output rows in order and, within a
//! row, column taps from last to first so each element still receives its outputs in order.

use super::plan::{divisor, for_each_block, row_span, rows_per_task, window_work, Divide, RowCache, RowPlan};
use super::simd::{level, multiversion};
use crate::element::Real;
use crate::params::{adaptive_window, PoolGeometry};

/// The geometry of an average pool as the row kernels see it.
pub(super) struct AvgPlan {
    rows: RowPlan,
    div: Divide,
    /// Per output column: its factor of the divisor.
    cx: Vec<usize>,
}

impl AvgPlan {
    pub fn new(geo: &PoolGeometry, div: Divide) -> AvgPlan {
        let rows = RowPlan::new(geo);
        let ax = rows.cols.axis;
        let cx = (0..ax.out)
            .map(|o| {
                if div.count_include_pad {
                    ax.padded_len(o)
                } else {
                    let (lo, hi) = ax.taps(o);
                    hi - lo
                }
            })
            .collect();
        AvgPlan { rows, div, cx }
    }

    /// The z * y factor of the divisor of output row `(oz, oy)`, exact.
    fn czy(&self, oz: usize, oy: usize) -> u128 {
        let (z, y) = if self.div.count_include_pad {
            (self.rows.az.padded_len(oz), self.rows.ay.padded_len(oy))
        } else {
            let ((lz, hz), (ly, hy)) = (self.rows.az.taps(oz), self.rows.ay.taps(oy));
            (hz - lz, hy - ly)
        };
        z as u128 * y as u128
    }
}

/// The divisors of one output row, as floats, rebuilt only when the row's z * y factor changes
/// (never with `divisor_override`).
struct Divisors<T> {
    czy: u128,
    vals: Vec<T>,
    fixed: bool,
}

impl<T: Real> Divisors<T> {
    fn new(wo: usize, div: Divide) -> Self {
        match div.fixed::<T>() {
            Some(d) => Divisors { czy: 0, vals: vec![d; wo], fixed: true },
            None => Divisors { czy: u128::MAX, vals: vec![T::one(); wo], fixed: false },
        }
    }

    #[inline]
    fn of(&mut self, czy: u128, cx: &[usize]) -> &[T] {
        if !self.fixed && czy != self.czy {
            self.czy = czy;
            for (d, &c) in self.vals.iter_mut().zip(cx) {
                *d = divisor(czy, c);
            }
        }
        &self.vals
    }
}

#[inline(always)]
fn add_into<T: Real>(acc: &mut [T], v: &[T]) {
    let v = &v[..acc.len()];
    for (a, &x) in acc.iter_mut().zip(v) {
        *a += x;
    }
}

/// Output rows `r0..` of one plane into `out` (whole rows).
#[inline(always)]
fn forward_rows<T: Real>(plan: &AvgPlan, x: &[T], r0: usize, out: &mut [T]) {
    let (w, wo, cols) = (plan.rows.w, plan.rows.wo, &plan.rows.cols);
    // Cached split rows; their padding positions stay +0.0.
    let mut cache = RowCache::<T>::new(if cols.direct { 0 } else { cols.s * cols.plen }, false, plan.rows.az.rows_mod(), plan.rows.ay.rows_mod());
    let mut div = Divisors::new(wo, plan.div);
    for (i, acc) in out.chunks_exact_mut(wo).enumerate() {
        let r = r0 + i;
        let (oz, oy) = (r / plan.rows.ho, r % plan.rows.ho);
        let ((lz, hz), (ly, hy)) = (plan.rows.az.taps(oz), plan.rows.ay.taps(oy));
        acc.fill(T::zero());
        for kz in lz..hz {
            let z = plan.rows.az.pos(oz, kz);
            for ky in ly..hy {
                let y = plan.rows.ay.pos(oy, ky);
                let flat = z * plan.rows.h + y;
                let row = &x[flat * w..][..w];
                let src: &[T] = if cols.direct {
                    row
                } else {
                    let (s, hit) = cache.slot(z, y, flat);
                    if !hit {
                        cols.split(row, cache.get_mut(s).0);
                    }
                    cache.get(s).0
                };
                for kx in 0..cols.taps.len() {
                    add_into(acc, cols.tap(src, kx));
                }
            }
        }
        for (a, &d) in acc.iter_mut().zip(div.of(plan.czy(oz, oy), &plan.cx)) {
            *a /= d;
        }
    }
}

multiversion!(fn forward_task[T: Real][T](plan: &AvgPlan, x: &[T], r0: usize, out: &mut [T]) = forward_rows);

/// Average pooling forward of every plane.
pub(super) fn forward<T: Real>(geo: &PoolGeometry, x: &[T], out: &mut [T], div: Divide) {
    let plan = AvgPlan::new(geo, div);
    let (in_len, out_len, wo) = (geo.input_len(), geo.output_len(), plan.rows.wo);
    let rpt = plan.rows.forward_rows_per_task(geo.n * geo.c);
    let work = window_work(geo, out.len());
    let (level, plan) = (level(), &plan);
    for_each_block(out, None, out_len, rpt * wo, work, |plane, b, o, _| {
        forward_task::<T>(level, plan, &x[plane * in_len..][..in_len], b * rpt, o)
    });
}

/// Gradient of input rows `a..` of one plane (`dx`, whole rows, zero on entry) from every
/// output row whose window meets them, in output order. As the max backward, the task
/// accumulates its rows split into phases, so each tap of a row of outputs is one contiguous
/// vector add, taps from last to first (each element gets its outputs in increasing order),
/// and merges them back into `dx` at the end.
#[inline(always)]
fn backward_rows<T: Real>(plan: &AvgPlan, dy: &[T], a: usize, dx: &mut [T]) {
    let (w, wo, cols) = (plan.rows.w, plan.rows.wo, &plan.rows.cols);
    let b = a + dx.len() / w;
    let ((z0, z1), (y0, y1)) = row_span(a, b, plan.rows.h);
    let span = cols.s * cols.plen;
    let mut acc = vec![T::zero(); (b - a) * span];
    let mut div = Divisors::new(wo, plan.div);
    let mut share = vec![T::zero(); wo];
    for oz in plan.rows.az.touching(z0, z1) {
        for oy in plan.rows.ay.touching(y0, y1) {
            let r = oz * plan.rows.ho + oy;
            let ((lz, hz), (ly, hy)) = (plan.rows.az.taps(oz), plan.rows.ay.taps(oy));
            let divs = div.of(plan.czy(oz, oy), &plan.cx);
            for ((s, &g), &d) in share.iter_mut().zip(&dy[r * wo..][..wo]).zip(divs) {
                *s = g / d;
            }
            for kz in lz..hz {
                let z = plan.rows.az.pos(oz, kz);
                for ky in ly..hy {
                    let flat = z * plan.rows.h + plan.rows.ay.pos(oy, ky);
                    if flat < a || flat >= b {
                        continue;
                    }
                    let ph = &mut acc[(flat - a) * span..][..span];
                    // Padding positions collect shares too; merging drops them.
                    for kx in (0..cols.taps.len()).rev() {
                        add_into(&mut ph[cols.tap_range(kx)], &share);
                    }
                }
            }
        }
    }
    for (row, ph) in dx.chunks_exact_mut(w).zip(acc.chunks_exact(span)) {
        cols.merge(ph, row);
    }
}

multiversion!(fn backward_task[T: Real][T](plan: &AvgPlan, dy: &[T], a: usize, dx: &mut [T]) = backward_rows);

/// Average pooling backward; `dx` must be zero on entry.
pub(super) fn backward<T: Real>(geo: &PoolGeometry, dy: &[T], dx: &mut [T], div: Divide) {
    let plan = AvgPlan::new(geo, div);
    let (in_len, out_len, w) = (geo.input_len(), geo.output_len(), plan.rows.w);
    let rpt = plan.rows.backward_rows_per_task(geo.n * geo.c);
    let work = window_work(geo, dy.len()).saturating_add(dx.len());
    let (level, plan) = (level(), &plan);
    for_each_block(dx, None, in_len, rpt * w, work, |plane, b, d, _| {
        backward_task::<T>(level, plan, &dy[plane * out_len..][..out_len], b * rpt, d)
    });
}

/// The windows of an adaptive pool along one dimension.
fn adaptive_windows(out: usize, size: usize) -> Vec<(usize, usize)> {
    (0..out).map(|o| adaptive_window(o, out, size)).collect()
}

/// The geometry of an adaptive average pool.
pub(super) struct AdaptivePlan {
    zs: Vec<(usize, usize)>,
    ys: Vec<(usize, usize)>,
    xs: Vec<(usize, usize)>,
    h: usize,
    w: usize,
}

impl AdaptivePlan {
    pub fn new(geo: &PoolGeometry) -> AdaptivePlan {
        AdaptivePlan {
            zs: adaptive_windows(geo.output[0], geo.input[0]),
            ys: adaptive_windows(geo.output[1], geo.input[1]),
            xs: adaptive_windows(geo.output[2], geo.input[2]),
            h: geo.input[1],
            w: geo.input[2],
        }
    }
}

/// Adaptive output rows `r0..` of one plane. Each window is summed column-wise over its rows
/// first (one vector add per input row), then across its columns: a fixed order, fast also for
/// global pooling, where the definition's order would be one long chain of dependent adds.
#[inline(always)]
fn adaptive_rows<T: Real>(plan: &AdaptivePlan, x: &[T], r0: usize, out: &mut [T]) {
    let (w, wo) = (plan.w, plan.xs.len());
    let ho = plan.ys.len();
    let mut colsum = vec![T::zero(); w];
    for (i, o_row) in out.chunks_exact_mut(wo).enumerate() {
        let r = r0 + i;
        let ((za, zb), (ya, yb)) = (plan.zs[r / ho], plan.ys[r % ho]);
        colsum.fill(T::zero());
        for z in za..zb {
            for y in ya..yb {
                add_into(&mut colsum, &x[(z * plan.h + y) * w..][..w]);
            }
        }
        let rows = (zb - za) * (yb - ya);
        for (o, &(xa, xb)) in o_row.iter_mut().zip(&plan.xs) {
            let sum = colsum[xa..xb].iter().fold(T::zero(), |s, &v| s + v);
            *o = sum / T::from_usize(rows * (xb - xa)).expect("window size fits a float");
        }
    }
}

multiversion!(fn adaptive_task[T: Real][T](plan: &AdaptivePlan, x: &[T], r0: usize, out: &mut [T]) = adaptive_rows);

/// Adaptive average pooling forward of every plane.
pub(super) fn adaptive_forward<T: Real>(geo: &PoolGeometry, x: &[T], out: &mut [T]) {
    let plan = AdaptivePlan::new(geo);
    let (in_len, out_len, wo) = (geo.input_len(), geo.output_len(), geo.output[2]);
    let rows = geo.output[0] * geo.output[1];
    let per_row = (geo.input_len() / rows.max(1)).max(geo.input[2]);
    let rpt = rows_per_task(geo.n * geo.c, rows, per_row, 1);
    // Each output row sums about `per_row` input elements.
    let work = (geo.n * geo.c * rows).saturating_mul(per_row);
    let (level, plan) = (level(), &plan);
    for_each_block(out, None, out_len, rpt * wo, work, |plane, b, o, _| {
        adaptive_task::<T>(level, plan, &x[plane * in_len..][..in_len], b * rpt, o)
    });
}

/// Adaptive gradient of input rows `a..` of one plane, outputs in order (the generic loop's
/// order, so the result is bitwise the definition's).
#[inline(always)]
fn adaptive_backward_rows<T: Real>(plan: &AdaptivePlan, dy: &[T], a: usize, dx: &mut [T]) {
    let (w, wo, ho) = (plan.w, plan.xs.len(), plan.ys.len());
    let b = a + dx.len() / w;
    let ((z0, z1), (y0, y1)) = row_span(a, b, plan.h);
    let mut share = vec![T::zero(); wo];
    for (oz, &(za, zb)) in plan.zs.iter().enumerate() {
        if zb <= z0 || za > z1 {
            continue;
        }
        for (oy, &(ya, yb)) in plan.ys.iter().enumerate() {
            if yb <= y0 || ya > y1 {
                continue;
            }
            let r = oz * ho + oy;
            let rows = (zb - za) * (yb - ya);
            for ((s, &g), &(xa, xb)) in share.iter_mut().zip(&dy[r * wo..][..wo]).zip(&plan.xs) {
                *s = g / T::from_usize(rows * (xb - xa)).expect("window size fits a float");
            }
            for z in za..zb {
                for y in ya..yb {
                    let flat = z * plan.h + y;
                    if flat < a || flat >= b {
                        continue;
                    }
                    let row = &mut dx[(flat - a) * w..][..w];
                    for (&s, &(xa, xb)) in share.iter().zip(&plan.xs) {
                        for e in &mut row[xa..xb] {
                            *e += s;
                        }
                    }
                }
            }
        }
    }
}

multiversion!(fn adaptive_backward_task[T: Real][T](plan: &AdaptivePlan, dy: &[T], a: usize, dx: &mut [T]) = adaptive_backward_rows);

/// Adaptive average pooling backward; `dx` must be zero on entry.
pub(super) fn adaptive_backward<T: Real>(geo: &PoolGeometry, dy: &[T], dx: &mut [T]) {
    let plan = AdaptivePlan::new(geo);
    let (in_len, out_len, w) = (geo.input_len(), geo.output_len(), geo.input[2]);
    let rows = geo.input[0] * geo.input[1];
    let rpt = rows_per_task(geo.n * geo.c, rows, w, 1);
    let work = dx.len().saturating_add(dy.len());
    let (level, plan) = (level(), &plan);
    for_each_block(dx, None, in_len, rpt * w, work, |plane, b, d, _| {
        adaptive_backward_task::<T>(level, plan, &dy[plane * out_len..][..out_len], b * rpt, d)
    });
}
