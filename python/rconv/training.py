"""Training a classifier: ``fit``, ``evaluate``, ``predict`` and ``summary``.

These are the bodies of :meth:`rconv.nn.Sequential.fit` and friends; they also take any
:class:`rconv.nn.Module` whose ``forward`` maps a batch of inputs to logits and whose
``backward`` differentiates it. The loss is softmax cross-entropy
(:class:`rconv.nn.CrossEntropyLoss`) and the targets are integer class labels.

Reproducibility: ``fit(seed=s)`` derives the shuffle order and every Dropout layer's mask
generator from ``s``; with the same initial weights (build the model after
``rconv.nn.manual_seed(k)``) two runs give bitwise identical weights, since the native
operations are deterministic for any thread count.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import nn
from ._args import check_array_size, check_bool, check_float, check_int

__all__ = ["fit", "evaluate", "predict", "summary"]

History = Dict[str, List[float]]


# ----------------------------------------------------------------------------------------------
# argument checks


def _model_dtype(model: nn.Module) -> Optional[np.dtype]:
    params = model.parameters()
    return params[0].dtype if params else None


def _check_x(name: str, x: Any, model: nn.Module) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have a batch dimension first, (N, ...), got shape {x.shape}")
    if x.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(
            f"{name} must be float32 or float64, got {x.dtype} (scale integer images to floats "
            f"first, e.g. {name}.astype(np.float32) / 255)"
        )
    dt = _model_dtype(model)
    if dt is not None and x.dtype != dt:
        raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {dt}; use {name}.astype(np.{dt})")
    return x


def _check_y(name: str, y: Any, n: int, x_name: str) -> np.ndarray:
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of integer labels, got {type(y).__name__}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"len({name}) = {len(y)} must equal len({x_name}) = {n}")
    if n and y.min() < 0:
        raise ValueError(f"{name} holds a negative label ({y.min()}); labels must be in [0, classes)")
    return y


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an rconv.nn.Module, got {type(model).__name__}")
    return model


def _check_positive_int(name: str, value: Any) -> int:
    return check_int(name, value, 1)


def _scheduled_lr(lr_schedule: Callable[[int], float], epoch: int) -> float:
    """``lr_schedule(epoch)``, checked as the optimisers check ``lr``: a finite number >= 0 (a NaN
    learning rate turned every parameter into NaN)."""
    lr = lr_schedule(epoch)
    try:
        return check_float("lr", lr)
    except (TypeError, ValueError) as e:
        raise type(e)(f"lr_schedule({epoch}) returned {lr!r}: {e}") from None


# ----------------------------------------------------------------------------------------------
# progress display


class _Progress:
    """One epoch's progress: a tqdm bar when tqdm is installed and stdout is a terminal, else
    one plain line at the end of the epoch; nothing when disabled."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, batches: int):
        self.enabled = enabled
        self.prefix = f"epoch {epoch}/{epochs}"
        self.batches = batches
        self.start = time.perf_counter()
        self.bar = None
        if enabled and _isatty(sys.stdout):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                # shutil falls back to 100x24 where the terminal reports size 0 (tqdm's own
                # detection then draws nothing at all).
                size = shutil.get_terminal_size((100, 24))
                self.bar = tqdm(total=batches, desc=self.prefix, unit="batch", file=sys.stdout,
                                leave=True, ncols=max(size.columns, 40), nrows=max(size.lines, 2))

    def update(self, loss: float, accuracy: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}, accuracy {accuracy:.4f}", refresh=False)
            self.bar.update(1)

    def close(self, metrics: Dict[str, float]) -> None:
        if not self.enabled:
            return
        text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        elapsed = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
            self.bar.close()
        else:
            print(f"{self.prefix}: {self.batches} batches, {text}, {elapsed:.1f} s", file=sys.stdout, flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------
# the loops


def _batches(n: int, batch_size: int, order: Optional[np.ndarray] = None):
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield (slice(start, stop) if order is None else order[start:stop])


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    optimizer=None,
    validation_data: Optional[Tuple[np.ndarray, np.ndarray]] = None,
    shuffle: bool = True,
    seed: Optional[int] = None,
    progress: bool = True,
    lr_schedule: Optional[Callable[[int], float]] = None,
) -> History:
    """Train ``model`` as a classifier with softmax cross-entropy and mini-batch updates.

    Parameters
    ----------
    model : Module
        Maps a batch ``x[i:j]`` to logits (N, classes).
    x : numpy.ndarray
        Inputs, (N, ...), float32 or float64 (the dtype of the model's parameters).
    y : numpy.ndarray
        Integer class labels, (N,).
    epochs : int
        Passes over the data, >= 1.
    batch_size : int
        Samples per update (the last batch of an epoch may be smaller), >= 1.
    optimizer : rconv.optim optimiser, optional
        Default ``SGD(model.parameters(), lr=0.01, momentum=0.9)``.
    validation_data : (x_val, y_val), optional
        Evaluated (in evaluation mode) after each epoch.
    shuffle : bool
        Reshuffle the samples every epoch.
    seed : int, optional
        Seeds the shuffle order and every Dropout mask; the run is then reproducible bit for
        bit (given the same initial weights). None: draw from ``rconv.nn.default_generator()``.
    progress : bool
        Show a progress bar (tqdm, when installed and stdout is a terminal) or one line per
        epoch; False prints nothing.
    lr_schedule : callable, optional
        ``lr_schedule(epoch) -> lr`` (epoch counted from 0), assigned to ``optimizer.lr``
        before each epoch; e.g. ``lambda e: 0.03 if e < 10 else 0.003``.

    Returns
    -------
    dict
        ``{"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...]}``, one
        entry per epoch; loss and accuracy are averaged over the epoch's samples as they were
        trained (the weights change during the epoch); the ``val_`` lists are empty without
        validation_data.

    The model is in training mode while it trains and is left in the mode it had before.
    """
    from .optim import SGD, Optimizer

    _check_model(model)
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    x = _check_x("x", x, model)
    y = _check_y("y", y, len(x), "x")
    if len(x) == 0:
        raise ValueError("x is empty: fit needs at least one sample")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError("validation_data must be a tuple (x_val, y_val)")
        x_val = _check_x("validation_data[0]", validation_data[0], model)
        y_val = _check_y("validation_data[1]", validation_data[1], len(x_val), "validation_data[0]")
    if optimizer is None:
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    elif not (isinstance(optimizer, Optimizer) or (hasattr(optimizer, "step") and hasattr(optimizer, "zero_grad"))):
        raise TypeError(f"optimizer must have step() and zero_grad(), got {type(optimizer).__name__}")
    if lr_schedule is not None and not callable(lr_schedule):
        raise TypeError(f"lr_schedule must be a callable epoch -> lr, got {type(lr_schedule).__name__}")
    shuffle = check_bool("shuffle", shuffle)
    progress = check_bool("progress", progress)
    if seed is not None:
        seed = check_int("seed", seed, 0)
        root = np.random.SeedSequence(seed)
        shuffle_seq, dropout_seq = root.spawn(2)
        order_rng = np.random.default_rng(shuffle_seq)
        dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
        for m, s in zip(dropouts, dropout_seq.spawn(len(dropouts))):
            m.rng = np.random.default_rng(s)
    else:
        order_rng = nn._spawn(nn.default_generator())

    criterion = nn.CrossEntropyLoss()
    history: History = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    n = len(x)
    n_batches = -(-n // batch_size)
    was_training = model.training
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            if lr_schedule is not None:
                optimizer.lr = _scheduled_lr(lr_schedule, epoch - 1)
            order = order_rng.permutation(n) if shuffle else None
            bar = _Progress(progress, epoch, epochs, n_batches)
            loss_sum, correct, seen = 0.0, 0, 0
            for idx in _batches(n, batch_size, order):
                xb, yb = x[idx], y[idx]
                optimizer.zero_grad()
                logits = model(xb)
                loss = criterion(logits, yb)
                grad = criterion.backward()
                if isinstance(model, nn.Sequential):
                    model.backward(grad, input_grad=False)  # the data needs no gradient
                else:
                    model.backward(grad)
                optimizer.step()
                m = len(yb)
                loss_sum += loss * m
                correct += int(np.count_nonzero(np.argmax(logits, axis=-1) == yb))
                seen += m
                bar.update(loss_sum / seen, correct / seen)
            history["loss"].append(loss_sum / seen)
            history["accuracy"].append(correct / seen)
            metrics = {"loss": history["loss"][-1], "accuracy": history["accuracy"][-1]}
            if validation_data is not None:
                val = evaluate(model, x_val, y_val)
                history["val_loss"].append(val["loss"])
                history["val_accuracy"].append(val["accuracy"])
                metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            bar.close(metrics)
    finally:
        model.train(was_training)
    return history


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's outputs (logits) for ``x``, computed in evaluation mode in batches.

    Shape
    -----
    x (N, ...) -> (N, classes)
    """
    _check_model(model)
    batch_size = _check_positive_int("batch_size", batch_size)
    x = _check_x("x", x, model)
    was_training = model.training
    model.eval()
    try:
        outs = [model(x[idx]) for idx in _batches(len(x), batch_size)]
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("x is empty: predict needs at least one sample")
    return np.concatenate(outs, axis=0)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> Dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in evaluation mode.

    Returns
    -------
    dict
        ``{"loss": float, "accuracy": float}``
    """
    _check_model(model)
    batch_size = _check_positive_int("batch_size", batch_size)
    x = _check_x("x", x, model)
    y = _check_y("y", y, len(x), "x")
    if len(x) == 0:
        raise ValueError("x is empty: evaluate needs at least one sample")
    criterion = nn.CrossEntropyLoss()
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for idx in _batches(len(x), batch_size):
            logits = model(x[idx])
            loss_sum += criterion(logits, y[idx]) * len(y[idx])
            correct += int(np.count_nonzero(np.argmax(logits, axis=-1) == y[idx]))
    finally:
        model.train(was_training)
    return {"loss": loss_sum / len(x), "accuracy": correct / len(x)}


def summary(model: nn.Module, input_shape: Optional[Sequence[int]] = None, *, file=None) -> str:
    """A table of the layers, their output shapes and parameter counts, with totals.

    Parameters
    ----------
    input_shape : tuple of int, optional
        One sample's shape without the batch dimension, e.g. ``(1, 28, 28)``. Default: the
        shape of the last batch the model saw (a Sequential remembers it).
    file : text stream, optional
        Where to print the table (default sys.stdout); the table is also returned.

    One zero sample is run through the layers in evaluation mode to find the output shapes
    (this replaces what the layers kept for ``backward``).
    """
    _check_model(model)
    if input_shape is None:
        seen = getattr(model, "_input_shape", None)
        if seen is None:
            raise ValueError("summary needs input_shape (one sample's shape, e.g. (1, 28, 28)): the model has not run yet")
        input_shape = tuple(seen[1:])
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, (bool, np.bool_)):
        input_shape = (int(input_shape),)
    try:
        input_shape = tuple(_check_positive_int("input_shape", v) for v in input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if file is not None and not callable(getattr(file, "write", None)):
        raise TypeError(f"file must be a text stream (with write()) or None, got {type(file).__name__}")
    layers = list(model.named_children()) if isinstance(model, nn.Sequential) else [("", model)]
    dtype = _model_dtype(model) or np.dtype(np.float32)
    check_array_size("input_shape", (1, *input_shape), dtype)
    rows: List[Tuple[str, str, str, str]] = []
    x = np.zeros((1, *input_shape), dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        for name, layer in layers:
            x = layer(x)
            n_params = sum(p.size for p in layer.parameters())
            shape = "(" + ", ".join(["N", *map(str, x.shape[1:])]) + ")"
            rows.append((name, type(layer).__name__, shape, f"{n_params:,}"))
    finally:
        model.train(was_training)
    total = model.num_parameters()
    wn = max([len(r[0]) for r in rows] + [1])
    rows3 = [(f"{a:>{wn}} {b}", c, d) for a, b, c, d in rows]
    header = ("Layer (type)", "Output shape", "Param #")
    w0, w1, w2 = (max(len(r[i]) for r in [header, *rows3]) for i in range(3))
    line = "-" * (w0 + w1 + w2 + 4)
    out = [f"{type(model).__name__} on input (N, {', '.join(map(str, input_shape))}), {dtype}",
           line, f"{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>{w2}}", line]
    out += [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in rows3]
    out += [line, f"Total params: {total:,}", f"Trainable params: {total:,}",
            f"Parameter size: {total * dtype.itemsize / 1024:.1f} KiB"]
    text = "\n".join(out)
    print(text, file=sys.stdout if file is None else file)
    return text
