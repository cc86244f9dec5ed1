//! Convolution in 1, 2 and 3 spatial dimensions: one public entry point per direction, with the
//! kernel strategy chosen inside (`Strategy::choose`, or the one a test forces with
//! `Strategy::force`). A strategy that would misplace an inf or NaN of its operands hands the
//! call to im2col (`Strategy::exact_for`).

mod depthwise;
mod direct;
mod im2col;
mod winograd;
pub(crate) mod pad;
#[cfg(test)]
mod testutil;

/// What a kernel computes: the forward convolution or one of its two gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    /// The gradient of the input.
    Input,
    /// The gradient of the weight.
    Weight,
}

impl Direction {
    pub const ALL: [Direction; 3] = [Direction::Forward, Direction::Input, Direction::Weight];

    /// `"forward"`, `"input"` or `"weight"`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Input => "input",
            Direction::Weight => "weight",
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = Error;

    fn from_str(s: &str) -> Result<Direction> {
        Direction::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| {
            Error::invalid("direction", format!("direction must be 'forward', 'input' or 'weight', got {s:?}"))
        })
    }
}

/// How a convolution is computed. Every strategy computes the same function; `choose` picks
/// the fastest one that serves a geometry, from the geometry alone (never from the thread count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// GEMM over im2col tiles; serves every geometry and direction.
    Im2col,
    /// Direct loops for one input channel per group (depthwise, any channel multiplier).
    Depthwise,
    /// Winograd F(4x4, 3x3) for 2-D 3x3 stride-1 convolutions with one group: the forward and
    /// the input gradient.
    Winograd,
    /// Register-blocked direct loops on CPUs with AVX2 or AVX-512: the forward, the input
    /// gradient at stride 1, and weight gradients whose working set fits the caches.
    Direct,
}

/// Most output channels per input channel served by the depthwise loops: measured faster than
/// im2col up to 4 (C=1 -> K=4 on 56x56: 0.34 vs 0.59 ms forward), slower from 6 (LeNet's
/// Conv2d(1, 6, 5): 1.31 vs 0.81 ms), where the GEMM reuses each im2col tile across outputs.
const DEPTHWISE_MAX_MULTIPLIER: usize = 4;

/// Fewest input and output channels for Winograd. Measured on one thread, N=32, 56x56, kernel
/// time only: 64 -> 64 channels 29 vs 74 ms (im2col), 16 -> 16 4.8 vs 6.8 ms, 8 -> 8 2.7 vs
/// 3.4 ms, 4 -> 4 1.4 vs 1.6 ms. Below 16 the gain is small and not worth Winograd's larger
/// float32 error (see winograd.rs).
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// The strategy forced for each direction (`Direction as usize`): 0 for the automatic choice,
/// else 1 + the index in `Strategy::ALL`. A switch for tests and benchmarks, global to the
/// process.
static FORCED: [AtomicU8; 3] = [AtomicU8::new(0), AtomicU8::new(0), AtomicU8::new(0)];

impl Strategy {
    pub const ALL: [Strategy; 4] = [Strategy::Im2col, Strategy::Depthwise, Strategy::Winograd, Strategy::Direct];

