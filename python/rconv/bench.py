"""The benchmark command: ``python -m rconv bench``.

Runs the suite shipped in ``rconv/data/suite.json`` (convolutions, pools and a LeNet-5 training
run) and prints, per entry, rconv's forward and forward+backward times, GFLOP/s (convolution)
or GB/s (pooling), the peak memory of one call, and for each installed peer (PyTorch,
ONNX Runtime) its time and the ratio rconv / peer (lower is better).

Every number is checked before it is timed: rconv's outputs and gradients are compared with
each peer's (``np.allclose``, rtol 1e-4, atol 1e-4 * max|reference|) and with independent NumPy
computations at sampled positions (explicit dot products and window maxima, computed in
float64), plus whole-array adjoint identities for the gradients. A mismatch prints a ``FAIL``
line and makes the command exit with status 1.

Timing: rconv and the peers run interleaved in one loop (rconv, torch, onnxruntime, rconv, ...)
and the best of N repetitions is reported for each, so a machine that slows down or speeds up
during the run affects all of them alike. Each turn of a runner starts with an untimed call
and then times calls of the same function back to back (four for calls under 20 ms), so they
run warm (their own threads awake, caches filled), as in a training loop, rather than in the
wake of the previous library's threads. Each entry stops repeating once it has used its time
cap (it still runs at least two repetitions).

Peak memory (Linux): VmHWM is reset through ``/proc/self/clear_refs`` right before one extra,
untimed call, and the growth of VmHWM over the resident size before the call is reported. For
that call glibc's malloc first returns the memory it kept from earlier calls (``malloc_trim``), so
that memory does not hide the call's own use. Elsewhere the column reads ``n/a``.

Only NumPy is needed; torch, onnx and onnxruntime are optional peers, skipped with a note when
they are not installed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import _rconv

__all__ = ["main", "load_suite", "compare", "Check", "PEERS"]

#: Peers known to ``--against``, in the order their columns appear.
PEERS = ("torch", "onnxruntime")
_SHORT = {"rconv": "rconv", "torch": "torch", "onnxruntime": "ort"}

RTOL = 1e-4  # np.allclose(actual, ref, rtol=RTOL, atol=ATOL_REL * max|ref|)
ATOL_REL = 1e-4
ADJOINT_RTOL = 1e-5  # |<a, b> - <c, d>| <= ADJOINT_RTOL * sum|terms| (float64 sums of float32 data)

DEFAULT_THREADS = 2
DEFAULT_REPEAT = 7
QUICK_REPEAT = 2
DEFAULT_CAP_S = 8.0  # time cap of one entry's timing loop
QUICK_CAP_S = 2.0
MIN_REPS = 2
PAUSE_S = 0.02  # between runners: lets the previous runner's idle worker threads stop spinning (libgomp spins 300,000 pauses by default, several ms here)
BURST = 4  # timed calls in a row per runner and repetition for calls shorter than BURST_MAX_S
BURST_MAX_S = 0.02

FWD = "forward"
FWDBWD = "forward+backward"
TRAIN = "train"

SUITE_PATH = Path(__file__).resolve().parent / "data" / "suite.json"


def load_suite(path: Optional[os.PathLike] = None) -> Dict[str, Any]:
    """The benchmark suite (``rconv/data/suite.json``, or ``path``)."""
    with open(path or SUITE_PATH, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------
# Output checks


@dataclass
class Check:
    """One comparison of an rconv result with a reference."""

    what: str  # "output", "grad_input", "grad_weight", ...
    against: str  # "torch", "onnxruntime", "numpy: 48 sampled outputs", ...
    ok: bool
    max_abs_err: Optional[float] = None
    tol: Optional[float] = None
    detail: str = ""

    def describe(self) -> str:
        s = f"{self.what} vs {self.against}"
        if self.max_abs_err is not None and self.tol is not None:
            s += f": max |diff| {self.max_abs_err:.3g} (tolerance {self.tol:.3g})"
        if self.detail:
            s += f" {self.detail}" if self.max_abs_err is not None else f": {self.detail}"
        return s

    def to_json(self) -> Dict[str, Any]:
        return {
            "what": self.what,
            "against": self.against,
            "ok": self.ok,
            "max_abs_err": _finite_or_none(self.max_abs_err),
            "tol": _finite_or_none(self.tol),
            "detail": self.detail,
        }


def compare(actual, ref, *, what: str = "output", against: str = "reference",
            rtol: float = RTOL, atol_rel: float = ATOL_REL) -> Check:
    """Compare ``actual`` with ``ref``: ``np.allclose(actual, ref, rtol, atol_rel * max|ref|)``.

    Shapes must match; NaN or infinity anywhere fails. Returns a :class:`Check` (``ok`` False
    with the largest difference and where it is on a mismatch).
    """
    actual = np.asarray(actual)
    ref = np.asarray(ref)
    if actual.shape != ref.shape:
        return Check(what, against, False, detail=f"shape {actual.shape} != reference shape {ref.shape}")
    if actual.size == 0:
        return Check(what, against, True, 0.0, 0.0)
    if not np.isfinite(ref).all():
        return Check(what, against, False, detail="the reference has NaN or infinity")
    scale = float(np.max(np.abs(ref)))
    atol = atol_rel * scale
    ok = bool(np.allclose(actual, ref, rtol=rtol, atol=atol, equal_nan=False))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(actual.astype(np.float64) - ref.astype(np.float64)) if actual.size <= 1 << 22 \
            else np.abs(actual - ref)
    bad = ~np.isfinite(diff)
    if bad.any():
        where = np.unravel_index(int(np.argmax(bad)), diff.shape)
        return Check(what, against, False, float("inf"), atol + rtol * scale,
                     detail=f"(non-finite value at {tuple(int(i) for i in where)})")
    worst = int(np.argmax(diff))
    err = float(diff.flat[worst])
    tol = atol + rtol * abs(float(ref.flat[worst]))
    detail = ""
    if not ok:
        where = tuple(int(i) for i in np.unravel_index(worst, diff.shape))
        detail = (f"(at {where}: rconv {float(actual.flat[worst]):.6g}, reference "
                  f"{float(ref.flat[worst]):.6g}; {int(np.count_nonzero(~np.isclose(actual, ref, rtol=rtol, atol=atol)))}"
                  f" of {actual.size} elements differ)")
    return Check(what, against, ok, err, tol, detail)


def _dot64(a: np.ndarray, b: np.ndarray) -> Tuple[float, float]:
    """(sum(a * b), sum(|a * b|)) in float64, in chunks (no full-size float64 copies)."""
    a = np.ascontiguousarray(a).reshape(-1)
    b = np.ascontiguousarray(b).reshape(-1)
    total = absolute = 0.0
    step = 1 << 20
    for i in range(0, a.size, step):
        p = a[i:i + step].astype(np.float64) * b[i:i + step]
        total += float(p.sum())
        absolute += float(np.abs(p).sum())
    return total, absolute


def adjoint_check(what: str, lhs: Tuple[float, float], rhs: Tuple[float, float], identity: str) -> Check:
    """Check ``lhs[0] == rhs[0]`` to ``ADJOINT_RTOL`` times the larger sum of absolute terms."""
    scale = max(lhs[1], rhs[1])
    err = abs(lhs[0] - rhs[0])
    tol = ADJOINT_RTOL * scale
    ok = bool(np.isfinite(lhs[0]) and np.isfinite(rhs[0]) and err <= tol)
    return Check(what, f"numpy: adjoint {identity}", ok, err, tol,
                 "" if ok else f"({lhs[0]:.9g} != {rhs[0]:.9g})")


def _window(a: np.ndarray, starts: Sequence[int], sizes: Sequence[int], fill: float) -> np.ndarray:
    """``a[..., s0:s0+k0, s1:s1+k1, ...]`` over the last len(starts) axes, with positions
    outside ``a`` (padding) set to ``fill``; float64."""
    d = len(starts)
    out = np.full(a.shape[:-d] + tuple(sizes), fill, dtype=np.float64)
    src, dst = [], []
    for s, k, n in zip(starts, sizes, a.shape[-d:]):
        lo, hi = max(s, 0), min(s + k, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(Ellipsis, *dst)] = a[(Ellipsis, *src)]
    return out


def _sample_positions(rng: np.random.Generator, shape: Sequence[int], count: int) -> List[Tuple[int, ...]]:
    """``count`` random index tuples into ``shape``, plus its first and last corners."""
    pts = {tuple(0 for _ in shape), tuple(n - 1 for n in shape)}
    while len(pts) < min(count, math.prod(shape)):
        pts.add(tuple(int(rng.integers(n)) for n in shape))
    return sorted(pts)


def _contributions(i: Sequence[int], kernel: Sequence[int], stride: int, padding: int,
                   out: Sequence[int]) -> Iterator[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """Pairs (kernel offset t, output position o) with o * stride - padding + t == i in every
    spatial dimension: the windows that read input position ``i``."""
    for t in itertools.product(*(range(k) for k in kernel)):
        o = []
        for i_d, t_d, n_d in zip(i, t, out):
            num = i_d + padding - t_d
            if num < 0 or num % stride or num // stride >= n_d:
                break
            o.append(num // stride)
        else:
            yield t, tuple(o)


# ---- convolution


@dataclass
class ConvCase:
    name: str
    dims: int
    N: int
    C: int
    K: int
    spatial: Tuple[int, ...]
    kernel: Tuple[int, ...]
    stride: int
    padding: int
    groups: int

    @classmethod
    def from_suite(cls, e: Dict[str, Any]) -> "ConvCase":
        return cls(e["name"], int(e["dims"]), int(e["N"]), int(e["C"]), int(e["K"]),
                   tuple(int(v) for v in e["spatial"]), tuple(int(v) for v in e["kernel"]),
                   int(e["stride"]), int(e["padding"]), int(e["groups"]))

    @property
    def out_spatial(self) -> Tuple[int, ...]:
        return tuple((n + 2 * self.padding - k) // self.stride + 1 for n, k in zip(self.spatial, self.kernel))

    @property
    def x_shape(self):
        return (self.N, self.C, *self.spatial)

    @property
    def w_shape(self):
        return (self.K, self.C // self.groups, *self.kernel)

    @property
    def y_shape(self):
        return (self.N, self.K, *self.out_spatial)

    @property
    def flops(self) -> int:
        """2 * output elements * (in_channels / groups) * kernel volume (the forward)."""
        return 2 * math.prod(self.y_shape) * (self.C // self.groups) * math.prod(self.kernel)

    def describe(self) -> str:
        s = (f"conv{self.dims}d x{self.x_shape} w{self.w_shape} stride {self.stride} "
             f"padding {self.padding}")
        return s + (f" groups {self.groups}" if self.groups != 1 else "")

    def data(self, seed: int):
        rng = np.random.default_rng(seed)
        fan_in = (self.C // self.groups) * math.prod(self.kernel)
        x = rng.standard_normal(self.x_shape, dtype=np.float32)
        w = (rng.standard_normal(self.w_shape, dtype=np.float32) / np.float32(math.sqrt(fan_in)))
        b = rng.standard_normal(self.K, dtype=np.float32) * np.float32(0.1)
        gy = rng.standard_normal(self.y_shape, dtype=np.float32)
        return x, w, b, gy


def numpy_conv_forward_checks(case: ConvCase, x, w, b, y, seed: int = 0, samples: int = 48) -> List[Check]:
    """rconv's conv output ``y`` at sampled positions vs explicit float64 dot products."""
    if tuple(y.shape) != case.y_shape:
        return [Check("output", "numpy", False, detail=f"shape {tuple(y.shape)}, expected {case.y_shape}")]
    rng = np.random.default_rng(seed)
    kg, cg = case.K // case.groups, case.C // case.groups
    pts = _sample_positions(rng, case.y_shape, samples)
    got, ref = [], []
    for n, k, *o in pts:
        g = k // kg
        patch = _window(x[n, g * cg:(g + 1) * cg], [od * case.stride - case.padding for od in o], case.kernel, 0.0)
        ref.append(float(np.sum(patch * w[k].astype(np.float64))) + float(b[k]))
        got.append(float(y[(n, k, *o)]))
    return [compare(np.array(got), np.array(ref), what="output", against=f"numpy: {len(pts)} sampled dot products")]


