"""Thin ``nn.Module`` wrappers: each holds its configuration and calls its functional form.

Argument names, order and defaults are the functional ones; tensors (class weights) are
registered as buffers so that ``.to(device)`` moves them.
"""

__all__: list[str] = []

# fused (scale)
from logitlab.nn.fused import LinearCrossEntropy  # noqa: E402

__all__ += ["LinearCrossEntropy"]
