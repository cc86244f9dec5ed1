"""Every public argument is validated, and its error names it (issue 10, item 9).

The walk: every public callable of the package (found by enumeration, so one added later is
walked too) has an entry in SPECS: a call with valid base arguments and, per parameter, which
of the probe values below are legal. Each parameter (found with ``inspect.signature``) is tried
with every probe value in turn, the others kept at their base values. A legal value must be
accepted; any other must raise TypeError or ValueError (never another exception type, never a
Rust panic: pyo3's PanicException is a BaseException and escapes pytest.raises) whose message
names the parameter. A public callable without an entry fails the test, so nobody forgets one.
"""

import dataclasses
import inspect
import math
import os
import re
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

import numpy as np
import pytest
import rconv
from rconv import datasets, filters, models, nn, optim, training, viz

# The probe values, by label. "bool" values are refused where an int is expected; a flag takes
# Python and NumPy bools (as PyTorch does) and nothing else.
PROBES: Dict[str, Any] = {
    "None": None,
    "True": True,
    "False": False,
    "np.True_": np.True_,
    "1.5": 1.5,
    "nan": math.nan,
    "2**63": 2**63,
    "2**200": 2**200,
    "2**1100": 2**1100,  # past float's range: float(v) raises OverflowError
    "-1": -1,
    "-2**200": -(2**200),
    "str": "a",
    "list": ["a", "b"],
}
BOOLS = frozenset({"True", "False", "np.True_"})
HUGE = frozenset({"2**63", "2**200", "2**1100"})


@dataclasses.dataclass
class Spec:
    call: Callable[..., Any]
    base: Dict[str, Any] = dataclasses.field(default_factory=dict)
    legal: Dict[str, FrozenSet[str]] = dataclasses.field(default_factory=dict)
    # (param, label) -> another exception class that is right there (with the name in it)
    other: Dict[Tuple[str, str], type] = dataclasses.field(default_factory=dict)
    # (param, labels): legal values that are not run (a loop of 2**63 epochs)
    not_run: Dict[str, FrozenSet[str]] = dataclasses.field(default_factory=dict)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ----------------------------------------------------------------------------------------------
# the functional API

AUTO = object()  # a backward's grad_output: ones shaped like the forward's output


def with_grad(forward, backward, forward_params):
    """A backward called with ``grad_output = ones`` shaped like the forward's output for the same
    arguments (so a legal stride gives a matching gradient); when that forward refuses them, the
    base gradient is used, so the backward's own checks are what the test sees."""

    def call(base_grad, **kw):
        if kw.get("grad_output", AUTO) is AUTO:
            fkw = {k: v for k, v in kw.items() if k in forward_params}
            try:
                out = forward(**fkw)
            except (TypeError, ValueError):
                out = base_grad
            kw["grad_output"] = np.ones_like(out[0] if isinstance(out, tuple) else out)
        return backward(**kw)

    return call


def params_of(f):
    return set(inspect.signature(f).parameters)


X = {1: rand(2, 3, 6), 2: rand(2, 3, 6, 6), 3: rand(1, 3, 4, 4, 4)}
W = {1: rand(4, 3, 3), 2: rand(4, 3, 3, 3), 3: rand(2, 3, 2, 2, 2)}


