//! Shapes, padding and output sizes: the arithmetic every kernel relies on, and the validation of
//! every argument, done once before any parallel work starts.
//!
//! Internally every operation is 3-D: a 1-D length L is the volume (1, 1, L) and a 2-D image
//! (H, W) is (1, H, W). Kernels then have one code path for all three ranks.

use crate::error::{check_shape_fits, shape_str, Error, Result};
use std::fmt;
use std::str::FromStr;

/// The most spatial dimensions an operation has.
pub const MAX_DIMS: usize = 3;

/// Spatial sizes, padded at the front with 1 (or 0 for paddings) to three dimensions.
pub type Dims3 = [usize; MAX_DIMS];

/// How much zero (or mode) padding a convolution adds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Padding {
    /// The same amount at both ends of each spatial dimension.
    Explicit(Vec<usize>),
    /// No padding.
    Valid,
    /// Output size = ceil(input / stride): the padding that needs, split with the odd element at
    /// the end (PyTorch's rule for stride 1, Keras's for larger strides).
    Same,
}

/// What the padded border holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingMode {
    Zeros,
    /// Mirror without repeating the edge: `[c b | a b c d | c b]`.
    Reflect,
    /// Repeat the edge: `[a a | a b c d | d d]`.
    Replicate,
    /// Wrap around: `[c d | a b c d | a b]`.
    Circular,
}

impl FromStr for PaddingMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "zeros" => Ok(PaddingMode::Zeros),
            "reflect" => Ok(PaddingMode::Reflect),
            "replicate" => Ok(PaddingMode::Replicate),
            "circular" => Ok(PaddingMode::Circular),
            other => Err(Error::invalid(
                "padding_mode",
                format!("padding_mode must be 'zeros', 'reflect', 'replicate' or 'circular', got '{other}'"),
            )),
        }
    }
}

impl fmt::Display for PaddingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PaddingMode::Zeros => "zeros",
            PaddingMode::Reflect => "reflect",
            PaddingMode::Replicate => "replicate",
            PaddingMode::Circular => "circular",
        })
    }
}

impl FromStr for Padding {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "valid" => Ok(Padding::Valid),
            "same" => Ok(Padding::Same),
            other => Err(Error::invalid(
                "padding",
                format!("padding must be an int, a tuple, 'valid' or 'same', got '{other}'"),
            )),
        }
    }
}

/// Stride, padding, dilation and groups of a 1-, 2- or 3-D convolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: Vec<usize>,
    pub padding: Padding,
    pub dilation: Vec<usize>,
    pub groups: usize,
    pub padding_mode: PaddingMode,
}

impl ConvParams {
    /// PyTorch's defaults for a `dims`-D convolution: stride 1, no padding, dilation 1, 1 group.
    pub fn new(dims: usize) -> Self {
        ConvParams {
            stride: vec![1; dims],
            padding: Padding::Explicit(vec![0; dims]),
            dilation: vec![1; dims],
            groups: 1,
            padding_mode: PaddingMode::Zeros,
        }
    }

    /// Number of spatial dimensions.
    pub fn dims(&self) -> usize {
        self.stride.len()
    }

