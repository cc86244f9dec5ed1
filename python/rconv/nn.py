"""Layers with the names, arguments, parameter names and initialisation of ``torch.nn``.

A layer is a small class whose ``forward`` makes one native call (:mod:`rconv.functional`) and
keeps what its ``backward`` needs; ``backward(grad_output)`` returns the gradient with respect
to the layer's input and adds the parameter gradients into each :class:`Parameter`'s ``.grad``.
There is no autograd tape: a :class:`Sequential` runs its layers' ``backward`` in reverse order.

Parameters are NumPy arrays (float32 by default) wrapped in :class:`Parameter`. The default
initialisation equals PyTorch's: weights ``U(-b, b)`` with ``b = 1 / sqrt(fan_in)``
(``kaiming_uniform_(a=sqrt(5))``), biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. The random
numbers come from a NumPy ``Generator``: pass ``rng=`` to a layer, or call :func:`manual_seed`
to reset the module-level default generator that every layer built without ``rng`` draws from.

``state_dict()`` keys and shapes equal PyTorch's for the same model (``"0.weight"``,
``"0.bias"``, ...), so weights move both ways as NumPy arrays::

    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    model.load_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})

Examples
--------
>>> import numpy as np, rconv
>>> from rconv import nn
>>> nn.manual_seed(0)
>>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
...                       nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
>>> x = np.random.rand(8, 1, 28, 28).astype(np.float32)
>>> y = np.arange(8) % 10
>>> loss_fn = nn.CrossEntropyLoss()
>>> loss = loss_fn(model(x), y)          # float
>>> model.zero_grad()
>>> _ = model.backward(loss_fn.backward())
>>> model[0].weight.grad.shape
(4, 1, 3, 3)
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict, namedtuple
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import functional as F
from ._args import check_array_size, check_bool, check_dtype, check_float, check_int, check_path

__all__ = [
    "manual_seed",
    "default_generator",
    "Parameter",
    "Module",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "ReLU",
    "Flatten",
    "Linear",
    "Dropout",
    "Sequential",
    "CrossEntropyLoss",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# ----------------------------------------------------------------------------------------------
# random numbers

_default_rng: np.random.Generator = np.random.default_rng()


def manual_seed(seed: Optional[int]) -> np.random.Generator:
    """Reset the default generator that layers built without ``rng=`` draw their initial
    weights (and dropout masks) from; like ``torch.manual_seed``.

    ``manual_seed(0)`` followed by building a model gives the same weights every time (they are
    not PyTorch's numbers for the same seed: the generators differ). Returns the new generator.
    """
    global _default_rng
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError("seed must be an int >= 0, a sequence of them, or None, got bool")
    try:
        _default_rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise type(e)(f"seed must be an int >= 0, a sequence of them, or None, got {seed!r}: {e}") from None
    return _default_rng


def default_generator() -> np.random.Generator:
    """The generator that :func:`manual_seed` last set (layers draw from it when built)."""
    return _default_rng


def _rng(rng: Optional[np.random.Generator]) -> np.random.Generator:
    if rng is None:
        return _default_rng
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def _spawn(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator seeded from ``rng`` (advances ``rng`` by one draw)."""
    return np.random.default_rng(int(rng.integers(0, 2**63)))


# ----------------------------------------------------------------------------------------------
# argument checks


def _ntuple(name: str, value: Any, n: int, minimum: int) -> Tuple[int, ...]:
    """An int or a sequence of ``n`` ints, each >= minimum, as a tuple of ``n`` ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
        return tuple(check_int(name, v, minimum) for v in value)
    return (check_int(name, value, minimum),) * n


def _uniform(rng: np.random.Generator, bound: float, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Parameter and Module


class Parameter:
    """A trainable array: ``data`` (the values) and ``grad`` (the accumulated gradient).

    ``grad`` has the shape and dtype of ``data``; it starts at zero, each ``backward`` adds to
    it, and ``zero_grad()`` (on the module or the optimiser) sets it back to zero. Optimisers
    update ``data`` in place, so views of it taken earlier stay valid.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        data = np.array(data, copy=True)
        if data.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"Parameter data must be float32 or float64, got {data.dtype}")
        self.data: np.ndarray = np.ascontiguousarray(data)
        self.grad: np.ndarray = np.zeros_like(self.data)

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def numpy(self) -> np.ndarray:
        """The values (the array itself, not a copy)."""
        return self.data

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of every layer and model.

    Subclasses assign :class:`Parameter` and :class:`Module` attributes in ``__init__`` (they
    are registered in assignment order, which fixes the ``state_dict`` key order, as in
    PyTorch) and implement ``forward(x)`` and ``backward(grad_output)``.

    ``backward`` must follow the ``forward`` whose input it differentiates: a layer keeps only
    its most recent input.
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        params, modules = self.__dict__["_parameters"], self.__dict__["_modules"]
        params.pop(name, None)
        modules.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    # -- computation ---------------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Gradient with respect to the last forward's input; adds into the parameters' ``.grad``."""
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # -- structure -----------------------------------------------------------------------------

    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        return iter(list(self._modules.items()))

    def children(self) -> Iterator["Module"]:
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, "Module"]]:
        """This module and every submodule, depth first, with dotted names ("" for this one)."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "") -> List[Tuple[str, Parameter]]:
        """``[(name, parameter), ...]``: own parameters first, then each child's, as PyTorch."""
        out = [(f"{prefix}.{n}" if prefix else n, p) for n, p in self._parameters.items()]
        for name, child in self._modules.items():
            out.extend(child.named_parameters(f"{prefix}.{name}" if prefix else name))
        return out

    def parameters(self) -> List[Parameter]:
        """The trainable parameters, in ``state_dict`` order (a list, not a generator)."""
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- modes and gradients -------------------------------------------------------------------

    def train(self, mode: bool = True) -> "Module":
        """Set training mode (Dropout active) on this module and every submodule; returns self."""
        mode = check_bool("mode", mode)
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        """Set evaluation mode (Dropout is the identity); returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to zero."""
        for p in self.parameters():
            p.zero_grad()

    # -- weights in and out --------------------------------------------------------------------

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """``{name: copy of the values}`` with PyTorch's names and shapes."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True):
        """Copy values into this module's parameters (in place, cast to their dtype).

        Values may be anything ``numpy.asarray`` accepts (NumPy arrays, CPU torch tensors).
        With ``strict=True`` a missing or unexpected key is a ValueError listing them; a shape
        mismatch is always a ValueError. Nothing is changed when an error is raised. Returns
        ``(missing_keys, unexpected_keys)`` as PyTorch does.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of name -> array, got {type(state_dict).__name__}")
        strict = check_bool("strict", strict)
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise ValueError(
                f"load_state_dict for {type(self).__name__}: {'; '.join(parts)} "
                f"(expected keys {list(own)})"
            )
        values = {}
        for name, p in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.shape != p.shape:
                raise ValueError(
                    f"load_state_dict for {type(self).__name__}: {name!r} has shape "
                    f"{tuple(value.shape)}, the parameter has shape {tuple(p.shape)}"
                )
            if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
                raise TypeError(f"load_state_dict: {name!r} has dtype {value.dtype}, expected a float array")
            values[name] = value
        for name, value in values.items():
            own[name].data[...] = value
        return _IncompatibleKeys(missing, unexpected)

    def save(self, path) -> str:
        """Write ``state_dict()`` to an uncompressed ``.npz`` file, one array per parameter name.

        ``.npz`` is appended to a path without it (as ``numpy.savez`` does); returns the path
        written. The architecture is not stored: rebuild the same model, then :meth:`load`.
        """
        path = check_path("path", path)
        if not path.endswith(".npz"):
            path += ".npz"
        np.savez(path, **self.state_dict())
        return path

    def load(self, path, strict: bool = True) -> "Module":
        """Fill this model's parameters (in place) from a file written by :meth:`save`.

        ``path`` may omit the ``.npz`` that :meth:`save` appended. Checks as
        :meth:`load_state_dict`; returns self.
        """
        path = check_path("path", path)
        strict = check_bool("strict", strict)
        if not os.path.exists(path) and os.path.exists(path + ".npz"):
            path += ".npz"
        if not os.path.exists(path):
            raise FileNotFoundError(f"path {path!r}: no such file (nor {path + '.npz'!r})")
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"path {path!r} is not an .npz file written by save(): {e}") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(
                f"path {path!r} holds a single array (.npy), not the .npz archive of named arrays that save() writes"
            )
        with data:
            self.load_state_dict({k: data[k] for k in data.files}, strict=strict)
        return self

    # -- printing ------------------------------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


