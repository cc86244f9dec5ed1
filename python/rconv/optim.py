"""Optimisers with the update rules of ``torch.optim.SGD`` and ``torch.optim.Adam``.

An optimiser holds a list of :class:`rconv.nn.Parameter` and updates their ``data`` in place
from their ``grad`` on each ``step()``. Its state (momentum buffers, Adam moments) is kept in
the parameters' dtype. Each step updates every parameter in one native pass, in place
(``rust/optim.rs``), with the same float operations in the same order as the formula written
out in NumPy. ``data`` and the state must be C-contiguous (a Parameter's always are).

Examples
--------
>>> from rconv import nn, optim
>>> model = nn.Linear(4, 2)
>>> opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> opt.zero_grad()
>>> # ... forward, loss, model.backward(...) ...
>>> opt.step()
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Tuple

import numpy as np

from . import _rconv
from ._args import check_bool, check_float
from .nn import Module, Parameter

__all__ = ["Optimizer", "SGD", "Adam"]


class Optimizer:
    """Base class: holds the parameters; ``zero_grad()`` clears their gradients."""

    def __init__(self, params: Iterable[Parameter]):
        if isinstance(params, Module):
            raise TypeError("params must be an iterable of Parameters: pass model.parameters(), not the model")
        if isinstance(params, Parameter):
            raise TypeError("params must be an iterable of Parameters, got a single Parameter (wrap it in a list)")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"params must be an iterable of Parameters, got {type(params).__name__}") from None
        if not params:
            raise ValueError("params is empty: the optimiser has nothing to update")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}] must be an rconv.nn.Parameter, got {type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("params holds the same Parameter more than once")
        self.params: List[Parameter] = params

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to zero."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and L2
    weight decay, exactly ``torch.optim.SGD``: per parameter, at step t,

    .. code-block:: text

        g = grad + weight_decay * p
        if momentum != 0:
            buf = g                                       (t == 1)
            buf = momentum * buf + (1 - dampening) * g    (t > 1)
            g = g + momentum * buf   if nesterov else   buf
        p = p - lr * g

    Parameters
    ----------
    params : iterable of Parameter
    lr : float
        Learning rate, >= 0 (no default, as PyTorch's SGD before 2.x).
    momentum, weight_decay, dampening : float, >= 0
    nesterov : bool
        Needs momentum > 0 and dampening == 0 (ValueError otherwise, as PyTorch).
    """

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0):
        super().__init__(params)
        self.lr = check_float("lr", lr)
        self.momentum = check_float("momentum", momentum)
        self.weight_decay = check_float("weight_decay", weight_decay)
        self.dampening = check_float("dampening", dampening)
        self.nesterov = check_bool("nesterov", nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening == 0")
        self._buffers: List[Optional[np.ndarray]] = [None] * len(self.params)

    def step(self) -> None:
        # One native pass per parameter (rconv._rconv._sgd_step), in place.
        lr, mu, wd, damp = self.lr, self.momentum, self.weight_decay, self.dampening
        for i, p in enumerate(self.params):
            first = mu != 0 and self._buffers[i] is None
            if first:
                self._buffers[i] = np.empty_like(p.data)  # the step writes g into it
            _rconv._sgd_step(p.data, p.grad, self._buffers[i], first, lr, mu, damp, wd, self.nesterov)

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                f"nesterov={self.nesterov}, dampening={self.dampening})")


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay (added to the gradient, not AdamW),
    exactly ``torch.optim.Adam`` (amsgrad=False): per parameter, at step t,

    .. code-block:: text

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)

    Parameters
    ----------
    params : iterable of Parameter
    lr : float, >= 0
    betas : (float, float), each in [0, 1)
    eps : float, >= 0
    weight_decay : float, >= 0
    """

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params)
        self.lr = check_float("lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a tuple of two floats, got {betas!r}")
        self.betas = (check_float("betas[0]", betas[0], 0.0, 1.0), check_float("betas[1]", betas[1], 0.0, 1.0))
        self.eps = check_float("eps", eps)
        self.weight_decay = check_float("weight_decay", weight_decay)
        self.t = 0
        self._m = [np.zeros_like(p.data) for p in self.params]
        self._v = [np.zeros_like(p.data) for p in self.params]

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        bias1 = 1 - b1**self.t
        bias2_sqrt = math.sqrt(1 - b2**self.t)
        step_size = self.lr / bias1
        # PyTorch's arrangement: p -= (lr / bias1) * m / (sqrt(v) / sqrt(bias2) + eps), in one
        # native pass per parameter (rconv._rconv._adam_step), in place.
        for p, m, v in zip(self.params, self._m, self._v):
            _rconv._adam_step(p.data, p.grad, m, v, step_size, bias2_sqrt, b1, b2, self.eps, self.weight_decay)

    def __repr__(self) -> str:
        return f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay})"