    /// Validates the arguments against the input shape `(N, C, *spatial)` and weight shape
    /// `(K, C / groups, *kernel)` and works out every size the kernels need.
    pub fn geometry(&self, input: &[usize], weight: &[usize]) -> Result<ConvGeometry> {
        let dims = self.dims();
        check_dims(dims)?;
        check_len("dilation", &self.dilation, dims)?;
        check_positive("stride", &self.stride)?;
        check_positive("dilation", &self.dilation)?;
        if self.groups == 0 {
            return Err(Error::invalid("groups", "groups must be at least 1, got 0"));
        }
        check_input_rank(input, dims, "convolution")?;
        if weight.len() != dims + 2 {
            return Err(Error::invalid(
                "weight",
                format!(
                    "weight must have shape (out_channels, in_channels / groups, {}) for a {dims}-D convolution, got {}",
                    spatial_names(dims, "k"),
                    shape_str(weight)
                ),
            ));
        }
        let (n, c_in, c_out, groups) = (input[0], input[1], weight[0], self.groups);
        if c_in % groups != 0 || c_out % groups != 0 {
            return Err(Error::invalid(
                "groups",
                format!(
                    "groups={groups} must divide both the input channels ({c_in}, input shape {}) and the output channels ({c_out}, weight shape {})",
                    shape_str(input),
                    shape_str(weight)
                ),
            ));
        }
        let expected = weight[1].checked_mul(groups);
        if expected != Some(c_in) {
            return Err(Error::invalid(
                "weight",
                format!(
                    "weight of shape {} expects {} input channels (weight.shape[1] * groups = {} * {groups}), but input of shape {} has {c_in}",
                    shape_str(weight),
                    expected.map_or("more".to_string(), |e| e.to_string()),
                    weight[1],
                    shape_str(input)
                ),
            ));
        }
        let in_sp = &input[2..];
        let k_sp = &weight[2..];
        if k_sp.contains(&0) {
            return Err(Error::invalid(
                "weight",
                format!("weight of shape {} has an empty kernel", shape_str(weight)),
            ));
        }
        let (mut lo, mut hi) = (vec![0; dims], vec![0; dims]);
        match &self.padding {
            Padding::Valid => {}
            Padding::Explicit(p) => {
                check_len("padding", p, dims)?;
                lo.clone_from(p);
                hi.clone_from(p);
            }
            Padding::Same => {
                for d in 0..dims {
                    let out = in_sp[d].div_ceil(self.stride[d]);
                    let extent = extent(k_sp[d], self.dilation[d]).ok_or_else(|| dilation_too_large(&self.dilation, weight))?;
                    let needed = (out.saturating_sub(1))
                        .checked_mul(self.stride[d])
                        .and_then(|v| v.checked_add(extent))
                        .ok_or_else(|| dilation_too_large(&self.dilation, weight))?;
                    let total = needed.saturating_sub(in_sp[d]);
                    lo[d] = total / 2;
                    hi[d] = total - lo[d];
                }
            }
        }
        for d in 0..dims {
            let (size, pad) = (in_sp[d], lo[d].max(hi[d]));
            let ok = match self.padding_mode {
                PaddingMode::Zeros => true,
                PaddingMode::Replicate => pad == 0 || size > 0,
                PaddingMode::Reflect => pad < size,
                PaddingMode::Circular => pad <= size,
            };
            if !ok {
                let rule = match self.padding_mode {
                    PaddingMode::Reflect => "smaller than",
                    PaddingMode::Circular => "at most",
                    _ => "used with a non-empty input, not with",
                };
                return Err(Error::invalid(
                    "padding",
                    format!(
                        "padding {pad} in spatial dimension {d} must be {rule} the input size {size} for padding_mode='{}' (input shape {})",
                        self.padding_mode,
                        shape_str(input)
                    ),
                ));
            }
        }
        let mut output = vec![0; dims];
        let mut stride = self.stride.clone();
        for d in 0..dims {
            let padded = in_sp[d]
                .checked_add(lo[d])
                .and_then(|v| v.checked_add(hi[d]))
                .ok_or_else(|| too_large("padding", input))?;
            let ext = extent(k_sp[d], self.dilation[d]).ok_or_else(|| dilation_too_large(&self.dilation, weight))?;
            if ext > padded {
                let exts: Vec<usize> = (0..dims).map(|i| extent(k_sp[i], self.dilation[i]).unwrap_or(usize::MAX)).collect();
                let pads: Vec<usize> = (0..dims).map(|i| in_sp[i].saturating_add(lo[i]).saturating_add(hi[i])).collect();
                return Err(Error::invalid(
                    "weight",
                    format!(
                        "kernel of weight {} spans {} with dilation, larger than the padded input {} (input shape {})",
                        shape_str(weight),
                        shape_str(&exts),
                        shape_str(&pads),
                        shape_str(input)
                    ),
                ));
            }
            output[d] = (padded - ext) / self.stride[d] + 1;
            // A stride past the padded input leaves one output position, where the stride
            // multiplies nothing: the kernels get the padded size instead (the same result),
            // so none of them multiplies or allocates by a stride of up to usize::MAX (a stride
            // of 2**63 in H made a 3x3 conv2d write out of bounds).
            stride[d] = stride[d].min(padded);
        }
        check_shape_fits(&shape_of(n, c_out, &to3(&output, 1), dims), "padding")?;
        Ok(ConvGeometry {
            dims,
            n,
            c_in,
            c_out,
            groups,
            input: to3(in_sp, 1),
            kernel: to3(k_sp, 1),
            stride: to3(&stride, 1),
            dilation: to3(&self.dilation, 1),
            pad_lo: to3(&lo, 0),
            pad_hi: to3(&hi, 0),
            output: to3(&output, 1),
        })
    }
}

