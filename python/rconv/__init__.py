"""rconv: fast CPU building blocks for convolutional networks, NumPy in, NumPy out.

The operations mirror ``torch.nn.functional`` (see :mod:`rconv.functional`); the thread count
is set with :func:`set_num_threads` or the ``RCONV_NUM_THREADS`` environment variable.
"""

from . import functional
from ._rconv import __version__, get_num_threads, set_num_threads
from .functional import *  # noqa: F401,F403  (the functional API, re-exported)
from .functional import __all__ as _functional_all
from . import nn, optim, datasets, filters, models  # noqa: E402  (after the functional API they use)

__all__ = ["functional", "get_num_threads", "set_num_threads", "__version__", *_functional_all]