def numpy_conv_backward_checks(case: ConvCase, x, w, b, y, gy, gx, gw, gb, seed: int = 0,
                               samples: int = 24) -> List[Check]:
    """rconv's conv gradients vs float64 sums at sampled positions, grad_bias in full, and the
    adjoint identities <gx, x> = <gy, y - b> = <gw, w> over the whole arrays."""
    checks = []
    for name, arr, shape in (("grad_input", gx, case.x_shape), ("grad_weight", gw, case.w_shape),
                             ("grad_bias", gb, (case.K,))):
        if tuple(arr.shape) != tuple(shape):
            checks.append(Check(name, "numpy", False, detail=f"shape {tuple(arr.shape)}, expected {shape}"))
    if checks:
        return checks
    rng = np.random.default_rng(seed + 1)
    kg, cg = case.K // case.groups, case.C // case.groups
    out = case.out_spatial

    # grad_input: sum over the windows that read the sampled input position.
    pts = _sample_positions(rng, case.x_shape, samples)
    got, ref = [], []
    for n, c, *i in pts:
        g, cc = divmod(c, cg)
        ks = slice(g * kg, (g + 1) * kg)
        v = 0.0
        for t, o in _contributions(i, case.kernel, case.stride, case.padding, out):
            v += float(np.dot(gy[(n, ks, *o)].astype(np.float64), w[(ks, cc, *t)].astype(np.float64)))
        got.append(float(gx[(n, c, *i)]))
        ref.append(v)
    checks.append(compare(np.array(got), np.array(ref), what="grad_input",
                          against=f"numpy: {len(pts)} sampled positions"))

    # grad_weight: sum over batch and output positions of gy * the input it multiplied.
    pts = _sample_positions(rng, case.w_shape, samples)
    got, ref = [], []
    for k, c, *t in pts:
        g = k // kg
        xc = x[:, g * cg + c]
        idx, mask = [], np.ones((1,) * case.dims, dtype=bool)
        for d, (t_d, o_d, n_d) in enumerate(zip(t, out, case.spatial)):
            pos = np.arange(o_d) * case.stride - case.padding + t_d
            ok = (pos >= 0) & (pos < n_d)
            idx.append(np.clip(pos, 0, n_d - 1))
            shape = [1] * case.dims
            shape[d] = o_d
            mask = mask & ok.reshape(shape)
        sub = xc[np.ix_(np.arange(case.N), *idx)].astype(np.float64) * mask
        ref.append(float(np.sum(sub * gy[:, k])))
        got.append(float(gw[(k, c, *t)]))
    checks.append(compare(np.array(got), np.array(ref), what="grad_weight",
                          against=f"numpy: {len(pts)} sampled positions"))

    ref_gb = gy.astype(np.float64).sum(axis=tuple(a for a in range(gy.ndim) if a != 1))
    checks.append(compare(gb, ref_gb, what="grad_bias", against="numpy: full sum"))

    bshape = (1, case.K) + (1,) * case.dims
    y_nobias = (y - b.reshape(bshape)).astype(np.float32)
    g_y = _dot64(gy, y_nobias)
    checks.append(adjoint_check("grad_input", _dot64(gx, x), g_y, "<gx,x>=<gy,y-b>"))
    checks.append(adjoint_check("grad_weight", _dot64(gw, w), g_y, "<gw,w>=<gy,y-b>"))
    return checks


