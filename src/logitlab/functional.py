"""The flat functional namespace, like ``torch.nn.functional``: every op of logitlab by name.

Generated from the registry: every row of :data:`logitlab.registry.OPS` (each normalizer, its
log form and its Ω, each loss, and the other public functions) and the public types they
return (:data:`logitlab.registry.PUBLIC_TYPES`). A new row there is a new name here.
"""

from logitlab import registry as _registry

__all__ = list(_registry.OPS) + list(_registry.PUBLIC_TYPES)

globals().update({name: op.fn for name, op in _registry.OPS.items()})
globals().update(_registry.PUBLIC_TYPES)


def __dir__() -> list[str]:
    return sorted(__all__)