/// Everything a convolution kernel needs, validated. Spatial arrays are 3-D (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub dims: usize,
    pub n: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub groups: usize,
    pub input: Dims3,
    pub kernel: Dims3,
    /// At most the padded input size (a larger stride gives one output position, the same).
    pub stride: Dims3,
    pub dilation: Dims3,
    pub pad_lo: Dims3,
    pub pad_hi: Dims3,
    pub output: Dims3,
}

impl ConvGeometry {
    /// `(N, K, *output)`.
    pub fn output_shape(&self) -> Vec<usize> {
        shape_of(self.n, self.c_out, &self.output, self.dims)
    }

    /// `(N, C, *input)`.
    pub fn input_shape(&self) -> Vec<usize> {
        shape_of(self.n, self.c_in, &self.input, self.dims)
    }

    /// `(K, C / groups, *kernel)`.
    pub fn weight_shape(&self) -> Vec<usize> {
        shape_of(self.c_out, self.c_in / self.groups, &self.kernel, self.dims)
    }

    pub fn c_in_per_group(&self) -> usize {
        self.c_in / self.groups
    }

    pub fn c_out_per_group(&self) -> usize {
        self.c_out / self.groups
    }

    /// Elements of one kernel window: kd * kh * kw.
    pub fn kernel_volume(&self) -> usize {
        self.kernel.iter().product()
    }

    /// Elements of one output feature map.
    pub fn output_len(&self) -> usize {
        self.output.iter().product()
    }

    /// Elements of one input channel.
    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    pub fn has_padding(&self) -> bool {
        self.pad_lo.iter().chain(&self.pad_hi).any(|&p| p > 0)
    }

    /// The same convolution applied to an input that already carries its padding.
    pub fn with_padding_applied(&self) -> ConvGeometry {
        let mut g = self.clone();
        for d in 0..MAX_DIMS {
            g.input[d] += g.pad_lo[d] + g.pad_hi[d];
        }
        g.pad_lo = [0; MAX_DIMS];
        g.pad_hi = [0; MAX_DIMS];
        g
    }

    /// Multiply-adds times two: `2 * N * K * out_len * (C / groups) * kernel volume`.
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.c_out * self.output_len()) as f64 * (self.c_in_per_group() * self.kernel_volume()) as f64
    }
}

/// Kernel size, stride, padding and dilation of a max or average pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolParams {
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub padding: Vec<usize>,
    pub dilation: Vec<usize>,
    pub ceil_mode: bool,
    /// Average pooling only: divide every window's sum by this (PyTorch's `divisor_override`:
    /// nonzero, negative allowed) instead of by the window's size.
    pub divisor_override: Option<i64>,
}

impl PoolParams {
    /// PyTorch's defaults: stride = kernel size, no padding, dilation 1, floor mode.
    pub fn new(kernel: Vec<usize>) -> Self {
        let dims = kernel.len();
        PoolParams { stride: kernel.clone(), kernel, padding: vec![0; dims], dilation: vec![1; dims], ceil_mode: false, divisor_override: None }
    }

