//! Convolution as matrix multiplication over im2col tiles.
//!
//! For one sample `n` and group `g`, the output block (K/groups, out_len) is
//! `W_g (K/groups, C/groups * kvol) x col (C/groups * kvol, out_len)`, where column `p` of `col`
//! holds the input patch under output position `p`. `col` is never built whole: it is built one
//! tile of columns at a time (at most `COL_TILE_ELEMS` elements), so the work buffer stays in
//! cache and its size does not grow with the image. The tiles of all (n, g) pairs are
//! independent tasks, and their split depends only on the shapes, so results do not depend on
//! the thread count.

use crate::element::{resize, scratch, transpose, Real, SendPtr};
use crate::params::ConvGeometry;
use crate::parallel;

/// Elements in one im2col tile: 128 Ki elements (512 KiB of f32) stays in a core's L2 cache
/// while giving the GEMM panels of a few hundred columns (measured: 64x576 by 113 columns runs
/// at ~60% of the speed of 64x576 by 256).
const COL_TILE_ELEMS: usize = 1 << 17;
/// Fewest columns in a tile, so the GEMM stays efficient when a patch is very long.
const MIN_TILE_COLS: usize = 64;

/// The input gradient's tiles (its GEMM's output, scattered back) may hold this many
/// elements: every tile repacks the weights (the GEMM's A, channels * kvol x K), so wider tiles
/// pack them fewer times (res_3x3_s2: 1152 x 256 weights, tiles of 113 -> 196 columns, the
/// input gradient 14% faster).
const DX_TILE_ELEMS: usize = 4 * COL_TILE_ELEMS;
/// The weight gradient's tiles: a wider tile is a deeper GEMM, so the (K, channels * kvol)
/// gradient block it adds into is read and written fewer times (res_3x3_s2: 7% faster).
const DW_TILE_ELEMS: usize = 2 * COL_TILE_ELEMS;

/// Columns per tile for patches of `rows` elements and `out_len` output positions.
pub(crate) fn tile_cols(rows: usize, out_len: usize) -> usize {
    tile_cols_within(COL_TILE_ELEMS, rows, out_len)
}

/// `tile_cols` for tiles of at most `budget` elements.
fn tile_cols_within(budget: usize, rows: usize, out_len: usize) -> usize {
    (budget / rows.max(1)).max(MIN_TILE_COLS).min(out_len.max(1))
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
    let per_tile = (tile / out_len).min(geo.n);
    let wt = transposed_weights(w, geo.groups, kg, rows);
    if !pointwise && per_tile > 1 {
        return forward_batched(x, &wt, bias, geo, out, per_tile);
    }
    let out_ptr = SendPtr(out.as_mut_ptr());

    let work = geo.n * geo.c_out * out_len * rows;
    parallel::for_each_init(geo.n * geo.groups * tiles, work, Vec::new, |col: &mut Vec<T>, item| {
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
            resize(col, rows * cols, T::zero(), "im2col col");
            fill_tile(x_group, geo, cg, p0, cols, cols, col);
            (col.as_ptr(), cols as isize)
        };
        let a = &wt[g * kg * rows..][..kg * rows];
        // SAFETY: A is (kg, rows) column-major inside `wt`; B is (rows, cols) with row stride
        // rsb inside `col` or `x_group`; C is this task's block of `out`, disjoint from A and B.
        unsafe {
            T::gemm(kg, rows, cols, T::one(), a.as_ptr(), 1, kg as isize, b_ptr, rsb, 1, beta, c, out_len as isize, 1);
        }
    });
}

/// Each group's weights `(kg, rows)` stored column-major, `[g][row][k]`, so that the GEMM packs
/// them by copying runs (see `element::transpose`); once per call, not once per tile.
fn transposed_weights<T: Real>(w: &[T], groups: usize, kg: usize, rows: usize) -> Vec<T> {
    let mut wt = scratch(w.len(), "im2col transposed weights");
    for (src, dst) in w.chunks_exact(kg * rows).zip(wt.chunks_exact_mut(kg * rows)).take(groups) {
        transpose(src, kg, rows, rows, dst, kg);
    }
    wt
}

