"""Backward functions: finite differences, exact float64 references, float32 vs float64, bitwise
determinism across thread counts, and argument errors.

Every backward is checked two independent ways in float64:

- finite differences: L = sum(forward(...) * R) for a fixed random R (the grad_output); the analytic
  gradient of every differentiated array is compared with central differences of rconv's forward
  at a random subset of coordinates (each coordinate costs two forward calls);
- an exact reference built only from the NumPy reference of the forward (tests/reference.py) or a
  direct formula: the linear maps (conv w.r.t. its input, avg / adaptive pooling) are applied to a
  batch holding the identity basis, which gives their Jacobian, whose transpose times R is the
  gradient; conv's grad_weight is the explicit correlation of the padded input with R; max pool
  scatters R onto the reference's argmax; linear, relu and cross-entropy are closed forms.
"""

import dataclasses
import itertools
from typing import Callable, Optional

import numpy as np
import pytest
import rconv
from hypothesis import assume, given
from hypothesis import strategies as st

import reference as ref
from helpers import DTYPES, PADDING_MODES, assert_close, draw_conv_geometry, maybe_int

EPS = 1e-6  # central-difference step
FD_TOL = 1e-6  # relative + absolute tolerance of the finite-difference comparison
FD_COORDS = 40  # at most this many coordinates of each array are checked by finite differences

NP_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}

CONV_OPS = ("conv1d", "conv2d", "conv3d")
MAX_OPS = ("max_pool1d", "max_pool2d", "max_pool3d")
AVG_OPS = ("avg_pool1d", "avg_pool2d", "avg_pool3d")
ADAPTIVE_OPS = ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d")
SPATIAL_OPS = CONV_OPS + MAX_OPS + AVG_OPS + ADAPTIVE_OPS
ALL_OPS = SPATIAL_OPS + ("relu", "linear", "cross_entropy")


def op_nd(op):
    return int(op[-2])


# ----------------------------------------------------------------------------------------------
# problems: one forward/backward pair with its float64 arrays


@dataclasses.dataclass
class Problem:
    """A forward call and its backward, on named float64 arrays.

    forward(**arrays) -> output; backward(grad_output, **arrays) -> gradient(s), one per name in
    diff, in that order; reference(grad_output, **arrays) -> tuple of float64 expected gradients.
    For cross-entropy there is no grad_output (the loss is a scalar): grad_output is 1.0 and the
    backward ignores it.
    """

    name: str
    arrays: dict
    diff: tuple
    forward: Callable
    backward: Callable
    reference: Callable
    seed: int
    has_grad_output: bool = True
    batched_name: Optional[str] = None  # the (N, C, *spatial) array, for the unbatched test

    def grad_output(self, rng, arrays=None):
        if not self.has_grad_output:
            return None
        out = self.forward(**(arrays or self.arrays))
        return rng.standard_normal(out.shape)

    def grads(self, g, arrays=None):
        got = self.backward(g, **(arrays or self.arrays))
        if not isinstance(got, tuple):
            got = (got,)
        assert len(got) == len(self.diff), f"{self.name}: {len(got)} results, expected {self.diff}"
        return got


def pick_coords(size, rng, limit=FD_COORDS):
    if size <= limit:
        return np.arange(size)
    return np.sort(rng.choice(size, limit, replace=False))


def fd_check(label, analytic, arr, forward_of, projection, rng):
    """Compare analytic (the gradient of sum(forward_of(arr) * projection)) with central
    differences at up to FD_COORDS coordinates of arr."""
    arr = np.array(arr, dtype=np.float64, order="C")  # (ascontiguousarray makes 0-d 1-d)
    assert analytic.shape == arr.shape, f"{label}: shape {analytic.shape} != {arr.shape}"
    idx = pick_coords(arr.size, rng)
    fd = np.empty(len(idx))
    for j, i in enumerate(idx):
        plus = arr.copy()
        plus.flat[i] += EPS
        minus = arr.copy()
        minus.flat[i] -= EPS
        step = plus.flat[i] - minus.flat[i]
        # difference of the outputs first: the loss is linear in the output, and this keeps the
        # rounding error of a large sum out of the quotient
        diff = np.asarray(forward_of(plus), np.float64) - np.asarray(forward_of(minus), np.float64)
        fd[j] = float(np.sum(diff * projection)) / step
    got = np.asarray(analytic, np.float64).reshape(-1)[idx]
    np.testing.assert_allclose(
        got,
        fd,
        rtol=FD_TOL,
        atol=FD_TOL,
        err_msg=f"{label}: analytic gradient vs central differences at flat indices {idx.tolist()}",
    )


def distinct_values(shape, rng):
    """Pairwise distinct values at least 0.25 apart (also distinct in float32), so every max-pool
    window has a unique argmax that a perturbation of EPS cannot change."""
    size = int(np.prod(shape))
    v = rng.permutation(size) - size / 2 + rng.uniform(0.0, 0.5, size)
    return (v * 0.5).reshape(shape)


