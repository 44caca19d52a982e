"""Executable claims about output layers: gradient saturation, scale response, underflow.

Each function returns a record of tensors (a dataclass) that the study's report plots:
:func:`gradient_sweep` (the gradient of any registered normalizer + loss pair as the model
becomes confidently wrong; :func:`sweep_pairs` for all of them), :func:`scale_response` (what
multiplying the logits does), :func:`likelihood_underflow` (why likelihoods are summed in log space).
"""

from logitlab.analysis.gradients import DEFAULT_SWEEP_PARAMS, GradientSweep, gradient_sweep, sweep_pairs
from logitlab.analysis.links import LinkFit, compare_binary_links, fit_binary_link
from logitlab.analysis.scaling import ScaleResponse, scale_response
from logitlab.analysis.underflow import UnderflowReport, likelihood_underflow

__all__ = [
    "GradientSweep",
    "gradient_sweep",
    "sweep_pairs",
    "DEFAULT_SWEEP_PARAMS",
    "ScaleResponse",
    "scale_response",
    "UnderflowReport",
    "likelihood_underflow",
    "LinkFit",
    "compare_binary_links",
    "fit_binary_link",
]