    /// `"im2col"`, `"depthwise"`, `"winograd"` or `"direct"`.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Im2col => "im2col",
            Strategy::Depthwise => "depthwise",
            Strategy::Winograd => "winograd",
            Strategy::Direct => "direct",
        }
    }

    /// Whether this strategy can compute `dir` for the zero-padded geometry `geo` on this CPU.
    pub fn serves(self, geo: &ConvGeometry, dir: Direction) -> bool {
        match (self, dir) {
            (Strategy::Im2col, _) => true,
            (Strategy::Depthwise, _) => depthwise::applies(geo),
            (Strategy::Winograd, Direction::Forward | Direction::Input) => winograd::applies(geo),
            // Winograd's transforms do not pay for the weight gradient.
            (Strategy::Winograd, Direction::Weight) => false,
            (Strategy::Direct, Direction::Forward) => direct::fits(geo),
            (Strategy::Direct, Direction::Input) => direct::input_gradient_applies(geo),
            (Strategy::Direct, Direction::Weight) => direct::weight_gradient_applies(geo),
        }
    }

    /// The automatic choice for `dir` of the zero-padded geometry `geo`.
    pub fn choose(geo: &ConvGeometry, dir: Direction) -> Strategy {
        let preferred = Strategy::preferred(geo);
        match (preferred, dir) {
            // The direct loops do Winograd layers' weight gradients in 0.66x of im2col's time
            // (res_3x3_64, one thread).
            (Strategy::Winograd, Direction::Weight) if Strategy::Direct.serves(geo, dir) => Strategy::Direct,
            (s, _) if s.serves(geo, dir) => s,
            _ => Strategy::Im2col,
        }
    }

    /// The fastest strategy for `geo` as a whole; `choose` falls back from it per direction.
    fn preferred(geo: &ConvGeometry) -> Strategy {
        // Depthwise: as GEMM it is a matrix-vector product per channel, dominated by building
        // im2col; the direct loops win whenever each group has one input channel and few
        // outputs (with many outputs per input channel the GEMM reuses each im2col tile).
        if depthwise::applies(geo) && geo.c_out_per_group() <= DEPTHWISE_MAX_MULTIPLIER {
            return Strategy::Depthwise;
        }
        // Winograd: 4x fewer multiply-adds than im2col for 3x3 stride-1 layers, paid for with
        // transforms whose cost per channel only amortises with enough channels.
        if winograd::applies(geo) && geo.c_in >= WINOGRAD_MIN_CHANNELS && geo.c_out >= WINOGRAD_MIN_CHANNELS {
            return Strategy::Winograd;
        }
        // Direct: reads the input in place instead of copying every patch; a 1x1 kernel has no
        // patches, and there the GEMM's own blocking wins.
        if direct::fits(geo) && geo.kernel_volume() > 1 {
            return Strategy::Direct;
        }
        Strategy::Im2col
    }

    /// The strategy forced for `dir` (`force`), if any.
    pub fn forced(dir: Direction) -> Option<Strategy> {
        let code = FORCED[dir as usize].load(Ordering::Relaxed) as usize;
        code.checked_sub(1).map(|i| Strategy::ALL[i])
    }

    /// Makes every later convolution compute `dir` with `strategy` (None: the automatic
    /// choice), in every thread. A call whose geometry the forced strategy does not serve fails
    /// with an error naming `strategy`. For tests that run every strategy on every geometry.
    pub fn force(dir: Direction, strategy: Option<Strategy>) {
        let code = strategy.map_or(0, |s| 1 + Strategy::ALL.iter().position(|&a| a == s).expect("in ALL"));
        FORCED[dir as usize].store(code as u8, Ordering::Relaxed);
    }

    /// The forced strategy for `dir` if one is set (an error if it does not serve `geo`), else
    /// the automatic choice.
    fn select(geo: &ConvGeometry, dir: Direction) -> Result<Strategy> {
        match Strategy::forced(dir) {
            None => Ok(Strategy::choose(geo, dir)),
            Some(s) if s.serves(geo, dir) => Ok(s),
            Some(s) => Err(Error::invalid(
                "strategy",
                format!(
                    "the forced {} strategy {} does not serve input {} with weight {}",
                    dir.name(),
                    s.name(),
                    shape_str(&geo.input_shape()),
                    shape_str(&geo.weight_shape())
                ),
            )),
        }
    }

    /// Which of the two operands of `dir` (forward: input, weight; input gradient: grad_output,
    /// weight; weight gradient: input, grad_output) this strategy's arithmetic can misplace an
    /// inf or NaN of. The definition is the plain sum over the kernel taps, the zero padding
    /// included for the forward and the weight gradient (`w * 0` is NaN for an infinite `w`),
    /// and over the products that exist for the input gradient (a tap that reads padding adds
    /// nothing to any input). Winograd's transforms mix all the elements of a tile; the direct
    /// loops skip taps on padded rows (forward), multiply the weights by the zeros around the
    /// output gradient (input gradient), and multiply the inputs by discarded wide positions
    /// (weight gradient); the depthwise loops never read the padding.
    fn misplaces_non_finite(self, dir: Direction) -> (bool, bool) {
        match (self, dir) {
            (Strategy::Im2col, _) => (false, false),
            (Strategy::Winograd, _) => (true, true),
            (Strategy::Direct, Direction::Forward | Direction::Input) => (false, true),
            (Strategy::Direct, Direction::Weight) => (true, false),
            (Strategy::Depthwise, Direction::Forward) => (false, true),
            (Strategy::Depthwise, Direction::Input) => (false, false),
            (Strategy::Depthwise, Direction::Weight) => (false, true),
        }
    }

    /// This strategy, or im2col (whose sums are the plain ones) when `a` or `b`, the operands
    /// of `dir` as `misplaces_non_finite` orders them, hold a value it would misplace. Only
    /// the operands that matter are scanned: a read of each, against the many passes of the
    /// convolution itself.
    fn exact_for<T: Real>(self, dir: Direction, a: &[T], b: &[T]) -> Strategy {
        let (check_a, check_b) = self.misplaces_non_finite(dir);
        if (check_a && !all_finite(a)) || (check_b && !all_finite(b)) {
            Strategy::Im2col
        } else {
            self
        }
    }

    fn forward<T: Real>(self, x: &[T], w: &[T], bias: Option<&[T]>, geo: &ConvGeometry, out: &mut [T]) {
        match self.exact_for(Direction::Forward, x, w) {
            Strategy::Im2col => im2col::forward(x, w, bias, geo, out),
            Strategy::Depthwise => depthwise::forward(x, w, bias, geo, out),
            Strategy::Winograd => winograd::forward(x, w, bias, geo, out),
            Strategy::Direct => direct::forward(x, w, bias, geo, out),
        }
    }

    fn backward_input<T: Real>(self, dy: &[T], w: &[T], geo: &ConvGeometry, dx: &mut [T]) {
        match self.exact_for(Direction::Input, dy, w) {
            Strategy::Im2col => im2col::backward_input(dy, w, geo, dx),
            Strategy::Depthwise => depthwise::backward_input(dy, w, geo, dx),
            Strategy::Winograd => winograd::backward_input(dy, w, geo, dx),
            Strategy::Direct => direct::backward_input(dy, w, geo, dx),
        }
    }

    fn backward_weight<T: Real>(self, x: &[T], dy: &[T], geo: &ConvGeometry, dw: &mut [T]) {
        match self.exact_for(Direction::Weight, x, dy) {
            Strategy::Im2col => im2col::backward_weight(x, dy, geo, dw),
            Strategy::Depthwise => depthwise::backward_weight(x, dy, geo, dw),
            Strategy::Direct => direct::backward_weight(x, dy, geo, dw),
            Strategy::Winograd => unreachable!("Winograd does not serve the weight gradient"),
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Strategy> {
        Strategy::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            Error::invalid("strategy", format!("strategy must be 'im2col', 'depthwise', 'winograd' or 'direct', got {s:?}"))
        })
    }
}