    pub fn dims(&self) -> usize {
        self.kernel.len()
    }

    /// Validates against the input shape `(N, C, *spatial)` and works out the output size with
    /// PyTorch's rule (including `ceil_mode`'s "last window starts inside the input" clause).
    pub fn geometry(&self, input: &[usize]) -> Result<PoolGeometry> {
        let dims = self.dims();
        check_dims(dims)?;
        check_len("stride", &self.stride, dims)?;
        check_len("padding", &self.padding, dims)?;
        check_len("dilation", &self.dilation, dims)?;
        check_positive("kernel_size", &self.kernel)?;
        check_positive("stride", &self.stride)?;
        check_positive("dilation", &self.dilation)?;
        check_input_rank(input, dims, "pooling")?;
        if self.divisor_override == Some(0) {
            return Err(Error::invalid("divisor_override", "divisor_override must not be zero (as in PyTorch)"));
        }
        for d in 0..dims {
            if self.padding[d] > self.kernel[d] / 2 {
                return Err(Error::invalid(
                    "padding",
                    format!(
                        "padding {} must be at most half of kernel_size {} (padding {}, kernel_size {})",
                        self.padding[d],
                        self.kernel[d],
                        shape_str(&self.padding),
                        shape_str(&self.kernel)
                    ),
                ));
            }
        }
        let in_sp = &input[2..];
        let mut output = vec![0; dims];
        for d in 0..dims {
            let out = pool_output_size(in_sp[d], self.kernel[d], self.stride[d], self.padding[d], self.dilation[d], self.ceil_mode);
            match out {
                Some(o) if o >= 1 => output[d] = o,
                _ => {
                    return Err(Error::invalid(
                        "kernel_size",
                        format!(
                            "kernel_size {} (dilation {}, padding {}) does not fit the input of shape {}: the output would be empty",
                            shape_str(&self.kernel),
                            shape_str(&self.dilation),
                            shape_str(&self.padding),
                            shape_str(input)
                        ),
                    ))
                }
            }
        }
        // Each output size is at most the input's plus one (padding <= kernel_size / 2).
        check_shape_fits(&shape_of(input[0], input[1], &to3(&output, 1), dims), "padding")?;
        Ok(PoolGeometry {
            dims,
            n: input[0],
            c: input[1],
            input: to3(in_sp, 1),
            kernel: to3(&self.kernel, 1),
            stride: to3(&self.stride, 1),
            pad: to3(&self.padding, 0),
            dilation: to3(&self.dilation, 1),
            output: to3(&output, 1),
        })
    }
}

/// PyTorch's pooling output size; `None` when it is not positive or overflows.
pub fn pool_output_size(input: usize, kernel: usize, stride: usize, pad: usize, dilation: usize, ceil_mode: bool) -> Option<usize> {
    let ext = extent(kernel, dilation)? as i128;
    let (input, stride, pad) = (input as i128, stride as i128, pad as i128);
    let mut span = input + 2 * pad - ext;
    if ceil_mode {
        span += stride - 1;
    }
    let mut out = span.div_euclid(stride) + 1;
    if ceil_mode && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    usize::try_from(out).ok().filter(|&o| o > 0)
}

/// Everything a pooling kernel needs, validated. Spatial arrays are 3-D.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub dims: usize,
    pub n: usize,
    pub c: usize,
    pub input: Dims3,
    pub kernel: Dims3,
    pub stride: Dims3,
    pub pad: Dims3,
    pub dilation: Dims3,
    pub output: Dims3,
}

impl PoolGeometry {
    pub fn output_shape(&self) -> Vec<usize> {
        shape_of(self.n, self.c, &self.output, self.dims)
    }

    pub fn input_shape(&self) -> Vec<usize> {
        shape_of(self.n, self.c, &self.input, self.dims)
    }

    pub fn input_len(&self) -> usize {
        self.input.iter().product()
    }

    pub fn output_len(&self) -> usize {
        self.output.iter().product()
    }
}

