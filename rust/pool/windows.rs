//! The generic pooling loops: every window listed tap by tap, one plane per task.
//!
//! These are the definition the fast row kernels (`max.rs`, `avg.rs`) are tested against, and
//! the fallback where the fast kernels do not fit: planes too large for their 32-bit positions,
//! or kernels, paddings or strides far larger than the input (see `plan::rows_fit`).

use super::plan::{divisor, for_each_block, window_work, Axis, Divide};
use crate::element::Real;
use crate::params::{PoolGeometry, MAX_DIMS};
use crate::parallel;

/// For each dimension and each output position: the in-bounds input positions of its window,
/// and the divisor size average pooling with `count_include_pad` uses.
pub(super) struct Windows {
    taps: [Vec<Vec<usize>>; MAX_DIMS],
    padded_len: [Vec<usize>; MAX_DIMS],
}

impl Windows {
    /// Windows of a strided, padded, dilated pool (PyTorch's max and average pools).
    pub fn strided(geo: &PoolGeometry) -> Windows {
        let mut taps: [Vec<Vec<usize>>; MAX_DIMS] = Default::default();
        let mut padded_len: [Vec<usize>; MAX_DIMS] = Default::default();
        for d in 0..MAX_DIMS {
            let a = Axis::of(geo, d);
            for o in 0..a.out {
                // The in-bounds taps, worked out rather than searched for: a kernel may be far
                // larger than the input (with half of it as padding).
                let (lo, hi) = a.taps(o);
                taps[d].push((lo..hi).map(|j| a.pos(o, j)).collect());
                // Average pooling's padded window: [start, min(start + k, size + p)).
                padded_len[d].push(a.padded_len(o));
            }
        }
        Windows { taps, padded_len }
    }

    /// Calls `f(output position, z taps, y taps, x taps, divisor)` for every output position of
    /// a plane, in order. The divisor counts the padding when `count_include_pad`, and is
    /// `divisor_override` when that is given.
    fn each<T: Real>(&self, div: Divide, mut f: impl FnMut(usize, &[usize], &[usize], &[usize], T)) {
        let fixed = div.fixed::<T>();
        let mut o = 0;
        for (zi, zs) in self.taps[0].iter().enumerate() {
            for (yi, ys) in self.taps[1].iter().enumerate() {
                for (xi, xs) in self.taps[2].iter().enumerate() {
                    // A padding of half a huge kernel makes each count huge: the product is
                    // exact (`plan::divisor`), not saturated.
                    let (z, y, x) = if div.count_include_pad {
                        (self.padded_len[0][zi], self.padded_len[1][yi], self.padded_len[2][xi])
                    } else {
                        (zs.len(), ys.len(), xs.len())
                    };
                    f(o, zs, ys, xs, fixed.unwrap_or_else(|| divisor(z as u128 * y as u128, x)));
                    o += 1;
                }
            }
        }
    }
}

fn first_tap(zs: &[usize], ys: &[usize], xs: &[usize], h: usize, w: usize) -> usize {
    let first = |t: &[usize]| t.first().copied().unwrap_or(0);
    (first(zs) * h + first(ys)) * w + first(xs)
}

/// Max pooling of every plane of `x` into `out` and `idx` (flat positions in the plane), in
/// PyTorch's scan order: z, y, x; a later NaN wins, the first of equal maxima wins.
pub(super) fn max_forward<T: Real>(geo: &PoolGeometry, x: &[T], out: &mut [T], idx: &mut [i64]) {
    let win = Windows::strided(geo);
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let [_, h, w] = geo.input;
    let work = window_work(geo, out.len());
    for_each_block(out, Some(idx), out_len, out_len, work, |plane, _, o_plane, i_plane| {
        let x_plane = &x[plane * in_len..][..in_len];
        let mut o = 0;
        for zs in &win.taps[0] {
            for ys in &win.taps[1] {
                for xs in &win.taps[2] {
                    let mut best = T::neg_infinity();
                    let mut best_at = first_tap(zs, ys, xs, h, w);
                    for &z in zs {
                        for &y in ys {
                            let row = (z * h + y) * w;
                            for &xx in xs {
                                let v = x_plane[row + xx];
                                // `v > best` alone would skip NaN; PyTorch lets NaN win.
                                if v > best || v.is_nan() {
                                    best = v;
                                    best_at = row + xx;
                                }
                            }
                        }
                    }
                    o_plane[o] = best;
                    i_plane[o] = best_at as i64;
                    o += 1;
                }
            }
        }
    });
}

/// Average pooling of every plane (sum in scan order, then one division by the divisor).
pub(super) fn avg_forward<T: Real>(geo: &PoolGeometry, x: &[T], out: &mut [T], div: Divide) {
    let win = Windows::strided(geo);
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let [_, h, w] = geo.input;
    parallel::for_each_chunk(out, out_len, window_work(geo, out.len()), |plane, o_plane| {
        let x_plane = &x[plane * in_len..][..in_len];
        win.each(div, |o, zs, ys, xs, divisor: T| {
            let mut sum = T::zero();
            for &z in zs {
                for &y in ys {
                    let row = &x_plane[(z * h + y) * w..][..w];
                    for &xx in xs {
                        sum += row[xx];
                    }
                }
            }
            o_plane[o] = sum / divisor;
        });
    });
}

/// Average pooling backward: each output's gradient divided by its divisor, added to every
/// in-bounds position of its window, outputs in order.
pub(super) fn avg_backward<T: Real>(geo: &PoolGeometry, dy: &[T], dx: &mut [T], div: Divide) {
    let win = Windows::strided(geo);
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let [_, h, w] = geo.input;
    parallel::for_each_chunk(dx, in_len, window_work(geo, dy.len()), |plane, dx_plane| {
        let g = &dy[plane * out_len..][..out_len];
        win.each(div, |o, zs, ys, xs, divisor: T| {
            let share = g[o] / divisor;
            for &z in zs {
                for &y in ys {
                    let row = &mut dx_plane[(z * h + y) * w..][..w];
                    for &xx in xs {
                        row[xx] += share;
                    }
                }
            }
        });
    });
}
