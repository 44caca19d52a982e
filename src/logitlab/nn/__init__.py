"""Thin ``nn.Module`` wrappers: each holds its configuration and calls its functional form.

Argument names, order and defaults are the functional ones; tensors (class weights) are
registered as buffers so that ``.to(device)`` moves them.
"""

from logitlab.nn.normalizers import (
    Softmax,
    LogSoftmax,
    Sigmoid,
    LogSigmoid,
    StandardNormalize,
    SphericalSoftmax,
    TaylorSoftmax,
)
from logitlab.nn.cross_entropy import (
    CrossEntropyLoss,
    NLLLoss,
    BCEWithLogitsLoss,
    FocalLoss,
    Poly1CrossEntropyLoss,
    LogLikelihood,
)
from logitlab.nn.margin import MulticlassHingeLoss, PerceptronLoss
from logitlab.nn.divergences import (
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
from logitlab.nn.sparse import (
    Sparsemax,
    Entmax15,
    Entmax,
)
from logitlab.nn.structured import (
    LinearChainCRF,
    HiddenMarkovModel,
)
from logitlab.nn.fused import (
    LinearCrossEntropy,
    LinearCrossEntropyHead,
    LinearDivergenceLoss,
)
from logitlab.nn.distributed import (
    VocabParallelCrossEntropy,
    VocabParallelKLDivergence,
)

__all__ = [
    "Softmax",
    "LogSoftmax",
    "Sigmoid",
    "LogSigmoid",
    "StandardNormalize",
    "SphericalSoftmax",
    "TaylorSoftmax",
    "CrossEntropyLoss",
    "NLLLoss",
    "BCEWithLogitsLoss",
    "FocalLoss",
    "Poly1CrossEntropyLoss",
    "MulticlassHingeLoss",
    "PerceptronLoss",
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
    "Sparsemax",
    "Entmax15",
    "Entmax",
    "LinearChainCRF",
    "LinearCrossEntropy",
    "LinearCrossEntropyHead",
    "LogLikelihood",
    "LinearDivergenceLoss",
    "VocabParallelCrossEntropy",
    "VocabParallelKLDivergence",
    "HiddenMarkovModel",
]