/// The strategies that serve each direction of a convolution of `input_shape` by `weight_shape`
/// (after any non-zero padding mode is applied to the input, as the calls do).
pub fn strategies(input_shape: &[usize], weight_shape: &[usize], params: &ConvParams) -> Result<Vec<(Direction, Vec<Strategy>)>> {
    let geo = params.geometry(input_shape, weight_shape)?;
    let geo = if params.padding_mode != PaddingMode::Zeros && geo.has_padding() { geo.with_padding_applied() } else { geo };
    Ok(Direction::ALL.into_iter().map(|d| (d, Strategy::ALL.into_iter().filter(|s| s.serves(&geo, d)).collect())).collect())
}

/// Whether every element of `v` is finite (a parallel read of `v`).
fn all_finite<T: Real>(v: &[T]) -> bool {
    const CHUNK: usize = 1 << 14;
    let bad = std::sync::atomic::AtomicBool::new(false);
    crate::parallel::for_each(v.len().div_ceil(CHUNK), v.len(), |i| {
        let chunk = &v[i * CHUNK..((i + 1) * CHUNK).min(v.len())];
        // `x * 0` is NaN exactly for inf and NaN, and +-0 otherwise; 16 independent running
        // sums without an early exit vectorise.
        let (zero, mut acc) = (T::zero(), [T::zero(); 16]);
        let mut groups = chunk.chunks_exact(16);
        for group in &mut groups {
            for (a, &x) in acc.iter_mut().zip(group) {
                *a += x * zero;
            }
        }
        for &x in groups.remainder() {
            acc[0] += x * zero;
        }
        if acc.iter().any(|&a| a != zero) {
            bad.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    !bad.load(std::sync::atomic::Ordering::Relaxed)
}

use crate::element::{standard, zeros, Real};
use std::sync::atomic::{AtomicU8, Ordering};
use crate::error::{check_grad_output, shape_str, Error, Result};
use crate::params::{ConvGeometry, ConvParams, PaddingMode};
use ndarray::{ArrayD, ArrayViewD};

/// Convolution forward (PyTorch's `conv1d/2d/3d`, a cross-correlation).
///
/// Shapes: `input (N, C, *in)`, `weight (K, C / groups, *kernel)`, `bias (K,)` ->
/// `(N, K, *out)` with `out = (in + pad_lo + pad_hi - dilation * (kernel - 1) - 1) / stride + 1`.
/// Any memory layout is accepted.
pub fn conv_forward<T: Real>(
    input: ArrayViewD<'_, T>,
    weight: ArrayViewD<'_, T>,
    bias: Option<ArrayViewD<'_, T>>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let geo = params.geometry(input.shape(), weight.shape())?;
    if let Some(b) = &bias {
        check_bias(b.shape(), &geo)?;
    }
    let mut out = zeros::<T>(&geo.output_shape(), "output")?;
    if out.is_empty() {
        return Ok(out);
    }
    let input = standard(input, "input copy")?;
    let weight = standard(weight, "weight copy")?;
    let bias = bias.map(|b| standard(b, "bias copy")).transpose()?;
    let bias = bias.as_ref().map(|b| b.as_slice().expect("standard layout"));
    let x = input.as_slice().expect("standard layout");
    let w = weight.as_slice().expect("standard layout");
    let dst = out.as_slice_mut().expect("fresh array");
    // Every kernel splits its own work (parallel::for_each*), and small calls stay on this thread.
    crate::error::catch(|| {
        if params.padding_mode != PaddingMode::Zeros && geo.has_padding() {
            let padded = pad::pad_input(x, &geo, params.padding_mode)?;
            let geo = geo.with_padding_applied();
            Strategy::select(&geo, Direction::Forward)?.forward(&padded, w, bias, &geo, dst);
        } else {
            Strategy::select(&geo, Direction::Forward)?.forward(x, w, bias, &geo, dst);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Convolution backward: `(grad_input, grad_weight, grad_bias)` for `grad_output` of the
/// forward's output shape `(N, K, *out)`. Shapes as `conv_forward`.
pub fn conv_backward<T: Real>(
    grad_output: ArrayViewD<'_, T>,
    input: ArrayViewD<'_, T>,
    weight: ArrayViewD<'_, T>,
    params: &ConvParams,
) -> Result<(ArrayD<T>, ArrayD<T>, ArrayD<T>)> {
    let (grad_weight, grad_bias) = conv_backward_weight(grad_output.view(), input.view(), weight.shape(), params)?;
    let grad_input = conv_backward_input(grad_output, input.shape(), weight, params)?;
    Ok((grad_input, grad_weight, grad_bias))
}

/// Gradient of a convolution with respect to its input, `(N, C, *in)`.
pub fn conv_backward_input<T: Real>(
    grad_output: ArrayViewD<'_, T>,
    input_shape: &[usize],
    weight: ArrayViewD<'_, T>,
    params: &ConvParams,
) -> Result<ArrayD<T>> {
    let geo = params.geometry(input_shape, weight.shape())?;
    check_grad_output(grad_output.shape(), &geo.output_shape(), &geo.input_shape())?;
    let mut grad_input = zeros::<T>(input_shape, "grad_input")?;
    if grad_input.is_empty() {
        return Ok(grad_input);
    }
    let dy = standard(grad_output, "grad_output copy")?;
    let w = standard(weight, "weight copy")?;
    let (dy, w) = (dy.as_slice().expect("standard layout"), w.as_slice().expect("standard layout"));
    let dx = grad_input.as_slice_mut().expect("fresh array");
    // Every kernel splits its own work (parallel::for_each*), and small calls stay on this thread.
    crate::error::catch(|| {
        if params.padding_mode != PaddingMode::Zeros && geo.has_padding() {
            let padded = geo.with_padding_applied();
            let len = crate::element::checked_len::<T>(&padded.input_shape(), "padded grad_input")?;
            let mut dxp = crate::element::zeros_vec::<T>(len, "padded grad_input")?;
            Strategy::select(&padded, Direction::Input)?.backward_input(dy, w, &padded, &mut dxp);
            pad::fold_padding(&dxp, &geo, params.padding_mode, dx);
        } else {
            Strategy::select(&geo, Direction::Input)?.backward_input(dy, w, &geo, dx);
        }
        Ok(())
    })?;
    Ok(grad_input)
}

/// Gradients of a convolution with respect to its weight `(K, C / groups, *kernel)` and bias
/// `(K,)`.
pub fn conv_backward_weight<T: Real>(
    grad_output: ArrayViewD<'_, T>,
    input: ArrayViewD<'_, T>,
    weight_shape: &[usize],
    params: &ConvParams,
) -> Result<(ArrayD<T>, ArrayD<T>)> {
    let geo = params.geometry(input.shape(), weight_shape)?;
    check_grad_output(grad_output.shape(), &geo.output_shape(), &geo.input_shape())?;
    let mut grad_weight = zeros::<T>(weight_shape, "grad_weight")?;
    let mut grad_bias = zeros::<T>(&[geo.c_out], "grad_bias")?;
    if geo.n == 0 || grad_weight.is_empty() {
        return Ok((grad_weight, grad_bias));
    }
    let dy = standard(grad_output, "grad_output copy")?;
    let x = standard(input, "input copy")?;
    let (dy, x) = (dy.as_slice().expect("standard layout"), x.as_slice().expect("standard layout"));
    let dw = grad_weight.as_slice_mut().expect("fresh array");
    let db = grad_bias.as_slice_mut().expect("fresh array");
    // Every kernel splits its own work (parallel::for_each*), and small calls stay on this thread.
    crate::error::catch(|| {
        if params.padding_mode != PaddingMode::Zeros && geo.has_padding() {
            let padded = pad::pad_input(x, &geo, params.padding_mode)?;
            let geo = geo.with_padding_applied();
            Strategy::select(&geo, Direction::Weight)?.backward_weight(&padded, dy, &geo, dw);
        } else {
            Strategy::select(&geo, Direction::Weight)?.backward_weight(x, dy, &geo, dw);
        }
        im2col::backward_bias(dy, &geo, db);
        Ok(())
    })?;
    Ok((grad_weight, grad_bias))
}

fn check_bias(shape: &[usize], geo: &ConvGeometry) -> Result<()> {
    if shape == [geo.c_out] {
        Ok(())
    } else {
        Err(Error::invalid(
            "bias",
            format!(
                "bias must have shape ({},) to match weight {}, got {}",
                geo.c_out,
                shape_str(&geo.weight_shape()),
                shape_str(shape)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Padding;
    use ndarray::{ArrayD, IxDyn};

    /// Direct 2-D convolution, the definition written as loops.
    fn naive2d(x: &ArrayD<f64>, w: &ArrayD<f64>, geo: &ConvGeometry) -> ArrayD<f64> {
        let mut out = ArrayD::zeros(IxDyn(&geo.output_shape()));
        let (cg, kg) = (geo.c_in_per_group(), geo.c_out_per_group());
        for n in 0..geo.n {
            for k in 0..geo.c_out {
                let g = k / kg;
                for oy in 0..geo.output[1] {
                    for ox in 0..geo.output[2] {
                        let mut s = 0.0;
                        for c in 0..cg {
                            for ky in 0..geo.kernel[1] {
                                for kx in 0..geo.kernel[2] {
                                    let iy = (oy * geo.stride[1] + ky * geo.dilation[1]) as isize - geo.pad_lo[1] as isize;
                                    let ix = (ox * geo.stride[2] + kx * geo.dilation[2]) as isize - geo.pad_lo[2] as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < geo.input[1] && (ix as usize) < geo.input[2] {
                                        s += x[[n, g * cg + c, iy as usize, ix as usize]] * w[[k, c, ky, kx]];
                                    }
                                }
                            }
                        }
                        out[[n, k, oy, ox]] = s;
                    }
                }
            }
        }
        out
    }

    fn filled(shape: &[usize], seed: u64) -> ArrayD<f64> {
        let len = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), testutil::filled(len, seed)).expect("length matches shape")
    }

    #[test]
    fn im2col_matches_naive_loops() {
        let cases = [
            // (N, C, H, W, K, k, stride, pad, dilation, groups)
            (2, 3, 7, 6, 4, 3, 1, 1, 1, 1),
            (1, 4, 9, 9, 4, 3, 2, 2, 2, 2),
            (2, 6, 5, 8, 6, 3, 1, 1, 1, 6),
            (1, 2, 4, 4, 3, 1, 1, 0, 1, 1),
            (1, 2, 40, 50, 3, 5, 3, 2, 1, 1),
        ];
        for &(n, c, h, w, k, ks, s, p, d, g) in &cases {
            let params = ConvParams {
                stride: vec![s; 2],
                padding: Padding::Explicit(vec![p; 2]),
                dilation: vec![d; 2],
                groups: g,
                padding_mode: PaddingMode::Zeros,
            };
            let x = filled(&[n, c, h, w], 1);
            let wt = filled(&[k, c / g, ks, ks], 2);
            let geo = params.geometry(x.shape(), wt.shape()).unwrap();
            let got = conv_forward(x.view(), wt.view(), None, &params).unwrap();
            let want = naive2d(&x, &wt, &geo);
            let err = (&got - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(err < 1e-12, "case {:?}: max error {err}", (n, c, h, w, k, ks, s, p, d, g));
        }
    }

    #[test]
    fn tiles_cover_long_outputs() {
        // A patch of 1 row gives tiles of COL_TILE_ELEMS columns; 400x400 needs two of them.
        assert_eq!(im2col::tile_cols(1, 160_000), 1 << 17);
        assert_eq!(im2col::tile_cols(1 << 20, 100), 64);
        assert_eq!(im2col::tile_cols(9, 5), 5);
        let params = ConvParams::new(2);
        let x = filled(&[1, 1, 400, 400], 3);
        let wt = filled(&[1, 1, 1, 1], 4);
        let got = conv_forward(x.view(), wt.view(), None, &params).unwrap();
        let want = &x * wt[[0, 0, 0, 0]];
        assert_eq!(got, want);
    }

    fn dot(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
        a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
    }

    /// A convolution is linear in its input and in its weight, so its backward passes are its
    /// adjoints: <dy, conv(x, w)> = <conv_backward_input(dy), x> = <conv_backward_weight(dy), w>.
    #[test]
    fn backward_is_the_adjoint_of_forward() {
        let modes = [PaddingMode::Zeros, PaddingMode::Reflect, PaddingMode::Replicate, PaddingMode::Circular];
        let cases: [(&[usize], &[usize], usize, usize, usize, usize); 6] = [
            // (input, weight, stride, padding, dilation, groups)
            (&[2, 4, 7, 6], &[6, 2, 3, 3], 1, 1, 1, 2),
            (&[1, 3, 9, 8], &[2, 3, 3, 2], 2, 2, 2, 1),
            (&[2, 4, 5, 5], &[4, 1, 3, 3], 1, 1, 1, 4),
            (&[3, 2, 11], &[3, 2, 4], 3, 1, 2, 1),
            (&[1, 2, 4, 5, 5], &[3, 2, 2, 3, 3], 1, 1, 1, 1),
            (&[2, 20, 6, 6], &[8, 20, 1, 1], 1, 0, 1, 1),
        ];
        for (i, &(xs, ws, s, p, d, g)) in cases.iter().enumerate() {
            for mode in modes {
                let dims = xs.len() - 2;
                let params = ConvParams {
                    stride: vec![s; dims],
                    padding: Padding::Explicit(vec![p; dims]),
                    dilation: vec![d; dims],
                    groups: g,
                    padding_mode: mode,
                };
                let x = filled(xs, 10 + i as u64);
                let w = filled(ws, 20 + i as u64);
                let y = conv_forward(x.view(), w.view(), None, &params).unwrap();
                let dy = filled(y.shape(), 30 + i as u64);
                let (dx, dw, db) = conv_backward(dy.view(), x.view(), w.view(), &params).unwrap();
                let lhs = dot(&dy, &y);
                assert!((lhs - dot(&dx, &x)).abs() < 1e-10 * (1.0 + lhs.abs()), "case {i} {mode}: input adjoint");
                assert!((lhs - dot(&dw, &w)).abs() < 1e-10 * (1.0 + lhs.abs()), "case {i} {mode}: weight adjoint");
                let k = ws[0];
                for kk in 0..k {
                    let want: f64 = dy.index_axis(ndarray::Axis(1), kk).sum();
                    assert!((db[[kk]] - want).abs() < 1e-10);
                }
            }
        }
    }

    #[test]
    fn direct_tasks_stay_bounded() {
        let geometry = |x: &[usize], w: &[usize]| ConvParams::new(x.len() - 2).geometry(x, w).unwrap();
        if !direct::available() {
            return;
        }
        assert_eq!(Strategy::choose(&geometry(&[2, 64, 1000], &[64, 64, 3]), Direction::Forward), Strategy::Direct);
        // One row of 64 channels x 10^6 samples would be 256 MB per task: im2col's tiles instead.
        assert_eq!(Strategy::choose(&geometry(&[1, 64, 1_000_000], &[64, 64, 3]), Direction::Forward), Strategy::Im2col);
    }

    #[test]
    fn grad_output_shape_is_checked() {
        let x = filled(&[1, 2, 5, 5], 1);
        let w = filled(&[3, 2, 3, 3], 2);
        let dy = filled(&[1, 3, 4, 4], 3);
        let err = conv_backward(dy.view(), x.view(), w.view(), &ConvParams::new(2)).unwrap_err();
        assert_eq!(err.arg(), "grad_output");
    }

    #[test]
    fn bias_shape_is_checked() {
        let x = filled(&[1, 2, 4, 4], 1);
        let wt = filled(&[3, 2, 3, 3], 2);
        let b = ndarray::ArrayD::<f64>::zeros(IxDyn(&[2]));
        let err = conv_forward(x.view(), wt.view(), Some(b.view()), &ConvParams::new(2)).unwrap_err();
        assert_eq!(err.arg(), "bias");
    }
}