/// The output size of an adaptive pool: validated `(N, C, *output_size)` geometry. `None` in
/// `output_size` keeps that input size.
pub fn adaptive_geometry(input: &[usize], output_size: &[Option<usize>]) -> Result<PoolGeometry> {
    let dims = output_size.len();
    check_dims(dims)?;
    check_input_rank(input, dims, "adaptive pooling")?;
    let in_sp = &input[2..];
    if in_sp.contains(&0) {
        return Err(Error::invalid(
            "input",
            format!("adaptive pooling needs a non-empty input in every spatial dimension, got shape {}", shape_str(input)),
        ));
    }
    let out: Vec<usize> = output_size.iter().zip(in_sp).map(|(o, &i)| o.unwrap_or(i)).collect();
    check_shape_fits(&shape_of(input[0], input[1], &to3(&out, 1), dims), "output_size")?;
    Ok(PoolGeometry {
        dims,
        n: input[0],
        c: input[1],
        input: to3(in_sp, 1),
        kernel: [1; MAX_DIMS],
        stride: [1; MAX_DIMS],
        pad: [0; MAX_DIMS],
        dilation: [1; MAX_DIMS],
        output: to3(&out, 1),
    })
}

/// The window `[start, end)` of adaptive-pool output `i` of `out` over an input of size `size`.
#[inline]
pub fn adaptive_window(i: usize, out: usize, size: usize) -> (usize, usize) {
    // In u128: `i * size` passes usize::MAX when both are large (an output larger than the
    // input); the bounds themselves are at most `size`.
    let (i, out, size) = (i as u128, out as u128, size as u128);
    let start = (i * size) / out;
    let end = ((i + 1) * size).div_ceil(out);
    (start as usize, end as usize)
}

/// Span of a dilated kernel: `dilation * (k - 1) + 1`.
fn extent(kernel: usize, dilation: usize) -> Option<usize> {
    dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)
}

fn too_large(arg: &'static str, shape: &[usize]) -> Error {
    Error::invalid(arg, format!("{arg} is too large for an input of shape {}", shape_str(shape)))
}

/// The span of a dilated kernel, `dilation * (k - 1) + 1`, does not fit `usize`.
fn dilation_too_large(dilation: &[usize], weight: &[usize]) -> Error {
    Error::invalid(
        "dilation",
        format!("dilation {} is too large: the kernel of weight {} would span more than usize::MAX", shape_str(dilation), shape_str(weight)),
    )
}

fn check_dims(dims: usize) -> Result<()> {
    if (1..=MAX_DIMS).contains(&dims) {
        Ok(())
    } else {
        Err(Error::invalid("input", format!("operations have 1 to 3 spatial dimensions, got {dims}")))
    }
}

fn check_len(arg: &'static str, values: &[usize], dims: usize) -> Result<()> {
    if values.len() == dims {
        Ok(())
    } else {
        Err(Error::invalid(arg, format!("{arg} must have {dims} values for a {dims}-D operation, got {}", shape_str(values))))
    }
}

fn check_positive(arg: &'static str, values: &[usize]) -> Result<()> {
    if values.contains(&0) {
        Err(Error::invalid(arg, format!("{arg} must be at least 1 in every dimension, got {}", shape_str(values))))
    } else {
        Ok(())
    }
}

fn check_input_rank(input: &[usize], dims: usize, what: &str) -> Result<()> {
    if input.len() != dims + 2 {
        return Err(Error::invalid(
            "input",
            format!(
                "input must have shape (N, C, {}) for {dims}-D {what} (or (C, {}) without a batch), got {}",
                spatial_names(dims, ""),
                spatial_names(dims, ""),
                shape_str(input)
            ),
        ));
    }
    if input[1] == 0 {
        return Err(Error::invalid("input", format!("input of shape {} has no channels", shape_str(input))));
    }
    Ok(())
}