def functional_specs():
    specs = {}
    for nd in (1, 2, 3):
        x, w = X[nd], W[nd]
        conv, conv_b = getattr(rconv, f"conv{nd}d"), getattr(rconv, f"conv{nd}d_backward")
        conv_legal = {"bias": frozenset({"None"}), "stride": frozenset({"2**63"})}
        specs[f"conv{nd}d"] = Spec(conv, dict(input=x, weight=w, bias=np.zeros(w.shape[0])), conv_legal)
        specs[f"conv{nd}d_backward"] = Spec(
            lambda _f=with_grad(conv, conv_b, params_of(conv)), _g=conv(x, w), **kw: _f(_g, **kw),
            dict(grad_output=AUTO, input=x, weight=w),
            {"stride": frozenset({"2**63"}), "input_grad": BOOLS},
        )
        pool_legal = {"stride": frozenset({"None", "2**63"}), "ceil_mode": BOOLS}
        mp, mp_b = getattr(rconv, f"max_pool{nd}d"), getattr(rconv, f"max_pool{nd}d_backward")
        specs[f"max_pool{nd}d"] = Spec(mp, dict(input=x, kernel_size=2), {**pool_legal, "return_indices": BOOLS})
        specs[f"max_pool{nd}d_backward"] = Spec(
            lambda _f=with_grad(mp, mp_b, params_of(mp)), _g=mp(x, 2), **kw: _f(_g, **kw),
            dict(grad_output=AUTO, input=x, kernel_size=2),
            {**pool_legal, "indices": frozenset({"None"})},
        )
        ap, ap_b = getattr(rconv, f"avg_pool{nd}d"), getattr(rconv, f"avg_pool{nd}d_backward")
        avg_legal = {**pool_legal, "count_include_pad": BOOLS, "divisor_override": frozenset({"None", "-1"})}
        specs[f"avg_pool{nd}d"] = Spec(ap, dict(input=x, kernel_size=2), avg_legal)
        specs[f"avg_pool{nd}d_backward"] = Spec(
            lambda _f=with_grad(ap, ap_b, params_of(ap)), _g=ap(x, 2), **kw: _f(_g, **kw),
            dict(grad_output=AUTO, input=x, kernel_size=2),
            avg_legal,
        )
        aap, aap_b = getattr(rconv, f"adaptive_avg_pool{nd}d"), getattr(rconv, f"adaptive_avg_pool{nd}d_backward")
        specs[f"adaptive_avg_pool{nd}d"] = Spec(aap, dict(input=x, output_size=2))
        specs[f"adaptive_avg_pool{nd}d_backward"] = Spec(aap_b, dict(grad_output=aap(x, 2), input=x))
    logits, target = rand(4, 3), np.array([0, 2, 1, 1])
    specs.update(
        relu=Spec(rconv.relu, dict(input=X[2])),
        relu_backward=Spec(rconv.relu_backward, dict(grad_output=X[2], input=X[2])),
        linear=Spec(rconv.linear, dict(input=rand(5, 3), weight=rand(2, 3), bias=rand(2)), {"bias": frozenset({"None"})}),
        linear_backward=Spec(rconv.linear_backward, dict(grad_output=rand(5, 2), input=rand(5, 3), weight=rand(2, 3))),
        softmax=Spec(rconv.softmax, dict(input=X[2]), {"axis": frozenset({"-1"})}),
        log_softmax=Spec(rconv.log_softmax, dict(input=X[2]), {"axis": frozenset({"-1"})}),
        cross_entropy=Spec(rconv.cross_entropy, dict(logits=logits, target=target)),
        cross_entropy_backward=Spec(rconv.cross_entropy_backward, dict(logits=logits, target=target)),
    )
    return specs


# ----------------------------------------------------------------------------------------------
# layers, optimisers, filters, training


def layer(cls, x):
    """Builds the layer and runs its forward (and backward) on ``x``: a value the constructor
    keeps (a huge kernel size, a padding) may only be refused by the native call."""

    def call(**kw):
        m = cls(**kw)
        out = m(x)
        out = out[0] if isinstance(out, tuple) else out  # (values, indices) of a max pool
        m.backward(np.ones_like(out))
        return m

    return call


def model_data(n=12):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    x = np.random.default_rng(1).random((n, 2, 4)).astype(np.float32)
    y = np.arange(n) % 3
    model(x)  # summary(input_shape=None) takes the last batch's shape
    return model, x, y


