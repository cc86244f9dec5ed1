"""rconv.nn: layers against the functional calls they wrap, gradients, parameters, init."""

import math

import numpy as np
import pytest

import rconv
from rconv import nn
from rconv.models import lenet5

F = rconv.functional


def rand(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# each layer's forward is its functional call; its backward is the functional backward


CONV_CASES = [
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, dilation=2, groups=2), (2, 4, 11)),
    (nn.Conv1d, dict(in_channels=3, out_channels=2, kernel_size=4, padding="same", padding_mode="circular"), (2, 3, 9)),
    (nn.Conv2d, dict(in_channels=1, out_channels=6, kernel_size=5, padding=2), (3, 1, 12, 12)),
    (nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", groups=4, bias=False), (2, 4, 7, 6)),
    (nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
                     padding_mode="reflect"), (2, 3, 8, 7)),
    (nn.Conv3d, dict(in_channels=2, out_channels=3, kernel_size=3, padding="valid", stride=1), (2, 2, 5, 6, 5)),
    (nn.Conv3d, dict(in_channels=2, out_channels=4, kernel_size=(1, 3, 3), padding=(0, 1, 1), dilation=(1, 2, 1),
                     padding_mode="replicate"), (1, 2, 3, 7, 6)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, kwargs, x_shape", CONV_CASES)
def test_conv_layer_matches_functional(cls, kwargs, x_shape, dtype):
    layer = cls(**kwargs, dtype=dtype, rng=np.random.default_rng(1))
    nd = len(x_shape) - 2
    x = rand(x_shape, dtype)
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
              padding_mode=layer.padding_mode)
    bias = None if layer.bias is None else layer.bias.data
    y = layer(x)
    expected = getattr(F, f"conv{nd}d")(x, layer.weight.data, bias, **kw)
    assert y.dtype == dtype and layer.weight.dtype == dtype
    np.testing.assert_array_equal(y, expected)

    g = rand(y.shape, dtype, seed=2)
    gx, gw, gb = getattr(F, f"conv{nd}d_backward")(g, x, layer.weight.data, **kw)
    layer.zero_grad()
    got = layer.backward(g)
    np.testing.assert_array_equal(got, gx)
    np.testing.assert_array_equal(layer.weight.grad, gw)
    if layer.bias is not None:
        np.testing.assert_array_equal(layer.bias.grad, gb)
    # a second backward adds to .grad
    layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * gw, rtol=1e-6)
    if layer.bias is not None:
        np.testing.assert_allclose(layer.bias.grad, 2 * gb, rtol=1e-6)
    layer.zero_grad()
    assert not layer.weight.grad.any()