def away_from_zero(shape, rng):
    """Values with |x| in [0.05, 2]: relu is differentiable there and EPS cannot cross 0."""
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return np.asarray(sign * rng.uniform(0.05, 2.0, shape), dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# exact references


def linear_map_adjoint(apply, x, grad_output):
    """x^T-side of a map that is linear in x and acts on every batch entry (axis 0) alike:
    the Jacobian of one entry is apply(identity basis), and the gradient is J^T grad_output."""
    n = x.shape[0]
    entry = x.shape[1:]
    m = int(np.prod(entry))
    basis = np.eye(m).reshape((m,) + entry)
    jac = np.asarray(apply(basis), dtype=np.float64).reshape(m, -1)  # row i = image of e_i
    g = grad_output.reshape(n, -1)
    return (g @ jac.T).reshape(x.shape)


def ref_conv_grads(g, x, w, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    nd = w.ndim - 2
    unbatched = x.ndim == nd + 1
    if unbatched:
        x, g = x[None], g[None]
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
              padding_mode=padding_mode)
    # grad_input: the reference conv (no bias) is linear in x, sample by sample
    gx = linear_map_adjoint(lambda basis: ref.conv(basis, w, None, **kw), x, g)

    # grad_weight[k, c, offs] = sum over n and output positions of R * padded input
    n, c = x.shape[:2]
    kernel = w.shape[2:]
    s = ref.ntuple(stride, nd)
    d = ref.ntuple(dilation, nd)
    pads = ref.conv_pads(x.shape[2:], kernel, s, d, padding)
    xp = np.pad(x, [(0, 0), (0, 0)] + list(pads), mode=NP_PAD_MODE[padding_mode])
    out_size = g.shape[2:]
    cg, kg = c // groups, w.shape[0] // groups
    gg = g.reshape(n, groups, kg, -1)
    gw = np.zeros((groups, kg, cg) + kernel)
    for offs in itertools.product(*(range(k) for k in kernel)):
        window = tuple(
            slice(o * di, o * di + si * (m - 1) + 1, si)
            for o, di, si, m in zip(offs, d, s, out_size)
        )
        patch = xp[(Ellipsis,) + window].reshape(n, groups, cg, -1)
        gw[(Ellipsis,) + offs] = np.einsum("ngcp,ngkp->gkc", patch, gg)
    gw = gw.reshape(w.shape)
    gb = g.sum(axis=(0,) + tuple(range(2, 2 + nd)))
    return (gx[0] if unbatched else gx), gw, gb


def ref_max_pool_grad(g, x, nd, **kw):
    _, idx = ref.max_pool(x, nd, **kw)
    assert (idx >= 0).all()
    planes = int(np.prod(x.shape[: x.ndim - nd]))
    gx = np.zeros((planes, int(np.prod(x.shape[x.ndim - nd:]))))
    rows = np.arange(planes)[:, None]
    np.add.at(gx, (rows, idx.reshape(planes, -1)), g.reshape(planes, -1))
    return gx.reshape(x.shape)


def ref_plane_pool_grad(g, x, nd, pool):
    """Gradient of a per-plane linear pool (avg / adaptive avg) through its Jacobian."""
    spatial = x.shape[x.ndim - nd:]
    planes = x.reshape((-1,) + spatial)
    gp = g.reshape((planes.shape[0],) + g.shape[g.ndim - nd:])
    # each plane becomes a batch entry with one channel
    got = linear_map_adjoint(lambda basis: pool(basis[:, None])[:, 0], planes, gp)
    return got.reshape(x.shape)


def ref_linear_grads(g, x, w):
    out_f, in_f = w.shape
    g2 = g.reshape(-1, out_f)
    x2 = x.reshape(-1, in_f)
    gx = (g2 @ w).reshape(x.shape)
    gw = g2.T @ x2
    gb = g2.sum(axis=0)
    return gx, gw, gb


def ref_cross_entropy_grad(logits, target):
    n, c = logits.shape
    onehot = np.zeros((n, c))
    onehot[np.arange(n), np.asarray(target).astype(np.int64)] = 1.0
    return (ref.softmax(logits, axis=1) - onehot) / n


# ----------------------------------------------------------------------------------------------
# problem builders


def conv_problem(nd, x, w, b, seed, **kw):
    fwd = getattr(rconv, f"conv{nd}d")
    bwd = getattr(rconv, f"conv{nd}d_backward")
    return Problem(
        name=f"conv{nd}d {kw}",
        arrays={"input": x, "weight": w, "bias": b},
        diff=("input", "weight", "bias"),
        forward=lambda input, weight, bias: fwd(input, weight, bias, **kw),
        backward=lambda g, input, weight, bias: bwd(g, input, weight, **kw),
        reference=lambda g, input, weight, bias: ref_conv_grads(g, input, weight, **kw),
        seed=seed,
        batched_name="input",
    )


def max_pool_problem(nd, x, seed, **kw):
    fwd = getattr(rconv, f"max_pool{nd}d")
    bwd = getattr(rconv, f"max_pool{nd}d_backward")
    return Problem(
        name=f"max_pool{nd}d {kw}",
        arrays={"input": x},
        diff=("input",),
        forward=lambda input: fwd(input, **kw),
        backward=lambda g, input: bwd(g, input, **kw),
        reference=lambda g, input: (ref_max_pool_grad(g, input, nd, **kw),),
        seed=seed,
        batched_name="input",
    )


def avg_pool_problem(nd, x, seed, **kw):
    fwd = getattr(rconv, f"avg_pool{nd}d")
    bwd = getattr(rconv, f"avg_pool{nd}d_backward")
    return Problem(
        name=f"avg_pool{nd}d {kw}",
        arrays={"input": x},
        diff=("input",),
        forward=lambda input: fwd(input, **kw),
        backward=lambda g, input: bwd(g, input, **kw),
        reference=lambda g, input: (
            ref_plane_pool_grad(g, input, nd, lambda p: ref.avg_pool(p, nd, **kw)),
        ),
        seed=seed,
        batched_name="input",
    )


def adaptive_problem(nd, x, output_size, seed):
    fwd = getattr(rconv, f"adaptive_avg_pool{nd}d")
    bwd = getattr(rconv, f"adaptive_avg_pool{nd}d_backward")
    return Problem(
        name=f"adaptive_avg_pool{nd}d output_size={output_size}",
        arrays={"input": x},
        diff=("input",),
        forward=lambda input: fwd(input, output_size),
        backward=lambda g, input: bwd(g, input),
        reference=lambda g, input: (
            ref_plane_pool_grad(g, input, nd, lambda p: ref.adaptive_avg_pool(p, nd, output_size)),
        ),
        seed=seed,
        batched_name="input",
    )


def relu_problem(x, seed):
    return Problem(
        name="relu",
        arrays={"input": x},
        diff=("input",),
        forward=lambda input: rconv.relu(input),
        backward=lambda g, input: rconv.relu_backward(g, input),
        reference=lambda g, input: (np.where(input <= 0, 0.0, g),),
        seed=seed,
    )


def linear_problem(x, w, b, seed):
    return Problem(
        name=f"linear x{x.shape} w{w.shape}",
        arrays={"input": x, "weight": w, "bias": b},
        diff=("input", "weight", "bias"),
        forward=lambda input, weight, bias: rconv.linear(input, weight, bias),
        backward=lambda g, input, weight, bias: rconv.linear_backward(g, input, weight),
        reference=lambda g, input, weight, bias: ref_linear_grads(g, input, weight),
        seed=seed,
    )


def cross_entropy_problem(logits, target, seed):
    return Problem(
        name=f"cross_entropy logits{logits.shape} target {target.dtype}",
        arrays={"logits": logits},
        diff=("logits",),
        forward=lambda logits: rconv.cross_entropy(logits, target),
        backward=lambda g, logits: rconv.cross_entropy_backward(logits, target),
        reference=lambda g, logits: (ref_cross_entropy_grad(logits, target),),
        seed=seed,
        has_grad_output=False,
    )


# ----------------------------------------------------------------------------------------------
# strategies (sizes kept tiny: finite differences call the forward twice per coordinate)

CONV_MAX_SPATIAL = {1: 10, 2: 6, 3: 4}
CONV_MAX_KERNEL = {1: 4, 2: 3, 3: 3}
CONV_MAX_CHANNELS = {1: 4, 2: 4, 3: 3}
POOL_MAX_SPATIAL = {1: 12, 2: 7, 3: 4}
POOL_MAX_KERNEL = {1: 4, 2: 3, 3: 3}
POOL_MAX_DILATION = {1: 3, 2: 2, 3: 2}


@st.composite
def conv_problems(draw, nd):
    g = draw_conv_geometry(
        draw, nd, max_channels=CONV_MAX_CHANNELS[nd], max_kernel=CONV_MAX_KERNEL[nd], max_dilation=2,
        max_spatial=CONV_MAX_SPATIAL[nd], max_group_width=2,
    )
    c_in, c_out, groups, kernel, spatial = g["c_in"], g["c_out"], g["groups"], g["kernel"], list(g["spatial"])
    stride, dilation, padding, padding_mode = g["stride"], g["dilation"], g["padding"], g["padding_mode"]

    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in) + tuple(spatial))
    w = rng.standard_normal((c_out, c_in // groups) + kernel)
    b = rng.standard_normal(c_out)
    return conv_problem(
        nd, x, w, b, seed,
        stride=maybe_int(draw, stride),
        padding=padding,
        dilation=maybe_int(draw, dilation),
        groups=groups,
        padding_mode=padding_mode,
    )


@st.composite
def pool_problems(draw, nd, kind):
    kernel = tuple(draw(st.integers(1, POOL_MAX_KERNEL[nd])) for _ in range(nd))
    if draw(st.booleans()):
        stride = None
    else:
        stride = maybe_int(draw, tuple(draw(st.integers(1, 3)) for _ in range(nd)))
    pads = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    if kind == "max":
        dil = tuple(draw(st.integers(1, POOL_MAX_DILATION[nd])) for _ in range(nd))
    else:
        dil = (1,) * nd
    spatial = []
    for k, p, d in zip(kernel, pads, dil):
        lo = max(1, d * (k - 1) + 1 - 2 * p)
        spatial.append(draw(st.integers(lo, max(lo, POOL_MAX_SPATIAL[nd]))))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + tuple(spatial)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kw = dict(
        kernel_size=maybe_int(draw, kernel),
        stride=stride,
        padding=maybe_int(draw, pads),
        ceil_mode=draw(st.booleans()),
    )
    if kind == "max":
        kw["dilation"] = maybe_int(draw, dil)
        x = distinct_values(shape, rng)
        # a window lying wholly in the padding has no argmax (its output is -inf): not generated
        assume((ref.max_pool(x, nd, **kw)[1] >= 0).all())
        return max_pool_problem(nd, x, seed, **kw)
    kw["count_include_pad"] = draw(st.booleans())
    return avg_pool_problem(nd, rng.standard_normal(shape), seed, **kw)


@st.composite
def adaptive_problems(draw, nd):
    spatial = tuple(draw(st.integers(1, POOL_MAX_SPATIAL[nd])) for _ in range(nd))
    sizes = [draw(st.integers(1, size + 1)) for size in spatial]
    form = draw(st.sampled_from(["tuple", "int", "none"]))
    if form == "int":
        output_size = sizes[0]
    elif form == "none":  # None keeps that input size
        output_size = tuple(None if draw(st.booleans()) else s for s in sizes)
    else:
        output_size = tuple(sizes)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3))) + spatial
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).standard_normal(shape)
    return adaptive_problem(nd, x, output_size, seed)


