"""The flat functional namespace, like ``torch.nn.functional``: every op of logitlab by name."""

__all__: list[str] = []

# --- sparse maps ---
from logitlab.normalizers.entmax import (  # noqa: E402
    entmax,
    entmax15,
    entmax_with_info,
    tsallis15_regularizer,
    tsallis_regularizer,
)
from logitlab.normalizers.sparsemax import gini_regularizer, sparsemax  # noqa: E402

__all__ += ["sparsemax", "gini_regularizer", "entmax15", "entmax", "entmax_with_info",
            "tsallis15_regularizer", "tsallis_regularizer"]