POOL_CASES = [
    (nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True), "max_pool1d",
     dict(kernel_size=(3,), stride=(2,), padding=(1,), dilation=(1,), ceil_mode=True), (2, 3, 10)),
    (nn.MaxPool2d(2), "max_pool2d", dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1),
                                         ceil_mode=False), (2, 3, 8, 9)),
    (nn.MaxPool2d(3, stride=1, padding=1, dilation=2), "max_pool2d",
     dict(kernel_size=3, stride=1, padding=1, dilation=2), (1, 2, 9, 9)),
    (nn.MaxPool3d(2, stride=(1, 2, 2)), "max_pool3d", dict(kernel_size=2, stride=(1, 2, 2)), (1, 2, 4, 6, 6)),
    (nn.AvgPool1d(4, stride=3, padding=2, ceil_mode=True, count_include_pad=False), "avg_pool1d",
     dict(kernel_size=4, stride=3, padding=2, ceil_mode=True, count_include_pad=False), (2, 2, 13)),
    (nn.AvgPool2d(2), "avg_pool2d", dict(kernel_size=2), (2, 3, 8, 8)),
    (nn.AvgPool3d(3, stride=2, padding=1), "avg_pool3d", dict(kernel_size=3, stride=2, padding=1), (1, 2, 5, 6, 7)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer, fname, kwargs, x_shape", POOL_CASES)
def test_pool_layer_matches_functional(layer, fname, kwargs, x_shape, dtype):
    x = rand(x_shape, dtype)
    y = layer(x)
    np.testing.assert_array_equal(y, getattr(F, fname)(x, **kwargs))
    g = rand(y.shape, dtype, seed=3)
    np.testing.assert_array_equal(layer.backward(g), getattr(F, f"{fname}_backward")(g, x, **kwargs))
    assert layer.parameters() == [] and layer.state_dict() == {}


@pytest.mark.parametrize(
    "layer, fname, output_size, x_shape",
    [
        (nn.AdaptiveAvgPool1d(4), "adaptive_avg_pool1d", 4, (2, 3, 10)),
        (nn.AdaptiveAvgPool2d((3, None)), "adaptive_avg_pool2d", (3, None), (2, 3, 7, 5)),
        (nn.AdaptiveAvgPool2d(1), "adaptive_avg_pool2d", 1, (2, 3, 7, 5)),
        (nn.AdaptiveAvgPool3d((2, 3, 2)), "adaptive_avg_pool3d", (2, 3, 2), (1, 2, 5, 7, 4)),
    ],
)
def test_adaptive_pool_layer_matches_functional(layer, fname, output_size, x_shape):
    x = rand(x_shape)
    y = layer(x)
    np.testing.assert_array_equal(y, getattr(F, fname)(x, output_size))
    g = rand(y.shape, seed=4)
    np.testing.assert_array_equal(layer.backward(g), getattr(F, f"{fname}_backward")(g, x))


def test_relu_linear_flatten_loss_match_functional():
    x = rand((5, 3, 4))
    relu = nn.ReLU()
    np.testing.assert_array_equal(relu(x), F.relu(x))
    g = rand(x.shape, seed=1)
    np.testing.assert_array_equal(relu.backward(g), F.relu_backward(g, x))

    flat = nn.Flatten()
    y = flat(x)
    assert y.shape == (5, 12)
    np.testing.assert_array_equal(y, x.reshape(5, 12))
    assert flat.backward(rand((5, 12))).shape == x.shape
    assert nn.Flatten(0)(x).shape == (60,)
    assert nn.Flatten(1, 1)(x).shape == (5, 3, 4)

    lin = nn.Linear(12, 7, rng=np.random.default_rng(0))
    xf = x.reshape(5, 12)
    out = lin(xf)
    np.testing.assert_array_equal(out, F.linear(xf, lin.weight.data, lin.bias.data))
    go = rand(out.shape, seed=2)
    gx, gw, gb = F.linear_backward(go, xf, lin.weight.data)
    np.testing.assert_array_equal(lin.backward(go), gx)
    np.testing.assert_array_equal(lin.weight.grad, gw)
    np.testing.assert_array_equal(lin.bias.grad, gb)
    lin.backward(go)
    np.testing.assert_allclose(lin.weight.grad, 2 * gw, rtol=1e-6)

    nobias = nn.Linear(12, 7, bias=False)
    assert nobias.bias is None and [n for n, _ in nobias.named_parameters()] == ["weight"]
    np.testing.assert_array_equal(nobias(xf), F.linear(xf, nobias.weight.data))

    target = np.array([0, 6, 3, 3, 1])
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(out, target)
    assert isinstance(loss, float)
    assert loss == float(F.cross_entropy(out, target))
    np.testing.assert_array_equal(loss_fn.backward(), F.cross_entropy_backward(out, target))
    np.testing.assert_allclose(loss_fn.backward(2.0), 2 * F.cross_entropy_backward(out, target), rtol=1e-6)


def test_backward_before_forward_raises():
    for layer in (nn.Conv2d(1, 2, 3), nn.Linear(2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                  nn.CrossEntropyLoss()):
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.ones((1, 2), np.float32))


# ----------------------------------------------------------------------------------------------
# gradients of a whole model, by finite differences (float64), through the real backward ops


def _numeric_grad(f, array, index, eps=1e-6):
    old = array[index]
    array[index] = old + eps
    up = f()
    array[index] = old - eps
    down = f()
    array[index] = old
    return (up - down) / (2 * eps)


def test_model_gradients_match_finite_differences():
    nn.manual_seed(11)
    d = np.float64
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, dtype=d),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, groups=2, padding="same", dtype=d),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5, dtype=d),
        nn.ReLU(),
        nn.Linear(5, 3, dtype=d),
    )
    x = rand((4, 2, 7, 7), d, seed=5)
    y = np.array([0, 2, 1, 2])
    loss_fn = nn.CrossEntropyLoss()

    def loss():
        return loss_fn(model(x), y)

    loss()
    model.zero_grad()
    grad_x = model.backward(loss_fn.backward())
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        for _ in range(4):
            i = tuple(int(rng.integers(s)) for s in p.shape)
            num = _numeric_grad(loss, p.data, i)
            assert abs(num - p.grad[i]) <= 1e-6 + 1e-5 * abs(num), (name, i, num, p.grad[i])
    for _ in range(6):
        i = tuple(int(rng.integers(s)) for s in x.shape)
        num = _numeric_grad(loss, x, i)
        assert abs(num - grad_x[i]) <= 1e-6 + 1e-5 * abs(num), ("x", i, num, grad_x[i])