/// `forward` for small feature maps: the im2col columns of `per_tile` samples sit side by side
/// in one tile, so the GEMM is `per_tile` times wider (a 10x10 map alone gives a GEMM of 100
/// columns, too narrow to run fast). The GEMM writes a (kg, width) buffer, copied to `out`.
/// `wt` holds the weights as `transposed_weights` lays them out.
fn forward_batched<T: Real>(x: &[T], wt: &[T], bias: Option<&[T]>, geo: &ConvGeometry, out: &mut [T], per_tile: usize) {
    let (cg, kg) = (geo.c_in_per_group(), geo.c_out_per_group());
    let rows = cg * geo.kernel_volume();
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let batches = geo.n.div_ceil(per_tile);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let work = geo.n * geo.c_out * out_len * rows;
    parallel::for_each_init(batches * geo.groups, work, || (Vec::new(), Vec::new()), |(col, acc): &mut (Vec<T>, Vec<T>), item| {
        let (b, g) = (item / geo.groups, item % geo.groups);
        let (n0, n1) = (b * per_tile, ((b + 1) * per_tile).min(geo.n));
        let width = (n1 - n0) * out_len;
        resize(col, rows * width, T::zero(), "im2col col");
        resize(acc, kg * width, T::zero(), "im2col acc");
        for (i, n) in (n0..n1).enumerate() {
            let x_group = &x[(n * geo.c_in + g * cg) * in_len..][..cg * in_len];
            fill_tile(x_group, geo, cg, 0, out_len, width, &mut col[i * out_len..]);
        }
        let a = &wt[g * kg * rows..][..kg * rows];
        // SAFETY: A is (kg, rows) column-major inside `wt`, B (rows, width) and C (kg, width)
        // are this task's own buffers.
        unsafe {
            T::gemm(kg, rows, width, T::one(), a.as_ptr(), 1, kg as isize, col.as_ptr(), width as isize, 1, T::zero(), acc.as_mut_ptr(), width as isize, 1);
        }
        for (i, n) in (n0..n1).enumerate() {
            for k in 0..kg {
                // SAFETY: task (b, g) writes rows g*kg..(g+1)*kg of samples n0..n1 only: disjoint
                // between tasks and inside `out`.
                let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add((n * geo.c_out + g * kg + k) * out_len), out_len) };
                let src = &acc[k * width + i * out_len..][..out_len];
                match bias {
                    Some(bias) => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + bias[g * kg + k]),
                    None => dst.copy_from_slice(src),
                }
            }
        }
    });
}

/// Writes columns `p0 .. p0 + cols` of the im2col matrix of `channels` consecutive input
/// channels of one sample (`x_chans`) into `col` (row-major, `cols` wide). Row
/// `r = (c * kd + z) * kh * kw + y * kw + x` holds channel `c` at kernel offset (z, y, x);
/// positions in the zero padding read as 0.
///
/// Row `r` starts at `col[r * ld]` (`ld >= cols`; several samples' tiles can sit side by side).
pub(crate) fn fill_tile<T: Real>(x_chans: &[T], geo: &ConvGeometry, channels: usize, p0: usize, cols: usize, ld: usize, col: &mut [T]) {
    let in_len = geo.input_len();
    if p0 == 0 && cols == geo.output_len() {
        return fill_whole(x_chans, geo, channels, ld, col);
    }
    for_each_run(geo, channels, p0, cols, |c, r, j, src| {
        let dst = &mut col[r * ld + j..][..src.len];
        match src.start {
            None => dst.fill(T::zero()),
            Some(at) => {
                let xc = &x_chans[c * in_len..];
                if src.step == 1 {
                    copy_short(dst, &xc[at..at + src.len]);
                } else {
                    for (i, v) in dst.iter_mut().enumerate() {
                        *v = xc[at + i * src.step];
                    }
                }
            }
        }
    });
}