def python_specs(tmp_path):
    x1, x2, x3 = (a.astype(np.float32) for a in (X[1], X[2], X[3]))
    specs = {}
    for nd, x in ((1, x1), (2, x2), (3, x3)):
        conv_legal = {"stride": frozenset({"2**63"}), "bias": BOOLS, "rng": frozenset({"None"})}
        specs[f"Conv{nd}d"] = Spec(layer(getattr(nn, f"Conv{nd}d"), x), dict(in_channels=3, out_channels=4, kernel_size=2), conv_legal)
        pool_legal = {"stride": frozenset({"None", "2**63"}), "ceil_mode": BOOLS}
        specs[f"MaxPool{nd}d"] = Spec(layer(getattr(nn, f"MaxPool{nd}d"), x), dict(kernel_size=2),
                                      {**pool_legal, "return_indices": BOOLS})
        avg_legal = {**pool_legal, "count_include_pad": BOOLS, "divisor_override": frozenset({"None", "-1"})}
        specs[f"AvgPool{nd}d"] = Spec(layer(getattr(nn, f"AvgPool{nd}d"), x), dict(kernel_size=2), avg_legal)
        specs[f"AdaptiveAvgPool{nd}d"] = Spec(layer(getattr(nn, f"AdaptiveAvgPool{nd}d"), x), dict(output_size=2))
    model, x, y = model_data()
    fit_base = dict(x=x, y=y, epochs=1, progress=False)
    sgd_params = nn.Linear(2, 2).parameters()
    specs.update(
        ReLU=Spec(layer(nn.ReLU, x2)),
        Flatten=Spec(layer(nn.Flatten, x2), legal={"start_dim": frozenset({"-1"}), "end_dim": frozenset({"-1"})}),
        Linear=Spec(layer(nn.Linear, rand(4, 3).astype(np.float32)), dict(in_features=3, out_features=2),
                    {"bias": BOOLS, "rng": frozenset({"None"})}),
        Dropout=Spec(layer(nn.Dropout, x2), legal={"rng": frozenset({"None"})}),
        Sequential=Spec(lambda **kw: nn.Sequential(*kw["modules"]), dict(modules=[nn.ReLU()])),
        CrossEntropyLoss=Spec(nn.CrossEntropyLoss),
        Module=Spec(nn.Module),
        Parameter=Spec(nn.Parameter, dict(data=rand(2)), {"data": frozenset({"1.5", "nan"})}),
        manual_seed=Spec(nn.manual_seed, dict(seed=0), {"seed": frozenset({"None", "2**63", "2**200", "2**1100"})}),
        default_generator=Spec(nn.default_generator),
        Optimizer=Spec(optim.Optimizer, dict(params=sgd_params)),
        SGD=Spec(optim.SGD, dict(params=sgd_params, lr=0.1, momentum=0.9),
                 {name: frozenset({"1.5", "2**63", "2**200"}) for name in ("lr", "momentum", "weight_decay")}
                 | {"nesterov": BOOLS, "dampening": frozenset({"1.5", "2**63", "2**200"})}),
        Adam=Spec(optim.Adam, dict(params=sgd_params),
                  {name: frozenset({"1.5", "2**63", "2**200"}) for name in ("lr", "eps", "weight_decay")}),
        gaussian=Spec(filters.gaussian, dict(size=3, sigma=1.0), {"sigma": frozenset({"1.5", "2**63", "2**200"})}),
        as_weight=Spec(lambda **kw: filters.as_weight(*kw.pop("kernels"), **kw), dict(kernels=[filters.sobel_x])),
        lenet5=Spec(models.lenet5, legal={"rng": frozenset({"None"})}),
        load_mnist_5k=Spec(datasets.load_mnist_5k),
        set_num_threads=Spec(rconv.set_num_threads, dict(n=1)),
        get_num_threads=Spec(rconv.get_num_threads),
    )
    fit_legal = {
        "batch_size": frozenset({"2**63", "2**200", "2**1100"}),
        "optimizer": frozenset({"None"}),
        "validation_data": frozenset({"None"}),
        "shuffle": BOOLS,
        "progress": BOOLS,
        "seed": frozenset({"None", "2**63", "2**200", "2**1100"}),
        "lr_schedule": frozenset({"None"}),
    }
    batch = {"batch_size": frozenset({"2**63", "2**200", "2**1100"})}
    never_run = {"epochs": HUGE}  # legal, but 2**63 epochs never end
    specs.update({
        "training.fit": Spec(training.fit, dict(model=model, **fit_base), fit_legal, not_run=never_run),
        "training.evaluate": Spec(training.evaluate, dict(model=model, x=x, y=y), batch),
        "training.predict": Spec(training.predict, dict(model=model, x=x), batch),
        "training.summary": Spec(training.summary, dict(model=model, file=_Sink()),
                                 {"input_shape": frozenset({"None"}), "file": frozenset({"None"})}),
        "Sequential.fit": Spec(model.fit, fit_base, fit_legal, not_run=never_run),
        "Sequential.evaluate": Spec(model.evaluate, dict(x=x, y=y), batch),
        "Sequential.predict": Spec(model.predict, dict(x=x), batch),
        "Sequential.summary": Spec(model.summary, dict(file=_Sink()),
                                   {"input_shape": frozenset({"None"}), "file": frozenset({"None"})}),
        "Module.train": Spec(model.train, legal={"mode": BOOLS}),
        "Module.load_state_dict": Spec(model.load_state_dict, dict(state_dict=model.state_dict()), {"strict": BOOLS}),
        # (what save writes is removed again, so that load(path="a") finds no a.npz)
        "Module.save": Spec(lambda **kw: os.remove(model.save(**kw)), dict(path=str(tmp_path / "m.npz")),
                            {"path": frozenset({"str"})}),
        "Module.load": Spec(model.load, dict(path=model.save(tmp_path / "saved.npz")), {"strict": BOOLS},
                            other={("path", "str"): FileNotFoundError}),
    })
    conv_model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    image = np.random.default_rng(2).random((1, 1, 8, 8)).astype(np.float32)
    specs.update(
        plot_filters=Spec(_closing(viz.plot_filters), dict(weight_or_layer=conv_model, path=str(tmp_path / "f.png")),
                          {"path": frozenset({"None", "str"}), "cmap": frozenset({"None"})}),
        plot_feature_maps=Spec(_closing(viz.plot_feature_maps), dict(model=conv_model, x=image, path=str(tmp_path / "m.png")),
                               {"path": frozenset({"None", "str"}), "cmap": frozenset({"None"})}),
    )
    return specs