@pytest.mark.parametrize("pool", [
    lambda: nn.MaxPool2d(2),
    lambda: nn.MaxPool2d(3, stride=2, padding=1),           # overlapping windows
    lambda: nn.MaxPool2d(2, stride=1, dilation=2, ceil_mode=True),
])
@pytest.mark.parametrize("training", [True, False])
def test_sequential_relu_before_max_pool_is_exact(pool, training):
    """Sequential runs a ReLU that precedes a max pooling after it (they commute); outputs and
    every gradient must equal the written order run layer by layer, bit for bit, also with
    all-negative windows, ties at zero, signed zeros, infinities and NaNs."""
    conv = nn.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(2))
    model = nn.Sequential(conv, nn.ReLU(), pool(), nn.Flatten())
    model.train(training)
    x = rand((2, 3, 9, 8), seed=3)
    x[0, :, :4, :4] = -np.abs(x[0, :, :4, :4]) - 5  # windows where every conv output is < 0
    conv.bias.data[1] = -50.0                       # a channel that is negative everywhere
    conv.bias.data[2] = 0.0
    conv.weight.data[2] = 0.0                       # a channel of zeros: ties at 0
    x[1, 0, 4, 4] = np.nan                          # NaNs spread through the conv
    x[1, 1, 0, 7] = np.inf
    g = rand((2, 4 * len(F.max_pool2d(np.zeros((1, 1, 9, 8), np.float32), **pool()._kwargs()).ravel())), seed=4)

    y = model(x)
    model.zero_grad()
    gx = model.backward(g)
    assert [type(m) for m in model._order][1:3] == [type(model[2]), nn.ReLU]

    # The written order, one layer at a time, with fresh copies of the layers.
    ref = nn.Sequential(conv, nn.ReLU(), pool(), nn.Flatten())
    ref.train(training)
    h = x
    for m in ref:
        h = m(h)
    np.testing.assert_array_equal(y, h)
    assert np.array_equal(np.signbit(y), np.signbit(h))
    wgrad, bgrad = conv.weight.grad.copy(), conv.bias.grad.copy()
    conv.zero_grad()
    gr = g
    for m in reversed(list(ref)):
        gr = m.backward(gr)
    np.testing.assert_array_equal(gx, gr)
    np.testing.assert_array_equal(wgrad, conv.weight.grad)
    np.testing.assert_array_equal(bgrad, conv.bias.grad)


def test_lenet_backward_runs_and_shapes():
    model = lenet5(rng=np.random.default_rng(0))
    x = rand((3, 1, 28, 28))
    logits = model(x)
    assert logits.shape == (3, 10) and logits.dtype == np.float32
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(logits, np.array([1, 2, 3]))
    gx = model.backward(loss_fn.backward())
    assert gx.shape == x.shape
    for name, p in model.named_parameters():
        assert p.grad.shape == p.shape and p.grad.dtype == np.float32
        assert np.abs(p.grad).sum() > 0, name


# ----------------------------------------------------------------------------------------------
# parameters, state_dict, modes


LENET_SHAPES = {
    "0.weight": (6, 1, 5, 5), "0.bias": (6,),
    "3.weight": (16, 6, 5, 5), "3.bias": (16,),
    "7.weight": (120, 400), "7.bias": (120,),
    "9.weight": (84, 120), "9.bias": (84,),
    "11.weight": (10, 84), "11.bias": (10,),
}


def test_lenet_state_dict_matches_pytorch_names():
    model = lenet5()
    sd = model.state_dict()
    assert list(sd) == list(LENET_SHAPES)  # PyTorch's names, in PyTorch's order
    assert {k: v.shape for k, v in sd.items()} == LENET_SHAPES
    assert all(v.dtype == np.float32 for v in sd.values())
    assert [n for n, _ in model.named_parameters()] == list(LENET_SHAPES)
    assert model.num_parameters() == 61706
    # copies: changing the dict does not change the model
    sd["0.bias"][:] = 123
    assert not (model[0].bias.data == 123).any()


