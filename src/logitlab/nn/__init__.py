"""Thin ``nn.Module`` wrappers: each holds its configuration and calls its functional form.

Argument names, order and defaults are the functional ones; tensors (class weights) are
registered as buffers so that ``.to(device)`` moves them.
"""

__all__: list[str] = []

# --- sparse maps ---
from logitlab.nn.sparse import Entmax, Entmax15, Sparsemax  # noqa: E402

__all__ += ["Sparsemax", "Entmax15", "Entmax"]