def _have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _closing(plot):
    """``plot``, closing the figures it leaves open (path=None makes a pyplot figure)."""

    def call(**kw):
        try:
            return plot(**kw)
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")

    return call


class _Sink:
    def write(self, text):
        return len(text)


# The public callables, found by enumeration.
MODULES = {"": rconv, "nn": nn, "optim": optim, "filters": filters, "models": models, "datasets": datasets, "viz": viz}
METHODS = {
    "training": (training, ["fit", "evaluate", "predict", "summary"]),
    "Sequential": (nn.Sequential, ["fit", "evaluate", "predict", "summary"]),
    "Module": (nn.Module, ["train", "load_state_dict", "save", "load"]),
}
# Public methods of Module and Sequential left out of the walk, and why.
METHODS_NOT_WALKED = {
    "forward": "takes the layer's input: the functional API's checks (walked above)",
    "backward": "takes the gradient: the *_backward functions' checks (input_grad: test below)",
    "named_modules": "prefix: a free-form string",
    "named_parameters": "prefix: a free-form string",
    "append": "a Module, as Sequential(*modules)",
}


def public_callables():
    names = []
    for prefix, module in MODULES.items():
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not inspect.ismodule(obj):
                names.append(name)
    for prefix, (owner, methods) in METHODS.items():
        names += [f"{prefix}.{m}" for m in methods]
    return sorted(set(names))