def test_nested_sequential_names():
    model = nn.Sequential(nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU()), nn.Flatten(), nn.Linear(4, 2))
    assert list(model.state_dict()) == ["0.0.weight", "0.0.bias", "2.weight", "2.bias"]


def test_load_state_dict_round_trip_and_errors():
    a, b = lenet5(rng=np.random.default_rng(1)), lenet5(rng=np.random.default_rng(2))
    x = rand((2, 1, 28, 28))
    assert not np.array_equal(a(x), b(x))
    weight_array = b[0].weight.data
    result = b.load_state_dict(a.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert b[0].weight.data is weight_array  # filled in place
    np.testing.assert_array_equal(a(x), b(x))

    sd = a.state_dict()
    del sd["3.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['3.bias'\]"):
        b.load_state_dict(sd)
    sd = a.state_dict()
    sd["12.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"unexpected keys \['12.weight'\]"):
        b.load_state_dict(sd)
    result = b.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == ["12.weight"]

    c = lenet5(rng=np.random.default_rng(3))
    before = c.state_dict()
    sd = a.state_dict()
    sd["7.weight"] = np.zeros((400, 120), np.float32)
    with pytest.raises(ValueError, match=r"'7.weight'.*\(400, 120\).*\(120, 400\)"):
        c.load_state_dict(sd)
    with pytest.raises(ValueError, match="7.weight"):
        c.load_state_dict(sd, strict=False)  # shapes are checked even when not strict
    for k, v in c.state_dict().items():  # nothing was changed by the failed loads
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(TypeError, match="state_dict"):
        c.load_state_dict([("0.weight", 1)])


def test_load_state_dict_casts_float64_into_float32():
    model = nn.Linear(3, 2)
    model.load_state_dict({"weight": np.ones((2, 3)), "bias": np.arange(2.0)})
    assert model.weight.dtype == np.float32 and (model.weight.data == 1).all()


def test_train_eval_modes_and_zero_grad():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Sequential(nn.ReLU()))
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model[0].weight.grad[:] = 1
    model.zero_grad()
    assert not model[0].weight.grad.any()
    with pytest.raises(TypeError, match="mode"):
        model.train("no")


def test_sequential_container():
    layers = [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten()]
    model = nn.Sequential(*layers)
    assert len(model) == 3
    assert list(model) == layers
    assert model[0] is layers[0] and model[-1] is layers[2]
    sub = model[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == layers[1:]
    model.append(nn.Linear(2, 2))
    assert len(model) == 4 and "3.weight" in model.state_dict()
    with pytest.raises(IndexError):
        model[4]
    with pytest.raises(TypeError, match="Modules"):
        nn.Sequential(nn.ReLU(), "relu")
    assert "Conv2d(1, 2, kernel_size=(3, 3)" in repr(model)


def test_parameter():
    p = nn.Parameter(np.arange(6, dtype=np.float64).reshape(2, 3))
    assert p.shape == (2, 3) and p.dtype == np.float64 and p.size == 6
    assert p.grad.shape == (2, 3) and not p.grad.any()
    np.testing.assert_array_equal(np.asarray(p), p.data)
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Parameter(np.arange(3))


# ----------------------------------------------------------------------------------------------
# initialisation: PyTorch's kaiming_uniform_(a=sqrt(5)) and bias U(+-1/sqrt(fan_in))


@pytest.mark.parametrize(
    "make, fan_in",
    [
        (lambda rng: nn.Linear(400, 120, rng=rng), 400),
        (lambda rng: nn.Conv2d(6, 16, 5, rng=rng), 150),
        (lambda rng: nn.Conv2d(32, 64, 3, groups=4, rng=rng), 8 * 9),
        (lambda rng: nn.Conv1d(16, 128, 7, rng=rng), 112),
        (lambda rng: nn.Conv3d(4, 32, 3, rng=rng), 108),
    ],
)
def test_default_init_bounds_and_statistics(make, fan_in):
    layer = make(np.random.default_rng(0))
    bound = 1 / math.sqrt(fan_in)
    # gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a^2)), a = sqrt(5): the same bound
    assert math.isclose(math.sqrt(2 / (1 + 5)) * math.sqrt(3 / fan_in), bound)
    w, b = layer.weight.data, layer.bias.data
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.95 * bound  # spread over the whole interval
    std = bound / math.sqrt(3)  # the standard deviation of U(-bound, bound)
    assert abs(w.std() - std) < 0.05 * std
    assert abs(w.mean()) < 0.1 * std
    assert b.std() > 0.3 * std


def test_manual_seed_and_rng_reproduce_init():
    nn.manual_seed(123)
    a = lenet5()
    nn.manual_seed(123)
    b = lenet5()
    c = lenet5()
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    assert not np.array_equal(a[0].weight.data, c[0].weight.data)
    d = nn.Conv2d(1, 6, 5, rng=np.random.default_rng(9))
    e = nn.Conv2d(1, 6, 5, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(d.weight.data, e.weight.data)
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(2, 2, rng=9)


# ----------------------------------------------------------------------------------------------
# dropout


def test_dropout():
    x = np.ones((200, 500), np.float32)
    layer = nn.Dropout(0.3, rng=np.random.default_rng(0))
    y = layer(x)
    zero = y == 0
    assert abs(zero.mean() - 0.3) < 0.01
    np.testing.assert_allclose(y[~zero], 1 / 0.7, rtol=1e-6)
    assert y.dtype == np.float32
    g = np.full_like(x, 2.0)
    gx = layer.backward(g)
    np.testing.assert_array_equal(gx == 0, zero)  # the same mask
    np.testing.assert_allclose(gx[~zero], 2 / 0.7, rtol=1e-6)
    y2 = layer(x)
    assert not np.array_equal(y2, y)  # a new mask each call

    layer.eval()
    assert layer(x) is x
    assert layer.backward(g) is g
    layer.train()
    assert nn.Dropout(0.0)(x) is x
    assert not nn.Dropout(1.0)(x).any()
    a = nn.Dropout(0.5, rng=np.random.default_rng(4))(x)
    b = nn.Dropout(0.5, rng=np.random.default_rng(4))(x)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.5)
    with pytest.raises(TypeError, match="p must be"):
        nn.Dropout("0.5")


# ----------------------------------------------------------------------------------------------
# bad arguments name themselves


@pytest.mark.parametrize(
    "make, exc, name",
    [
        (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "groups"),
        (lambda: nn.Conv2d(3, 4, 0), ValueError, "kernel_size"),
        (lambda: nn.Conv2d(3, 4, (3, 3, 3)), ValueError, "kernel_size"),
        (lambda: nn.Conv2d(3, 4, 3, stride=0), ValueError, "stride"),
        (lambda: nn.Conv2d(3, 4, 3, padding=-1), ValueError, "padding"),
        (lambda: nn.Conv2d(3, 4, 3, padding="full"), ValueError, "padding"),
        (lambda: nn.Conv2d(3, 4, 3, padding_mode="mirror"), ValueError, "padding_mode"),
        (lambda: nn.Conv2d(3, 4, 3, dilation=0), ValueError, "dilation"),
        (lambda: nn.Conv2d(0, 4, 3), ValueError, "in_channels"),
        (lambda: nn.Conv2d(3, 4.0, 3), TypeError, "out_channels"),
        (lambda: nn.Conv2d(3, 4, 3, dtype=np.int32), TypeError, "dtype"),
        (lambda: nn.Linear(-1, 3), ValueError, "in_features"),  # 0 is PyTorch's empty layer
        (lambda: nn.Linear(3, True), TypeError, "out_features"),
        (lambda: nn.MaxPool2d(0), ValueError, "kernel_size"),
        (lambda: nn.AvgPool1d(2, stride=0), ValueError, "stride"),
        (lambda: nn.AdaptiveAvgPool2d((2, 2, 2)), ValueError, "output_size"),
        (lambda: nn.Flatten(start_dim="1"), TypeError, "start_dim"),
    ],
)
def test_bad_layer_arguments(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


def test_linear_without_input_features_is_pytorchs_empty_layer():
    # torch.nn.Linear(0, 3): a (3, 0) weight, a zero bias (bound 0 without fan-in); the output is
    # the bias, and the bias gradient sums grad_output (linear_backward gave 0 there).
    layer = nn.Linear(0, 3, rng=np.random.default_rng(0))
    assert layer.weight.shape == (3, 0) and np.all(layer.bias.data == 0)
    layer.bias.data[...] = [1.0, 2.0, 3.0]
    out = layer(np.zeros((4, 0), np.float32))
    np.testing.assert_array_equal(out, np.tile([1.0, 2.0, 3.0], (4, 1)))
    g = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    assert layer.backward(g).shape == (4, 0)
    np.testing.assert_array_equal(layer.bias.grad, g.astype(np.float64).sum(axis=0))
    assert nn.Linear(3, 0)(np.ones((2, 3), np.float32)).shape == (2, 0)


@pytest.mark.parametrize("nd", [2, 3])
def test_avg_pool_layers_take_divisor_override(nd):
    # As torch.nn.AvgPool2d/3d(divisor_override=...): the functional call's result and gradient.
    x = np.random.default_rng(nd).standard_normal((2, 3) + (5,) * nd).astype(np.float32)
    layer = getattr(nn, f"AvgPool{nd}d")(3, stride=2, padding=1, divisor_override=4)
    out = layer(x)
    f = getattr(rconv, f"avg_pool{nd}d")
    np.testing.assert_array_equal(out, f(x, 3, stride=2, padding=1, divisor_override=4))
    g = np.ones_like(out)
    np.testing.assert_array_equal(
        layer.backward(g), getattr(rconv, f"avg_pool{nd}d_backward")(g, x, 3, stride=2, padding=1, divisor_override=4))
    assert "divisor_override=4" in repr(layer)
    with pytest.raises(ValueError, match="divisor_override"):
        getattr(nn, f"AvgPool{nd}d")(2, divisor_override=0)
    with pytest.raises(TypeError, match="divisor_override"):
        getattr(nn, f"AvgPool{nd}d")(2, divisor_override=2.0)
    with pytest.raises(TypeError):
        nn.AvgPool1d(2, divisor_override=3)  # PyTorch's AvgPool1d has none


def test_max_pool_layers_take_pytorchs_positional_arguments():
    # torch.nn.MaxPool2d(kernel_size, stride, padding, dilation, return_indices, ceil_mode): the
    # fifth positional argument is return_indices (it was ceil_mode here, silently).
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 7)).astype(np.float32)
    layer = nn.MaxPool2d(3, 2, 1, 1, True)
    assert layer.return_indices and not layer.ceil_mode
    out, idx = layer(x)
    want, want_idx = rconv.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(idx, want_idx)
    g = np.ones_like(out)
    np.testing.assert_array_equal(layer.backward(g), rconv.max_pool2d_backward(g, x, 3, stride=2, padding=1))
    layer.eval()
    assert isinstance(layer(x), tuple)  # in evaluation mode too, as PyTorch
    assert nn.MaxPool1d(2, 2, 0, 1, False, True).ceil_mode
    # last in a Sequential after a ReLU, as in PyTorch: the ReLU runs first, the pair comes out
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(3, 2, 1, 1, True))
    out, idx = model(x)
    np.testing.assert_array_equal(out, rconv.max_pool2d(rconv.relu(x), 3, stride=2, padding=1))
    with pytest.raises(TypeError, match="return_indices"):
        nn.MaxPool3d(2, return_indices=None)


