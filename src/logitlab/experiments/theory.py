"""The report's theory section: data from logitlab.analysis, logitlab.maxent and logitlab.information.

:func:`collect` calls the theory functions once, when a study finishes, and returns plain data
that the run directory stores as ``theory.json``; :func:`render` turns that data into figures
and paragraphs, so re-rendering a report needs the stored file only. A part whose function is
missing or fails is stored with the reason and shown as a note, never silently dropped.
"""

from __future__ import annotations

import html
from typing import Any, Callable, Sequence

from logitlab.experiments import plots

__all__ = ["collect", "render", "SECTIONS"]

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
    from logitlab.analysis import gradient_sweep
    from logitlab.registry import valid_pairs

    from logitlab.experiments.spec import parse_combination

    combos = list(combinations)
    covered = {(c.normalizer, c.loss) for c in combos}
    extra = [parse_combination(f"{n}+{l}") for n, l in valid_pairs(index_targets=True) if (n, l) not in covered]
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
    import torch

    from logitlab.analysis import scale_response

    logits = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    out: dict[str, Any] = {"logits": logits.tolist(), "scales": SCALES, "max_prob": {}, "entropy": {}}
    for name in ("softmax", "standard", "sparsemax"):
        result = scale_response(name, logits, SCALES)
        out["max_prob"][name] = result.max_prob.tolist()
        out["entropy"][name] = result.entropy.tolist()
    return out


def _decomposition(combinations: Sequence[Any]) -> dict[str, Any]:
    import torch

    from logitlab.information import decompose

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
    from logitlab.analysis import likelihood_underflow

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
    import torch

    from logitlab.maxent import MaxEntProblem, solve_maxent

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


# ---------------------------------------------------------------- rendering


def _note(title: str, part: dict[str, Any] | None) -> str:
    if part is None:
        reason, source = "this run has no theory data (theory.json missing)", ""
    else:
        reason, source = part.get("reason", ""), part.get("source", "")
    return (f'<p class="note">{html.escape(title)}: not available in this run; <code>{html.escape(source)}</code> '
            f"could not be used ({html.escape(reason)}).</p>")


def _render_gradient_sweep(data: dict[str, Any]) -> str:
    from logitlab.experiments.report import figure

    margins, curves = data["margins"], data["curves"]
    floor = 1e-12
    pngs = []
    series = [(k, margins, [max(v, floor) for v in c["grad_norm"]]) for k, c in curves.items() if c["group"] == "study"]
    if series:
        pngs.append(plots.line_panels([{
            "title": "‖∂loss/∂z‖ of one example, this study's combinations",
            "xlabel": "margin of the wrong favourite over the true class",
            "ylabel": f"gradient norm (log; 0 drawn at {floor:g})", "logy": True, "series": series,
            "legend_outside": True, "legend_cols": 1 if len(series) <= 16 else 2}],
            width=9.0 if len(series) <= 16 else 11.0, height=4.2 if len(series) <= 16 else 5.5))
    other = {k: [max(v, floor) for v in c["grad_norm"]] for k, c in curves.items() if c["group"] == "other"}
    if other:
        ce_curve = curves.get("softmax+cross_entropy")
        pngs.append(plots.small_multiples(
            margins, other, reference=[max(v, floor) for v in ce_curve["grad_norm"]] if ce_curve else None,
            reference_label="softmax + cross-entropy", xlabel="margin of the wrong favourite over the true class",
            ylabel=f"‖∂loss/∂z‖ (log; 0 drawn at {floor:g})"))
    last = margins[-1]
    study = sorted(((c["grad_norm"][-1], k) for k, c in curves.items() if c["group"] == "study"), reverse=True)
    measured = f"Measured at margin {last:g} ({data['num_classes']} classes), this study's combinations, largest first: " + \
        "; ".join(f"{html.escape(k)} {v:.3g}" for v, k in study) + "."
    ce = curves.get("softmax+cross_entropy")
    brier = curves.get("softmax+brier")
    if ce and brier:
        measured += (f" softmax + cross-entropy goes from {ce['grad_norm'][0]:.3g} at margin 0 to {ce['grad_norm'][-1]:.3g}; "
                     f"softmax + Brier from {brier['grad_norm'][0]:.3g} to {brier['grad_norm'][-1]:.3g}.")
    others = [(c["grad_norm"][-1], k) for k, c in curves.items() if c["group"] == "other"]
    if others:
        keep = sorted(k for v, k in others if v >= 0.1)
        vanish = sorted(k for v, k in others if v < 1e-6)
        measured += (f" Of the {len(others)} other valid pairs, {len(keep)} keep a gradient norm ≥ 0.1 at margin {last:g} "
                     f"({html.escape(', '.join(keep)) or 'none'}) and {len(vanish)} fall below 1e-6 "
                     f"({html.escape(', '.join(vanish)) or 'none'}).")
    failed = data.get("failed") or {}
    if failed:
        measured += " Not computed: " + "; ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in failed.items()) + "."
    png = pngs[0]
    return figure(png, "gradient sweep", [
        "Claim: with softmax + cross-entropy the gradient on a confidently wrong example tends to a constant, "
        "non-zero size (p − y tends to a fixed vector, norm √2), so the model keeps learning from its worst "
        "mistakes; with squared error on probabilities (Brier) it vanishes exponentially: a confidently wrong "
        "model stops learning. One example, class 0 true, class 1 ahead by the margin, all other logits 0; "
        "from <code>logitlab.analysis.gradient_sweep</code>. One convention for every loss: the loss of one "
        "example summed over its classes (binary cross-entropy, which torch averages over the classes, is "
        f"multiplied by C = {data['num_classes']}).", measured]) + \
        "".join(figure(extra, "gradient sweep, other pairs", [
            "Every other valid pair of the registry, one small panel each (same axes), softmax + cross-entropy "
            "dashed in each for reference."]) for extra in pngs[1:])


