"""Sequential.fit / evaluate / predict / summary / save / load on slices of the shipped digits."""

import os
import sys

import numpy as np
import pytest

from rconv import nn, optim
from rconv.datasets import load_mnist_5k
from rconv.models import lenet5

@pytest.fixture(scope="module")
def digits():
    (x_train, y_train), (x_test, y_test) = load_mnist_5k()
    rng = np.random.default_rng(0)
    train = rng.permutation(len(x_train))[:500]
    test = rng.permutation(len(x_test))[:200]
    return (x_train[train], y_train[train]), (x_test[test], y_test[test])


def small_model(dropout=0.0):
    """A small CNN that trains in well under a second on 500 digits."""
    layers = [nn.Conv2d(1, 4, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 5), nn.ReLU(),
              nn.MaxPool2d(2), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(8 * 5 * 5, 10)]
    return nn.Sequential(*layers)


def test_lenet_loss_falls(digits):
    (x, y), (x_test, y_test) = digits
    nn.manual_seed(0)
    model = lenet5()
    before = model.evaluate(x_test, y_test)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = model.fit(x, y, epochs=3, batch_size=32, optimizer=opt, seed=0, progress=False,
                        validation_data=(x_test, y_test))
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.values())
    assert history["loss"][-1] < history["loss"][0] - 0.3
    after = model.evaluate(x_test, y_test)
    assert after["loss"] < before["loss"] - 0.3
    assert after["accuracy"] > 0.4  # from chance (0.1)
    assert history["val_loss"][-1] == pytest.approx(after["loss"])
    assert history["val_accuracy"][-1] == after["accuracy"]


def test_fit_defaults_and_adam(digits):
    (x, y), _ = digits
    nn.manual_seed(1)
    model = small_model()
    history = model.fit(x, y, epochs=2, progress=False)  # default SGD(lr=0.01, momentum=0.9)
    assert history["val_loss"] == [] and history["val_accuracy"] == []
    assert history["loss"][1] < history["loss"][0]
    model = small_model()
    history = model.fit(x, y, epochs=2, optimizer=optim.Adam(model.parameters(), lr=3e-3), progress=False)
    assert history["loss"][1] < history["loss"][0]
    assert 0.0 <= history["accuracy"][1] <= 1.0


def test_same_seed_same_weights_bit_for_bit(digits):
    (x, y), _ = digits
    x, y = x[:200], y[:200]

    def train(fit_seed):
        nn.manual_seed(7)
        model = small_model(dropout=0.3)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        history = model.fit(x, y, epochs=2, batch_size=16, optimizer=opt, seed=fit_seed, progress=False)
        return model.state_dict(), history

    a, ha = train(3)
    b, hb = train(3)
    c, _ = train(4)
    assert ha == hb
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # bitwise
    assert any(not np.array_equal(a[k], c[k]) for k in a)  # another seed: another shuffle and masks


def test_shuffle_false_and_lr_schedule(digits):
    (x, y), _ = digits
    x, y = x[:128], y[:128]
    lrs = []

    class Recording(optim.SGD):
        def step(self):
            lrs.append(self.lr)
            super().step()

    nn.manual_seed(2)
    a = small_model()
    a.fit(x, y, epochs=2, batch_size=64, shuffle=False, progress=False,
          optimizer=Recording(a.parameters(), lr=0.1), lr_schedule=lambda e: 0.1 / (e + 1))
    assert lrs == [0.1, 0.1, 0.05, 0.05]
    nn.manual_seed(2)
    b = small_model()
    b.fit(x, y, epochs=2, batch_size=64, shuffle=False, progress=False, seed=99,
          optimizer=optim.SGD(b.parameters(), lr=0.1), lr_schedule=lambda e: 0.1 / (e + 1))
    for k, v in a.state_dict().items():  # no shuffling: the seed does not matter
        np.testing.assert_array_equal(v, b.state_dict()[k])
    with pytest.raises(TypeError, match="lr_schedule"):
        b.fit(x, y, epochs=1, lr_schedule=0.1, progress=False)


