"""The one pattern of a stateless Module: it holds the options of its function and calls it.

``stateless_module(fn, name)`` builds the Module class of a functional op from its signature:

* the positional parameters of ``fn`` without a default (``logits``, ``target``, ...) are the
  arguments of ``forward``; so is ``mask`` (a per-call tensor, :data:`PER_CALL`);
* every other parameter is an argument of ``__init__``, with the same name, default and kind
  (``Entmax(alpha=1.5, *, dim=-1, ...)`` as ``entmax(logits, alpha=1.5, *, dim=-1, ...)``),
  stored on the Module: a tensor as a buffer, an ``nn.Parameter`` as a parameter (so that
  ``.to(device)`` moves it and an optimizer may learn it); ``**kwargs`` of the function (a
  normalizer's parameters) are accepted and stored too. Attributes are read at each call, so
  ``module.validate = False`` takes effect;
* ``extra_repr`` shows the options (those in ``quiet`` only when they differ from their default).

``logitlab.nn`` builds the Module of every registry row (:data:`logitlab.registry.OPS`) whose
Module is not listed by hand, so a new op has its layer with nothing to edit there. Modules that
own parameters (``LinearCrossEntropy``, ``LinearChainCRF``) are written by hand.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["stateless_module", "PER_CALL"]

PER_CALL = ("mask",)  # keyword-only tensors given with each call, not stored


def _show(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"{float(value.detach()):g}" if value.numel() == 1 else f"Tensor(shape={tuple(value.shape)})"
    return repr(value)


def _check_options(fn: Callable[..., Any], name: str, values: dict[str, Any]) -> None:
    """Call ``fn`` once on a meta tensor (shapes only, nothing computed) so that a bad option
    raises at construction, with the message of the function under the Module's name."""
    dim = values.get("dim", -1)
    ndim = max(2, dim + 1 if isinstance(dim, int) and dim >= 0 else -dim if isinstance(dim, int) else 2)
    try:
        fn(torch.empty((1,) * ndim, device="meta"), **values)
    except (ValueError, TypeError, IndexError) as error:
        prefix = f"{fn.__name__}(): "
        message = str(error)
        if message.startswith(prefix):
            raise type(error)(f"{name}(): {message[len(prefix):]}") from None
        raise


def stateless_module(fn: Callable[..., Any], name: str, *, module: str = "logitlab.nn", doc: str | None = None,
                     quiet: dict[str, Any] | None = None, positional: bool = False,
                     check_at_init: bool = False, check: Callable[[dict[str, Any]], None] | None = None,
                     home: str = "logitlab") -> type:
    """The Module class ``name`` of the function ``fn`` (see the module docstring).

    Args:
        fn: the functional op.
        name: the class name.
        module: the class's ``__module__``.
        doc: the class docstring (default: one generated from ``fn``'s).
        quiet: options ``extra_repr`` shows only when they differ from the value given here.
        positional: the options may also be given positionally, in the function's order (the
            dense normalizers' Modules took ``Softmax(dim, temperature, validate)``).
        check_at_init: check the options when the Module is built (by a call on a meta tensor).
        check: a check of the options (a dict) run first when the Module is built, for a message
            of the Module's own.
        home: the public namespace of ``fn``, named by the generated docstring.

    Example:
        >>> import torch
        >>> from logitlab import sparsemax
        >>> Layer = stateless_module(sparsemax, "SparsemaxLayer")
        >>> Layer(dim=0)(torch.tensor([1.0, 0.5, -1.0]))
        tensor([0.7500, 0.2500, 0.0000])
        >>> Layer(dim=0)
        SparsemaxLayer(dim=0, validate=None, impl='auto')
    """
    quiet = dict(quiet or {})
    params = list(inspect.signature(fn).parameters.values())
    tensors = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    per_call = [p for p in params if p.kind is p.KEYWORD_ONLY and p.name in PER_CALL]
    options = [p for p in params if p not in tensors and p not in per_call and p.kind is not p.VAR_KEYWORD
               and p.kind is not p.VAR_POSITIONAL]
    if positional:
        options = [p.replace(kind=p.POSITIONAL_OR_KEYWORD) for p in options]
    extra = [p for p in params if p.kind is p.VAR_KEYWORD]
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    init_signature = inspect.Signature([self_param] + options + extra)

    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        try:
            bound = init_signature.bind(self, *args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{name}(): {error}") from None
        bound.apply_defaults()
        values = {k: v for k, v in bound.arguments.items() if k != "self" and not (extra and k == extra[0].name)}
        if extra:
            values.update(bound.arguments.get(extra[0].name, {}))
        if check is not None:
            check(values)
        if check_at_init:
            _check_options(fn, name, values)
        nn.Module.__init__(self)
        self._option_names = list(values)
        for key, value in values.items():
            if isinstance(value, nn.Parameter):
                setattr(self, key, value)
            elif isinstance(value, Tensor):
                self.register_buffer(key, value)
            else:
                setattr(self, key, value)

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        given, rest = args[:len(tensors)], args[len(tensors):]
        if len(rest) > len(per_call):
            raise TypeError(f"{name}.forward() takes {len(tensors) + len(per_call)} tensors "
                            f"({', '.join(p.name for p in tensors + per_call)}), got {len(args)}")
        kwargs.update({p.name: value for p, value in zip(per_call, rest)})
        return fn(*given, **kwargs, **{key: getattr(self, key) for key in self._option_names})

    def extra_repr(self: nn.Module) -> str:
        shown = []
        for key in self._option_names:
            value = getattr(self, key)
            if key in quiet and not isinstance(value, Tensor) and value == quiet[key]:
                continue
            shown.append(f"{key}={_show(value)}")
        return ", ".join(shown)

    __init__.__signature__ = init_signature  # type: ignore[attr-defined]
    forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [self_param] + tensors + [p.replace(kind=p.POSITIONAL_OR_KEYWORD) for p in per_call])
    if doc is None:
        call = ", ".join(p.name for p in tensors)
        doc = (f"Module of :func:`{home}.{fn.__name__}`: ``{name}(**options)({call})`` is "
               f"``{fn.__name__}({call}, **options)``.\n\n"
               "    Generated by :func:`logitlab.nn._stateless.stateless_module` from the function's signature.\n")
    return type(name, (nn.Module,), {"__init__": __init__, "forward": forward, "extra_repr": extra_repr,
                                     "__doc__": doc, "__module__": module})