def test_every_public_callable_has_an_entry(tmp_path):
    specs = {**functional_specs(), **python_specs(tmp_path)}
    missing = [name for name in public_callables() if name not in specs]
    assert not missing, f"public callables without an entry in test_args.py's SPECS: {missing}"
    # rconv.<name> is rconv.functional.<name> for the whole functional API
    for name in rconv.functional.__all__:
        assert getattr(rconv, name) is getattr(rconv.functional, name), name
    # every public method with arguments is walked or listed with a reason
    for cls in (nn.Module, nn.Sequential):
        for name, f in inspect.getmembers(cls, inspect.isfunction):
            takes = [p for p in inspect.signature(f).parameters if p != "self"]
            if name.startswith("_") or not takes:
                continue
            walked = any(name in methods for owner, methods in METHODS.values() if owner in (cls, nn.Module))
            assert walked or name in METHODS_NOT_WALKED, f"{cls.__name__}.{name} is neither walked nor exempted"


def _signature_of(name, spec):
    if "." in name:
        owner, method = name.split(".")
        target = getattr(METHODS[owner][0], method)
    elif name in rconv.functional.__all__ or name in ("set_num_threads", "get_num_threads"):
        target = getattr(rconv, name)
    else:
        target = next(getattr(m, name) for m in MODULES.values() if name in getattr(m, "__all__", ()))
    params = [p for p in inspect.signature(target).parameters.values() if p.name not in ("self",)]
    if name.startswith("training."):
        pass  # the model is the first parameter and is walked too
    return params


def _walk(name, spec, failures):
    params = _signature_of(name, spec)
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        for label, value in PROBES.items():
            if label in spec.not_run.get(p.name, ()):
                continue
            kw = dict(spec.base)
            kw[p.name] = [value] if p.kind is inspect.Parameter.VAR_POSITIONAL else value
            legal = label in spec.legal.get(p.name, ())
            expected = spec.other.get((p.name, label), (TypeError, ValueError))
            where = f"{name}({p.name}={label})"
            try:
                spec.call(**kw)
            except expected as e:
                if legal:
                    failures.append(f"{where}: legal, but raised {type(e).__name__}: {e}")
                elif not re.search(rf"\b{re.escape(p.name)}\b", str(e)):
                    failures.append(f"{where}: {type(e).__name__} does not name {p.name!r}: {e}")
            except Exception as e:  # noqa: BLE001 - the point is to see any other kind
                failures.append(f"{where}: {type(e).__name__} (want TypeError or ValueError): {e}")
            else:
                if not legal:
                    failures.append(f"{where}: accepted")


