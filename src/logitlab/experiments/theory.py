"""The data of the report's theory section, from logitlab.analysis, logitlab.maxent and logitlab.information.

:func:`collect` calls the theory functions once, when a study finishes, and returns plain data
that the run directory stores as ``theory.json``; :func:`logitlab.experiments.report.render_theory`
draws that data, so re-rendering a report needs the stored file only (and this module never
draws). A part whose function is missing or fails is stored with the reason and shown as a note,
never silently dropped.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from logitlab.analysis import gradient_sweep, likelihood_underflow, scale_response
from logitlab.experiments.spec import parse_combination
from logitlab.information import decompose
from logitlab.maxent import MaxEntProblem, solve_maxent
from logitlab.registry import valid_pairs

__all__ = ["collect", "SECTIONS"]

NUM_CLASSES = 10
# Losses whose value for one example is the *mean* over its C classes (torch's 'mean' reduction of
# binary cross-entropy averages over all N·C elements). The gradient sweep puts every loss on one
# convention, per example and summed over the classes, so their value and gradient are multiplied
# by C there; otherwise sigmoid + BCE shows 1/C of its per-example gradient and reads as a weak signal.
CLASS_MEAN_LOSSES = frozenset({"binary_cross_entropy"})
MARGINS = [float(i) for i in range(21)]                   # 0 .. 20
SCALES = [10 ** (-1 + 0.05 * i) for i in range(41)]      # 0.1 .. 10


def _gradient_sweep(combinations: Sequence[Any]) -> dict[str, Any]:
    """The sweep for the study's combinations (with their parameters), then every other valid pair."""
    combos = list(combinations)
    covered = {(c.normalizer, c.loss) for c in combos}
    extra = [parse_combination(f"{n}+{loss}") for n, loss in valid_pairs(index_targets=True)
             if (n, loss) not in covered]
    curves, failed = {}, {}
    for group, items in (("study", combos), ("other", extra)):
        for combo in items:
            try:
                sweep = gradient_sweep(combo.normalizer, combo.loss, margins=MARGINS, num_classes=NUM_CLASSES,
                                       **dict(combo.params))
                scale = float(NUM_CLASSES) if combo.loss in CLASS_MEAN_LOSSES else 1.0
                curves[combo.key] = {"group": group, "grad_norm": (scale * sweep.grad_norm).tolist(),
                                     "loss_value": (scale * sweep.loss_value).tolist(),
                                     "prob_true": sweep.prob_true.tolist(),
                                     "grad_true": (scale * sweep.grad_true).tolist(), "scale": scale}
            except Exception as error:  # noqa: BLE001 - shown in the report
                failed[combo.key] = f"{type(error).__name__}: {error}"
    if not curves:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in failed.items()) or "no valid pairs")
    return {"margins": MARGINS, "num_classes": NUM_CLASSES, "curves": curves, "failed": failed}


def _scale_response(combinations: Sequence[Any]) -> dict[str, Any]:
    logits = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    out: dict[str, Any] = {"logits": logits.tolist(), "scales": SCALES, "max_prob": {}, "entropy": {}}
    for name in ("softmax", "standard", "sparsemax"):
        result = scale_response(name, logits, SCALES)
        out["max_prob"][name] = result.max_prob.tolist()
        out["entropy"][name] = result.entropy.tolist()
    return out


def _decomposition(combinations: Sequence[Any]) -> dict[str, Any]:
    target_probs = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    direction = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    temps = [0.25 * i for i in range(17)]  # logits t * direction, t = 0 .. 4
    rows = []
    for t in temps:
        parts = decompose(t * direction, target_probs)
        rows.append({"cross_entropy": float(parts.cross_entropy), "entropy": float(parts.entropy),
                     "kl": float(parts.kl)})
    return {"target_probs": target_probs.tolist(), "direction": direction.tolist(), "t": temps, "rows": rows}


def _underflow(combinations: Sequence[Any]) -> dict[str, Any]:
    report = likelihood_underflow(0.5, batch_size=1200)
    step = 4  # every 4th batch size is enough for the plot
    keep = list(range(0, 1200, step))
    return {
        "prob": 0.5,
        "batch_size": [int(report.batch_size[i]) for i in keep],
        "product": {k: [float(v[i]) for i in keep] for k, v in report.product.items()},
        "log_likelihood": [float(report.log_likelihood[i]) for i in keep],
        "underflow_at": dict(report.underflow_at),
        "subnormal_at": dict(report.subnormal_at),
        "log_likelihood_at_underflow": dict(report.log_likelihood_at_underflow),
    }


def _maxent(combinations: Sequence[Any]) -> dict[str, Any]:
    """Max-entropy with a mean-score constraint (softmax) and on two points (sigmoid)."""
    scores = torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    softmax_part: dict[str, Any] = {"scores": scores.tolist(), "mean": [], "probs": [], "theta": [], "gibbs": []}
    for mean in [0.4 + 0.2 * i for i in range(17)]:  # 0.4 .. 3.6, inside (min, max) of the scores
        result = solve_maxent(MaxEntProblem(scores[:, None], torch.tensor([mean], dtype=torch.float64)))
        theta = float(result.theta[0])
        softmax_part["mean"].append(mean)
        softmax_part["probs"].append(result.probs.tolist())
        softmax_part["theta"].append(theta)
        softmax_part["gibbs"].append(torch.softmax(theta * scores, 0).tolist())
    two = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    sigmoid_part: dict[str, Any] = {"mean": [], "p1": [], "theta": [], "sigmoid": []}
    for mean in [0.02 + 0.04 * i for i in range(25)]:  # P(y = 1) from 0.02 to 0.98
        result = solve_maxent(MaxEntProblem(two, torch.tensor([mean], dtype=torch.float64)))
        theta = float(result.theta[0])
        sigmoid_part["mean"].append(mean)
        sigmoid_part["p1"].append(float(result.probs[1]))
        sigmoid_part["theta"].append(theta)
        sigmoid_part["sigmoid"].append(float(torch.sigmoid(torch.tensor(theta, dtype=torch.float64))))
    return {"softmax": softmax_part, "sigmoid": sigmoid_part}


SECTIONS: dict[str, tuple[str, Callable[[Sequence[Any]], dict[str, Any]]]] = {
    "gradient_sweep": ("logitlab.analysis.gradient_sweep", _gradient_sweep),
    "scale_response": ("logitlab.analysis.scale_response", _scale_response),
    "maxent": ("logitlab.maxent.solve_maxent", _maxent),
    "decomposition": ("logitlab.information.decompose", _decomposition),
    "underflow": ("logitlab.analysis.likelihood_underflow", _underflow),
}


def collect(combinations: Sequence[Any] = ()) -> dict[str, Any]:
    """Run every theory part for the study's ``combinations`` (spec.Combination).

    Each part is ``{"available": True, "data": ...}`` or ``{"available": False, "reason": ...}``.
    """
    out = {}
    for name, (source, fn) in SECTIONS.items():
        try:
            out[name] = {"available": True, "source": source, "data": fn(combinations)}
        except Exception as error:  # noqa: BLE001 - the reason is stored and shown
            out[name] = {"available": False, "source": source, "reason": f"{type(error).__name__}: {error}"}
    return out