# ---- pooling


@dataclass
class PoolCase:
    name: str
    op: str  # "max" | "avg"
    dims: int
    shape: Tuple[int, ...]
    kernel: Tuple[int, ...]
    stride: int
    padding: int

    @classmethod
    def from_suite(cls, e: Dict[str, Any]) -> "PoolCase":
        dims = int(e["dims"])
        k = e["kernel"]
        kernel = tuple(int(v) for v in k) if isinstance(k, (list, tuple)) else (int(k),) * dims
        return cls(e["name"], e["op"], dims, tuple(int(v) for v in e["shape"]), kernel,
                   int(e["stride"]), int(e["padding"]))

    @property
    def out_spatial(self) -> Tuple[int, ...]:
        return tuple((n + 2 * self.padding - k) // self.stride + 1
                     for n, k in zip(self.shape[2:], self.kernel))

    @property
    def y_shape(self):
        return (*self.shape[:2], *self.out_spatial)

    @property
    def bytes(self) -> int:
        """float32 input read + output written (the forward)."""
        return 4 * (math.prod(self.shape) + math.prod(self.y_shape))

    def describe(self) -> str:
        return (f"{self.op}_pool{self.dims}d x{self.shape} kernel {self.kernel} stride {self.stride} "
                f"padding {self.padding}")

    def data(self, seed: int):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.shape, dtype=np.float32)
        gy = rng.standard_normal(self.y_shape, dtype=np.float32)
        return x, gy


def numpy_pool_forward_checks(case: PoolCase, x, y, seed: int = 0, samples: int = 64) -> List[Check]:
    """rconv's pool output at sampled windows vs their NumPy max / mean."""
    if tuple(y.shape) != case.y_shape:
        return [Check("output", "numpy", False, detail=f"shape {tuple(y.shape)}, expected {case.y_shape}")]
    rng = np.random.default_rng(seed)
    pts = _sample_positions(rng, case.y_shape, samples)
    got, ref = [], []
    kvol = math.prod(case.kernel)
    for n, c, *o in pts:
        starts = [od * case.stride - case.padding for od in o]
        if case.op == "max":
            ref.append(float(np.max(_window(x[n, c], starts, case.kernel, -np.inf))))
        else:  # count_include_pad=True, no ceil_mode: the divisor is the kernel volume
            ref.append(float(np.sum(_window(x[n, c], starts, case.kernel, 0.0))) / kvol)
        got.append(float(y[(n, c, *o)]))
    what = "window maxima" if case.op == "max" else "window means"
    return [compare(np.array(got), np.array(ref), what="output", against=f"numpy: {len(pts)} sampled {what}")]


