"""Thin ``nn.Module`` wrappers: each holds its configuration and calls its functional form.

Argument names, order and defaults are the functional ones; tensors (class weights) are
registered as buffers so that ``.to(device)`` moves them.
"""

__all__: list[str] = []

# --- divergences and Fenchel–Young losses (div) ---
from logitlab.nn.divergences import (  # noqa: E402
    DivergenceLoss,
    KLDivergenceLoss,
    ReverseKLDivergenceLoss,
    JSDivergenceLoss,
    AlphaDivergenceLoss,
    RenyiDivergenceLoss,
    TotalVariationLoss,
    HellingerLoss,
    BrierLoss,
    FenchelYoungLoss,
    SparsemaxLoss,
    EntmaxLoss,
    Entmax15Loss,
)
__all__ += [
    "DivergenceLoss",
    "KLDivergenceLoss",
    "ReverseKLDivergenceLoss",
    "JSDivergenceLoss",
    "AlphaDivergenceLoss",
    "RenyiDivergenceLoss",
    "TotalVariationLoss",
    "HellingerLoss",
    "BrierLoss",
    "FenchelYoungLoss",
    "SparsemaxLoss",
    "EntmaxLoss",
    "Entmax15Loss",
]
