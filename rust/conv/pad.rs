//! Explicit padding for the non-zero padding modes (reflect, replicate, circular): the input is
//! copied once into a larger buffer, after which the convolution is a plain valid one.

use crate::element::{zeros_vec, Real};
use crate::error::Result;
use crate::params::{ConvGeometry, PaddingMode, MAX_DIMS};
use crate::parallel;

/// The source index that padded position `i` (which may lie in the border, `-lo <= i < n + hi`)
/// reads from, for an input dimension of size `n`. Geometry validation guarantees the border
/// never exceeds what the mode can serve (reflect: < n, circular: <= n).
pub(crate) fn source_index(mode: PaddingMode, i: isize, n: usize) -> usize {
    let n = n as isize;
    let j = match mode {
        PaddingMode::Zeros | PaddingMode::Replicate => i.clamp(0, n - 1),
        PaddingMode::Reflect => {
            if i < 0 {
                -i
            } else if i >= n {
                2 * (n - 1) - i
            } else {
                i
            }
        }
        PaddingMode::Circular => i.rem_euclid(n),
    };
    j as usize
}

/// Copies `input` (N, C, *in) into a new (N, C, *padded) buffer whose border follows `mode`.
pub(crate) fn pad_input<T: Real>(input: &[T], geo: &ConvGeometry, mode: PaddingMode) -> Result<Vec<T>> {
    let padded = geo.with_padding_applied();
    let plane_in = geo.input_len();
    let plane_out = padded.input_len();
    let len = crate::element::checked_len::<T>(&padded.input_shape(), "padded input")?;
    let mut out = zeros_vec::<T>(len, "padded input")?;
    let maps = source_maps(geo, &padded, mode);
    let [_, h, w] = geo.input;
    if plane_out > 0 {
        let work = out.len();
        parallel::for_each_chunk(&mut out, plane_out, work, |plane, dst| {
            let src = &input[plane * plane_in..][..plane_in];
            let mut o = 0;
            for &z in &maps[0] {
                for &y in &maps[1] {
                    let row = &src[(z * h + y) * w..][..w];
                    for &x in &maps[2] {
                        dst[o] = row[x];
                        o += 1;
                    }
                }
            }
        });
    }
    Ok(out)
}

/// The adjoint of `pad_input`: adds the gradient of every padded position `dxp` (N, C, *padded)
/// onto the input position it was copied from, giving `dx` (N, C, *in), which must be zeroed.
/// Each plane is folded sequentially in a fixed order.
pub(crate) fn fold_padding<T: Real>(dxp: &[T], geo: &ConvGeometry, mode: PaddingMode, dx: &mut [T]) {
    let padded = geo.with_padding_applied();
    let (plane_in, plane_out) = (geo.input_len(), padded.input_len());
    let maps = source_maps(geo, &padded, mode);
    let [_, h, w] = geo.input;
    if plane_in == 0 {
        return;
    }
    parallel::for_each_chunk(dx, plane_in, dxp.len(), |plane, dst| {
        let src = &dxp[plane * plane_out..][..plane_out];
        let mut o = 0;
        for &z in &maps[0] {
            for &y in &maps[1] {
                let row = &mut dst[(z * h + y) * w..][..w];
                for &x in &maps[2] {
                    row[x] += src[o];
                    o += 1;
                }
            }
        }
    });
}

/// For each dimension, the source index of every padded position.
fn source_maps(geo: &ConvGeometry, padded: &ConvGeometry, mode: PaddingMode) -> Vec<Vec<usize>> {
    (0..MAX_DIMS)
        .map(|d| {
            (0..padded.input[d])
                .map(|i| source_index(mode, i as isize - geo.pad_lo[d] as isize, geo.input[d]))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn border_indices() {
        let row: Vec<usize> = (-2..6).map(|i| source_index(PaddingMode::Reflect, i, 4)).collect();
        assert_eq!(row, vec![2, 1, 0, 1, 2, 3, 2, 1]);
        let row: Vec<usize> = (-2..6).map(|i| source_index(PaddingMode::Replicate, i, 4)).collect();
        assert_eq!(row, vec![0, 0, 0, 1, 2, 3, 3, 3]);
        let row: Vec<usize> = (-2..6).map(|i| source_index(PaddingMode::Circular, i, 4)).collect();
        assert_eq!(row, vec![2, 3, 0, 1, 2, 3, 0, 1]);
    }
}