def test_modes_restored_and_dropout_off_in_evaluate(digits):
    (x, y), _ = digits
    model = small_model(dropout=0.5)
    model.eval()
    model.fit(x[:64], y[:64], epochs=1, progress=False)
    assert not model.training and not model[-2].training  # fit restores the mode it found
    model.train()
    p1 = model.predict(x[:50])
    p2 = model.predict(x[:50])
    np.testing.assert_array_equal(p1, p2)  # evaluation mode: dropout is off
    assert model.training and model[-2].training
    model.evaluate(x[:50], y[:50])
    assert model.training


def test_predict_and_evaluate(digits):
    _, (x, y) = digits
    model = lenet5(rng=np.random.default_rng(0))
    logits = model.predict(x, batch_size=64)
    assert logits.shape == (len(x), 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, model(x), rtol=1e-5, atol=1e-6)
    result = model.evaluate(x, y, batch_size=33)
    assert set(result) == {"loss", "accuracy"}
    assert isinstance(result["loss"], float) and isinstance(result["accuracy"], float)
    expected_loss = nn.CrossEntropyLoss()(model(x), y)
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["accuracy"] == np.mean(np.argmax(logits, axis=1) == y)


def test_save_load_round_trip(tmp_path, digits):
    _, (x, _) = digits
    a = lenet5(rng=np.random.default_rng(1))
    written = a.save(tmp_path / "lenet")
    assert written == str(tmp_path / "lenet.npz") and os.path.exists(written)
    with np.load(written) as f:
        assert sorted(f.files) == sorted(a.state_dict())
    b = lenet5(rng=np.random.default_rng(2))
    assert not np.array_equal(a.predict(x), b.predict(x))
    assert b.load(tmp_path / "lenet") is b  # the .npz may be left off
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    c = lenet5(rng=np.random.default_rng(3)).load(written)
    np.testing.assert_array_equal(a.predict(x), c.predict(x))
    other = small_model()
    with pytest.raises(ValueError, match="unexpected keys"):
        other.load(written)


def test_summary(capsys):
    model = lenet5()
    text = model.summary(input_shape=(1, 28, 28))
    assert capsys.readouterr().out.strip() == text.strip()
    lines = text.splitlines()
    for layer, shape, count in [("0 Conv2d", "(N, 6, 28, 28)", "156"), ("3 Conv2d", "(N, 16, 10, 10)", "2,416"),
                                ("5 MaxPool2d", "(N, 16, 5, 5)", "0"), ("6 Flatten", "(N, 400)", "0"),
                                ("7 Linear", "(N, 120)", "48,120"), ("11 Linear", "(N, 10)", "850")]:
        row = [line for line in lines if line.split()[:2] == layer.split()]
        assert len(row) == 1, layer
        assert shape in row[0] and row[0].split()[-1] == count
    assert "Total params: 61,706" in text
    assert sum(1 for line in lines if line.split() and line.split()[0].isdigit()) == 12

    fresh = lenet5()
    with pytest.raises(ValueError, match="input_shape"):
        fresh.summary()
    fresh.predict(np.zeros((3, 1, 28, 28), np.float32))
    assert "(N, 6, 28, 28)" in fresh.summary()  # the shape of the last batch it saw
    capsys.readouterr()


def test_progress_output(capsys, digits):
    (x, y), (xv, yv) = digits
    model = small_model()
    model.fit(x[:100], y[:100], epochs=2, batch_size=50, progress=False)
    assert capsys.readouterr().out == ""
    model.fit(x[:100], y[:100], epochs=2, batch_size=40, validation_data=(xv[:20], yv[:20]))
    out = capsys.readouterr().out.splitlines()  # not a terminal: one plain line per epoch
    assert len(out) == 2
    assert out[0].startswith("epoch 1/2: 3 batches, loss ") and "accuracy" in out[0] and "val_accuracy" in out[0]
    assert out[1].startswith("epoch 2/2:") and out[1].endswith(" s")


