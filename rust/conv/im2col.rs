//! Convolution as matrix multiplication over im2col tiles.
//!
//! For one sample `n` and group `g`, the output block (K/groups, out_len) is
//! `W_g (K/groups, C/groups * kvol) x col (C/groups * kvol, out_len)`, where column `p` of `col`
//! holds the input patch under output position `p`. `col` is never built whole: it is built one
//! tile of columns at a time (at most `COL_TILE_ELEMS` elements), so the work buffer stays in
//! cache and its size does not grow with the image. The tiles of all (n, g) pairs are
//! independent tasks, and their split depends only on the shapes, so results do not depend on
//! the thread count.

use crate::element::{Real, SendPtr};
use crate::params::ConvGeometry;
use rayon::prelude::*;

/// Elements in one im2col tile: 64 Ki elements (256 KiB of f32) fits a core's L2 cache.
const COL_TILE_ELEMS: usize = 1 << 16;
/// Fewest columns in a tile, so the GEMM stays efficient when a patch is very long.
const MIN_TILE_COLS: usize = 16;

/// Columns per tile for patches of `rows` elements and `out_len` output positions.
pub(crate) fn tile_cols(rows: usize, out_len: usize) -> usize {
    (COL_TILE_ELEMS / rows.max(1)).max(MIN_TILE_COLS).min(out_len.max(1))
}

/// `out (N, K, *output) = conv(x (N, C, *input), w (K, C/groups, *kernel)) + bias`, with zero
/// padding as in `geo`. All slices are C-contiguous.
pub(crate) fn forward<T: Real>(x: &[T], w: &[T], bias: Option<&[T]>, geo: &ConvGeometry, out: &mut [T]) {
    let (cg, kg) = (geo.c_in_per_group(), geo.c_out_per_group());
    let rows = cg * geo.kernel_volume();
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    if out.is_empty() {
        return;
    }
    let tile = tile_cols(rows, out_len);
    let tiles = out_len.div_ceil(tile);
    let pointwise = geo.kernel_volume() == 1 && geo.stride == [1; 3] && !geo.has_padding();
    let out_ptr = SendPtr(out.as_mut_ptr());

    (0..geo.n * geo.groups * tiles).into_par_iter().for_each_init(Vec::new, |col: &mut Vec<T>, item| {
        let (ng, t) = (item / tiles, item % tiles);
        let (n, g) = (ng / geo.groups, ng % geo.groups);
        let p0 = t * tile;
        let cols = tile.min(out_len - p0);
        let x_group = &x[(n * geo.c_in + g * cg) * in_len..][..cg * in_len];
        let c_offset = (n * geo.c_out + g * kg) * out_len + p0;
        // SAFETY: task (n, g, t) writes only rows g*kg..(g+1)*kg of sample n, columns
        // p0..p0+cols: no two tasks share an element, and all lie inside `out`.
        let c = unsafe { out_ptr.get().add(c_offset) };
        let beta = match bias {
            Some(b) => {
                for k in 0..kg {
                    // SAFETY: row k of this task's block, inside `out` as above.
                    let row = unsafe { std::slice::from_raw_parts_mut(c.add(k * out_len), cols) };
                    row.fill(b[g * kg + k]);
                }
                T::one()
            }
            None => T::zero(),
        };
        let (b_ptr, rsb) = if pointwise {
            (x_group[p0..].as_ptr(), in_len as isize)
        } else {
            col.resize(rows * cols, T::zero());
            fill_tile(x_group, geo, p0, cols, col);
            (col.as_ptr(), cols as isize)
        };
        let a = &w[g * kg * rows..][..kg * rows];
        // SAFETY: A is (kg, rows) row-major inside `w`; B is (rows, cols) with row stride rsb
        // inside `col` or `x_group`; C is this task's block of `out`, disjoint from A and B.
        unsafe {
            T::gemm(kg, rows, cols, T::one(), a.as_ptr(), rows as isize, 1, b_ptr, rsb, 1, beta, c, out_len as isize, 1);
        }
    });
}

/// Writes columns `p0 .. p0 + cols` of the im2col matrix of one group of one sample into `col`
/// (row-major, `cols` wide). Row `r = (c * kd + z) * kh * kw + y * kw + x` holds input channel `c`
/// at kernel offset (z, y, x); positions in the zero padding read as 0.
pub(crate) fn fill_tile<T: Real>(x_group: &[T], geo: &ConvGeometry, p0: usize, cols: usize, col: &mut [T]) {
    let [kd, kh, kw] = geo.kernel;
    let [_, oh, ow] = geo.output;
    let [id, ih, iw] = geo.input;
    let [sd, sh, sw] = geo.stride;
    let [dd, dh, dw] = geo.dilation;
    let [pd, ph, pw] = geo.pad_lo;
    let in_len = geo.input_len();
    let mut r = 0;
    for c in 0..geo.c_in_per_group() {
        let xc = &x_group[c * in_len..][..in_len];
        for kz in 0..kd {
            for ky in 0..kh {
                for kx in 0..kw {
                    let dst = &mut col[r * cols..][..cols];
                    r += 1;
                    // Output columns ox whose input column ox*sw + kx*dw - pw lies in [0, iw).
                    let shift = kx * dw;
                    let first = pw.saturating_sub(shift).div_ceil(sw);
                    let end = if pw + iw > shift { (pw + iw - shift).div_ceil(sw) } else { 0 };
                    let mut j = 0;
                    let mut p = p0;
                    while j < cols {
                        let (oz, rem) = (p / (oh * ow), p % (oh * ow));
                        let (oy, ox0) = (rem / ow, rem % ow);
                        let run = (ow - ox0).min(cols - j);
                        let run_dst = &mut dst[j..j + run];
                        let iz = (oz * sd + kz * dd) as isize - pd as isize;
                        let iy = (oy * sh + ky * dh) as isize - ph as isize;
                        if iz < 0 || iz >= id as isize || iy < 0 || iy >= ih as isize {
                            run_dst.fill(T::zero());
                        } else {
                            let row = &xc[(iz as usize * ih + iy as usize) * iw..][..iw];
                            let lo = first.clamp(ox0, ox0 + run);
                            let hi = end.clamp(lo, ox0 + run);
                            run_dst[..lo - ox0].fill(T::zero());
                            run_dst[hi - ox0..].fill(T::zero());
                            let src0 = lo * sw + shift - pw;
                            let seg = &mut run_dst[lo - ox0..hi - ox0];
                            if sw == 1 {
                                seg.copy_from_slice(&row[src0..src0 + seg.len()]);
                            } else {
                                for (i, v) in seg.iter_mut().enumerate() {
                                    *v = row[src0 + i * sw];
                                }
                            }
                        }
                        j += run;
                        p += run;
                    }
                }
            }
        }
    }
}
