"""Thin ``nn.Module`` wrappers: each holds its configuration and calls its functional form.

Argument names, order and defaults are the functional ones; tensors (class weights) are
registered as buffers so that ``.to(device)`` moves them.
"""

__all__: list[str] = []

# --- dense normalizers ---
from logitlab.nn.normalizers import (LogSigmoid, LogSoftmax, Sigmoid, Softmax, SphericalSoftmax,
                                     StandardNormalize, TaylorSoftmax)

__all__ += ["Softmax", "LogSoftmax", "Sigmoid", "LogSigmoid", "StandardNormalize", "SphericalSoftmax",
            "TaylorSoftmax"]
# --- end dense normalizers ---
# cross-entropy family
from logitlab.nn.cross_entropy import (  # noqa: E402
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    NLLLoss,
    Poly1CrossEntropyLoss,
)

__all__ += ["CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "FocalLoss", "Poly1CrossEntropyLoss"]
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
# --- sparse maps ---
from logitlab.nn.sparse import Entmax, Entmax15, Sparsemax  # noqa: E402

__all__ += ["Sparsemax", "Entmax15", "Entmax"]
# --- structures (theory) ---
from logitlab.nn.structured import LinearChainCRF  # noqa: E402

__all__ += ["LinearChainCRF"]
# --- end structures ---
# fused (scale)
from logitlab.nn.fused import LinearCrossEntropy  # noqa: E402

__all__ += ["LinearCrossEntropy"]
