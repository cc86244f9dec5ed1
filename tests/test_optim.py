"""rconv.optim: each update checked against its formula written out here (several steps), and
against torch.optim where torch is installed."""

import math

import numpy as np
import pytest

from rconv import nn, optim

STEPS = 5


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in [(3, 4), (4,), (2, 1, 3, 3)]]


def grads_for(step, params, seed=1):
    rng = np.random.default_rng(seed * 1000 + step)
    return [rng.standard_normal(p.shape) for p in params]


def run(opt, params, steps=STEPS, grad_seed=1):
    """Set each step's gradients, step, and record the parameter values after each step."""
    history = []
    for t in range(steps):
        for p, g in zip(params, grads_for(t, params, grad_seed)):
            p.grad[...] = g
        opt.step()
        history.append([p.data.copy() for p in params])
    return history


# ----------------------------------------------------------------------------------------------
# SGD


def test_sgd_plain():
    params = make_params()
    start = [p.data.copy() for p in params]
    arrays = [p.data for p in params]
    run(optim.SGD(params, lr=0.1), params)
    expected = [s.copy() for s in start]
    for t in range(STEPS):
        for e, g in zip(expected, grads_for(t, params)):
            e -= 0.1 * g  # p = p - lr * g
    for p, e, a in zip(params, expected, arrays):
        np.testing.assert_allclose(p.data, e, rtol=1e-13, atol=1e-14)
        assert p.data is a  # updated in place


@pytest.mark.parametrize(
    "lr, momentum, dampening, weight_decay, nesterov",
    [
        (0.05, 0.9, 0.0, 0.0, False),
        (0.05, 0.9, 0.0, 0.01, False),
        (0.02, 0.8, 0.3, 0.001, False),
        (0.05, 0.9, 0.0, 0.0, True),
        (0.1, 0.5, 0.0, 0.02, True),
        (0.1, 0.0, 0.0, 0.05, False),
    ],
)
def test_sgd_momentum_nesterov_weight_decay(lr, momentum, dampening, weight_decay, nesterov):
    params = make_params()
    p_ref = [p.data.copy() for p in params]
    history = run(optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening,
                            weight_decay=weight_decay, nesterov=nesterov), params)
    # PyTorch's documented algorithm, written out
    buf = [None] * len(p_ref)
    for t in range(STEPS):
        for i, g in enumerate(grads_for(t, params)):
            g = g + weight_decay * p_ref[i]
            if momentum != 0:
                if t == 0:
                    buf[i] = g.copy()  # first step: buf = g (no dampening)
                else:
                    buf[i] = momentum * buf[i] + (1 - dampening) * g
                g = g + momentum * buf[i] if nesterov else buf[i]
            p_ref[i] = p_ref[i] - lr * g
        for got, want in zip(history[t], p_ref):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_sgd_first_steps_by_hand():
    # one scalar, momentum 0.9, lr 0.1, grads 1 then 2:
    # step 1: buf = 1,             p = 1 - 0.1 * 1    = 0.9
    # step 2: buf = 0.9 * 1 + 2 = 2.9, p = 0.9 - 0.1 * 2.9 = 0.61
    p = nn.Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad[:] = 1.0
    opt.step()
    assert p.data[0] == pytest.approx(0.9, abs=1e-15)
    p.grad[:] = 2.0
    opt.step()
    assert p.data[0] == pytest.approx(0.61, abs=1e-15)
    # nesterov: step 1 uses g + 0.9 * buf = 1.9 -> p = 1 - 0.19
    q = nn.Parameter(np.array([1.0]))
    opt = optim.SGD([q], lr=0.1, momentum=0.9, nesterov=True)
    q.grad[:] = 1.0
    opt.step()
    assert q.data[0] == pytest.approx(0.81, abs=1e-15)


# ----------------------------------------------------------------------------------------------
# Adam


@pytest.mark.parametrize(
    "lr, betas, eps, weight_decay",
    [
        (1e-3, (0.9, 0.999), 1e-8, 0.0),
        (1e-2, (0.8, 0.99), 1e-6, 0.0),
        (5e-3, (0.9, 0.999), 1e-8, 0.1),
        (1e-2, (0.0, 0.5), 1e-3, 0.01),
    ],
)
def test_adam_with_bias_correction(lr, betas, eps, weight_decay):
    params = make_params()
    p_ref = [p.data.copy() for p in params]
    history = run(optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), params)
    b1, b2 = betas
    m = [np.zeros_like(p) for p in p_ref]
    v = [np.zeros_like(p) for p in p_ref]
    for t in range(1, STEPS + 1):
        for i, g in enumerate(grads_for(t - 1, params)):
            g = g + weight_decay * p_ref[i]  # L2 into the gradient (Adam, not AdamW)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            p_ref[i] = p_ref[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
        for got, want in zip(history[t - 1], p_ref):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_adam_first_step_is_lr_times_sign():
    # With bias correction, step 1 moves each weight by lr * g / (|g| + eps) ~ lr * sign(g).
    params = make_params()
    start = [p.data.copy() for p in params]
    run(optim.Adam(params, lr=0.01), params, steps=1)
    for p, s, g in zip(params, start, grads_for(0, params)):
        np.testing.assert_allclose(s - p.data, 0.01 * np.sign(g), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# against torch.optim


@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)),
        ("SGD", dict(lr=0.05, momentum=0.7, dampening=0.2)),
        ("Adam", dict(lr=0.01, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.05)),
    ],
)
def test_matches_torch_optim(kind, kwargs):
    torch = pytest.importorskip("torch")
    params = make_params()
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    topt = getattr(torch.optim, kind)(tparams, **kwargs)
    history = run(getattr(optim, kind)(params, **kwargs), params)
    for t in range(STEPS):
        for tp, g in zip(tparams, grads_for(t, params)):
            tp.grad = torch.from_numpy(g.copy())
        topt.step()
        for got, tp in zip(history[t], tparams):
            np.testing.assert_allclose(got, tp.detach().numpy(), rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------------------------
# dtype, zero_grad, arguments


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.Adam(ps)])
def test_float32_stays_float32_and_zero_grad(make):
    params = make_params(np.float32)
    opt = make(params)
    run(opt, params, steps=2)
    assert all(p.dtype == np.float32 for p in params)
    opt.zero_grad()
    assert not any(p.grad.any() for p in params)