def test_native_errors_pass_through_layers():
    layer = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError):
        layer(np.zeros((1, 2, 8, 8), np.float32))  # channel mismatch: the native message
    with pytest.raises(TypeError):
        layer(np.zeros((1, 3, 8, 8), np.float64))  # float64 input, float32 weights


def _torch_lenet(torch):
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10),
    )


def test_pytorch_weights_give_pytorch_outputs_and_gradients():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = _torch_lenet(torch).double()
    model = lenet5(dtype=np.float64)
    model.load_state_dict({k: v.detach().numpy() for k, v in tmodel.state_dict().items()})
    x = rand((4, 1, 28, 28), np.float64)
    y = np.array([3, 0, 9, 3])
    tx = torch.from_numpy(x).requires_grad_(True)
    tlogits = tmodel(tx)
    torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(y)).backward()

    logits = model(x)
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-10, atol=1e-12)
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(logits, y)
    grad_x = model.backward(loss_fn.backward())
    np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    tparams = dict(tmodel.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)

    # and back: rconv weights into torch
    tmodel2 = _torch_lenet(torch).double()
    tmodel2.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    np.testing.assert_allclose(tmodel2(torch.from_numpy(x)).detach().numpy(), logits, rtol=1e-10, atol=1e-12)


def test_init_matches_pytorch_distribution():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t = torch.nn.Linear(300, 200).weight.detach().numpy().ravel()
    ours = nn.Linear(300, 200, rng=np.random.default_rng(0)).weight.data.ravel()
    # same interval, same spread (different random numbers)
    assert abs(np.abs(t).max() - np.abs(ours).max()) < 1e-3 / math.sqrt(300)
    assert abs(t.std() - ours.std()) < 0.02 * t.std()
