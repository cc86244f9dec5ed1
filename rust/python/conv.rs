//! Bindings of `conv1d/2d/3d`.

use super::args::{compute, count, dispatch, expect_kind, flag, ints_or, kind_of, padding, padding_mode, readonly, Arg, PyReal};
use super::{add_batch, batch_grad, drop_batch};
use crate::conv::{conv_backward, conv_backward_weight, conv_forward, Direction, Strategy};
use crate::params::ConvParams;
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

fn conv_params(
    dims: usize,
    stride: &Arg<'_>,
    pad: &Arg<'_>,
    dilation: &Arg<'_>,
    groups: &Arg<'_>,
    mode: &Arg<'_>,
) -> PyResult<ConvParams> {
    Ok(ConvParams {
        stride: ints_or(stride, "stride", dims, 1, 1)?,
        padding: padding(pad, dims)?,
        dilation: ints_or(dilation, "dilation", dims, 1, 1)?,
        groups: count(groups, "groups", 1)?,
        padding_mode: padding_mode(mode)?,
    })
}

fn conv_typed<'py, T: PyReal>(
    py: Python<'py>,
    dims: usize,
    input: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    params: &ConvParams,
) -> PyResult<Bound<'py, PyAny>> {
    let x = readonly::<T>(input, "input")?;
    let w = readonly::<T>(weight, "weight")?;
    let b = bias.map(|b| readonly::<T>(b, "bias")).transpose()?;
    let (x, unbatched) = add_batch(x.as_array(), dims);
    let (w, b) = (w.as_array(), b.as_ref().map(|b| b.as_array()));
    let out = compute(py, || conv_forward(x, w, b, params))?;
    Ok(drop_batch(out, unbatched).into_pyarray(py).into_any())
}

#[allow(clippy::too_many_arguments)]
fn conv_nd<'py>(
    py: Python<'py>,
    dims: usize,
    input: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    stride: &Arg<'py>,
    pad: &Arg<'py>,
    dilation: &Arg<'py>,
    groups: &Arg<'py>,
    padding_mode: &Arg<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let kind = kind_of(input, "input")?;
    expect_kind(weight, "weight", kind, "input")?;
    if let Some(b) = bias.filter(|b| !b.is_none()) {
        expect_kind(b, "bias", kind, "input")?;
    }
    let bias = bias.filter(|b| !b.is_none());
    let params = conv_params(dims, stride, pad, dilation, groups, padding_mode)?;
    dispatch!(kind, conv_typed(py, dims, input, weight, bias, &params))
}

macro_rules! conv_fn {
    ($name:ident, $dims:literal, $sig:literal) => {
        /// Convolution over a batch of channels-first volumes; see `rconv.functional`.
        #[pyfunction]
        #[pyo3(signature = (input, weight, bias=None, stride=Arg::Missing, padding=Arg::Missing, dilation=Arg::Missing, groups=Arg::Missing, padding_mode=Arg::Missing), text_signature = $sig)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name<'py>(
            py: Python<'py>,
            input: &Bound<'py, PyAny>,
            weight: &Bound<'py, PyAny>,
            bias: Option<&Bound<'py, PyAny>>,
            stride: Arg<'py>,
            padding: Arg<'py>,
            dilation: Arg<'py>,
            groups: Arg<'py>,
            padding_mode: Arg<'py>,
        ) -> PyResult<Bound<'py, PyAny>> {
            conv_nd(py, $dims, input, weight, bias, &stride, &padding, &dilation, &groups, &padding_mode)
        }
    };
}

conv_fn!(conv1d, 1, "(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode='zeros')");
conv_fn!(conv2d, 2, "(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode='zeros')");
conv_fn!(conv3d, 3, "(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode='zeros')");

fn conv_backward_typed<'py, T: PyReal>(
    py: Python<'py>,
    dims: usize,
    grad_output: &Bound<'py, PyAny>,
    input: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    params: &ConvParams,
    input_grad: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let g = readonly::<T>(grad_output, "grad_output")?;
    let x = readonly::<T>(input, "input")?;
    let w = readonly::<T>(weight, "weight")?;
    let (x, unbatched) = add_batch(x.as_array(), dims);
    let g = batch_grad(g.as_array(), dims, unbatched)?;
    let w = w.as_array();
    let (dx, dw, db) = if input_grad {
        let (dx, dw, db) = compute(py, || conv_backward(g, x, w, params))?;
        (drop_batch(dx, unbatched).into_pyarray(py).into_any(), dw, db)
    } else {
        let (dw, db) = compute(py, || conv_backward_weight(g, x, w.shape(), params))?;
        (py.None().into_bound(py), dw, db)
    };
    PyTuple::new(py, [dx, dw.into_pyarray(py).into_any(), db.into_pyarray(py).into_any()])
}