def test_optimiser_on_a_model():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    opt = optim.SGD(model.parameters(), lr=0.5)
    before = model.state_dict()
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.step()
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(v, before[k] - 0.5, rtol=1e-6)


@pytest.mark.parametrize(
    "make, exc, name",
    [
        (lambda ps: optim.SGD(ps, lr=-0.1), ValueError, "lr"),
        (lambda ps: optim.SGD(ps, lr="0.1"), TypeError, "lr"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=-1), ValueError, "momentum"),
        (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
        (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), ValueError, "nesterov"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov"),
        (lambda ps: optim.Adam(ps, lr=math.nan), ValueError, "lr"),
        (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
        (lambda ps: optim.Adam(ps, betas=0.9), TypeError, "betas"),
        (lambda ps: optim.Adam(ps, eps=-1e-8), ValueError, "eps"),
        (lambda ps: optim.Adam([]), ValueError, "params"),
        (lambda ps: optim.Adam(nn.Linear(2, 2)), TypeError, "model.parameters()"),
        (lambda ps: optim.Adam([np.zeros(3)]), TypeError, r"params\[0\]"),
        (lambda ps: optim.Adam(ps + ps), ValueError, "more than once"),
        (lambda ps: optim.SGD(ps[0], lr=0.1), TypeError, "params"),
    ],
)
def test_bad_arguments(make, exc, name):
    with pytest.raises(exc, match=name):
        make(make_params())


# ----------------------------------------------------------------------------------------------
# float32: the native update does NumPy's float32 arithmetic on the same formula, bit for bit


@pytest.mark.parametrize("kind, kwargs", [
    ("SGD", dict(lr=0.03, momentum=0.9, weight_decay=5e-4)),
    ("SGD", dict(lr=0.1, momentum=0.8, dampening=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("SGD", dict(lr=0.05)),
    ("Adam", dict(lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
])
def test_float32_steps_equal_numpy_float32_formula(kind, kwargs):
    params = make_params(np.float32)
    ref = [p.data.copy() for p in params]
    got = run(getattr(optim, kind)(params, **kwargs), params)
    f32 = np.float32
    state = [None] * len(ref)
    for t in range(STEPS):
        for i, g64 in enumerate(grads_for(t, params)):
            g, p = g64.astype(f32), ref[i]
            if kwargs.get("weight_decay", 0):
                g = g + f32(kwargs["weight_decay"]) * p
            if kind == "SGD":
                mu = f32(kwargs.get("momentum", 0.0))
                if mu:
                    if state[i] is None:
                        state[i] = g.copy()
                    else:
                        state[i] = state[i] * mu + f32(1 - kwargs.get("dampening", 0.0)) * g
                    g = g + mu * state[i] if kwargs.get("nesterov") else state[i]
                ref[i] = p - f32(kwargs["lr"]) * g
            else:
                b1, b2 = kwargs["betas"]
                m, v = state[i] if state[i] is not None else (np.zeros_like(p), np.zeros_like(p))
                m = m * f32(b1) + f32(1 - b1) * g
                v = v * f32(b2) + f32(1 - b2) * (g * g)
                state[i] = (m, v)
                step_size = f32(kwargs["lr"] / (1 - b1 ** (t + 1)))
                denom = np.sqrt(v) / f32(math.sqrt(1 - b2 ** (t + 1))) + f32(kwargs["eps"])
                ref[i] = p - step_size * (m / denom)
        for r, a in zip(ref, got[t]):
            assert r.dtype == np.float32
            np.testing.assert_array_equal(a, r)


def test_native_update_rejects_bad_state():
    p = nn.Parameter(np.zeros((3, 3), np.float32))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.data = np.zeros((3, 6), np.float32)[:, ::2]  # not contiguous: cannot be updated in place
    with pytest.raises(ValueError, match="param"):
        opt.step()
    p.data = np.zeros((3, 3), np.float32)
    p.grad = np.zeros((3, 3), np.float64)
    with pytest.raises(TypeError, match="grad"):
        opt.step()