fn spatial_names(dims: usize, prefix: &str) -> String {
    let names = ["D", "H", "W"];
    let names = if dims == 1 { vec!["L"] } else { names[MAX_DIMS - dims..].to_vec() };
    names.iter().map(|n| format!("{prefix}{n}")).collect::<Vec<_>>().join(", ")
}

fn to3(values: &[usize], fill: usize) -> Dims3 {
    let mut out = [fill; MAX_DIMS];
    out[MAX_DIMS - values.len()..].copy_from_slice(values);
    out
}

fn shape_of(a: usize, b: usize, spatial: &Dims3, dims: usize) -> Vec<usize> {
    let mut s = vec![a, b];
    s.extend_from_slice(&spatial[MAX_DIMS - dims..]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv2d(stride: usize, padding: Padding, dilation: usize) -> ConvParams {
        ConvParams { stride: vec![stride; 2], padding, dilation: vec![dilation; 2], groups: 1, padding_mode: PaddingMode::Zeros }
    }

    #[test]
    fn conv_output_size_matches_formula() {
        let g = conv2d(2, Padding::Explicit(vec![1, 1]), 1).geometry(&[2, 3, 7, 8], &[4, 3, 3, 3]).unwrap();
        // (7 + 2 - 3) / 2 + 1 = 4, (8 + 2 - 3) / 2 + 1 = 4
        assert_eq!(g.output_shape(), vec![2, 4, 4, 4]);
        assert_eq!(g.input, [1, 7, 8]);
        let g = conv2d(1, Padding::Valid, 2).geometry(&[1, 1, 9, 9], &[1, 1, 3, 3]).unwrap();
        assert_eq!(g.output_shape(), vec![1, 1, 5, 5]);
    }

    #[test]
    fn same_padding_puts_the_odd_element_at_the_end() {
        let g = conv2d(1, Padding::Same, 1).geometry(&[1, 1, 5, 5], &[1, 1, 4, 4]).unwrap();
        assert_eq!((g.pad_lo[1], g.pad_hi[1]), (1, 2));
        assert_eq!(g.output_shape(), vec![1, 1, 5, 5]);
        // Keras rule for stride 2: out = ceil(7 / 2) = 4, total = 3*2 + 3 - 7 = 2.
        let g = conv2d(2, Padding::Same, 1).geometry(&[1, 1, 7, 7], &[1, 1, 3, 3]).unwrap();
        assert_eq!(g.output_shape(), vec![1, 1, 4, 4]);
        assert_eq!((g.pad_lo[2], g.pad_hi[2]), (1, 1));
        let g = conv2d(2, Padding::Same, 1).geometry(&[1, 1, 8, 8], &[1, 1, 3, 3]).unwrap();
        assert_eq!(g.output_shape(), vec![1, 1, 4, 4]);
        assert_eq!((g.pad_lo[2], g.pad_hi[2]), (0, 1));
    }

    #[test]
    fn strides_past_the_padded_input_reach_the_kernels_clamped() {
        let g = conv2d(usize::MAX, Padding::Explicit(vec![1, 1]), 1).geometry(&[2, 3, 6, 6], &[4, 3, 3, 3]).unwrap();
        assert_eq!(g.output_shape(), vec![2, 4, 1, 1]);
        assert_eq!(g.stride, [1, 8, 8]);
        let g = conv2d(3, Padding::Valid, 1).geometry(&[2, 3, 7, 7], &[4, 3, 3, 3]).unwrap();
        assert_eq!((g.output_shape(), g.stride), (vec![2, 4, 2, 2], [1, 3, 3]));
    }

    #[test]
    fn bad_conv_arguments_name_themselves() {
        let p = conv2d(1, Padding::Valid, 1);
        assert_eq!(p.geometry(&[1, 3, 5], &[1, 3, 3, 3]).unwrap_err().arg(), "input");
        assert_eq!(p.geometry(&[1, 3, 5, 5], &[1, 2, 3, 3]).unwrap_err().arg(), "weight");
        assert_eq!(p.geometry(&[1, 3, 2, 2], &[1, 3, 3, 3]).unwrap_err().arg(), "weight");
        assert_eq!(conv2d(0, Padding::Valid, 1).geometry(&[1, 3, 5, 5], &[1, 3, 3, 3]).unwrap_err().arg(), "stride");
        assert_eq!(conv2d(1, Padding::Valid, 0).geometry(&[1, 3, 5, 5], &[1, 3, 3, 3]).unwrap_err().arg(), "dilation");
        let mut g = p.clone();
        g.groups = 2;
        assert_eq!(g.geometry(&[1, 3, 5, 5], &[2, 1, 3, 3]).unwrap_err().arg(), "groups");
        let mut r = conv2d(1, Padding::Explicit(vec![3, 3]), 1);
        r.padding_mode = PaddingMode::Reflect;
        assert_eq!(r.geometry(&[1, 1, 3, 3], &[1, 1, 3, 3]).unwrap_err().arg(), "padding");
        r.padding_mode = PaddingMode::Circular;
        assert!(r.geometry(&[1, 1, 3, 3], &[1, 1, 3, 3]).is_ok());
        let huge = conv2d(1, Padding::Explicit(vec![usize::MAX / 2, 0]), 1);
        assert!(huge.geometry(&[1, 1, 3, 3], &[1, 1, 3, 3]).is_err());
        // An empty batch whose output would have more elements than an array can hold.
        let padded = conv2d(1, Padding::Explicit(vec![1 << 40, 1 << 40]), 1);
        assert_eq!(padded.geometry(&[0, 1, 3, 3], &[1, 1, 3, 3]).unwrap_err().arg(), "padding");
        // The kernel's span overflows: the dilation is at fault.
        assert_eq!(conv2d(1, Padding::Valid, usize::MAX / 2 + 1).geometry(&[1, 1, 3, 3], &[1, 1, 3, 3]).unwrap_err().arg(), "dilation");
        assert_eq!(conv2d(1, Padding::Same, usize::MAX / 2 + 1).geometry(&[1, 1, 3, 3], &[1, 1, 3, 3]).unwrap_err().arg(), "dilation");
        // The error message of a kernel larger than the padded input adds up huge paddings
        // without overflowing.
        let lopsided = conv2d(1, Padding::Explicit(vec![0, usize::MAX / 2]), 1);
        assert_eq!(lopsided.geometry(&[1, 1, 1, 3], &[1, 1, 3, 3]).unwrap_err().arg(), "weight");
    }

    #[test]
    fn pool_output_size_follows_pytorch() {
        assert_eq!(pool_output_size(112, 2, 2, 0, 1, false), Some(56));
        assert_eq!(pool_output_size(112, 3, 2, 1, 1, false), Some(56));
        assert_eq!(pool_output_size(5, 2, 2, 0, 1, false), Some(2));
        assert_eq!(pool_output_size(5, 2, 2, 0, 1, true), Some(3));
        // ceil mode may not start a window in the right padding: in 6, k 2, s 2, p 1.
        assert_eq!(pool_output_size(6, 2, 2, 1, 1, true), Some(4));
        assert_eq!(pool_output_size(5, 3, 3, 1, 1, true), Some(2));
        assert_eq!(pool_output_size(2, 3, 1, 0, 1, false), None);
    }

    #[test]
    fn pool_padding_is_at_most_half_the_kernel() {
        let mut p = PoolParams::new(vec![3, 3]);
        p.padding = vec![2, 1];
        assert_eq!(p.geometry(&[1, 1, 8, 8]).unwrap_err().arg(), "padding");
    }

    #[test]
    fn adaptive_windows_cover_the_input() {
        assert_eq!(adaptive_window(0, 3, 7), (0, 3));
        assert_eq!(adaptive_window(1, 3, 7), (2, 5));
        assert_eq!(adaptive_window(2, 3, 7), (4, 7));
        let g = adaptive_geometry(&[2, 3, 7, 9], &[Some(3), None]).unwrap();
        assert_eq!(g.output_shape(), vec![2, 3, 3, 9]);
    }
}
