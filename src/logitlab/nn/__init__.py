"""Thin ``nn.Module`` wrappers: each holds its configuration and calls its functional form.

Argument names, order and defaults are the functional ones; tensors (class weights) are
registered as buffers so that ``.to(device)`` moves them.
"""

from logitlab import registry as _registry
from logitlab.nn._stateless import stateless_module as _stateless_module
from logitlab.nn.cross_entropy import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    LogLikelihood,
    NLLLoss,
    Poly1CrossEntropyLoss,
)
from logitlab.nn.distributed import (
    VocabParallelCrossEntropy,
    VocabParallelKLDivergence,
)
from logitlab.nn.divergences import (
    AlphaDivergenceLoss,
    BrierLoss,
    DivergenceLoss,
    Entmax15Loss,
    EntmaxLoss,
    FenchelYoungLoss,
    HellingerLoss,
    JSDivergenceLoss,
    KLDivergenceLoss,
    RenyiDivergenceLoss,
    ReverseKLDivergenceLoss,
    SparsemaxLoss,
    TotalVariationLoss,
)
from logitlab.nn.fused import (
    LinearCrossEntropy,
    LinearCrossEntropyHead,
    LinearDivergenceLoss,
)
from logitlab.nn.margin import MulticlassHingeLoss, PerceptronLoss
from logitlab.nn.normalizers import (
    LogSigmoid,
    LogSoftmax,
    Sigmoid,
    Softmax,
    SphericalSoftmax,
    StandardNormalize,
    TaylorSoftmax,
)
from logitlab.nn.sparse import (
    Entmax,
    Entmax15,
    Sparsemax,
)
from logitlab.nn.structured import (
    HiddenMarkovModel,
    LinearChainCRF,
)

# Every registry row names its Module; the rows whose Module is not written above get the one
# stateless pattern (nn/_stateless.py), so a new op has its layer with nothing to edit here.
_ROWS = list(_registry.OPS.values()) + list(_registry.DISTRIBUTED_OPS.values())
for _op in _ROWS:
    if _op.module is not None and _op.module not in globals():
        globals()[_op.module] = _stateless_module(_op.fn, _op.module, module=__name__)

# LinearCrossEntropyHead: the Module of linear_cross_entropy that owns its head's weight (FSDP2).
__all__ = list(dict.fromkeys([*(op.module for op in _ROWS if op.module is not None), "LinearCrossEntropyHead"]))
