"""Argument checks shared by the Python layer (nn, optim, training, filters, models).

Every check names the argument in its error: TypeError for a value of the wrong type, ValueError
for a bad value of the right type. As in the native functions, a bool is not an int (True is
refused where an int is expected) and a flag is a bool (Python's or NumPy's, as PyTorch accepts)
and nothing else.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any, Optional, Sequence

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_int(name: str, value: Any, minimum: Optional[int] = None) -> int:
    """``value`` as an int >= ``minimum``: a Python or NumPy int, not a bool."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {_type(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(name: str, value: Any, minimum: float = 0.0, below: Optional[float] = None) -> float:
    """``value`` as a finite float in ``[minimum, below)``: a Python or NumPy int or float, not a
    bool."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {_type(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float, got {value}") from None
    if not math.isfinite(value) or value < minimum or (below is not None and value >= below):
        bounds = f">= {minimum}" + ("" if below is None else f" and < {below}")
        raise ValueError(f"{name} must be a finite number {bounds}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A flag: ``bool`` or ``numpy.bool_``, nothing else (not 0 or 1, not None)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_type(value)}")
    return bool(value)


def check_dtype(name: str, value: Any) -> np.dtype:
    """float32 or float64, as anything ``numpy.dtype`` reads (None, which NumPy reads as float64,
    is refused)."""
    try:
        with warnings.catch_warnings():  # NumPy 2 warns of some aliases ('a') before refusing
            warnings.simplefilter("ignore", DeprecationWarning)
            dt = None if value is None else np.dtype(value)
    except (TypeError, ValueError):
        dt = None
    # (`dt not in _FLOAT_DTYPES` alone would take None: NumPy's dtype equals None as float64.)
    if dt is None or dt not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {value!r}")
    return dt


def check_path(name: str, value: Any) -> str:
    """A file system path (str, bytes or os.PathLike) as a str."""
    try:
        path = os.fspath(value)
    except TypeError:
        raise TypeError(f"{name} must be a str or os.PathLike, got {_type(value)}") from None
    return os.fsdecode(path)


def check_array_size(names: str, shape: Sequence[int], dtype: np.dtype) -> None:
    """A ValueError naming ``names`` when an array of ``shape`` could never be allocated: its byte
    size does not fit a signed pointer (NumPy's own error names no argument)."""
    if math.prod(shape) * np.dtype(dtype).itemsize > sys.maxsize:
        raise ValueError(f"{names} give an array of shape {tuple(shape)}: more than an array can hold")


def _type(value: Any) -> str:
    return "None" if value is None else type(value).__name__