/// `fill_tile` for a tile holding a whole sample (the common case for small feature maps): runs
/// are whole output rows, so the valid column range of each kernel offset is worked out once and
/// every row is a zero-fill, a copy and a zero-fill.
fn fill_whole<T: Real>(x_chans: &[T], geo: &ConvGeometry, channels: usize, ld: usize, col: &mut [T]) {
    let [kd, kh, kw] = geo.kernel;
    let [od, oh, ow] = geo.output;
    let [id, ih, iw] = geo.input;
    let [sd, sh, sw] = geo.stride;
    let [dd, dh, dw] = geo.dilation;
    let [pd, ph, pw] = geo.pad_lo;
    let in_len = geo.input_len();
    let mut r = 0;
    for c in 0..channels {
        let xc = &x_chans[c * in_len..][..in_len];
        for kz in 0..kd {
            for ky in 0..kh {
                for kx in 0..kw {
                    // Output columns [first, end) read input columns ox*sw + kx*dw - pw inside [0, iw).
                    let shift = kx * dw;
                    let first = pw.saturating_sub(shift).div_ceil(sw).min(ow);
                    let end = if pw + iw > shift { (pw + iw - shift).div_ceil(sw).clamp(first, ow) } else { first };
                    let dst_row = &mut col[r * ld..][..od * oh * ow];
                    r += 1;
                    for oz in 0..od {
                        let iz = (oz * sd + kz * dd) as isize - pd as isize;
                        for oy in 0..oh {
                            let iy = (oy * sh + ky * dh) as isize - ph as isize;
                            let dst = &mut dst_row[(oz * oh + oy) * ow..][..ow];
                            if iz < 0 || iz >= id as isize || iy < 0 || iy >= ih as isize || first == end {
                                dst.fill(T::zero());
                                continue;
                            }
                            let row = &xc[(iz as usize * ih + iy as usize) * iw..][..iw];
                            dst[..first].fill(T::zero());
                            dst[end..].fill(T::zero());
                            let src0 = first * sw + shift - pw;
                            if sw == 1 {
                                copy_short(&mut dst[first..end], &row[src0..src0 + end - first]);
                            } else {
                                for (i, v) in dst[first..end].iter_mut().enumerate() {
                                    *v = row[src0 + i * sw];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs im2col copies (often 5 to 30 elements), where
/// a call to `memmove` costs more than the copy: fixed blocks of 8 (or 4), the last one
/// overlapping the previous, compile to a few vector moves and no call.
#[inline]
fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    #[inline(always)]
    fn block<T: Copy, const B: usize>(dst: &mut [T], src: &[T], at: usize) {
        let s: &[T; B] = src[at..at + B].try_into().expect("block in range");
        let d: &mut [T; B] = (&mut dst[at..at + B]).try_into().expect("block in range");
        *d = *s;
    }
    let len = dst.len().min(src.len());
    if len >= 8 {
        let mut at = 0;
        while at + 8 < len {
            block::<T, 8>(dst, src, at);
            at += 8;
        }
        block::<T, 8>(dst, src, len - 8);
    } else if len >= 4 {
        block::<T, 4>(dst, src, 0);
        block::<T, 4>(dst, src, len - 4);
    } else {
        if len > 0 {
            dst[0] = src[0];
        }
        if len > 1 {
            dst[1] = src[1];
        }
        if len > 2 {
            dst[2] = src[2];
        }
    }
}

/// Adds the im2col-shaped gradient `col` (columns `p0 .. p0 + cols` of `channels` channels, as
/// `fill_tile` lays them out) back onto the input positions they were read from: the adjoint
/// of `fill_tile`. Padding positions are dropped.
pub(crate) fn scatter_tile<T: Real>(col: &[T], geo: &ConvGeometry, channels: usize, p0: usize, cols: usize, dx_chans: &mut [T]) {
    let in_len = geo.input_len();
    for_each_run(geo, channels, p0, cols, |c, r, j, src| {
        if let Some(at) = src.start {
            let g = &col[r * cols + j..][..src.len];
            let dxc = &mut dx_chans[c * in_len..];
            if src.step == 1 {
                for (d, &v) in dxc[at..at + src.len].iter_mut().zip(g) {
                    *d += v;
                }
            } else {
                for (i, &v) in g.iter().enumerate() {
                    dxc[at + i * src.step] += v;
                }
            }
        }
    });
}

/// A run of im2col columns along one output row: `len` columns that read the input at
/// `start, start + step, ...` within a channel (`None`: all in the zero padding).
struct Run {
    start: Option<usize>,
    step: usize,
    len: usize,
}

/// Walks the im2col matrix of `channels` channels, columns `p0 .. p0 + cols`, as runs: calls
/// `f(channel, row, first column, run)` for each maximal stretch of columns that lies in one
/// output row and is entirely inside the input or entirely in the padding.
fn for_each_run(geo: &ConvGeometry, channels: usize, p0: usize, cols: usize, mut f: impl FnMut(usize, usize, usize, Run)) {
    let [kd, kh, kw] = geo.kernel;
    let [_, oh, ow] = geo.output;
    let [id, ih, iw] = geo.input;
    let [sd, sh, sw] = geo.stride;
    let [dd, dh, dw] = geo.dilation;
    let [pd, ph, pw] = geo.pad_lo;
    // Output coordinates of the tile's first column, found once: runs then advance them
    // without dividing (a division per run cost as much as a short run's copy).
    let (oz0, oy0, ox00) = (p0 / (oh * ow), (p0 / ow) % oh, p0 % ow);
    let mut r = 0;
    for c in 0..channels {
        for kz in 0..kd {
            for ky in 0..kh {
                for kx in 0..kw {
                    // Output columns ox whose input column ox*sw + kx*dw - pw lies in [0, iw).
                    let shift = kx * dw;
                    let first = pw.saturating_sub(shift).div_ceil(sw);
                    let end = if pw + iw > shift { (pw + iw - shift).div_ceil(sw) } else { 0 };
                    let mut j = 0;
                    let (mut oz, mut oy, mut ox0) = (oz0, oy0, ox00);
                    while j < cols {
                        let run = (ow - ox0).min(cols - j);
                        let iz = (oz * sd + kz * dd) as isize - pd as isize;
                        let iy = (oy * sh + ky * dh) as isize - ph as isize;
                        if iz < 0 || iz >= id as isize || iy < 0 || iy >= ih as isize {
                            f(c, r, j, Run { start: None, step: sw, len: run });
                        } else {
                            let row = (iz as usize * ih + iy as usize) * iw;
                            let lo = first.clamp(ox0, ox0 + run);
                            let hi = end.clamp(lo, ox0 + run);
                            if lo > ox0 {
                                f(c, r, j, Run { start: None, step: sw, len: lo - ox0 });
                            }
                            if hi > lo {
                                f(c, r, j + lo - ox0, Run { start: Some(row + lo * sw + shift - pw), step: sw, len: hi - lo });
                            }
                            if ox0 + run > hi {
                                f(c, r, j + hi - ox0, Run { start: None, step: sw, len: ox0 + run - hi });
                            }
                        }
                        j += run;
                        ox0 += run;
                        if ox0 == ow {
                            ox0 = 0;
                            oy += 1;
                            if oy == oh {
                                oy = 0;
                                oz += 1;
                            }
                        }
                    }
                    r += 1;
                }
            }
        }
    }
}

/// Input channels per backward task: a group's channels are split into at most this many
/// blocks, so small batches still give the pool parallel work. A function of the shape only.
const MAX_CHANNEL_BLOCKS: usize = 8;

/// `(block size, block count)` for splitting `cg` channels.
fn channel_blocks(cg: usize) -> (usize, usize) {
    let size = cg.div_ceil(cg.clamp(1, MAX_CHANNEL_BLOCKS));
    (size.max(1), cg.div_ceil(size.max(1)))
}

/// `dx (N, C, *input) = conv_input_grad(dy (N, K, *output), w)`: per (sample, group, channel
/// block) task, `dcol = W_g[:, block]^T dy` one tile at a time, scattered back with
/// `scatter_tile`. Tasks own disjoint channels of `dx`, which must be zeroed.
pub(crate) fn backward_input<T: Real>(dy: &[T], w: &[T], geo: &ConvGeometry, dx: &mut [T]) {
    let (cg, kg, kvol) = (geo.c_in_per_group(), geo.c_out_per_group(), geo.kernel_volume());
    let rows = cg * kvol;
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    // With enough samples to share out, whole groups make taller GEMMs than channel blocks.
    let (cb, blocks) = if geo.n >= MIN_CHUNKS_WHOLE_GROUPS { (cg, 1) } else { channel_blocks(cg) };
    let tile = tile_cols_within(DX_TILE_ELEMS, cb * kvol, out_len);
    let tiles = out_len.div_ceil(tile);
    let dx_ptr = SendPtr(dx.as_mut_ptr());
    let work = geo.n * geo.c_out * out_len * rows;
    parallel::for_each_init(geo.n * geo.groups * blocks, work, Vec::new, |dcol: &mut Vec<T>, item| {
        let (ng, b) = (item / blocks, item % blocks);
        let (n, g) = (ng / geo.groups, ng % geo.groups);
        let (c0, c1) = (b * cb, ((b + 1) * cb).min(cg));
        let channels = c1 - c0;
        // SAFETY: task (n, g, b) owns channels g*cg+c0 .. g*cg+c1 of sample n: a contiguous
        // range of `dx` that no other task touches.
        let dx_chans = unsafe {
            std::slice::from_raw_parts_mut(dx_ptr.get().add((n * geo.c_in + g * cg + c0) * in_len), channels * in_len)
        };
        let dy_block = &dy[(n * geo.c_out + g * kg) * out_len..][..kg * out_len];
        let w_block = &w[g * kg * rows + c0 * kvol..];
        for t in 0..tiles {
            let p0 = t * tile;
            let cols = tile.min(out_len - p0);
            resize(dcol, channels * kvol * cols, T::zero(), "im2col dcol");
            // SAFETY: A = W_g^T rows c0*kvol.. (channels*kvol, kg) read through W's strides;
            // B = dy columns p0.. (kg, cols); C = dcol, a separate buffer.
            unsafe {
                T::gemm(
                    channels * kvol, kg, cols, T::one(),
                    w_block.as_ptr(), 1, rows as isize,
                    dy_block[p0..].as_ptr(), out_len as isize, 1,
                    T::zero(), dcol.as_mut_ptr(), cols as isize, 1,
                );
            }
            scatter_tile(dcol, geo, channels, p0, cols, dx_chans);
        }
    });
}

/// Most sample chunks the weight gradient is split into (each sums its samples into its own
/// partial gradient; the partials are then added in chunk order).
const MAX_SAMPLE_CHUNKS: usize = 8;
/// Samples (for the input gradient) or sample chunks (for the weight gradient) from which a
/// group is no longer split into channel blocks: the samples give the threads enough tasks.
const MIN_CHUNKS_WHOLE_GROUPS: usize = 4;
/// Cap on the elements of all partial weight gradients together (16 MiB of f32).
const PARTIALS_ELEMS: usize = 1 << 22;

/// How many chunks the samples of a weight gradient are split into: a function of the shapes
/// only, so the sums (and their rounding) never depend on the thread count.
fn sample_chunks(n: usize, weight_len: usize) -> usize {
    n.min(MAX_SAMPLE_CHUNKS).min(PARTIALS_ELEMS / weight_len.max(1)).max(1)
}

/// `dw (K, C/groups, *kernel) = sum over samples and positions of dy x im2col(x)^T`.
///
/// Tasks are (group, channel block, sample chunk). Each accumulates its samples and tiles in a
/// fixed order into its chunk's partial gradient; the partials are then summed in chunk order.
/// The split depends only on the shapes, so the result does not depend on the thread count.
pub(crate) fn backward_weight<T: Real>(x: &[T], dy: &[T], geo: &ConvGeometry, dw: &mut [T]) {
    let (cg, kg, kvol) = (geo.c_in_per_group(), geo.c_out_per_group(), geo.kernel_volume());
    let rows = cg * kvol;
    let (in_len, out_len) = (geo.input_len(), geo.output_len());
    let chunks = sample_chunks(geo.n, dw.len());
    // With enough sample chunks to share out, whole groups make wider GEMMs than channel blocks.
    let (cb, blocks) = if chunks >= MIN_CHUNKS_WHOLE_GROUPS { (cg, 1) } else { channel_blocks(cg) };
    let tile = tile_cols_within(DW_TILE_ELEMS, cb * kvol, out_len);
    let tiles = out_len.div_ceil(tile);
    let pointwise = kvol == 1 && geo.stride == [1; 3] && !geo.has_padding();
    let mut partials = if chunks > 1 { scratch(chunks * dw.len(), "im2col partial weight gradients") } else { Vec::new() };
    let wlen = dw.len();
    let dst_ptr = SendPtr(if chunks > 1 { partials.as_mut_ptr() } else { dw.as_mut_ptr() });
    let work = geo.n * geo.c_out * out_len * rows;
    // Small feature maps: several samples' columns side by side make one wide GEMM.
    let per_tile = if pointwise { 1 } else { (tile / out_len).max(1) };
    // Both GEMM operands run along the positions, which matrixmultiply would pack one element
    // at a time; each tile's are transposed first (`element::transpose`), positions-major.
    type Scratch<T> = (Vec<T>, Vec<T>, Vec<T>);
    let scratch = || (Vec::new(), Vec::new(), Vec::new());
    parallel::for_each_init(geo.groups * blocks * chunks, work, scratch, |(col, col_t, dy_t): &mut Scratch<T>, item| {
        let (gb, chunk) = (item / chunks, item % chunks);
        let (g, b) = (gb / blocks, gb % blocks);
        let (c0, c1) = (b * cb, ((b + 1) * cb).min(cg));
        let channels = c1 - c0;
        let crows = channels * kvol;
        // SAFETY: task (g, b, chunk) writes columns c0*kvol .. c1*kvol of rows g*kg .. (g+1)*kg
        // of its chunk's (K, rows) matrix: disjoint between tasks, inside the buffer.
        let c = unsafe { dst_ptr.get().add(chunk * wlen + g * kg * rows + c0 * kvol) };
        let x_chans = |n: usize| &x[(n * geo.c_in + g * cg + c0) * in_len..][..channels * in_len];
        let dy_block = |n: usize| &dy[(n * geo.c_out + g * kg) * out_len..][..kg * out_len];
        let (s0, s1) = (chunk * geo.n / chunks, (chunk + 1) * geo.n / chunks);
        // dW block += dy_t^T col_t for a tile of `width` positions: A = dy_t (width, kg), read
        // as (kg, width) column-major; B = col_t (width, crows) row-major.
        let gemm = |dy_t: &[T], col_t: &[T], width: usize| {
            // SAFETY: A and B are this task's buffers of `width * kg` and `width * crows`
            // elements; C is this task's block of the partial, disjoint from both.
            unsafe {
                T::gemm(kg, width, crows, T::one(), dy_t.as_ptr(), 1, kg as isize, col_t.as_ptr(), crows as isize, 1, T::one(), c, rows as isize, 1);
            }
        };
        if per_tile > 1 {
            let mut n0 = s0;
            while n0 < s1 {
                let n1 = (n0 + per_tile).min(s1);
                let width = (n1 - n0) * out_len;
                resize(col, crows * width, T::zero(), "im2col col");
                resize(col_t, crows * width, T::zero(), "im2col col t");
                resize(dy_t, kg * width, T::zero(), "im2col dy t");
                for (i, n) in (n0..n1).enumerate() {
                    fill_tile(x_chans(n), geo, channels, 0, out_len, width, &mut col[i * out_len..]);
                    transpose(dy_block(n), kg, out_len, out_len, &mut dy_t[i * out_len * kg..], kg);
                }
                transpose(col, crows, width, width, col_t, crows);
                gemm(dy_t, col_t, width);
                n0 = n1;
            }
            return;
        }
        for n in s0..s1 {
            let (x_chans, dy_block) = (x_chans(n), dy_block(n));
            for t in 0..tiles {
                let p0 = t * tile;
                let cols = tile.min(out_len - p0);
                resize(col_t, crows * cols, T::zero(), "im2col col t");
                resize(dy_t, kg * cols, T::zero(), "im2col dy t");
                if pointwise {
                    transpose(&x_chans[p0..], channels, cols, in_len, col_t, crows);
                } else {
                    resize(col, crows * cols, T::zero(), "im2col col");
                    fill_tile(x_chans, geo, channels, p0, cols, cols, col);
                    transpose(col, crows, cols, cols, col_t, crows);
                }
                transpose(&dy_block[p0..], kg, cols, out_len, dy_t, kg);
                gemm(dy_t, col_t, cols);
            }
        }
    });
    if chunks > 1 {
        let partials = &partials;
        parallel::for_each_chunk(dw, 4096, wlen * chunks, |i, d| {
            let base = i * 4096;
            for (j, v) in d.iter_mut().enumerate() {
                *v = (0..chunks).fold(T::zero(), |acc, s| acc + partials[s * wlen + base + j]);
            }
        });
    }
}

/// `db (K,)`: the sum of `dy (N, K, *output)` over samples and positions, per output channel.
pub(crate) fn backward_bias<T: Real>(dy: &[T], geo: &ConvGeometry, db: &mut [T]) {
    let out_len = geo.output_len();
    parallel::for_each_chunk(db, 1, dy.len(), |k, d| {
        d[0] = (0..geo.n).fold(T::zero(), |s, n| s + crate::element::sum(&dy[(n * geo.c_out + k) * out_len..][..out_len]));
    });
}