@st.composite
def relu_problems(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=0, max_size=4)))
    seed = draw(st.integers(0, 2**32 - 1))
    return relu_problem(away_from_zero(shape, np.random.default_rng(seed)), seed)


@st.composite
def linear_problems(draw):
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    in_f = draw(st.integers(1, 6))
    out_f = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return linear_problem(
        rng.standard_normal(lead + (in_f,)),
        rng.standard_normal((out_f, in_f)),
        rng.standard_normal(out_f),
        seed,
    )


@st.composite
def cross_entropy_problems(draw):
    n = draw(st.integers(1, 5))
    c = draw(st.integers(1, 6))
    scale = draw(st.sampled_from([0.5, 3.0, 20.0]))
    target_dtype = draw(st.sampled_from([np.int64, np.int32, np.int16, np.int8, np.uint8]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c)) * scale
    target = rng.integers(0, c, size=n).astype(target_dtype)
    return cross_entropy_problem(logits, target, seed)


def problems(op):
    if op in CONV_OPS:
        return conv_problems(op_nd(op))
    if op in MAX_OPS:
        return pool_problems(op_nd(op), "max")
    if op in AVG_OPS:
        return pool_problems(op_nd(op), "avg")
    if op in ADAPTIVE_OPS:
        return adaptive_problems(op_nd(op))
    return {
        "relu": relu_problems,
        "linear": linear_problems,
        "cross_entropy": cross_entropy_problems,
    }[op]()


# ----------------------------------------------------------------------------------------------
# 1. finite differences in float64


def check_finite_differences(prob):
    rng = np.random.default_rng(prob.seed ^ 0x5EED)
    g = prob.grad_output(rng)
    grads = prob.grads(g)
    projection = 1.0 if g is None else g
    for name, grad in zip(prob.diff, grads):
        arr = prob.arrays[name]
        assert isinstance(grad, np.ndarray), f"{prob.name}: grad of {name} is {type(grad)}"
        assert grad.dtype == np.float64, f"{prob.name}: grad of {name} has dtype {grad.dtype}"
        assert grad.shape == arr.shape, f"{prob.name}: grad of {name} {grad.shape} != {arr.shape}"

        def forward_of(a, name=name):
            return prob.forward(**{**prob.arrays, name: a})

        fd_check(f"{prob.name}: d/d{name}", grad, arr, forward_of, projection, rng)


@pytest.mark.parametrize("op", ALL_OPS)
@given(data=st.data())
def test_backward_matches_finite_differences(op, data):
    check_finite_differences(data.draw(problems(op), label="problem"))