def _need(value: Optional[np.ndarray], layer: Module) -> np.ndarray:
    if value is None:
        raise RuntimeError(f"{type(layer).__name__}.backward called before forward")
    return value


# ----------------------------------------------------------------------------------------------
# convolution

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvNd(Module):
    _dims = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        dtype=np.float32,
        rng: Optional[np.random.Generator] = None,
    ):
        super().__init__()
        n = self._dims
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.out_channels = check_int("out_channels", out_channels, 1)
        self.groups = check_int("groups", groups, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        self.kernel_size = _ntuple("kernel_size", kernel_size, n, 1)
        self.stride = _ntuple("stride", stride, n, 1)
        self.dilation = _ntuple("dilation", dilation, n, 1)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
            self.padding = padding
        else:
            self.padding = _ntuple("padding", padding, n, 0)
        if not isinstance(padding_mode, str):
            raise TypeError(f"padding_mode must be one of {_PADDING_MODES}, got {type(padding_mode).__name__}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        bias = check_bool("bias", bias)
        dt = check_dtype("dtype", dtype)
        gen = _rng(rng)
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        check_array_size("in_channels, out_channels and kernel_size", shape, dt)

        fan_in = self.in_channels // self.groups * math.prod(self.kernel_size)
        # kaiming_uniform_(a=sqrt(5)): gain = sqrt(2 / (1 + a^2)), bound = gain * sqrt(3 / fan_in)
        bound = math.sqrt(2.0 / (1.0 + 5.0)) * math.sqrt(3.0 / fan_in)
        self.weight = Parameter(_uniform(gen, bound, shape, dt))
        if bias:
            self.bias = Parameter(_uniform(gen, 1.0 / math.sqrt(fan_in), (self.out_channels,), dt))
        else:
            self.bias = None
        self._input: Optional[np.ndarray] = None
        self._forward = getattr(F, f"conv{n}d")
        self._backward_name = f"conv{n}d_backward"

    def _kwargs(self) -> Dict[str, Any]:
        return dict(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        bias = None if self.bias is None else self.bias.data
        out = self._forward(x, self.weight.data, bias, **self._kwargs())
        self._input = x
        return out

    def backward(self, grad_output: np.ndarray, input_grad: bool = True) -> Optional[np.ndarray]:
        """As :meth:`Module.backward`; ``input_grad=False`` skips the input's gradient (returns
        None), for a first layer whose input needs none."""
        x = _need(self._input, self)
        backward = getattr(F, self._backward_name)
        grad_input, grad_weight, grad_bias = backward(
            grad_output, x, self.weight.data, **self._kwargs(), input_grad=input_grad
        )
        self.weight.grad += grad_weight
        if self.bias is not None:
            self.bias.grad += grad_bias
        return grad_input

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._dims:
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * self._dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class Conv1d(_ConvNd):
    """1D convolution over (N, C_in, L): ``rconv.conv1d`` with a learned weight and bias.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation : int or tuple
        padding may also be ``"valid"`` or ``"same"``.
    groups : int
    bias : bool
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
    dtype : float32 (default) or float64
    rng : numpy.random.Generator, optional
        Draws the initial weights; default :func:`default_generator`.

    Shape
    -----
    - weight: (out_channels, in_channels / groups, k); bias: (out_channels,)
    - input (N, C_in, L) -> output (N, C_out, L_out)
    """

    _dims = 1


class Conv2d(_ConvNd):
    """2D convolution over (N, C_in, H, W): ``rconv.conv2d`` with a learned weight and bias.

    Parameters as :class:`Conv1d`.

    Shape
    -----
    - weight: (out_channels, in_channels / groups, kh, kw); bias: (out_channels,)
    - input (N, C_in, H, W) -> output (N, C_out, H_out, W_out)
    """

    _dims = 2


class Conv3d(_ConvNd):
    """3D convolution over (N, C_in, D, H, W): ``rconv.conv3d`` with a learned weight and bias.

    Parameters as :class:`Conv1d`.

    Shape
    -----
    - weight: (out_channels, in_channels / groups, kd, kh, kw); bias: (out_channels,)
    - input (N, C_in, D, H, W) -> output (N, C_out, D_out, H_out, W_out)
    """

    _dims = 3


# ----------------------------------------------------------------------------------------------
# pooling


class _MaxPoolNd(Module):
    _dims = 0

    # PyTorch's order: return_indices comes before ceil_mode, so that positional arguments mean
    # the same as in torch.nn.MaxPool2d(kernel_size, stride, padding, dilation, return_indices, ceil_mode).
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        super().__init__()
        n = self._dims
        self.kernel_size = _ntuple("kernel_size", kernel_size, n, 1)
        self.stride = self.kernel_size if stride is None else _ntuple("stride", stride, n, 1)
        self.padding = _ntuple("padding", padding, n, 0)
        self.dilation = _ntuple("dilation", dilation, n, 1)
        self.return_indices = check_bool("return_indices", return_indices)
        self.ceil_mode = check_bool("ceil_mode", ceil_mode)
        self._input: Optional[np.ndarray] = None
        self._indices: Optional[np.ndarray] = None
        self._forward = getattr(F, f"max_pool{n}d")
        self._backward_name = f"max_pool{n}d_backward"

    def _kwargs(self) -> Dict[str, Any]:
        return dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            ceil_mode=self.ceil_mode,
        )

    def forward(self, x: np.ndarray):
        """The pooled values, or ``(values, indices)`` with ``return_indices=True`` (as PyTorch)."""
        # In training mode keep the argmax for backward: measured on LeNet-5's first pool, a
        # forward with indices plus a backward from them costs ~60% of a values-only forward
        # plus a backward that finds the maxima again.
        if self.training or self.return_indices:
            out, self._indices = self._forward(x, **self._kwargs(), return_indices=True)
        else:
            out, self._indices = self._forward(x, **self._kwargs()), None
        self._input = x
        return (out, self._indices) if self.return_indices else out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        backward = getattr(F, self._backward_name)
        return backward(grad_output, _need(self._input, self), **self._kwargs(), indices=self._indices)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
            + (", return_indices=True" if self.return_indices else "")
        )


class MaxPool1d(_MaxPoolNd):
    """Max pooling over (N, C, L) (``rconv.max_pool1d``); stride defaults to kernel_size.

    Shape
    -----
    input (N, C, L) -> output (N, C, L_out)
    """

    _dims = 1


class MaxPool2d(_MaxPoolNd):
    """Max pooling over (N, C, H, W) (``rconv.max_pool2d``); stride defaults to kernel_size.

    Shape
    -----
    input (N, C, H, W) -> output (N, C, H_out, W_out)
    """

    _dims = 2


class MaxPool3d(_MaxPoolNd):
    """Max pooling over (N, C, D, H, W) (``rconv.max_pool3d``); stride defaults to kernel_size.

    Shape
    -----
    input (N, C, D, H, W) -> output (N, C, D_out, H_out, W_out)
    """

    _dims = 3


class _AvgPoolNd(Module):
    _dims = 0

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: Optional[int] = None):
        super().__init__()
        n = self._dims
        self.kernel_size = _ntuple("kernel_size", kernel_size, n, 1)
        self.stride = self.kernel_size if stride is None else _ntuple("stride", stride, n, 1)
        self.padding = _ntuple("padding", padding, n, 0)
        self.ceil_mode = check_bool("ceil_mode", ceil_mode)
        self.count_include_pad = check_bool("count_include_pad", count_include_pad)
        if divisor_override is not None and check_int("divisor_override", divisor_override) == 0:
            raise ValueError("divisor_override must not be zero (as in PyTorch)")
        self.divisor_override = None if divisor_override is None else int(divisor_override)
        self._input: Optional[np.ndarray] = None
        self._forward = getattr(F, f"avg_pool{n}d")
        self._backward_name = f"avg_pool{n}d_backward"

    def _kwargs(self) -> Dict[str, Any]:
        return dict(
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
            # avg_pool1d has no divisor_override (as PyTorch's)
            **({} if self._dims == 1 else {"divisor_override": self.divisor_override}),
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self._forward(x, **self._kwargs())
        self._input = x
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return getattr(F, self._backward_name)(grad_output, _need(self._input, self), **self._kwargs())

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        return s if self.divisor_override is None else s + f", divisor_override={self.divisor_override}"


class AvgPool1d(_AvgPoolNd):
    """Average pooling over (N, C, L) (``rconv.avg_pool1d``). No ``divisor_override``, as
    PyTorch's AvgPool1d.

    Shape
    -----
    input (N, C, L) -> output (N, C, L_out)
    """

    _dims = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool2d(_AvgPoolNd):
    """Average pooling over (N, C, H, W) (``rconv.avg_pool2d``); ``divisor_override`` (a nonzero
    int) replaces every window's divisor, as PyTorch's.

    Shape
    -----
    input (N, C, H, W) -> output (N, C, H_out, W_out)
    """

    _dims = 2


class AvgPool3d(_AvgPoolNd):
    """Average pooling over (N, C, D, H, W) (``rconv.avg_pool3d``); ``divisor_override`` as
    :class:`AvgPool2d`.

    Shape
    -----
    input (N, C, D, H, W) -> output (N, C, D_out, H_out, W_out)
    """

    _dims = 3


class _AdaptiveAvgPoolNd(Module):
    _dims = 0

    def __init__(self, output_size):
        super().__init__()
        n = self._dims
        if isinstance(output_size, (tuple, list)):
            if len(output_size) != n:
                raise ValueError(f"output_size must be an int or a tuple of {n}, got {output_size!r}")
            self.output_size = tuple(None if v is None else check_int("output_size", v, 1) for v in output_size)
        else:
            self.output_size = check_int("output_size", output_size, 1)
        self._input: Optional[np.ndarray] = None
        self._forward = getattr(F, f"adaptive_avg_pool{n}d")
        self._backward_name = f"adaptive_avg_pool{n}d_backward"

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self._forward(x, self.output_size)
        self._input = x
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return getattr(F, self._backward_name)(grad_output, _need(self._input, self))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Adaptive average pooling to a fixed output length (``rconv.adaptive_avg_pool1d``).

    Shape
    -----
    input (N, C, L) -> output (N, C, output_size)
    """

    _dims = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Adaptive average pooling to a fixed output size (``rconv.adaptive_avg_pool2d``);
    a ``None`` entry keeps that input size.

    Shape
    -----
    input (N, C, H, W) -> output (N, C, *output_size)
    """

    _dims = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    """Adaptive average pooling to a fixed output size (``rconv.adaptive_avg_pool3d``).

    Shape
    -----
    input (N, C, D, H, W) -> output (N, C, *output_size)
    """

    _dims = 3


# ----------------------------------------------------------------------------------------------
# activation, reshaping, fully connected, dropout


class ReLU(Module):
    """``max(x, 0)`` elementwise (``rconv.relu``).

    Shape
    -----
    any -> same
    """

    def __init__(self):
        super().__init__()
        self._input: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = F.relu(x)
        self._input = x
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return F.relu_backward(grad_output, _need(self._input, self))


class Flatten(Module):
    """Flatten dimensions ``start_dim .. end_dim`` into one (a reshape, no copy when possible).

    Shape
    -----
    (N, C, H, W) -> (N, C * H * W) with the defaults start_dim=1, end_dim=-1
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = check_int("start_dim", start_dim)
        self.end_dim = check_int("end_dim", end_dim)
        self._input_shape: Optional[Tuple[int, ...]] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        nd = x.ndim
        start = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        end = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= start < max(nd, 1) and 0 <= end < max(nd, 1)) or start > end:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit an input "
                f"of shape {tuple(x.shape)}"
            )
        self._input_shape = x.shape
        return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1 :])

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        return grad_output.reshape(_need(self._input_shape, self))

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Linear(Module):
    """Fully connected layer ``y = x @ weight.T + bias`` (``rconv.linear``).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    dtype : float32 (default) or float64
    rng : numpy.random.Generator, optional

    Shape
    -----
    - weight: (out_features, in_features); bias: (out_features,)
    - input (*, in_features) -> output (*, out_features)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32,
                 rng: Optional[np.random.Generator] = None):
        super().__init__()
        # 0 is allowed, as in PyTorch: Linear(0, k) gives bias + nothing, and its backward still
        # sums the bias gradient.
        self.in_features = check_int("in_features", in_features, 0)
        self.out_features = check_int("out_features", out_features, 0)
        bias = check_bool("bias", bias)
        dt = check_dtype("dtype", dtype)
        check_array_size("in_features and out_features", (self.out_features, self.in_features), dt)
        gen = _rng(rng)
        # kaiming_uniform_(a=sqrt(5)), see _ConvNd; PyTorch's bias bound is 0 without inputs.
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = Parameter(_uniform(gen, bound, (out_features, in_features), dt))
        self.bias = Parameter(_uniform(gen, bound, (out_features,), dt)) if bias else None
        self._input: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)
        self._input = x
        return out

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        grad_input, grad_weight, grad_bias = F.linear_backward(grad_output, _need(self._input, self), self.weight.data)
        self.weight.grad += grad_weight
        if self.bias is not None:
            self.bias.grad += grad_bias
        return grad_input

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Dropout(Module):
    """Inverted dropout: in training mode each element is zeroed with probability ``p`` and the
    rest are scaled by ``1 / (1 - p)``; in evaluation mode it is the identity.

    The masks come from ``rng`` (default: a generator spawned from :func:`default_generator`
    at the first training forward); ``Sequential.fit(seed=...)`` reseeds it.

    Shape
    -----
    any -> same
    """

    def __init__(self, p: float = 0.5, rng: Optional[np.random.Generator] = None):
        super().__init__()
        p = check_float("p", p)
        if p > 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        # None: spawned from the default generator at the first training forward, so building
        # a Dropout does not shift the initial weights of the layers built after it.
        self.rng: Optional[np.random.Generator] = None if rng is None else _rng(rng)
        self._mask: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        if self.rng is None:
            self.rng = _spawn(_default_rng)
        x = np.asarray(x)
        keep = self.rng.random(x.shape) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._mask = keep.astype(x.dtype) * x.dtype.type(scale)
        return x * self._mask

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        if self._mask is None:
            return grad_output
        return grad_output * self._mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ----------------------------------------------------------------------------------------------