#[allow(clippy::too_many_arguments)]
fn conv_backward_nd<'py>(
    py: Python<'py>,
    dims: usize,
    grad_output: &Bound<'py, PyAny>,
    input: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    stride: &Arg<'py>,
    pad: &Arg<'py>,
    dilation: &Arg<'py>,
    groups: &Arg<'py>,
    padding_mode: &Arg<'py>,
    input_grad: &Arg<'py>,
) -> PyResult<Bound<'py, PyTuple>> {
    let kind = kind_of(input, "input")?;
    expect_kind(grad_output, "grad_output", kind, "input")?;
    expect_kind(weight, "weight", kind, "input")?;
    let params = conv_params(dims, stride, pad, dilation, groups, padding_mode)?;
    let input_grad = flag(input_grad, "input_grad", true)?;
    dispatch!(kind, conv_backward_typed(py, dims, grad_output, input, weight, &params, input_grad))
}

macro_rules! conv_backward_fn {
    ($name:ident, $dims:literal) => {
        /// Gradients of a convolution: `(grad_input, grad_weight, grad_bias)`; see `rconv.functional`.
        /// With `input_grad=False`, grad_input is not computed and is returned as None (a first
        /// layer, whose input needs no gradient, saves that work).
        #[pyfunction]
        #[pyo3(signature = (grad_output, input, weight, stride=Arg::Missing, padding=Arg::Missing, dilation=Arg::Missing, groups=Arg::Missing, padding_mode=Arg::Missing, *, input_grad=Arg::Missing),
               text_signature = "(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1, padding_mode='zeros', *, input_grad=True)")]
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name<'py>(
            py: Python<'py>,
            grad_output: &Bound<'py, PyAny>,
            input: &Bound<'py, PyAny>,
            weight: &Bound<'py, PyAny>,
            stride: Arg<'py>,
            padding: Arg<'py>,
            dilation: Arg<'py>,
            groups: Arg<'py>,
            padding_mode: Arg<'py>,
            input_grad: Arg<'py>,
        ) -> PyResult<Bound<'py, PyTuple>> {
            conv_backward_nd(py, $dims, grad_output, input, weight, &stride, &padding, &dilation, &groups, &padding_mode, &input_grad)
        }
    };
}

conv_backward_fn!(conv1d_backward, 1);
conv_backward_fn!(conv2d_backward, 2);
conv_backward_fn!(conv3d_backward, 3);

/// Makes every later convolution compute `direction` ('forward', 'input', 'weight') with
/// `strategy` ('im2col', 'depthwise', 'winograd', 'direct'; None: the automatic choice), in
/// every thread. A call the forced strategy does not serve raises ValueError. For tests.
#[pyfunction]
fn _force_conv_strategy(direction: &str, strategy: Option<&str>) -> PyResult<()> {
    let dir = direction.parse::<Direction>()?;
    let strategy = strategy.map(str::parse::<Strategy>).transpose()?;
    Strategy::force(dir, strategy);
    Ok(())
}

/// `{direction: [strategy, ...]}`: the strategies that serve each direction of a convolution
/// of `input_shape` (batched) by `weight_shape` with these arguments, on this CPU.
#[pyfunction]
#[pyo3(signature = (input_shape, weight_shape, stride=Arg::Missing, padding=Arg::Missing, dilation=Arg::Missing, groups=Arg::Missing, padding_mode=Arg::Missing))]
#[allow(clippy::too_many_arguments)]
fn _conv_strategies<'py>(
    py: Python<'py>,
    input_shape: Vec<usize>,
    weight_shape: Vec<usize>,
    stride: Arg<'py>,
    padding: Arg<'py>,
    dilation: Arg<'py>,
    groups: Arg<'py>,
    padding_mode: Arg<'py>,
) -> PyResult<Bound<'py, PyDict>> {
    let dims = weight_shape.len().saturating_sub(2);
    let params = conv_params(dims, &stride, &padding, &dilation, &groups, &padding_mode)?;
    let out = PyDict::new(py);
    for (dir, strategies) in crate::conv::strategies(&input_shape, &weight_shape, &params)? {
        out.set_item(dir.name(), strategies.iter().map(|s| s.name()).collect::<Vec<_>>())?;
    }
    Ok(out)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_force_conv_strategy, m)?)?;
    m.add_function(wrap_pyfunction!(_conv_strategies, m)?)?;
    m.add_function(wrap_pyfunction!(conv1d, m)?)?;
    m.add_function(wrap_pyfunction!(conv2d, m)?)?;
    m.add_function(wrap_pyfunction!(conv3d, m)?)?;
    m.add_function(wrap_pyfunction!(conv1d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(conv2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(conv3d_backward, m)?)?;
    Ok(())
}