@pytest.mark.parametrize("group", ["functional", "python"])
def test_every_public_argument_is_checked_and_named(group, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # save(path="a") writes a.npz here
    threads = rconv.get_num_threads()
    specs = functional_specs() if group == "functional" else python_specs(tmp_path)
    if group == "python" and not _have_matplotlib():  # rconv.viz is an optional extra
        specs = {k: v for k, v in specs.items() if not k.startswith("plot_")}
    failures = []
    try:
        for name, spec in specs.items():
            _walk(name, spec, failures)
    finally:
        rconv.set_num_threads(threads)
    assert not failures, f"{len(failures)} problems:\n" + "\n".join(failures)


def test_a_new_public_function_without_an_entry_is_caught(monkeypatch, tmp_path):
    monkeypatch.setattr(filters, "emboss", lambda kernel: kernel, raising=False)
    monkeypatch.setattr(filters, "__all__", [*filters.__all__, "emboss"])
    specs = {**functional_specs(), **python_specs(tmp_path)}
    assert [name for name in public_callables() if name not in specs] == ["emboss"]


# ----------------------------------------------------------------------------------------------
# the issue's examples, one by one


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda: rconv.conv2d(X[2], W[2], groups=1.5), TypeError, "groups"),
        (lambda: rconv.conv2d(X[2], W[2], groups=True), TypeError, "groups"),
        (lambda: rconv.conv2d(X[2], W[2], groups=2**63), ValueError, "groups"),
        (lambda: rconv.conv2d(X[2], W[2], padding_mode=None), TypeError, "padding_mode"),
        (lambda: rconv.conv2d(X[2], W[2], stride=2**200), ValueError, "stride"),
        (lambda: rconv.conv2d(X[2], W[2], stride=None), TypeError, "stride"),
        (lambda: rconv.max_pool2d(X[2], 2, ceil_mode=None), TypeError, "ceil_mode"),
        (lambda: rconv.max_pool2d(X[2], 2, ceil_mode=1), TypeError, "ceil_mode"),
        (lambda: rconv.max_pool2d(X[2], 2, return_indices=None), TypeError, "return_indices"),
        (lambda: rconv.max_pool2d(X[2], None), TypeError, "kernel_size"),
        (lambda: rconv.max_pool2d(X[2], 2, padding=None), TypeError, "padding"),
        (lambda: rconv.avg_pool2d(X[2], 2, count_include_pad=None), TypeError, "count_include_pad"),
        (lambda: rconv.softmax(X[2], axis="a"), TypeError, "axis"),
        (lambda: rconv.softmax(X[2], axis=True), TypeError, "axis"),
        (lambda: rconv.softmax(X[2], axis=2**63), ValueError, "axis"),
        (lambda: rconv.set_num_threads(2**63), ValueError, r"\bn\b"),
        (lambda: rconv.set_num_threads(True), TypeError, r"\bn\b"),
        (lambda: filters.gaussian(math.nan, 1), TypeError, "size"),
        (lambda: filters.gaussian(math.inf, 1), TypeError, "size"),
        (lambda: filters.gaussian(3, "a"), TypeError, "sigma"),
        (lambda: filters.gaussian(3, math.nan), ValueError, "sigma"),
        (lambda: optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0, nesterov=None), TypeError, "nesterov"),
        (lambda: nn.MaxPool2d(2, ceil_mode=None), TypeError, "ceil_mode"),
        (lambda: nn.Conv2d(1, 1, 3, bias=None), TypeError, "bias"),
    ],
)
def test_issue_examples_name_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


def test_numpy_bools_are_flags():
    a = rconv.max_pool2d(X[2], 3, ceil_mode=np.True_, return_indices=np.False_)
    np.testing.assert_array_equal(a, rconv.max_pool2d(X[2], 3, ceil_mode=True))
    b = rconv.avg_pool2d(X[2], 3, padding=1, count_include_pad=np.False_)
    np.testing.assert_array_equal(b, rconv.avg_pool2d(X[2], 3, padding=1, count_include_pad=False))


@pytest.mark.parametrize("value, exc", [(math.nan, ValueError), (math.inf, ValueError), (-0.1, ValueError), ("a", TypeError)])
def test_fit_refuses_a_learning_rate_schedule_gone_wrong(value, exc):
    # lr_schedule=lambda e: nan turned every parameter into NaN; SGD(lr=nan) was already refused.
    model, x, y = model_data()
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(exc, match="lr_schedule"):
        model.fit(x, y, epochs=2, progress=False, lr_schedule=lambda epoch: value)
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, b)


def test_load_names_the_path_of_a_file_it_cannot_read(tmp_path):
    model, _, _ = model_data()
    np.save(tmp_path / "weights.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"path .*\.npy.*not the \.npz"):
        model.load(tmp_path / "weights.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="path"):
        model.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="path"):
        model.load(tmp_path / "missing")


def test_backward_input_grad_is_a_flag():
    model, x, _ = model_data()
    conv = nn.Sequential(nn.Conv1d(2, 2, 3))
    out = conv(x)
    for m, g in ((model, np.ones((len(x), 3), np.float32)), (conv, np.ones_like(out))):
        for bad in (None, 0, "no"):
            with pytest.raises(TypeError, match="input_grad"):
                m.backward(g, input_grad=bad)
    assert conv.backward(np.ones_like(out), input_grad=np.False_) is None
