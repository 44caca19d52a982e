"""logitlab: the output layer of a model, as a library and a lab.

Scores (logits) become a distribution through a normalizer (softmax and its alternatives); a
loss D(target ‖ model) trains it. logitlab implements the choices side by side under one set
of conventions, with the theory that explains why softmax + cross-entropy (maximum
log-likelihood) is the default, and a study that measures them.

Layout of the public API:

* the functional ops, here and in :mod:`logitlab.functional`;
* their ``nn.Module`` wrappers in :mod:`logitlab.nn`;
* :mod:`logitlab.registry` (name → spec tables), :mod:`logitlab.metrics`,
  :mod:`logitlab.information`, :mod:`logitlab.maxent`, :mod:`logitlab.analysis`,
  :mod:`logitlab.structured`, :mod:`logitlab.fused`, :mod:`logitlab.distributed`.
"""

# The registry first: it imports the normalizers, then the losses and the other ops (which read
# its normalizer table when called), and generates the functional namespace.
from logitlab import registry  # noqa: I001
from logitlab import (
    analysis,
    distributed,
    functional,
    fused,
    information,
    maxent,
    metrics,
    nn,
    structured,
)
from logitlab._memory import cache_info, empty_cache
from logitlab.analysis import gradient_sweep, likelihood_underflow, scale_response
from logitlab.maxent import MaxEntProblem, MaxEntResult, solve_conditional_maxent, solve_maxent
from logitlab.normalizers.entmax import ConvergenceError, EntmaxInfo
from logitlab.registry import get_loss, get_normalizer, make_objective, valid_pairs

__version__ = "0.1.0"

# Every functional op and the types they return, from the registry (see logitlab.functional).
globals().update({name: getattr(functional, name) for name in functional.__all__})

__all__ = [
    "__version__",
    # submodules
    "analysis", "distributed", "functional", "fused", "information", "maxent", "metrics", "nn",
    "registry", "structured",
    # registry
    "get_loss", "get_normalizer", "make_objective", "valid_pairs",
    # the functional ops (normalizers, losses, divergences, Fenchel–Young, information, fused, structures)
    *functional.__all__,
    "ConvergenceError", "EntmaxInfo",
    # theory
    "MaxEntProblem", "MaxEntResult", "solve_maxent", "solve_conditional_maxent",
    "gradient_sweep", "scale_response", "likelihood_underflow",
    # the pool of reused CPU output buffers
    "empty_cache", "cache_info",
]
