"""Modules for the sparse maps: :class:`Sparsemax`, :class:`Entmax15`, :class:`Entmax`.

The one stateless pattern (:mod:`logitlab.nn._stateless`): the options are the function's
(same names, defaults and kinds); ``validate`` and ``impl`` are shown only when not the default.
"""

from __future__ import annotations

from logitlab.nn._stateless import stateless_module
from logitlab.normalizers.entmax import entmax, entmax15
from logitlab.normalizers.sparsemax import sparsemax

__all__ = ["Sparsemax", "Entmax15", "Entmax"]

_QUIET = {"validate": True, "impl": "auto"}
_QUIET_MAPS = {"validate": None, "impl": "auto"}  # sparsemax and entmax15: validate=None (on for CPU tensors)

Sparsemax = stateless_module(sparsemax, "Sparsemax", module=__name__, quiet=_QUIET_MAPS,
                             doc="""Module form of :func:`logitlab.sparsemax`.

    Example:
        >>> import torch
        >>> Sparsemax(dim=0)(torch.tensor([1.0, 0.5, -1.0]))
        tensor([0.7500, 0.2500, 0.0000])
    """)
Entmax15 = stateless_module(entmax15, "Entmax15", module=__name__, quiet=_QUIET_MAPS,
                            doc="""Module form of :func:`logitlab.entmax15`.

    Example:
        >>> import torch
        >>> Entmax15()(torch.tensor([2.0, 1.0, -3.0]))
        tensor([0.8307, 0.1693, 0.0000])
    """)
Entmax = stateless_module(entmax, "Entmax", module=__name__, quiet=_QUIET,
                          doc="""Module form of :func:`logitlab.entmax`; a tensor ``alpha`` is registered as a buffer.

    To learn α, pass an ``nn.Parameter`` (it is then registered as a parameter).

    Example:
        >>> import torch
        >>> Entmax(alpha=2.0)(torch.tensor([1.0, 0.5, -1.0]))
        tensor([0.7500, 0.2500, 0.0000])
        >>> Entmax(alpha=1.5)
        Entmax(alpha=1.5, dim=-1, tol=1e-10, max_iter=100)
    """)