# containers and losses


class Sequential(Module):
    """Layers applied in order; ``backward`` runs their ``backward`` in reverse order.

    Children are named "0", "1", ... (or by the keys of an ``OrderedDict``), so parameter names
    are "0.weight", "0.bias", ... as in PyTorch. Supports ``len``, iteration, indexing (an int
    gives a layer, a slice a new Sequential sharing the layers) and ``append``.

    Training helpers: :meth:`fit`, :meth:`evaluate`, :meth:`predict`, :meth:`summary` (see
    :mod:`rconv.training`), and :meth:`save` / :meth:`load` from :class:`Module`.
    """

    def __init__(self, *modules: Union[Module, "OrderedDict[str, Module]"]):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for i, (name, m) in enumerate(items):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules: modules[{i}] ({name!r}) is a {type(m).__name__}")
            setattr(self, name, m)
        self._input_shape: Optional[Tuple[int, ...]] = None
        self._order: Optional[List[Module]] = None  # the layers as the last forward ran them

    def append(self, module: Module) -> "Sequential":
        if not isinstance(module, Module):
            raise TypeError(f"append takes a Module, got {type(module).__name__}")
        setattr(self, str(len(self)), module)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def __getitem__(self, index):
        layers = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(OrderedDict(layers[index]))
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"Sequential indices must be ints or slices, got {type(index).__name__}")
        if not -len(layers) <= index < len(layers):
            raise IndexError(f"index {index} out of range for a Sequential of {len(layers)} layers")
        return layers[index][1]

    def _schedule(self) -> List[Module]:
        """The layers in the order ``forward`` runs them: the written order, except that a
        ReLU directly followed by a max pooling runs after the pooling. ``max`` and ``relu``
        commute exactly (both are monotone and pick one of their inputs), and the gradients
        agree bit for bit: a pooled value is positive exactly when the element it came from is.
        The ReLU (forward and backward) then touches the pooled elements only, a quarter of
        them after a 2x2 pooling (LeNet-5)."""
        layers = list(self._modules.values())
        for i in range(len(layers) - 1):
            # (not a pool that returns its indices: its output is a tuple, which a ReLU cannot take)
            if type(layers[i]) is ReLU and isinstance(layers[i + 1], _MaxPoolNd) and not layers[i + 1].return_indices:
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        return layers

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._input_shape = tuple(np.shape(x))
        self._order = self._schedule()
        for m in self._order:
            x = m(x)
        return x

    def backward(self, grad_output: np.ndarray, input_grad: bool = True) -> Optional[np.ndarray]:
        """Backpropagates through the layers in reverse. ``input_grad=False`` (what ``fit``
        uses) lets a first convolution skip the gradient of the model's input: returns None."""
        input_grad = check_bool("input_grad", input_grad)
        layers = self._order if self._order is not None else list(self._modules.values())
        for i in range(len(layers) - 1, -1, -1):
            m = layers[i]
            if i == 0 and not input_grad and isinstance(m, _ConvNd):
                return m.backward(grad_output, input_grad=False)
            grad_output = m.backward(grad_output)
        return grad_output

    # Training helpers live in rconv.training (imported here lazily: it imports this module).

    def fit(self, x, y, *, epochs, batch_size=64, optimizer=None, validation_data=None, shuffle=True,
            seed=None, progress=True, lr_schedule=None) -> Dict[str, List[float]]:
        """Train as a classifier with softmax cross-entropy and mini-batches.

        Returns ``{"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...]}``
        (one entry per epoch). The default optimizer is ``SGD(lr=0.01, momentum=0.9)``; see
        :func:`rconv.training.fit` for every argument.
        """
        from .training import fit

        return fit(self, x, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                   validation_data=validation_data, shuffle=shuffle, seed=seed, progress=progress,
                   lr_schedule=lr_schedule)

    def evaluate(self, x, y, batch_size=256) -> Dict[str, float]:
        """``{"loss": mean cross-entropy, "accuracy": fraction correct}``; see :func:`rconv.training.evaluate`."""
        from .training import evaluate

        return evaluate(self, x, y, batch_size=batch_size)

    def predict(self, x, batch_size=256) -> np.ndarray:
        """Outputs (logits) for ``x`` in evaluation mode; see :func:`rconv.training.predict`."""
        from .training import predict

        return predict(self, x, batch_size=batch_size)

    def summary(self, input_shape=None, *, file=None) -> str:
        """Table of layers, output shapes and parameter counts; see :func:`rconv.training.summary`."""
        from .training import summary

        return summary(self, input_shape=input_shape, file=file)


class CrossEntropyLoss(Module):
    """Softmax cross-entropy, mean over the batch (``rconv.cross_entropy``).

    ``loss = criterion(logits, target)`` returns a Python float and keeps what
    ``criterion.backward()`` needs; ``backward()`` returns the gradient with respect to the
    logits (``(softmax(logits) - onehot(target)) / N``).

    Shape
    -----
    logits (N, C) float, target (N,) integers in [0, C) -> float
    """

    def __init__(self):
        super().__init__()
        self._logits: Optional[np.ndarray] = None
        self._target: Optional[np.ndarray] = None

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float:
        loss = F.cross_entropy(logits, target)
        self._logits, self._target = logits, target
        return float(loss)

    def backward(self, grad_output: float = 1.0) -> np.ndarray:
        logits = _need(self._logits, self)
        grad = F.cross_entropy_backward(logits, self._target)
        if grad_output != 1.0:
            grad = grad * grad.dtype.type(grad_output)
        return grad
