"""Module wrappers of the dense normalizers: the one stateless pattern (:mod:`logitlab.nn._stateless`).

Each holds its options (``dim``, ``temperature``, ...; given by keyword or in the function's
order) and calls its function; the options are checked when the Module is built. A tensor
``temperature`` is registered as a buffer, an ``nn.Parameter`` as a parameter (to learn it).
"""

from __future__ import annotations

from logitlab._validation import fail
from logitlab.nn._stateless import stateless_module
from logitlab.normalizers.sigmoid import log_sigmoid, sigmoid
from logitlab.normalizers.softmax import log_softmax, softmax
from logitlab.normalizers.spherical import spherical_softmax, taylor_softmax
from logitlab.normalizers.standard import standard_normalize

__all__ = ["Softmax", "LogSoftmax", "Sigmoid", "LogSigmoid", "StandardNormalize",
           "SphericalSoftmax", "TaylorSoftmax"]


def _dense(fn, name: str, doc: str, check=None) -> type:
    return stateless_module(fn, name, module=__name__, doc=doc, quiet={"validate": True}, positional=True,
                            check_at_init=True, check=check)


def _even_order(options: dict) -> None:
    order = options["order"]
    if isinstance(order, bool) or not isinstance(order, int) or order < 2 or order % 2:
        fail("TaylorSoftmax", "order", "an even int >= 2", order)


Softmax = _dense(softmax, "Softmax", """:func:`logitlab.softmax` as a Module: ``Softmax(dim=-1, temperature=1.0, validate=True)``.

    Example:
        >>> import torch
        >>> Softmax(temperature=2.0)(torch.tensor([0.0, 0.0]))
        tensor([0.5000, 0.5000])
    """)
LogSoftmax = _dense(log_softmax, "LogSoftmax", """:func:`logitlab.log_softmax` as a Module.""")
Sigmoid = _dense(sigmoid, "Sigmoid", """:func:`logitlab.sigmoid` as a Module: ``Sigmoid(dim=-1, validate=True)``.""")
LogSigmoid = _dense(log_sigmoid, "LogSigmoid", """:func:`logitlab.log_sigmoid` as a Module.""")
StandardNormalize = _dense(standard_normalize, "StandardNormalize", """:func:`logitlab.standard_normalize` as a Module: ``StandardNormalize(dim=-1, positivity=None)``.

    Example:
        >>> import torch
        >>> StandardNormalize(positivity="relu")(torch.tensor([-1.0, 1.0, 3.0]))
        tensor([0.0000, 0.2500, 0.7500])
    """)
SphericalSoftmax = _dense(spherical_softmax, "SphericalSoftmax",
                          """:func:`logitlab.spherical_softmax` as a Module: ``SphericalSoftmax(dim=-1, eps=1e-6)``.""")
TaylorSoftmax = _dense(taylor_softmax, "TaylorSoftmax",
                       """:func:`logitlab.taylor_softmax` as a Module: ``TaylorSoftmax(dim=-1, order=2)``.""",
                       check=_even_order)