def _render_scale_response(data: dict[str, Any]) -> str:
    from logitlab.experiments.report import figure

    scales = data["scales"]
    names = list(data["max_prob"])
    panels = [{"title": f"largest probability of normalizer(s · {data['logits']})", "xlabel": "scale s",
               "ylabel": "largest probability", "logx": True,
               "series": [(n, scales, data["max_prob"][n]) for n in names]},
              {"title": "entropy (nats)", "xlabel": "scale s", "ylabel": "entropy", "logx": True,
               "series": [(n, scales, data["entropy"][n]) for n in names]}]
    png = plots.line_panels(panels, width=4.6, height=3.3)
    def f3(value: float) -> str:
        return f"{round(value, 3) + 0.0:.3f}"  # no "-0.000"

    text = "; ".join(f"{html.escape(n)}: largest probability {f3(data['max_prob'][n][0])} → {f3(data['max_prob'][n][-1])}, "
                     f"entropy {f3(data['entropy'][n][0])} → {f3(data['entropy'][n][-1])} nats" for n in names)
    return figure(png, "scale response", [
        "Claim: softmax reads the size of the scores as confidence (multiplying them by s is dividing the "
        "temperature by s: from uniform to one-hot), while x / Σx is scale invariant and cannot express "
        "confidence through the size of its scores; sparsemax reaches a one-hot at a finite scale. "
        "From <code>logitlab.analysis.scale_response</code> (x / Σx on the raw positive scores).",
        f"Measured from s = {scales[0]:g} to {scales[-1]:g}: {text}."])


def _render_maxent(data: dict[str, Any]) -> str:
    from logitlab.experiments.report import figure

    soft, sig = data["softmax"], data["sigmoid"]
    scores = soft["scores"]
    series = []
    for k, score in enumerate(scores):
        series.append((f"p(z = {score:g}) solved", soft["mean"], [p[k] for p in soft["probs"]], None, None,
                       plots.color(k)))
        series.append((f"softmax(θ·z)[{k}]", soft["mean"], [p[k] for p in soft["gibbs"]], None, None, "black"))
    styles = {f"softmax(θ·z)[{k}]": ":" for k in range(len(scores))}
    panels = [{"title": f"max entropy with E[z] = μ, z = {scores}", "xlabel": "target mean score μ",
               "ylabel": "probability", "series": series, "styles": styles, "legend_cols": 2, "legend_loc": "upper center", "ylim": (0, 1)},
              {"title": "two points {0, 1} with P(1) = μ", "xlabel": "natural parameter θ", "ylabel": "P(1)",
               "series": [("solved P(1)", sig["theta"], sig["p1"], None, None, plots.color(0)),
                          ("sigmoid(θ)", sig["theta"], sig["sigmoid"], None, None, "black")],
               "styles": {"sigmoid(θ)": ":"}}]
    png = plots.line_panels(panels, width=5.0, height=3.6)
    gap_soft = max(abs(a - b) for p, g in zip(soft["probs"], soft["gibbs"]) for a, b in zip(p, g))
    gap_sig = max(abs(a - b) for a, b in zip(sig["p1"], sig["sigmoid"]))
    return figure(png, "maximum entropy", [
        "Claim: among all distributions over the classes whose expected score is fixed, the one with the most "
        "entropy (the one that assumes nothing else) is the Gibbs distribution p ∝ exp(θ z): softmax of the "
        "scaled scores; on two outcomes it is the sigmoid of θ. Softmax is not a design choice but what "
        "maximum entropy gives. Solved numerically by <code>logitlab.maxent.solve_maxent</code> (Newton on the "
        "dual), then compared with softmax(θ z) and sigmoid(θ) at the θ it found.",
        f"Measured: over {len(soft['mean'])} target means the largest |solved − softmax(θ z)| is {gap_soft:.2g}; "
        f"over {len(sig['mean'])} two-point problems the largest |solved P(1) − sigmoid(θ)| is {gap_sig:.2g} "
        f"(θ from {sig['theta'][0]:.2f} to {sig['theta'][-1]:.2f})."])