# A fixed grid that covers every padding mode with every padding form (also 'same' with
# stride > 1) and every kind of grouping, whatever hypothesis draws.
CONV_GRID = [
    dict(padding=1, stride=1, dilation=1),
    dict(padding=(2, 0, 1), stride=(2, 1, 3), dilation=(1, 2, 1)),
    dict(padding="valid", stride=2, dilation=1),
    dict(padding="same", stride=1, dilation=(2, 1, 1)),
    dict(padding="same", stride=2, dilation=1),
    dict(padding="same", stride=(3, 2, 2), dilation=(1, 2, 1)),
]


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("grouping", ["single", "grouped", "depthwise"])
def test_conv_backward_grid(nd, padding_mode, grouping):
    c_in, c_out, groups = {"single": (3, 2, 1), "grouped": (4, 6, 2), "depthwise": (3, 6, 3)}[grouping]
    size = {1: 9, 2: 6, 3: 5}[nd]
    kernel = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}[nd]
    seed = 1000 * nd + 10 * PADDING_MODES.index(padding_mode) + len(grouping)
    rng = np.random.default_rng(seed)
    for i, base in enumerate(CONV_GRID):
        kw = {k: (v[:nd] if isinstance(v, tuple) else v) for k, v in base.items()}
        x = rng.standard_normal((2, c_in) + (size,) * nd)
        w = rng.standard_normal((c_out, c_in // groups) + kernel)
        b = rng.standard_normal(c_out)
        prob = conv_problem(nd, x, w, b, seed + i, groups=groups, padding_mode=padding_mode, **kw)
        check_finite_differences(prob)
        check_reference(prob)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool_backward_grid(nd, ceil_mode, count_include_pad):
    rng = np.random.default_rng(nd + 2 * ceil_mode + 4 * count_include_pad)
    for size, k, s, p in [(7, 3, 2, 1), (6, 2, 3, 1), (5, 3, 1, 0), (8, 4, 3, 2)]:
        x = rng.standard_normal((2, 2) + (size,) * nd)
        prob = avg_pool_problem(nd, x, size, kernel_size=k, stride=s, padding=p,
                                ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        check_finite_differences(prob)
        check_reference(prob)


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("divisor_override", [3, -2])
def test_avg_pool_backward_with_divisor_override(nd, divisor_override):
    rng = np.random.default_rng(nd + 5 * abs(divisor_override))
    for size, k, s, p, ceil_mode in [(7, 3, 2, 1, True), (6, 2, 3, 1, False), (5, 3, 1, 0, False)]:
        x = rng.standard_normal((2, 2) + (size,) * nd)
        prob = avg_pool_problem(nd, x, size, kernel_size=k, stride=s, padding=p, ceil_mode=ceil_mode,
                                divisor_override=divisor_override)
        check_finite_differences(prob)
        check_reference(prob)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_backward_grid(nd, ceil_mode):
    rng = np.random.default_rng(nd + 10 * ceil_mode)
    for size, k, s, p, d in [(7, 3, 2, 1, 1), (6, 2, 3, 1, 2), (8, 3, 2, 1, 2), (5, 2, None, 0, 1)]:
        x = distinct_values((2, 2) + (size,) * nd, rng)
        prob = max_pool_problem(nd, x, size, kernel_size=k, stride=s, padding=p, dilation=d,
                                ceil_mode=ceil_mode)
        check_finite_differences(prob)
        check_reference(prob)


# ----------------------------------------------------------------------------------------------
# 2. exact float64 references


def check_reference(prob):
    rng = np.random.default_rng(prob.seed ^ 0xF00D)
    g = prob.grad_output(rng)
    got = prob.grads(g)
    expected = prob.reference(g, **prob.arrays)
    for name, a, e in zip(prob.diff, got, expected):
        try:
            assert_close(a, e, np.float64)
        except AssertionError as err:
            raise AssertionError(f"{prob.name}: grad of {name}: {err}") from None


@pytest.mark.parametrize("op", ALL_OPS)
@given(data=st.data())
def test_backward_matches_reference(op, data):
    check_reference(data.draw(problems(op), label="problem"))


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data())
def test_conv_grad_bias_is_sum_of_grad_output(nd, data):
    prob = data.draw(conv_problems(nd), label="problem")
    g = prob.grad_output(np.random.default_rng(prob.seed))
    _, _, gb = prob.grads(g)
    np.testing.assert_allclose(gb, g.sum(axis=(0,) + tuple(range(2, 2 + nd))), rtol=1e-12, atol=1e-12)


def test_relu_backward_at_zero_and_nan():
    # PyTorch's threshold_backward: 0 where input <= 0, else grad_output. Exactly 0 at 0, -0.0
    # and the negatives; passed through for any positive and for NaN (NaN <= 0 is false: PyTorch
    # gives the gradient there, rconv gave 0 before).
    x = np.array([np.nan, 0.0, -0.0, -1.0, 1e-300, 2.0, -np.inf, np.inf])
    g = np.arange(1.0, 9.0)
    for dtype in DTYPES:
        got = rconv.relu_backward(g.astype(dtype), x.astype(dtype))
        assert got.dtype == dtype
        expected = [1, 0, 0, 0, 5 if dtype == np.float64 else 0, 6, 0, 8]  # 1e-300 is 0 in f32
        np.testing.assert_array_equal(got, np.array(expected, dtype=dtype))


def test_linear_backward_without_input_features():
    # PyTorch's own sample: in_features = 0 leaves grad_input and grad_weight empty, but the bias
    # gradient still sums grad_output over the rows ([3, 3]; it was [0, 0]).
    for dtype in DTYPES:
        g = np.ones((3, 2), dtype)
        gx, gw, gb = rconv.linear_backward(g, np.zeros((3, 0), dtype), np.zeros((2, 0), dtype))
        assert gx.shape == (3, 0) and gw.shape == (2, 0) and gb.dtype == dtype
        np.testing.assert_array_equal(gb, [3, 3])
        g = np.arange(24.0).reshape(2, 3, 4).astype(dtype)
        _, _, gb = rconv.linear_backward(g, np.zeros((2, 3, 0), dtype), np.zeros((4, 0), dtype))
        np.testing.assert_array_equal(gb, g.astype(np.float64).sum(axis=(0, 1)))


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_with_a_1d_weight(lead, dtype):
    # PyTorch: weight (in_features,) gives (*,): one output feature, its axis dropped; the bias
    # is then 0-d. The reference is the (1, in_features) weight's, with the axis removed.
    rng = np.random.default_rng(7)
    x = rng.standard_normal(lead + (4,)).astype(dtype)
    w = rng.standard_normal(4).astype(dtype)
    b = np.array(0.5, dtype)
    got = rconv.linear(x, w)
    assert got.shape == lead and got.dtype == dtype
    assert_close(got, ref.linear(x, w[None])[..., 0], dtype)
    assert_close(rconv.linear(x, w, b), ref.linear(x, w[None], b[None])[..., 0], dtype)
    g = rng.standard_normal(lead).astype(dtype)
    gx, gw, gb = rconv.linear_backward(g, x, w)
    want = ref_linear_grads(np.asarray(g, np.float64)[..., None], np.asarray(x, np.float64), np.asarray(w, np.float64)[None])
    assert gx.shape == x.shape and gw.shape == (4,) and gb.shape == ()
    assert_close(gx, want[0], dtype)
    assert_close(gw, want[1][0], dtype)
    assert_close(gb, want[2][0], dtype)
    with pytest.raises(ValueError, match="bias"):
        rconv.linear(x, w, np.zeros(1, dtype))
    with pytest.raises(ValueError, match="grad_output"):
        rconv.linear_backward(np.zeros(lead + (1,), dtype), x, w)


def test_linear_backward_hand():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    w = np.array([[1.0, 0.0], [2.0, -1.0]])
    g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gx, gw, gb = rconv.linear_backward(g, x, w)
    np.testing.assert_array_equal(gx, [[1, 0], [2, -1], [3, -1]])
    np.testing.assert_array_equal(gw, [[6, 8], [8, 10]])
    np.testing.assert_array_equal(gb, [2, 2])


def test_cross_entropy_backward_hand_and_stable():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    got = rconv.cross_entropy_backward(logits, np.array([0, 1]))
    np.testing.assert_allclose(got, [[-0.25, 0.25], [0.375, -0.375]], rtol=1e-14, atol=1e-15)
    # huge logits: the softmax must subtract the max (no inf / NaN)
    for dtype in DTYPES:
        big = np.array([[1000.0, 0.0, -1000.0], [5e4, 5e4, 0.0]], dtype=dtype)
        got = rconv.cross_entropy_backward(big, np.array([1, 0]))
        assert got.dtype == dtype and np.isfinite(got).all()
        np.testing.assert_allclose(got, [[0.5, -0.5, 0.0], [-0.25, 0.25, 0.0]], atol=1e-6)


@pytest.mark.parametrize(
    "mode, expected_gx",
    [
        # x = [1, 2, 3], w = [1], padding 1: padded [p0, 1, 2, 3, p4]
        ("zeros", [1, 1, 1]),
        ("reflect", [1, 3, 1]),  # [2, 1, 2, 3, 2]
        ("replicate", [2, 1, 2]),  # [1, 1, 2, 3, 3]
        ("circular", [2, 1, 2]),  # [3, 1, 2, 3, 1]
    ],
)
def test_conv1d_backward_hand_padding_modes(mode, expected_gx):
    x = np.array([[[1.0, 2.0, 3.0]]])
    w = np.array([[[1.0]]])
    g = np.ones((1, 1, 5))
    gx, gw, gb = rconv.conv1d_backward(g, x, w, padding=1, padding_mode=mode)
    np.testing.assert_array_equal(gx[0, 0], expected_gx)
    np.testing.assert_array_equal(gw[0, 0], [6.0 if mode == "zeros" else 10.0])
    np.testing.assert_array_equal(gb, [5.0])


def test_conv1d_backward_hand_stride_dilation():
    # x length 7, w = [1, 10] dilation 2 stride 2: outputs at 0, 2, 4 read x[j] and x[j + 2]
    x = np.arange(7.0)[None, None]
    w = np.array([[[1.0, 10.0]]])
    g = np.array([[[1.0, 2.0, 4.0]]])
    gx, gw, gb = rconv.conv1d_backward(g, x, w, stride=2, dilation=2)
    np.testing.assert_array_equal(gx[0, 0], [1, 0, 12, 0, 24, 0, 40])
    np.testing.assert_array_equal(gw[0, 0], [0 + 4 + 16, 2 + 8 + 24])
    np.testing.assert_array_equal(gb, [7.0])


def test_max_pool1d_backward_hand_ties_and_nan():
    g = np.array([[[1.0, 10.0, 100.0]]])
    # ties: the first maximum of each window takes the gradient
    got = rconv.max_pool1d_backward(g, np.zeros((1, 1, 4)), 2, stride=1)
    np.testing.assert_array_equal(got[0, 0], [1, 10, 100, 0])
    # NaN wins its windows
    x = np.array([[[1.0, np.nan, 3.0, 0.0]]])
    got = rconv.max_pool1d_backward(g, x, 2, stride=1)
    np.testing.assert_array_equal(got[0, 0], [0, 11, 100, 0])
    # padding never takes gradient; ceil_mode window hanging past the end
    x = np.array([[[-5.0, -1.0, -3.0, -2.0, -4.0]]])
    got = rconv.max_pool1d_backward(np.array([[[1.0, 10.0, 100.0]]]), x, 2, padding=1)
    np.testing.assert_array_equal(got[0, 0], [1, 10, 0, 100, 0])
    got = rconv.max_pool1d_backward(g, x, 2, ceil_mode=True)
    np.testing.assert_array_equal(got[0, 0], [0, 1, 0, 10, 100])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_backward_ties_match_reference(nd):
    # few distinct values: many ties, resolved as the forward (first in window order)
    rng = np.random.default_rng(nd)
    for kw in [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
               dict(kernel_size=2, stride=1, dilation=2, ceil_mode=True)]:
        x = rng.integers(0, 3, size=(2, 2) + (5,) * nd).astype(np.float64)
        g = rng.standard_normal(getattr(rconv, f"max_pool{nd}d")(x, **kw).shape)
        got = getattr(rconv, f"max_pool{nd}d_backward")(g, x, **kw)
        assert_close(got, ref_max_pool_grad(g, x, nd, **kw), np.float64)


def test_avg_pool1d_backward_hand_divisors():
    x = np.zeros((1, 1, 5))
    g = np.ones((1, 1, 3))
    # windows [-1, 2), [1, 4), [3, 6) clipped to [-1, 6): divisors 3, 3, 3 / in-bounds 2, 3, 2
    got = rconv.avg_pool1d_backward(g, x, 3, stride=2, padding=1)
    np.testing.assert_allclose(got[0, 0], [1 / 3, 2 / 3, 1 / 3, 2 / 3, 1 / 3], rtol=1e-15)
    got = rconv.avg_pool1d_backward(g, x, 3, stride=2, padding=1, count_include_pad=False)
    np.testing.assert_allclose(got[0, 0], [1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2], rtol=1e-15)
    # ceil_mode: the last window [4, 6) hangs past the end, its overhang is not counted
    got = rconv.avg_pool1d_backward(np.array([[[2.0, 4.0, 8.0]]]), x, 2, ceil_mode=True)
    np.testing.assert_allclose(got[0, 0], [1, 1, 2, 2, 8], rtol=1e-15)


def test_adaptive_avg_pool1d_backward_hand_overlapping_windows():
    # in 5 -> out 3: windows [0, 2), [1, 4), [3, 5)
    got = rconv.adaptive_avg_pool1d_backward(np.array([[[2.0, 3.0, 4.0]]]), np.zeros((1, 1, 5)))
    np.testing.assert_allclose(got[0, 0], [1, 2, 1, 3, 2], rtol=1e-15)
    # out larger than in: 2 -> 3: windows [0, 1), [0, 2), [1, 2)
    got = rconv.adaptive_avg_pool1d_backward(np.array([[[2.0, 4.0, 8.0]]]), np.zeros((1, 1, 2)))
    np.testing.assert_allclose(got[0, 0], [4, 10], rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_gradients(dtype):
    x = np.zeros((0, 3, 6, 6), dtype=dtype)
    w = np.ones((4, 3, 3, 3), dtype=dtype)
    gx, gw, gb = rconv.conv2d_backward(np.zeros((0, 4, 4, 4), dtype=dtype), x, w)
    assert gx.shape == x.shape and gx.dtype == dtype
    assert gw.shape == w.shape and gw.dtype == dtype and not gw.any()
    assert gb.shape == (4,) and gb.dtype == dtype and not gb.any()
    gx, gw, gb = rconv.linear_backward(
        np.zeros((0, 5), dtype=dtype), np.zeros((0, 3), dtype=dtype), np.ones((5, 3), dtype=dtype)
    )
    assert gx.shape == (0, 3) and gx.dtype == dtype
    assert gw.shape == (5, 3) and not gw.any() and gb.shape == (5,) and not gb.any()


# ----------------------------------------------------------------------------------------------
# 3. float32 agrees with float64; dtypes and shapes


@pytest.mark.parametrize("op", ALL_OPS)
@given(data=st.data())
def test_float32_backward_matches_float64(op, data):
    prob = data.draw(problems(op), label="problem")
    rng = np.random.default_rng(prob.seed ^ 0xF32)
    arrays32 = {k: v.astype(np.float32) for k, v in prob.arrays.items()}
    arrays64 = {k: v.astype(np.float64) for k, v in arrays32.items()}
    g = prob.grad_output(rng)
    g32 = None if g is None else g.astype(np.float32)
    g64 = None if g is None else g32.astype(np.float64)
    got32 = prob.grads(g32, arrays32)
    got64 = prob.grads(g64, arrays64)
    for name, a32, a64 in zip(prob.diff, got32, got64):
        assert a64.dtype == np.float64 and a64.shape == prob.arrays[name].shape
        try:
            assert_close(a32, a64, np.float32)  # dtype float32, same shape, within 1e-4
        except AssertionError as err:
            raise AssertionError(f"{prob.name}: grad of {name}: {err}") from None


# ----------------------------------------------------------------------------------------------
# unbatched input


@pytest.mark.parametrize("op", SPATIAL_OPS)
@given(data=st.data())
def test_unbatched_matches_batched(op, data):
    prob = data.draw(problems(op), label="problem")
    g = prob.grad_output(np.random.default_rng(prob.seed))
    name = prob.batched_name
    one = {**prob.arrays, name: prob.arrays[name][:1]}
    unb = {**prob.arrays, name: prob.arrays[name][0]}
    got_b = prob.grads(g[:1], one)
    got_u = prob.grads(g[0], unb)
    for dname, gb, gu in zip(prob.diff, got_b, got_u):
        if dname == name:
            assert gu.shape == unb[name].shape
            gb = gb[0]
        assert gu.shape == gb.shape and gu.dtype == gb.dtype
        np.testing.assert_allclose(gu, gb, rtol=1e-12, atol=1e-12, err_msg=f"{prob.name}: {dname}")


# ----------------------------------------------------------------------------------------------
# 4. bitwise determinism across thread counts


@pytest.fixture
def restore_threads():
    before = rconv.get_num_threads()
    yield
    rconv.set_num_threads(before)


def backward_workloads(dtype):
    """name -> zero-argument call of a backward, each big enough to split across threads."""
    rng = np.random.default_rng(4321)

    def a(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def conv(nd, x, w, **kw):
        g = a(*getattr(rconv, f"conv{nd}d")(x, w, **kw).shape)
        return lambda: getattr(rconv, f"conv{nd}d_backward")(g, x, w, **kw)

    def pool(name, x, *args, **kw):
        g = a(*getattr(rconv, name)(x, *args, **kw).shape)
        if name.startswith("adaptive"):
            return lambda: getattr(rconv, f"{name}_backward")(g, x)
        return lambda: getattr(rconv, f"{name}_backward")(g, x, *args, **kw)

    x_b = a(4, 8, 16, 16)
    x_p = a(4, 8, 32, 32)
    x_p1 = a(1, 1, 200, 200)
    x_1d = a(2, 8, 2048)
    x_3d = a(2, 4, 12, 12, 12)
    x_lin, w_lin = a(300, 256), a(128, 256)
    g_lin = a(300, 128)
    x_relu, g_relu = a(1_000_003), a(1_000_003)
    logits = a(300, 1000)
    target = rng.integers(0, 1000, size=300)
    return {
        "conv2d_batch": conv(2, x_b, a(8, 8, 3, 3), padding=1),
        "conv2d_groups2": conv(2, x_b, a(8, 4, 3, 3), padding=1, groups=2),
        "conv2d_one_sample_large": conv(2, a(1, 3, 96, 96), a(8, 3, 5, 5), padding=2),
        "conv2d_depthwise_same_stride": conv(
            2, a(2, 16, 24, 24), a(16, 1, 3, 3), stride=2, padding="same", groups=16,
            padding_mode="reflect"),
        "conv2d_pointwise": conv(2, a(4, 32, 16, 16), a(16, 32, 1, 1)),
        "conv1d_long": conv(1, a(1, 4, 4096), a(8, 4, 7), padding=3, padding_mode="circular"),
        "conv3d": conv(3, a(2, 4, 10, 10, 10), a(6, 4, 3, 3, 3), padding=1,
                       padding_mode="replicate"),
        "max_pool2d": pool("max_pool2d", x_p, 3, stride=2, padding=1),
        "max_pool2d_one_plane": pool("max_pool2d", x_p1, 2),
        "max_pool1d": pool("max_pool1d", x_1d, 3, stride=2, padding=1, dilation=2),
        "max_pool3d": pool("max_pool3d", x_3d, 2),
        "avg_pool2d": pool("avg_pool2d", x_p, 3, stride=2, padding=1, ceil_mode=True),
        "avg_pool2d_one_plane": pool("avg_pool2d", x_p1, 3, stride=1),
        "avg_pool1d": pool("avg_pool1d", x_1d, 4, stride=3, padding=2, count_include_pad=False),
        "avg_pool3d": pool("avg_pool3d", x_3d, 3, stride=2, padding=1),
        "adaptive_avg_pool2d": pool("adaptive_avg_pool2d", x_p, (5, 7)),
        "adaptive_avg_pool2d_one_plane": pool("adaptive_avg_pool2d", x_p1, 13),
        "adaptive_avg_pool1d": pool("adaptive_avg_pool1d", x_1d, 300),
        "adaptive_avg_pool3d": pool("adaptive_avg_pool3d", x_3d, (5, 3, 7)),
        "relu": lambda: rconv.relu_backward(g_relu, x_relu),
        "linear": lambda: rconv.linear_backward(g_lin, x_lin, w_lin),
        "linear_3d_input": lambda: rconv.linear_backward(
            g_lin.reshape(3, 100, 128), x_lin.reshape(3, 100, 256), w_lin),
        "cross_entropy": lambda: rconv.cross_entropy_backward(logits, target),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_bitwise_identical_for_any_thread_count(dtype, restore_threads):
    results = {}
    for threads in (1, 2, 3):
        rconv.set_num_threads(threads)
        assert rconv.get_num_threads() == threads
        for name, call in backward_workloads(dtype).items():
            out = call()
            out = out if isinstance(out, tuple) else (out,)
            results.setdefault(name, []).append(
                [(o.dtype, o.shape, o.tobytes()) for o in out]
            )
    differ = [name for name, runs in results.items() if any(r != runs[0] for r in runs[1:])]
    assert not differ, f"results differ between 1, 2 and 3 threads: {differ}"


# ----------------------------------------------------------------------------------------------
# 5. errors


def _conv_case():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))


@pytest.mark.parametrize(
    "g_shape, kwargs",
    [
        ((2, 4, 4, 5), {}),
        ((2, 5, 4, 4), {}),
        ((3, 4, 4, 4), {}),
        ((4, 4, 4), {}),
        ((1, 2, 4, 4, 4), {}),
        ((2, 4, 4, 4), dict(padding=1)),  # forward output is (2, 4, 6, 6)
        ((2, 4, 4, 4), dict(stride=2)),  # forward output is (2, 4, 2, 2)
        ((2, 4, 4, 4), dict(padding="same")),
    ],
)
def test_conv_backward_wrong_grad_output_shape(g_shape, kwargs):
    x, w = _conv_case()
    with pytest.raises(ValueError, match="grad_output"):
        rconv.conv2d_backward(np.zeros(g_shape), x, w, **kwargs)


@pytest.mark.parametrize("g_shape", [(4, 4, 5), (2, 4, 4, 4)])
def test_conv_backward_unbatched_input_wrong_grad_output_shape(g_shape):
    x, w = _conv_case()
    with pytest.raises(ValueError, match="grad_output"):
        rconv.conv2d_backward(np.zeros(g_shape), x[0], w)


@pytest.mark.parametrize("op", SPATIAL_OPS)
def test_unbatched_input_rejects_batched_grad_output(op):
    # The forward of an unbatched (C, *spatial) input gives an unbatched output, and grad_output
    # "must have exactly the forward's output shape" (notes/API.md): a (1, ...) grad_output is a
    # shape mismatch, as it is for every other wrong shape.
    nd = op_nd(op)
    x = np.zeros((3,) + (6,) * nd)
    if op in CONV_OPS:
        w = np.zeros((4, 3) + (3,) * nd)
        call = lambda g: getattr(rconv, f"{op}_backward")(g, x, w)  # noqa: E731
        out_shape = (4,) + (4,) * nd
    elif op in ADAPTIVE_OPS:
        call = lambda g: getattr(rconv, f"{op}_backward")(g, x)  # noqa: E731
        out_shape = (3,) + (2,) * nd
    else:
        call = lambda g: getattr(rconv, f"{op}_backward")(g, x, 2)  # noqa: E731
        out_shape = (3,) + (3,) * nd
    grad = call(np.zeros(out_shape))  # the right shape is accepted
    grad_input = grad[0] if op in CONV_OPS else grad  # conv backward returns (dx, dw, db)
    assert grad_input.shape == x.shape
    with pytest.raises(ValueError, match="grad_output"):
        call(np.zeros((1,) + out_shape))


@pytest.mark.parametrize("nd", [1, 3])
def test_conv1d_3d_backward_wrong_grad_output_shape(nd):
    x = np.zeros((2, 3) + (5,) * nd)
    w = np.zeros((4, 3) + (2,) * nd)
    fn = getattr(rconv, f"conv{nd}d_backward")
    for g_shape in [(2, 4) + (3,) * nd, (2, 5) + (4,) * nd, (4,) + (4,) * nd]:
        with pytest.raises(ValueError, match="grad_output"):
            fn(np.zeros(g_shape), x, w)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_backward_wrong_grad_output_shape(nd, kind):
    x = np.random.default_rng(nd).standard_normal((2, 3) + (6,) * nd)
    fn = getattr(rconv, f"{kind}_pool{nd}d_backward")
    # forward output: (2, 3) + (3,) * nd
    for g_shape in [
        (2, 3) + (4,) * nd,
        (2, 3) + (3,) * (nd - 1) + (2,),
        (2, 4) + (3,) * nd,
        (1, 3) + (3,) * nd,
        (3,) + (3,) * nd,
    ]:
        with pytest.raises(ValueError, match="grad_output"):
            fn(np.zeros(g_shape), x, 2)
    with pytest.raises(ValueError, match="grad_output"):
        fn(np.zeros((2, 3) + (3,) * nd), x, 2, stride=1)  # forward output 5 per dim


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_adaptive_pool_backward_wrong_grad_output_shape(nd):
    x = np.zeros((2, 3) + (6,) * nd)
    fn = getattr(rconv, f"adaptive_avg_pool{nd}d_backward")
    for g_shape in [(3, 3) + (2,) * nd, (2, 4) + (2,) * nd, (3,) + (2,) * nd, (1, 2, 3) + (2,) * nd]:
        with pytest.raises(ValueError, match="grad_output"):
            fn(np.zeros(g_shape), x)


def test_relu_linear_backward_wrong_grad_output_shape():
    with pytest.raises(ValueError, match="grad_output"):
        rconv.relu_backward(np.zeros((3, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="grad_output"):
        rconv.relu_backward(np.zeros((2, 4)), np.zeros((2, 5)))
    x, w = np.zeros((6, 3)), np.zeros((5, 3))
    for g_shape in [(6, 4), (7, 5), (5,), (1, 6, 5)]:
        with pytest.raises(ValueError, match="grad_output"):
            rconv.linear_backward(np.zeros(g_shape), x, w)


def _all_backward_calls(g_dtype, x_dtype, w_dtype):
    """name -> call of every backward with grad_output, input and weight in the given dtypes."""
    g1, x1 = np.zeros((2, 4, 4), g_dtype), np.zeros((2, 3, 6), x_dtype)
    w1 = np.zeros((4, 3, 3), w_dtype)
    g2, x2 = np.zeros((2, 4, 4, 4), g_dtype), np.zeros((2, 3, 6, 6), x_dtype)
    w2 = np.zeros((4, 3, 3, 3), w_dtype)
    g3, x3 = np.zeros((1, 4, 2, 2, 2), g_dtype), np.zeros((1, 3, 4, 4, 4), x_dtype)
    w3 = np.zeros((4, 3, 3, 3, 3), w_dtype)
    calls = {
        "conv1d": lambda: rconv.conv1d_backward(g1, x1, w1),
        "conv2d": lambda: rconv.conv2d_backward(g2, x2, w2),
        "conv3d": lambda: rconv.conv3d_backward(g3, x3, w3),
        "linear": lambda: rconv.linear_backward(
            np.zeros((2, 4), g_dtype), np.zeros((2, 3), x_dtype), np.zeros((4, 3), w_dtype)),
    }
    if w_dtype == x_dtype:  # no weight: only grad_output can disagree
        pg1, pg2, pg3 = (np.zeros((2, 3, 3), g_dtype), np.zeros((2, 3, 3, 3), g_dtype),
                         np.zeros((1, 3, 2, 2, 2), g_dtype))
        calls.update({
            "max_pool1d": lambda: rconv.max_pool1d_backward(pg1, x1, 2),
            "max_pool2d": lambda: rconv.max_pool2d_backward(pg2, x2, 2),
            "max_pool3d": lambda: rconv.max_pool3d_backward(pg3, x3, 2),
            "avg_pool1d": lambda: rconv.avg_pool1d_backward(pg1, x1, 2),
            "avg_pool2d": lambda: rconv.avg_pool2d_backward(pg2, x2, 2),
            "avg_pool3d": lambda: rconv.avg_pool3d_backward(pg3, x3, 2),
            "adaptive_avg_pool1d": lambda: rconv.adaptive_avg_pool1d_backward(pg1, x1),
            "adaptive_avg_pool2d": lambda: rconv.adaptive_avg_pool2d_backward(pg2, x2),
            "adaptive_avg_pool3d": lambda: rconv.adaptive_avg_pool3d_backward(pg3, x3),
            "relu": lambda: rconv.relu_backward(np.zeros(7, g_dtype), np.zeros(7, x_dtype)),
        })
    return calls


@pytest.mark.parametrize(
    "dtypes",
    [
        (np.float32, np.float64, np.float64),
        (np.float64, np.float32, np.float32),
        (np.float64, np.float64, np.float32),
        (np.float32, np.float32, np.float64),
    ],
)
def test_mixed_dtypes_raise_type_error(dtypes):
    for name, call in _all_backward_calls(*dtypes).items():
        with pytest.raises(TypeError):
            call()
            pytest.fail(f"{name} accepted dtypes {dtypes}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_dtype_calls_succeed(dtype):
    # the calls of the mixed-dtype test are valid once the dtypes agree (so that test can only
    # pass through the dtype check)
    for name, call in _all_backward_calls(dtype, dtype, dtype).items():
        out = call()
        for o in out if isinstance(out, tuple) else (out,):
            assert o.dtype == dtype, name


def test_cross_entropy_backward_bad_arguments():
    logits = np.zeros((3, 4))
    with pytest.raises(TypeError):
        rconv.cross_entropy_backward(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="target"):
        rconv.cross_entropy_backward(logits, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="target"):
        rconv.cross_entropy_backward(logits, np.array([0, -1, 2]))
    with pytest.raises((TypeError, ValueError)):
        rconv.cross_entropy_backward(logits.astype(np.int64), np.array([0, 1, 2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_chw_hand(dtype):
    # (C, H, W) input with (K, H', W') grad_output works and equals the batched result
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 7, 6)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    g = rng.standard_normal((4, 5, 3)).astype(dtype)
    kw = dict(stride=(1, 2), padding=(0, 1), padding_mode="reflect")
    gx, gw, gb = rconv.conv2d_backward(g, x, w, **kw)
    bx, bw, bb = rconv.conv2d_backward(g[None], x[None], w, **kw)
    assert gx.shape == x.shape and gx.dtype == dtype
    np.testing.assert_array_equal(gx, bx[0])
    np.testing.assert_array_equal(gw, bw)
    np.testing.assert_array_equal(gb, bb)
    gp = rng.standard_normal((3, 3, 3)).astype(dtype)
    got = rconv.max_pool2d_backward(gp, x, 2)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, rconv.max_pool2d_backward(gp[None], x[None], 2)[0])


# ----------------------------------------------------------------------------------------------
# non-finite values reach exactly the outputs whose plain sums contain them


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_values_propagate_as_in_the_plain_sums(dtype):
    """Winograd (3x3, 16+ channels) mixes every element of a tile, and the direct weight
    gradient also reads positions of discarded wide-grid outputs: an inf or NaN must still only
    reach the outputs (and gradient entries) whose plain sum contains it, as in PyTorch."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 12, 12))
    w = rng.random((16, 16, 3, 3))
    g = rng.random((2, 16, 12, 12))
    x[0, 3, 5, 7], x[1, 0, 0, 11] = np.inf, np.nan
    g[0, 2, 6, 0], g[1, 5, 11, 11] = np.inf, np.nan
    x, w, g = x.astype(dtype), w.astype(dtype), g.astype(dtype)
    x64, w64, g64 = x.astype(np.float64), w.astype(np.float64), g.astype(np.float64)
    tol = dict(rtol=1e-10 if dtype == np.float64 else 1e-4)

    np.testing.assert_allclose(rconv.conv2d(x, w, padding=1), ref.conv(x64, w64, None, padding=1), **tol)

    # grad_input[n, c, y, x] = sum over k, i, j of w[k, c, i, j] * g[n, k, y + 1 - i, x + 1 - j]
    gp = np.zeros((2, 16, 14, 14))
    for i, j in itertools.product(range(3), range(3)):
        gp[:, :, i:i + 12, j:j + 12] += np.einsum("nkhw,kc->nchw", g64, w64[:, :, i, j])
    want_dx = gp[:, :, 1:13, 1:13]
    # grad_weight[k, c, i, j] = sum over n, y, x of g[n, k, y, x] * x_padded[n, c, y + i, x + j]
    xp = np.pad(x64, [(0, 0), (0, 0), (1, 1), (1, 1)])
    want_dw = np.zeros(w.shape)
    for i, j in itertools.product(range(3), range(3)):
        want_dw[:, :, i, j] = np.einsum("nkhw,nchw->kc", g64, xp[:, :, i:i + 12, j:j + 12])
    dx, dw, _ = rconv.conv2d_backward(g, x, w, padding=1)
    assert np.isfinite(want_dx).sum() > 0 and (~np.isfinite(want_dx)).sum() > 0
    assert np.isfinite(want_dw).sum() > 0 and (~np.isfinite(want_dw)).sum() > 0
    np.testing.assert_allclose(dx, want_dx, **tol)
    np.testing.assert_allclose(dw, want_dw, **tol)