def numpy_pool_backward_checks(case: PoolCase, x, y, gy, gx, seed: int = 0, samples: int = 64) -> List[Check]:
    """rconv's pool grad_input at sampled positions (the windows whose argmax / mean reads
    them), and the adjoint identity <gx, x> = <gy, y> over the whole arrays (exact for max
    pooling: each window's gradient goes to the element it selected)."""
    if tuple(gx.shape) != tuple(case.shape):
        return [Check("grad_input", "numpy", False, detail=f"shape {tuple(gx.shape)}, expected {case.shape}")]
    rng = np.random.default_rng(seed + 1)
    out = case.out_spatial
    kvol = math.prod(case.kernel)
    # Half the samples are argmax positions of random windows (where max-pool gradients are
    # nonzero), half random positions (mostly zero for max pooling).
    pts = set(_sample_positions(rng, case.shape, samples // 2))
    for n, c, *o in _sample_positions(rng, case.y_shape, samples // 2):
        starts = [od * case.stride - case.padding for od in o]
        win = _window(x[n, c], starts, case.kernel, -np.inf)
        am = np.unravel_index(int(np.argmax(win)), win.shape)
        pts.add((n, c, *(s + a for s, a in zip(starts, am))))
    got, ref = [], []
    for n, c, *i in sorted(pts):
        v = 0.0
        for t, o in _contributions(i, case.kernel, case.stride, case.padding, out):
            if case.op == "max":
                starts = [od * case.stride - case.padding for od in o]
                win = _window(x[n, c], starts, case.kernel, -np.inf)
                am = np.unravel_index(int(np.argmax(win)), win.shape)  # first max wins, as torch
                if tuple(int(a) for a in am) == tuple(t):
                    v += float(gy[(n, c, *o)])
            else:
                v += float(gy[(n, c, *o)]) / kvol
        got.append(float(gx[(n, c, *i)]))
        ref.append(v)
    checks = [compare(np.array(got), np.array(ref), what="grad_input",
                      against=f"numpy: {len(pts)} sampled positions")]
    checks.append(adjoint_check("grad_input", _dot64(gx, x), _dot64(gy, y), "<gx,x>=<gy,y>"))
    return checks


# --------------------------------------------------------------------------------------------
# Peak memory


def _malloc_trim() -> None:
    """Hand memory that rconv's block cache and glibc's malloc keep from earlier calls back to
    the system, so that the next call's allocations show up in VmHWM (whether they are served
    from a heap or from fresh mappings). glibc's part is a no-op elsewhere."""
    global _LIBC
    _rconv._release_cached_memory()
    if _LIBC is None:
        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                _LIBC = libc
            except (OSError, AttributeError):
                pass
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def _status_kib(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Peak resident memory of one call, in MiB, from VmHWM after resetting it (Linux)."""

    def __init__(self):
        self.available = self._probe()

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _probe(self) -> bool:
        return (sys.platform.startswith("linux") and _status_kib("VmHWM") is not None
                and _status_kib("VmRSS") is not None and self._reset())

    def measure(self, fn: Callable[[], Any]) -> Optional[float]:
        """Run ``fn`` once; return the growth of peak RSS over the RSS before it (MiB)."""
        if not self.available:
            fn()
            return None
        gc.collect()
        _malloc_trim()
        before = _status_kib("VmRSS")
        if not self._reset() or before is None:
            fn()
            return None
        result = fn()
        peak = _status_kib("VmHWM")
        del result
        if peak is None:
            return None
        return max(peak - before, 0) / 1024.0


# --------------------------------------------------------------------------------------------
# Peers


@dataclass
class Peer:
    name: str
    module: Any = None
    version: str = ""
    note: str = ""  # why it is skipped, when module is None
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.module is not None


def load_peer(name: str, threads: int) -> Peer:
    """Import a peer and set its thread count; a peer that is not installed gives a note."""
    if name == "torch":
        try:
            import torch  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install
            return Peer(name, note=f"not installed ({type(exc).__name__}: {exc})")
        torch.set_num_threads(threads)
        return Peer(name, torch, torch.__version__)
    if name == "onnxruntime":
        try:
            import onnxruntime
        except Exception as exc:
            return Peer(name, note=f"not installed ({type(exc).__name__}: {exc})")
        try:
            import onnx
        except Exception as exc:
            return Peer(name, note=f"skipped: the onnx package, needed to build its models, is not "
                                   f"installed ({type(exc).__name__})")
        return Peer(name, onnxruntime, onnxruntime.__version__, extra={"onnx": onnx.__version__})
    raise ValueError(f"unknown peer {name!r}")


def _ort_session(peer: Peer, model_bytes: bytes, threads: int, arena: bool = True):
    ort = peer.module
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    so.log_severity_level = 3
    # Without this, ORT's idle workers spin and slow down whatever runs right after them.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def _onnx_model(op: str, x_shape, y_shape, attrs: Dict[str, Any], initializers: Sequence[Tuple[str, np.ndarray]]) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ascontiguousarray(a), name) for name, a in initializers]
    node = helper.make_node(op, ["X", *(n for n, _ in initializers)], ["Y"], **attrs)
    graph = helper.make_graph(
        [node], f"rconv_bench_{op}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(y_shape))],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="rconv-bench")
    model.ir_version = 7  # opset 13's IR version: loadable by old and new onnxruntime alike
    onnx.checker.check_model(model)
    return model.SerializeToString()


# --------------------------------------------------------------------------------------------
# Runners: per implementation, a forward and (maybe) a forward+backward closure


@dataclass
class Runner:
    impl: str  # "rconv", "torch", "onnxruntime"
    fwd: Optional[Callable[[], Any]] = None  # returns the output (numpy)
    fb: Optional[Callable[[], Any]] = None  # returns the gradients (numpy tuple)
    fwd_mem: Optional[Callable[[], Any]] = None  # for the memory measurement (default: fwd)
    to_numpy: Callable[[Any], Any] = field(default=lambda r: r)


def _conv_runners(case: ConvCase, x, w, b, gy, peers: Dict[str, Peer], threads: int) -> Tuple[List[Runner], List[str]]:
    import rconv

    d = case.dims
    fwd_fn = getattr(rconv, f"conv{d}d")
    bwd_fn = getattr(rconv, f"conv{d}d_backward")
    kw = dict(stride=case.stride, padding=case.padding, groups=case.groups)

    def r_fwd():
        return fwd_fn(x, w, b, **kw)

    def r_fb():
        fwd_fn(x, w, b, **kw)
        return bwd_fn(gy, x, w, **kw)

    runners = [Runner("rconv", r_fwd, r_fb)]
    notes = []
    if "torch" in peers:
        torch = peers["torch"].module
        F = torch.nn.functional
        tf = getattr(F, f"conv{d}d")
        xt = torch.from_numpy(x).requires_grad_(True)
        wt = torch.from_numpy(w).requires_grad_(True)
        bt = torch.from_numpy(b).requires_grad_(True)
        gyt = torch.from_numpy(gy)

        def t_fwd():
            with torch.no_grad():
                return tf(xt, wt, bt, **kw)

        def t_fb():
            tf(xt, wt, bt, **kw).backward(gyt)
            grads = xt.grad, wt.grad, bt.grad
            # Fresh gradients each call (no accumulation), freed by the caller outside the
            # timed region, as rconv's results are.
            xt.grad = wt.grad = bt.grad = None
            return grads

        runners.append(Runner("torch", t_fwd, t_fb, to_numpy=_torch_numpy))
    if "onnxruntime" in peers:
        try:
            model = _onnx_model(
                "Conv", case.x_shape, case.y_shape,
                dict(kernel_shape=list(case.kernel), strides=[case.stride] * d,
                     pads=[case.padding] * (2 * d), group=case.groups, dilations=[1] * d),
                [("W", w), ("B", b)])
            sess = _ort_session(peers["onnxruntime"], model, threads)
            sess_mem = _ort_session(peers["onnxruntime"], model, threads, arena=False)
            runners.append(Runner("onnxruntime", lambda: sess.run(None, {"X": x})[0],
                                  fwd_mem=lambda: sess_mem.run(None, {"X": x})[0]))
        except Exception as exc:
            notes.append(f"onnxruntime: skipped ({type(exc).__name__}: {exc})")
    return runners, notes


def _pool_runners(case: PoolCase, x, gy, peers: Dict[str, Peer], threads: int) -> Tuple[List[Runner], List[str]]:
    import rconv

    d = case.dims
    fwd_fn = getattr(rconv, f"{case.op}_pool{d}d")
    bwd_fn = getattr(rconv, f"{case.op}_pool{d}d_backward")
    kw = dict(stride=case.stride, padding=case.padding)
    k = case.kernel

    def r_fwd():
        return fwd_fn(x, k, **kw)

    def r_fb():
        fwd_fn(x, k, **kw)
        return bwd_fn(gy, x, k, **kw)

    runners = [Runner("rconv", r_fwd, r_fb)]
    notes = []
    if "torch" in peers:
        torch = peers["torch"].module
        tf = getattr(torch.nn.functional, f"{case.op}_pool{d}d")
        xt = torch.from_numpy(x).requires_grad_(True)
        gyt = torch.from_numpy(gy)

        def t_fwd():
            with torch.no_grad():
                return tf(xt, k, **kw)

        def t_fb():
            tf(xt, k, **kw).backward(gyt)
            grads = (xt.grad,)
            xt.grad = None
            return grads

        runners.append(Runner("torch", t_fwd, t_fb, to_numpy=_torch_numpy))
    if "onnxruntime" in peers:
        try:
            attrs = dict(kernel_shape=list(k), strides=[case.stride] * d, pads=[case.padding] * (2 * d))
            if case.op == "avg":
                attrs["count_include_pad"] = 1
            model = _onnx_model("MaxPool" if case.op == "max" else "AveragePool", case.shape, case.y_shape, attrs, [])
            sess = _ort_session(peers["onnxruntime"], model, threads)
            sess_mem = _ort_session(peers["onnxruntime"], model, threads, arena=False)
            runners.append(Runner("onnxruntime", lambda: sess.run(None, {"X": x})[0],
                                  fwd_mem=lambda: sess_mem.run(None, {"X": x})[0]))
        except Exception as exc:
            notes.append(f"onnxruntime: skipped ({type(exc).__name__}: {exc})")
    return runners, notes


def _torch_numpy(r):
    if isinstance(r, tuple):
        return tuple(t.detach().numpy() for t in r)
    return r.detach().numpy()


# --------------------------------------------------------------------------------------------
# Timing


def interleaved_best(calls: Dict[Tuple[str, str], Callable[[], Any]], repeat: int, cap_s: float,
                     min_reps: int = MIN_REPS, pause_s: float = PAUSE_S) -> Dict[Tuple[str, str], List[float]]:
    """Run every call in turn, ``repeat`` times (fewer once ``cap_s`` seconds have passed, but
    at least ``min_reps``): each turn is an untimed call, then one timed call (``BURST`` for calls
    shorter than ``BURST_MAX_S``). Return the seconds of each timed call."""
    times: Dict[Tuple[str, str], List[float]] = {key: [] for key in calls}
    start = time.perf_counter()
    for rep in range(repeat):
        for key, fn in calls.items():
            if pause_s:
                time.sleep(pause_s)
            # An untimed call first, then the timed ones back to back: they find their own
            # threads awake and caches warm, as in a training loop, instead of paying for the
            # previous runner's threads (OpenMP workers spin for up to milliseconds after a torch
            # call, on the same 2 cores) or for waking their own. Short calls get a burst of
            # timed calls, since the first ones can still fall in the other runner's wake.
            t0 = time.perf_counter()
            fn()
            burst = BURST if time.perf_counter() - t0 < BURST_MAX_S else 1
            for _ in range(burst):
                t0 = time.perf_counter()
                out = fn()
                t1 = time.perf_counter()
                del out
                times[key].append(t1 - t0)
        if rep + 1 >= min_reps and time.perf_counter() - start > cap_s:
            break
    return times


# --------------------------------------------------------------------------------------------
# Results and the table


@dataclass
class Row:
    entry: str
    pass_: str  # FWD, FWDBWD, TRAIN
    unit: str  # "GFLOP/s", "GB/s", "img/s"
    work: float  # flops, bytes or images per call
    ms: Dict[str, Optional[float]] = field(default_factory=dict)  # impl -> best ms
    reps: Dict[str, int] = field(default_factory=dict)
    mib: Dict[str, Optional[float]] = field(default_factory=dict)
    checks: List[Check] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def rate(self, impl: str = "rconv") -> Optional[float]:
        ms = self.ms.get(impl)
        if not ms:
            return None
        per_s = self.work / (ms / 1e3)
        return per_s if self.unit == "img/s" else per_s / 1e9

    def ratio(self, peer: str) -> Optional[float]:
        r, p = self.ms.get("rconv"), self.ms.get(peer)
        return r / p if r and p else None

    def check_summary(self) -> str:
        if not self.checks:
            return "not checked"
        if not self.ok:
            return "FAIL"
        against = []
        for c in self.checks:
            tag = c.against.split(":")[0]
            if tag not in against:
                against.append(tag)
        return "ok: " + ",".join(_SHORT.get(a, a) for a in against)

    def to_json(self, peers: Sequence[str]) -> Dict[str, Any]:
        impls = {}
        for impl in ("rconv", *peers):
            if impl not in self.ms:
                continue
            d = {"ms": _finite_or_none(self.ms[impl]), "repetitions": self.reps.get(impl),
                 "peak_mib": _finite_or_none(self.mib.get(impl)), self.unit: _finite_or_none(self.rate(impl))}
            if impl != "rconv":
                d["ratio_rconv_over_peer"] = _finite_or_none(self.ratio(impl))
            impls[impl] = d
        return {"pass": self.pass_, "unit": self.unit, "work": self.work, "results": impls,
                "ok": self.ok, "checks": [c.to_json() for c in self.checks], "notes": self.notes}


def _finite_or_none(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _fmt_ms(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:.0f}"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_num(v: Optional[float], digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if v < 10000 else f"{v:.0f}"


def _fmt_mib(v: Optional[float], measured: bool) -> str:
    if not measured:
        return "-"
    return "n/a" if v is None else f"{v:.1f}"


class Table:
    def __init__(self, peers: Sequence[str], out=None):
        self.peers = list(peers)
        self.out = out or sys.stdout
        self.cols = [("entry", 18, "<"), ("pass", 7, "<"), ("rconv ms", 9, ">"), ("rate", 14, ">"),
                     ("MiB", 7, ">")]
        for p in self.peers:
            self.cols += [(f"{_SHORT[p]} ms", 9, ">"), ("ratio", 6, ">"), ("MiB", 7, ">")]
        self.cols.append(("check", 0, "<"))

    def _line(self, cells: Sequence[str]) -> str:
        parts = []
        for (name, width, align), cell in zip(self.cols, cells):
            parts.append(f"{cell:{align}{width}}" if width else cell)
        # group separators before each peer
        s = "  ".join(parts[:5])
        for i in range(len(self.peers)):
            s += " | " + "  ".join(parts[5 + 3 * i: 8 + 3 * i])
        return s + " | " + parts[-1]

    def header(self) -> None:
        print(self._line([c[0] for c in self.cols]), file=self.out)
        print("-" * len(self._line([""] * len(self.cols))) + "-" * 12, file=self.out)
        self.out.flush()

    def row(self, row: Row, mem_measured: bool) -> None:
        rate = row.rate()
        cells = [row.entry, "fwd+bwd" if row.pass_ == FWDBWD else ("fwd" if row.pass_ == FWD else row.pass_),
                 _fmt_ms(row.ms.get("rconv")),
                 "-" if rate is None else f"{_fmt_num(rate, 0 if row.unit == 'img/s' else 1)} {row.unit}",
                 _fmt_mib(row.mib.get("rconv"), mem_measured and "rconv" in row.ms)]
        for p in self.peers:
            ratio = row.ratio(p)
            cells += [_fmt_ms(row.ms.get(p)), "-" if ratio is None else f"{ratio:.2f}",
                      _fmt_mib(row.mib.get(p), mem_measured and p in row.ms)]
        cells.append(row.check_summary())
        print(self._line(cells), file=self.out)
        for c in row.checks:
            if not c.ok:
                print(f"FAIL {row.entry} {row.pass_}: {c.describe()}", file=self.out)
        for n in row.notes:
            print(f"  note: {row.entry} {row.pass_}: {n}", file=self.out)
        self.out.flush()


# --------------------------------------------------------------------------------------------
# Entries


@dataclass
class Settings:
    threads: int
    repeat: int
    cap_s: float
    quick: bool
    peers: Dict[str, Peer]  # available peers only
    memory: PeakMemory


def _measure_rows(entry: str, unit: str, work_fwd: float, work_fb: float, runners: List[Runner],
                  settings: Settings, check_fwd: Callable[[Dict[str, Any]], List[Check]],
                  check_fb: Callable[[Dict[str, Any]], List[Check]], notes: List[str]) -> List[Row]:
    """Check, measure memory, and time the runners of one entry (forward, forward+backward)."""
    rows = {FWD: Row(entry, FWD, unit, work_fwd, notes=list(notes)), FWDBWD: Row(entry, FWDBWD, unit, work_fb)}
    calls: Dict[Tuple[str, str], Callable[[], Any]] = {}

    # 1. One call each (also the warm-up): rconv's results are checked against every peer's
    #    and against NumPy. A peer that raises is dropped from the entry with a note.
    outputs: Dict[str, Dict[str, Any]] = {FWD: {}, FWDBWD: {}}
    for pass_, attr in ((FWD, "fwd"), (FWDBWD, "fb")):
        for r in runners:
            fn = getattr(r, attr)
            if fn is None:
                continue
            try:
                outputs[pass_][r.impl] = r.to_numpy(fn())
            except Exception as exc:
                if r.impl == "rconv":
                    rows[pass_].checks.append(Check("call", "rconv", False, detail=f"{type(exc).__name__}: {exc}"))
                else:
                    rows[pass_].notes.append(f"{r.impl}: skipped ({type(exc).__name__}: {exc})")
                continue
            calls[(r.impl, pass_)] = fn
    for pass_, checker in ((FWD, check_fwd), (FWDBWD, check_fb)):
        if "rconv" in outputs[pass_]:
            try:
                rows[pass_].checks.extend(checker(outputs[pass_]))
            except Exception as exc:  # a broken checker must not pass silently
                rows[pass_].checks.append(Check("check", "numpy", False, detail=f"{type(exc).__name__}: {exc}"))
    del outputs
    gc.collect()

    # 2. Peak memory of one more call each.
    if settings.memory.available:
        by_impl = {r.impl: r for r in runners}
        for (impl, pass_), fn in calls.items():
            r = by_impl[impl]
            mem_fn = r.fwd_mem if (pass_ == FWD and r.fwd_mem is not None) else fn
            try:
                if pass_ == FWD and r.fwd_mem is not None:
                    mem_fn()  # warm the memory-measurement session
                rows[pass_].mib[impl] = settings.memory.measure(mem_fn)
            except Exception as exc:
                rows[pass_].notes.append(f"{impl}: memory measurement failed ({type(exc).__name__})")

    # 3. Interleaved timing; rconv first in each repetition, then the peers.
    order = sorted(calls, key=lambda k: (k[1] != FWD, k[0] != "rconv"))
    times = interleaved_best({k: calls[k] for k in order}, settings.repeat, settings.cap_s)
    for (impl, pass_), ts in times.items():
        rows[pass_].ms[impl] = min(ts) * 1e3
        rows[pass_].reps[impl] = len(ts)
    return [rows[FWD]] + ([rows[FWDBWD]] if rows[FWDBWD].ms or rows[FWDBWD].checks else [])


def run_conv(e: Dict[str, Any], settings: Settings, seed: int) -> List[Row]:
    case = ConvCase.from_suite(e)
    x, w, b, gy = case.data(seed)
    runners, notes = _conv_runners(case, x, w, b, gy, settings.peers, settings.threads)

    def check_fwd(outs):
        y = outs["rconv"]
        checks = [compare(y, outs[p], what="output", against=p) for p in outs if p != "rconv"]
        return checks + numpy_conv_forward_checks(case, x, w, b, y, seed)

    def check_fb(outs):
        gx, gw, gb = outs["rconv"]
        checks = []
        if "torch" in outs:
            for name, a, t in zip(("grad_input", "grad_weight", "grad_bias"), outs["rconv"], outs["torch"]):
                checks.append(compare(a, t, what=name, against="torch"))
        y = getattr(__import__("rconv"), f"conv{case.dims}d")(x, w, b, stride=case.stride,
                                                               padding=case.padding, groups=case.groups)
        return checks + numpy_conv_backward_checks(case, x, w, b, y, gy, gx, gw, gb, seed)

    return _measure_rows(case.name, "GFLOP/s", case.flops, 3 * case.flops, runners, settings,
                         check_fwd, check_fb, notes)


SCALING_ENTRY = "res_3x3_64"  # the suite entry whose thread scaling the run reports


def run_scaling(e: Dict[str, Any], settings: Settings, seed: int) -> Dict[str, Any]:
    """rconv's forward and forward+backward of conv entry ``e`` on 1 thread and on
    ``settings.threads``, interleaved in one loop (each timed call right after an untimed one
    with the same thread count); returns the best times and the speed-ups."""
    import rconv

    case = ConvCase.from_suite(e)
    x, w, b, gy = case.data(seed)
    (runner,), _ = _conv_runners(case, x, w, b, gy, {}, settings.threads)
    before = rconv.get_num_threads()

    def on(threads: int, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call():
            rconv.set_num_threads(threads)
            return fn()
        return call

    counts = (1, settings.threads)
    calls = {(str(t), p): on(t, fn) for t in counts for p, fn in (("fwd", runner.fwd), ("fwd+bwd", runner.fb))}
    try:
        times = interleaved_best(calls, settings.repeat, settings.cap_s)
    finally:
        rconv.set_num_threads(before)
    best = {k: min(v) * 1e3 for k, v in times.items()}
    result: Dict[str, Any] = {"entry": e["name"], "threads": list(counts)}
    for p in ("fwd", "fwd+bwd"):
        one, many = best[("1", p)], best[(str(settings.threads), p)]
        result[p] = {"ms_1_thread": one, f"ms_{settings.threads}_threads": many, "speedup": one / many}
    return result


def run_pool(e: Dict[str, Any], settings: Settings, seed: int) -> List[Row]:
    case = PoolCase.from_suite(e)
    x, gy = case.data(seed)
    runners, notes = _pool_runners(case, x, gy, settings.peers, settings.threads)

    def check_fwd(outs):
        y = outs["rconv"]
        checks = [compare(y, outs[p], what="output", against=p) for p in outs if p != "rconv"]
        return checks + numpy_pool_forward_checks(case, x, y, seed)

    def check_fb(outs):
        (gx,) = outs["rconv"] if isinstance(outs["rconv"], tuple) else (outs["rconv"],)
        checks = []
        if "torch" in outs:
            checks.append(compare(gx, outs["torch"][0], what="grad_input", against="torch"))
        y = getattr(__import__("rconv"), f"{case.op}_pool{case.dims}d")(x, case.kernel, stride=case.stride,
                                                                         padding=case.padding)
        return checks + numpy_pool_backward_checks(case, x, y, gy, gx, seed)

    # fwd+bwd bytes: the forward's, plus grad_output read and grad_input written.
    rows = _measure_rows(case.name, "GB/s", case.bytes, 2 * case.bytes, runners, settings,
                         check_fwd, check_fb, notes)
    return rows


# ---- training


def _rconv_lenet5(nn, models, seed: int):
    if models is not None and hasattr(models, "lenet5"):
        try:
            return models.lenet5(rng=np.random.default_rng(seed))
        except TypeError:
            return models.lenet5()
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def _torch_lenet5(torch):
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
        tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))


def run_train(e: Dict[str, Any], settings: Settings, seed: int) -> List[Row]:
    name = e["name"]
    batch = int(e.get("batch", 64))
    lr, momentum = 0.01, 0.9
    try:
        from rconv import nn, optim
        try:
            from rconv import models
        except Exception:
            models = None
        for attr in ("Sequential", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear"):
            getattr(nn, attr)
        optim.SGD
        nn.Sequential.fit
    except Exception:
        row = Row(name, TRAIN, "img/s", 0)
        row.notes.append("skipped (rconv.nn not available)")
        return [row]
    from rconv.datasets import load_mnist_5k

    (x_train, y_train), _ = load_mnist_5k()
    order = np.random.default_rng(seed).permutation(len(x_train))
    x_all = np.ascontiguousarray(x_train[order])
    y_all = np.ascontiguousarray(y_train[order])
    n_epoch = 1024 if settings.quick else len(x_all)
    x_ep, y_ep = x_all[:n_epoch], y_all[:n_epoch]
    n_warm = 4 * batch
    row = Row(name, TRAIN, "img/s", n_epoch)
    if settings.quick:
        row.notes.append(f"--quick: an epoch is the first {n_epoch} of the {len(x_all)} training images")

    model = _rconv_lenet5(nn, models, seed)
    opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def r_fit(xs, ys):
        return model.fit(xs, ys, epochs=1, batch_size=batch, optimizer=opt, shuffle=False, progress=False)

    torch = settings.peers["torch"].module if "torch" in settings.peers else None
    if torch is not None:
        tmodel = _torch_lenet5(torch)
        state = {k: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in model.state_dict().items()}
        tmodel.load_state_dict(state)
        topt = torch.optim.SGD(tmodel.parameters(), lr=lr, momentum=momentum)
        loss_fn = torch.nn.CrossEntropyLoss()

        def t_fit(xs, ys):
            tmodel.train()
            loss_sum, correct = 0.0, 0
            for i in range(0, len(xs), batch):
                xb, yb = torch.from_numpy(xs[i:i + batch]), torch.from_numpy(ys[i:i + batch])
                topt.zero_grad()
                out = tmodel(xb)
                loss = loss_fn(out, yb)
                loss.backward()
                topt.step()
                loss_sum += float(loss.item()) * len(yb)
                correct += int((out.argmax(1) == yb).sum().item())
            return {"loss": [loss_sum / len(xs)], "accuracy": [correct / len(xs)]}

    # Checks before timing: with the same weights, the logits of one batch, and the gradients
    # after one SGD step on it, must match torch's.
    xb, yb = x_all[:batch], y_all[:batch]
    before = model.evaluate(x_all[:512], y_all[:512])
    if torch is not None:
        with torch.no_grad():
            tlogits = tmodel(torch.from_numpy(xb)).numpy()
        row.checks.append(compare(model.predict(xb), tlogits, what="logits", against="torch"))
        r_fit(xb, yb)
        t_fit(xb, yb)
        tparams = dict(tmodel.named_parameters())
        for pname, p in model.named_parameters():
            row.checks.append(compare(p.grad, tparams[pname].grad.numpy(), what=f"grad {pname}", against="torch"))
    else:
        r_fit(xb, yb)

    # Warm-up (and peak memory of it): 4 batches each.
    calls = {("rconv", TRAIN): lambda: r_fit(x_ep, y_ep)}
    mem = settings.memory
    row.mib["rconv"] = mem.measure(lambda: r_fit(x_all[:n_warm], y_all[:n_warm])) if mem.available else None
    if torch is not None:
        row.mib["torch"] = mem.measure(lambda: t_fit(x_all[:n_warm], y_all[:n_warm])) if mem.available else None
        calls[("torch", TRAIN)] = lambda: t_fit(x_ep, y_ep)

    reps = 1 if settings.quick else 2
    times = interleaved_best(calls, reps, settings.cap_s, min_reps=1)
    for (impl, _), ts in times.items():
        row.ms[impl] = min(ts) * 1e3
        row.reps[impl] = len(ts)

    after = model.evaluate(x_all[:512], y_all[:512])
    ok = math.isfinite(after["loss"]) and after["loss"] < before["loss"]
    row.checks.append(Check("training loss", "sanity: loss on 512 training images decreases", ok,
                            detail=f"{before['loss']:.4f} -> {after['loss']:.4f}"))
    return [row]


# --------------------------------------------------------------------------------------------
# Machine information


def machine_info() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    mem_gib = None
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu": cpu,
        "load_average_1_5_15min": load,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": None if mem_gib is None else round(mem_gib, 1),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rconv bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--against", default=None,
                   help="peers to compare with, comma separated, from: torch,onnxruntime "
                        "(default: every one that is installed; 'none' for no peer)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"threads for rconv and the peers (default: {DEFAULT_THREADS})")
    p.add_argument("--json", default=None, metavar="PATH", help="also write all numbers as JSON")
    p.add_argument("--entries", default=None, metavar="NAME,...",
                   help="run only these suite entries ('train' names the training entry)")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help=f"best of N repetitions (default: {DEFAULT_REPEAT}; {QUICK_REPEAT} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="best of 2, shorter time caps and a 1024-image training epoch")


def _command_line(argv: Optional[Sequence[str]]) -> str:
    if argv is None:
        argv = sys.argv[1:]
        if argv and argv[0] == "bench":
            argv = argv[1:]
    return "python -m rconv bench" + ("" if not argv else " " + shlex.join(list(argv)))


def _select_entries(suite: Dict[str, Any], names: Optional[str]) -> List[Tuple[str, Dict[str, Any]]]:
    entries = [("conv", e) for e in suite.get("conv", [])] + [("pool", e) for e in suite.get("pool", [])] \
        + [("train", e) for e in suite.get("train", [])]
    if not names:
        return entries
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {e["name"]: (kind, e) for kind, e in entries}
    for kind, e in entries:
        if kind == "train":
            known.setdefault("train", (kind, e))
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown entries {', '.join(unknown)}; the suite has: "
                         f"{', '.join(e['name'] for _, e in entries)} (or 'train')")
    seen, picked = set(), []
    for n in wanted:
        kind, e = known[n]
        if e["name"] not in seen:
            seen.add(e["name"])
            picked.append((kind, e))
    return picked


def main(args: Any = None, out=None) -> int:
    """Run the benchmark; ``args`` is an argparse Namespace (from ``python -m rconv``) or a list
    of command-line words after ``bench``. Returns the exit status: 0 when every check passed,
    1 when one failed, 2 on a usage error."""
    out = out or sys.stdout
    argv = None
    if args is None or isinstance(args, (list, tuple)):
        argv = list(args) if args is not None else None
        args = build_parser().parse_args(argv)
    against = getattr(args, "against", None)
    threads = getattr(args, "threads", None) or DEFAULT_THREADS
    quick = bool(getattr(args, "quick", False))
    repeat = getattr(args, "repeat", None) or (QUICK_REPEAT if quick else DEFAULT_REPEAT)
    json_path = getattr(args, "json", None)
    if threads < 1 or repeat < 1:
        print("error: --threads and --repeat must be >= 1", file=sys.stderr)
        return 2

    if against is None:
        wanted_peers = list(PEERS)
    else:
        wanted_peers = [p.strip() for p in against.split(",") if p.strip() and p.strip().lower() != "none"]
        bad = [p for p in wanted_peers if p not in PEERS]
        if bad:
            print(f"error: --against: unknown peer {', '.join(bad)} (known: {', '.join(PEERS)})", file=sys.stderr)
            return 2

    try:
        suite = load_suite()
        entries = _select_entries(suite, getattr(args, "entries", None))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import rconv

    old_threads = rconv.get_num_threads()
    rconv.set_num_threads(threads)
    try:
        return _run(args, argv, out, entries, wanted_peers, threads, repeat, quick, json_path, against)
    finally:
        rconv.set_num_threads(old_threads)


def _run(args, argv, out, entries, wanted_peers, threads, repeat, quick, json_path, against) -> int:
    import rconv

    t_start = time.perf_counter()
    peers_all = [load_peer(p, threads) for p in wanted_peers]
    peers = {p.name: p for p in peers_all if p.available}
    info = machine_info()
    memory = PeakMemory()
    settings = Settings(threads, repeat, QUICK_CAP_S if quick else DEFAULT_CAP_S, quick, peers, memory)
    command = _command_line(argv)

    print(f"rconv {rconv.__version__} benchmark suite", file=out)
    print(f"command: {command}", file=out)
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
          f"{info['os']}; Python {info['python']}, NumPy {info['numpy']}", file=out)
    peer_text = ", ".join(f"{p.name} {p.version}" + "".join(f" ({k} {v})" for k, v in p.extra.items())
                          for p in peers_all if p.available) or "none"
    print(f"threads: {threads} (rconv and peers); best of {repeat} turns ({BURST} timed calls a turn "
          f"under {BURST_MAX_S * 1e3:g} ms), at most ~{settings.cap_s:g} s of turns per entry (at least "
          f"{MIN_REPS}); peers: {peer_text}", file=out)
    load = info.get("load_average_1_5_15min")
    if load and info["usable_cores"] and load[0] > 0.5 * info["usable_cores"]:
        print(f"warning: load average {load[0]:.2f} on {info['usable_cores']} cores at the start: other "
              "processes compete for the CPU, so the timings are noisy (the ratios less so: rconv "
              "and the peers run interleaved)", file=out)
    for p in peers_all:
        if not p.available:
            print(f"note: {p.name}: {p.note}; its columns are left out", file=out)
    print("ratio = rconv ms / peer ms (lower is better; ort = onnxruntime, forward only). rate: conv "
          "GFLOP/s (2*out*Cin/groups*kvol; fwd+bwd counts 3x), pool GB/s (float32 input read + "
          "output written; fwd+bwd 2x), train images/s (ms = one epoch). MiB = peak RSS growth "
          "of one call" + ("" if memory.available else " (n/a: needs Linux /proc/self/clear_refs)")
          + ".", file=out)
    print(file=out)

    table = Table(list(peers), out)
    table.header()
    results = []
    failures = []
    for i, (kind, e) in enumerate(entries):
        seed = 1000 + i
        gc.collect()
        try:
            if kind == "conv":
                rows = run_conv(e, settings, seed)
            elif kind == "pool":
                rows = run_pool(e, settings, seed)
            else:
                rows = run_train(e, settings, seed)
        except Exception as exc:  # an error in rconv (or here) fails the entry, never the run
            row = Row(e["name"], "-", "", 0)
            row.checks.append(Check("run", "rconv", False, detail=f"{type(exc).__name__}: {exc}"))
            rows = [row]
        for row in rows:
            if kind == "train" and not row.ms and not row.checks:
                print(f"train: {'; '.join(row.notes)}", file=out)
            else:
                table.row(row, memory.available)
            for c in row.checks:
                if not c.ok:
                    failures.append(f"{row.entry} {row.pass_}: {c.describe()}")
        params = {k: v for k, v in e.items() if k != "name"}
        if kind == "conv":
            case = ConvCase.from_suite(e)
            extra = {"flops_forward": case.flops, "describe": case.describe()}
        elif kind == "pool":
            case = PoolCase.from_suite(e)
            extra = {"bytes_forward": case.bytes, "describe": case.describe()}
        else:
            extra = {}
        results.append({"entry": e["name"], "kind": kind, "params": params, **extra,
                        "ok": all(r.ok for r in rows), "rows": [r.to_json(list(peers)) for r in rows]})

    scaling = None
    conv_entries = {e["name"]: e for kind, e in entries if kind == "conv"}
    if threads > 1 and SCALING_ENTRY in conv_entries:
        scaling = run_scaling(conv_entries[SCALING_ENTRY], settings, 1000)
        print(file=out)
        print(f"thread scaling of rconv on {SCALING_ENTRY} (1 and {threads} threads interleaved): " + "; ".join(
            f"{p} {scaling[p]['ms_1_thread']:.2f} -> {scaling[p][f'ms_{threads}_threads']:.2f} ms, "
            f"{scaling[p]['speedup']:.2f}x" for p in ("fwd", "fwd+bwd")), file=out)

    elapsed = time.perf_counter() - t_start
    print(file=out)
    if failures:
        print(f"FAIL: {len(failures)} check(s) failed:", file=out)
        for f in failures:
            print(f"  FAIL {f}", file=out)
    else:
        n_checks = sum(len(r["checks"]) for res in results for r in res["rows"])
        print(f"all {n_checks} output checks passed ({len(results)} entries); total {elapsed:.0f} s", file=out)

    if json_path:
        doc = {
            "command": command,
            "rconv_version": rconv.__version__,
            "threads": threads,
            "repeat": repeat,
            "quick": quick,
            "time_cap_s": settings.cap_s,
            "machine": info,
            "versions": {"rconv": rconv.__version__, "python": info["python"], "numpy": info["numpy"],
                         **{p.name: p.version for p in peers_all if p.available},
                         **{k: v for p in peers_all for k, v in p.extra.items()}},
            "peers": {p.name: {"available": p.available, "version": p.version or None,
                               "note": p.note or None} for p in peers_all},
            "memory_measured": memory.available,
            "tolerance": {"rtol": RTOL, "atol": f"{ATOL_REL} * max|reference|", "adjoint_rtol": ADJOINT_RTOL},
            "entries": results,
            "thread_scaling": scaling,
            "failures": failures,
            "ok": not failures,
            "elapsed_s": elapsed,
        }
        path = Path(json_path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"json: {path}", file=out)
    out.flush()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