# ----------------------------------------------------------------------------------------------
# bad arguments name themselves


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda m, x, y: m.fit(x[:, 0, 0, 0], y, epochs=1), ValueError, r"\bx\b.*\(N, \.\.\.\)"),
        (lambda m, x, y: m.fit(x.tolist(), y, epochs=1), TypeError, r"\bx must be a numpy"),
        (lambda m, x, y: m.fit(x, y[:-1], epochs=1), ValueError, r"len\(y\) = 9 must equal len\(x\) = 10"),
        (lambda m, x, y: m.fit(x, y.astype(np.float32), epochs=1), TypeError, r"\by must hold integer"),
        (lambda m, x, y: m.fit(x, y[:, None], epochs=1), ValueError, r"\by must be 1-D"),
        (lambda m, x, y: m.fit(x, -y - 1, epochs=1), ValueError, r"\by holds a negative"),
        (lambda m, x, y: m.fit(x.astype(np.float64), y, epochs=1), TypeError, r"\bx has dtype float64"),
        (lambda m, x, y: m.fit((x * 255).astype(np.uint8), y, epochs=1), TypeError, r"\bx must be float32"),
        (lambda m, x, y: m.fit(x, y, epochs=0), ValueError, r"epochs must be >= 1"),
        (lambda m, x, y: m.fit(x, y, epochs=1.0), TypeError, r"epochs must be an int"),
        (lambda m, x, y: m.fit(x, y), TypeError, r"epochs"),
        (lambda m, x, y: m.fit(x, y, epochs=1, batch_size=0), ValueError, r"batch_size must be >= 1"),
        (lambda m, x, y: m.fit(x, y, epochs=1, batch_size=True), TypeError, r"batch_size"),
        (lambda m, x, y: m.fit(x, y, epochs=1, optimizer="sgd"), TypeError, r"optimizer"),
        (lambda m, x, y: m.fit(x, y, epochs=1, seed=1.5), TypeError, r"seed"),
        (lambda m, x, y: m.fit(x, y, epochs=1, validation_data=x), TypeError, r"validation_data"),
        (lambda m, x, y: m.fit(x, y, epochs=1, validation_data=(x, y[:3])), ValueError,
         r"len\(validation_data\[1\]\)"),
        (lambda m, x, y: m.fit(x[:0], y[:0], epochs=1), ValueError, r"\bx is empty"),
        (lambda m, x, y: m.fit(x, y + 10, epochs=1, progress=False), ValueError, r"target"),
        (lambda m, x, y: m.evaluate(x, y[:3]), ValueError, r"len\(y\)"),
        (lambda m, x, y: m.evaluate(x, y, batch_size=-1), ValueError, r"batch_size"),
        (lambda m, x, y: m.predict(x, batch_size=0), ValueError, r"batch_size"),
        (lambda m, x, y: m.predict(x[0, 0, 0]), ValueError, r"\bx\b"),
        (lambda m, x, y: m.summary(input_shape=(1, 0, 28)), ValueError, r"input_shape"),
    ],
)
def test_bad_arguments(call, exc, pattern, digits):
    (x, y), _ = digits
    with pytest.raises(exc, match=pattern):
        call(small_model(), x[:10], y[:10])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts from getrusage (Linux)")
def test_training_step_reuses_its_buffers():
    """After warm-up, a LeNet-5 step (batch 64) takes its outputs and scratch buffers from
    rconv's block cache instead of fresh pages. Measured on the dev VM: 2.5 page faults a step;
    with the cache emptied before every step, 135 (glibc hands the rest back to the system)."""
    import resource

    import rconv

    nn.manual_seed(0)
    model, loss_fn = lenet5(), nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 64)

    def step():
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    for _ in range(3):
        step()
    assert rconv._rconv._cached_memory_bytes() > 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 200, f"{faults} page faults in 10 steps"


# ----------------------------------------------------------------------------------------------
# the demo (slow: the full training run)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RCONV_SLOW") != "1", reason="slow: set RCONV_SLOW=1 to run")
def test_demo_reaches_97_percent(tmp_path, capsys):
    from rconv.__main__ import main

    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("test accuracy:"))
    accuracy = float(line.split()[2].rstrip("%"))
    assert accuracy >= 97.0, out
    assert "images/s" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "rconv[viz]" in out
    else:
        for name in ("filters.png", "feature_maps.png"):
            with open(tmp_path / name, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