def _render_decomposition(data: dict[str, Any]) -> str:
    from logitlab.experiments.report import figure

    t = data["t"]
    rows = data["rows"]
    series = [(name, t, [r[name] for r in rows]) for name in ("cross_entropy", "entropy", "kl")]
    png = plots.line_panels([{"title": f"H(target, model) = H(target) + KL(target ‖ model), target {data['target_probs']}",
                              "xlabel": f"t (logits = t · {data['direction']})", "ylabel": "nats", "series": series}],
                            width=6, height=3.4)
    gap = max(abs(r["cross_entropy"] - r["entropy"] - r["kl"]) for r in rows)
    best = min(range(len(rows)), key=lambda i: rows[i]["cross_entropy"])
    return figure(png, "cross-entropy decomposition", [
        "Claim: the cross-entropy of the model against the target is the target's own entropy (fixed: the "
        "irreducible part) plus KL(target ‖ model); minimizing cross-entropy is minimizing the KL, and the "
        "loss cannot go below the entropy. From <code>logitlab.information.decompose</code>.",
        f"Measured: the largest |H − (entropy + KL)| over the sweep is {gap:.2g}; the cross-entropy is smallest "
        f"at t = {t[best]:g} ({rows[best]['cross_entropy']:.4f} nats), where KL = {rows[best]['kl']:.3g} and the "
        f"entropy is {rows[best]['entropy']:.4f}."])


def _render_underflow(data: dict[str, Any]) -> str:
    from logitlab.experiments.report import figure

    n = data["batch_size"]
    dtypes = list(data["product"])
    product_series = [(f"Π p in {d}", n, [v if v and v > 0 else float("nan") for v in data["product"][d]])
                      for d in dtypes]
    vlines = [(at, f"{d}: Π p = 0 from n = {at}") for d, at in data["underflow_at"].items() if at is not None]
    styles = {s[0]: ("-" if i == 0 else "--") for i, s in enumerate(product_series)}
    panels = [{"title": f"likelihood Π p of n examples, each p = {data['prob']:g}", "xlabel": "n", "ylabel": "product (log)",
               "logy": True, "series": product_series, "vlines": vlines, "styles": styles},
              {"title": "log-likelihood Σ log p", "xlabel": "n", "ylabel": "nats",
               "series": [("Σ log p (float64)", n, data["log_likelihood"])]}]
    png = plots.line_panels(panels, width=4.6, height=3.3)
    parts = []
    for d in dtypes:
        at = data["underflow_at"].get(d)
        if at is None:
            parts.append(f"in {d} the product stays above 0 up to n = {n[-1]}")
        else:
            parts.append(f"in {d} the product is exactly 0 from n = {at} (subnormal from n = {data['subnormal_at'].get(d)}), "
                         f"where the log-likelihood is still {data['log_likelihood_at_underflow'].get(d):.2f}")
    return figure(png, "likelihood underflow", [
        "Claim: the likelihood of a batch is a product of probabilities and underflows to exactly 0 after a "
        "few hundred examples, after which no two models can be compared; its log, the sum Σ log p, stays a "
        "moderate finite number. This is why training minimizes −Σ log p (the cross-entropy). From "
        "<code>logitlab.analysis.likelihood_underflow</code>.",
        "Measured: " + "; ".join(parts) + "."])


_RENDERERS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "gradient_sweep": ("Gradient sweep per pair", _render_gradient_sweep),
    "scale_response": ("Scale response: softmax vs x / Σx", _render_scale_response),
    "maxent": ("Maximum entropy gives softmax and sigmoid", _render_maxent),
    "decomposition": ("Cross-entropy = entropy + KL", _render_decomposition),
    "underflow": ("Products of likelihoods underflow", _render_underflow),
}


def render(theory: dict[str, Any] | None) -> str:
    """HTML of the theory section (one subsection per part) from stored theory data."""
    parts = []
    for name, (title, renderer) in _RENDERERS.items():
        part = None if theory is None else theory.get(name)
        parts.append(f'<h3 id="theory-{name}">{html.escape(title)}</h3>')
        if part is None or not part.get("available"):
            parts.append(_note(title, part))
        else:
            try:
                parts.append(renderer(part["data"]))
            except (KeyError, TypeError, ValueError, IndexError) as error:
                parts.append(_note(title, {"source": part.get("source", ""),
                                           "reason": f"stored data has an unexpected form: {type(error).__name__}: {error}"}))
    return "\n".join(parts)

